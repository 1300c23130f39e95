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
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use crate::budget::{Purpose, RateLimits};
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
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(86_400);

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

pub(crate) fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// `Retry-After` in seconds or as an HTTP date, clamped to a day.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
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
pub(crate) fn reset_at(headers: &HeaderMap) -> Option<DateTime<Utc>> {
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
