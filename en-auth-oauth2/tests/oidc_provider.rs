//! `ServiceAccountAuthorizer` against panva's `oidc-provider` on loopback.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use en_auth_core::{AuthMiddleware, ClientInfo, Error};
use en_auth_oauth2::{ClientAuthentication, ServiceAccountAuthorizer};
use en_auth_testkit::{LoopbackServer, OidcProvider};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct AccessClaims {
    aud: String,
    client_id: String,
    scope: Option<String>,
    iss: String,
}

async fn jwks(provider: &OidcProvider) -> JwkSet {
    reqwest::get(provider.jwks_url())
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Verifies `token`'s RS256 signature with the provider's keys and returns its claims.
fn verify(
    jwks: &JwkSet,
    issuer: &str,
    audience: &str,
    token: &str,
) -> Result<AccessClaims, String> {
    let kid = decode_header(token)
        .map_err(|e| e.to_string())?
        .kid
        .ok_or("no kid")?;
    let jwk = jwks.find(&kid).ok_or("unknown kid")?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[issuer]);
    // `cargo test --workspace` unifies jsonwebtoken's two backends (the backend-clash
    // member): this test process, the application here, names one.
    let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
        &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
    );
    decode::<AccessClaims>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| e.to_string())
}

fn client(id_secret: (&str, &str)) -> ClientInfo {
    ClientInfo::new(id_secret.0, id_secret.1)
}

#[tokio::test]
async fn tokens_are_obtained_with_basic_and_post_authentication() {
    let provider = OidcProvider::start(600).await;
    let keys = jwks(&provider).await;
    for (creds, method) in [
        (
            OidcProvider::BASIC_CLIENT,
            ClientAuthentication::ClientSecretBasic,
        ),
        (
            OidcProvider::POST_CLIENT,
            ClientAuthentication::ClientSecretPost,
        ),
    ] {
        let auth = AuthMiddleware::new(
            ServiceAccountAuthorizer::new(client(creds), provider.token_url())
                .with_authentication(method.clone())
                .with_audience(OidcProvider::API) // Auth0 style; the provider reads it as `resource`
                .with_scopes(["read:data", "write:data"]),
        );
        let token = auth
            .access_token()
            .await
            .unwrap_or_else(|e| panic!("{method:?}: {e}"));
        let claims = verify(&keys, &provider.issuer(), OidcProvider::API, &token).unwrap();
        assert_eq!(claims.aud, OidcProvider::API);
        assert_eq!(claims.client_id, creds.0);
        assert_eq!(claims.scope.as_deref(), Some("read:data write:data"));
        assert_eq!(claims.iss, provider.issuer());
    }
    assert_eq!(provider.tokens_issued().await, 2);
}

#[tokio::test]
async fn resource_indicators_are_sent_as_resource() {
    let provider = OidcProvider::start(600).await;
    let auth = AuthMiddleware::new(
        ServiceAccountAuthorizer::new(client(OidcProvider::BASIC_CLIENT), provider.token_url())
            .with_resource("https://orders.example.com")
            .with_scopes(["read:data"]),
    );
    let token = auth.access_token().await.unwrap();
    let claims = verify(
        &jwks(&provider).await,
        &provider.issuer(),
        "https://orders.example.com",
        &token,
    )
    .unwrap();
    assert_eq!(claims.scope.as_deref(), Some("read:data"));
}

#[tokio::test]
async fn refusals_are_typed_errors_with_the_providers_code() {
    let provider = OidcProvider::start(600).await;
    let wrong_secret = ServiceAccountAuthorizer::new(
        ClientInfo::new("basic-client", "wrong"),
        provider.token_url(),
    );
    let err = AuthMiddleware::new(wrong_secret)
        .access_token()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidClient {
                status: Some(401),
                ..
            }
        ),
        "{err:?}"
    );

    let bad_scope =
        ServiceAccountAuthorizer::new(client(OidcProvider::BASIC_CLIENT), provider.token_url())
            .with_resource(OidcProvider::API)
            .with_scopes(["admin:all"]);
    match AuthMiddleware::new(bad_scope)
        .access_token()
        .await
        .unwrap_err()
    {
        Error::Authorization { status, error, .. } => {
            assert_eq!((status, error.as_str()), (Some(400), "invalid_scope"));
        }
        other => panic!("{other:?}"),
    }

    let bad_resource =
        ServiceAccountAuthorizer::new(client(OidcProvider::BASIC_CLIENT), provider.token_url())
            .with_audience("https://not-registered.example.com");
    match AuthMiddleware::new(bad_resource)
        .access_token()
        .await
        .unwrap_err()
    {
        Error::Authorization {
            status,
            error,
            description,
            ..
        } => {
            assert_eq!((status, error.as_str()), (Some(400), "invalid_target"));
            assert!(description.is_some());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        provider.token_requests().await,
        3,
        "permanent errors are not retried"
    );
    assert_eq!(provider.tokens_issued().await, 0);
}

#[tokio::test]
async fn the_token_endpoint_is_found_by_discovery() {
    let provider = OidcProvider::start(600).await;
    let authorizer =
        ServiceAccountAuthorizer::discover(client(OidcProvider::BASIC_CLIENT), provider.issuer())
            .await
            .unwrap();
    assert_eq!(
        authorizer.token_url().await.unwrap().as_str(),
        provider.token_url()
    );
    let token = AuthMiddleware::new(authorizer.with_resource(OidcProvider::API))
        .access_token()
        .await
        .unwrap();
    assert!(
        verify(
            &jwks(&provider).await,
            &provider.issuer(),
            OidcProvider::API,
            &token
        )
        .is_ok()
    );

    // from_env with an issuer discovers on first use.
    let vars = HashMap::from([
        ("EN_AUTH_CLIENT_ID", "basic-client".to_string()),
        ("EN_AUTH_CLIENT_SECRET", "basic-secret".to_string()),
        ("EN_AUTH_ISSUER", provider.issuer()),
        ("EN_AUTH_AUDIENCE", OidcProvider::API.to_string()),
        ("EN_AUTH_SCOPES", "read:data,write:data".to_string()),
    ]);
    let from_env = ServiceAccountAuthorizer::from_lookup(|k| vars.get(k).cloned()).unwrap();
    let token = AuthMiddleware::new(from_env).access_token().await.unwrap();
    let claims = verify(
        &jwks(&provider).await,
        &provider.issuer(),
        OidcProvider::API,
        &token,
    )
    .unwrap();
    assert_eq!(claims.scope.as_deref(), Some("read:data write:data"));
}

/// An API on loopback that accepts only tokens signed by the provider for its audience.
struct JwtProtectedApi {
    server: LoopbackServer,
    accepted: Arc<AtomicU64>,
    rejected: Arc<AtomicU64>,
}

impl JwtProtectedApi {
    async fn start(provider: &OidcProvider) -> Self {
        let keys = Arc::new(jwks(provider).await);
        let issuer = provider.issuer();
        let (accepted, rejected) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (a, r) = (accepted.clone(), rejected.clone());
        let router = axum::Router::new().fallback(move |headers: HeaderMap| {
            let (keys, issuer, a, r) = (keys.clone(), issuer.clone(), a.clone(), r.clone());
            async move {
                let token = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("");
                match verify(&keys, &issuer, OidcProvider::API, token) {
                    Ok(_) => {
                        a.fetch_add(1, Ordering::SeqCst);
                        StatusCode::OK
                    }
                    Err(_) => {
                        r.fetch_add(1, Ordering::SeqCst);
                        StatusCode::UNAUTHORIZED
                    }
                }
            }
        });
        Self {
            server: LoopbackServer::start(router).await.unwrap(),
            accepted,
            rejected,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_token_per_lifetime() {
    const TTL: u64 = 6; // a burst must fit in half a lifetime, with room for a slow machine
    let provider = OidcProvider::start(TTL).await;
    let api = JwtProtectedApi::start(&provider).await;
    let auth = AuthMiddleware::new(
        ServiceAccountAuthorizer::new(client(OidcProvider::BASIC_CLIENT), provider.token_url())
            .with_audience(OidcProvider::API)
            .with_scopes(["read:data"]),
    );
    let http = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(auth.clone())
        .build();

    let burst = |n: usize| {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (http, url) = (http.clone(), api.server.url("/orders"));
            tasks.spawn(async move { http.get(url).send().await.map(|r| r.status().as_u16()) });
        }
        async move {
            let mut ok = 0;
            while let Some(status) = tasks.join_next().await {
                ok += usize::from(status.unwrap().unwrap() == 200);
            }
            ok
        }
    };

    assert_eq!(
        burst(500).await,
        500,
        "all 500 concurrent requests authorized"
    );
    assert_eq!(
        provider.tokens_issued().await,
        1,
        "the provider issued exactly one token"
    );

    // Two more lifetimes, a burst in each: one new token per lifetime.
    for lifetime in 2..=3 {
        tokio::time::sleep(Duration::from_millis(TTL * 1000 + 200)).await;
        assert_eq!(burst(500).await, 500);
        assert_eq!(
            provider.tokens_issued().await,
            lifetime,
            "one token per lifetime"
        );
    }
    assert_eq!(api.accepted.load(Ordering::SeqCst), 1500);
    assert_eq!(api.rejected.load(Ordering::SeqCst), 0);
    assert_eq!(provider.token_requests().await, 3);
}
