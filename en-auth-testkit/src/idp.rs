//! [`LocalIdp`]: a client-credentials token endpoint with counters and scripted faults.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use parking_lot::Mutex;

use crate::LoopbackServer;

/// How a [`LocalIdp`] is set up.
#[derive(Clone, Debug)]
pub struct IdpConfig {
    /// The one client it knows.
    pub client_id: String,
    /// That client's secret.
    pub client_secret: String,
    /// Lifetime of issued tokens; `None` omits `expires_in` from responses.
    pub lifetime: Option<Duration>,
}

impl Default for IdpConfig {
    fn default() -> Self {
        Self {
            client_id: "quickstart-client".into(),
            client_secret: "quickstart-secret-do-not-log".into(),
            lifetime: Some(Duration::from_secs(3600)),
        }
    }
}

/// One scripted answer of the token endpoint, used for the next token request instead of a
/// normal answer.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status, headers and body.
    Respond {
        /// HTTP status.
        status: u16,
        /// Extra headers, such as `Retry-After`.
        headers: Vec<(String, String)>,
        /// Body, sent as-is.
        body: String,
    },
    /// Wait this long, then answer normally.
    Delay(Duration),
}

impl Fault {
    /// An answer with a status and a JSON body.
    pub fn json(status: u16, body: &str) -> Self {
        Fault::Respond {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
        }
    }

    /// A 429 with `Retry-After: <seconds>`.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Fault::Respond {
            status: 429,
            headers: vec![("retry-after".into(), retry_after_secs.to_string())],
            body: r#"{"error":"too_many_requests"}"#.into(),
        }
    }
}

pub(crate) struct IdpState {
    pub(crate) config: Mutex<IdpConfig>,
    token_requests: AtomicU64,
    pub(crate) issued: AtomicU64,
    faults: Mutex<VecDeque<Fault>>,
    pub(crate) live: Mutex<HashMap<String, Option<Instant>>>,
    /// The `audience` each token was issued for, when the request named one.
    pub(crate) audience_of: Mutex<HashMap<String, String>>,
    /// Token requests per requested `audience` ("" for none).
    requests_by_audience: Mutex<HashMap<String, u64>>,
    /// Token exchange (RFC 8693): see `idp_exchange.rs`.
    pub(crate) exchange: crate::idp_exchange::ExchangeState,
}

impl IdpState {
    /// Whether `token` was issued here, is not revoked and has not expired.
    pub(crate) fn accepts(&self, token: &str) -> bool {
        matches!(self.live.lock().get(token), Some(expiry) if expiry.is_none_or(|at| Instant::now() < at))
    }

    /// The audience `token` was issued for, if its request named one.
    pub(crate) fn audience_of(&self, token: &str) -> Option<String> {
        self.audience_of.lock().get(token).cloned()
    }
}

/// A client-credentials token endpoint on loopback (`POST /oauth/token`) that counts the
/// token requests it receives.
pub struct LocalIdp {
    server: LoopbackServer,
    pub(crate) state: Arc<IdpState>,
}

impl LocalIdp {
    /// Starts an identity provider with `config`.
    pub async fn start(config: IdpConfig) -> std::io::Result<Self> {
        let state = Arc::new(IdpState {
            config: Mutex::new(config),
            token_requests: AtomicU64::new(0),
            issued: AtomicU64::new(0),
            faults: Mutex::new(VecDeque::new()),
            live: Mutex::new(HashMap::new()),
            audience_of: Mutex::new(HashMap::new()),
            requests_by_audience: Mutex::new(HashMap::new()),
            exchange: Default::default(),
        });
        let router = Router::new()
            .route("/oauth/token", post(token_endpoint))
            .with_state(Arc::clone(&state));
        Ok(Self {
            server: LoopbackServer::start(router).await?,
            state,
        })
    }

    /// The token endpoint URL.
    pub fn token_url(&self) -> String {
        self.server.url("/oauth/token")
    }

    /// The configured client id.
    pub fn client_id(&self) -> String {
        self.state.config.lock().client_id.clone()
    }

    /// The configured client secret.
    pub fn client_secret(&self) -> String {
        self.state.config.lock().client_secret.clone()
    }

    /// Token requests received, faulted ones included.
    pub fn token_requests(&self) -> u64 {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// Token requests that asked for `audience` (`""`: requests naming none).
    pub fn token_requests_for(&self, audience: &str) -> u64 {
        self.state
            .requests_by_audience
            .lock()
            .get(audience)
            .copied()
            .unwrap_or(0)
    }

    /// Tokens issued.
    pub fn tokens_issued(&self) -> u64 {
        self.state.issued.load(Ordering::SeqCst)
    }

    /// Changes the lifetime of tokens issued from now on.
    pub fn set_lifetime(&self, lifetime: Option<Duration>) {
        self.state.config.lock().lifetime = lifetime;
    }

    /// Queues faults answered to the next token requests, in order.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.faults.lock().extend(faults);
    }

    /// Revokes every token issued so far: APIs reject them from now on.
    pub fn revoke_all(&self) {
        self.state.live.lock().clear();
    }

    /// Whether `token` is currently accepted.
    pub fn accepts(&self, token: &str) -> bool {
        self.state.accepts(token)
    }
}

pub(crate) fn client_credentials(
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Option<(String, String)> {
    if let Some(basic) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic)
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        return Some((id.to_owned(), secret.to_owned()));
    }
    Some((
        form.get("client_id")?.clone(),
        form.get("client_secret")?.clone(),
    ))
}

async fn token_endpoint(
    State(state): State<Arc<IdpState>>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> Response {
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    let audience = form.get("audience").cloned();
    *state
        .requests_by_audience
        .lock()
        .entry(audience.clone().unwrap_or_default())
        .or_default() += 1;
    let fault = state.faults.lock().pop_front();
    match fault {
        Some(Fault::Respond {
            status,
            headers,
            body,
        }) => {
            let mut response = (
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                body,
            )
                .into_response();
            for (name, value) in headers {
                if let (Ok(name), Ok(value)) = (
                    axum::http::HeaderName::try_from(name),
                    axum::http::HeaderValue::try_from(value),
                ) {
                    response.headers_mut().insert(name, value);
                }
            }
            return response;
        }
        Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
        None => {}
    }
    if form.get("grant_type").map(String::as_str) == Some(crate::idp_exchange::TOKEN_EXCHANGE) {
        return crate::idp_exchange::token_exchange(&state, &headers, &form);
    }
    let config = state.config.lock().clone();
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"error": "unsupported_grant_type"})),
        )
            .into_response();
    }
    match client_credentials(&headers, &form) {
        Some((id, secret)) if id == config.client_id && secret == config.client_secret => {}
        _ => {
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({"error": "invalid_client", "error_description": "client authentication failed"})),
            )
                .into_response();
        }
    }
    let n = state.issued.fetch_add(1, Ordering::SeqCst) + 1;
    let token = format!(
        "tok{n}.{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..)
    );
    state
        .live
        .lock()
        .insert(token.clone(), config.lifetime.map(|l| Instant::now() + l));
    if let Some(audience) = audience {
        state.audience_of.lock().insert(token.clone(), audience);
    }
    let mut body = serde_json::json!({"access_token": token, "token_type": "Bearer"});
    if let Some(lifetime) = config.lifetime {
        body["expires_in"] = serde_json::json!(lifetime.as_secs_f64().ceil() as u64);
    }
    axum::Json(body).into_response()
}
