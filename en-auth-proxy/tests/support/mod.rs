//! Shared by the proxy's integration tests: a proxy on a loopback port, a client for it, and
//! a log capture to scan for secrets.
#![allow(dead_code)]

use std::io::Write;
use std::sync::{Arc, OnceLock};

use en_auth_proxy::{Proxy, ProxyConfig};
use en_auth_testkit::LoopbackServer;
use parking_lot::Mutex;
use serde_json::Value;

/// Every log line written by any test of this binary (debug level and up).
pub fn logs() -> String {
    String::from_utf8_lossy(&capture().lock()).into_owned()
}

fn capture() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buffer);
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || Sink(Arc::clone(&sink)))
            .try_init();
        buffer
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A proxy served on a free loopback port.
pub struct Running {
    pub proxy: Proxy,
    server: LoopbackServer,
    pub http: reqwest::Client,
}

impl Running {
    pub async fn start(config: ProxyConfig) -> Self {
        Self::start_proxy(Proxy::new(config).expect("valid config")).await
    }

    pub async fn start_proxy(proxy: Proxy) -> Self {
        capture();
        let server = LoopbackServer::start(proxy.router()).await.expect("bind");
        Self {
            proxy,
            server,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    /// `POST /oauth/token` with `client_secret_post` and extra form fields.
    pub async fn post_token(&self, id: &str, secret: &str, extra: &[(&str, &str)]) -> Answer {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", secret),
        ];
        form.extend_from_slice(extra);
        Answer::read(
            self.http
                .post(self.url("/oauth/token"))
                .form(&form)
                .send()
                .await
                .expect("proxy answers"),
        )
        .await
    }

    /// `POST /oauth/token` with `client_secret_basic`.
    pub async fn basic_token(&self, id: &str, secret: &str, extra: &[(&str, &str)]) -> Answer {
        let mut form = vec![("grant_type", "client_credentials")];
        form.extend_from_slice(extra);
        Answer::read(
            self.http
                .post(self.url("/oauth/token"))
                .basic_auth(id, Some(secret))
                .form(&form)
                .send()
                .await
                .expect("proxy answers"),
        )
        .await
    }

    /// `POST /m2mauth` with a JSON body.
    pub async fn m2mauth(&self, body: Value) -> Answer {
        Answer::read(
            self.http
                .post(self.url("/m2mauth"))
                .json(&body)
                .send()
                .await
                .expect("proxy answers"),
        )
        .await
    }

    pub async fn metrics_text(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }
}

/// A proxy answer: status, headers, JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
}

impl Answer {
    pub async fn read(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body");
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Self {
            status,
            headers,
            json,
        }
    }

    pub fn token(&self) -> &str {
        assert_eq!(self.status, 200, "{:?}", self.json);
        self.json["access_token"].as_str().expect("access_token")
    }

    pub fn error(&self) -> &str {
        self.json["error"].as_str().unwrap_or("<none>")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn retry_after(&self) -> Option<u64> {
        self.header("retry-after").and_then(|v| v.parse().ok())
    }
}

/// The value of an unlabelled Prometheus sample, or of one with exactly `labels`.
pub fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(name_and_labels)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A free port on loopback (for a process that binds it itself).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the proxy binary on a free port with `env`; its base URL once /healthz answers.
pub async fn start_binary(
    upstream: &str,
    env: &[(&str, String)],
) -> (tokio::process::Child, String) {
    let port = free_port();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_en-auth-proxy"));
    command
        .env_clear()
        .env("EN_AUTH_PROXY_LISTEN", format!("127.0.0.1:{port}"))
        .env("EN_AUTH_PROXY_TOKEN_URL", upstream)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let child = command.spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    // Real time: the binary is a process of its own, started for real.
    for _ in 0..600 {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
            assert_eq!(r.status(), 200);
            return (child, base);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the proxy did not start");
}
