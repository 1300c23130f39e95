//! A Cognito user pool on loopback speaking the AWS JSON 1.1 protocol for `InitiateAuth` and
//! `RespondToAuthChallenge`, which verifies the SRP proof for real with the server side of
//! the protocol: `v = g^x`, `B = k·v + g^b`, `S = (A·v^u)^b`. Its maths is written here,
//! independently of the client's `maths` module (only the group prime is shared), so the two
//! check each other.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use en_auth_testkit::LoopbackServer;
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use num_bigint::BigUint;
use parking_lot::Mutex;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const POOL_ID: &str = "eu-west-1_TestPool1";
pub const CLIENT_ID: &str = "srp-test-client";

/// The group prime: a published constant (RFC 3526), so it is shared; the server's padding,
/// hashing and proof check below are its own.
fn n() -> BigUint {
    BigUint::from_bytes_be(&en_auth_srp::maths::modulus())
}

/// Server-side padding: hex string, even length, `00` before a leading digit ≥ 8.
fn padded(x: &BigUint) -> Vec<u8> {
    let mut hex = x.to_str_radix(16);
    if hex.len() % 2 == 1 {
        hex.insert(0, '0');
    } else if matches!(hex.as_bytes()[0], b'8'..=b'9' | b'a'..=b'f') {
        hex.insert_str(0, "00");
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn h(parts: &[&[u8]]) -> BigUint {
    let mut d = Sha256::new();
    for p in parts {
        d.update(p);
    }
    BigUint::from_bytes_be(&d.finalize())
}

fn hmac_b64(key: &[u8], parts: &[&[u8]]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    for p in parts {
        mac.update(p);
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

fn random_biguint(bytes: usize) -> BigUint {
    let v: Vec<u8> = (0..bytes).map(|_| fastrand::u8(..)).collect();
    BigUint::from_bytes_be(&v)
}

struct PendingLogin {
    internal_username: String,
    a: BigUint,
    b: BigUint,
    big_b: BigUint,
    v: BigUint,
    secret_block: Vec<u8>,
}

struct User {
    internal: String,
    password: String,
}

#[derive(Default)]
struct State {
    users: Mutex<HashMap<String, User>>,
    client_secret: Mutex<Option<String>>,
    pending: Mutex<HashMap<String, PendingLogin>>,
    /// Refresh token → (internal user name, device key it was issued with).
    refresh_tokens: Mutex<HashMap<String, (String, Option<String>)>>,
    track_devices: std::sync::atomic::AtomicBool,
    opaque_access_tokens: std::sync::atomic::AtomicBool,
    logins: AtomicU64,
    refused: AtomicU64,
    refreshes: AtomicU64,
    issued: Mutex<Vec<String>>,
    token_lifetime: AtomicU64,
    reject_refresh: std::sync::atomic::AtomicBool,
    throttle_next: AtomicU64,
    requests: AtomicU64,
}

/// A user pool with proof-checking SRP on loopback.
pub struct TestCognito {
    server: LoopbackServer,
    state: Arc<State>,
}

impl TestCognito {
    pub async fn start(client_secret: Option<&str>) -> Self {
        let state = Arc::new(State::default());
        *state.client_secret.lock() = client_secret.map(str::to_owned);
        state.token_lifetime.store(3600, Ordering::SeqCst);
        let s = state.clone();
        let router =
            axum::Router::new().fallback(move |headers: HeaderMap, body: axum::body::Bytes| {
                let s = s.clone();
                async move { handle(&s, &headers, &body) }
            });
        Self {
            server: LoopbackServer::start(router).await.unwrap(),
            state,
        }
    }

    pub fn endpoint(&self) -> String {
        self.server.url("")
    }

    /// Adds a user who signs in as `alias` (e.g. an e-mail) and is `internal` in the pool.
    pub fn add_user(&self, alias: &str, internal: &str, password: &str) {
        self.state.users.lock().insert(
            alias.into(),
            User {
                internal: internal.into(),
                password: password.into(),
            },
        );
    }

    pub fn logins(&self) -> u64 {
        self.state.logins.load(Ordering::SeqCst)
    }
    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::SeqCst)
    }
    pub fn refreshes(&self) -> u64 {
        self.state.refreshes.load(Ordering::SeqCst)
    }
    pub fn set_token_lifetime(&self, seconds: u64) {
        self.state.token_lifetime.store(seconds, Ordering::SeqCst);
    }
    /// Answers the next `n` requests with `TooManyRequestsException`.
    pub fn throttle_next(&self, n: u64) {
        self.state.throttle_next.store(n, Ordering::SeqCst);
    }
    /// Requests received, throttled ones included.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }
    /// Remembers devices: a login returns `NewDeviceMetadata`, and a refresh token issued
    /// with a device key is accepted only with `DEVICE_KEY` = that key.
    pub fn track_devices(&self) {
        self.state.track_devices.store(true, Ordering::SeqCst);
    }
    /// Issues access tokens whose claims cannot be read (no `username` to take).
    pub fn opaque_access_tokens(&self) {
        self.state
            .opaque_access_tokens
            .store(true, Ordering::SeqCst);
    }
    pub fn reject_refresh_tokens(&self) {
        self.state.reject_refresh.store(true, Ordering::SeqCst);
    }
    /// Whether `token` is an access or ID token this pool issued.
    pub fn issued(&self, token: &str) -> bool {
        self.state.issued.lock().iter().any(|t| t == token)
    }
}

fn error(code: &str, message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [("content-type", "application/x-amz-json-1.1")],
        json!({"__type": code, "message": message}).to_string(),
    )
        .into_response()
}

fn ok(body: Value) -> Response {
    (
        [("content-type", "application/x-amz-json-1.1")],
        body.to_string(),
    )
        .into_response()
}

fn check_secret_hash(state: &State, params: &Value, username: &str) -> Result<(), Box<Response>> {
    let Some(secret) = state.client_secret.lock().clone() else {
        return Ok(());
    };
    let expected = hmac_b64(
        secret.as_bytes(),
        &[username.as_bytes(), CLIENT_ID.as_bytes()],
    );
    match params["SECRET_HASH"].as_str() {
        Some(got) if got == expected => Ok(()),
        _ => Err(Box::new(error(
            "NotAuthorizedException",
            &format!("Unable to verify secret hash for client {CLIENT_ID}"),
        ))),
    }
}

fn tokens(state: &State, internal: &str, with_refresh: bool) -> Value {
    let opaque = state.opaque_access_tokens.load(Ordering::SeqCst);
    let jwt = |kind: &str| {
        if opaque && kind == "access" {
            return format!("opaque-access-{}", fastrand::u64(..));
        }
        let payload = URL_SAFE_NO_PAD.encode(
            json!({"username": internal, "token_use": kind, "client_id": CLIENT_ID, "jti": fastrand::u64(..)}).to_string(),
        );
        format!("eyJhbGciOiJub25lIn0.{payload}.sig{}", fastrand::u32(..))
    };
    let (access, id) = (jwt("access"), jwt("id"));
    state.issued.lock().extend([access.clone(), id.clone()]);
    let mut result = json!({
        "AccessToken": access, "IdToken": id, "TokenType": "Bearer",
        "ExpiresIn": state.token_lifetime.load(Ordering::SeqCst),
    });
    if with_refresh {
        let refresh = format!("refresh-{}", fastrand::u64(..));
        let device = state
            .track_devices
            .load(Ordering::SeqCst)
            .then(|| format!("us-east-1_{:016x}", fastrand::u64(..)));
        if let Some(key) = &device {
            result["NewDeviceMetadata"] = json!({"DeviceKey": key, "DeviceGroupKey": "-group-1"});
        }
        state
            .refresh_tokens
            .lock()
            .insert(refresh.clone(), (internal.to_owned(), device));
        result["RefreshToken"] = json!(refresh);
    }
    json!({"AuthenticationResult": result})
}

fn handle(state: &State, headers: &HeaderMap, body: &[u8]) -> Response {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let throttled = state
        .throttle_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if throttled {
        return error("TooManyRequestsException", "Rate exceeded");
    }
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return error("SerializationException", "bad JSON");
    };
    if request["ClientId"] != CLIENT_ID {
        return error(
            "ResourceNotFoundException",
            "User pool client does not exist.",
        );
    }
    match target.rsplit('.').next() {
        Some("InitiateAuth") => initiate(state, &request),
        Some("RespondToAuthChallenge") => respond(state, &request),
        _ => error("UnknownOperationException", target),
    }
}

fn initiate(state: &State, request: &Value) -> Response {
    let params = &request["AuthParameters"];
    match request["AuthFlow"].as_str() {
        Some("USER_SRP_AUTH") => {}
        Some("REFRESH_TOKEN_AUTH") => {
            let token = params["REFRESH_TOKEN"].as_str().unwrap_or("");
            let issued = state.refresh_tokens.lock().get(token).cloned();
            let Some((internal, device)) =
                issued.filter(|_| !state.reject_refresh.load(Ordering::SeqCst))
            else {
                return error("NotAuthorizedException", "Invalid Refresh Token");
            };
            if device.is_some() && params["DEVICE_KEY"].as_str() != device.as_deref() {
                return error("NotAuthorizedException", "Invalid Refresh Token");
            }
            if let Err(e) = check_secret_hash(state, params, &internal) {
                return *e;
            }
            state.refreshes.fetch_add(1, Ordering::SeqCst);
            return ok(tokens(state, &internal, false));
        }
        other => {
            return error(
                "InvalidParameterException",
                &format!("unsupported flow {other:?}"),
            );
        }
    }
    let alias = params["USERNAME"].as_str().unwrap_or("");
    if let Err(e) = check_secret_hash(state, params, alias) {
        return *e;
    }
    let users = state.users.lock();
    let Some(user) = users.get(alias) else {
        return error("UserNotFoundException", "User does not exist.");
    };
    let Some(a) = params["SRP_A"]
        .as_str()
        .and_then(|v| BigUint::parse_bytes(v.as_bytes(), 16))
    else {
        return error("InvalidParameterException", "SRP_A");
    };
    let (n, g) = (n(), BigUint::from(2u32));
    if &a % &n == BigUint::ZERO {
        return error("NotAuthorizedException", "Incorrect username or password.");
    }
    // A fresh salt (of varying length) per login, so that logins cover the padding cases.
    let salt = random_biguint(15 + fastrand::usize(0..2));
    let pool_name = POOL_ID.split_once('_').unwrap().1;
    let identity =
        Sha256::digest(format!("{pool_name}{}:{}", user.internal, user.password).as_bytes());
    let x = h(&[&padded(&salt), &identity]);
    let v = g.modpow(&x, &n);
    let k = h(&[&padded(&n), &padded(&g)]);
    let b = random_biguint(128);
    let big_b = (&k * &v + g.modpow(&b, &n)) % &n;
    let secret_block: Vec<u8> = (0..96).map(|_| fastrand::u8(..)).collect();
    let session = format!("session-{}", fastrand::u64(..));
    state.pending.lock().insert(
        session.clone(),
        PendingLogin {
            internal_username: user.internal.clone(),
            a,
            b,
            big_b: big_b.clone(),
            v,
            secret_block: secret_block.clone(),
        },
    );
    ok(json!({
        "ChallengeName": "PASSWORD_VERIFIER",
        "Session": session,
        "ChallengeParameters": {
            "SALT": salt.to_str_radix(16), "SRP_B": big_b.to_str_radix(16),
            "SECRET_BLOCK": STANDARD.encode(&secret_block),
            "USERNAME": user.internal, "USER_ID_FOR_SRP": user.internal,
        },
    }))
}

fn respond(state: &State, request: &Value) -> Response {
    let responses = &request["ChallengeResponses"];
    let Some(login) = request["Session"]
        .as_str()
        .and_then(|s| state.pending.lock().remove(s))
    else {
        return error("NotAuthorizedException", "Invalid session for the user.");
    };
    if responses["USERNAME"] != login.internal_username.as_str() {
        return error("NotAuthorizedException", "Incorrect username or password.");
    }
    if let Err(e) = check_secret_hash(state, responses, &login.internal_username) {
        return *e;
    }
    let n = n();
    let u = h(&[&padded(&login.a), &padded(&login.big_b)]);
    let s = (&login.a * login.v.modpow(&u, &n)).modpow(&login.b, &n);
    let mut key = [0u8; 16];
    Hkdf::<Sha256>::new(Some(&padded(&u)), &padded(&s))
        .expand(b"Caldera Derived Key", &mut key)
        .unwrap();
    let pool_name = POOL_ID.split_once('_').unwrap().1;
    let timestamp = responses["TIMESTAMP"].as_str().unwrap_or("");
    let expected = hmac_b64(
        &key,
        &[
            pool_name.as_bytes(),
            login.internal_username.as_bytes(),
            &login.secret_block,
            timestamp.as_bytes(),
        ],
    );
    let block_echoed = responses["PASSWORD_CLAIM_SECRET_BLOCK"].as_str()
        == Some(&STANDARD.encode(&login.secret_block));
    if responses["PASSWORD_CLAIM_SIGNATURE"].as_str() != Some(&expected) || !block_echoed {
        state.refused.fetch_add(1, Ordering::SeqCst);
        return error("NotAuthorizedException", "Incorrect username or password.");
    }
    state.logins.fetch_add(1, Ordering::SeqCst);
    ok(tokens(state, &login.internal_username, true))
}
