//! Real peers started for a test and stopped when dropped: panva's `oidc-provider`.
//!
//! They are installed by `./scripts/install-peers` (the test command runs it); a missing
//! install fails the test with a message saying so.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The folder holding the Node peers and their lock file.
///
/// `EN_AUTH_PEERS_DIR` overrides it (for checkouts that share one `target/` directory, where
/// the path compiled in is the last checkout's).
pub fn peers_dir() -> PathBuf {
    match std::env::var_os("EN_AUTH_PEERS_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/peers"),
    }
}

/// panva's `oidc-provider` on a free loopback port (see `tests/peers/oidc-provider.mjs` for
/// its clients, resources and test hooks).
pub struct OidcProvider {
    port: u16,
    _child: Child,
    http: reqwest::Client,
}

impl OidcProvider {
    /// Client `basic-client` (client_secret_basic) and its secret.
    pub const BASIC_CLIENT: (&'static str, &'static str) = ("basic-client", "basic-secret");
    /// Client `post-client` (client_secret_post) and its secret.
    pub const POST_CLIENT: (&'static str, &'static str) = ("post-client", "post-secret");
    /// Client `dpop-client` (client_secret_basic; DPoP-bound tokens required) and its secret.
    pub const DPOP_CLIENT: (&'static str, &'static str) = ("dpop-client", "dpop-secret");
    /// Client `dpop-nonce-client`: like [`DPOP_CLIENT`](Self::DPOP_CLIENT), and the token
    /// endpoint requires a server nonce in its DPoP proofs.
    pub const DPOP_NONCE_CLIENT: (&'static str, &'static str) =
        ("dpop-nonce-client", "dpop-nonce-secret");
    /// A resource (audience) the provider issues JWTs for.
    pub const API: &'static str = "https://api.example.com";

    /// Simulated customers registered besides the two clients above (client_secret_post).
    pub const CUSTOMERS: usize = 50;

    /// Customer `n` (1 ..= [`CUSTOMERS`](Self::CUSTOMERS)): `customer-<n>` and its secret.
    pub fn customer(n: usize) -> (String, String) {
        (format!("customer-{n}"), format!("customer-{n}-secret"))
    }

    /// Starts the provider with access tokens valid for `ttl_secs`.
    ///
    /// A start that has not said `READY` within 45 s is killed and tried
    /// again, up to 3 times: on a loaded 2-core CI machine a Node process
    /// has been seen to stall at start once in a long while, and one stalled start must not
    /// fail a whole run.
    pub async fn start(ttl_secs: u64) -> Self {
        let dir = peers_dir();
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "oidc-provider is not installed: run ./scripts/install-peers (./scripts/test does)"
        );
        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            match launch_oidc_provider(&dir, ttl_secs).await {
                Ok((child, port)) => {
                    if attempt > 1 {
                        eprintln!("oidc-provider started on attempt {attempt}: {failures:?}");
                    }
                    return Self {
                        port,
                        _child: child,
                        http: reqwest::Client::new(),
                    };
                }
                Err(failure) => failures.push(format!("attempt {attempt}: {failure}")),
            }
        }
        panic!(
            "oidc-provider did not become ready in {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        );
    }

    /// The issuer, `http://127.0.0.1:<port>`.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The token endpoint.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.issuer())
    }

    /// The JWKS endpoint.
    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.issuer())
    }

    async fn stats(&self) -> serde_json::Value {
        self.http
            .get(format!("{}/__stats", self.issuer()))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats json")
    }

    /// Tokens the provider issued (successful token responses), counted on its side.
    pub async fn tokens_issued(&self) -> u64 {
        self.stats().await["tokens_issued"].as_u64().unwrap_or(0)
    }

    /// Token requests the provider received, successful or not.
    pub async fn token_requests(&self) -> u64 {
        self.stats().await["token_requests"].as_u64().unwrap_or(0)
    }

    /// Client `pkjwt-rsa` (private_key_jwt, RSA key with kid `rsa-1`, see [`client_key`]).
    ///
    /// [`client_key`]: Self::client_key
    pub const RSA_KEY_CLIENT: (&'static str, &'static str) = ("pkjwt-rsa", "rsa-1");
    /// Client `pkjwt-ec` (private_key_jwt, P-256 key with kid `ec-1`, see [`client_key`]).
    ///
    /// [`client_key`]: Self::client_key
    pub const EC_KEY_CLIENT: (&'static str, &'static str) = ("pkjwt-ec", "ec-1");

    /// Client `password-client` (client_secret_basic) with the password, password-realm and
    /// refresh-token grants; its refresh tokens are not rotated.
    pub const PASSWORD_CLIENT: (&'static str, &'static str) =
        ("password-client", "password-secret");
    /// Like [`PASSWORD_CLIENT`](Self::PASSWORD_CLIENT), but every refresh rotates the refresh
    /// token (and reusing a rotated one revokes the whole grant).
    pub const ROTATING_PASSWORD_CLIENT: (&'static str, &'static str) =
        ("rotating-password-client", "password-secret");
    /// A user of the password grants, and their password.
    pub const USER: (&'static str, &'static str) = ("alice@example.com", "alice-password");
    /// A user whose logins answer `mfa_required`, and their password.
    pub const MFA_USER: (&'static str, &'static str) = ("mfa@example.com", "mfa-password");

    /// Token requests with `grant_type` (`password`, `refresh_token`, …) the provider
    /// received, refused ones included.
    pub async fn grants(&self, grant_type: &str) -> u64 {
        self.stats().await["grants"][grant_type]
            .as_u64()
            .unwrap_or(0)
    }

    /// Every `realm` token requests named, in order.
    pub async fn realms(&self) -> Vec<String> {
        serde_json::from_value(self.stats().await["realms"].clone()).unwrap_or_default()
    }

    /// A private key the provider generated at start, as PEM: `"rsa"` (PKCS#1, registered for
    /// `pkjwt-rsa`), `"ec"` (PKCS#8 P-256, registered for `pkjwt-ec`), `"stray_rsa"`
    /// (PKCS#8, registered for no client); `"rsa_jwk"` (with `alg` PS256) and `"ec_jwk"`: the
    /// first two as private JWKs (JSON text) with their `kid`.
    pub async fn client_key(&self, name: &str) -> String {
        let keys: serde_json::Value = self
            .http
            .get(format!("{}/__client_keys", self.issuer()))
            .send()
            .await
            .expect("client keys")
            .json()
            .await
            .expect("client keys json");
        keys[name].as_str().expect("a key of that name").to_owned()
    }

    /// The header and claims (`{"header": …, "claims": …}`) of every `client_assertion` the
    /// token endpoint received, in order.
    pub async fn client_assertions(&self) -> Vec<serde_json::Value> {
        self.http
            .get(format!("{}/__assertions", self.issuer()))
            .send()
            .await
            .expect("assertions")
            .json()
            .await
            .expect("assertions json")
    }

    /// Token-endpoint errors the provider answered with `code` (`invalid_grant`: among
    /// others, a rotated refresh token used again, which also revoked its grant).
    pub async fn grant_errors(&self, code: &str) -> u64 {
        let errors: serde_json::Value = self
            .http
            .get(format!("{}/__grant_errors", self.issuer()))
            .send()
            .await
            .expect("grant errors")
            .json()
            .await
            .expect("grant errors json");
        errors[code].as_u64().unwrap_or(0)
    }

    /// Switches to a new signing key (new `kid`), as a key rotation would.
    pub async fn rotate_signing_key(&self) {
        self.http
            .post(format!("{}/__rotate", self.issuer()))
            .send()
            .await
            .expect("rotate");
    }
}

/// How many times [`OidcProvider::start`] launches the provider before it gives up.
const START_ATTEMPTS: u32 = 3;
/// How long one launch of the provider may take to say `READY` (alone it takes ≈ 2 s).
const START_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(45);

/// One launch of `oidc-provider.mjs`: the running child and its port, or what went wrong
/// (with the provider's stdout and stderr so far). A launch that fails is killed.
async fn launch_oidc_provider(
    dir: &std::path::Path,
    ttl_secs: u64,
) -> Result<(Child, u16), String> {
    let mut child = Command::new("node")
        .arg("oidc-provider.mjs")
        .arg("--ttl")
        .arg(ttl_secs.to_string())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("node does not start: {e}"))?;
    let stdout = child.stdout.take().expect("stdout piped");
    let stderr = child.stderr.take().expect("stderr piped");
    // Keep the provider's warnings and errors for the failure message.
    let errors = std::sync::Arc::new(parking_lot::Mutex::new(String::new()));
    let sink = errors.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut all = sink.lock();
            if all.len() < 16 * 1024 {
                all.push_str(&line);
                all.push('\n');
            }
        }
    });
    let mut seen = String::new();
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(START_ATTEMPT_TIMEOUT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(port) = line.strip_prefix("READY ") {
                return port.trim().parse::<u16>().ok();
            }
            if seen.len() < 4096 {
                seen.push_str(&line);
                seen.push('\n');
            }
        }
        None
    })
    .await;
    match ready {
        Ok(Some(port)) => Ok((child, port)),
        outcome => {
            let _ = child.start_kill();
            Err(format!(
                "{}; stdout:\n{seen}stderr:\n{}",
                if outcome.is_err() {
                    format!("no READY within {} s", START_ATTEMPT_TIMEOUT.as_secs())
                } else {
                    "exited before READY".to_owned()
                },
                errors.lock()
            ))
        }
    }
}

/// moto's AWS emulator (`moto.server`, from tests/peers/.venv) on a free loopback port.
pub struct MotoServer {
    port: u16,
    _child: Child,
}

impl MotoServer {
    /// Starts moto and waits until it answers.
    pub async fn start() -> Self {
        let python = peers_dir().join(".venv/bin/python");
        assert!(
            python.exists(),
            "moto is not installed: run ./scripts/install-peers (./scripts/test does)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("moto starts");
        let url = format!("http://127.0.0.1:{port}/moto-api/");
        let http = reqwest::Client::new();
        for _ in 0..1200 {
            if http.get(&url).send().await.is_ok() {
                return Self {
                    port,
                    _child: child,
                };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("moto did not answer within 120 s");
    }

    /// The endpoint URL to give AWS SDK clients.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
