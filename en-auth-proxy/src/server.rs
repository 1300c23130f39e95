//! The HTTP surface: `POST /oauth/token`, `POST /m2mauth`, `GET /healthz`, `GET /metrics`
//! (on the customers' listener, or on a listener of its own when `metrics_listen` is set).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use en_auth_core::Error;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use std::net::{IpAddr, SocketAddr};

use crate::answer::{OAuthError, X_RATELIMIT_LIMIT, X_RATELIMIT_RESET, token_response};
use crate::cache::ProxyKey;
use crate::config::QuotaMode;
use crate::quota::{Unknown, attempt};
use crate::request::{
    Credentials, basic_credentials, check_client_id, check_secret, m2m_request, token_body,
};
use crate::upstream::TokenRequest;
use crate::{Shared, cache};

/// The customers' router; `GET /metrics` only while no metrics listener is configured (it
/// names client ids).
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let mut router = Router::new()
        .route("/oauth/token", post(oauth_token))
        .route("/m2mauth", post(m2mauth))
        .route("/healthz", get(healthz));
    if shared.config.metrics_listen.is_none() {
        router = router.route("/metrics", get(metrics));
    }
    with_deadline(router, shared)
}

/// The operators' router: `GET /metrics` and `GET /healthz`.
pub(crate) fn metrics_router(shared: Arc<Shared>) -> Router {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz));
    with_deadline(router, shared)
}

/// `router` with its state and the request deadline.
fn with_deadline(router: Router<Arc<Shared>>, shared: Arc<Shared>) -> Router {
    router
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

/// `POST /oauth/token`: RFC 6749 client credentials, form or JSON body (as Auth0 accepts).
async fn oauth_token(
    State(shared): State<Arc<Shared>>,
    source: Source,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let answer = async {
        let basic = basic_credentials(&headers)?;
        let bytes = read_body(&shared, body).await?;
        token_body(&headers, basic, &bytes)
    }
    .await;
    match answer {
        Ok((credentials, request)) => answer_request(&shared, source, credentials, request).await,
        Err(err) => err.into_response(),
    }
}

/// `POST /m2mauth`: the m2m-auth proxy's JSON `{"clientId","clientSecret","permissions"}`.
async fn m2mauth(State(shared): State<Arc<Shared>>, source: Source, body: Body) -> Response {
    let answer = async {
        let bytes = read_body(&shared, body).await?;
        m2m_request(&bytes)
    }
    .await;
    match answer {
        Ok((credentials, request)) => answer_request(&shared, source, credentials, request).await,
        Err(err) => err.into_response(),
    }
}

/// A parsed token request answered: the configured audience when it names none, then
/// [`issue`].
async fn answer_request(
    shared: &Shared,
    source: Source,
    credentials: Credentials,
    mut request: TokenRequest,
) -> Response {
    if request.audience.is_none() {
        request.audience.clone_from(&shared.config.audience);
    }
    with_upstream_limit(shared, issue(shared, source, credentials, request).await)
}

/// A 429 without `X-RateLimit-Limit` (the upstream's throttle, whose error does not carry the
/// limit) gets the upstream's limit as last seen, when it has said one.
fn with_upstream_limit(shared: &Shared, mut response: Response) -> Response {
    if response.status() == StatusCode::TOO_MANY_REQUESTS
        && response.headers().contains_key(X_RATELIMIT_RESET)
        && !response.headers().contains_key(X_RATELIMIT_LIMIT)
    {
        if let Some(limit) = shared.upstream.limits.limit() {
            response
                .headers_mut()
                .insert(X_RATELIMIT_LIMIT, HeaderValue::from(limit));
        }
    }
    response
}

/// The address of the peer, when the server was started with it
/// (`into_make_service_with_connect_info::<SocketAddr>`, as [`Proxy::serve`](crate::Proxy::serve) does).
pub(crate) struct Source(Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Source {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Source(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0.ip()),
        ))
    }
}

/// Answers a validated token request. In order:
///
/// 1. a cached token for this key and secret is handed out (quota counted);
/// 2. the secret is known to be good when its entry holds a token, when the upstream accepted
///    it before (the limit store's accepted secrets, several per client), or when the shared
///    token store holds a token for it (its key includes the secret's hash; the secret is
///    then remembered as accepted);
/// 3. a secret not known to be good is, when its client id has no accepted secret on record,
///    charged to the unknown clients' budget (per source and global; identical concurrent
///    requests are admitted one after the other, and those that join a fetch are not
///    charged); then it is counted as tried for its client id (an attempt: the secret with
///    what it asks for), and refused locally when more than 5 distinct attempts were tried
///    for it within the refusal window;
/// 4. only then is an entry created and its token fetched (quota checked first). The fetch
///    remembers the secret as accepted when the upstream issues a token, whether or not
///    anyone still waits for it.
async fn issue(
    shared: &Shared,
    source: Source,
    credentials: Credentials,
    request: TokenRequest,
) -> Response {
    let Credentials { client_id, secret } = credentials;
    if let Err(err) = check_client_id(&client_id) {
        return err.into_response();
    }
    if let Err(err) = check_secret(secrecy::ExposeSecret::expose_secret(&secret)) {
        return err.into_response();
    }
    let metrics = &shared.metrics;
    let limits = &shared.limits;
    // Counted once the outcome is known (see `Metrics::token_request`); a client id gets a
    // label of its own only once a secret of it was accepted.
    let count = |client_id: &str, authenticated: bool| {
        metrics.token_request(client_id, authenticated);
    };
    // Quotas count authenticated requests only (a token handed out after the secret matched,
    // or one the upstream issued): whoever merely knows a client id cannot spend its quota.
    let quota = shared.config.quota_of(&client_id);
    let key = ProxyKey { client_id, request };
    let mac = shared.cache.mac(&key.client_id, &secret);
    let found = shared.cache.find(&key, &mac);
    if let Some(token) = found.as_ref().and_then(|entry| entry.hand_out()) {
        count(&key.client_id, true);
        if let Some(refusal) = charge_quota(shared, &key.client_id, quota, false).await {
            return refusal;
        }
        metrics.cache_hit();
        return token_response(&token);
    }
    let recall = limits.recall(&key.client_id, &mac).await;
    let attempt = attempt(&mac, &key.request);
    let mut known_good =
        recall.member || found.as_ref().is_some_and(|e| e.cache.has_usable_token());
    if !known_good && shared.cache.stored(&key, &secret).await {
        // A token in the shared store proves the secret: remembered now.
        limits.accepted(&key.client_id, mac, attempt).await;
        known_good = true;
    }
    let entry = if known_good {
        // Over quota already: refused before any upstream call (without counting this one).
        if let Some(refusal) = charge_quota(shared, &key.client_id, quota, true).await {
            count(&key.client_id, recall.any);
            return refusal;
        }
        match found {
            Some(entry) => entry,
            None => shared.cache.entry(&key, &secret, mac),
        }
    } else {
        // Client ids with no accepted secret on record (nor configured by the operator) share
        // a budget of upstream requests, per source and in total. A request that joins a
        // fetch already running (or an entry just created) for its key and secret costs no
        // upstream request and is not charged: identical concurrent requests are admitted one
        // after the other, so a customer's concurrent first requests are charged once.
        let on_record = recall.any || shared.config.clients.contains_key(&key.client_id);
        let mut admission = None;
        let mut found = found;
        if !on_record {
            admission = Some(shared.cache.admission(&key, &mac).await);
            found = found.or_else(|| shared.cache.find(&key, &mac));
            let joins = found.as_ref().is_some_and(|entry| {
                let stats = entry.cache.stats();
                stats.fetches == 0 || stats.fetches > stats.failures
            });
            if !joins {
                if let Err(over) = limits.charge_unknown(source.0).await {
                    count(&key.client_id, recall.any);
                    let (wait, whose) = match over {
                        Unknown::Source(wait) => (wait, "from this address"),
                        Unknown::Global(wait) => (wait, "in total"),
                    };
                    return refused_locally(
                        shared,
                        &key.client_id,
                        wait,
                        format!("too many token requests for unknown clients {whose}; retry later"),
                    );
                }
            }
        }
        // Counted before it goes upstream (concurrent guesses and guessers that hang up
        // count too); the same secret again counts once. Past the limit, refused here.
        if let Some(wait) = limits.tried(&key.client_id, attempt).await {
            count(&key.client_id, recall.any);
            return refused_locally(
                shared,
                &key.client_id,
                wait,
                "too many failed authentications for this client; retry later".into(),
            );
        }
        if let Some(refusal) = charge_quota(shared, &key.client_id, quota, true).await {
            count(&key.client_id, recall.any);
            return refusal;
        }
        let entry = match found {
            Some(entry) => entry,
            None => shared.cache.entry(&key, &secret, mac),
        };
        // The next identical request finds this entry.
        drop(admission);
        entry
    };
    drop(secret);
    metrics.cache_miss();
    let served_before = entry.cache.stats().failures_served;
    match entry.get().await {
        Ok(token) => {
            count(&key.client_id, true);
            shared.cache.settle(&entry, &token);
            // Charged now that the secret proved good. Callers that joined one fetch are
            // charged one by one here, so a cold burst cannot exceed the quota; the token
            // stays cached for the next minute.
            if let Some(refusal) = charge_quota(shared, &key.client_id, quota, false).await {
                return refusal;
            }
            token_response(&token)
        }
        Err(err) => {
            count(&key.client_id, recall.any);
            let remembered = entry.cache.stats().failures_served > served_before;
            log_failure(&key, &err, remembered, shared);
            OAuthError::from_error(&err).into_response()
        }
    }
}

/// A 429 for a request refused here, without asking upstream (the lock-out, the unknown
/// clients' budget); counted, and logged at debug level only (a flood must not flood the log).
fn refused_locally(
    shared: &Shared,
    client_id: &str,
    wait: std::time::Duration,
    description: String,
) -> Response {
    shared.metrics.refused_locally();
    tracing::debug!(client_id = %client_id, reason = %description, "refused locally");
    OAuthError::too_many(wait, description).into_response()
}

/// Counts one request of `client_id` against its quota (only checks, with `peek`), and
/// returns the 429 to answer when the quota is spent and enforced.
async fn charge_quota(
    shared: &Shared,
    client_id: &str,
    quota: Option<u64>,
    peek: bool,
) -> Option<Response> {
    let per_minute = quota?;
    let add = u64::from(!peek);
    let wait = shared
        .limits
        .quota(client_id, per_minute, add)
        .await
        .err()?;
    let enforced = shared.config.quota_mode == QuotaMode::Enforce;
    shared.metrics.quota_exceeded(client_id, enforced);
    tracing::warn!(
        client_id = %client_id,
        per_minute,
        enforced,
        "client is over its token request quota"
    );
    enforced.then(|| {
        OAuthError::spent(
            Some(per_minute),
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
