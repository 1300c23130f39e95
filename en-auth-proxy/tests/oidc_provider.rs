//! The proxy in front of panva's `oidc-provider` (a certified OpenID provider) as upstream.

mod support;

use std::collections::HashSet;
use std::sync::Arc;

use en_auth_core::MemoryTokenStore;
use en_auth_proxy::{ClientConfig, Proxy, ProxyConfig, UpstreamAuth};
use en_auth_testkit::OidcProvider;
use en_auth_verify::Verifier;
use futures_util::StreamExt;
use futures_util::future::join_all;
use serde_json::json;
use support::{Running, sample};

const API: &str = OidcProvider::API;
const ORDERS: &str = "https://orders.example.com";

fn config(provider: &OidcProvider) -> ProxyConfig {
    let mut config = ProxyConfig::new(provider.token_url());
    config.clients.insert(
        OidcProvider::BASIC_CLIENT.0.into(),
        ClientConfig {
            upstream_auth: Some(UpstreamAuth::ClientSecretBasic),
            ..ClientConfig::default()
        },
    );
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_customers_twenty_requests_each_make_one_upstream_request_per_key() {
    let provider = OidcProvider::start(3600).await;
    let proxy = Running::start(config(&provider)).await;
    let before = provider.token_requests().await;

    let requests = (1..=OidcProvider::CUSTOMERS).flat_map(|n| {
        let proxy = &proxy;
        (0..20).map(move |i| async move {
            let (id, secret) = OidcProvider::customer(n);
            // Half the requests name the scopes in another order: the same key.
            let scope = if i % 2 == 0 {
                "read:data write:data"
            } else {
                "write:data read:data"
            };
            let answer = proxy
                .post_token(&id, &secret, &[("audience", API), ("scope", scope)])
                .await;
            (n, answer.token().to_owned())
        })
    });
    // 250 in flight at a time (each customer's 20 together), within any file-descriptor limit.
    let answers: Vec<_> = futures_util::stream::iter(requests)
        .buffer_unordered(250)
        .collect()
        .await;

    assert_eq!(
        provider.token_requests().await - before,
        OidcProvider::CUSTOMERS as u64,
        "one upstream request per customer"
    );
    let verifier = Verifier::oidc(provider.issuer(), API);
    let mut per_customer: Vec<HashSet<String>> = vec![HashSet::new(); OidcProvider::CUSTOMERS + 1];
    for (n, token) in &answers {
        per_customer[*n].insert(token.clone());
    }
    for (n, tokens) in per_customer.iter().enumerate().skip(1) {
        assert_eq!(tokens.len(), 1, "customer {n} got one token");
        let token = tokens.iter().next().unwrap();
        let claims = verifier.verify(token).await.expect("token verifies");
        assert_eq!(
            claims.client_id.as_deref(),
            Some(OidcProvider::customer(n).0.as_str())
        );
        assert!(claims.has_scope("read:data") && claims.has_scope("write:data"));
    }

    let snapshot = proxy.proxy.metrics().snapshot();
    assert_eq!(snapshot.token_requests, 1000);
    assert_eq!(snapshot.upstream_requests, 50);
    assert_eq!(snapshot.cache_hits + snapshot.cache_misses, 1000);
    let text = proxy.metrics_text().await;
    assert_eq!(
        sample(
            &text,
            "en_auth_proxy_token_requests_total{client_id=\"customer-7\"}"
        ),
        Some(20.0)
    );
    assert_eq!(
        sample(&text, "en_auth_proxy_upstream_requests_total"),
        Some(50.0)
    );
    assert_eq!(
        sample(&text, "en_auth_proxy_cache_hits_total"),
        Some(snapshot.cache_hits as f64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_scopes_and_audiences_get_separate_tokens() {
    let provider = OidcProvider::start(3600).await;
    let proxy = Running::start(config(&provider)).await;
    let (id, secret) = OidcProvider::customer(1);
    let before = provider.token_requests().await;
    let shapes: [&[(&str, &str)]; 4] = [
        &[("audience", API), ("scope", "read:data")],
        &[("audience", API), ("scope", "read:data write:data")],
        &[("audience", ORDERS), ("scope", "read:data")],
        &[("resource", ORDERS), ("scope", "read:data")],
    ];
    let mut tokens = Vec::new();
    for _ in 0..3 {
        for shape in shapes {
            tokens.push(
                proxy
                    .post_token(&id, &secret, shape)
                    .await
                    .token()
                    .to_owned(),
            );
        }
    }
    let distinct: HashSet<_> = tokens.iter().collect();
    assert_eq!(distinct.len(), 4, "one token per shape, reused");
    assert_eq!(provider.token_requests().await - before, 4);
    let orders = Verifier::oidc(provider.issuer(), ORDERS);
    let claims = orders.verify(&tokens[2]).await.expect("orders token");
    assert!(claims.has_scope("read:data") && !claims.has_scope("write:data"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_post_and_m2mauth_answer_in_the_upstream_format() {
    let provider = OidcProvider::start(600).await;
    let proxy = Running::start(config(&provider)).await;

    let (id, secret) = OidcProvider::BASIC_CLIENT;
    let basic = proxy
        .basic_token(id, secret, &[("audience", API), ("scope", "read:data")])
        .await;
    basic.token();
    assert_eq!(basic.header("cache-control"), Some("no-store"));
    assert_eq!(basic.header("pragma"), Some("no-cache"));
    assert_eq!(basic.json["token_type"], "Bearer");
    assert_eq!(basic.json["scope"], "read:data");
    let expires_in = basic.json["expires_in"].as_i64().unwrap();
    assert!((590..=600).contains(&expires_in), "{expires_in}");

    let (id, secret) = OidcProvider::POST_CLIENT;
    let post = proxy
        .post_token(id, secret, &[("audience", API), ("scope", "write:data")])
        .await;
    let claims = Verifier::oidc(provider.issuer(), API)
        .verify(post.token())
        .await
        .unwrap();
    assert_eq!(claims.client_id.as_deref(), Some(id));

    let (id, secret) = OidcProvider::customer(3);
    let m2m = proxy
        .m2mauth(json!({"clientId": id, "clientSecret": secret,
                        "permissions": "read:data write:data", "audience": API}))
        .await;
    let claims = Verifier::oidc(provider.issuer(), API)
        .verify(m2m.token())
        .await
        .unwrap();
    assert_eq!(claims.client_id.as_deref(), Some(id.as_str()));
    assert!(claims.has_scope("write:data"));
    assert_eq!(m2m.header("cache-control"), Some("no-store"));

    // The same customer and shape through the form endpoint: the cached token.
    let again = proxy
        .post_token(
            &id,
            &secret,
            &[("audience", API), ("scope", "write:data read:data")],
        )
        .await;
    assert_eq!(again.token(), m2m.token());

    // An upstream refusal of the request itself is relayed as is.
    let refused = proxy
        .post_token(&id, &secret, &[("audience", API), ("scope", "admin:all")])
        .await;
    assert_eq!((refused.status, refused.error()), (400, "invalid_scope"));
    let refused = proxy
        .post_token(&id, &secret, &[("audience", "https://unknown.example.com")])
        .await;
    assert_eq!((refused.status, refused.error()), (400, "invalid_target"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_never_gets_the_cached_token_and_its_refusal_is_remembered() {
    let provider = OidcProvider::start(3600).await;
    let proxy = Running::start(config(&provider)).await;
    let (id, secret) = OidcProvider::customer(9);
    let shape = [("audience", API), ("scope", "read:data")];
    let good = proxy.post_token(&id, &secret, &shape).await;
    let token = good.token().to_owned();
    let before = provider.token_requests().await;

    let wrong = proxy.post_token(&id, "not-the-secret", &shape).await;
    assert_eq!((wrong.status, wrong.error()), (401, "invalid_client"));
    assert!(wrong.json.get("access_token").is_none());
    assert!(wrong.header("www-authenticate").is_some());
    assert_eq!(
        provider.token_requests().await - before,
        1,
        "a wrong secret is checked upstream"
    );

    for _ in 0..5 {
        let again = proxy.post_token(&id, "not-the-secret", &shape).await;
        assert_eq!((again.status, again.error()), (401, "invalid_client"));
        // Basic authentication with the same wrong secret: the same remembered refusal.
        let basic = proxy.basic_token(&id, "not-the-secret", &shape).await;
        assert_eq!((basic.status, basic.error()), (401, "invalid_client"));
    }
    assert_eq!(
        provider.token_requests().await - before,
        1,
        "repeats within the refusal window stay local"
    );

    // A secret that is a prefix or extension of the right one is just as wrong.
    let prefix = proxy
        .post_token(&id, &secret[..secret.len() - 1], &shape)
        .await;
    assert_eq!(prefix.error(), "invalid_client");
    let longer = proxy.post_token(&id, &format!("{secret}x"), &shape).await;
    assert_eq!(longer.error(), "invalid_client");

    // The rightful owner still gets the cached token, without an upstream request.
    let requests = provider.token_requests().await;
    assert_eq!(proxy.post_token(&id, &secret, &shape).await.token(), token);
    assert_eq!(provider.token_requests().await, requests);
    let text = proxy.metrics_text().await;
    assert!(sample(&text, "en_auth_proxy_refused_locally_total").unwrap() >= 10.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_sharing_a_store_make_one_upstream_request_per_key() {
    let provider = OidcProvider::start(3600).await;
    let store = Arc::new(MemoryTokenStore::new());
    let a = Running::start_proxy(
        Proxy::builder(config(&provider))
            .store(store.clone())
            .build()
            .unwrap(),
    )
    .await;
    let b = Running::start_proxy(
        Proxy::builder(config(&provider))
            .store(store)
            .build()
            .unwrap(),
    )
    .await;
    let before = provider.token_requests().await;
    let shape = [("audience", API), ("scope", "read:data")];
    let calls = (1..=5).flat_map(|n| {
        let (a, b) = (&a, &b);
        (0..10).map(move |i| async move {
            let (id, secret) = OidcProvider::customer(n);
            let proxy = if i % 2 == 0 { a } else { b };
            (
                n,
                proxy
                    .post_token(&id, &secret, &shape)
                    .await
                    .token()
                    .to_owned(),
            )
        })
    });
    let answers = join_all(calls).await;
    assert_eq!(provider.token_requests().await - before, 5);
    for n in 1..=5 {
        let tokens: HashSet<_> = answers
            .iter()
            .filter(|(m, _)| *m == n)
            .map(|(_, t)| t)
            .collect();
        assert_eq!(
            tokens.len(),
            1,
            "both instances hand out one token for customer {n}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_endpoint_is_found_by_discovery_from_the_issuer() {
    let provider = OidcProvider::start(3600).await;
    let config = ProxyConfig {
        issuer: Some(provider.issuer()),
        ..ProxyConfig::default()
    };
    let proxy = Running::start(config).await;
    let health = proxy.http.get(proxy.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let (id, secret) = OidcProvider::customer(2);
    let answer = proxy.post_token(&id, &secret, &[("audience", API)]).await;
    Verifier::oidc(provider.issuer(), API)
        .verify(answer.token())
        .await
        .expect("verifies");
}
