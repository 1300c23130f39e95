//! The upstream identity provider: token requests on behalf of customers, and the budget its
//! rate-limit headers describe.
//!
//! Each cached key has its own [`UpstreamAuthorizer`] (the customer's id and secret, the
//! audience/resources/scopes asked for), driven by the core lifecycle
//! ([`TokenCache`](en_auth_core::TokenCache)). All authorizers share one [`Upstream`]: the
//! HTTP client, the token endpoint and the [`RateLimits`] read from every answer.
//!
//! The proxy does its own upstream HTTP (rather than wrapping `ServiceAccountAuthorizer`)
//! because it must see what that authorizer keeps to itself: the rate-limit headers of
//! *successful* answers and the granted `scope`, which it relays to the customer.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use chrono::{DateTime, Utc};
use en_auth_core::{
    AccessToken, Authorizer, CacheKey, ClientInfo, Error, MAX_DOCUMENT_BYTES, read_body_limited,
    secure_url, untrusted_text,
};
use http::HeaderMap;
use parking_lot::Mutex;
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use crate::config::UpstreamAuth;
use crate::metrics::Metrics;

/// A token obtained upstream, as the proxy caches it and hands it out.
#[derive(Clone, Serialize, Deserialize)]
pub struct UpstreamToken {
    #[serde(serialize_with = "en_auth_core::serialize_secret")]
    access_token: SecretString,
    token_type: String,
    scope: Option<String>,
    issued_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
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
}

impl AccessToken for UpstreamToken {
    fn access_token(&self) -> &str {
        self.access_token.expose_secret()
    }

    fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }

    fn issued_at(&self) -> Option<DateTime<Utc>> {
        Some(self.issued_at)
    }
}

impl fmt::Debug for UpstreamToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamToken")
            .field("access_token", &"[REDACTED]")
            .field("scope", &self.scope)
            .field("expires_at", &self.expires_at)
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
                .get_or_try_init(|| async {
                    let config = en_auth_core::discover(&self.http, issuer).await?;
                    let url = config
                        .token_endpoint
                        .ok_or_else(|| Error::InvalidResponse {
                            status: Some(200),
                            reason: "the issuer's discovery document names no token_endpoint; set \
                                 EN_AUTH_PROXY_TOKEN_URL instead"
                                .into(),
                        })?;
                    secure_url("token_endpoint", &url)
                })
                .await
                .cloned(),
        }
    }

    /// One token request upstream (after the budget allowed it).
    async fn request(
        &self,
        info: &ClientInfo,
        request: &TokenRequest,
        auth: UpstreamAuth,
        purpose: Purpose,
    ) -> Result<UpstreamToken, Error> {
        let url = self.token_url().await?;
        self.limits.admit(info.client_id(), purpose)?;
        let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
        if let Some(audience) = &request.audience {
            form.push(("audience", audience));
        }
        form.extend(request.resources.iter().map(|r| ("resource", r.as_str())));
        if !request.scope.is_empty() {
            form.push(("scope", &request.scope));
        }
        let mut builder = self.http.post(url).header(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        match auth {
            UpstreamAuth::ClientSecretBasic => {
                builder = builder.header(AUTHORIZATION, basic_header(info)?);
            }
            UpstreamAuth::ClientSecretPost => {
                form.push(("client_id", info.client_id()));
                form.push(("client_secret", info.client_secret().expose_secret()));
            }
        }
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        self.metrics.upstream_request();
        let started = Instant::now();
        let sent = builder.body(body).send().await;
        let mut response = match sent {
            Ok(response) => response,
            Err(err) => {
                self.metrics
                    .upstream_answer("error", started.elapsed().as_secs_f64());
                return Err(Error::from(err));
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        self.limits.observe(info.client_id(), status, &headers);
        self.metrics.set_upstream_remaining(self.limits.remaining());
        let bytes = read_body_limited(&mut response, MAX_DOCUMENT_BYTES).await;
        self.metrics
            .upstream_answer(status_class(status), started.elapsed().as_secs_f64());
        let result = parse_answer(status, &headers, &bytes?);
        tracing::info!(
            client_id = info.client_id(),
            status,
            purpose = purpose.as_str(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "upstream token request"
        );
        result
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

fn basic_header(info: &ClientInfo) -> Result<HeaderValue, Error> {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!(
        "{}:{}",
        enc(info.client_id()),
        enc(info.client_secret().expose_secret())
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
    let mut value =
        HeaderValue::try_from(format!("Basic {encoded}")).map_err(|_| Error::InvalidResponse {
            status: None,
            reason: "client credentials cannot be sent in a header".into(),
        })?;
    value.set_sensitive(true);
    Ok(value)
}

#[derive(Deserialize)]
struct SuccessBody {
    access_token: String,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    scope: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    error_description: Option<String>,
    error_uri: Option<String>,
}

/// The longest server-named delay taken at its word.
const MAX_WAIT: Duration = Duration::from_secs(86_400);

/// The longest one answer stops every upstream call (a 429's `Retry-After`, a rate-limit
/// reset): a gateway answering `Retry-After: 86400` must not stop the proxy for a day. After
/// it, the next request probes the upstream again (and a new 429 blocks again). A spent
/// per-client quota blocks only that client, up to [`MAX_WAIT`].
const MAX_GLOBAL_BLOCK: Duration = Duration::from_secs(300);

/// Reads the provider's answer into a token or an error the handler can relay.
pub(crate) fn parse_answer(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<UpstreamToken, Error> {
    match status {
        200..=299 => {
            let parsed: SuccessBody =
                serde_json::from_slice(body).map_err(|_| Error::InvalidResponse {
                    status: Some(status),
                    reason: "the token response is not the expected JSON".into(),
                })?;
            if let Some(kind) = parsed.token_type.as_deref() {
                if !kind.eq_ignore_ascii_case("bearer") {
                    return Err(Error::InvalidResponse {
                        status: Some(status),
                        reason: format!("unsupported token_type `{}`", untrusted_text(kind)),
                    });
                }
            }
            if parsed.access_token.is_empty() {
                return Err(Error::InvalidResponse {
                    status: Some(status),
                    reason: "the token response has an empty access_token".into(),
                });
            }
            let lifetime = match &parsed.expires_in {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::Number(n)) => n.as_f64(),
                Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok(),
                Some(_) => None,
            };
            let issued_at = Utc::now();
            let expires_at = match lifetime {
                Some(secs) if secs.is_finite() && secs >= 0.0 => {
                    let secs = secs.min(MAX_WAIT.as_secs_f64() * 365.0);
                    chrono::Duration::from_std(Duration::from_secs_f64(secs))
                        .ok()
                        .and_then(|d| issued_at.checked_add_signed(d))
                }
                Some(_) => {
                    return Err(Error::InvalidResponse {
                        status: Some(status),
                        reason: "the token response has a negative expires_in".into(),
                    });
                }
                None => None,
            };
            Ok(UpstreamToken {
                access_token: SecretString::from(parsed.access_token),
                token_type: "Bearer".into(),
                scope: parsed.scope.filter(|s| !s.is_empty()),
                issued_at,
                expires_at,
            })
        }
        429 => Err(Error::RateLimited {
            retry_after: retry_after(headers),
            reset_at: reset_at(headers),
        }),
        500..=599 => Err(Error::ServerError {
            status,
            retry_after: retry_after(headers),
        }),
        // The provider's words go into `Display` and logs: escaped and capped.
        _ => match serde_json::from_slice::<ErrorBody>(body) {
            Ok(parsed) if parsed.error == "invalid_client" => Err(Error::InvalidClient {
                status: Some(status),
                description: parsed.error_description.as_deref().map(untrusted_text),
            }),
            Ok(parsed) => Err(Error::Authorization {
                status: Some(status),
                error: untrusted_text(&parsed.error),
                description: parsed.error_description.as_deref().map(untrusted_text),
                error_uri: parsed.error_uri.as_deref().map(untrusted_text),
            }),
            Err(_) => Err(Error::InvalidResponse {
                status: Some(status),
                reason: "the identity provider answered with an error that is not OAuth2 JSON"
                    .into(),
            }),
        },
    }
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// `Retry-After` in seconds or as an HTTP date, clamped to a day.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = header_str(headers, "retry-after")?;
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_WAIT));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - Utc::now()).to_std().unwrap_or_default().min(MAX_WAIT))
}

/// `X-RateLimit-Reset`: Auth0 sends epoch seconds; small numbers are read as seconds from now.
fn reset_at(headers: &HeaderMap) -> Option<DateTime<Utc>> {
    let value = header_str(headers, "x-ratelimit-reset")?
        .parse::<i64>()
        .ok()?;
    let now = Utc::now();
    let at = if value > 1_000_000_000 {
        DateTime::from_timestamp(value, 0)?
    } else {
        now.checked_add_signed(chrono::Duration::seconds(value.max(0)))?
    };
    let latest = now.checked_add_signed(chrono::Duration::days(1))?;
    Some(at.min(latest))
}

/// Why a token is requested: cache misses come before refreshes when the budget is low.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// No usable token: a customer is waiting.
    Miss,
    /// A token exists but is due for renewal.
    Refresh,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::Miss => "miss",
            Purpose::Refresh => "refresh",
        }
    }
}

/// The upstream's request budget, as its rate-limit headers describe it.
///
/// - `X-RateLimit-Limit` / `-Remaining` / `-Reset`: the tenant-wide budget. When `remaining`
///   is at or below the reserve, only cache misses are sent upstream (refreshes of tokens
///   that are still valid wait for the reset); at zero, nothing is sent until the reset.
/// - `Retry-After` and 429: nothing is sent until the named time.
/// - `Auth0-Client-Quota-Limit: b=per_hour;q=100;r=0;t=3600,…`: a client whose quota shows
///   `r=0` is not sent upstream for `t` seconds.
pub struct RateLimits {
    reserve: u64,
    state: Mutex<BudgetState>,
}

#[derive(Default)]
struct BudgetState {
    limit: Option<u64>,
    remaining: Option<u64>,
    reset_at: Option<Instant>,
    /// Nothing goes upstream before this (429, `Retry-After`).
    blocked_until: Option<Instant>,
    /// Clients whose own quota is spent, until when.
    clients: HashMap<String, Instant>,
}

/// Most clients remembered as out of quota; older entries are dropped first.
const MAX_BLOCKED_CLIENTS: usize = 10_000;

/// The wait after a 429 that named no time.
const DEFAULT_429_WAIT: Duration = Duration::from_secs(1);

impl RateLimits {
    /// A budget that keeps `reserve` requests for cache misses.
    pub fn new(reserve: u64) -> Self {
        Self {
            reserve,
            state: Mutex::new(BudgetState::default()),
        }
    }

    /// The last `X-RateLimit-Remaining` seen, if its window has not reset.
    pub fn remaining(&self) -> Option<u64> {
        let state = self.state.lock();
        match state.reset_at {
            Some(reset) if Instant::now() >= reset => None,
            _ => state.remaining,
        }
    }

    /// The last `X-RateLimit-Limit` seen.
    pub fn limit(&self) -> Option<u64> {
        self.state.lock().limit
    }

    /// Whether a request for `client_id` may go upstream now; if not, the rate-limit error
    /// to answer with. A request that is let through spends one of `remaining`.
    pub(crate) fn admit(&self, client_id: &str, purpose: Purpose) -> Result<(), Error> {
        let now = Instant::now();
        let mut state = self.state.lock();
        let refused = |until: Instant| Error::RateLimited {
            retry_after: Some(until.saturating_duration_since(now)),
            reset_at: chrono::Duration::from_std(until.saturating_duration_since(now))
                .ok()
                .and_then(|d| Utc::now().checked_add_signed(d)),
        };
        if let Some(until) = state.blocked_until.filter(|&u| now < u) {
            return Err(refused(until));
        }
        if let Some(&until) = state.clients.get(client_id).filter(|&&u| now < u) {
            return Err(refused(until));
        }
        if let (Some(remaining), Some(reset)) = (state.remaining, state.reset_at) {
            if now < reset {
                if remaining == 0 || (purpose == Purpose::Refresh && remaining <= self.reserve) {
                    return Err(refused(reset));
                }
                state.remaining = Some(remaining - 1);
            }
        }
        Ok(())
    }

    /// Reads an answer's rate-limit headers.
    pub(crate) fn observe(&self, client_id: &str, status: u16, headers: &HeaderMap) {
        let now = Instant::now();
        let number = |name: &str| header_str(headers, name).and_then(|v| v.parse::<u64>().ok());
        let until =
            |at: DateTime<Utc>| now + (at - Utc::now()).to_std().unwrap_or_default().min(MAX_WAIT);
        let cap = now + MAX_GLOBAL_BLOCK;
        let mut state = self.state.lock();
        if let Some(limit) = number("x-ratelimit-limit") {
            state.limit = Some(limit);
        }
        if let Some(remaining) = number("x-ratelimit-remaining") {
            state.remaining = Some(remaining);
            state.reset_at = Some(
                reset_at(headers)
                    .map_or(now + Duration::from_secs(1), until)
                    .min(cap),
            );
        }
        let named = retry_after(headers).map(|d| now + d);
        if status == 429 {
            let reset = reset_at(headers).map(until);
            let wait = named
                .into_iter()
                .chain(reset)
                .max()
                .unwrap_or(now + DEFAULT_429_WAIT);
            state.blocked_until = Some(wait.min(cap));
        } else if let Some(named) = named {
            state.blocked_until = Some(named.min(cap));
        }
        if let Some(quota) = header_str(headers, "auth0-client-quota-limit") {
            if let Some(wait) = spent_quota(quota) {
                if state.clients.len() >= MAX_BLOCKED_CLIENTS {
                    state.clients.retain(|_, until| *until > now);
                    if state.clients.len() >= MAX_BLOCKED_CLIENTS {
                        state.clients.clear();
                    }
                }
                state.clients.insert(client_id.to_owned(), now + wait);
            }
        }
    }
}

/// For an `Auth0-Client-Quota-Limit` value (`b=per_hour;q=100;r=0;t=3600,b=per_day;…`): how
/// long until the longest spent bucket (`r=0`) resets, if any is spent.
fn spent_quota(value: &str) -> Option<Duration> {
    value
        .split(',')
        .filter_map(|bucket| {
            let mut remaining = None;
            let mut reset = None;
            for part in bucket.split(';') {
                match part.trim().split_once('=') {
                    Some(("r", v)) => remaining = v.trim().parse::<u64>().ok(),
                    Some(("t", v)) => reset = v.trim().parse::<u64>().ok(),
                    _ => {}
                }
            }
            (remaining == Some(0)).then(|| Duration::from_secs(reset.unwrap_or(60)).min(MAX_WAIT))
        })
        .max()
}

/// Gets one customer's token for one request shape; the core lifecycle decides when.
pub struct UpstreamAuthorizer {
    info: ClientInfo,
    request: TokenRequest,
    auth: UpstreamAuth,
    upstream: Arc<Upstream>,
}

impl UpstreamAuthorizer {
    pub(crate) fn new(
        info: ClientInfo,
        request: TokenRequest,
        auth: UpstreamAuth,
        upstream: Arc<Upstream>,
    ) -> Self {
        Self {
            info,
            request,
            auth,
            upstream,
        }
    }
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
        self.upstream
            .request(&self.info, &self.request, self.auth, Purpose::Miss)
            .await
    }

    async fn refresh(&self, token: &UpstreamToken) -> Result<UpstreamToken, Error> {
        let purpose = match token.expires_at {
            Some(at) if at > Utc::now() => Purpose::Refresh,
            _ => Purpose::Miss,
        };
        self.upstream
            .request(&self.info, &self.request, self.auth, purpose)
            .await
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

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn spent_client_quota_is_found() {
        assert_eq!(
            spent_quota("b=per_hour;q=100;r=90;t=3600,b=per_day;q=2000;r=1990;t=86400"),
            None
        );
        assert_eq!(
            spent_quota("b=per_hour;q=100;r=0;t=1200,b=per_day;q=2000;r=1900;t=86400"),
            Some(Duration::from_secs(1200))
        );
        assert_eq!(spent_quota("garbage;;=,=="), None);
    }

    #[test]
    fn low_budget_keeps_the_reserve_for_misses_and_zero_stops_all() {
        let limits = RateLimits::new(2);
        let reset = (Utc::now().timestamp() + 60).to_string();
        limits.observe(
            "a",
            200,
            &headers(&[
                ("x-ratelimit-limit", "10"),
                ("x-ratelimit-remaining", "2"),
                ("x-ratelimit-reset", &reset),
            ]),
        );
        assert!(limits.admit("a", Purpose::Refresh).is_err());
        assert!(limits.admit("a", Purpose::Miss).is_ok());
        assert!(limits.admit("a", Purpose::Miss).is_ok());
        let err = limits.admit("a", Purpose::Miss).unwrap_err();
        assert!(
            matches!(err, Error::RateLimited { retry_after: Some(d), .. } if d > Duration::from_secs(50))
        );
    }

    #[test]
    fn a_429_blocks_until_retry_after_and_a_spent_client_quota_blocks_that_client() {
        let limits = RateLimits::new(0);
        limits.observe("a", 429, &headers(&[("retry-after", "30")]));
        assert!(limits.admit("b", Purpose::Miss).is_err());
        let limits = RateLimits::new(0);
        limits.observe(
            "a",
            200,
            &headers(&[("auth0-client-quota-limit", "b=per_hour;q=1;r=0;t=600")]),
        );
        assert!(limits.admit("a", Purpose::Miss).is_err());
        assert!(limits.admit("b", Purpose::Miss).is_ok());
    }

    #[test]
    fn one_answer_blocks_every_upstream_call_for_five_minutes_at_most() {
        let limits = RateLimits::new(0);
        let reset = (Utc::now().timestamp() + 86_000).to_string();
        limits.observe(
            "a",
            429,
            &headers(&[("retry-after", "86400"), ("x-ratelimit-reset", &reset)]),
        );
        let err = limits.admit("b", Purpose::Miss).unwrap_err();
        assert!(
            matches!(err, Error::RateLimited { retry_after: Some(d), .. }
                if d <= MAX_GLOBAL_BLOCK && d > Duration::from_secs(290)),
            "{err:?}"
        );
        let limits = RateLimits::new(0);
        limits.observe(
            "a",
            200,
            &headers(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", &reset),
            ]),
        );
        let err = limits.admit("b", Purpose::Miss).unwrap_err();
        assert!(
            matches!(err, Error::RateLimited { retry_after: Some(d), .. } if d <= MAX_GLOBAL_BLOCK),
            "{err:?}"
        );
    }

    #[test]
    fn hostile_answers_are_errors_never_panics() {
        for (status, body) in [
            (200, "<html>"),
            (200, r#"{"access_token":""}"#),
            (200, r#"{"access_token":"t","expires_in":-1}"#),
            (200, r#"{"access_token":"t","token_type":"DPoP"}"#),
            (400, "nope"),
        ] {
            assert!(parse_answer(status, &HeaderMap::new(), body.as_bytes()).is_err());
        }
        let token = parse_answer(
            200,
            &HeaderMap::new(),
            br#"{"access_token":"t","expires_in":1e300,"scope":"a"}"#,
        )
        .unwrap();
        assert_eq!(token.scope(), Some("a"));
        assert!(format!("{token:?}").contains("REDACTED"));
    }

    /// Found by the `token_response` fuzz target: the provider's `error` and
    /// `error_description` went verbatim into the error's `Display` (logged for every failed
    /// request), newlines and terminal escapes included, at any length.
    #[test]
    fn provider_text_in_errors_is_escaped_and_capped() {
        let long = "x".repeat(100_000);
        let body = serde_json::json!({
            "error": "access_denied\nINFO forged",
            "error_description": format!("\u{1b}[31mred\u{202e}gnp.exe{long}"),
            "error_uri": "https://e/\r\n",
        });
        let err = parse_answer(400, &HeaderMap::new(), body.to_string().as_bytes())
            .err()
            .unwrap();
        let shown = err.to_string();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(!shown.contains('\u{202e}'), "{shown:?}");
        assert!(shown.contains("access_denied\\nINFO forged"), "{shown:?}");
        assert!(shown.len() < 1_000, "{} bytes", shown.len());
        match err {
            Error::Authorization { error_uri, .. } => {
                assert_eq!(error_uri.as_deref(), Some("https://e/\\r\\n"));
            }
            other => panic!("{other:?}"),
        }
        let odd_type = br#"{"access_token":"t","token_type":"DPoP\n forged"}"#;
        let shown = parse_answer(200, &HeaderMap::new(), odd_type)
            .err()
            .unwrap()
            .to_string();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
    }
}
