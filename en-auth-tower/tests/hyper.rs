//! `AuthLayer` on hyper-util's client against the testkit's identity provider and protected
//! API, both on loopback; token requests counted by the provider.

use std::time::Duration;

use bytes::Bytes;
use en_auth_core::{AuthMiddleware, ClientInfo, TokenCache};
use en_auth_oauth2::ServiceAccountAuthorizer;
use en_auth_testkit::{IdpConfig, LocalIdp, ProtectedApi};
use en_auth_tower::{AuthLayer, BoxError};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, Service, ServiceExt};

type Incoming = hyper::body::Incoming;

fn authorizer(idp: &LocalIdp) -> ServiceAccountAuthorizer {
    ServiceAccountAuthorizer::new(
        ClientInfo::new(idp.client_id(), idp.client_secret()).with_api_key("key-7"),
        idp.token_url(),
    )
}

async fn peers() -> (LocalIdp, ProtectedApi) {
    let idp = LocalIdp::start(IdpConfig::default()).await.unwrap();
    let api = ProtectedApi::start(&idp).await.unwrap();
    (idp, api)
}

fn get(url: String) -> Request<Empty<Bytes>> {
    Request::get(url).body(Empty::new()).unwrap()
}

async fn send<S, B>(service: &S, request: Request<B>) -> Response<Incoming>
where
    S: Service<Request<B>, Response = Response<Incoming>, Error = BoxError> + Clone,
{
    service
        .clone()
        .oneshot(request)
        .await
        .expect("request completes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_burst_through_hyper_costs_one_token_request() {
    let (idp, api) = peers().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let service = tower::ServiceBuilder::new()
        .layer(AuthLayer::new(authorizer(&idp)))
        .service(client);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..500 {
        let service = service.clone();
        let url = api.url("/data");
        calls.spawn(async move { service.oneshot(get(url)).await.map(|r| r.status()) });
    }
    while let Some(status) = calls.join_next().await {
        assert_eq!(status.unwrap().unwrap(), StatusCode::OK);
    }
    assert_eq!(
        idp.token_requests(),
        1,
        "500 cold requests, one token request"
    );
    assert_eq!(api.requests(), 500);
    let seen = api.seen();
    assert!(seen.iter().all(|r| r.api_key.as_deref() == Some("key-7")));
}

#[tokio::test]
async fn a_401_replays_a_body_less_request_once_with_a_new_token() {
    let (idp, api) = peers().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let service = AuthLayer::new(authorizer(&idp)).layer(client);
    assert_eq!(send(&service, get(api.url("/data"))).await.status(), 200);
    api.reject_next(1);
    let response = send(&service, get(api.url("/orders/7"))).await;
    assert_eq!(response.status(), 200, "replayed with a new token");
    let seen = api.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2].path, "/orders/7");
    assert_ne!(seen[1].token, seen[2].token);
    assert_eq!(idp.token_requests(), 2);
}

#[tokio::test]
async fn a_buffered_body_is_replayed_and_a_stream_is_not() {
    let (idp, api) = peers().await;
    let layer = AuthLayer::from_cache(
        TokenCache::builder(authorizer(&idp))
            .policy(
                en_auth_core::LifecyclePolicy::default().with_rejection_interval(Duration::ZERO),
            )
            .build(),
    );
    let full = layer
        .clone()
        .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    api.reject_next(1);
    let request = Request::post(api.url("/echo"))
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let response = send(&full, request).await;
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello");
    assert_eq!(api.requests(), 2);

    type Chunks = futures_util::stream::Iter<
        std::vec::IntoIter<Result<http_body::Frame<Bytes>, std::io::Error>>,
    >;
    let streaming =
        layer.layer(Client::builder(TokioExecutor::new()).build_http::<StreamBody<Chunks>>());
    api.reject_next(1);
    let stream = futures_util::stream::iter(vec![Ok(http_body::Frame::data(Bytes::from_static(
        b"chunk",
    )))]);
    let request = Request::post(api.url("/upload"))
        .body(StreamBody::new(stream))
        .unwrap();
    let response = send(&streaming, request).await;
    assert_eq!(response.status(), 401, "a stream is not replayed");
    assert_eq!(api.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cache_behind_the_middleware_and_the_layer_is_one_token() {
    let (idp, api) = peers().await;
    let cache = TokenCache::new(authorizer(&idp));
    let layered = AuthLayer::from_cache(cache.clone())
        .layer(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    let reqwest_client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::from_cache(cache.clone()))
        .build();
    for _ in 0..10 {
        assert_eq!(send(&layered, get(api.url("/data"))).await.status(), 200);
        let status = reqwest_client
            .get(api.url("/data"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 200);
    }
    assert_eq!(idp.token_requests(), 1, "one token for both adapters");
    let tokens: std::collections::HashSet<_> = api.seen().into_iter().map(|r| r.token).collect();
    assert_eq!(tokens.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffered_inner_service_does_not_panic() {
    let (idp, api) = peers().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let buffered = tower::buffer::Buffer::new(
        tower::util::MapErrLayer::new(|e: hyper_util::client::legacy::Error| {
            Box::new(e) as BoxError
        })
        .layer(client),
        4,
    );
    let mut service = AuthLayer::new(authorizer(&idp)).layer(buffered);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..100 {
        // poll_ready then call on the same handle, as tower requires; the layer must call
        // the service it readied, not a fresh clone of the buffer.
        let ready = service.ready().await.unwrap();
        let future = ready.call(get(api.url("/data")));
        calls.spawn(future);
    }
    while let Some(result) = calls.join_next().await {
        assert_eq!(result.unwrap().unwrap().status(), 200);
    }
    assert_eq!(idp.token_requests(), 1);
    assert_eq!(api.requests(), 100);
}

#[tokio::test]
async fn no_token_surfaces_as_a_typed_en_auth_error() {
    let (idp, api) = peers().await;
    let wrong = ServiceAccountAuthorizer::new(
        ClientInfo::new(idp.client_id(), "wrong-secret"),
        idp.token_url(),
    );
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let service = AuthLayer::new(wrong).layer(client);
    let err = service.oneshot(get(api.url("/data"))).await.unwrap_err();
    let err = err
        .downcast_ref::<en_auth_core::Error>()
        .expect("an en-auth error");
    assert!(
        matches!(err, en_auth_core::Error::InvalidClient { .. }),
        "{err:?}"
    );
    assert_eq!(api.requests(), 0, "nothing sent without a token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audience_layer_gives_each_api_its_own_token() {
    const BILLING: &str = "https://billing.example.com";
    const ORDERS: &str = "https://orders.example.com";
    let idp = LocalIdp::start(IdpConfig::default()).await.unwrap();
    let billing = ProtectedApi::start_for_audience(&idp, BILLING)
        .await
        .unwrap();
    let orders = ProtectedApi::start_for_audience(&idp, ORDERS)
        .await
        .unwrap();
    let (id, secret, token_url) = (idp.client_id(), idp.client_secret(), idp.token_url());
    let layer = en_auth_tower::AudienceLayer::new(move |audience: &en_auth_core::Audience| {
        ServiceAccountAuthorizer::new(ClientInfo::new(&id, &secret), &token_url)
            .with_audience(audience.as_str())
    })
    .route(billing.url("/"), BILLING)
    .max_audiences(2);
    let service = layer.layer(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    for _ in 0..10 {
        assert_eq!(send(&service, get(billing.url("/a"))).await.status(), 200);
        let mut request = get(orders.url("/b"));
        request
            .extensions_mut()
            .insert(en_auth_core::Audience::new(ORDERS));
        assert_eq!(send(&service, request).await.status(), 200);
    }
    assert_eq!(idp.token_requests_for(BILLING), 1);
    assert_eq!(idp.token_requests_for(ORDERS), 1);

    // No audience for this URL: refused before sending; a third audience: over the cap.
    let err = service
        .clone()
        .oneshot(get(orders.url("/c")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no Audience"), "{err}");
    let mut third = get(orders.url("/d"));
    third
        .extensions_mut()
        .insert(en_auth_core::Audience::new("https://third.example.com"));
    let err = service.clone().oneshot(third).await.unwrap_err();
    assert!(err.to_string().contains("max_audiences"), "{err}");
    assert_eq!(orders.requests(), 10);
    assert_eq!(idp.token_requests(), 2);
}

#[tokio::test]
async fn an_api_key_that_cannot_be_sent_fails_every_request_instead_of_being_dropped() {
    let (idp, api) = peers().await;
    let bad = || {
        ServiceAccountAuthorizer::new(
            ClientInfo::new(idp.client_id(), idp.client_secret()).with_api_key("key-7\n"),
            idp.token_url(),
        )
    };
    assert!(matches!(
        AuthLayer::try_from_cache(TokenCache::new(bad())),
        Err(en_auth_core::Error::InvalidConfiguration { .. })
    ));
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let service = AuthLayer::new(bad()).layer(client);
    let err = service
        .oneshot(get(api.url("/data")))
        .await
        .expect_err("refused");
    assert!(
        matches!(
            err.downcast_ref::<en_auth_core::Error>(),
            Some(en_auth_core::Error::InvalidConfiguration { setting, .. }) if setting == "api_key"
        ),
        "{err:?}"
    );
    assert_eq!(api.requests(), 0, "nothing was sent without the key");
    assert_eq!(idp.token_requests(), 0);
}

#[tokio::test]
async fn credentials_are_refused_over_plain_http_to_a_remote_host_before_any_io() {
    let (idp, api) = peers().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let service = AuthLayer::new(authorizer(&idp)).layer(client.clone());
    // `.invalid` never resolves: the refusal happens before any lookup or connection.
    let err = service
        .clone()
        .oneshot(get("http://api.example.invalid/orders".into()))
        .await
        .expect_err("refused");
    let err = err
        .downcast_ref::<en_auth_core::Error>()
        .expect("an en-auth error");
    assert!(
        matches!(err, en_auth_core::Error::InvalidConfiguration { .. }),
        "{err:?}"
    );
    assert_eq!(idp.token_requests(), 0, "no token fetched for it");
    // Loopback stays allowed over http. (The escape hatch, allow_plain_http(true), is not
    // exercised here: it would send traffic beyond loopback.)
    assert_eq!(send(&service, get(api.url("/data"))).await.status(), 200);
}
