//! gRPC with tonic: a tonic client whose calls are authorized by `AuthLayer`, against a gRPC
//! server on loopback (the standard `grpc.health.v1.Health` service) that accepts only live
//! tokens of a local identity provider.
//!
//! ```text
//! cargo run --example tonic --features tonic
//! ```

use std::sync::Arc;

use en_auth::ClientInfo;
use en_auth::oauth2::ServiceAccountAuthorizer;
use en_auth::tower::AuthLayer;
use en_auth_testkit::{IdpConfig, LocalIdp};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let idp = Arc::new(LocalIdp::start(IdpConfig::default()).await?);

    // The server: every call must carry a token the identity provider issued.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let trusted = Arc::clone(&idp);
    let check = move |request: tonic::Request<()>| {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match token {
            Some(token) if trusted.accepts(token) => Ok(request),
            _ => Err(tonic::Status::unauthenticated("invalid token")),
        }
    };
    let (_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(tonic::service::interceptor::InterceptedService::new(
                health, check,
            ))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    // The client: a tonic Channel wrapped in AuthLayer. That is all it takes.
    let authorizer = ServiceAccountAuthorizer::new(
        ClientInfo::new(idp.client_id(), idp.client_secret()),
        idp.token_url(),
    );
    let channel = tonic::transport::Channel::from_shared(url)?
        .connect()
        .await?;
    let channel = tower::ServiceBuilder::new()
        .layer(AuthLayer::new(authorizer))
        .service(channel);
    let client = HealthClient::new(channel);

    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let mut client = client.clone();
        calls.spawn(async move {
            let request = HealthCheckRequest {
                service: String::new(),
            };
            client.check(request).await.map(|r| r.into_inner().status)
        });
    }
    let mut serving = 0;
    while let Some(result) = calls.join_next().await {
        if result?? == 1 {
            serving += 1;
        }
    }
    println!("100 concurrent gRPC calls: {serving} answered SERVING");
    println!(
        "token requests the identity provider received: {}",
        idp.token_requests()
    );
    Ok(())
}
