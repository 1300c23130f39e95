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
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    header.typ = Some("at+jwt".into());
    encode(&header, claims, key).unwrap()
}

/// Serves the fixture JWKS (or a replacement), counting fetches; can be switched to fail.
pub struct JwksServer {
    server: LoopbackServer,
    pub fetches: Arc<AtomicU64>,
    pub down: Arc<AtomicBool>,
    pub document: Arc<Mutex<String>>,
}

impl JwksServer {
    pub async fn start() -> Self {
        let fetches = Arc::new(AtomicU64::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let document = Arc::new(Mutex::new(fixture("jwks.json")));
        let (f, d, doc) = (fetches.clone(), down.clone(), document.clone());
        let router = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let (f, d, doc) = (f.clone(), d.clone(), doc.clone());
                async move {
                    f.fetch_add(1, Ordering::SeqCst);
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
        }
    }

    pub fn url(&self) -> String {
        self.server.url("/.well-known/jwks.json")
    }

    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }
}
