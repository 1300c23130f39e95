//! The upstream identity provider: token requests on behalf of customers, and the budget its
//! rate-limit headers describe.
//!
//! Each cached key has its own [`UpstreamAuthorizer`] (the customer's id and secret, the
//! audience/resources/scopes asked for), driven by the core lifecycle
//! ([`TokenCache`](en_auth_core::TokenCache)). All authorizers share one [`Upstream`]: the
//! HTTP client, the token endpoint and the [`RateLimits`] read from every answer.
//!
//! Token requests and the reading of their answers are en-auth-oauth2's
//! ([`token_endpoint`]): its answer keeps what `ServiceAccountAuthorizer` keeps to itself, the
//! status and rate-limit headers of *every* answer (for the budget) and the granted `scope`,
//! which the proxy relays to the customer.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use en_auth_core::{AccessToken, Authorizer, BearerToken, CacheKey, ClientInfo, Error, secure_url};
use en_auth_oauth2::ClientAuthentication;
use en_auth_oauth2::token_endpoint::{self, GrantedToken};
use reqwest::Url;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use crate::budget::{Purpose, RateLimits};
use crate::config::UpstreamAuth;
use crate::limits::Mac;
use crate::metrics::Metrics;
use crate::quota::Limits;

/// A token obtained upstream, as the proxy caches it and hands it out: the token and the
/// scope the provider granted.
///
/// Serialized (into the shared store) with the token's fields flattened beside `token_type`
/// and `scope`, as before the token was a [`BearerToken`]: instances of either version read
/// each other's entries. `Debug` redacts the access token.
#[derive(Clone, Serialize, Deserialize)]
pub struct UpstreamToken {
    #[serde(flatten)]
    token: BearerToken,
    /// Always `Bearer` (nothing else is accepted upstream); stored for older instances.
    token_type: String,
    scope: Option<String>,
}

impl UpstreamToken {
    /// The token type the provider named (`Bearer`).
    pub fn token_type(&self) -> &str {
        &self.token_type
    }

    /// The scope the provider granted, if it said.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// The token itself, with its issue and expiry times.
    pub fn bearer(&self) -> &BearerToken {
        &self.token
    }
}

impl From<GrantedToken> for UpstreamToken {
    fn from(granted: GrantedToken) -> Self {
        Self {
            token: granted.token,
            token_type: "Bearer".into(),
            scope: granted.scope,
        }
    }
}

impl AccessToken for UpstreamToken {
    fn access_token(&self) -> &str {
        self.token.access_token()
    }

    fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.token.expires_at()
    }

    fn issued_at(&self) -> Option<DateTime<Utc>> {
        self.token.issued_at()
    }
}

impl fmt::Debug for UpstreamToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamToken")
            .field("access_token", &"[REDACTED]")
            .field("scope", &self.scope)
            .field("expires_at", &self.token.expires_at())
            .finish()
    }
}

/// What a customer asks for: everything besides the credentials that changes the token.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TokenRequest {
    /// Auth0's `audience`.
    pub audience: Option<String>,
    /// RFC 8707 `resource` values, sorted and without duplicates.
    pub resources: Vec<String>,
    /// Scopes, sorted and without duplicates, space-separated; empty for none.
    pub scope: String,
}

/// Where the token endpoint is.
enum Endpoint {
    Fixed(String),
    Discovered {
        issuer: String,
        resolved: OnceCell<Url>,
    },
}

/// The identity provider the proxy talks to, shared by every cached key.
pub struct Upstream {
    endpoint: Endpoint,
    http: reqwest::Client,
    pub(crate) limits: RateLimits,
    metrics: Arc<Metrics>,
}

impl Upstream {
    pub(crate) fn new(
        token_url: Option<String>,
        issuer: Option<String>,
        http: reqwest::Client,
        limits: RateLimits,
        metrics: Arc<Metrics>,
    ) -> Result<Self, Error> {
        let endpoint = match (token_url, issuer) {
            (Some(url), _) => {
                secure_url("EN_AUTH_PROXY_TOKEN_URL", &url)?;
                Endpoint::Fixed(url)
            }
            (None, Some(issuer)) => {
                secure_url("EN_AUTH_PROXY_ISSUER", &issuer)?;
                Endpoint::Discovered {
                    issuer,
                    resolved: OnceCell::new(),
                }
            }
            (None, None) => {
                return Err(Error::MissingConfiguration {
                    setting: "EN_AUTH_PROXY_TOKEN_URL (the upstream token endpoint; or \
                              EN_AUTH_PROXY_ISSUER for OIDC discovery)"
                        .into(),
                });
            }
        };
        Ok(Self {
            endpoint,
            http,
            limits,
            metrics,
        })
    }

    /// A stable name of the upstream, part of every store key.
    fn name(&self) -> String {
        match &self.endpoint {
            Endpoint::Fixed(url) => url.clone(),
            Endpoint::Discovered { issuer, .. } => format!("issuer:{issuer}"),
        }
    }

    /// The token endpoint, discovering it first if needed.
    pub(crate) async fn token_url(&self) -> Result<Url, Error> {
        match &self.endpoint {
            Endpoint::Fixed(url) => secure_url("EN_AUTH_PROXY_TOKEN_URL", url),
            Endpoint::Discovered { issuer, resolved } => resolved
                .get_or_try_init(|| en_auth_oauth2::discover_token_endpoint(&self.http, issuer))
                .await
                .cloned(),
        }
    }

    /// One token request upstream once the budget allows it, and whether it left the proxy
    /// (`false`: the endpoint is unknown or the budget held it back).
    async fn request(
        &self,
        info: &ClientInfo,
        request: &TokenRequest,
        auth: UpstreamAuth,
        purpose: Purpose,
    ) -> (Result<UpstreamToken, Error>, bool) {
        let url = match self.token_url().await {
            Ok(url) => url,
            Err(err) => return (Err(err), false),
        };
        if let Err(err) = self.limits.admit(info.client_id(), purpose).await {
            return (Err(err), false);
        }
        (self.send(url, info, request, auth, purpose).await, true)
    }

    /// Sends one token request through en-auth-oauth2's [`token_endpoint`]; the answer's
    /// headers feed the budget whatever its status.
    async fn send(
        &self,
        url: Url,
        info: &ClientInfo,
        request: &TokenRequest,
        auth: UpstreamAuth,
        purpose: Purpose,
    ) -> Result<UpstreamToken, Error> {
        let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
        if let Some(audience) = &request.audience {
            form.push(("audience", audience));
        }
        form.extend(request.resources.iter().map(|r| ("resource", r.as_str())));
        if !request.scope.is_empty() {
            form.push(("scope", &request.scope));
        }
        let authentication = match auth {
            UpstreamAuth::ClientSecretPost => ClientAuthentication::ClientSecretPost,
            UpstreamAuth::ClientSecretBasic => ClientAuthentication::ClientSecretBasic,
        };
        self.metrics.upstream_request();
        let started = Instant::now();
        let sent =
            token_endpoint::request_token(&self.http, &url, info, &authentication, &form).await;
        let answer = match sent {
            Ok(answer) => answer,
            Err(err) => {
                self.metrics
                    .upstream_answer("error", started.elapsed().as_secs_f64());
                return Err(err);
            }
        };
        let status = answer.status;
        self.limits
            .observe(info.client_id(), status, &answer.headers)
            .await;
        self.metrics.set_upstream_remaining(self.limits.remaining());
        self.metrics
            .upstream_answer(status_class(status), started.elapsed().as_secs_f64());
        tracing::info!(
            client_id = info.client_id(),
            status,
            purpose = purpose.as_str(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "upstream token request"
        );
        answer.result.map(UpstreamToken::from)
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        429 => "429",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// Where a secret the upstream accepted is remembered: the proxy's limits, under the
/// secret's keyed hash.
pub(crate) struct Acceptance {
    pub(crate) limits: Arc<Limits>,
    pub(crate) secret_mac: Mac,
    /// The last call's attempt was taken back (it never left the proxy): the next call
    /// counts it again before it may go upstream.
    pub(crate) recount: AtomicBool,
}

/// Gets one customer's token for one request shape; the core lifecycle decides when.
///
/// Every token the upstream issues remembers the secret as accepted in the proxy's limits,
/// in the fetch itself: whether a customer still waits for it or not (one who hung up, a
/// renewal in the background), its 30 days run from the upstream's latest acceptance.
pub struct UpstreamAuthorizer {
    info: ClientInfo,
    request: TokenRequest,
    auth: UpstreamAuth,
    upstream: Arc<Upstream>,
    acceptance: Option<Acceptance>,
}

impl UpstreamAuthorizer {
    pub(crate) fn new(
        info: ClientInfo,
        request: TokenRequest,
        auth: UpstreamAuth,
        upstream: Arc<Upstream>,
        acceptance: Option<Acceptance>,
    ) -> Self {
        Self {
            info,
            request,
            auth,
            upstream,
            acceptance,
        }
    }

    /// One upstream call for this secret and request. An attempt of a secret not known to be
    /// good stays counted once something left the proxy, and is counted again (refused here
    /// past the limit) before a call that follows one taken back, so no upstream request of
    /// a guesser goes uncounted.
    async fn call(&self, purpose: Purpose) -> Result<UpstreamToken, Error> {
        let Some(acceptance) = &self.acceptance else {
            return self
                .upstream
                .request(&self.info, &self.request, self.auth, purpose)
                .await
                .0;
        };
        let client_id = self.info.client_id();
        let limits = &acceptance.limits;
        let attempt = crate::quota::attempt(&acceptance.secret_mac, &self.request);
        // The request handler counted the attempt before the fetch; a call after one that was
        // taken back (a retry, a renewal) counts it again.
        if acceptance.recount.swap(false, Ordering::Relaxed) {
            if let Some(wait) = limits
                .gate(client_id, &acceptance.secret_mac, attempt)
                .await
            {
                return Err(Error::RateLimited {
                    retry_after: Some(wait),
                    reset_at: None,
                });
            }
        }
        let (answer, sent) = self
            .upstream
            .request(&self.info, &self.request, self.auth, purpose)
            .await;
        match &answer {
            // Accepted: remembered, in the fetch itself (whether a caller still waits or not).
            Ok(_) => {
                limits
                    .accepted(client_id, acceptance.secret_mac, attempt)
                    .await;
            }
            // Refused (revoked after a leak, or a guess): no longer known to be good.
            Err(err) if is_wrong_secret(err) => {
                limits.refused(client_id, &acceptance.secret_mac).await;
            }
            // Held back before anything left the proxy: the attempt does not count (the next
            // call counts it again). Anything that was sent stays counted.
            Err(_) if !sent => {
                limits.untried(client_id, &attempt).await;
                acceptance.recount.store(true, Ordering::Relaxed);
            }
            Err(_) => {}
        }
        answer
    }
}

/// Whether the upstream refused the client's credentials: `invalid_client` (RFC 6749), or any
/// 401 (Auth0 answers a wrong client secret with 401 `access_denied`; a gateway may answer
/// 401 without an OAuth2 body).
fn is_wrong_secret(err: &Error) -> bool {
    matches!(
        err,
        Error::InvalidClient { .. }
            | Error::Authorization {
                status: Some(401),
                ..
            }
            | Error::InvalidResponse {
                status: Some(401),
                ..
            }
    )
}

impl fmt::Debug for UpstreamAuthorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamAuthorizer")
            .field("client_info", &self.info)
            .field("request", &self.request)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Authorizer for UpstreamAuthorizer {
    type Token = UpstreamToken;

    fn client_info(&self) -> &ClientInfo {
        &self.info
    }

    async fn authorize(&self) -> Result<UpstreamToken, Error> {
        self.call(Purpose::Miss).await
    }

    async fn refresh(&self, token: &UpstreamToken) -> Result<UpstreamToken, Error> {
        let purpose = match token.expires_at() {
            Some(at) if at > Utc::now() => Purpose::Refresh,
            _ => Purpose::Miss,
        };
        self.call(purpose).await
    }

    fn cache_key(&self) -> CacheKey {
        let mut key = CacheKey::builder("proxy")
            .part("upstream", &self.upstream.name())
            .part("client_id", self.info.client_id())
            .secret("client_secret", self.info.client_secret().expose_secret())
            .part("audience", self.request.audience.as_deref().unwrap_or(""))
            .part("scope", &self.request.scope);
        for resource in &self.request.resources {
            key = key.part("resource", resource);
        }
        key.build()
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("endpoint", &self.name())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use en_auth_core::BearerToken;

    /// The store holds tokens as JSON: the access token in clear (the store encrypts), the
    /// fields as instances before en-auth-oauth2's `BearerToken` wrote them; `Debug` redacts.
    #[test]
    fn tokens_round_trip_through_the_store_format_and_debug_redacts() {
        let token = UpstreamToken::from(GrantedToken {
            token: BearerToken::new("tok-secret-1", Some(std::time::Duration::from_secs(600))),
            scope: Some("read write".into()),
        });
        let json: serde_json::Value = serde_json::to_value(&token).unwrap();
        let mut keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "access_token",
                "expires_at",
                "issued_at",
                "scope",
                "token_type"
            ]
        );
        assert_eq!(json["access_token"], "tok-secret-1");
        assert_eq!(json["token_type"], "Bearer");
        let back: UpstreamToken = serde_json::from_value(json).unwrap();
        assert_eq!(back.access_token(), "tok-secret-1");
        assert_eq!(back.scope(), Some("read write"));
        assert_eq!(back.expires_at(), token.expires_at());
        assert_eq!(back.issued_at(), token.issued_at());
        // An entry written by an instance from before this change.
        let old = r#"{"access_token":"old-tok","token_type":"Bearer","scope":null,
            "issued_at":"2026-01-01T00:00:00Z","expires_at":"2026-01-01T01:00:00Z"}"#;
        let old: UpstreamToken = serde_json::from_str(old).unwrap();
        assert_eq!(old.access_token(), "old-tok");
        assert_eq!(
            (old.expires_at().unwrap() - old.issued_at().unwrap()).num_seconds(),
            3600
        );
        let shown = format!("{token:?}");
        assert!(
            shown.contains("REDACTED") && !shown.contains("tok-secret-1"),
            "{shown}"
        );
    }
}
