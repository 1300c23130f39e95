//! DPoP (RFC 9449) end to end: DPoP-bound tokens from panva's `oidc-provider` (with
//! `features.dPoP`), sent by an en-auth client (`with_dpop()` + `AuthMiddleware`) to an axum
//! API behind `RequireAuth::dpop()`; what the API refuses; server nonces from the token
//! endpoint and from the API, each answered with exactly one retry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::Request;
use axum::middleware::{Next, from_fn};
use axum::routing::get;
use base64::Engine;
use en_auth_core::{AuthMiddleware, ClientInfo};
use en_auth_oauth2::{DpopKey, ServiceAccountAuthorizer};
use en_auth_testkit::{LoopbackServer, OidcProvider};
use en_auth_verify::{Authenticated, DpopVerifier, RequireAuth, Verifier};

fn authorizer(provider: &OidcProvider, client: (&str, &str)) -> ServiceAccountAuthorizer {
    ServiceAccountAuthorizer::new(ClientInfo::new(client.0, client.1), provider.token_url())
        .with_audience(OidcProvider::API)
        .with_scopes(["read:data"])
}

/// An API whose `/orders` requires DPoP-bound tokens; counts every request it receives
/// (refused ones included).
struct Api {
    server: LoopbackServer,
    requests: Arc<AtomicU64>,
}

impl Api {
    async fn start(provider: &OidcProvider, dpop: DpopVerifier) -> Self {
        let verifier = Verifier::oidc(provider.issuer(), OidcProvider::API);
        let requests = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&requests);
        let app = Router::new()
            .route(
                "/orders",
                get(orders)
                    .post(orders)
                    .layer(RequireAuth::new(verifier).dpop_with(dpop)),
            )
            .layer(from_fn(move |request: Request, next: Next| {
                counter.fetch_add(1, Ordering::SeqCst);
                next.run(request)
            }));
        Self {
            server: LoopbackServer::start(app).await.expect("api starts"),
            requests,
        }
    }

    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn orders(claims: Authenticated) -> String {
    format!("orders for {}", claims.client_id.as_deref().unwrap_or("?"))
}

fn claims_of(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("json")
}

/// Sends `GET url` with the given `Authorization` and optional `DPoP` header; the status.
async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    authorization: &str,
    proof: Option<&str>,
) -> (u16, String) {
    let mut request = http
        .request(method, url)
        .header("authorization", authorization);
    if let Some(proof) = proof {
        request = request.header("dpop", proof);
    }
    let response = request.send().await.expect("api answers");
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (response.status().as_u16(), challenge)
}

#[tokio::test]
async fn a_dpop_bound_token_is_accepted_with_its_proof_and_refused_otherwise() {
    let provider = OidcProvider::start(600).await;
    let key = DpopKey::generate().unwrap();
    let sa = authorizer(&provider, OidcProvider::DPOP_CLIENT).with_dpop_key(key.clone());
    assert_eq!(sa.dpop_thumbprint(), Some(key.thumbprint()));
    let api = Api::start(&provider, DpopVerifier::new()).await;
    let auth = AuthMiddleware::new(sa);
    let client = auth.client().unwrap();

    // Through the middleware: `Authorization: DPoP …` and a fresh proof per request.
    for _ in 0..3 {
        let response = client.get(api.url("/orders?page=2")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "orders for dpop-client");
    }
    assert_eq!(api.requests(), 3, "no retries: every proof was fresh");
    assert_eq!(provider.tokens_issued().await, 1);

    // The token is bound to our key: the provider put its thumbprint in cnf.jkt.
    let token = auth.access_token().await.unwrap();
    assert_eq!(claims_of(&token)["cnf"]["jkt"], key.thumbprint());

    let http = reqwest::Client::new();
    let url = api.url("/orders");
    let dpop = format!("DPoP {token}");
    let valid = || key.proof("GET", &url, Some(&token), None).unwrap();

    // A proof made by hand with the right key is accepted — once.
    let proof = valid();
    let ok = send(&http, reqwest::Method::GET, &url, &dpop, Some(&proof)).await;
    assert_eq!(ok.0, 200, "{ok:?}");
    let replayed = send(&http, reqwest::Method::GET, &url, &dpop, Some(&proof)).await;
    assert_eq!(replayed.0, 401, "a replayed jti is refused");
    assert!(replayed.1.contains("invalid_dpop_proof"), "{replayed:?}");

    // The bound token as a plain bearer token, even with a valid proof.
    let bearer = send(
        &http,
        reqwest::Method::GET,
        &url,
        &format!("Bearer {token}"),
        Some(&valid()),
    )
    .await;
    assert_eq!(bearer.0, 401, "{bearer:?}");
    assert!(bearer.1.contains("invalid_token"), "{bearer:?}");

    // A proof for another method, for another URL, by another key, for another token, none.
    let post_proof = key.proof("POST", &url, Some(&token), None).unwrap();
    let other_url = key
        .proof("GET", &api.url("/admin"), Some(&token), None)
        .unwrap();
    let other_key = DpopKey::generate()
        .unwrap()
        .proof("GET", &url, Some(&token), None)
        .unwrap();
    let other_token = key.proof("GET", &url, Some("another"), None).unwrap();
    for (what, proof) in [
        ("another method", Some(post_proof.as_str())),
        ("another URL", Some(other_url.as_str())),
        ("another key", Some(other_key.as_str())),
        ("another token", Some(other_token.as_str())),
        ("no proof", None),
    ] {
        let refused = send(&http, reqwest::Method::GET, &url, &dpop, proof).await;
        assert_eq!(refused.0, 401, "{what}: {refused:?}");
        assert!(refused.1.starts_with("DPoP "), "{what}: {refused:?}");
    }
    // The query does not count towards htu; the same proof works with one.
    let with_query = send(
        &http,
        reqwest::Method::GET,
        &format!("{url}?x=1"),
        &dpop,
        Some(&valid()),
    )
    .await;
    assert_eq!(with_query.0, 200, "{with_query:?}");
    assert_eq!(provider.tokens_issued().await, 1, "no new token was needed");
}

#[tokio::test]
async fn a_token_endpoint_nonce_challenge_is_answered_with_one_retry() {
    let provider = OidcProvider::start(600).await;
    let sa = authorizer(&provider, OidcProvider::DPOP_NONCE_CLIENT).with_dpop();
    let jkt = sa.dpop_thumbprint().unwrap().to_owned();
    let auth = AuthMiddleware::new(sa);
    let token = auth.access_token().await.unwrap();
    assert_eq!(claims_of(&token)["cnf"]["jkt"], jkt.as_str());
    assert_eq!(
        provider.token_requests().await,
        2,
        "one request refused with use_dpop_nonce, one retry with the nonce"
    );
    assert_eq!(provider.tokens_issued().await, 1);
}

#[tokio::test]
async fn an_api_nonce_challenge_is_answered_with_one_retry_and_the_nonce_remembered() {
    let provider = OidcProvider::start(600).await;
    let api = Api::start(&provider, DpopVerifier::new().with_nonce("api-nonce-1")).await;
    let sa = authorizer(&provider, OidcProvider::DPOP_CLIENT).with_dpop();
    let client = AuthMiddleware::new(sa).client().unwrap();

    let response = client.get(api.url("/orders")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(api.requests(), 2, "challenged once, retried once");
    let response = client.post(api.url("/orders")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(api.requests(), 3, "the nonce was remembered for the origin");
    assert_eq!(
        provider.tokens_issued().await,
        1,
        "the retry kept the token: a nonce challenge is not a rejected token"
    );

    // A server that asks for a new nonce every time gets exactly one retry, never a loop.
    let asked = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&asked);
    let always = Router::new().route(
        "/always",
        get(move || {
            let n = count.fetch_add(1, Ordering::SeqCst);
            async move {
                (
                    axum::http::StatusCode::UNAUTHORIZED,
                    [
                        (
                            "www-authenticate",
                            "DPoP error=\"use_dpop_nonce\"".to_owned(),
                        ),
                        ("dpop-nonce", format!("nonce-{n}")),
                    ],
                )
            }
        }),
    );
    let always = LoopbackServer::start(always).await.unwrap();
    let response = client.get(always.url("/always")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(asked.load(Ordering::SeqCst), 2, "one retry, then the 401");
    assert_eq!(
        provider.tokens_issued().await,
        1,
        "a nonce challenge keeps the token"
    );
}
