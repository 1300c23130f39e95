//! [`LocalIdp`]'s token exchange (RFC 8693), for on-behalf-of examples and tests: it signs
//! users' access tokens (HS256 JWTs, as a login would hand them out) and exchanges them, at
//! its token endpoint, for downstream tokens that remember whom they act for.
//!
//! The exchange checks what a real provider checks: the client's credentials, the subject
//! token's signature, issuer and expiry, its `subject_token_type`; it answers with
//! `issued_token_type` and a token that never outlives the subject token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::idp::{IdpState, LocalIdp, client_credentials};

/// The token exchange grant type.
pub(crate) const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// The `iss` of the users' tokens.
const ISSUER: &str = "https://local-idp.example";

/// What the token exchange keeps: the key users' tokens are signed with, the subject each
/// downstream token acts for, and a count of exchanges.
pub(crate) struct ExchangeState {
    secret: [u8; 32],
    subject_of: Mutex<HashMap<String, String>>,
    exchanges: AtomicU64,
}

impl Default for ExchangeState {
    fn default() -> Self {
        let mut secret = [0u8; 32];
        secret.iter_mut().for_each(|b| *b = fastrand::u8(..));
        Self {
            secret,
            subject_of: Mutex::new(HashMap::new()),
            exchanges: AtomicU64::new(0),
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn mac(secret: &[u8], input: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(input.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

impl ExchangeState {
    fn sign(&self, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(br#"{"alg":"HS256","typ":"JWT"}"#),
            b64(claims.to_string().as_bytes())
        );
        let signature = b64(&mac(&self.secret, &input));
        format!("{input}.{signature}")
    }

    /// The claims of a users' token signed here that has not expired.
    fn verify(&self, token: &str) -> Option<Value> {
        let (input, signature) = token.rsplit_once('.')?;
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .ok()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).ok()?;
        mac.update(input.as_bytes());
        mac.verify_slice(&signature).ok()?;
        let payload = input.split_once('.')?.1;
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .ok()?,
        )
        .ok()?;
        (claims["iss"] == ISSUER && claims["exp"].as_u64()? > now()).then_some(claims)
    }
}

impl LocalIdp {
    /// The `iss` of the users' tokens of [`user_token`](Self::user_token).
    pub const USER_ISSUER: &'static str = ISSUER;

    /// An access token of user `sub` for the API `audience`, valid for `lifetime`: an HS256
    /// JWT with `iss` [`USER_ISSUER`](Self::USER_ISSUER), as the user's login would hand it
    /// out. Verify it with the key of [`user_token_key`](Self::user_token_key).
    pub fn user_token(&self, sub: &str, audience: &str, lifetime: Duration) -> String {
        let iat = now();
        self.state.exchange.sign(&json!({
            "iss": ISSUER,
            "sub": sub,
            "aud": audience,
            "iat": iat,
            "exp": iat + lifetime.as_secs(),
            "scope": "read:profile",
        }))
    }

    /// The HS256 key users' tokens are signed with (for `Verifier::hs256`).
    pub fn user_token_key(&self) -> Vec<u8> {
        self.state.exchange.secret.to_vec()
    }

    /// Token exchanges granted.
    pub fn exchanges(&self) -> u64 {
        self.state.exchange.exchanges.load(Ordering::SeqCst)
    }

    /// The user a token issued by token exchange acts for.
    pub fn subject_of(&self, token: &str) -> Option<String> {
        self.state.exchange.subject_of.lock().get(token).cloned()
    }
}

fn error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// Answers a token exchange request (the token endpoint's `grant_type` was
/// [`TOKEN_EXCHANGE`]).
pub(crate) fn token_exchange(
    state: &IdpState,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Response {
    let config = state.config.lock().clone();
    match client_credentials(headers, form) {
        Some((id, secret)) if id == config.client_id && secret == config.client_secret => {}
        _ => {
            return error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            );
        }
    }
    let subject_type = form.get("subject_token_type").map(String::as_str);
    if !matches!(subject_type, Some(ACCESS_TOKEN_TYPE | JWT_TOKEN_TYPE)) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "unsupported subject_token_type",
        );
    }
    let Some(claims) = form
        .get("subject_token")
        .and_then(|t| state.exchange.verify(t))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "subject_token is invalid or expired",
        );
    };
    let sub = claims["sub"].as_str().unwrap_or_default().to_owned();
    // Never past the subject token.
    let subject_left = claims["exp"].as_u64().unwrap_or(0).saturating_sub(now());
    let lifetime = config
        .lifetime
        .unwrap_or(Duration::from_secs(3600))
        .min(Duration::from_secs(subject_left));
    let n = state.issued.fetch_add(1, Ordering::SeqCst) + 1;
    let token = format!(
        "obo{n}.{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..)
    );
    state
        .live
        .lock()
        .insert(token.clone(), Some(Instant::now() + lifetime));
    if let Some(audience) = form.get("audience") {
        state
            .audience_of
            .lock()
            .insert(token.clone(), audience.clone());
    }
    state.exchange.subject_of.lock().insert(token.clone(), sub);
    state.exchange.exchanges.fetch_add(1, Ordering::SeqCst);
    Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "issued_token_type": ACCESS_TOKEN_TYPE,
        "expires_in": lifetime.as_secs(),
    }))
    .into_response()
}
