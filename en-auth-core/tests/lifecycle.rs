//! The token lifecycle through `AuthMiddleware`, against an identity provider that counts the
//! token requests it receives.
//!
//! Timing tests run on paused time against the in-process provider and API of
//! `support::sim` (a token's seconds pass in microseconds); tests of HTTP itself (replays,
//! redirects, bodies, timeouts, error mapping) run against the loopback servers of
//! `en-auth-testkit` on real time, and sleep nowhere.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use en_auth_core::{
    AccessToken, AuthMiddleware, ClientInfo, Error, LifecyclePolicy, MemoryTokenStore, RetryPolicy,
    TokenCache, TokenStore,
};
use en_auth_testkit::{Fault, IdpConfig};
use support::sim::{SimFault, SimRig};
use support::{Rig, TestAuthorizer, quick_policy};

/// Two separate 401 episodes in one test: no rejection interval.
fn two_rejections_allowed() -> LifecyclePolicy {
    LifecyclePolicy::default().with_rejection_interval(Duration::ZERO)
}

/// `n` concurrent GETs of `url`; their statuses.
async fn burst(client: &reqwest_middleware::ClientWithMiddleware, url: &str, n: usize) -> Vec<u16> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let client = client.clone();
        let url = url.to_owned();
        tasks.spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) });
    }
    let mut statuses = Vec::with_capacity(n);
    while let Some(result) = tasks.join_next().await {
        statuses.push(result.expect("task ran").expect("request completed"));
    }
    statuses
}

#[tokio::test(start_paused = true)]
async fn a_cold_burst_fetches_one_token_and_one_more_after_expiry() {
    let rig = SimRig::new(Some(Duration::from_secs(6)), LifecyclePolicy::default());
    let url = rig.api.url("/data");

    let statuses = burst(&rig.client, &url, 1000).await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "all 1000 requests authorized"
    );
    assert_eq!(
        rig.idp.token_requests(),
        1,
        "1000 concurrent cold requests -> 1 token request"
    );

    tokio::time::sleep(Duration::from_millis(6200)).await; // past the token's expiry
    let statuses = burst(&rig.client, &url, 1000).await;
    assert!(statuses.iter().all(|s| *s == 200));
    assert_eq!(
        rig.idp.token_requests(),
        2,
        "exactly one more token request after expiry"
    );
    assert_eq!(rig.auth.stats().refreshes, 1);
}

#[tokio::test(start_paused = true)]
async fn a_short_token_is_refreshed_ahead_of_expiry_but_still_used() {
    // A 4-second token: the 60 s gap is clamped to half its life, so it is used for ~2 s.
    let rig = SimRig::new(Some(Duration::from_secs(4)), LifecyclePolicy::default());
    assert_eq!(rig.get().await, 200);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(rig.get().await, 200);
    assert_eq!(
        rig.idp.token_requests(),
        1,
        "still within the first half of its life"
    );
    assert_eq!(rig.token_seen(0), rig.token_seen(1));

    tokio::time::sleep(Duration::from_millis(1500)).await; // 2.3 s: inside the clamped gap, not yet expired
    assert_eq!(rig.get().await, 200);
    assert_eq!(
        rig.token_seen(2),
        rig.token_seen(0),
        "stale but valid: served at once while the refresh runs"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rig.idp.token_requests(), 2, "refreshed ahead of expiry");
    assert_eq!(rig.get().await, 200);
    assert_ne!(
        rig.token_seen(3),
        rig.token_seen(0),
        "the request near expiry used the fresh token"
    );
}

#[tokio::test(start_paused = true)]
async fn the_expiration_gap_can_be_overridden_per_cache() {
    // A 1 s gap on a 4 s token: still fresh at 2.3 s, where the default gap (clamped to 2 s)
    // would already refresh it; stale at 3.1 s.
    let policy = LifecyclePolicy::default().with_expiration_gap(Duration::from_secs(1));
    let rig = SimRig::new(Some(Duration::from_secs(4)), policy);
    assert_eq!(rig.get().await, 200);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(rig.get().await, 200);
    assert_eq!(
        rig.idp.token_requests(),
        1,
        "the shorter gap keeps the token"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(rig.get().await, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rig.idp.token_requests(), 2, "refreshed within the 1 s gap");
}

#[tokio::test(start_paused = true)]
async fn a_token_without_expiry_uses_the_default_lifetime() {
    let policy = LifecyclePolicy::default().with_default_lifetime(Duration::from_secs(2));
    let rig = SimRig::new(None, policy);
    for _ in 0..5 {
        assert_eq!(rig.get().await, 200);
    }
    assert_eq!(rig.idp.token_requests(), 1, "not refetched on every call");
    let token = rig.auth.cache().get().await.unwrap();
    let lifetime = token.expires_at() - chrono::Utc::now();
    assert!(
        lifetime <= chrono::Duration::seconds(2) && lifetime > chrono::Duration::zero(),
        "{lifetime}"
    );

    tokio::time::sleep(Duration::from_millis(1200)).await; // past the default lifetime minus its clamped gap
    assert_eq!(rig.get().await, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rig.idp.token_requests(), 2, "not valid forever");
}

#[tokio::test]
async fn a_401_is_replayed_once_with_a_new_token() {
    let rig = Rig::start(Some(Duration::from_secs(3600)), LifecyclePolicy::default()).await;
    assert_eq!(rig.get().await, 200);
    rig.idp.revoke_all();

    assert_eq!(
        rig.get().await,
        200,
        "replayed with a new token after the 401"
    );
    let seen = rig.api.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!((seen[1].status, seen[2].status), (401, 200));
    assert_eq!(
        seen[1].token, seen[0].token,
        "the rejected request carried the old token"
    );
    assert_ne!(
        seen[2].token, seen[1].token,
        "the replay carried the new token"
    );
    assert_eq!(rig.idp.token_requests(), 2);
    assert_eq!(rig.auth.stats().replays, 1);
    assert_eq!(rig.auth.stats().invalidations, 1);
}

#[tokio::test]
async fn a_replayed_request_keeps_its_method_headers_and_timeout() {
    let rig = Rig::start(Some(Duration::from_secs(3600)), two_rejections_allowed()).await;
    rig.api.reject_next(1);
    let response = rig
        .client
        .delete(rig.api.url("/orders/7"))
        .header("x-request-id", "r-1")
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let seen = rig.api.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].method, "DELETE");
    assert_eq!(seen[1].path, "/orders/7");
    assert_eq!(seen[1].request_id.as_deref(), Some("r-1"));

    // The replay keeps the request's own timeout: a slow answer to it times out.
    rig.api.reject_next(1);
    let err = rig
        .client
        .get(rig.api.url("/slow"))
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(rig.api.requests(), 4, "rejected once, replayed once");
}

#[tokio::test]
async fn a_401_after_a_redirect_is_not_replayed_to_the_redirect_target() {
    let rig = Rig::start(Some(Duration::from_secs(3600)), LifecyclePolicy::default()).await;
    rig.api.reject_next(1);
    let response = rig.client.get(rig.api.url("/moved")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(rig.api.requests(), 2, "/moved, then /data; no replay");
    assert_eq!(
        rig.auth.stats().invalidations,
        1,
        "the token was still dropped"
    );
    // The next request uses a new token.
    assert_eq!(rig.get().await, 200);
    assert_eq!(rig.idp.token_requests(), 2);
}

#[tokio::test]
async fn a_second_401_is_returned_to_the_caller() {
    let rig = Rig::start(Some(Duration::from_secs(3600)), LifecyclePolicy::default()).await;
    rig.api.reject_next(2);
    assert_eq!(rig.get().await, 401);
    assert_eq!(rig.api.requests(), 2, "one replay, no more");
    assert_eq!(rig.idp.token_requests(), 2);
    assert_ne!(rig.token_seen(0), rig.token_seen(1));
}

#[tokio::test]
async fn a_streaming_body_is_not_replayed() {
    let rig = Rig::start(Some(Duration::from_secs(3600)), two_rejections_allowed()).await;
    rig.api.reject_next(1);
    let stream = futures_util::stream::iter([Ok::<_, std::io::Error>("chunk")]);
    let response = rig
        .client
        .post(rig.api.url("/upload"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(rig.api.requests(), 1, "not replayed");

    // A buffered body is replayed and arrives intact.
    rig.api.reject_next(1);
    let response = rig
        .client
        .post(rig.api.url("/echo"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.text().await.unwrap(), "hello");
    assert_eq!(rig.api.requests(), 3);
}

#[tokio::test]
async fn concurrent_401s_for_one_token_cause_one_fetch() {
    let rig = Rig::start(Some(Duration::from_secs(3600)), LifecyclePolicy::default()).await;
    assert_eq!(rig.get().await, 200);
    rig.idp.revoke_all();
    let statuses = burst(&rig.client, &rig.api.url("/data"), 50).await;
    assert!(statuses.iter().all(|s| *s == 200));
    assert_eq!(
        rig.idp.token_requests(),
        2,
        "one invalidation, one new token"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failure_is_remembered_until_its_backoff_ends() {
    let policy = quick_policy()
        .with_retry(RetryPolicy::none())
        .with_failure_cooldown(Duration::from_millis(300));
    let rig = SimRig::new(Some(Duration::from_secs(3600)), policy);
    rig.idp.push_faults([SimFault::Status(500)]);
    let err = rig.auth.access_token().await.unwrap_err();
    assert!(
        matches!(err, Error::ServerError { status: 500, .. }),
        "{err:?}"
    );
    let again = rig.auth.access_token().await.unwrap_err();
    assert!(matches!(again, Error::ServerError { status: 500, .. }));
    assert_eq!(rig.idp.token_requests(), 1, "remembered, not re-asked");
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(
        rig.auth.access_token().await.is_ok(),
        "after the backoff the next call tries again"
    );
    assert_eq!(rig.idp.token_requests(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_still_valid_token_is_served_while_refresh_fails() {
    let policy = quick_policy().with_retry(RetryPolicy::none());
    let rig = SimRig::new(Some(Duration::from_secs(4)), policy);
    assert_eq!(rig.get().await, 200);
    tokio::time::sleep(Duration::from_millis(2300)).await; // stale, not expired
    rig.idp.push_faults([SimFault::Status(503)]);
    assert_eq!(rig.get().await, 200, "served the old token");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rig.token_seen(1), rig.token_seen(0));
    assert_eq!(rig.idp.token_requests(), 2, "a refresh was attempted");
    assert_eq!(rig.auth.stats().failures, 1);
    // During the backoff the provider is not asked again.
    assert_eq!(rig.get().await, 200);
    assert_eq!(rig.idp.token_requests(), 2);
    // After it, the refresh is retried and succeeds.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(rig.get().await, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rig.idp.token_requests(), 3);
    assert_eq!(rig.get().await, 200);
    assert_ne!(rig.token_seen(4), rig.token_seen(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_that_always_answers_401_costs_a_constant_number_of_token_requests() {
    let rig = Rig::start(Some(Duration::from_secs(3600)), LifecyclePolicy::default()).await;
    let healthy = en_auth_testkit::ProtectedApi::start(&rig.idp)
        .await
        .unwrap();
    let broken = en_auth_testkit::ProtectedApi::start(&rig.idp)
        .await
        .unwrap();
    broken.reject_next(u64::MAX);
    for _ in 0..200 {
        let status = rig
            .client
            .get(broken.url("/data"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 401);
    }
    let token_requests = rig.idp.token_requests();
    assert!(token_requests <= 3, "token requests: {token_requests}");
    assert_eq!(
        rig.auth.stats().invalidations,
        1,
        "one forced refresh per interval"
    );
    assert!(rig.auth.stats().rejections_absorbed >= 198);
    assert!(
        broken.requests() <= 202,
        "at most one replay: {}",
        broken.requests()
    );
    for _ in 0..20 {
        let status = rig
            .client
            .get(healthy.url("/data"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 200, "the healthy API keeps working");
    }
    assert_eq!(rig.idp.token_requests(), token_requests);
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_and_retry_after_is_waited_out() {
    let rig = SimRig::new(Some(Duration::from_secs(3600)), quick_policy());
    rig.idp
        .push_faults([SimFault::RateLimited(1), SimFault::Status(503)]);
    let started = tokio::time::Instant::now();
    assert_eq!(rig.get().await, 200);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited out Retry-After: {:?}",
        started.elapsed()
    );
    assert_eq!(rig.idp.token_requests(), 3, "429, 503, then success");
}

#[tokio::test]
async fn permanent_errors_fail_fast() {
    let rig = Rig::start_with(
        IdpConfig::default(),
        |info| ClientInfo::new(info.client_id(), "wrong-secret"),
        LifecyclePolicy::default(),
    )
    .await;
    let started = Instant::now();
    let err = rig.auth.access_token().await.unwrap_err();
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
    assert_eq!(rig.idp.token_requests(), 1, "not retried");
    assert!(started.elapsed() < Duration::from_secs(1));
    // Through the client, the error surfaces as a middleware error.
    let err = rig
        .client
        .get(rig.api.url("/data"))
        .send()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid client"), "{err}");
    assert_eq!(rig.api.requests(), 0, "nothing sent without a token");
}

#[tokio::test]
async fn the_api_key_is_sent_only_when_configured() {
    let with_key = Rig::start_with(
        IdpConfig::default(),
        |i| i.with_api_key("key-123"),
        LifecyclePolicy::default(),
    )
    .await;
    assert_eq!(with_key.get().await, 200);
    assert_eq!(with_key.api.seen()[0].api_key.as_deref(), Some("key-123"));

    let without = Rig::start(Some(Duration::from_secs(60)), LifecyclePolicy::default()).await;
    assert_eq!(without.get().await, 200);
    assert_eq!(without.api.seen()[0].api_key, None);

    let empty = Rig::start_with(
        IdpConfig::default(),
        |i| i.with_api_key(""),
        LifecyclePolicy::default(),
    )
    .await;
    assert_eq!(empty.get().await, 200);
    assert_eq!(empty.api.seen()[0].api_key, None, "an empty key is no key");
}

#[tokio::test]
async fn caches_sharing_a_store_share_one_token() {
    let rig = Rig::start(Some(Duration::from_secs(3600)), LifecyclePolicy::default()).await;
    let store: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::new());
    let make = || {
        let info = ClientInfo::new(rig.idp.client_id(), rig.idp.client_secret());
        AuthMiddleware::from_cache(
            TokenCache::builder(TestAuthorizer::new(info, rig.idp.token_url()))
                .store(Arc::clone(&store))
                .build(),
        )
    };
    let (a, b) = (make(), make());
    let ta = a.access_token().await.unwrap();
    let tb = b.access_token().await.unwrap();
    assert_eq!(ta, tb);
    assert_eq!(rig.idp.token_requests(), 1);
    assert_eq!(b.stats().store_hits, 1);

    // A token rejected through one cache is removed from the store, so the other does not
    // pick it up again.
    let rejected = a.cache().get().await.unwrap();
    assert!(a.cache().invalidate(&rejected).await);
    assert!(rejected.is_rejected());
    // A rejected token is not served: `get` waits for its replacement.
    let new_a = a.cache().get().await.unwrap();
    assert_ne!(new_a.token().access_token(), ta);
    assert_eq!(
        a.access_token().await.unwrap(),
        new_a.token().access_token()
    );
    assert_eq!(
        rig.idp.token_requests(),
        2,
        "not the rejected token from the store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_while_the_provider_is_down_does_not_take_the_other_apis_down() {
    let policy = quick_policy().with_retry(RetryPolicy::none());
    let rig = Rig::start(Some(Duration::from_secs(3600)), policy).await;
    let broken = en_auth_testkit::ProtectedApi::start(&rig.idp)
        .await
        .unwrap();
    assert_eq!(rig.get().await, 200);
    // The provider goes down, then an API rejects the token.
    rig.idp.push_faults((0..20).map(|_| Fault::json(503, "{}")));
    broken.reject_next(1);
    let status = rig
        .client
        .get(broken.url("/x"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 401, "no replacement: the 401 is returned");
    for _ in 0..20 {
        assert_eq!(rig.get().await, 200, "the healthy API keeps its token");
    }
    assert!(
        rig.idp.token_requests() <= 3,
        "{}",
        rig.idp.token_requests()
    );
}

#[tokio::test]
async fn a_transport_failure_is_a_transient_typed_error() {
    // Nothing listens on this port once the listener is dropped.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let auth = AuthMiddleware::with_policy(
        TestAuthorizer::new(
            ClientInfo::new("id", "secret"),
            format!("http://127.0.0.1:{port}/token"),
        ),
        LifecyclePolicy::default().with_retry(RetryPolicy::none()),
    );
    let err = auth.access_token().await.unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
    assert!(err.is_transient());
}

/// After an API rejected the token while the provider hangs, the other APIs keep being
/// served at once: every later attempt to replace the token runs in the background, not in
/// front of every request each time the backoff ends.
#[tokio::test(start_paused = true)]
async fn a_401_while_the_provider_hangs_does_not_stall_the_other_apis() {
    let policy = quick_policy()
        .with_retry(RetryPolicy::none().with_max_elapsed(Duration::from_secs(3)))
        .with_failure_cooldown(Duration::from_millis(200))
        .with_max_failure_backoff(Duration::from_millis(400));
    let rig = SimRig::new(Some(Duration::from_secs(3600)), policy);
    let broken = rig.another_api();
    assert_eq!(rig.get().await, 200);
    // The provider hangs (each attempt is cut off after 3 s), then an API rejects the token.
    rig.idp
        .push_faults((0..50).map(|_| SimFault::Delay(Duration::from_secs(60))));
    broken.reject_next(1);
    let status = rig.get_url(&broken.url("/x")).await;
    assert_eq!(status, 401, "no replacement: the 401 is returned");
    // Across several ends of the backoff, each request to the healthy API is answered
    // without waiting for the hanging provider.
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut served = 0;
    while tokio::time::Instant::now() < until {
        let status = tokio::time::timeout(Duration::from_millis(1500), rig.get())
            .await
            .expect("a request waited for the hanging provider");
        assert_eq!(status, 200);
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served >= 20, "{served}");
    assert!(
        rig.idp.token_requests() >= 2,
        "replacement attempts went on"
    );
}
