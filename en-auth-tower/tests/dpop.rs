//! DPoP through the tower `AuthLayer` on hyper-util's client: a DPoP-bound token from panva's
//! `oidc-provider`, a fresh proof per request checked by an axum API behind
//! `RequireAuth::dpop_with`, and the API's nonce challenge answered with one retry.

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
