//! The HTTP surface: `POST /oauth/token`, `POST /m2mauth`, `GET /healthz`, `GET /metrics`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use en_auth_core::{AccessToken, CachedToken, Error};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::cache::ProxyKey;
use crate::config::QuotaMode;
use crate::upstream::{TokenRequest, UpstreamToken};
use crate::{Shared, cache};

/// Longest client id accepted.
const MAX_CLIENT_ID: usize = 256;
/// Longest client secret accepted.
const MAX_SECRET: usize = 1024;
/// Longest audience, resource or scope string accepted.
const MAX_PARAM: usize = 2048;
/// Most `resource` parameters in one request.
const MAX_RESOURCES: usize = 10;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/oauth/token", post(oauth_token))
        .route("/m2mauth", post(m2mauth))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            deadline,
        ))
        .with_state(shared)
}

/// Every request, body reading included, ends within the configured request timeout.
async fn deadline(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(shared.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => OAuthError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the request did not complete within the proxy's request timeout; retry later",
        )
        .into_response(),
    }
}

/// An RFC 6749 §5.2 error answer.
#[derive(Debug)]
pub(crate) struct OAuthError {
    status: StatusCode,
    error: String,
    description: Option<String>,
    error_uri: Option<String>,
    retry_after: Option<Duration>,
}

impl OAuthError {
    fn new(status: StatusCode, error: &str, description: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            description: Some(description.into()),
            error_uri: None,
            retry_after: None,
        }
    }

    fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    fn invalid_client(description: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", description)
    }

    fn too_many(wait: Duration, description: impl Into<String>) -> Self {
        let mut err = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            description,
        );
        err.retry_after = Some(wait);
        err
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
            },
            Error::RateLimited { .. } => {
                let wait = err.retry_after().unwrap_or(Duration::from_secs(1));
                Self::too_many(
                    wait,
                    format!(
                        "the identity provider's rate limit is spent; retry after {} s",
                        ceil_secs(wait)
                    ),
                )
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
fn clean(text: &str) -> String {
    text.chars()
        .filter(|c| matches!(c, ' '..='~') && *c != '"' && *c != '\\')
        .take(512)
        .collect()
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
fn token_response(token: &CachedToken<UpstreamToken>) -> Response {
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

/// A customer's credentials as presented.
pub(crate) struct Credentials {
    pub(crate) client_id: String,
    pub(crate) secret: SecretString,
}

pub(crate) fn check_client_id(client_id: &str) -> Result<(), OAuthError> {
    if client_id.is_empty()
        || client_id.len() > MAX_CLIENT_ID
        || client_id.chars().any(char::is_control)
    {
        return Err(OAuthError::invalid_client(format!(
            "client_id must be 1 to {MAX_CLIENT_ID} printable characters"
        )));
    }
    Ok(())
}

pub(crate) fn check_secret(secret: &str) -> Result<(), OAuthError> {
    if secret.is_empty() || secret.len() > MAX_SECRET {
        return Err(OAuthError::invalid_client(format!(
            "client_secret must be 1 to {MAX_SECRET} bytes"
        )));
    }
    Ok(())
}

fn check_param(name: &str, value: &str) -> Result<(), OAuthError> {
    if value.len() > MAX_PARAM || value.chars().any(char::is_control) {
        return Err(OAuthError::invalid_request(format!(
            "{name} must be at most {MAX_PARAM} printable characters"
        )));
    }
    Ok(())
}

/// Scopes sorted, without duplicates, space-separated.
fn normalize_scope(scope: &str) -> Result<String, OAuthError> {
    check_param("scope", scope)?;
    let mut scopes: Vec<&str> = scope.split_ascii_whitespace().collect();
    if scopes.iter().any(|s| {
        s.chars()
            .any(|c| c == '"' || c == '\\' || !c.is_ascii_graphic())
    }) {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "scope tokens are printable ASCII without double quotes or backslashes (RFC 6749 \
             section 3.3)",
        ));
    }
    scopes.sort_unstable();
    scopes.dedup();
    Ok(scopes.join(" "))
}

fn token_request(
    audience: Option<String>,
    mut resources: Vec<String>,
    scope: Option<&str>,
) -> Result<TokenRequest, OAuthError> {
    if let Some(audience) = &audience {
        check_param("audience", audience)?;
    }
    if resources.len() > MAX_RESOURCES {
        return Err(OAuthError::invalid_request(format!(
            "at most {MAX_RESOURCES} resource parameters"
        )));
    }
    for resource in &resources {
        check_param("resource", resource)?;
    }
    resources.sort_unstable();
    resources.dedup();
    Ok(TokenRequest {
        audience: audience.filter(|a| !a.is_empty()),
        resources,
        scope: normalize_scope(scope.unwrap_or(""))?,
    })
}

async fn read_body(shared: &Shared, body: Body) -> Result<axum::body::Bytes, OAuthError> {
    let max = shared.config.max_body_bytes;
    axum::body::to_bytes(body, max).await.map_err(|_| {
        let mut err = OAuthError::invalid_request(format!(
            "the request body is larger than {max} bytes (or could not be read)"
        ));
        err.status = StatusCode::PAYLOAD_TOO_LARGE;
        err
    })
}

/// `Authorization: Basic` credentials, form-urldecoded as RFC 6749 §2.3.1 requires.
pub(crate) fn basic_credentials(headers: &HeaderMap) -> Result<Option<Credentials>, OAuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || OAuthError::invalid_client("malformed Basic authorization header");
    let value = value.to_str().map_err(|_| malformed())?;
    let Some((scheme, encoded)) = value.trim().split_once(' ') else {
        return Err(malformed());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::invalid_client(
            "only Basic client authentication is supported in the Authorization header",
        ));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    let id = String::from_utf8(form_decode(id)).map_err(|_| malformed())?;
    let secret = String::from_utf8(form_decode(secret)).map_err(|_| malformed())?;
    Ok(Some(Credentials {
        client_id: id,
        secret: SecretString::from(secret),
    }))
}

/// `application/x-www-form-urlencoded` decoding of one value: `+` is a space, `%XX` a byte;
/// anything else (a client that did not encode) is taken as it is.
fn form_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let hex = |i: usize| bytes.get(i).and_then(|b| (*b as char).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 2;
            }
            (b, _, _) => out.push(b),
        }
        i += 1;
    }
    out
}

/// `POST /oauth/token`: RFC 6749 client credentials.
async fn oauth_token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let answer = async {
        let basic = basic_credentials(&headers)?;
        let bytes = read_body(&shared, body).await?;
        token_form(&headers, basic, &bytes)
    }
    .await;
    match answer {
        Ok((credentials, request)) => issue(&shared, credentials, request).await,
        Err(err) => err.into_response(),
    }
}

/// Reads a `POST /oauth/token` request — its `Content-Type`, the Basic credentials already
/// decoded from its `Authorization` header, its form body — into the customer's credentials
/// and the token request.
pub(crate) fn token_form(
    headers: &HeaderMap,
    basic: Option<Credentials>,
    bytes: &[u8],
) -> Result<(Credentials, TokenRequest), OAuthError> {
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if form_type != Some(true) {
        return Err(OAuthError::invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let mut grant_type = None;
    let mut client_id = None;
    let mut client_secret = None;
    let mut audience = None;
    let mut scope = None;
    let mut resources = Vec::new();
    for (name, value) in form_urlencoded::parse(bytes) {
        let slot = match name.as_ref() {
            "grant_type" => &mut grant_type,
            "client_id" => &mut client_id,
            "client_secret" => &mut client_secret,
            "audience" => &mut audience,
            "scope" => &mut scope,
            "resource" => {
                if resources.len() <= MAX_RESOURCES {
                    resources.push(value.into_owned());
                }
                continue;
            }
            _ => continue, // RFC 6749 §3.2: unknown parameters are ignored
        };
        if slot.is_some() {
            return Err(OAuthError::invalid_request(format!(
                "parameter `{name}` is repeated (RFC 6749 section 3.2)"
            )));
        }
        *slot = Some(value.into_owned());
    }
    match grant_type.as_deref() {
        None => return Err(OAuthError::invalid_request("grant_type is required")),
        Some("client_credentials") => {}
        Some(_) => {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only the client_credentials grant is supported",
            ));
        }
    }
    let credentials = match (basic, client_secret) {
        (Some(_), Some(_)) => {
            return Err(OAuthError::invalid_request(
                "use one client authentication method, not both Basic and client_secret",
            ));
        }
        (Some(basic), None) => {
            if client_id.as_ref().is_some_and(|id| *id != basic.client_id) {
                return Err(OAuthError::invalid_request(
                    "client_id in the body differs from the Authorization header",
                ));
            }
            basic
        }
        (None, Some(secret)) => Credentials {
            client_id: client_id.unwrap_or_default(),
            secret: SecretString::from(secret),
        },
        (None, None) => {
            return Err(OAuthError::invalid_client(
                "client authentication required: Basic, or client_id and client_secret in \
                 the body",
            ));
        }
    };
    let request = token_request(audience, resources, scope.as_deref())?;
    Ok((credentials, request))
}

/// `permissions` as a space-separated string or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum Permissions {
    Text(String),
    List(Vec<String>),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct M2mBody {
    client_id: Option<String>,
    client_secret: Option<String>,
    permissions: Option<Permissions>,
    audience: Option<String>,
}

/// `POST /m2mauth`: the m2m-auth proxy's JSON `{"clientId","clientSecret","permissions"}`.
async fn m2mauth(State(shared): State<Arc<Shared>>, body: Body) -> Response {
    let answer = async {
        let bytes = read_body(&shared, body).await?;
        m2m_request(&bytes)
    }
    .await;
    match answer {
        Ok((credentials, request)) => issue(&shared, credentials, request).await,
        Err(err) => err.into_response(),
    }
}

/// Reads a `POST /m2mauth` JSON body into the customer's credentials and the token request.
pub(crate) fn m2m_request(bytes: &[u8]) -> Result<(Credentials, TokenRequest), OAuthError> {
    let parsed: M2mBody = serde_json::from_slice(bytes).map_err(|_| {
        OAuthError::invalid_request(
            "the body must be a JSON object with clientId, clientSecret, permissions and \
             optionally audience",
        )
    })?;
    let (Some(client_id), Some(secret)) = (parsed.client_id, parsed.client_secret) else {
        return Err(OAuthError::invalid_request(
            "clientId and clientSecret are required",
        ));
    };
    let scope = match parsed.permissions {
        None => String::new(),
        Some(Permissions::Text(text)) => text,
        Some(Permissions::List(list)) => list.join(" "),
    };
    let request = token_request(parsed.audience, Vec::new(), Some(&scope))?;
    Ok((
        Credentials {
            client_id,
            secret: SecretString::from(secret),
        },
        request,
    ))
}

/// Answers a validated token request: quota, cache (authenticated), upstream.
async fn issue(shared: &Shared, credentials: Credentials, request: TokenRequest) -> Response {
    let Credentials { client_id, secret } = credentials;
    if let Err(err) = check_client_id(&client_id) {
        return err.into_response();
    }
    if let Err(err) = check_secret(secrecy::ExposeSecret::expose_secret(&secret)) {
        return err.into_response();
    }
    let metrics = &shared.metrics;
    // Counted once the outcome is known (see `Metrics::token_request`).
    let count = |client_id: &str, authenticated: bool| {
        metrics.token_request(
            client_id,
            authenticated || shared.refusals.is_known(client_id),
        );
    };
    // Quotas count authenticated requests only (a token handed out after the secret matched,
    // or one the upstream issued): whoever merely knows a client id cannot spend its quota.
    let quota = shared.config.quota_of(&client_id);
    let key = ProxyKey { client_id, request };
    let entry = shared.cache.entry(&key, &secret);
    drop(secret);
    if let Some(token) = entry.hand_out() {
        count(&key.client_id, true);
        if let Some(refusal) = charge_quota(shared, &key.client_id, quota, false) {
            return refusal;
        }
        metrics.cache_hit();
        return token_response(&token);
    }
    // Over quota already: refused before any upstream call (without counting this one).
    if let Some(refusal) = charge_quota(shared, &key.client_id, quota, true) {
        count(&key.client_id, false);
        return refusal;
    }
    // Many secrets for this client were refused upstream just now: another unknown one is
    // refused here (a cached token still goes to the secret that obtained it, above, and the
    // secret the upstream last accepted for this client is never refused here).
    if !entry.cache.has_usable_token() {
        if let Err(wait) = shared.refusals.check(&key.client_id, entry.secret_mac()) {
            count(&key.client_id, false);
            metrics.refused_locally();
            tracing::warn!(
                client_id = %key.client_id,
                "several secrets for this client were refused upstream; refusing new ones \
                 locally for a while"
            );
            return OAuthError::too_many(
                wait,
                "too many failed authentications for this client; retry later",
            )
            .into_response();
        }
    }
    metrics.cache_miss();
    let served_before = entry.cache.stats().failures_served;
    match entry.get().await {
        Ok(token) => {
            count(&key.client_id, true);
            if let Some(per_minute) = quota {
                let _ = shared.quotas.take(&key.client_id, per_minute);
            }
            shared
                .refusals
                .accepted(&key.client_id, *entry.secret_mac());
            token_response(&token)
        }
        Err(err) => {
            count(&key.client_id, false);
            let remembered = entry.cache.stats().failures_served > served_before;
            if !remembered && matches!(err, Error::InvalidClient { .. }) {
                shared
                    .refusals
                    .record(&key.client_id, shared.config.refusal());
            }
            log_failure(&key, &err, remembered, shared);
            OAuthError::from_error(&err).into_response()
        }
    }
}

/// Counts one request of `client_id` against its quota (only checks, with `peek`), and
/// returns the 429 to answer when the quota is spent and enforced.
fn charge_quota(
    shared: &Shared,
    client_id: &str,
    quota: Option<u64>,
    peek: bool,
) -> Option<Response> {
    let per_minute = quota?;
    let over = if peek {
        shared.quotas.peek(client_id, per_minute)
    } else {
        shared.quotas.take(client_id, per_minute)
    };
    let wait = over.err()?;
    let enforced = shared.config.quota_mode == QuotaMode::Enforce;
    shared.metrics.quota_exceeded(client_id, enforced);
    tracing::warn!(
        client_id = %client_id,
        per_minute,
        enforced,
        "client is over its token request quota"
    );
    enforced.then(|| {
        OAuthError::too_many(
            wait,
            format!(
                "quota of {per_minute} token requests per minute exceeded; cache the token \
                 you have until it expires"
            ),
        )
        .into_response()
    })
}

fn log_failure(key: &cache::ProxyKey, err: &Error, remembered: bool, shared: &Shared) {
    if matches!(err, Error::RateLimited { .. }) {
        shared.metrics.throttled();
    } else if remembered {
        shared.metrics.refused_locally();
    }
    tracing::info!(
        client_id = %key.client_id,
        error = %err,
        remembered,
        "token request failed"
    );
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    match shared.upstream.token_url().await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(err) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("upstream not ready: {err}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    shared.metrics.set_cached_keys(shared.cache.len());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        shared.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded() {
        assert_eq!(form_decode("a%3Ab+c%25%2"), b"a:b c%%2");
        assert_eq!(form_decode("raw&=secret%zz"), b"raw&=secret%zz");
        let mut headers = HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD.encode("my%20id:p%26ss+word");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).unwrap(),
        );
        let credentials = basic_credentials(&headers).unwrap().unwrap();
        assert_eq!(credentials.client_id, "my id");
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(&credentials.secret),
            "p&ss word"
        );
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert!(basic_credentials(&headers).is_err());
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert!(basic_credentials(&headers).is_err());
    }

    #[test]
    fn scopes_are_normalized() {
        assert_eq!(normalize_scope(" b a  b ").unwrap(), "a b");
        assert!(normalize_scope("a\\b").is_err());
    }

    fn refusal(result: Result<(Credentials, TokenRequest), OAuthError>) -> String {
        let err = result.err().expect("refused");
        let body: serde_json::Value = serde_json::from_slice(&err.body()).unwrap();
        body["error_description"].as_str().unwrap().to_owned()
    }

    /// Found by the `proxy_request` fuzz target: three of the proxy's own refusals had
    /// `"`, `\\` or `§` in `error_description`, which RFC 6749 §5.2 limits to
    /// `%x20-21 / %x23-5B / %x5D-7E`.
    #[test]
    fn refusals_use_only_the_characters_rfc_6749_allows() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let descriptions = [
            refusal(token_form(
                &headers,
                None,
                b"grant_type=client_credentials&client_id=a&client_secret=b&scope=%22x%5C",
            )),
            refusal(token_form(
                &headers,
                None,
                b"grant_type=client_credentials&grant_type=client_credentials",
            )),
            refusal(m2m_request(b"not json")),
        ];
        for description in descriptions {
            assert_eq!(clean(&description), description, "{description:?}");
        }
    }
}
