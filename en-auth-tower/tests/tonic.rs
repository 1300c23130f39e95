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

/// Server side: every call's bearer token is verified by `en-auth-verify` against the
/// identity provider's JWKS before it reaches the service; a bad one gets `UNAUTHENTICATED`.
#[derive(Clone)]
struct VerifyBearer<S> {
    inner: S,
    verifier: en_auth_verify::Verifier,
    verified: Arc<AtomicU64>,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for VerifyBearer<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for VerifyBearer<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let (verifier, verified) = (self.verifier.clone(), Arc::clone(&self.verified));
        Box::pin(async move {
            let token = request
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default()
                .to_owned();
            match verifier.verify(&token).await {
                Ok(_) => {
                    verified.fetch_add(1, Ordering::SeqCst);
                    inner.call(request).await
                }
                Err(_) => Ok(tonic::Status::unauthenticated("invalid token").into_http()),
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_calls_carry_oidc_provider_tokens_verified_against_its_jwks() {
    use en_auth_testkit::OidcProvider;
    let provider = OidcProvider::start(600).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let verified = Arc::new(AtomicU64::new(0));
    let (_reporter, health) = tonic_health::server::health_reporter();
    let service = VerifyBearer {
        inner: health,
        verifier: en_auth_verify::Verifier::oidc(provider.issuer(), OidcProvider::API),
        verified: Arc::clone(&verified),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let (id, secret) = OidcProvider::BASIC_CLIENT;
    let authorizer =
        ServiceAccountAuthorizer::new(ClientInfo::new(id, secret), provider.token_url())
            .with_audience(OidcProvider::API)
            .with_scopes(["read:data"]);
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    let client = HealthClient::new(AuthLayer::new(authorizer).layer(channel.clone()));
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let mut client = client.clone();
        calls.spawn(async move { client.check(check()).await.map(|_| ()) });
    }
    while let Some(result) = calls.join_next().await {
        result.unwrap().expect("verified by the server");
    }
    assert_eq!(verified.load(Ordering::SeqCst), 200);
    assert_eq!(
        provider.token_requests().await,
        1,
        "one token for 200 cold calls"
    );

    // Without the layer the server refuses.
    let mut bare = HealthClient::new(channel);
    let status = bare.check(check()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn the_interceptor_refuses_calls_when_the_api_key_cannot_be_sent() {
    use tonic::service::Interceptor;
    let idp = LocalIdp::start(IdpConfig::default()).await.unwrap();
    let authorizer = ServiceAccountAuthorizer::new(
        ClientInfo::new(idp.client_id(), idp.client_secret()).with_api_key("key\r\n"),
        idp.token_url(),
    );
    let mut interceptor = AuthInterceptor::new(TokenCache::new(authorizer));
    let status = interceptor
        .call(tonic::Request::new(()))
        .expect_err("refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("api_key"), "{status:?}");
    assert_eq!(idp.token_requests(), 0, "not even a token fetch");
}
