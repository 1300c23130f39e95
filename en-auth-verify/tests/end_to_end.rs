//! Tokens from panva's `oidc-provider`, verified by `Verifier::oidc`; and the axum layer end to
//! end: an en-auth client with `AuthMiddleware` calling a route protected by `RequireAuth`.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use en_auth_core::{AuthMiddleware, ClientInfo};
use en_auth_oauth2::ServiceAccountAuthorizer;
use en_auth_testkit::{LoopbackServer, OidcProvider};
use en_auth_verify::{Authenticated, RequireAuth, Verifier};

fn authorizer(provider: &OidcProvider, scopes: &[&str]) -> ServiceAccountAuthorizer {
    let (id, secret) = OidcProvider::BASIC_CLIENT;
    ServiceAccountAuthorizer::new(ClientInfo::new(id, secret), provider.token_url())
        .with_audience(OidcProvider::API)
        .with_scopes(scopes.iter().copied())
}

#[tokio::test]
async fn provider_tokens_verify_and_a_key_rotation_needs_no_restart() {
    let provider = OidcProvider::start(600).await;
    let verifier = Verifier::oidc(provider.issuer(), OidcProvider::API)
        .require_typ("at+jwt")
        .with_jwks_refresh_interval(Duration::from_millis(200));

    let before = AuthMiddleware::new(authorizer(&provider, &["read:data"]))
        .access_token()
        .await
        .unwrap();
    let claims = verifier.verify(&before).await.unwrap();
    assert_eq!(claims.client_id.as_deref(), Some("basic-client"));
    assert!(claims.has_scope("read:data"));
    assert_eq!(verifier.jwks_fetches(), 1);

    provider.rotate_signing_key().await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let after = AuthMiddleware::new(authorizer(&provider, &["read:data"]))
        .access_token()
        .await
        .unwrap();
    let header_kid = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid;
    assert_ne!(
        header_kid(&before),
        header_kid(&after),
        "the provider signs with a new key"
    );
    verifier
        .verify(&after)
        .await
        .expect("a token signed with the new key verifies");
    assert_eq!(
        verifier.jwks_fetches(),
        2,
        "one refetch picked up the new key"
    );

    // A wrong audience is refused.
    let other = Verifier::oidc(provider.issuer(), "https://orders.example.com");
    assert!(other.verify(&after).await.is_err());
}

async fn orders(claims: Authenticated) -> String {
    format!("orders for {}", claims.client_id.as_deref().unwrap_or("?"))
}

#[tokio::test]
async fn the_axum_layer_end_to_end() {
    let provider = OidcProvider::start(600).await;
    let verifier = Verifier::oidc(provider.issuer(), OidcProvider::API);
    let app = Router::new()
        .route(
            "/orders",
            get(orders).layer(RequireAuth::new(verifier.clone()).scopes(["read:data"])),
        )
        .route(
            "/admin",
            get(orders).layer(RequireAuth::new(verifier).scopes(["write:data"])),
        )
        .route("/open", get(|| async { "public" }))
        .route("/unguarded", get(orders));
    let api = LoopbackServer::start(app).await.unwrap();

    let authorized = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::new(authorizer(&provider, &["read:data"])))
        .build();
    let response = authorized.get(api.url("/orders")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.text().await.unwrap(), "orders for basic-client");

    // Too few scopes: 403 insufficient_scope.
    let response = authorized.get(api.url("/admin")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.contains(r#"error="insufficient_scope""#) && challenge.contains("write:data"),
        "{challenge}"
    );

    // Without the middleware: 401 invalid_token, and the body says nothing of why.
    let bare = reqwest::Client::new();
    let response = bare.get(api.url("/orders")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        r#"Bearer error="invalid_token""#
    );
    assert_eq!(response.text().await.unwrap(), "");
    let response = bare
        .get(api.url("/orders"))
        .bearer_auth("not-a-jwt")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);

    // Unprotected routes stay open; the extractor refuses where the layer is missing.
    assert_eq!(
        bare.get(api.url("/open"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        bare.get(api.url("/unguarded"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    assert_eq!(
        provider.tokens_issued().await,
        1,
        "one token served every authorized request"
    );
}
