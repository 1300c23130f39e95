//! [`ProtectedApi`]: an API that accepts only live tokens of a [`LocalIdp`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;

use crate::LoopbackServer;
use crate::idp::{IdpState, LocalIdp};

/// One request the API received.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    /// The bearer token it carried.
    pub token: Option<String>,
    /// Its `X-Api-Key`, if any.
    pub api_key: Option<String>,
    /// The status the API answered.
    pub status: u16,
    /// The HTTP method.
    pub method: String,
    /// The path.
    pub path: String,
    /// Its `X-Request-Id`, if any.
    pub request_id: Option<String>,
}

struct ApiState {
    idp: Arc<IdpState>,
    audience: Option<String>,
    requests: AtomicU64,
    reject_next: AtomicU64,
    seen: Mutex<Vec<SeenRequest>>,
}

/// A protected API on loopback: every path answers 200 (echoing a POST body) to a live token
/// of its [`LocalIdp`], 401 with `WWW-Authenticate: Bearer` otherwise. Paths under `/slow`
/// answer after 1.5 s; `/moved` redirects (307) to `/data`.
pub struct ProtectedApi {
    server: LoopbackServer,
    state: Arc<ApiState>,
}

impl ProtectedApi {
    /// Starts an API that trusts `idp`.
    pub async fn start(idp: &LocalIdp) -> std::io::Result<Self> {
        Self::start_with_audience(idp, None).await
    }

    /// Starts an API that accepts only tokens `idp` issued for `audience` (the Auth0
    /// `audience` parameter of the token request).
    pub async fn start_for_audience(idp: &LocalIdp, audience: &str) -> std::io::Result<Self> {
        Self::start_with_audience(idp, Some(audience.to_owned())).await
    }

    async fn start_with_audience(
        idp: &LocalIdp,
        audience: Option<String>,
    ) -> std::io::Result<Self> {
        let state = Arc::new(ApiState {
            idp: Arc::clone(&idp.state),
            audience,
            requests: AtomicU64::new(0),
            reject_next: AtomicU64::new(0),
            seen: Mutex::new(Vec::new()),
        });
        let router = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&state));
        Ok(Self {
            server: LoopbackServer::start(router).await?,
            state,
        })
    }

    /// URL of `path` on this API.
    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    /// Requests received.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Every request received, in order.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.state.seen.lock().clone()
    }

    /// Answers the next `n` requests 401 whatever token they carry.
    pub fn reject_next(&self, n: u64) {
        self.state.reject_next.store(n, Ordering::SeqCst);
    }
}

async fn handle(
    State(state): State<Arc<ApiState>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.requests.fetch_add(1, Ordering::SeqCst);
    if uri.path() == "/moved" {
        return (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, "/data")],
        )
            .into_response();
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let api_key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let forced = state
        .reject_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let ok = !forced
        && token.as_deref().is_some_and(|t| {
            state.idp.accepts(t)
                && state
                    .audience
                    .as_ref()
                    .is_none_or(|want| state.idp.audience_of(t).as_ref() == Some(want))
        });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    };
    state.seen.lock().push(SeenRequest {
        token,
        api_key,
        status: status.as_u16(),
        method: method.to_string(),
        path: uri.path().to_owned(),
        request_id: headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    });
    if ok && uri.path().starts_with("/slow") {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    }
    if ok {
        (status, body).into_response()
    } else {
        (
            status,
            [(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")],
            "",
        )
            .into_response()
    }
}
