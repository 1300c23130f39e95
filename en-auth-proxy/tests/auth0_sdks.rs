//! Auth0's own SDKs as the proxy's customers, changing nothing but the domain:
//! - auth0-python (`GetToken(domain, id, client_secret=…).client_credentials(audience)`), which
//!   sends JSON bodies; pointed at `http://127.0.0.1:<port>` with its own `protocol` argument;
//! - node-auth0 (`new AuthenticationClient({domain, clientId, clientSecret})
//!   .oauth.clientCredentialsGrant({audience})`), which sends form bodies and only speaks
//!   `https://${domain}`: the proxy is served over TLS on loopback with a throw-away CA that
//!   Node trusts through `NODE_EXTRA_CA_CERTS`.
//!
//! The SDKs run as their own processes (tests/peers/auth0_*_client.*) and so in real time:
//! these tests cannot pause tokio's clock.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use en_auth_proxy::{ClientConfig, Proxy, ProxyConfig, UpstreamAuth};
use en_auth_testkit::{Fault, IdpConfig, LocalIdp, OidcProvider, TestPki, peers_dir};
use en_auth_verify::Verifier;
use serde_json::{Value, json};
use support::Running;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

const API: &str = OidcProvider::API;
const SECRET: &str = "acme-secret-4f1d";

/// A TLS acceptor with `pki`'s server certificate for 127.0.0.1 (no client certificates).
fn acceptor(pki: &TestPki) -> TlsAcceptor {
    let server = pki.server();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&server.cert_pem)
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(&server.key_pem).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

/// A loopback listener that hands axum TLS connections (failed handshakes are dropped).
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else {
                continue;
            };
            let handshake = self.acceptor.accept(stream);
            if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), handshake).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// The proxy's router served over TLS on a free loopback port.
struct TlsProxy {
    addr: SocketAddr,
    certificates: TestPki,
    task: tokio::task::JoinHandle<()>,
}

impl TlsProxy {
    async fn start(proxy: &Proxy) -> Self {
        let certificates = TestPki::create();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let listener = TlsListener {
            tcp,
            acceptor: acceptor(&certificates),
        };
        let router = proxy.router();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            addr,
            certificates,
            task,
        }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A command for `program` with nothing from the test's environment but `PATH` (no proxy
/// variables: the SDKs talk to loopback only).
fn sdk_command(program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command
}

/// What one SDK run printed: one JSON value per token request.
async fn run_sdk(mut command: tokio::process::Command, what: &str) -> Vec<Value> {
    command
        .current_dir(peers_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 60 s"))
        .unwrap_or_else(|err| panic!("{what} does not start: {err}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{what} failed ({}): {stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("{what}: {line}")))
        .collect()
}

/// auth0-python's `GetToken(…).client_credentials(audience)`, `requests` times, over http.
async fn python(
    proxy: &Running,
    id: &str,
    secret: &str,
    audience: &str,
    requests: u32,
) -> Vec<Value> {
    let python = peers_dir().join(".venv/bin/python");
    assert!(
        python.exists(),
        "auth0-python is not installed: run ./scripts/install-peers (./scripts/test does)"
    );
    let domain = proxy
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut command = sdk_command(python);
    command
        .arg("auth0_python_client.py")
        .env("AUTH0_DOMAIN", domain)
        .env("AUTH0_PROTOCOL", "http")
        .env("AUTH0_CLIENT_ID", id)
        .env("AUTH0_CLIENT_SECRET", secret)
        .env("AUTH0_AUDIENCE", audience)
        .env("REQUESTS", requests.to_string());
    run_sdk(command, "auth0-python").await
}

/// node-auth0's `clientCredentialsGrant({audience})`, `requests` times, over https.
async fn node(
    proxy: &TlsProxy,
    id: &str,
    secret: &str,
    audience: &str,
    requests: u32,
) -> Vec<Value> {
    assert!(
        peers_dir().join("node_modules/auth0").exists(),
        "node-auth0 is not installed: run ./scripts/install-peers (./scripts/test does)"
    );
    let mut command = sdk_command("node");
    command
        .arg("auth0_node_client.mjs")
        .env("NODE_EXTRA_CA_CERTS", proxy.certificates.ca_file())
        .env("AUTH0_DOMAIN", proxy.addr.to_string())
        .env("AUTH0_CLIENT_ID", id)
        .env("AUTH0_CLIENT_SECRET", secret)
        .env("AUTH0_AUDIENCE", audience)
        .env("REQUESTS", requests.to_string());
    run_sdk(command, "node-auth0").await
}

fn tokens(answers: &[Value]) -> Vec<&str> {
    answers
        .iter()
        .map(|a| {
            assert_eq!(a["ok"], true, "{a}");
            assert_eq!(a["answer"]["token_type"], "Bearer", "{a}");
            assert!(
                a["answer"]["expires_in"].as_u64().is_some_and(|s| s > 3000),
                "{a}"
            );
            a["answer"]["access_token"].as_str().expect("access_token")
        })
        .collect()
}

fn now_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Returns only with at least 10 s left in the clock minute, so that two requests
/// meant for one quota minute fall into the same one.
async fn wait_for_a_fresh_minute() {
    let secs = now_epoch() % 60;
    if secs > 50 {
        tokio::time::sleep(Duration::from_secs(61 - secs)).await;
    }
}

async fn local_idp() -> LocalIdp {
    LocalIdp::start(IdpConfig {
        client_id: "acme".into(),
        client_secret: SECRET.into(),
        lifetime: Some(Duration::from_secs(3600)),
    })
    .await
    .unwrap()
}

fn oidc_config(provider: &OidcProvider) -> ProxyConfig {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sdks_get_the_upstreams_token_with_one_upstream_request_per_key() {
    let provider = OidcProvider::start(3600).await;
    let proxy = Proxy::new(oidc_config(&provider)).unwrap();
    let http = Running::start_proxy(proxy.clone()).await;
    let https = TlsProxy::start(&proxy).await;
    let before = provider.token_requests().await;

    let (id, secret) = OidcProvider::customer(1);
    let from_python = python(&http, &id, &secret, API, 5).await;
    let from_python = tokens(&from_python);
    assert_eq!(from_python.len(), 5);
    let from_node = node(&https, &id, &secret, API, 5).await;
    let from_node = tokens(&from_node);
    assert_eq!(from_node.len(), 5);
    // auth0-python's JSON body and node-auth0's form body name the same key: one token.
    assert!(
        from_python
            .iter()
            .chain(&from_node)
            .all(|t| *t == from_python[0]),
        "one token for customer-1"
    );
    assert_eq!(provider.token_requests().await - before, 1);

    let (id2, secret2) = OidcProvider::customer(2);
    let second = node(&https, &id2, &secret2, API, 3).await;
    let second = tokens(&second);
    assert!(second.iter().all(|t| *t == second[0]));
    let second_python = python(&http, &id2, &secret2, API, 2).await;
    assert!(tokens(&second_python).iter().all(|t| *t == second[0]));
    assert_eq!(provider.token_requests().await - before, 2);

    let verifier = Verifier::oidc(provider.issuer(), API);
    for (token, customer) in [(from_python[0], &id), (second[0], &id2)] {
        let claims = verifier
            .verify(token)
            .await
            .expect("the upstream's token verifies");
        assert_eq!(claims.client_id.as_deref(), Some(customer.as_str()));
    }
    let snapshot = proxy.metrics().snapshot();
    assert_eq!(snapshot.token_requests, 15);
    assert_eq!(snapshot.upstream_requests, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_the_sdks_401_with_the_upstreams_error_code() {
    // oidc-provider says `invalid_client`.
    let provider = OidcProvider::start(3600).await;
    let proxy = Proxy::new(oidc_config(&provider)).unwrap();
    let http = Running::start_proxy(proxy.clone()).await;
    let https = TlsProxy::start(&proxy).await;
    let (id, _) = OidcProvider::customer(3);
    let before = provider.token_requests().await;
    let answer = &python(&http, &id, "not-the-secret-1", API, 1).await[0];
    assert_eq!(
        (
            &answer["type"],
            &answer["status_code"],
            &answer["error_code"]
        ),
        (&json!("Auth0Error"), &json!(401), &json!("invalid_client")),
        "{answer}"
    );
    let answer = &node(&https, &id, "not-the-secret-2", API, 1).await[0];
    assert_eq!(
        (&answer["type"], &answer["statusCode"], &answer["error"]),
        (
            &json!("AuthApiError"),
            &json!(401),
            &json!("invalid_client")
        ),
        "{answer}"
    );
    assert_eq!(
        provider.token_requests().await - before,
        2,
        "both checked upstream"
    );
    drop((http, https));

    // Auth0 says `access_denied` for a wrong secret: relayed as it is.
    let idp = local_idp().await;
    let proxy = Proxy::new(ProxyConfig::new(idp.token_url())).unwrap();
    let http = Running::start_proxy(proxy.clone()).await;
    let https = TlsProxy::start(&proxy).await;
    let auth0_refusal = || {
        Fault::json(
            401,
            r#"{"error":"access_denied","error_description":"Unauthorized"}"#,
        )
    };
    idp.push_faults([auth0_refusal()]);
    let answer = &python(&http, "acme", "wrong-for-python", API, 1).await[0];
    assert_eq!(
        (
            &answer["type"],
            &answer["status_code"],
            &answer["error_code"],
            &answer["message"]
        ),
        (
            &json!("Auth0Error"),
            &json!(401),
            &json!("access_denied"),
            &json!("Unauthorized")
        ),
        "{answer}"
    );
    idp.push_faults([auth0_refusal()]);
    let answer = &node(&https, "acme", "wrong-for-node", API, 1).await[0];
    assert_eq!(
        (
            &answer["statusCode"],
            &answer["error"],
            &answer["error_description"]
        ),
        (&json!(401), &json!("access_denied"), &json!("Unauthorized")),
        "{answer}"
    );
    assert_eq!(idp.token_requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_quota_is_the_sdks_rate_limit_error_with_its_reset_time() {
    let idp = local_idp().await;
    let mut config = ProxyConfig::new(idp.token_url());
    config.quota_per_minute = 1;
    let proxy = Proxy::new(config).unwrap();
    let http = Running::start_proxy(proxy.clone()).await;
    let https = TlsProxy::start(&proxy).await;
    wait_for_a_fresh_minute().await;
    let answers = python(&http, "acme", SECRET, API, 2).await;
    tokens(&answers[..1]);
    let limited = &answers[1];
    assert_eq!(
        (
            &limited["type"],
            &limited["status_code"],
            &limited["error_code"]
        ),
        (
            &json!("RateLimitError"),
            &json!(429),
            &json!("too_many_requests")
        ),
        "{limited}"
    );
    // The quota resets at the next clock minute: that is the `reset_at` the SDK exposes.
    let next_minute = (now_epoch() / 60 + 1) * 60;
    let reset_at = limited["reset_at"].as_u64().expect("reset_at");
    assert!(
        reset_at.abs_diff(next_minute) <= 1,
        "reset_at {reset_at}, next minute {next_minute}"
    );

    let limited = &node(&https, "acme", SECRET, API, 1).await[0];
    assert_eq!(
        (&limited["statusCode"], &limited["error"]),
        (&json!(429), &json!("too_many_requests")),
        "{limited}"
    );
    assert_eq!(limited["rateLimitLimit"], "1", "{limited}");
    assert_eq!(limited["rateLimitRemaining"], "0", "{limited}");
    let reset: u64 = limited["rateLimitReset"].as_str().unwrap().parse().unwrap();
    assert!(reset.abs_diff(next_minute) <= 1, "{limited}");
    let retry_after: u64 = limited["retryAfter"].as_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{limited}");
    assert_eq!(idp.token_requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_throttle_reaches_the_sdks_with_the_upstreams_reset_time() {
    let idp = local_idp().await;
    let proxy = Proxy::new(ProxyConfig::new(idp.token_url())).unwrap();
    let http = Running::start_proxy(proxy.clone()).await;
    let https = TlsProxy::start(&proxy).await;
    let reset = now_epoch() + 30;
    idp.push_faults([Fault::Respond {
        status: 429,
        headers: vec![
            ("retry-after".into(), "30".into()),
            ("x-ratelimit-limit".into(), "30".into()),
            ("x-ratelimit-remaining".into(), "0".into()),
            ("x-ratelimit-reset".into(), reset.to_string()),
        ],
        body:
            r#"{"error":"too_many_requests","error_description":"Global limit has been reached"}"#
                .into(),
    }]);
    let limited = &python(&http, "acme", SECRET, API, 1).await[0];
    assert_eq!(
        (&limited["type"], &limited["status_code"]),
        (&json!("RateLimitError"), &json!(429)),
        "{limited}"
    );
    let reset_at = limited["reset_at"].as_u64().expect("reset_at");
    assert!(
        reset_at.abs_diff(reset) <= 1,
        "reset_at {reset_at}, upstream's {reset}"
    );

    // Held back by the proxy without asking upstream: the same reset, and the upstream's limit.
    let limited = &node(&https, "acme", SECRET, "https://other.example.com", 1).await[0];
    assert_eq!(limited["statusCode"], 429, "{limited}");
    assert_eq!(limited["rateLimitLimit"], "30", "{limited}");
    assert_eq!(limited["rateLimitRemaining"], "0", "{limited}");
    let node_reset: u64 = limited["rateLimitReset"].as_str().unwrap().parse().unwrap();
    assert!(node_reset.abs_diff(reset) <= 1, "{limited}");
    assert_eq!(idp.token_requests(), 1);
}

/// Seed 001's route, with the body exactly as its clients send it (no audience: the seed's
/// service adds its own from its configuration).
#[tokio::test]
async fn seed_001_m2mauth_body_as_its_clients_send_it() {
    let idp = local_idp().await;
    let proxy = Running::start(ProxyConfig::new(idp.token_url())).await;
    let body =
        json!({"clientId": "acme", "clientSecret": SECRET, "permissions": "read:data write:data"});
    let first = proxy.m2mauth(body.clone()).await;
    let token = first.token().to_owned();
    assert_eq!(first.json["token_type"], "Bearer");
    assert!(first.json["expires_in"].as_u64().is_some_and(|s| s > 3000));
    assert_eq!(first.header("content-type"), Some("application/json"));
    for _ in 0..3 {
        assert_eq!(proxy.m2mauth(body.clone()).await.token(), token);
    }
    assert_eq!(idp.token_requests(), 1);
    let wrong = proxy
        .m2mauth(json!({"clientId": "acme", "clientSecret": "wrong", "permissions": "read:data write:data"}))
        .await;
    assert_eq!((wrong.status, wrong.error()), (401, "invalid_client"));
}

/// What the SDKs do not send but Auth0 accepts: JSON with `client_secret_basic`, a charset,
/// unknown members of any type, `resource` as a string or a list.
#[tokio::test]
async fn json_bodies_take_what_auth0_takes() {
    let idp = local_idp().await;
    let proxy = Running::start(ProxyConfig::new(idp.token_url())).await;
    let post = |body: Value, basic: bool| {
        let proxy = &proxy;
        async move {
            let mut request = proxy
                .http
                .post(proxy.url("/oauth/token"))
                .header("content-type", "application/json; charset=utf-8")
                .body(body.to_string());
            if basic {
                request = request.basic_auth("acme", Some(SECRET));
            }
            support::Answer::read(request.send().await.unwrap()).await
        }
    };
    let basic = post(
        json!({"grant_type": "client_credentials", "audience": API, "scope": "b a",
               "organization": null, "extra": {"nested": [1, true]}, "n": 1.5}),
        true,
    )
    .await;
    let token = basic.token().to_owned();
    let post_auth = post(
        json!({"grant_type": "client_credentials", "client_id": "acme", "client_secret": SECRET,
               "audience": API, "scope": "a b a"}),
        false,
    )
    .await;
    assert_eq!(post_auth.token(), token, "the same key: the cached token");
    let resources = post(
        json!({"grant_type": "client_credentials", "resource": ["https://b", "https://a"]}),
        true,
    )
    .await;
    resources.token();
    let refused = post(
        json!({"grant_type": "client_credentials", "audience": ["x"]}),
        true,
    )
    .await;
    assert_eq!((refused.status, refused.error()), (400, "invalid_request"));
    let refused = post(json!(["grant_type", "client_credentials"]), true).await;
    assert_eq!((refused.status, refused.error()), (400, "invalid_request"));
    assert_eq!(idp.token_requests(), 2);
}
