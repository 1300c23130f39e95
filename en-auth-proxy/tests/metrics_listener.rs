//! `/metrics` on a listener of its own (`EN_AUTH_PROXY_METRICS_LISTEN`): the customers'
//! listener then answers 404 for it, in process and in the binary.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use en_auth_proxy::{Proxy, ProxyConfig};
use en_auth_testkit::{IdpConfig, LocalIdp};
use support::{Answer, free_port, sample};

const SECRET: &str = "metrics-test-secret-91";

async fn idp() -> LocalIdp {
    LocalIdp::start(IdpConfig {
        client_id: "acme".into(),
        client_secret: SECRET.into(),
        lifetime: Some(Duration::from_secs(3600)),
    })
    .await
    .unwrap()
}

async fn token(http: &reqwest::Client, base: &str) -> Answer {
    Answer::read(
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
    .await
}

async fn get(http: &reqwest::Client, url: String) -> (u16, String) {
    let response = http.get(url).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn without_a_metrics_listener_metrics_stay_on_the_customers_listener() {
    let idp = idp().await;
    let proxy = support::Running::start(ProxyConfig::new(idp.token_url())).await;
    proxy.post_token("acme", SECRET, &[]).await.token();
    let text = proxy.metrics_text().await;
    assert_eq!(
        sample(
            &text,
            "en_auth_proxy_token_requests_total{client_id=\"acme\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn serve_with_metrics_keeps_client_ids_off_the_customers_listener() {
    let idp = idp().await;
    let mut config = ProxyConfig::new(idp.token_url());
    config.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let proxy = Proxy::new(config).unwrap();
    let customers = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let operators = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", customers.local_addr().unwrap());
    let metrics_base = format!("http://{}", operators.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(proxy.clone().serve_with_metrics(
        customers,
        Some(operators),
        async move {
            let _ = stopped.await;
        },
    ));
    let http = reqwest::Client::new();
    for _ in 0..3 {
        token(&http, &base).await.token();
    }
    let (status, body) = get(&http, format!("{base}/metrics")).await;
    assert_eq!(status, 404, "{body}");
    assert!(!body.contains("acme"));
    let (status, text) = get(&http, format!("{metrics_base}/metrics")).await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(
            &text,
            "en_auth_proxy_token_requests_total{client_id=\"acme\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, "en_auth_proxy_upstream_requests_total"),
        Some(1.0)
    );
    assert_eq!(get(&http, format!("{metrics_base}/healthz")).await.0, 200);
    assert_eq!(get(&http, format!("{base}/healthz")).await.0, 200);
    // Customers' routes are not on the operators' listener.
    let answer = token(&http, &metrics_base).await;
    assert_eq!(answer.status, 404);
    assert_eq!(idp.token_requests(), 1);

    // One shutdown stops both.
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("both listeners stop")
        .unwrap()
        .unwrap();
    assert!(
        http.get(format!("{metrics_base}/metrics"))
            .send()
            .await
            .is_err()
    );
    assert!(http.get(format!("{base}/healthz")).send().await.is_err());

    // The router alone (as embedded in another axum app) follows the configuration too.
    let server = en_auth_testkit::LoopbackServer::start(proxy.router())
        .await
        .unwrap();
    assert_eq!(get(&http, server.url("/metrics")).await.0, 404);
    let metrics = en_auth_testkit::LoopbackServer::start(proxy.metrics_router())
        .await
        .unwrap();
    assert_eq!(get(&http, metrics.url("/metrics")).await.0, 200);
}

fn binary(upstream: &str, listen: u16, metrics: u16) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_en-auth-proxy"));
    command
        .env_clear()
        .env("EN_AUTH_PROXY_LISTEN", format!("127.0.0.1:{listen}"))
        .env(
            "EN_AUTH_PROXY_METRICS_LISTEN",
            format!("127.0.0.1:{metrics}"),
        )
        .env("EN_AUTH_PROXY_TOKEN_URL", upstream)
        .kill_on_drop(true);
    command
}

/// The binary is a process of its own: real time, polled until it answers.
#[tokio::test]
async fn the_binary_serves_metrics_on_the_metrics_listener_only() {
    let idp = idp().await;
    let (port, metrics_port) = (free_port(), free_port());
    let _child = binary(&idp.token_url(), port, metrics_port)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let metrics_base = format!("http://127.0.0.1:{metrics_port}");
    let http = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..600 {
        let customers = http.get(format!("{base}/healthz")).send().await;
        let operators = http.get(format!("{metrics_base}/healthz")).send().await;
        if customers.is_ok_and(|r| r.status() == 200) && operators.is_ok_and(|r| r.status() == 200)
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "the proxy did not start");
    for _ in 0..2 {
        token(&http, &base).await.token();
    }
    assert_eq!(get(&http, format!("{base}/metrics")).await.0, 404);
    let (status, text) = get(&http, format!("{metrics_base}/metrics")).await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(
            &text,
            "en_auth_proxy_token_requests_total{client_id=\"acme\"}"
        ),
        Some(2.0)
    );
    assert_eq!(idp.token_requests(), 1);
}

#[tokio::test]
async fn the_binary_names_the_variable_when_the_metrics_address_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        binary("http://127.0.0.1:9/oauth/token", free_port(), taken_port).output(),
    )
    .await
    .expect("exits")
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("EN_AUTH_PROXY_METRICS_LISTEN"), "{stderr}");
    drop(taken);
}
