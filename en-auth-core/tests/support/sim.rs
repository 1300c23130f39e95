//! In-process stand-ins for [`LocalIdp`](en_auth_testkit::LocalIdp) and
//! [`ProtectedApi`](en_auth_testkit::ProtectedApi), for the timing tests of the lifecycle on
//! paused time.
//!
//! Nothing here touches a socket. A test on a paused clock whose runtime waits on loopback
//! I/O sees the clock jump to the next timer each time the runtime idles, which fires
//! deadlines that never ran out; with these, the clock moves only when the test (or a
//! scripted delay) makes it move, so seconds of a token's life pass in microseconds.
//!
//! [`SimIdp`] issues tokens, counts token requests and answers queued [`SimFault`]s, like the
//! loopback provider; [`SimApi`] is the last middleware of a client: it answers every
//! request itself, accepting only live tokens of its provider (their lifetimes run on
//! tokio's clock), and records what it saw.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use en_auth_core::{AuthMiddleware, Authorizer, BearerToken, ClientInfo, Error, LifecyclePolicy};
use en_auth_testkit::SeenRequest;
use parking_lot::Mutex;
use reqwest::ResponseBuilderExt;
use reqwest_middleware::{Middleware, Next};
use tokio::time::Instant;

/// What the provider answers to one token request instead of a token.
#[derive(Clone, Debug)]
pub enum SimFault {
    /// An HTTP error status, turned into the error the loopback client makes of it.
    Status(u16),
    /// A 429 with `Retry-After: <seconds>`.
    RateLimited(u64),
    /// An answer that comes this much later (then a token, as usual).
    Delay(Duration),
}

struct IdpState {
    info: ClientInfo,
    lifetime: Mutex<Option<Duration>>,
    token_requests: AtomicU64,
    issued: AtomicU64,
    faults: Mutex<VecDeque<SimFault>>,
    live: Mutex<HashMap<String, Option<Instant>>>,
}

impl IdpState {
    fn accepts(&self, token: &str) -> bool {
        matches!(self.live.lock().get(token), Some(expiry) if expiry.is_none_or(|at| Instant::now() < at))
    }
}

/// An in-process identity provider issuing opaque tokens of a chosen lifetime.
#[derive(Clone)]
pub struct SimIdp {
    state: Arc<IdpState>,
}

impl SimIdp {
    /// A provider issuing tokens that live `lifetime` (`None`: no `expires_in`).
    pub fn new(lifetime: Option<Duration>) -> Self {
        Self {
            state: Arc::new(IdpState {
                info: ClientInfo::new("sim-client", "sim-secret"),
                lifetime: Mutex::new(lifetime),
                token_requests: AtomicU64::new(0),
                issued: AtomicU64::new(0),
                faults: Mutex::new(VecDeque::new()),
                live: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// An authorizer asking this provider.
    pub fn authorizer(&self) -> SimAuthorizer {
        SimAuthorizer {
            state: Arc::clone(&self.state),
        }
    }

    /// Token requests received, faulted ones included.
    pub fn token_requests(&self) -> u64 {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// Tokens issued.
    pub fn tokens_issued(&self) -> u64 {
        self.state.issued.load(Ordering::SeqCst)
    }

    /// Queues faults answered to the next token requests, in order.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = SimFault>) {
        self.state.faults.lock().extend(faults);
    }

    /// Revokes every token issued so far: APIs reject them from now on.
    pub fn revoke_all(&self) {
        self.state.live.lock().clear();
    }
}

/// The error the loopback test client ([`TestAuthorizer`](super::TestAuthorizer)) makes of
/// an error status.
pub fn error_for_status(status: u16, retry_after: Option<Duration>) -> Error {
    match status {
        429 => Error::RateLimited {
            retry_after,
            reset_at: None,
        },
        500..=599 => Error::ServerError {
            status,
            retry_after,
        },
        400 | 401 => Error::InvalidClient {
            status: Some(status),
            description: None,
        },
        _ => Error::Authorization {
            status: Some(status),
            error: "unexpected".into(),
            description: None,
            error_uri: None,
        },
    }
}

/// Client credentials against a [`SimIdp`].
pub struct SimAuthorizer {
    state: Arc<IdpState>,
}

#[async_trait::async_trait]
impl Authorizer for SimAuthorizer {
    type Token = BearerToken;

    fn client_info(&self) -> &ClientInfo {
        &self.state.info
    }

    async fn authorize(&self) -> Result<BearerToken, Error> {
        let state = &self.state;
        state.token_requests.fetch_add(1, Ordering::SeqCst);
        let fault = state.faults.lock().pop_front();
        match fault {
            Some(SimFault::Status(status)) => return Err(error_for_status(status, None)),
            Some(SimFault::RateLimited(secs)) => {
                return Err(error_for_status(429, Some(Duration::from_secs(secs))));
            }
            Some(SimFault::Delay(delay)) => tokio::time::sleep(delay).await,
            None => {}
        }
        let n = state.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("tok{n}.{:016x}", fastrand::u64(..));
        let lifetime = *state.lifetime.lock();
        state
            .live
            .lock()
            .insert(token.clone(), lifetime.map(|l| Instant::now() + l));
        Ok(BearerToken::new(token, lifetime))
    }
}

struct ApiState {
    idp: Arc<IdpState>,
    port: u16,
    requests: AtomicU64,
    reject_next: AtomicU64,
    seen: Mutex<Vec<SeenRequest>>,
}

/// An API answered in process (by [`SimNet`]): 200 to a live token of its provider, 401
/// otherwise.
#[derive(Clone)]
pub struct SimApi {
    state: Arc<ApiState>,
}

impl SimApi {
    /// A loopback URL of `path` on this API (nothing listens there: [`SimNet`] answers).
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.state.port)
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

/// The last middleware of a client: hands each request to the [`SimApi`] on its port.
#[derive(Clone, Default)]
pub struct SimNet {
    apis: Arc<Mutex<HashMap<u16, SimApi>>>,
}

impl SimNet {
    /// A new API on this network that trusts `idp`.
    pub fn api(&self, idp: &SimIdp) -> SimApi {
        let mut apis = self.apis.lock();
        let port = 10_000 + u16::try_from(apis.len()).expect("a few APIs");
        let api = SimApi {
            state: Arc::new(ApiState {
                idp: Arc::clone(&idp.state),
                port,
                requests: AtomicU64::new(0),
                reject_next: AtomicU64::new(0),
                seen: Mutex::new(Vec::new()),
            }),
        };
        apis.insert(port, api.clone());
        api
    }
}

#[async_trait::async_trait]
impl Middleware for SimNet {
    async fn handle(
        &self,
        request: reqwest::Request,
        _extensions: &mut http::Extensions,
        _next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let port = request.url().port().unwrap_or(80);
        let api = self.apis.lock().get(&port).cloned();
        let api = api.expect("a request to an API of this network");
        api.answer(&request)
    }
}

impl SimApi {
    fn answer(&self, request: &reqwest::Request) -> reqwest_middleware::Result<reqwest::Response> {
        let state = &self.state;
        state.requests.fetch_add(1, Ordering::SeqCst);
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let token =
            header("authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned));
        let forced = state
            .reject_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let ok = !forced && token.as_deref().is_some_and(|t| state.idp.accepts(t));
        let status: u16 = if ok { 200 } else { 401 };
        state.seen.lock().push(SeenRequest {
            token,
            api_key: header("x-api-key"),
            status,
            method: request.method().to_string(),
            path: request.url().path().to_owned(),
            request_id: header("x-request-id"),
        });
        let response = http::Response::builder()
            .status(status)
            .url(request.url().clone())
            .body(if ok { "ok" } else { "" })
            .map_err(reqwest_middleware::Error::middleware)?;
        Ok(reqwest::Response::from(response))
    }
}

/// A provider, an API that trusts it, and a middleware client for them, all in process.
pub struct SimRig {
    pub idp: SimIdp,
    pub net: SimNet,
    pub api: SimApi,
    pub auth: AuthMiddleware<SimAuthorizer>,
    pub client: reqwest_middleware::ClientWithMiddleware,
}

impl SimRig {
    /// Tokens living `lifetime`, the lifecycle following `policy`.
    pub fn new(lifetime: Option<Duration>, policy: LifecyclePolicy) -> Self {
        let idp = SimIdp::new(lifetime);
        let net = SimNet::default();
        let api = net.api(&idp);
        let auth = AuthMiddleware::with_policy(idp.authorizer(), policy);
        let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(auth.clone())
            .with(net.clone())
            .build();
        Self {
            idp,
            net,
            api,
            auth,
            client,
        }
    }

    /// GET /data; the status code.
    pub async fn get(&self) -> u16 {
        self.get_url(&self.api.url("/data")).await
    }

    /// Another API that trusts the same provider, reached through the same client.
    pub fn another_api(&self) -> SimApi {
        self.net.api(&self.idp)
    }

    /// GET `url` (of any API of this rig); the status code.
    pub async fn get_url(&self, url: &str) -> u16 {
        self.client
            .get(url)
            .send()
            .await
            .expect("request completes")
            .status()
            .as_u16()
    }

    /// The token the API saw on its `i`-th request.
    pub fn token_seen(&self, i: usize) -> String {
        self.api.seen()[i]
            .token
            .clone()
            .expect("request carried a token")
    }
}
