//! What the proxy answers: tokens, and RFC 6749 §5.2 errors.

use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use en_auth_core::{AccessToken, CachedToken, Error};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

use crate::upstream::UpstreamToken;

/// Auth0's rate-limit headers.
pub(crate) const X_RATELIMIT_LIMIT: &str = "x-ratelimit-limit";
const X_RATELIMIT_REMAINING: &str = "x-ratelimit-remaining";
pub(crate) const X_RATELIMIT_RESET: &str = "x-ratelimit-reset";

/// An RFC 6749 §5.2 error answer.
#[derive(Debug)]
pub(crate) struct OAuthError {
    pub(crate) status: StatusCode,
    error: String,
    description: Option<String>,
    error_uri: Option<String>,
    retry_after: Option<Duration>,
    /// Boxed: most errors have none, and the error travels in `Result`s.
    rate_limit: Option<Box<RateLimitHeaders>>,
}

/// `X-RateLimit-*` on a 429, as Auth0 sends them: the limit (when known), what is left, and
/// when it resets in seconds since the Unix epoch (what auth0-python's
/// `RateLimitError.reset_at` reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RateLimitHeaders {
    limit: Option<u64>,
    remaining: u64,
    reset_epoch_secs: u64,
}

impl OAuthError {
    pub(crate) fn new(status: StatusCode, error: &str, description: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            description: Some(description.into()),
            error_uri: None,
            retry_after: None,
            rate_limit: None,
        }
    }

    pub(crate) fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    pub(crate) fn invalid_client(description: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", description)
    }

    pub(crate) fn too_many(wait: Duration, description: impl Into<String>) -> Self {
        let mut err = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            description,
        );
        err.retry_after = Some(wait);
        err
    }

    /// Adds `X-RateLimit-Limit` (`limit`, when known), `X-RateLimit-Remaining` and
    /// `X-RateLimit-Reset` (`reset_epoch_secs`, seconds since the Unix epoch) to the answer.
    pub(crate) fn with_rate_limit(
        mut self,
        limit: Option<u64>,
        remaining: u64,
        reset_epoch_secs: u64,
    ) -> Self {
        self.rate_limit = Some(Box::new(RateLimitHeaders {
            limit,
            remaining,
            reset_epoch_secs,
        }));
        self
    }

    /// [`too_many`](Self::too_many) with the rate-limit headers of a spent limit of `limit`
    /// per window that resets after `wait`.
    pub(crate) fn spent(
        limit: Option<u64>,
        wait: Duration,
        description: impl Into<String>,
    ) -> Self {
        Self::too_many(wait, description).with_rate_limit(limit, 0, epoch_secs_after(wait))
    }

    /// The answer for a lifecycle error: upstream refusals relayed, rate limits as 429,
    /// upstream trouble as 502/503/504.
    pub(crate) fn from_error(err: &Error) -> Self {
        match err {
            Error::InvalidClient {
                status,
                description,
            } => Self {
                status: relayed_status(*status, StatusCode::UNAUTHORIZED),
                error: "invalid_client".into(),
                description: description.as_deref().map(clean),
                error_uri: None,
                retry_after: None,
                rate_limit: None,
            },
            Error::Authorization {
                status,
                error,
                description,
                error_uri,
            } => Self {
                status: relayed_status(*status, StatusCode::BAD_REQUEST),
                error: {
                    let code = clean(error);
                    if code.is_empty() {
                        "invalid_request".into()
                    } else {
                        code
                    }
                },
                description: description.as_deref().map(clean),
                error_uri: error_uri.as_deref().map(clean),
                retry_after: None,
                rate_limit: None,
            },
            Error::RateLimited { reset_at, .. } => {
                let wait = err.retry_after().unwrap_or(Duration::from_secs(1));
                let reset = reset_at
                    .and_then(|at| u64::try_from(at.timestamp()).ok())
                    .unwrap_or_else(|| epoch_secs_after(wait));
                // The limit is the upstream's, which the error does not carry: the handlers
                // add it from the budget when the upstream has said it.
                Self::too_many(
                    wait,
                    format!(
                        "the identity provider's rate limit is spent; retry after {} s",
                        ceil_secs(wait)
                    ),
                )
                .with_rate_limit(None, 0, reset)
            }
            Error::ServerError { .. } => {
                let mut answer = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "the identity provider is failing; retry later",
                );
                answer.retry_after = err.retry_after();
                answer
            }
            Error::Transport { timeout: true, .. } => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "temporarily_unavailable",
                "the identity provider did not answer in time; retry later",
            ),
            Error::Transport { .. } => Self::new(
                StatusCode::BAD_GATEWAY,
                "temporarily_unavailable",
                "the identity provider cannot be reached; retry later",
            ),
            Error::InvalidResponse { .. } => Self::new(
                StatusCode::BAD_GATEWAY,
                "server_error",
                "the identity provider answered something unusable",
            ),
            _ => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the proxy could not obtain a token; see its logs",
            ),
        }
    }
}

/// The upstream's 4xx status, or `fallback`.
fn relayed_status(status: Option<u16>, fallback: StatusCode) -> StatusCode {
    status
        .filter(|s| (400..500).contains(s) && *s != 429)
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(fallback)
}

/// Keeps only characters RFC 6749 allows in `error` and `error_description`.
pub(crate) fn clean(text: &str) -> String {
    text.chars()
        .filter(|c| matches!(c, ' '..='~') && *c != '"' && *c != '\\')
        .take(512)
        .collect()
}

/// Seconds since the Unix epoch, `wait` from now, rounded up.
fn epoch_secs_after(wait: Duration) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    ceil_secs(now.saturating_add(wait))
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_uri: Option<&'a str>,
}

impl OAuthError {
    /// The answer's status.
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// The answer's JSON body.
    pub(crate) fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&ErrorBody {
            error: &self.error,
            error_description: self.description.as_deref(),
            error_uri: self.error_uri.as_deref(),
        })
        .unwrap_or_default()
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = self.body();
        let mut response = json_response(self.status(), body);
        let headers = response.headers_mut();
        if let Some(wait) = self.retry_after {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(ceil_secs(wait).max(1)),
            );
        }
        if let Some(limits) = self.rate_limit {
            if let Some(limit) = limits.limit {
                headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(limit));
            }
            headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(limits.remaining));
            headers.insert(
                X_RATELIMIT_RESET,
                HeaderValue::from(limits.reset_epoch_secs),
            );
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"en-auth-proxy\""),
            );
        }
        response
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

#[derive(Serialize)]
struct TokenBody<'a> {
    access_token: &'a str,
    token_type: &'a str,
    expires_in: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
}

/// The answer for a token: `expires_in` is what is left of its life, in whole seconds.
pub(crate) fn token_response(token: &CachedToken<UpstreamToken>) -> Response {
    let remaining = token
        .freshness()
        .expires_at()
        .saturating_duration_since(tokio::time::Instant::now())
        .as_secs()
        .try_into()
        .unwrap_or(i64::MAX);
    let inner = token.token();
    let body = serde_json::to_vec(&TokenBody {
        access_token: inner.access_token(),
        token_type: inner.token_type(),
        expires_in: remaining,
        scope: inner.scope(),
    })
    .unwrap_or_default();
    json_response(StatusCode::OK, body)
}
