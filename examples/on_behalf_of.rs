//! On behalf of a caller: an API verifies its caller's token (`RequireAuth`) and calls a
//! downstream API *as that caller*, with a token exchanged for the caller's own (RFC 8693
//! token exchange, `en_auth::oauth2::OnBehalfOf`). Everything runs on loopback: a local
//! identity provider that signs users' tokens and exchanges them, the downstream API, and the
//! API in the middle. Needs nothing but cargo:
//!
//! ```text
//! cargo run --example on_behalf_of --features verify
//! ```

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use en_auth::oauth2::{CallerToken, OnBehalfOf};
use en_auth::verify::{Authenticated, RequireAuth, Verifier};
use en_auth::{ClientInfo, Error};
use en_auth_testkit::{IdpConfig, LocalIdp, LoopbackServer};

/// The API in the middle, and the audience of its callers' tokens.
const ORDERS: &str = "https://orders.example";
/// The downstream API, and the audience of the exchanged tokens.
const INVENTORY: &str = "https://inventory.example";

struct Orders {
    obo: OnBehalfOf,
    inventory_url: String,
    http: reqwest::Client,
}

/// `GET /orders`: behind `RequireAuth`, so the caller's token has been verified. The handler
/// exchanges it (once per caller's token; later requests reuse the result) and calls the
/// inventory API with the exchanged token.
async fn orders(State(app): State<Arc<Orders>>, caller: Authenticated) -> Result<String, Response> {
    // The verified token and its verified expiry, as RequireAuth read them.
    let token = app
        .obo
        .token_for(CallerToken::verified(caller.token(), caller.exp))
        .await
        .map_err(refusal)?;
    let inventory = app
        .http
        .get(&app.inventory_url)
        .header(header::AUTHORIZATION, token.authorization())
        .send()
        .await
        .map_err(|e| {
            eprintln!("inventory API unreachable: {e}");
            StatusCode::BAD_GATEWAY.into_response()
        })?;
    if inventory.status() == StatusCode::UNAUTHORIZED {
        // The downstream API refused the exchanged token: the caller's next request gets a
        // new exchange.
        let caller_token = CallerToken::verified(caller.token(), caller.exp);
        app.obo.invalidate(caller_token, &token).await;
        return Err(StatusCode::BAD_GATEWAY.into_response());
    }
    let items = inventory.text().await.unwrap_or_default();
    Ok(format!(
        "orders of {}: {items}",
        caller.sub.as_deref().unwrap_or("?")
    ))
}

/// The answer to a caller whose token was not exchanged: `401` when its token is no longer
/// good (expired since `RequireAuth` let it through within its clock leeway: the caller
/// renews it), else `502`. The reason goes to the log, never to the caller (it may quote the
/// provider).
fn refusal(err: Error) -> Response {
    eprintln!("on behalf of: no downstream token: {err}");
    match err {
        Error::InvalidToken { .. } => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, r#"Bearer error="invalid_token""#)],
        )
            .into_response(),
        _ => StatusCode::BAD_GATEWAY.into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. An identity provider: it signs users' tokens (as their login would) and exchanges
    //    them for downstream tokens at its token endpoint.
    let idp = Arc::new(
        LocalIdp::start(IdpConfig {
            client_id: "orders-api".into(),
            client_secret: "orders-api-secret-do-not-log".into(),
            lifetime: Some(Duration::from_secs(600)),
        })
        .await?,
    );

    // 2. The downstream API: it accepts only exchanged tokens, and knows for whom they act.
    let inventory = {
        let idp = Arc::clone(&idp);
        LoopbackServer::start(Router::new().route(
            "/items",
            get(move |headers: HeaderMap| async move {
                let token = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or_default();
                match idp.subject_of(token) {
                    Some(user) if idp.accepts(token) => {
                        (StatusCode::OK, format!("3 items reserved for {user}"))
                    }
                    _ => (
                        StatusCode::UNAUTHORIZED,
                        "not an exchanged token".to_owned(),
                    ),
                }
            }),
        ))
        .await?
    };

    // 3. The API in the middle: callers' tokens verified by RequireAuth, downstream calls on
    //    their behalf through OnBehalfOf.
    let verifier = Verifier::hs256(idp.user_token_key())
        .with_issuer(LocalIdp::USER_ISSUER)
        .with_audience(ORDERS);
    let obo = OnBehalfOf::new(
        ClientInfo::new(idp.client_id(), idp.client_secret()),
        idp.token_url(),
    )
    .with_audience(INVENTORY);
    let app = Arc::new(Orders {
        obo: obo.clone(),
        inventory_url: inventory.url("/items"),
        http: reqwest::Client::new(),
    });
    let api = LoopbackServer::start(
        Router::new()
            .route("/orders", get(orders))
            .with_state(app)
            .layer(RequireAuth::new(verifier)),
    )
    .await?;
    println!("identity provider: {}", idp.token_url());
    println!("inventory API:     {}", inventory.url("/items"));
    println!("orders API:        {}", api.url("/orders"));

    // 4. Two users call the orders API, 50 requests each, all at once.
    let http = reqwest::Client::new();
    let users =
        ["alice", "bob"].map(|user| (user, idp.user_token(user, ORDERS, Duration::from_secs(300))));
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..50 {
        for (user, token) in &users {
            let (http, url, user, token) = (http.clone(), api.url("/orders"), *user, token.clone());
            requests.spawn(async move {
                let response = http.get(url).bearer_auth(token).send().await?;
                Ok::<_, reqwest::Error>((user, response.status(), response.text().await?))
            });
        }
    }
    let mut answers = std::collections::BTreeMap::new();
    while let Some(answer) = requests.join_next().await {
        let (user, status, text) = answer??;
        answers
            .entry(user)
            .or_insert_with(Vec::new)
            .push(format!("{status} {text}"));
    }
    println!();
    for (user, seen) in &answers {
        let mut distinct = seen.clone();
        distinct.sort();
        distinct.dedup();
        println!("{user}: {} requests, answers: {distinct:?}", seen.len());
    }

    // 5. A request without a token never reaches the handler.
    let status = http.get(api.url("/orders")).send().await?.status();
    println!("\nwithout a token: {status}");

    // 6. A token that has just expired: RequireAuth lets it through (within its clock
    //    leeway), OnBehalfOf does not exchange it, and the caller is told to renew it.
    let expired = idp.user_token("carol", ORDERS, Duration::ZERO);
    let response = http
        .get(api.url("/orders"))
        .bearer_auth(expired)
        .send()
        .await?;
    println!(
        "with a token that just expired: {} ({})",
        response.status(),
        response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    );

    println!("\nsummary:");
    println!("  requests on behalf of callers:   100 (2 callers)");
    println!("  token exchanges at the provider: {}", idp.exchanges());
    println!(
        "  callers remembered:              {}",
        obo.remembered_callers()
    );
    Ok(())
}
