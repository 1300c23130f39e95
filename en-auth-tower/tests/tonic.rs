//! `AuthLayer` and `AuthInterceptor` on a tonic client against a real tonic gRPC server (the
//! standard `grpc.health.v1.Health` service) on loopback, which accepts only live tokens of
//! the testkit's identity provider. Token requests are counted by the provider.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use en_auth_core::{ClientInfo, TokenCache};
use en_auth_oauth2::ServiceAccountAuthorizer;
use en_auth_testkit::{IdpConfig, LocalIdp};
use en_auth_tower::{AuthInterceptor, AuthLayer};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::Layer;

/// A gRPC server whose every call must carry a live token of `idp`.
struct GrpcServer {
    url: String,
    calls: Arc<AtomicU64>,
    rejected: Arc<AtomicU64>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl GrpcServer {
    async fn start(idp: Arc<LocalIdp>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (calls, rejected) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (seen, refused) = (Arc::clone(&calls), Arc::clone(&rejected));
        let check = move |request: tonic::Request<()>| {
            seen.fetch_add(1, Ordering::SeqCst);
            let token = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            match token {
                Some(token) if idp.accepts(token) => Ok(request),
                _ => {
                    refused.fetch_add(1, Ordering::SeqCst);
                    Err(tonic::Status::unauthenticated("invalid token"))
                }
            }
        };
        let (_reporter, health) = tonic_health::server::health_reporter();
        let service = tonic::service::interceptor::InterceptedService::new(health, check);
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async {
                        let _ = stop.await;
                    },
                ),
        );
        Self {
            url,
            calls,
            rejected,
            _shutdown: shutdown,
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(self.url.clone())
            .unwrap()
            .connect()
            .await
            .expect("connects to the loopback server")
    }
}

fn authorizer(idp: &LocalIdp) -> ServiceAccountAuthorizer {
    ServiceAccountAuthorizer::new(
        ClientInfo::new(idp.client_id(), idp.client_secret()),
        idp.token_url(),
    )
}

fn check() -> HealthCheckRequest {
    HealthCheckRequest {
        service: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_share_one_token_and_recover_from_unauthenticated() {
    let idp = Arc::new(LocalIdp::start(IdpConfig::default()).await.unwrap());
    let server = GrpcServer::start(Arc::clone(&idp)).await;
    let layer = AuthLayer::new(authorizer(&idp));
    let client = HealthClient::new(layer.layer(server.channel().await));

    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..500 {
        let mut client = client.clone();
        calls.spawn(async move { client.check(check()).await.map(|_| ()) });
    }
    while let Some(result) = calls.join_next().await {
        result.unwrap().expect("every call authorized");
    }
    assert_eq!(idp.token_requests(), 1, "500 cold calls, one token request");
    assert_eq!(server.calls.load(Ordering::SeqCst), 500);

    // Revoked at the provider: the server answers UNAUTHENTICATED; gRPC calls are not
    // replayed, but the token is dropped and the next call carries a new one.
    idp.revoke_all();
    let status = client.clone().check(check()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(layer.cache().stats().invalidations, 1);
    assert_eq!(server.calls.load(Ordering::SeqCst), 501, "not replayed");
    for _ in 0..10 {
        client.clone().check(check()).await.expect("a new token");
    }
    assert_eq!(idp.token_requests(), 2, "one refresh after the rejection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_streaming_call_is_authorized_and_never_replayed() {
    let idp = Arc::new(LocalIdp::start(IdpConfig::default()).await.unwrap());
    let server = GrpcServer::start(Arc::clone(&idp)).await;
    let layer = AuthLayer::new(authorizer(&idp));
    let mut client = HealthClient::new(layer.layer(server.channel().await));

    let mut stream = client.watch(check()).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().expect("a status message");
    assert_eq!(first.status, 1, "SERVING");
    drop(stream);

    idp.revoke_all();
    let status = client.watch(check()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        server.rejected.load(Ordering::SeqCst),
        1,
        "sent once, not replayed"
    );
    let mut stream = client.watch(check()).await.unwrap().into_inner();
    assert!(stream.message().await.unwrap().is_some());
    assert_eq!(idp.token_requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interceptor_reads_the_cache_and_asks_for_warm_up() {
    let idp = Arc::new(LocalIdp::start(IdpConfig::default()).await.unwrap());
    let server = GrpcServer::start(Arc::clone(&idp)).await;
    let cache = TokenCache::new(authorizer(&idp));
    let mut cold =
        HealthClient::with_interceptor(server.channel().await, AuthInterceptor::new(cache.clone()));
    let status = cold.check(check()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "no token yet");
    assert_eq!(server.calls.load(Ordering::SeqCst), 0, "nothing sent");

    cache.warm_up().await.unwrap();
    let mut warm =
        HealthClient::with_interceptor(server.channel().await, AuthInterceptor::new(cache));
    for _ in 0..20 {
        warm.check(check())
            .await
            .expect("authorized from the cache");
    }
    assert_eq!(
        idp.token_requests(),
        1,
        "the kicked fetch and warm_up are one fetch"
    );
}
