//! Quickstart: a local identity provider and a protected API on loopback, and a client whose
//! requests are authorized by en-auth. Needs nothing but cargo:
//!
//! ```text
//! cargo run --example quickstart
//! ```

use std::time::{Duration, Instant};

use en_auth::secrecy::ExposeSecret;
use en_auth::{AuthMiddleware, Authorizer, BearerToken, ClientInfo, Error};
use en_auth_testkit::{IdpConfig, LocalIdp, ProtectedApi};

/// Your own identity provider, in a few lines: POST the client credentials, read the token.
struct LocalClientCredentials {
    info: ClientInfo,
    token_url: String,
    http: reqwest::Client,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
}

#[en_auth::async_trait]
impl Authorizer for LocalClientCredentials {
    type Token = BearerToken;

    fn client_info(&self) -> &ClientInfo {
        &self.info
    }

    async fn authorize(&self) -> Result<BearerToken, Error> {
        let (client_id, secret) = self.info.to_basic_auth();
        let response = self
            .http
            .post(&self.token_url)
            .basic_auth(client_id, Some(secret.expose_secret()))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            return Err(Error::InvalidClient {
                status: Some(status.as_u16()),
                description: None,
            });
        }
        let body: TokenResponse = response.json().await?;
        Ok(BearerToken::new(
            body.access_token,
            body.expires_in.map(Duration::from_secs),
        ))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. An identity provider issuing 4-second tokens, and an API that only accepts them.
    let idp = LocalIdp::start(IdpConfig {
        lifetime: Some(Duration::from_secs(4)),
        ..IdpConfig::default()
    })
    .await?;
    let api = ProtectedApi::start(&idp).await?;
    println!("identity provider: {}", idp.token_url());
    println!("protected API:     {}", api.url("/"));

    // 2. Build the authorizer once and attach it to a reqwest-middleware client.
    let authorizer = LocalClientCredentials {
        info: ClientInfo::new(idp.client_id(), idp.client_secret())
            .with_api_key("quickstart-api-key"),
        token_url: idp.token_url(),
        http: reqwest::Client::new(),
    };
    let auth = AuthMiddleware::new(authorizer);
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(auth.clone())
        .build();

    // 3. A burst of 200 concurrent requests on a cold cache.
    let started = Instant::now();
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (client, url) = (client.clone(), api.url(&format!("/orders/{i}")));
        burst.spawn(async move {
            client
                .get(url)
                .send()
                .await
                .map(|r| r.status().is_success())
        });
    }
    let mut ok = 0;
    while let Some(result) = burst.join_next().await {
        ok += usize::from(result?.unwrap_or(false));
    }
    println!(
        "\nburst: {ok}/200 requests authorized in {:?}; token requests the provider received: {}",
        started.elapsed(),
        idp.token_requests()
    );

    // 4. Requests across token expiry: the token is refreshed ahead of time (half of a 4 s life).
    println!("\nrequests over 6 seconds, one every 1.5 s:");
    for second in 0..5 {
        let status = client.get(api.url("/orders")).send().await?.status();
        println!(
            "  t={:>4.1}s  {status}  token requests so far: {}",
            second as f64 * 1.5,
            idp.token_requests()
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }

    // 5. The provider revokes every token: the API answers 401, en-auth fetches a new token
    //    and replays the request once.
    idp.revoke_all();
    let status = client.get(api.url("/orders")).send().await?.status();
    println!("\nafter revocation: {status} (replayed with a new token)");

    let stats = auth.stats();
    println!("\nsummary:");
    println!("  requests the API received:          {}", api.requests());
    println!(
        "  token requests the provider got:    {}",
        idp.token_requests()
    );
    println!(
        "  first authorizations / refreshes:   {} / {}",
        stats.authorizations, stats.refreshes
    );
    println!(
        "  tokens rejected (401) / replays:    {} / {}",
        stats.invalidations, stats.replays
    );
    println!(
        "  X-Api-Key sent with every request:  {}",
        api.seen().iter().all(|s| s.api_key.is_some())
    );
    Ok(())
}
