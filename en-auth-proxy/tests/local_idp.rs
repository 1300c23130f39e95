//! The proxy against the testkit's `LocalIdp`, for what a real provider will not do on
//! demand: rate-limit headers, 429s, slow answers. Also form errors, quotas, secrets in
//! logs, graceful shutdown and the binary.

mod support;

use std::time::Duration;

use en_auth_proxy::{ClientConfig, Proxy, ProxyConfig, QuotaMode};
use en_auth_testkit::{Fault, IdpConfig, LocalIdp};
use serde_json::json;
use support::{Answer, Running, free_port, sample, start_binary};

const SECRET: &str = "s3cr3t-never-logged-7f2c";

async fn idp() -> LocalIdp {
    LocalIdp::start(IdpConfig {
        client_id: "acme".into(),
        client_secret: SECRET.into(),
        lifetime: Some(Duration::from_secs(3600)),
    })
    .await
    .unwrap()
}

fn aud(audience: &str) -> [(&str, &str); 1] {
    [("audience", audience)]
}

fn epoch_in(secs: i64) -> String {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + secs)
        .to_string()
}

#[tokio::test]
async fn form_errors_are_rfc6749_errors_and_never_reach_upstream() {
    let idp = idp().await;
    let proxy = Running::start(ProxyConfig::new(idp.token_url())).await;
    let post = |body: &'static str| {
        let proxy = &proxy;
        async move {
            Answer::read(
                proxy
                    .http
                    .post(proxy.url("/oauth/token"))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    let cases = [
        ("client_id=acme&client_secret=x", 400, "invalid_request"),
        (
            "grant_type=password&client_id=acme&client_secret=x",
            400,
            "unsupported_grant_type",
        ),
        ("grant_type=client_credentials", 401, "invalid_client"),
        (
            "grant_type=client_credentials&grant_type=client_credentials&client_id=a&client_secret=b",
            400,
            "invalid_request",
        ),
        (
            "grant_type=client_credentials&client_id=acme&client_secret=x&scope=a%22b",
            400,
            "invalid_scope",
        ),
    ];
    for (body, status, error) in cases {
        let answer = post(body).await;
        assert_eq!((answer.status, answer.error()), (status, error), "{body}");
        assert_eq!(answer.header("cache-control"), Some("no-store"), "{body}");
        assert!(answer.json["error_description"].is_string(), "{body}");
    }
    // Oversized body.
    let big = format!(
        "grant_type=client_credentials&client_id=acme&client_secret=x&scope={}",
        "a".repeat(64 * 1024)
    );
    let answer = Answer::read(
        proxy
            .http
            .post(proxy.url("/oauth/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(big)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((answer.status, answer.error()), (413, "invalid_request"));
    // Neither a form nor JSON.
    let answer = Answer::read(
        proxy
            .http
            .post(proxy.url("/oauth/token"))
            .header("content-type", "text/plain")
            .body("grant_type=client_credentials&client_id=acme&client_secret=x")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((answer.status, answer.error()), (400, "invalid_request"));
    // Both Basic and client_secret.
    let answer = Answer::read(
        proxy
            .http
            .post(proxy.url("/oauth/token"))
            .basic_auth("acme", Some(SECRET))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_secret", SECRET),
            ])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((answer.status, answer.error()), (400, "invalid_request"));
    // /m2mauth garbage and missing fields.
    let answer = Answer::read(
        proxy
            .http
            .post(proxy.url("/m2mauth"))
            .body("{not json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((answer.status, answer.error()), (400, "invalid_request"));
    let answer = proxy.m2mauth(json!({"clientId": "acme"})).await;
    assert_eq!((answer.status, answer.error()), (400, "invalid_request"));
    assert_eq!(idp.token_requests(), 0);
}

#[tokio::test]
async fn upstream_429_throttles_uncached_callers_while_cached_tokens_keep_serving() {
    let idp = idp().await;
    let proxy = Running::start(ProxyConfig::new(idp.token_url())).await;
    let cached = proxy.post_token("acme", SECRET, &aud("a")).await;
    let cached_token = cached.token().to_owned();
    idp.push_faults([Fault::Respond {
        status: 429,
        headers: vec![
            ("retry-after".into(), "30".into()),
            ("x-ratelimit-limit".into(), "30".into()),
            ("x-ratelimit-remaining".into(), "0".into()),
            ("x-ratelimit-reset".into(), epoch_in(30)),
        ],
        body:
            r#"{"error":"too_many_requests","error_description":"Global limit has been reached"}"#
                .into(),
    }]);
    let throttled = proxy.post_token("acme", SECRET, &aud("b")).await;
    assert_eq!(
        (throttled.status, throttled.error()),
        (429, "too_many_requests")
    );
    let wait = throttled.retry_after().expect("Retry-After");
    assert!((25..=31).contains(&wait), "{wait}");
    assert_eq!(idp.token_requests(), 2);

    // Other keys, and the same one again: refused locally until the reset.
    for audience in ["b", "c", "d", "e"] {
        let answer = proxy.post_token("acme", SECRET, &aud(audience)).await;
        assert_eq!(answer.status, 429, "{audience}");
        assert!(answer.retry_after().is_some_and(|s| s >= 1));
    }
    let m2m = proxy
        .m2mauth(json!({"clientId": "acme", "clientSecret": SECRET, "audience": "f"}))
        .await;
    assert_eq!(m2m.status, 429);
    assert_eq!(idp.token_requests(), 2, "no upstream call until the reset");

    // The cached token keeps being served.
    for _ in 0..5 {
        assert_eq!(
            proxy.post_token("acme", SECRET, &aud("a")).await.token(),
            cached_token
        );
    }
    let text = proxy.metrics_text().await;
    assert_eq!(sample(&text, "en_auth_proxy_throttled_total"), Some(6.0));
    assert_eq!(
        sample(&text, "en_auth_proxy_upstream_ratelimit_remaining"),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "en_auth_proxy_upstream_requests_total"),
        Some(2.0)
    );
}

#[tokio::test]
async fn a_spent_client_quota_at_auth0_stops_that_client_only() {
    let idp = idp().await;
    let proxy = Running::start(ProxyConfig::new(idp.token_url())).await;
    idp.push_faults([Fault::Respond {
        status: 200,
        headers: vec![(
            "auth0-client-quota-limit".into(),
            "b=per_hour;q=2;r=0;t=1800,b=per_day;q=100;r=50;t=80000".into(),
        )],
        body: r#"{"access_token":"quota-tok","token_type":"Bearer","expires_in":3600}"#.into(),
    }]);
    assert_eq!(
        proxy.post_token("acme", SECRET, &aud("a")).await.token(),
        "quota-tok"
    );
    let refused = proxy.post_token("acme", SECRET, &aud("b")).await;
    assert_eq!(refused.status, 429);
    assert!(refused.retry_after().unwrap() > 1700);
    assert_eq!(idp.token_requests(), 1);
    assert_eq!(
        proxy.post_token("acme", SECRET, &aud("a")).await.token(),
        "quota-tok"
    );
}

#[tokio::test(start_paused = true)]
async fn low_remaining_budget_goes_to_cache_misses_before_refreshes() {
    let idp = idp().await;
    let mut config = ProxyConfig::new(idp.token_url());
    config.upstream_reserve = 5;
    let proxy = Running::start(config).await;
    // An 8 s token: stale (due for renewal) after 4 s, expired after 8 s. The answer says
    // only 3 upstream requests are left for a minute: at or below the reserve.
    idp.push_faults([Fault::Respond {
        status: 200,
        headers: vec![
            ("x-ratelimit-limit".into(), "30".into()),
            ("x-ratelimit-remaining".into(), "3".into()),
            ("x-ratelimit-reset".into(), epoch_in(60)),
        ],
        body: r#"{"access_token":"short-tok","token_type":"Bearer","expires_in":8}"#.into(),
    }]);
    assert_eq!(
        proxy.post_token("acme", SECRET, &aud("a")).await.token(),
        "short-tok"
    );
    tokio::time::sleep(Duration::from_millis(4500)).await;
    // Due for renewal, but the budget is low: the still-valid token is served, no request.
    let stale = proxy.post_token("acme", SECRET, &aud("a")).await;
    assert_eq!(stale.token(), "short-tok");
    assert!(stale.json["expires_in"].as_i64().unwrap() <= 4);
    assert_eq!(idp.token_requests(), 1);
    // A cache miss still goes upstream.
    proxy.post_token("acme", SECRET, &aud("b")).await.token();
    assert_eq!(idp.token_requests(), 2);
}

// Paused time: quota windows are minutes of the proxy's clock, which follows tokio's.
#[tokio::test(start_paused = true)]
async fn quotas_enforce_and_monitor() {
    let idp = idp().await;
    let mut config = ProxyConfig::new(idp.token_url());
    config.quota_per_minute = 3;
    config.clients.insert(
        "big".into(),
        ClientConfig {
            quota_per_minute: Some(100),
            ..ClientConfig::default()
        },
    );
    let enforce = Running::start(config.clone()).await;
    // A fresh instance, so the minute is unspent: see below.
    let guarded = Running::start(config.clone()).await;
    let mut monitored = config.clone();
    monitored.quota_mode = QuotaMode::Monitor;
    let monitor = Running::start(monitored).await;
    fresh_minute().await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(enforce.post_token("acme", SECRET, &aud("a")).await);
    }
    assert_eq!(
        statuses.iter().map(|a| a.status).collect::<Vec<_>>(),
        [200, 200, 200, 429, 429]
    );
    assert_eq!(statuses[4].error(), "too_many_requests");
    assert!(
        statuses[4]
            .retry_after()
            .is_some_and(|s| (1..=60).contains(&s))
    );
    // "big" has its own, larger quota (its wrong secret is refused upstream, not by quota).
    for _ in 0..5 {
        let answer = enforce.post_token("big", "whatever", &aud("a")).await;
        assert_ne!(answer.status, 429);
    }
    let text = enforce.metrics_text().await;
    assert_eq!(
        sample(
            &text,
            "en_auth_proxy_quota_rejections_total{client_id=\"acme\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            "en_auth_proxy_token_requests_total{client_id=\"acme\"}"
        ),
        Some(5.0)
    );

    // Only authenticated requests count: a caller who knows acme's client id but not its
    // secret cannot spend acme's quota (on a fresh instance, so the minute is unspent).
    for attempt in 0..4 {
        let answer = guarded
            .post_token("acme", &format!("wrong-{attempt}"), &aud("b"))
            .await;
        assert_ne!(answer.status, 200);
        assert_ne!(
            answer.status, 429,
            "a wrong secret is not charged to the quota"
        );
    }
    assert_eq!(
        guarded.post_token("acme", SECRET, &aud("b")).await.status,
        200
    );

    for _ in 0..5 {
        monitor.post_token("acme", SECRET, &aud("a")).await.token();
    }
    let snapshot = monitor.proxy.metrics().snapshot();
    assert_eq!((snapshot.quota_exceeded, snapshot.quota_rejections), (2, 0));
    assert!(support::logs().contains("over its token request quota"));
}

/// Quota windows are minutes of the proxies' clock (the wall clock when each started,
/// advanced by tokio's paused clock): sleeps to one second into a fresh minute, for proxies
/// started just before.
async fn fresh_minute() {
    let into = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        % 60_000;
    tokio::time::sleep(Duration::from_millis(61_000 - into)).await;
}

#[tokio::test]
async fn secrets_and_tokens_never_appear_in_logs_metrics_or_debug() {
    let idp = idp().await;
    let proxy = Running::start(ProxyConfig::new(idp.token_url())).await;
    let token = proxy
        .post_token("acme", SECRET, &aud("a"))
        .await
        .token()
        .to_owned();
    proxy.basic_token("acme", SECRET, &aud("a")).await.token();
    let wrong = "wrong-secret-also-never-logged";
    proxy.post_token("acme", wrong, &aud("a")).await;
    proxy
        .m2mauth(json!({"clientId": "acme", "clientSecret": wrong, "permissions": "x"}))
        .await;
    let metrics = proxy.metrics_text().await;
    let debug = format!("{:?} {:?}", proxy.proxy, proxy.proxy.config());
    let logs = support::logs();
    assert!(logs.contains("upstream token request"), "logs are captured");
    for (name, text) in [("metrics", &metrics), ("debug", &debug), ("logs", &logs)] {
        for secret in [SECRET, wrong, token.as_str()] {
            assert!(!text.contains(secret), "{name} contains a secret or token");
        }
    }
}

#[tokio::test]
async fn graceful_shutdown_completes_requests_in_flight() {
    let idp = idp().await;
    idp.push_faults([Fault::Delay(Duration::from_millis(1500))]);
    let proxy = Proxy::new(ProxyConfig::new(idp.token_url())).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/oauth/token", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(proxy.serve(listener, async {
        let _ = stopped.await;
    }));
    let request = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "acme"),
                ("client_secret", SECRET),
            ])
            .send()
            .await
    });
    while idp.token_requests() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(()).unwrap();
    let response = request
        .await
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(response.status(), 200);
    server.await.unwrap().expect("server stops cleanly");
}

#[tokio::test]
async fn the_binary_starts_from_environment_variables() {
    let idp = idp().await;
    let (mut child, base) = start_binary(&idp.token_url(), &[]).await;
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let answer = Answer::read(
            http.post(format!("{base}/oauth/token"))
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", "acme"),
                    ("client_secret", SECRET),
                ])
                .send()
                .await
                .unwrap(),
        )
        .await;
        answer.token();
    }
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        sample(
            &text,
            "en_auth_proxy_token_requests_total{client_id=\"acme\"}"
        ),
        Some(3.0)
    );
    assert_eq!(sample(&text, "en_auth_proxy_cache_hits_total"), Some(2.0));
    assert_eq!(
        sample(&text, "en_auth_proxy_upstream_requests_total"),
        Some(1.0)
    );
    assert_eq!(idp.token_requests(), 1);
    // SIGTERM: a clean exit.
    let pid = child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn the_binary_without_an_upstream_names_the_variable() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_en-auth-proxy"))
        .env_clear()
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("EN_AUTH_PROXY_TOKEN_URL"), "{stderr}");
}

#[tokio::test]
async fn the_cache_is_bounded_and_drops_the_least_recently_used_keys() {
    let idp = idp().await;
    let mut config = ProxyConfig::new(idp.token_url());
    config.max_keys = 3;
    let proxy = Running::start(config).await;
    for audience in ["a", "b", "c"] {
        proxy
            .post_token("acme", SECRET, &aud(audience))
            .await
            .token();
    }
    // "a" is used again, so "b" is now the least recently used.
    proxy.post_token("acme", SECRET, &aud("a")).await.token();
    assert_eq!(idp.token_requests(), 3);
    proxy.post_token("acme", SECRET, &aud("d")).await.token();
    assert_eq!(idp.token_requests(), 4);
    proxy.post_token("acme", SECRET, &aud("a")).await.token();
    assert_eq!(idp.token_requests(), 4, "a stayed");
    proxy.post_token("acme", SECRET, &aud("b")).await.token();
    assert_eq!(idp.token_requests(), 5, "b was evicted");
    let text = proxy.metrics_text().await;
    assert_eq!(sample(&text, "en_auth_proxy_cached_keys"), Some(3.0));
    assert_eq!(sample(&text, "en_auth_proxy_evictions_total"), Some(2.0));

    // Keys without a token (a refused secret) go before customers' tokens, however recent.
    let refused = proxy.post_token("acme", "wrong", &aud("x")).await;
    assert_eq!(refused.error(), "invalid_client");
    assert_eq!(idp.token_requests(), 6);
    proxy.post_token("acme", SECRET, &aud("y")).await.token();
    assert_eq!(idp.token_requests(), 7);
    for audience in ["a", "b", "y"] {
        proxy
            .post_token("acme", SECRET, &aud(audience))
            .await
            .token();
    }
    assert_eq!(idp.token_requests(), 7, "a, b and y kept their tokens");
}

#[tokio::test]
async fn a_caller_cycling_through_wrong_secrets_cannot_hammer_upstream() {
    let idp = idp().await;
    let mut config = ProxyConfig::new(idp.token_url());
    // A window far longer than the test, so that none of it runs after the window ended.
    config.refusal_secs = 60;
    let proxy = Running::start(config).await;
    // A customer's token is cached before the attack.
    let cached = proxy
        .post_token("acme", SECRET, &aud("a"))
        .await
        .token()
        .to_owned();
    assert_eq!(idp.token_requests(), 1);
    for attempt in 0..20 {
        let answer = proxy
            .post_token("acme", &format!("guess-{}", attempt % 7), &aud("a"))
            .await;
        assert_ne!(answer.status, 200);
    }
    let upstream = idp.token_requests() - 1;
    assert!(upstream <= 5, "{upstream} guesses went upstream");
    // The customer's cached token still goes to the right secret.
    assert_eq!(
        proxy.post_token("acme", SECRET, &aud("a")).await.token(),
        cached
    );
    // A guess for another audience is refused locally too, with Retry-After.
    let local = proxy.post_token("acme", "guess-new", &aud("b")).await;
    assert_eq!(local.status, 429);
    assert!(local.retry_after().is_some());
    assert_eq!(idp.token_requests() - 1, upstream);
    // The secret the upstream accepted for this client is never locked out: the customer gets
    // a token for a new key during the attack (whoever knows a client id cannot lock out its
    // owner), with one upstream request.
    assert_eq!(
        proxy.post_token("acme", SECRET, &aud("b")).await.status,
        200
    );
    assert_eq!(idp.token_requests() - 1, upstream + 1);
    // And the guesses stay locked out.
    assert_eq!(
        proxy
            .post_token("acme", "guess-newer", &aud("c"))
            .await
            .status,
        429
    );
    assert_eq!(idp.token_requests() - 1, upstream + 1);
}

#[tokio::test]
async fn made_up_client_ids_get_no_metric_label_of_their_own() {
    let idp = idp().await;
    let proxy = Running::start(ProxyConfig::new(idp.token_url())).await;
    proxy.post_token("acme", SECRET, &aud("a")).await.token();
    for n in 0..3 {
        let answer = proxy
            .post_token(&format!("made-up-{n}"), "whatever", &aud("a"))
            .await;
        assert_ne!(answer.status, 200);
    }
    let metrics = proxy
        .http
        .get(proxy.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("en_auth_proxy_token_requests_total{client_id=\"acme\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("en_auth_proxy_token_requests_total{client_id=\"_other\"} 3"),
        "{metrics}"
    );
    assert!(!metrics.contains("made-up"), "{metrics}");
}

#[tokio::test(start_paused = true)]
async fn a_token_about_to_expire_is_never_handed_out_while_upstream_fails() {
    let idp = idp().await;
    idp.set_lifetime(Some(Duration::from_secs(8)));
    let mut config = ProxyConfig::new(idp.token_url());
    config.min_remaining_secs = 2; // hand-out floor 2 s; below 1 s never handed out
    let proxy = Running::start(config).await;
    proxy.post_token("acme", SECRET, &aud("a")).await.token();
    // Upstream fails every renewal from now on.
    idp.push_faults((0..50).map(|_| Fault::json(503, "{}")));
    tokio::time::sleep(Duration::from_millis(7300)).await;
    let late = proxy.post_token("acme", SECRET, &aud("a")).await;
    assert_eq!(late.status, 503, "not a token with under a second left");
    assert_eq!(late.error(), "temporarily_unavailable");
}

#[tokio::test(start_paused = true)]
async fn tokens_are_renewed_ahead_while_callers_keep_getting_the_current_one() {
    let idp = idp().await;
    idp.set_lifetime(Some(Duration::from_secs(8)));
    let mut config = ProxyConfig::new(idp.token_url());
    config.min_remaining_secs = 2; // renewal from 4 s before expiry, hand-out floor 2 s
    let proxy = Running::start(config).await;
    let first = proxy
        .post_token("acme", SECRET, &aud("a"))
        .await
        .token()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(4500)).await;
    // In the renewal window: the current token, at once; the renewal runs behind it.
    let during = proxy.post_token("acme", SECRET, &aud("a")).await;
    assert_eq!(during.token(), first);
    while idp.token_requests() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut renewed = None;
    for _ in 0..500 {
        let answer = proxy.post_token("acme", SECRET, &aud("a")).await;
        if answer.token() != first {
            renewed = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let renewed = renewed.expect("the renewed token is handed out");
    assert!(renewed.json["expires_in"].as_i64().unwrap() >= 5);
    assert_eq!(idp.token_requests(), 2, "one renewal");
    let snapshot = proxy.proxy.metrics().snapshot();
    assert_eq!(snapshot.cache_misses, 1, "only the first request waited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_binaries_sharing_redis_make_one_upstream_request_per_key() {
    let redis = en_auth_testkit::RedisServer::start();
    let idp = idp().await;
    let shared = [
        ("EN_AUTH_PROXY_REDIS_URL", redis.url()),
        ("EN_AUTH_FLEET_KEY", "k".repeat(32)),
        (
            "EN_AUTH_PROXY_REDIS_ENCRYPTION_KEYS",
            "2026-12:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVowMTIzNDU=".to_owned(),
        ),
    ];
    let (_a, base_a) = start_binary(&idp.token_url(), &shared).await;
    let (_b, base_b) = start_binary(&idp.token_url(), &shared).await;
    let http = reqwest::Client::new();
    let mut tokens = std::collections::HashSet::new();
    for base in [&base_a, &base_b, &base_a, &base_b] {
        let answer = Answer::read(
            http.post(format!("{base}/oauth/token"))
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", "acme"),
                    ("client_secret", SECRET),
                ])
                .send()
                .await
                .unwrap(),
        )
        .await;
        tokens.insert(answer.token().to_owned());
    }
    assert_eq!(
        tokens.len(),
        1,
        "both instances hand out the one shared token"
    );
    assert_eq!(
        idp.token_requests(),
        1,
        "one upstream request for the fleet"
    );
    // Encrypted at rest: the token is nowhere in Redis in clear.
    let token = tokens.iter().next().unwrap();
    let keys = redis.command(&["KEYS", "*"]).unwrap();
    let mut values = String::new();
    for key in keys.lines().filter(|l| !l.starts_with(['*', '$'])) {
        values.push_str(&redis.command(&["DUMP", key]).unwrap_or_default());
        values.push_str(&redis.command(&["GET", key]).unwrap_or_default());
    }
    assert!(
        keys.contains("en-auth"),
        "the shared record is there: {keys}"
    );
    assert!(
        !values.contains(token.as_str()),
        "a token in clear in Redis"
    );
    assert!(!keys.contains(token.as_str()));

    // Without encryption keys, a Redis URL is refused at start.
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_en-auth-proxy"))
        .env_clear()
        .env("EN_AUTH_PROXY_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("EN_AUTH_PROXY_TOKEN_URL", idp.token_url())
        .env("EN_AUTH_PROXY_REDIS_URL", redis.url())
        .env("EN_AUTH_FLEET_KEY", "k".repeat(32))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .unwrap();
    assert_eq!(status.code(), Some(2));

    // Without a shared fleet key, a Redis URL is refused at start, naming the variable.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_en-auth-proxy"))
        .env_clear()
        .env("EN_AUTH_PROXY_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("EN_AUTH_PROXY_TOKEN_URL", idp.token_url())
        .env("EN_AUTH_PROXY_REDIS_URL", redis.url())
        .env(shared[2].0, &shared[2].1)
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("EN_AUTH_FLEET_KEY"), "{stderr}");
}

/// Seed 001: the m2m-auth service asks for its configured `AUDIENCE` when a request names none;
/// `EN_AUTH_PROXY_AUDIENCE` does the same. A request naming its own audience keeps it.
#[tokio::test(start_paused = true)]
async fn the_configured_audience_is_asked_for_when_a_request_names_none() {
    let idp = idp().await;
    let mut config = ProxyConfig::new(idp.token_url());
    config.audience = Some("https://api.seed-001.example".into());
    let proxy = Running::start(config).await;
    let answer = proxy
        .m2mauth(serde_json::json!({
            "clientId": "acme", "clientSecret": SECRET, "permissions": "read:data"
        }))
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(proxy.post_token("acme", SECRET, &[]).await.status, 200);
    assert_eq!(
        proxy.post_token("acme", SECRET, &aud("other")).await.status,
        200
    );
    assert_eq!(idp.token_requests_for("https://api.seed-001.example"), 2);
    assert_eq!(idp.token_requests_for("other"), 1);
    assert_eq!(idp.token_requests(), 3);
}
