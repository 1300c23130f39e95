//! DPoP through the tower `AuthLayer` on hyper-util's client: a DPoP-bound token from panva's
//! `oidc-provider`, a fresh proof per request checked by an axum API behind
//! `RequireAuth::dpop_with`, and the API's nonce challenge answered with one retry; the same
//! with every proof signed by a key held outside the authorizer (a KMS stand-in); a DPoP key
//! file rotated under the authorizer (the key is pinned: no 401, no new token); a signer that
//! fails or hangs (nothing is sent unsigned; the proof timeout ends the wait); a rejected
//! response let go before the resend is signed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::Request as AxumRequest;
use axum::middleware::{Next, from_fn};
use axum::routing::get;
use bytes::Bytes;
use en_auth_core::ClientInfo;
use en_auth_oauth2::ServiceAccountAuthorizer;
use en_auth_testkit::{LoopbackServer, OidcProvider};
use en_auth_tower::AuthLayer;
use en_auth_verify::{DpopVerifier, RequireAuth, Verifier};
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, ServiceExt};

#[tokio::test]
async fn the_layer_sends_dpop_proofs_and_answers_a_nonce_challenge_once() {
    let provider = OidcProvider::start(600).await;
    let requests = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&requests);
    let verifier = Verifier::oidc(provider.issuer(), OidcProvider::API);
    let app = Router::new()
        .route(
            "/orders",
            get(|| async { "orders" }).layer(
                RequireAuth::new(verifier).dpop_with(DpopVerifier::new().with_nonce("n-42")),
            ),
        )
        .layer(from_fn(move |request: AxumRequest, next: Next| {
            counter.fetch_add(1, Ordering::SeqCst);
            next.run(request)
        }));
    let api = LoopbackServer::start(app).await.unwrap();

    let (id, secret) = OidcProvider::DPOP_CLIENT;
    let sa = ServiceAccountAuthorizer::new(ClientInfo::new(id, secret), provider.token_url())
        .with_audience(OidcProvider::API)
        .with_dpop();
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let service = AuthLayer::new(sa).layer(client);
    let get = || Request::get(api.url("/orders")).body(Empty::new()).unwrap();

    let response = service.clone().oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        requests.load(Ordering::SeqCst),
        2,
        "challenged once, retried once"
    );
    let response = service.clone().oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        requests.load(Ordering::SeqCst),
        3,
        "the nonce was remembered"
    );
    assert_eq!(provider.tokens_issued().await, 1);
}

/// A signer whose key is held by a task (as a KMS holds it), counting sign calls.
#[derive(Debug)]
struct KmsSigner {
    requests: tokio::sync::mpsc::Sender<(Vec<u8>, tokio::sync::oneshot::Sender<Vec<u8>>)>,
    public_jwk: serde_json::Value,
    calls: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl en_auth_oauth2::Signer for KmsSigner {
    fn algorithm(&self) -> en_auth_oauth2::SigningAlgorithm {
        en_auth_oauth2::SigningAlgorithm::ES256
    }
    fn key_id(&self) -> Option<String> {
        None
    }
    fn public_jwk(&self) -> serde_json::Value {
        self.public_jwk.clone()
    }
    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, en_auth_core::Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let (reply, answer) = tokio::sync::oneshot::channel();
        let unreachable = |_| en_auth_core::Error::CredentialUnavailable {
            credential: "kms".into(),
            reason: "unreachable".into(),
        };
        self.requests
            .send((message.to_vec(), reply))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        answer.await.map_err(|e| unreachable(e.to_string()))
    }
}

#[tokio::test]
async fn every_proof_is_signed_by_a_signer_outside_the_authorizer() {
    use en_auth_oauth2::{DpopKey, Signer};
    let provider = OidcProvider::start(600).await;
    let verifier = Verifier::oidc(provider.issuer(), OidcProvider::API);
    let app = Router::new().route(
        "/orders",
        get(|| async { "orders" })
            .layer(RequireAuth::new(verifier).dpop_with(DpopVerifier::new().with_nonce("n-7"))),
    );
    let api = LoopbackServer::start(app).await.unwrap();

    // The "KMS": the key lives in this task; the authorizer only sends it what to sign.
    let key = DpopKey::generate().unwrap();
    let public_jwk = key.public_jwk();
    let (requests, mut inbox) =
        tokio::sync::mpsc::channel::<(Vec<u8>, tokio::sync::oneshot::Sender<Vec<u8>>)>(8);
    tokio::spawn(async move {
        while let Some((message, reply)) = inbox.recv().await {
            let _ = reply.send(key.sign(&message).await.unwrap());
        }
    });
    let calls = Arc::new(AtomicU64::new(0));
    let kms = KmsSigner {
        requests,
        public_jwk,
        calls: Arc::clone(&calls),
    };

    let (id, secret) = OidcProvider::DPOP_CLIENT;
    let sa = ServiceAccountAuthorizer::new(ClientInfo::new(id, secret), provider.token_url())
        .with_audience(OidcProvider::API)
        .with_dpop_signer(Arc::new(kms));
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let service = AuthLayer::new(sa).layer(client);
    let get = || Request::get(api.url("/orders")).body(Empty::new()).unwrap();

    let response = service.clone().oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // One proof for the token request, two for the API (challenged for a nonce, resent).
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    for n in 1..=3 {
        let response = service.clone().oneshot(get()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3 + n,
            "one signature per request"
        );
    }
    assert_eq!(provider.tokens_issued().await, 1);
}

/// An API behind `RequireAuth::dpop_with` (no nonce) counting the requests it received and
/// the 401s it answered.
async fn counted_api(provider: &OidcProvider) -> (LoopbackServer, Arc<AtomicU64>, Arc<AtomicU64>) {
    let (requests, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (counter, refusals) = (Arc::clone(&requests), Arc::clone(&refused));
    let verifier = Verifier::oidc(provider.issuer(), OidcProvider::API);
    let app = Router::new()
        .route(
            "/orders",
            get(|| async { "orders" })
                .layer(RequireAuth::new(verifier).dpop_with(DpopVerifier::new())),
        )
        .layer(from_fn(move |request: AxumRequest, next: Next| {
            counter.fetch_add(1, Ordering::SeqCst);
            let refusals = Arc::clone(&refusals);
            async move {
                let response = next.run(request).await;
                if response.status() == StatusCode::UNAUTHORIZED {
                    refusals.fetch_add(1, Ordering::SeqCst);
                }
                response
            }
        }));
    (LoopbackServer::start(app).await.unwrap(), requests, refused)
}

/// Review M1: a `PemFileSigner` as the DPoP signer, its file rotated as the kubelet does
/// (a new file renamed over the old): the token stays bound to the first key and the proofs
/// keep coming from it — no 401 at the API, no new token.
#[tokio::test]
async fn a_rotated_dpop_key_file_does_not_unbind_the_token() {
    let provider = OidcProvider::start(600).await;
    let (api, requests, refused) = counted_api(&provider).await;
    let keys: serde_json::Value = reqwest::get(format!("{}/__signer_keys", provider.issuer()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("en-auth-dpop-rotation-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dpop-key.pem");
    std::fs::write(&path, keys["rotation_1"].as_str().unwrap()).unwrap();
    let signer = Arc::new(en_auth_oauth2::PemFileSigner::open(&path).unwrap());

    let (id, secret) = OidcProvider::DPOP_CLIENT;
    let sa = ServiceAccountAuthorizer::new(ClientInfo::new(id, secret), provider.token_url())
        .with_audience(OidcProvider::API)
        .with_dpop_signer(signer.clone());
    let bound_to = sa.dpop_thumbprint().unwrap().to_owned();
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let service = AuthLayer::new(sa).layer(client);
    let get = || Request::get(api.url("/orders")).body(Empty::new()).unwrap();
    let response = service.clone().oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let staging = dir.join("dpop-key.pem.new");
    std::fs::write(&staging, keys["rotation_2"].as_str().unwrap()).unwrap();
    std::fs::rename(&staging, &path).unwrap();
    // The signer itself follows the file (as it does for client assertions)…
    use en_auth_oauth2::Signer as _;
    let now = signer.current().await.unwrap().expect("the file's key");
    assert_ne!(
        now.key_id().as_deref(),
        Some(bound_to.as_str()),
        "the file was rotated"
    );
    // …the DPoP proofs do not.
    for _ in 0..2 {
        let response = service.clone().oneshot(get()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(
        refused.load(Ordering::SeqCst),
        0,
        "no proof from the new key"
    );
    assert_eq!(
        requests.load(Ordering::SeqCst),
        3,
        "one request each, none replayed"
    );
    assert_eq!(
        provider.tokens_issued().await,
        1,
        "the first token still serves"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// How [`Switched`] answers.
const SIGNS: u8 = 0;
const FAILS: u8 = 1;
const HANGS: u8 = 2;

/// A DPoP signer (a "KMS") that can be made to fail or to never answer.
#[derive(Debug)]
struct Switched {
    key: en_auth_oauth2::DpopKey,
    mode: Arc<std::sync::atomic::AtomicU8>,
}

#[async_trait::async_trait]
impl en_auth_oauth2::Signer for Switched {
    fn algorithm(&self) -> en_auth_oauth2::SigningAlgorithm {
        en_auth_oauth2::SigningAlgorithm::ES256
    }
    fn key_id(&self) -> Option<String> {
        None
    }
    fn public_jwk(&self) -> serde_json::Value {
        self.key.public_jwk()
    }
    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, en_auth_core::Error> {
        match self.mode.load(Ordering::SeqCst) {
            FAILS => Err(en_auth_core::Error::CredentialUnavailable {
                credential: "kms key".into(),
                reason: "the KMS is unreachable".into(),
            }),
            HANGS => std::future::pending().await,
            _ => en_auth_oauth2::Signer::sign(&self.key, message).await,
        }
    }
}

/// Review M3 / T2: through the layer, a signer that fails fails the request and a signer that
/// hangs fails it after the proof timeout — the API receives nothing either way; then it
/// signs again.
///
/// The timeout here is 100 ms of real time: en-auth-tower's dev-dependencies leave out tokio's
/// `test-util` (it instruments every clock read, and the same build is the `layer` benchmark
/// whose instruction counts ./scripts/bench-instructions reports). The default timeout on a
/// paused clock is en-auth-core's `a_proof_that_never_comes_fails_the_request_after_the_proof_timeout`.
#[tokio::test]
async fn a_failing_or_hanging_signer_sends_nothing_unsigned() {
    let provider = OidcProvider::start(600).await;
    let (api, requests, _) = counted_api(&provider).await;
    let mode = Arc::new(std::sync::atomic::AtomicU8::new(SIGNS));
    let signer = Switched {
        key: en_auth_oauth2::DpopKey::generate().unwrap(),
        mode: Arc::clone(&mode),
    };
    let (id, secret) = OidcProvider::DPOP_CLIENT;
    let sa = ServiceAccountAuthorizer::new(ClientInfo::new(id, secret), provider.token_url())
        .with_audience(OidcProvider::API)
        .with_dpop_signer(Arc::new(signer));
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let proof_timeout = std::time::Duration::from_millis(100);
    let cache = en_auth_core::TokenCache::builder(sa)
        .policy(en_auth_core::LifecyclePolicy::default().with_proof_timeout(proof_timeout))
        .build();
    let service = AuthLayer::from_cache(cache).layer(client);
    let get = || Request::get(api.url("/orders")).body(Empty::new()).unwrap();
    let response = service.clone().oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(requests.load(Ordering::SeqCst), 1);

    mode.store(FAILS, Ordering::SeqCst);
    let err = service.clone().oneshot(get()).await.expect_err("no proof");
    let err = err
        .downcast_ref::<en_auth_core::Error>()
        .expect("en-auth's error");
    assert!(
        matches!(err, en_auth_core::Error::CredentialUnavailable { .. }),
        "{err:?}"
    );
    assert_eq!(requests.load(Ordering::SeqCst), 1, "nothing sent unsigned");

    // Hung: the request waits for its proof until the (100 ms, real) proof timeout.
    mode.store(HANGS, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let waited = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        service.clone().oneshot(get()),
    )
    .await
    .expect("the proof timeout ended the wait");
    let elapsed = started.elapsed();
    let err = waited.expect_err("no proof in time");
    let err = err
        .downcast_ref::<en_auth_core::Error>()
        .expect("en-auth's error");
    assert!(
        matches!(err, en_auth_core::Error::Transport { timeout: true, .. }),
        "{err:?}"
    );
    assert!(
        elapsed >= proof_timeout && elapsed < std::time::Duration::from_secs(10),
        "{elapsed:?}"
    );
    assert_eq!(requests.load(Ordering::SeqCst), 1, "nothing sent unsigned");

    mode.store(SIGNS, Ordering::SeqCst);
    let response = service.clone().oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    assert_eq!(provider.tokens_issued().await, 1);
}

/// A response body that notes when it is dropped.
struct NotesDrop(Option<Arc<std::sync::atomic::AtomicBool>>);

impl Drop for NotesDrop {
    fn drop(&mut self) {
        if let Some(dropped) = &self.0 {
            dropped.store(true, Ordering::SeqCst);
        }
    }
}

/// A DPoP signer that notes, at each signature, whether the API's 401 was let go already.
#[derive(Debug)]
struct Watching {
    key: en_auth_oauth2::DpopKey,
    dropped: Arc<std::sync::atomic::AtomicBool>,
    seen: Arc<std::sync::Mutex<Vec<bool>>>,
}

#[async_trait::async_trait]
impl en_auth_oauth2::Signer for Watching {
    fn algorithm(&self) -> en_auth_oauth2::SigningAlgorithm {
        en_auth_oauth2::SigningAlgorithm::ES256
    }
    fn key_id(&self) -> Option<String> {
        None
    }
    fn public_jwk(&self) -> serde_json::Value {
        self.key.public_jwk()
    }
    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, en_auth_core::Error> {
        let dropped = self.dropped.load(Ordering::SeqCst);
        self.seen.lock().unwrap().push(dropped);
        en_auth_oauth2::Signer::sign(&self.key, message).await
    }
}

/// Review N5: an API's nonce challenge (a 401) is dropped — with the connection it may hold —
/// before the resend's proof is signed, which may wait for a KMS.
#[tokio::test]
async fn the_challenge_is_let_go_before_the_resend_is_signed() {
    let provider = OidcProvider::start(600).await;
    let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let signer = Watching {
        key: en_auth_oauth2::DpopKey::generate().unwrap(),
        dropped: Arc::clone(&dropped),
        seen: Arc::clone(&seen),
    };
    let (id, secret) = OidcProvider::DPOP_CLIENT;
    let sa = ServiceAccountAuthorizer::new(ClientInfo::new(id, secret), provider.token_url())
        .with_audience(OidcProvider::API)
        .with_dpop_signer(Arc::new(signer));
    // The API: asks for a nonce once (its body notes being dropped), then answers 200.
    let calls = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&calls);
    let api = tower::service_fn(move |request: Request<Empty<Bytes>>| {
        let call = counted.fetch_add(1, Ordering::SeqCst);
        let dropped = Arc::clone(&dropped);
        async move {
            assert!(
                request.headers().contains_key("dpop"),
                "a proof on every request"
            );
            let response = if call == 0 {
                http::Response::builder()
                    .status(StatusCode::UNAUTHORIZED)
                    .header("www-authenticate", r#"DPoP error="use_dpop_nonce""#)
                    .header("dpop-nonce", "n-1")
                    .body(NotesDrop(Some(dropped)))
            } else {
                http::Response::builder().body(NotesDrop(None))
            };
            Ok::<_, std::convert::Infallible>(response.unwrap())
        }
    });
    let service = AuthLayer::new(sa).layer(api);
    let request = Request::get("http://127.0.0.1:9/orders")
        .body(Empty::new())
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "challenged, resent once");
    assert_eq!(
        *seen.lock().unwrap(),
        [false, false, true],
        "token request, first API request, resend: signed after the 401 was dropped"
    );
}
