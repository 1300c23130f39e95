//! [`TokenExchangeAuthorizer`]: OAuth 2.0 Token Exchange (RFC 8693), and [`SubjectToken`], the
//! token it exchanges. The rules are on [`TokenExchangeAuthorizer`].

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use en_auth_core::{
    AccessToken, Authorizer, BearerToken, CacheKey, ClientInfo, Error, secure_url, str_for_logs,
    untrusted_text,
};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use crate::assertion::AssertionSource;
use crate::grant::{GrantAuthentication, GrantClient, TokenTarget, send_grant};
use crate::token_client::TokenClient;

/// The token exchange grant type (RFC 8693 §2.1).
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Token type of an OAuth 2.0 access token (RFC 8693 §3).
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Token type of an OAuth 2.0 refresh token (RFC 8693 §3).
pub const REFRESH_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:refresh_token";
/// Token type of an OpenID Connect ID token (RFC 8693 §3).
pub const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
/// Token type of a JWT (RFC 8693 §3): a Kubernetes service-account token, a SPIFFE JWT-SVID,
/// a CI system's OIDC token.
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// Token type of a base64url-encoded SAML 1.1 assertion (RFC 8693 §3).
pub const SAML1_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:saml1";
/// Token type of a base64url-encoded SAML 2.0 assertion (RFC 8693 §3).
pub const SAML2_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:saml2";

/// A token to exchange (the subject, or the actor), and its RFC 8693 token type.
///
/// Read afresh for every token request; never cached. `Debug` shows where it comes from
/// (the file's path, `callback`, or `value`) and its type, never the token.
///
/// ```
/// use en_auth_oauth2::{JWT_TOKEN_TYPE, SubjectToken};
/// // A Kubernetes projected service-account token, rewritten by the kubelet.
/// let subject = SubjectToken::file("/var/run/secrets/tokens/exchange", JWT_TOKEN_TYPE);
/// assert!(format!("{subject:?}").contains("/var/run/secrets/tokens/exchange"));
/// ```
#[derive(Clone)]
pub struct SubjectToken {
    source: Subject,
    token_type: String,
}

#[derive(Clone)]
enum Subject {
    Source(AssertionSource),
    Value(Arc<SecretString>),
}

impl SubjectToken {
    /// The token is the content of the file at `path` (trimmed), read for each token request.
    /// A missing, unreadable or empty file is [`Error::CredentialUnavailable`] naming the
    /// path, before any request is sent.
    ///
    /// The path, not the token, is what the cache key holds: see
    /// [`TokenExchangeAuthorizer::with_identity_label`] when workloads of different identities
    /// share a client, a token store and the path.
    pub fn file(path: impl Into<PathBuf>, token_type: impl Into<String>) -> Self {
        Self::from_source(AssertionSource::file(path), token_type)
    }

    /// The token is what `fetch` returns, called for each token request (a SPIFFE workload
    /// API, a CI system's OIDC endpoint).
    pub fn from_fn<F, Fut, S>(fetch: F, token_type: impl Into<String>) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<S, Error>> + Send + 'static,
        S: Into<String>,
    {
        Self::from_source(AssertionSource::from_fn(fetch), token_type)
    }

    /// The token comes from `source`.
    pub fn from_source(source: AssertionSource, token_type: impl Into<String>) -> Self {
        Self {
            source: Subject::Source(source),
            token_type: token_type.into(),
        }
    }

    /// A fixed token: a caller's access token exchanged on its behalf (what
    /// [`OnBehalfOf`](crate::OnBehalfOf) does for each caller).
    pub fn value(token: impl Into<String>, token_type: impl Into<String>) -> Self {
        Self {
            source: Subject::Value(Arc::new(SecretString::from(token.into()))),
            token_type: token_type.into(),
        }
    }

    /// The RFC 8693 token type sent with the token (`subject_token_type` / `actor_token_type`).
    pub fn token_type(&self) -> &str {
        &self.token_type
    }

    /// Where the token comes from, for logs: the file's path, `callback` or `value`.
    pub fn origin(&self) -> String {
        match &self.source {
            Subject::Source(source) => source.origin(),
            Subject::Value(_) => "value".to_owned(),
        }
    }

    /// Reads the token now.
    pub(crate) async fn read(&self) -> Result<SecretString, Error> {
        match &self.source {
            Subject::Source(source) => source.read().await,
            Subject::Value(value) if value.expose_secret().trim().is_empty() => {
                Err(Error::CredentialUnavailable {
                    credential: "value".into(),
                    reason: "empty".into(),
                })
            }
            Subject::Value(value) => Ok(SecretString::from(value.expose_secret().to_owned())),
        }
    }

    /// Adds the token's origin (a fixed token: its hash, never the token) and type to a key.
    fn add_to_cache_key(
        &self,
        role: &str,
        key: en_auth_core::CacheKeyBuilder,
    ) -> en_auth_core::CacheKeyBuilder {
        let key = key.part(&format!("{role}_token_type"), &self.token_type);
        match &self.source {
            Subject::Source(source) => key.part(&format!("{role}_token_from"), &source.origin()),
            Subject::Value(value) => {
                key.secret(&format!("{role}_token_value"), value.expose_secret())
            }
        }
    }
}

impl fmt::Debug for SubjectToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubjectToken")
            .field("from", &self.origin())
            .field("token_type", &self.token_type)
            .finish()
    }
}

/// What a token exchange asks for, shared by [`TokenExchangeAuthorizer`] and
/// [`OnBehalfOf`](crate::OnBehalfOf).
#[derive(Clone)]
pub(crate) struct ExchangeSettings {
    pub(crate) info: ClientInfo,
    pub(crate) token_url: String,
    pub(crate) actor: Option<SubjectToken>,
    pub(crate) target: TokenTarget,
    pub(crate) requested_token_type: Option<String>,
    pub(crate) authentication: GrantAuthentication,
    pub(crate) default_lifetime: Option<Duration>,
    pub(crate) http: TokenClient,
    /// [`TokenExchangeAuthorizer::with_identity_label`].
    pub(crate) identity_label: Option<String>,
}

impl ExchangeSettings {
    pub(crate) fn new(info: ClientInfo, token_url: &str) -> Self {
        Self {
            info,
            token_url: token_url.to_owned(),
            actor: None,
            target: TokenTarget::default(),
            requested_token_type: None,
            authentication: GrantAuthentication::Default,
            default_lifetime: None,
            http: TokenClient::new(),
            identity_label: None,
        }
    }

    /// One exchange of `subject`: the token, or why not.
    pub(crate) async fn exchange(&self, subject: &SubjectToken) -> Result<BearerToken, Error> {
        let url = secure_url("token_url", &self.token_url)?;
        // Both read before anything is sent: a missing file costs no provider request.
        let subject_token = subject.read().await?;
        let actor_token = match &self.actor {
            Some(actor) => Some(actor.read().await?),
            None => None,
        };
        let mut form = vec![
            ("grant_type", TOKEN_EXCHANGE_GRANT),
            ("subject_token", subject_token.expose_secret()),
            ("subject_token_type", subject.token_type()),
        ];
        if let (Some(actor), Some(token)) = (&self.actor, &actor_token) {
            form.push(("actor_token", token.expose_secret()));
            form.push(("actor_token_type", actor.token_type()));
        }
        self.target.add_to_form(&mut form);
        if let Some(requested) = &self.requested_token_type {
            form.push(("requested_token_type", requested));
        }
        let requested = self.requested_token_type.as_deref();
        let client = GrantClient {
            http: &self.http,
            info: &self.info,
            authentication: &self.authentication,
            default_lifetime: self.default_lifetime,
        };
        let granted = send_grant(client, &url, "token-exchange", form, |status, body| {
            check_issued_type(status, body, requested)
        })
        .await?;
        Ok(granted.token)
    }

    pub(crate) fn cache_key(&self, subject: &SubjectToken) -> CacheKey {
        let key = CacheKey::builder("oauth2-token-exchange")
            .part("endpoint", &self.token_url)
            .part("client_id", self.info.client_id())
            .secret("client_secret", self.info.client_secret().expose_secret())
            .part(
                "requested_token_type",
                self.requested_token_type.as_deref().unwrap_or(""),
            );
        let mut key = self.target.add_to_cache_key(key);
        if let Some(label) = &self.identity_label {
            key = key.part("identity_label", label);
        }
        key = subject.add_to_cache_key("subject", key);
        if let Some(actor) = &self.actor {
            key = actor.add_to_cache_key("actor", key);
        }
        self.authentication
            .add_to_cache_key(&self.info, key)
            .build()
    }

    pub(crate) fn debug_fields(&self, f: &mut fmt::DebugStruct<'_, '_>) {
        f.field("client_info", &self.info)
            .field("token_url", &str_for_logs(&self.token_url))
            .field("actor", &self.actor)
            .field("target", &self.target)
            .field("requested_token_type", &self.requested_token_type)
            .field("identity_label", &self.identity_label)
            .field("authentication", &self.authentication);
    }
}

/// Checks the RFC 8693 §2.2.1 fields of a successful answer: `issued_token_type` (a string,
/// the requested type when one was asked for) and `token_type` (present; `N_A` refused).
fn check_issued_type(status: u16, body: &[u8], requested: Option<&str>) -> Result<(), Error> {
    // A body that is not a JSON object is left to the shared parser, which names the problem.
    let Ok(serde_json::Value::Object(answer)) = serde_json::from_slice(body) else {
        return Ok(());
    };
    let refuse = |reason: String| Error::InvalidResponse {
        status: Some(status),
        reason,
    };
    let text = |name: &str| match answer.get(name) {
        None | Some(serde_json::Value::Null) => Err(refuse(format!(
            "the token exchange answer has no {name} (required by RFC 8693 §2.2.1)"
        ))),
        Some(serde_json::Value::String(value)) => Ok(value.as_str()),
        Some(_) => Err(refuse(format!(
            "the token exchange answer's {name} is not a string"
        ))),
    };
    let issued = text("issued_token_type")?;
    if text("token_type")?.eq_ignore_ascii_case("N_A") {
        return Err(refuse(format!(
            "the exchange issued a `{}` with token_type N_A: not an access token, so it cannot \
             be sent as a bearer token (RFC 8693 §2.2.1); ask for an access token with \
             with_requested_token_type(ACCESS_TOKEN_TYPE)",
            untrusted_text(issued)
        )));
    }
    if let Some(requested) = requested {
        if issued != requested {
            return Err(refuse(format!(
                "the exchange issued a `{}` where `{}` was requested",
                untrusted_text(issued),
                requested
            )));
        }
    }
    Ok(())
}

/// The builder methods [`TokenExchangeAuthorizer`] and [`OnBehalfOf`](crate::OnBehalfOf)
/// share: each changes the [`ExchangeSettings`] the type's `settings_mut()` hands out.
macro_rules! exchange_builder_methods {
    () => {
        /// Exchanges with `actor` as the party acting (RFC 8693 §1.1, delegation): sent as
        /// `actor_token` and `actor_token_type`, read afresh per exchange.
        pub fn with_actor(mut self, actor: $crate::SubjectToken) -> Self {
            self.settings_mut().actor = Some(actor);
            self
        }

        /// The logical name of a service the token is for (`audience`, RFC 8693 §2.1); may
        /// be called more than once, each audience sent as its own `audience` parameter.
        pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
            self.settings_mut().target.audiences.push(audience.into());
            self
        }

        /// The URI of a resource the token is for (`resource`, RFC 8693 §2.1 / RFC 8707);
        /// may be called more than once.
        pub fn with_resource(mut self, resource: impl Into<String>) -> Self {
            self.settings_mut().target.resources.push(resource.into());
            self
        }

        /// Asks for these scopes (sent space-separated as `scope`).
        pub fn with_scopes<I, S>(mut self, scopes: I) -> Self
        where
            I: IntoIterator<Item = S>,
            S: Into<String>,
        {
            self.settings_mut().target.set_scopes(scopes);
            self
        }

        /// Asks for a token of this type (`requested_token_type`, e.g.
        /// [`ACCESS_TOKEN_TYPE`]($crate::ACCESS_TOKEN_TYPE)); an answer of another type is
        /// then refused.
        pub fn with_requested_token_type(mut self, token_type: impl Into<String>) -> Self {
            self.settings_mut().requested_token_type = Some(token_type.into());
            self
        }

        /// How the client authenticates (default: `client_secret_basic`, or none for a
        /// client with an empty secret).
        ///
        /// With mutual TLS
        /// ([`ClientAuthentication::tls_client_auth`]($crate::ClientAuthentication::tls_client_auth))
        /// token requests present the certificate; the rules are those of
        /// [`ServiceAccountAuthorizer::with_authentication`]($crate::ServiceAccountAuthorizer::with_authentication).
        pub fn with_authentication(mut self, authentication: $crate::ClientAuthentication) -> Self {
            let settings = self.settings_mut();
            settings.authentication = $crate::grant::GrantAuthentication::Client(authentication);
            settings.http.authentication_changed();
            self
        }

        /// No client authentication: the request names the client with `client_id` only (a
        /// public client), or not at all when the client id is empty.
        pub fn without_client_authentication(mut self) -> Self {
            self.settings_mut().authentication = $crate::grant::GrantAuthentication::Public;
            self
        }

        /// Lifetime given to tokens whose answer has no `expires_in` (a token exchanged for
        /// a caller still never outlives the caller's token).
        pub fn with_default_lifetime(mut self, lifetime: std::time::Duration) -> Self {
            self.settings_mut().default_lifetime = Some(lifetime);
            self
        }

        /// Uses your own HTTP client for token requests (build it without redirects and with
        /// timeouts, as en-auth's own is). Not with mutual TLS client authentication: token
        /// requests then fail with `Error::InvalidConfiguration` rather than go out without
        /// the certificate (see [`with_root_certificate`](Self::with_root_certificate)).
        pub fn with_http_client(mut self, http: reqwest::Client) -> Self {
            self.settings_mut().http.set_custom(http);
            self
        }

        /// Trusts this certificate authority for the provider's TLS certificate, besides the
        /// system's roots. Replaces a client given with
        /// [`with_http_client`](Self::with_http_client).
        pub fn with_root_certificate(mut self, root: reqwest::Certificate) -> Self {
            self.settings_mut().http.add_root(root);
            self
        }
    };
}
pub(crate) use exchange_builder_methods;

/// What a token exchanged for a caller ([`OnBehalfOf`](crate::OnBehalfOf)) keeps to: the end
/// of the caller's token.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CallerLimit {
    /// The caller's token's expiry on the wall clock: exchanged tokens' expiry is clamped to
    /// it.
    pub(crate) expires_at: DateTime<Utc>,
    /// The same moment on the lifecycle's (tokio's) clock: the wall clock is read once, when
    /// the caller is first seen, and everything after runs on this one.
    pub(crate) deadline: Instant,
}

impl CallerLimit {
    /// The limit of a caller token expiring at `expires_at`.
    pub(crate) fn new(expires_at: DateTime<Utc>) -> Self {
        let left = (expires_at - Utc::now()).to_std().unwrap_or_default();
        let now = Instant::now();
        Self {
            expires_at,
            // An `exp` millennia away (a hostile or careless one) is as good as never.
            deadline: now
                .checked_add(left)
                .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
                .unwrap_or(now),
        }
    }

    /// Whether the caller's token has expired.
    pub(crate) fn passed(&self) -> bool {
        Instant::now() >= self.deadline
    }
}

/// Obtains access tokens by OAuth 2.0 Token Exchange (RFC 8693): a token someone else
/// issued (the *subject token*: a Kubernetes service-account token, a CI system's OIDC token,
/// a caller's access token) traded at the token endpoint for an access token of this provider.
///
/// # The request (RFC 8693 §2.1)
/// `grant_type=urn:ietf:params:oauth:grant-type:token-exchange` with `subject_token` and
/// `subject_token_type`; `actor_token` and `actor_token_type` when an actor is set
/// ([`with_actor`](Self::with_actor)); `audience`, `resource` (repeatable),
/// `scope` and `requested_token_type` when set. The client authenticates as the
/// [`ClientAuthentication`](crate::ClientAuthentication) says (default `client_secret_basic`; a client with an empty secret
/// is a public client and sends only `client_id`).
///
/// The subject (and actor) token is read afresh for every token request from its
/// [`SubjectToken`] source (a file the kubelet rewrites, a callback) and never kept.
///
/// # The answer (RFC 8693 §2.2.1)
/// - `issued_token_type` is required: an answer without one is refused.
/// - When a [`requested_token_type`](Self::with_requested_token_type) was
///   sent, an answer of another type is refused.
/// - `token_type: N_A` says the issued token is not an access token (a bare JWT or ID token
///   for someone else to consume): it cannot be sent as `Authorization: Bearer`, so it is
///   refused. Every refusal is [`Error::InvalidResponse`] naming the types, never the token.
///
/// ```no_run
/// use en_auth_core::{AuthMiddleware, ClientInfo};
/// use en_auth_oauth2::{JWT_TOKEN_TYPE, SubjectToken, TokenExchangeAuthorizer};
///
/// // A workload trades its Kubernetes service-account token for an access token.
/// let authorizer = TokenExchangeAuthorizer::new(
///     ClientInfo::new("orders-service", ""), // a public client: no secret
///     "https://idp.example.com/oauth2/token",
///     SubjectToken::file("/var/run/secrets/tokens/exchange", JWT_TOKEN_TYPE),
/// )
/// .with_audience("https://api.example.com")
/// .with_scopes(["read:orders"]);
/// let auth = AuthMiddleware::new(authorizer);
/// ```
pub struct TokenExchangeAuthorizer {
    settings: ExchangeSettings,
    subject: SubjectToken,
    /// A token exchanged for a caller ([`OnBehalfOf`](crate::OnBehalfOf)) never outlives the
    /// caller's token: its expiry is clamped to this. Set at most once, when the caller's
    /// expiry becomes known.
    caller: OnceLock<CallerLimit>,
    /// An API rejected the token: the next refresh exchanges anew, even when the token could
    /// not be bettered otherwise.
    rejected: AtomicBool,
}

impl TokenExchangeAuthorizer {
    /// An authorizer exchanging `subject` as client `client_info` at `token_url` (which must
    /// be `https://`, or `http://` on loopback; checked before each request).
    pub fn new(client_info: ClientInfo, token_url: impl AsRef<str>, subject: SubjectToken) -> Self {
        Self::with_settings(
            ExchangeSettings::new(client_info, token_url.as_ref()),
            subject,
        )
    }

    pub(crate) fn with_settings(settings: ExchangeSettings, subject: SubjectToken) -> Self {
        Self {
            settings,
            subject,
            caller: OnceLock::new(),
            rejected: AtomicBool::new(false),
        }
    }

    fn settings_mut(&mut self) -> &mut ExchangeSettings {
        &mut self.settings
    }

    exchange_builder_methods!();

    /// Names the identity whose tokens this authorizer obtains, in its cache key.
    ///
    /// The cache key holds where the subject token comes from (a file's path, `callback`),
    /// never the token, so two authorizers with the same client, settings and subject path
    /// share a key. That is right for the replicas of one workload; but with a public client
    /// shared by several workloads and a shared token store, pods of *different* service
    /// accounts whose tokens are projected at the same path would share tokens. Set this to
    /// the workload's identity (e.g. `system:serviceaccount:shop:orders`) in that case.
    pub fn with_identity_label(mut self, label: impl Into<String>) -> Self {
        self.settings.identity_label = Some(label.into());
        self
    }

    /// The subject token's source.
    pub fn subject(&self) -> &SubjectToken {
        &self.subject
    }

    /// The limit of the caller's token this authorizer exchanges, once known.
    pub(crate) fn caller_limit(&self) -> Option<&CallerLimit> {
        self.caller.get()
    }

    /// Sets the limit of the caller's token, if none is set yet.
    pub(crate) fn limit_to_caller(&self, limit: CallerLimit) {
        let _ = self.caller.set(limit);
    }

    /// Records that an API rejected the current token (`true`): the next refresh exchanges
    /// anew, whatever the token's expiry. `false` takes that back.
    pub(crate) fn set_rejected(&self, rejected: bool) {
        self.rejected.store(rejected, Ordering::Release);
    }

    /// The exchanged token, its expiry clamped to the caller's.
    async fn exchange(&self) -> Result<BearerToken, Error> {
        let token = self.settings.exchange(&self.subject).await?;
        Ok(match self.caller.get() {
            Some(limit) if token.expires_at().is_none_or(|at| at > limit.expires_at) => {
                BearerToken::with_times(
                    token.access_token(),
                    token.issued_at().unwrap_or_else(Utc::now),
                    Some(limit.expires_at),
                )
            }
            _ => token,
        })
    }
}

#[async_trait]
impl Authorizer for TokenExchangeAuthorizer {
    type Token = BearerToken;

    fn tls_client_identity(&self) -> Option<reqwest::Identity> {
        self.settings
            .authentication
            .tls_identity()
            .map(crate::TlsClientIdentity::reqwest_identity)
    }

    fn client_info(&self) -> &ClientInfo {
        &self.settings.info
    }

    async fn authorize(&self) -> Result<BearerToken, Error> {
        self.exchange().await
    }

    async fn refresh(&self, token: &BearerToken) -> Result<BearerToken, Error> {
        // A token already clamped to the caller's expiry cannot be bettered: a new exchange of
        // the same caller's token would end at the same moment. Keep it, without a request —
        // unless an API rejected it. The rejection is forgotten only once a new token is in
        // hand: a failed attempt, retried, must not hand the rejected token back.
        let rejected = self.rejected.load(Ordering::Acquire);
        if let (false, Some(limit), Some(at)) = (rejected, self.caller.get(), token.expires_at()) {
            if at >= limit.expires_at && !limit.passed() {
                return Ok(token.clone());
            }
        }
        let fresh = self.exchange().await?;
        self.rejected.store(false, Ordering::Release);
        Ok(fresh)
    }

    fn cache_key(&self) -> CacheKey {
        self.settings.cache_key(&self.subject)
    }
}

impl fmt::Debug for TokenExchangeAuthorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("TokenExchangeAuthorizer");
        s.field("subject", &self.subject);
        self.settings.debug_fields(&mut s);
        s.finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str, requested: Option<&str>) -> Result<(), String> {
        check_issued_type(200, body.as_bytes(), requested).map_err(|e| e.to_string())
    }

    #[test]
    fn issued_token_type_is_required_and_must_match_the_request() {
        let ok = r#"{"access_token":"t","token_type":"Bearer","issued_token_type":"urn:ietf:params:oauth:token-type:access_token"}"#;
        assert_eq!(check(ok, None), Ok(()));
        assert_eq!(check(ok, Some(ACCESS_TOKEN_TYPE)), Ok(()));
        let err = check(ok, Some(JWT_TOKEN_TYPE)).unwrap_err();
        assert!(
            err.contains("where `urn:ietf:params:oauth:token-type:jwt` was requested"),
            "{err}"
        );
        let err = check(r#"{"access_token":"t","token_type":"Bearer"}"#, None).unwrap_err();
        assert!(err.contains("no issued_token_type"), "{err}");
        let na = r#"{"access_token":"secret-jwt","token_type":"N_A","issued_token_type":"urn:ietf:params:oauth:token-type:jwt"}"#;
        let err = check(na, Some(JWT_TOKEN_TYPE)).unwrap_err();
        assert!(err.contains("N_A") && !err.contains("secret-jwt"), "{err}");
        // Not JSON: left to the shared parser.
        assert_eq!(check("<html>", None), Ok(()));
    }

    #[test]
    fn issued_token_type_and_token_type_must_be_strings_and_present() {
        for (body, expected) in [
            (
                r#"{"access_token":"t","token_type":"Bearer","issued_token_type":42}"#,
                "issued_token_type is not a string",
            ),
            (
                r#"{"access_token":"t","token_type":"Bearer","issued_token_type":["a"]}"#,
                "issued_token_type is not a string",
            ),
            (
                r#"{"access_token":"t","token_type":"Bearer","issued_token_type":null}"#,
                "no issued_token_type",
            ),
            (
                r#"{"access_token":"t","issued_token_type":"urn:ietf:params:oauth:token-type:access_token"}"#,
                "no token_type",
            ),
            (
                r#"{"access_token":"t","token_type":7,"issued_token_type":"urn:ietf:params:oauth:token-type:access_token"}"#,
                "token_type is not a string",
            ),
        ] {
            for requested in [None, Some(ACCESS_TOKEN_TYPE)] {
                let err = check(body, requested).unwrap_err();
                assert!(err.contains(expected), "{body}: {err}");
            }
        }
    }

    #[test]
    fn debug_and_cache_keys_never_show_a_fixed_subject_token() {
        let subject = SubjectToken::value("caller-token-secret", ACCESS_TOKEN_TYPE);
        let auth = TokenExchangeAuthorizer::new(
            ClientInfo::new("svc", "client-secret-1"),
            "https://idp.example.com/token",
            subject,
        );
        let shown = format!("{auth:?} {}", auth.cache_key());
        assert!(!shown.contains("caller-token-secret") && !shown.contains("client-secret-1"));
        let other = TokenExchangeAuthorizer::new(
            ClientInfo::new("svc", "client-secret-1"),
            "https://idp.example.com/token",
            SubjectToken::value("another-caller", ACCESS_TOKEN_TYPE),
        );
        assert_ne!(auth.cache_key(), other.cache_key());
    }

    #[test]
    fn an_identity_label_separates_workloads_reading_the_same_path() {
        let authorizer = || {
            TokenExchangeAuthorizer::new(
                ClientInfo::new("shared-public-client", ""),
                "https://idp.example.com/token",
                SubjectToken::file("/var/run/secrets/tokens/exchange", JWT_TOKEN_TYPE),
            )
        };
        assert_eq!(authorizer().cache_key(), authorizer().cache_key());
        let orders = authorizer().with_identity_label("system:serviceaccount:shop:orders");
        let billing = authorizer().with_identity_label("system:serviceaccount:shop:billing");
        assert_ne!(orders.cache_key(), billing.cache_key());
        assert_ne!(orders.cache_key(), authorizer().cache_key());
    }
}
