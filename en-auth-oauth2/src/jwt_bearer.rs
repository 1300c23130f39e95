//! [`JwtBearerAuthorizer`]: the JWT bearer authorization grant (RFC 7523 §2.1), and
//! [`JwtBearerAssertion`], where its JWT comes from ([`SignedJwtBearerAssertion`] for one
//! signed here). The rules are on [`JwtBearerAuthorizer`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use en_auth_core::{
    Authorizer, BearerToken, CacheKey, ClientInfo, Error, secure_url, str_for_logs,
};
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};

use crate::assertion::AssertionSource;
use crate::client_auth::{
    ClientAuthentication, DEFAULT_ASSERTION_LIFETIME, MAX_ASSERTION_LIFETIME,
};
use crate::grant::{GrantAuthentication, GrantClient, TokenTarget, send_grant};
use crate::private_key_signer::jwk_thumbprint;
use crate::signer::{Signer, sign_jwt};
use crate::token_client::TokenClient;

/// The JWT bearer grant type (RFC 7523 §2.1).
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Where a JWT bearer grant's assertion comes from: signed here
/// ([`signed`](Self::signed), whose claims are set on the [`SignedJwtBearerAssertion`] it
/// returns), or read from a source.
///
/// ```
/// use std::sync::Arc;
/// use en_auth_oauth2::{JwtBearerAssertion, Signer};
/// # fn demo(signer: Arc<dyn Signer>) {
/// // Signed with our key, for a user of a Google Workspace domain (domain-wide delegation).
/// let signed = JwtBearerAssertion::signed(signer)
///     .with_subject("alice@example.com")
///     .with_claim("scope", "https://www.googleapis.com/auth/drive.readonly");
/// // Issued by someone else, re-read for each request.
/// let file = JwtBearerAssertion::file("/var/run/secrets/tokens/idp");
/// # }
/// ```
#[derive(Clone)]
pub struct JwtBearerAssertion(Assertion);

#[derive(Clone)]
enum Assertion {
    Signed(Box<SignedJwtBearerAssertion>),
    Source(AssertionSource),
}

/// A JWT bearer assertion signed with a [`Signer`] for each token request, made by
/// [`JwtBearerAssertion::signed`]: its claims are set here, and it is given to
/// [`JwtBearerAuthorizer::new`] as it is (it converts into a [`JwtBearerAssertion`]).
#[derive(Clone)]
pub struct SignedJwtBearerAssertion {
    signer: Arc<dyn Signer>,
    /// The RFC 7638 thumbprint of the signer's public key when the assertion was made: part
    /// of the cache key, which a key rotation behind the signer does not move.
    key_thumbprint: String,
    issuer: Option<String>,
    subject: Option<String>,
    audience: Option<String>,
    lifetime: Duration,
    claims: serde_json::Map<String, serde_json::Value>,
}

impl JwtBearerAssertion {
    /// An assertion signed with `signer` for each token request: `iss` and `sub` the client
    /// id, `aud` the token endpoint URL, a random `jti`, `iat` now, `exp`
    /// [`DEFAULT_ASSERTION_LIFETIME`] later, unless set otherwise.
    pub fn signed(signer: Arc<dyn Signer>) -> SignedJwtBearerAssertion {
        SignedJwtBearerAssertion {
            key_thumbprint: jwk_thumbprint(&signer.public_jwk()),
            signer,
            issuer: None,
            subject: None,
            audience: None,
            lifetime: DEFAULT_ASSERTION_LIFETIME,
            claims: serde_json::Map::new(),
        }
    }

    /// The assertion is the content of the file at `path`, read for each token request. The
    /// cache key holds the path, not the assertion (see
    /// [`JwtBearerAuthorizer::with_identity_label`]).
    pub fn file(path: impl Into<std::path::PathBuf>) -> Self {
        Self::from_source(AssertionSource::file(path))
    }

    /// The assertion is what `fetch` returns, called for each token request.
    pub fn from_fn<F, Fut, S>(fetch: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<S, Error>> + Send + 'static,
        S: Into<String>,
    {
        Self::from_source(AssertionSource::from_fn(fetch))
    }

    /// The assertion comes from `source`.
    pub fn from_source(source: AssertionSource) -> Self {
        Self(Assertion::Source(source))
    }

    /// The assertion for one token request.
    async fn make(&self, client_id: &str, token_url: &Url) -> Result<SecretString, Error> {
        match &self.0 {
            Assertion::Source(source) => source.read().await,
            Assertion::Signed(signed) => signed.make(client_id, token_url).await,
        }
    }

    /// Adds where the assertion comes from to a cache key: the signer's public key (as it
    /// was when the assertion was made) and the claims that name the token's subject, or
    /// the source's origin.
    fn add_to_cache_key(
        &self,
        key: en_auth_core::CacheKeyBuilder,
    ) -> en_auth_core::CacheKeyBuilder {
        match &self.0 {
            Assertion::Source(source) => key.part("assertion_from", &source.origin()),
            Assertion::Signed(signed) => key
                .part("assertion_signer", &signed.key_thumbprint)
                .part("assertion_alg", signed.signer.algorithm().name())
                .part("assertion_iss", signed.issuer.as_deref().unwrap_or(""))
                .part("assertion_sub", signed.subject.as_deref().unwrap_or(""))
                .part("assertion_aud", signed.audience.as_deref().unwrap_or(""))
                .part(
                    "assertion_claims",
                    &serde_json::Value::Object(signed.claims.clone()).to_string(),
                ),
        }
    }
}

impl From<SignedJwtBearerAssertion> for JwtBearerAssertion {
    fn from(signed: SignedJwtBearerAssertion) -> Self {
        Self(Assertion::Signed(Box::new(signed)))
    }
}

impl SignedJwtBearerAssertion {
    /// The `iss` claim (default: the client id).
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// The `sub` claim: whom the token is for (default: the client id).
    pub fn with_subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// The `aud` claim (default: the token endpoint URL; some providers want their issuer).
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// How long the assertion is valid (`exp - iat`), at most [`MAX_ASSERTION_LIFETIME`]
    /// (longer values are clamped to it).
    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime.clamp(Duration::from_secs(1), MAX_ASSERTION_LIFETIME);
        self
    }

    /// Another claim (e.g. Google's `scope`). The registered claims (`iss`, `sub`, `aud`,
    /// `jti`, `iat`, `exp`) are set with the methods above and win.
    pub fn with_claim(
        mut self,
        name: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        self.claims.insert(name.into(), value.into());
        self
    }

    /// The assertion for one token request.
    async fn make(&self, client_id: &str, token_url: &Url) -> Result<SecretString, Error> {
        let signed = self;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut claims = signed.claims.clone();
        let mut set = |name: &str, value: serde_json::Value| {
            claims.insert(name.to_owned(), value);
        };
        set("iss", signed.issuer.as_deref().unwrap_or(client_id).into());
        set("sub", signed.subject.as_deref().unwrap_or(client_id).into());
        set(
            "aud",
            signed
                .audience
                .as_deref()
                .unwrap_or(token_url.as_str())
                .into(),
        );
        set(
            "jti",
            crate::signer::random_jti("jwt bearer assertion")?.into(),
        );
        set("iat", now.into());
        set("exp", (now + signed.lifetime.as_secs()).into());
        let mut header = serde_json::Map::new();
        header.insert("typ".into(), "JWT".into());
        sign_jwt(signed.signer.as_ref(), header, &claims).await
    }
}

impl fmt::Debug for JwtBearerAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Assertion::Source(source) => f
                .debug_tuple("JwtBearerAssertion::Source")
                .field(source)
                .finish(),
            Assertion::Signed(signed) => fmt::Debug::fmt(signed, f),
        }
    }
}

impl fmt::Debug for SignedJwtBearerAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedJwtBearerAssertion")
            .field("signer", &self.signer)
            .field("key_thumbprint", &self.key_thumbprint)
            .field("issuer", &self.issuer)
            .field("subject", &self.subject)
            .field("audience", &self.audience)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// Obtains tokens with the JWT bearer authorization grant (RFC 7523 §2.1) — a JWT is
/// the grant itself: `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` and
/// `assertion=<JWT>`.
///
/// The assertion is either signed here with a [`Signer`] (a key in memory, a KMS, an HSM):
/// `iss` and `sub` default to the client id, `aud` to the token endpoint URL, a fresh `jti`,
/// `iat` now and `exp` one [`DEFAULT_ASSERTION_LIFETIME`] later — or issued by someone else
/// and read afresh for every token request from an [`AssertionSource`] (a file the kubelet
/// rewrites, a SPIFFE workload API).
///
/// Client authentication is optional for this grant (RFC 7523 §3.2): a client with a secret
/// authenticates with `client_secret_basic` by default, one with an empty secret sends only
/// its `client_id` (or nothing, when that is empty too); see
/// [`with_authentication`](Self::with_authentication) and
/// [`without_client_authentication`](Self::without_client_authentication).
///
/// The assertion is a secret: never in `Debug`, logs or errors.
///
/// ```no_run
/// use std::sync::Arc;
/// use en_auth_core::{AuthMiddleware, ClientInfo};
/// use en_auth_oauth2::{JwtBearerAssertion, JwtBearerAuthorizer, Signer};
///
/// # fn demo(signer: Arc<dyn Signer>) {
/// let authorizer = JwtBearerAuthorizer::new(
///     ClientInfo::new("reporting-service", ""), // no secret: the signed JWT is the grant
///     "https://idp.example.com/oauth2/token",
///     JwtBearerAssertion::signed(signer),
/// )
/// .with_scopes(["read:reports"]);
/// let auth = AuthMiddleware::new(authorizer);
/// # }
/// ```
pub struct JwtBearerAuthorizer {
    info: ClientInfo,
    token_url: String,
    assertion: JwtBearerAssertion,
    target: TokenTarget,
    authentication: GrantAuthentication,
    default_lifetime: Option<Duration>,
    http: TokenClient,
    identity_label: Option<String>,
}

impl JwtBearerAuthorizer {
    /// An authorizer presenting `assertion` as client `client_info` at `token_url` (which must
    /// be `https://`, or `http://` on loopback; checked before each request).
    pub fn new(
        client_info: ClientInfo,
        token_url: impl AsRef<str>,
        assertion: impl Into<JwtBearerAssertion>,
    ) -> Self {
        Self {
            info: client_info,
            token_url: token_url.as_ref().to_owned(),
            assertion: assertion.into(),
            target: TokenTarget::default(),
            authentication: GrantAuthentication::Default,
            default_lifetime: None,
            http: TokenClient::new(),
            identity_label: None,
        }
    }

    /// Asks for a token for this API (Auth0's `audience` parameter; not the assertion's `aud`,
    /// see [`SignedJwtBearerAssertion::with_audience`]). Replaces an earlier one.
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.target.audiences = vec![audience.into()];
        self
    }

    /// Asks for a token for this resource (RFC 8707 `resource`); may be called more than once.
    pub fn with_resource(mut self, resource: impl Into<String>) -> Self {
        self.target.resources.push(resource.into());
        self
    }

    /// Asks for these scopes (sent space-separated as `scope`).
    pub fn with_scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.target.set_scopes(scopes);
        self
    }

    /// How the client authenticates (default: `client_secret_basic`, or none for a client
    /// with an empty secret).
    ///
    /// With mutual TLS ([`ClientAuthentication::tls_client_auth`]) token requests present the
    /// certificate; the rules are those of
    /// [`ServiceAccountAuthorizer::with_authentication`](crate::ServiceAccountAuthorizer::with_authentication).
    pub fn with_authentication(mut self, authentication: ClientAuthentication) -> Self {
        self.authentication = GrantAuthentication::Client(authentication);
        self.http.authentication_changed();
        self
    }

    /// No client authentication (RFC 7523 §3.2): `client_id` only, or nothing when it is empty.
    pub fn without_client_authentication(mut self) -> Self {
        self.authentication = GrantAuthentication::Public;
        self
    }

    /// Names the identity whose tokens this authorizer obtains, in its cache key: an
    /// assertion read from a file is known by its path only, so workloads of different
    /// identities that share a client, a token store and the path would share tokens — set
    /// this to the workload's identity then (see
    /// [`TokenExchangeAuthorizer::with_identity_label`](crate::TokenExchangeAuthorizer::with_identity_label)).
    pub fn with_identity_label(mut self, label: impl Into<String>) -> Self {
        self.identity_label = Some(label.into());
        self
    }

    /// Lifetime given to tokens whose answer has no `expires_in`.
    pub fn with_default_lifetime(mut self, lifetime: Duration) -> Self {
        self.default_lifetime = Some(lifetime);
        self
    }

    /// Uses your own HTTP client for token requests. Not with mutual TLS client
    /// authentication: token requests then fail with [`Error::InvalidConfiguration`] rather
    /// than go out without the certificate (see
    /// [`with_root_certificate`](Self::with_root_certificate)).
    pub fn with_http_client(mut self, http: reqwest::Client) -> Self {
        self.http.set_custom(http);
        self
    }

    /// Trusts this certificate authority for the provider's TLS certificate, besides the
    /// system's roots. Replaces a client given with
    /// [`with_http_client`](Self::with_http_client).
    pub fn with_root_certificate(mut self, root: reqwest::Certificate) -> Self {
        self.http.add_root(root);
        self
    }
}

#[async_trait]
impl Authorizer for JwtBearerAuthorizer {
    type Token = BearerToken;

    fn tls_client_identity(&self) -> Option<reqwest::Identity> {
        self.authentication
            .tls_identity()
            .map(crate::TlsClientIdentity::reqwest_identity)
    }

    fn client_info(&self) -> &ClientInfo {
        &self.info
    }

    async fn authorize(&self) -> Result<BearerToken, Error> {
        let url = secure_url("token_url", &self.token_url)?;
        let assertion = self.assertion.make(self.info.client_id(), &url).await?;
        let mut form = vec![
            ("grant_type", JWT_BEARER_GRANT),
            ("assertion", assertion.expose_secret()),
        ];
        self.target.add_to_form(&mut form);
        let client = GrantClient {
            http: &self.http,
            info: &self.info,
            authentication: &self.authentication,
            default_lifetime: self.default_lifetime,
        };
        let granted = send_grant(client, &url, "jwt-bearer", form, |_, _| Ok(())).await?;
        Ok(granted.token)
    }

    fn cache_key(&self) -> CacheKey {
        let key = CacheKey::builder("oauth2-jwt-bearer")
            .part("endpoint", &self.token_url)
            .part("client_id", self.info.client_id())
            .secret("client_secret", self.info.client_secret().expose_secret());
        let mut key = self
            .assertion
            .add_to_cache_key(self.target.add_to_cache_key(key));
        if let Some(label) = &self.identity_label {
            key = key.part("identity_label", label);
        }
        self.authentication
            .add_to_cache_key(&self.info, key)
            .build()
    }
}

impl fmt::Debug for JwtBearerAuthorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtBearerAuthorizer")
            .field("client_info", &self.info)
            .field("token_url", &str_for_logs(&self.token_url))
            .field("assertion", &self.assertion)
            .field("target", &self.target)
            .field("authentication", &self.authentication)
            .field("identity_label", &self.identity_label)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::SigningAlgorithm;

    /// A signer whose key changes after every look (a key rotated behind it, as a file
    /// signer's is).
    #[derive(Debug, Default)]
    struct Rotating(AtomicUsize);

    #[async_trait]
    impl Signer for Rotating {
        fn algorithm(&self) -> SigningAlgorithm {
            SigningAlgorithm::ES256
        }
        fn key_id(&self) -> Option<String> {
            None
        }
        fn public_jwk(&self) -> serde_json::Value {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            serde_json::json!({"kty": "EC", "crv": "P-256", "x": format!("x{n}"), "y": "y"})
        }
        async fn sign(&self, _: &[u8]) -> Result<Vec<u8>, Error> {
            Ok(vec![0; 64])
        }
    }

    #[test]
    fn the_cache_key_stays_put_when_the_signers_key_rotates() {
        let signer = Arc::new(Rotating::default());
        let authorizer = JwtBearerAuthorizer::new(
            ClientInfo::new("svc", ""),
            "https://idp.example.com/token",
            JwtBearerAssertion::signed(signer.clone()).with_subject("alice"),
        );
        let first = authorizer.cache_key();
        signer.public_jwk(); // rotated
        assert_eq!(authorizer.cache_key(), first);
        // Another subject is another token.
        let other = JwtBearerAuthorizer::new(
            ClientInfo::new("svc", ""),
            "https://idp.example.com/token",
            JwtBearerAssertion::signed(signer).with_subject("bob"),
        );
        assert_ne!(other.cache_key(), first);
    }

    #[test]
    fn an_identity_label_separates_workloads_reading_the_same_path() {
        let authorizer = || {
            JwtBearerAuthorizer::new(
                ClientInfo::new("shared-public-client", ""),
                "https://idp.example.com/token",
                JwtBearerAssertion::file("/var/run/secrets/tokens/idp"),
            )
        };
        assert_eq!(authorizer().cache_key(), authorizer().cache_key());
        assert_ne!(
            authorizer().with_identity_label("orders").cache_key(),
            authorizer().with_identity_label("billing").cache_key()
        );
    }
}
