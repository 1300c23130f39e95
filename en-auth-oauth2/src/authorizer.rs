//! [`ServiceAccountAuthorizer`]: the OAuth2 client-credentials grant (RFC 6749 §4.4).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use en_auth_core::{AccessToken, Authorizer, BearerToken, CacheKey, ClientInfo, Error};
use reqwest::Url;
use reqwest::header::HeaderValue;
use secrecy::ExposeSecret;
use tokio::sync::OnceCell;
use tracing::Instrument;

use crate::client_auth::ClientAuthentication;
use crate::dpop::{DPOP_HEADER, Dpop, DpopKey};
use crate::endpoint::{DiscoveredTokenEndpoint, discover_token_endpoints};
use crate::mtls::TlsClientIdentity;
use crate::signer::Signer;
use crate::token_client::TokenClient;
use crate::token_endpoint::exchange;
use en_auth_core::{secure_url, str_for_logs, untrusted_text, url_for_logs};

enum TokenEndpoint {
    /// A URL as given; checked with [`secure_url`] before each use, so a bad one fails the
    /// token request before any I/O.
    Fixed(String),
    Discovered {
        issuer: String,
        resolved: OnceCell<DiscoveredTokenEndpoint>,
    },
}

/// Obtains tokens with the OAuth2 client-credentials grant.
///
/// ```no_run
/// use en_auth_core::{AuthMiddleware, ClientInfo};
/// use en_auth_oauth2::ServiceAccountAuthorizer;
///
/// let authorizer = ServiceAccountAuthorizer::new(
///     ClientInfo::new("my-client-id", "my-client-secret"),
///     "https://tenant.us.auth0.com/oauth/token",
/// )
/// .with_audience("https://api.example.com")
/// .with_scopes(["read:orders"]);
/// let auth = AuthMiddleware::new(authorizer);
/// ```
///
/// The token URL is checked before any request: it must be `https://`, or `http://` on a
/// loopback host. A bad URL makes `authorize` fail with [`Error::InvalidConfiguration`].
pub struct ServiceAccountAuthorizer {
    info: ClientInfo,
    endpoint: TokenEndpoint,
    audience: Option<String>,
    resources: Vec<String>,
    scopes: Vec<String>,
    extra_params: Vec<(String, String)>,
    authentication: ClientAuthentication,
    default_lifetime: Option<Duration>,
    http: TokenClient,
    dpop: DpopSetting,
}

/// Whether tokens are sender-constrained with DPoP (RFC 9449).
#[derive(Debug)]
enum DpopSetting {
    Off,
    On(Arc<Dpop>),
    /// `with_dpop()` could not make a key: every token request fails with this reason.
    Unavailable(String),
}

impl ServiceAccountAuthorizer {
    /// An authorizer for `client_info` at the token endpoint `token_url`.
    pub fn new(client_info: ClientInfo, token_url: impl AsRef<str>) -> Self {
        Self::with_endpoint(
            client_info,
            TokenEndpoint::Fixed(token_url.as_ref().to_owned()),
        )
    }

    /// An authorizer whose token endpoint is found through OIDC discovery at `issuer`
    /// (`{issuer}/.well-known/openid-configuration`), fetched now.
    pub async fn discover(client_info: ClientInfo, issuer: impl AsRef<str>) -> Result<Self, Error> {
        let authorizer = Self::discover_lazily(client_info, issuer.as_ref());
        authorizer.token_url().await?;
        Ok(authorizer)
    }

    /// Like [`discover`](Self::discover), but the discovery happens with the first token
    /// request (used by [`from_env`](Self::from_env), which cannot wait).
    pub fn discover_lazily(client_info: ClientInfo, issuer: &str) -> Self {
        Self::with_endpoint(
            client_info,
            TokenEndpoint::Discovered {
                issuer: issuer.to_owned(),
                resolved: OnceCell::new(),
            },
        )
    }

    fn with_endpoint(info: ClientInfo, endpoint: TokenEndpoint) -> Self {
        Self {
            info,
            endpoint,
            audience: None,
            resources: Vec::new(),
            scopes: Vec::new(),
            extra_params: Vec::new(),
            authentication: ClientAuthentication::default(),
            default_lifetime: None,
            http: TokenClient::new(),
            dpop: DpopSetting::Off,
        }
    }

    /// Asks for a token for this API (Auth0's `audience` parameter).
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Asks for a token for this resource (RFC 8707 `resource`); may be called more than once.
    pub fn with_resource(mut self, resource: impl Into<String>) -> Self {
        self.resources.push(resource.into());
        self
    }

    /// Asks for these scopes (sent space-separated as `scope`).
    pub fn with_scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Adds a form parameter to every token request (e.g. `organization`).
    pub fn with_param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra_params.push((name.into(), value.into()));
        self
    }

    /// How the client authenticates (default: [`ClientAuthentication::ClientSecretBasic`];
    /// [`ClientAuthentication::private_key_jwt_pem`] for a signed assertion).
    ///
    /// With mutual TLS ([`ClientAuthentication::tls_client_auth`],
    /// [`ClientAuthentication::self_signed_tls_client_auth`]) token requests present the
    /// certificate, whatever the order of the builder calls; a discovered provider's
    /// `mtls_endpoint_aliases.token_endpoint` is used when it names one (RFC 8705 §5); and
    /// [`AuthMiddleware::client`](en_auth_core::AuthMiddleware::client) presents the same
    /// certificate to APIs, for certificate-bound tokens. A client of your own
    /// ([`with_http_client`](Self::with_http_client)) cannot be given the certificate: token
    /// requests then fail with [`Error::InvalidConfiguration`] instead of going out without
    /// it.
    ///
    /// ```no_run
    /// use en_auth_core::{AuthMiddleware, ClientInfo};
    /// use en_auth_oauth2::{ClientAuthentication, ServiceAccountAuthorizer};
    ///
    /// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let cert = std::fs::read("client.crt")?;
    /// let key = std::fs::read("client.key")?;
    /// let authorizer = ServiceAccountAuthorizer::new(
    ///     ClientInfo::new("my-service", ""), // no secret: the certificate proves who we are
    ///     "https://mtls.idp.example.com/oauth2/token",
    /// )
    /// .with_authentication(ClientAuthentication::tls_client_auth(&cert, &key)?);
    /// let client = AuthMiddleware::new(authorizer).client()?; // presents the certificate too
    /// # let _ = client; Ok(()) }
    /// ```
    pub fn with_authentication(mut self, authentication: ClientAuthentication) -> Self {
        self.authentication = authentication;
        self.http.authentication_changed();
        self
    }

    /// Lifetime given to tokens whose response has no `expires_in`. Unset, the lifecycle's
    /// default applies ([`LifecyclePolicy::default_lifetime`](en_auth_core::LifecyclePolicy)).
    pub fn with_default_lifetime(mut self, lifetime: Duration) -> Self {
        self.default_lifetime = Some(lifetime);
        self
    }

    /// Uses your own HTTP client for token requests and discovery. Build it with
    /// `redirect(reqwest::redirect::Policy::none())` and timeouts: en-auth's own client has both.
    ///
    /// Not with mutual TLS client authentication: en-auth cannot add the client certificate
    /// to a client it did not build, so token requests then fail with
    /// [`Error::InvalidConfiguration`]; configure en-auth's client with
    /// [`with_timeouts`](Self::with_timeouts) and
    /// [`with_root_certificate`](Self::with_root_certificate) instead.
    pub fn with_http_client(mut self, http: reqwest::Client) -> Self {
        self.http.set_custom(http);
        self
    }

    /// Sets the token client's connect and total timeouts (defaults:
    /// [`CONNECT_TIMEOUT`](crate::CONNECT_TIMEOUT), [`REQUEST_TIMEOUT`](crate::REQUEST_TIMEOUT)).
    /// Replaces a client given with [`with_http_client`](Self::with_http_client).
    pub fn with_timeouts(mut self, connect: Duration, total: Duration) -> Self {
        self.http.set_timeouts(connect, total);
        self
    }

    /// Trusts this certificate authority for the provider's TLS certificate, besides the
    /// system's roots (a provider, or its mTLS endpoint, with a certificate from a private
    /// CA). May be called more than once. Replaces a client given with
    /// [`with_http_client`](Self::with_http_client).
    ///
    /// ```no_run
    /// # use en_auth_core::ClientInfo;
    /// # use en_auth_oauth2::ServiceAccountAuthorizer;
    /// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let ca = reqwest::Certificate::from_pem(&std::fs::read("idp-ca.crt")?)?;
    /// let sa = ServiceAccountAuthorizer::new(ClientInfo::new("svc", "secret"), "https://idp.internal/token")
    ///     .with_root_certificate(ca);
    /// # let _ = sa; Ok(()) }
    /// ```
    pub fn with_root_certificate(mut self, root: reqwest::Certificate) -> Self {
        self.http.add_root(root);
        self
    }

    /// The client certificate token requests present, with mutual TLS client authentication.
    pub fn tls_identity(&self) -> Option<&TlsClientIdentity> {
        self.authentication.tls_identity()
    }

    /// Sender-constrains the tokens with DPoP (RFC 9449), with a fresh EC P-256 key made for
    /// this authorizer: the token request carries a proof of the key, the provider binds the
    /// token to it (`token_type: DPoP`, `cnf.jkt`), and every API request through
    /// [`AuthMiddleware`](en_auth_core::AuthMiddleware) or `AuthLayer` carries
    /// `Authorization: DPoP <token>` and a fresh `DPoP` proof for its method and URL. Server
    /// nonces (`use_dpop_nonce`) are answered with one retry.
    ///
    /// A provider that answers with a plain `Bearer` token ignored the proof; that answer is
    /// refused with [`Error::InvalidResponse`] rather than silently sending an unbound token.
    ///
    /// ```
    /// use en_auth_core::ClientInfo;
    /// use en_auth_oauth2::ServiceAccountAuthorizer;
    /// let sa = ServiceAccountAuthorizer::new(ClientInfo::new("svc", "secret"), "https://idp.example.com/token")
    ///     .with_dpop();
    /// assert!(sa.dpop_thumbprint().is_some());
    /// ```
    pub fn with_dpop(mut self) -> Self {
        self.dpop = match DpopKey::generate() {
            Ok(key) => DpopSetting::On(Arc::new(Dpop::new(key))),
            Err(err) => DpopSetting::Unavailable(err.to_string()),
        };
        self
    }

    /// Like [`with_dpop`](Self::with_dpop), with a key you supply (for example one loaded
    /// with [`DpopKey::from_pkcs8_pem`], so that tokens stay bound to the same key across
    /// restarts).
    pub fn with_dpop_key(mut self, key: DpopKey) -> Self {
        self.dpop = DpopSetting::On(Arc::new(Dpop::new(key)));
        self
    }

    /// Like [`with_dpop`](Self::with_dpop), with proofs — at the token endpoint and for
    /// every API request — signed by `signer`: a key in a KMS or an HSM that never enters the
    /// process (ES256 at least; any algorithm the provider accepts for DPoP).
    ///
    /// **The key is pinned.** Tokens are bound to the signer's public key as
    /// [`Signer::public_jwk`] names it when this is called ([`dpop_thumbprint`](Self::dpop_thumbprint),
    /// the tokens' `cnf.jkt`, part of the cache key). The key that signs is the signer's
    /// [`current`](Signer::current) key, asked for once, at the first proof, and kept for the
    /// authorizer's life: every proof — at the token endpoint and for the API — comes from
    /// that one key, also after the signer rotates (a [`PemFileSigner`](crate::PemFileSigner)
    /// whose file is replaced keeps the key it read first in memory for DPoP; a KMS signer
    /// keeps the key version `current` returned). Tokens and proofs never disagree, so the
    /// API never sees a proof from a key the token is not bound to. To move to a new DPoP key,
    /// build a new authorizer (its tokens are bound to the new key). If the key already
    /// changed between this call and the first proof, proofs are refused with
    /// [`Error::InvalidConfiguration`] naming both thumbprints (nothing is sent).
    ///
    /// A proof for an API request that the signer does not make within
    /// [`LifecyclePolicy::proof_timeout`](en_auth_core::LifecyclePolicy::proof_timeout)
    /// (default 5 s) fails that request with a timeout [`Error::Transport`]; it is never sent
    /// without its proof.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use en_auth_core::ClientInfo;
    /// use en_auth_oauth2::{DpopKey, ServiceAccountAuthorizer, Signer};
    /// let signer: Arc<dyn Signer> = Arc::new(DpopKey::generate().unwrap()); // or your KMS signer
    /// let sa = ServiceAccountAuthorizer::new(ClientInfo::new("svc", "secret"), "https://idp.example.com/token")
    ///     .with_dpop_signer(signer);
    /// assert!(sa.dpop_thumbprint().is_some());
    /// ```
    pub fn with_dpop_signer(mut self, signer: Arc<dyn Signer>) -> Self {
        self.dpop = DpopSetting::On(Arc::new(Dpop::with_signer(signer)));
        self
    }

    /// The RFC 7638 thumbprint of the DPoP key (the `cnf.jkt` of the tokens), when DPoP is on.
    pub fn dpop_thumbprint(&self) -> Option<&str> {
        match &self.dpop {
            DpopSetting::On(dpop) => Some(dpop.thumbprint()),
            _ => None,
        }
    }

    fn dpop(&self) -> Result<Option<&Dpop>, Error> {
        match &self.dpop {
            DpopSetting::Off => Ok(None),
            DpopSetting::On(dpop) => Ok(Some(dpop)),
            DpopSetting::Unavailable(reason) => Err(Error::InvalidConfiguration {
                setting: "DPoP key".into(),
                reason: reason.clone(),
            }),
        }
    }

    /// The token endpoint, discovering it first if needed: for a client authenticating with
    /// mutual TLS, the discovery document's `mtls_endpoint_aliases.token_endpoint` when it
    /// names one (RFC 8705 §5).
    pub async fn token_url(&self) -> Result<Url, Error> {
        match &self.endpoint {
            TokenEndpoint::Fixed(url) => secure_url("token_url", url),
            TokenEndpoint::Discovered { issuer, resolved } => {
                // Discovery needs no client certificate: the plain client.
                let http = self.http.plain()?;
                resolved
                    .get_or_try_init(|| discover_token_endpoints(http, issuer))
                    .await?
                    .for_client(self.authentication.tls_identity().is_some())
            }
        }
    }

    fn form(&self) -> Vec<(&str, &str)> {
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(audience) = &self.audience {
            form.push(("audience", audience));
        }
        form.extend(self.resources.iter().map(|r| ("resource", r.as_str())));
        form.extend(
            self.extra_params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        form
    }

    /// One token request to `url` and its answer, through [`token_endpoint`](crate::token_endpoint).
    async fn request_token(&self, url: Url) -> Result<BearerToken, Error> {
        let started = Instant::now();
        let scope = self.scopes.join(" ");
        let mut form = self.form();
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        let answer = exchange(
            self.http.for_token_requests(&self.authentication)?,
            &url,
            &self.info,
            &self.authentication,
            &form,
            self.default_lifetime,
            self.dpop()?,
        )
        .await?;
        let span = tracing::Span::current();
        span.record("status", answer.status);
        span.record("duration_ms", started.elapsed().as_millis() as u64);
        let granted = answer.result?;
        if let Some(scope) = &granted.scope {
            tracing::debug!(granted_scope = %untrusted_text(scope), "token granted");
        }
        Ok(granted.token)
    }
}

#[async_trait]
impl Authorizer for ServiceAccountAuthorizer {
    type Token = BearerToken;

    fn client_info(&self) -> &ClientInfo {
        &self.info
    }

    async fn authorize(&self) -> Result<BearerToken, Error> {
        let url = self.token_url().await?;
        let span = tracing::debug_span!(
            "en_auth.token_request",
            endpoint = %url_for_logs(&url),
            client_id = self.info.client_id(),
            status = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        let result = self.request_token(url).instrument(span.clone()).await;
        if let Err(err) = &result {
            span.in_scope(|| tracing::debug!(error = %err, "token request failed"));
        }
        result
    }

    fn cache_key(&self) -> CacheKey {
        let endpoint = match &self.endpoint {
            TokenEndpoint::Fixed(url) => url.clone(),
            TokenEndpoint::Discovered { issuer, .. } => format!("issuer:{issuer}"),
        };
        let mut scopes = self.scopes.clone();
        scopes.sort();
        let mut key = CacheKey::builder("oauth2")
            .part("endpoint", &endpoint)
            .part("client_id", self.info.client_id())
            .secret("client_secret", self.info.client_secret().expose_secret())
            .part("audience", self.audience.as_deref().unwrap_or(""))
            .part("scopes", &scopes.join(" "));
        for resource in &self.resources {
            key = key.part("resource", resource);
        }
        for (name, value) in &self.extra_params {
            key = key.part(name, value);
        }
        key = self.authentication.add_to_cache_key(key);
        // DPoP: tokens are bound to the key, so each key has its own.
        if let DpopSetting::On(dpop) = &self.dpop {
            key = key.part("dpop_jkt", dpop.thumbprint());
        }
        key.build()
    }

    fn tls_client_identity(&self) -> Option<reqwest::Identity> {
        self.authentication
            .tls_identity()
            .map(TlsClientIdentity::reqwest_identity)
    }

    fn token_scheme(&self) -> &'static str {
        match self.dpop {
            DpopSetting::Off => "Bearer",
            _ => "DPoP",
        }
    }

    fn uses_request_proofs(&self) -> bool {
        !matches!(self.dpop, DpopSetting::Off)
    }

    async fn request_proof(
        &self,
        token: &BearerToken,
        method: &http::Method,
        url: &str,
    ) -> Result<Option<(http::HeaderName, HeaderValue)>, Error> {
        let Some(dpop) = self.dpop()? else {
            return Ok(None);
        };
        let proof = dpop
            .header(method.as_str(), url, Some(token.access_token()))
            .await?;
        Ok(Some((DPOP_HEADER, proof)))
    }

    fn proof_challenge(&self, url: &str, status: u16, headers: &http::HeaderMap) -> bool {
        match &self.dpop {
            DpopSetting::On(dpop) => dpop.api_challenge(url, status, headers),
            _ => false,
        }
    }
}

impl fmt::Debug for ServiceAccountAuthorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let endpoint = match &self.endpoint {
            TokenEndpoint::Fixed(url) => str_for_logs(url),
            TokenEndpoint::Discovered { issuer, resolved } => match resolved.get() {
                Some(found) => url_for_logs(&found.url),
                None => format!("<discovered from {}>", str_for_logs(issuer)),
            },
        };
        f.debug_struct("ServiceAccountAuthorizer")
            .field("client_info", &self.info)
            .field("token_url", &endpoint)
            .field("audience", &self.audience)
            .field("resources", &self.resources)
            .field("scopes", &self.scopes)
            .field("authentication", &self.authentication)
            .field("dpop", &self.dpop)
            .finish_non_exhaustive()
    }
}
