//! Token minting with the committed test keys, and a JWKS server that counts its fetches.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use en_auth_testkit::LoopbackServer;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use parking_lot::Mutex;
use serde_json::{Value, json};

pub const ISSUER: &str = "https://issuer.test/";
pub const AUDIENCE: &str = "https://api.test";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

pub fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(fixture("rsa.pem").as_bytes()).unwrap()
}

pub fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_pem(fixture("ec.pem").as_bytes()).unwrap()
}

pub fn rsa_public_pem() -> String {
    fixture("rsa-public.pem")
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Standard claims for ISSUER/AUDIENCE, valid for an hour, with `extra` merged in.
pub fn claims(extra: Value) -> Value {
    let mut base = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "service-a", "iat": now(), "exp": now() + 3600,
        "scope": "read:data write:data",
    });
    if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
        for (k, v) in extra {
            if v.is_null() {
                base.remove(&k);
            } else {
                base.insert(k, v);
            }
        }
    }
    base
}

pub fn rs256(claims: &Value) -> String {
    sign(Algorithm::RS256, "rsa-1", &rsa_key(), claims)
}

pub fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    install_crypto_backend();
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    header.typ = Some("at+jwt".into());
    encode(&header, claims, key).unwrap()
}

/// The test process is the application: with both of jsonwebtoken's backends enabled (the
/// workspace's `backend-clash` member unifies `rust_crypto` into `cargo test --workspace`),
/// its own `encode` needs a process default. en-auth-verify itself needs none.
pub fn install_crypto_backend() {
    let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
        &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
    );
}

/// The fixture JWKS with only the keys whose `kid` is in `kids`.
pub fn jwks_with(kids: &[&str]) -> String {
    let mut document: Value = serde_json::from_str(&fixture("jwks.json")).unwrap();
    document["keys"]
        .as_array_mut()
        .unwrap()
        .retain(|key| kids.contains(&key["kid"].as_str().unwrap_or("")));
    document.to_string()
}

/// Serves the fixture JWKS (or a replacement), counting fetches; can be switched to fail.
pub struct JwksServer {
    server: LoopbackServer,
    pub fetches: Arc<AtomicU64>,
    pub down: Arc<AtomicBool>,
    pub document: Arc<Mutex<String>>,
    /// Milliseconds each answer waits before it is sent (a slow or hanging endpoint).
    pub delay_ms: Arc<AtomicU64>,
}

impl JwksServer {
    pub async fn start() -> Self {
        let fetches = Arc::new(AtomicU64::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let document = Arc::new(Mutex::new(fixture("jwks.json")));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (f, d, doc, delay) = (
            fetches.clone(),
            down.clone(),
            document.clone(),
            delay_ms.clone(),
        );
        let router = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let (f, d, doc, delay) = (f.clone(), d.clone(), doc.clone(), delay.clone());
                async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    let wait = delay.load(Ordering::SeqCst);
                    if wait > 0 {
                        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                    }
                    if d.load(Ordering::SeqCst) {
                        return (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response();
                    }
                    let body = doc.lock().clone();
                    ([("content-type", "application/json")], body).into_response()
                }
            }),
        );
        Self {
            server: LoopbackServer::start(router).await.unwrap(),
            fetches,
            down,
            document,
            delay_ms,
        }
    }

    /// Publishes `document` from now on.
    pub fn publish(&self, document: String) {
        *self.document.lock() = document;
    }

    /// Makes every answer wait `ms` milliseconds.
    pub fn delay(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        self.server.url("/.well-known/jwks.json")
    }

    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// Waits (up to 10 s) until `verifier` has stored two more key sets than `before`: the second
/// one was fetched after whatever the test published before calling this (the first may have
/// been under way already). Polls instead of sleeping a fixed time, which a loaded CI machine
/// can overshoot.
pub async fn until_learnt(verifier: &en_auth_verify::Verifier, before: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while verifier.jwks_updates() < before + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the verifier did not refresh its key set within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
