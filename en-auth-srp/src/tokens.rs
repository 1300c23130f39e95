//! [`CognitoTokens`]: what a Cognito login returns, as one token for the lifecycle.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use en_auth_core::{
    AccessToken, deserialize_optional_secret, serialize_optional_secret, serialize_secret,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Which of the user's tokens goes into the `Authorization` header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeaderToken {
    /// The access token (default): what resource servers and Cognito's own APIs expect.
    #[default]
    AccessToken,
    /// The ID token: what API Gateway's Cognito user-pool authorizers often expect.
    IdToken,
}

/// The tokens of one Cognito login: access, ID and refresh token.
#[derive(Clone, Serialize, Deserialize)]
pub struct CognitoTokens {
    #[serde(serialize_with = "serialize_secret")]
    access_token: SecretString,
    #[serde(
        default,
        serialize_with = "serialize_optional_secret",
        deserialize_with = "deserialize_optional_secret"
    )]
    id_token: Option<SecretString>,
    #[serde(
        default,
        serialize_with = "serialize_optional_secret",
        deserialize_with = "deserialize_optional_secret"
    )]
    refresh_token: Option<SecretString>,
    issued_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    /// The pool's internal user name (the access token's `username` claim).
    username: Option<String>,
    /// The device key the pool gave this login (device tracking), sent with refreshes.
    #[serde(default)]
    device_key: Option<String>,
    header: HeaderToken,
}

impl CognitoTokens {
    pub(crate) fn new(
        access_token: String,
        id_token: Option<String>,
        refresh_token: Option<String>,
        lifetime: Option<Duration>,
        header: HeaderToken,
    ) -> Self {
        let issued_at = Utc::now();
        let username = username_claim(&access_token);
        Self {
            access_token: access_token.into(),
            id_token: id_token.map(Into::into),
            refresh_token: refresh_token.map(Into::into),
            expires_at: lifetime
                .and_then(|l| chrono::Duration::from_std(l).ok())
                .map(|l| issued_at + l),
            issued_at,
            username,
            device_key: None,
            header,
        }
    }

    /// Records the device key the pool returned with this login.
    pub(crate) fn with_device_key(mut self, device_key: Option<String>) -> Self {
        self.device_key = device_key;
        self
    }

    /// Keeps `previous`'s refresh token when a refresh returned none (Cognito does not rotate
    /// refresh tokens unless configured to).
    pub(crate) fn keeping_refresh_token_of(mut self, previous: &CognitoTokens) -> Self {
        if self.refresh_token.is_none() {
            self.refresh_token = previous.refresh_token.clone();
        }
        if self.username.is_none() {
            self.username = previous.username.clone();
        }
        if self.device_key.is_none() {
            self.device_key = previous.device_key.clone();
        }
        self
    }

    /// The device key of the login, when the pool tracks devices (`NewDeviceMetadata`); sent
    /// as `DEVICE_KEY` with each refresh.
    pub fn device_key(&self) -> Option<&str> {
        self.device_key.as_deref()
    }

    /// The ID token, if the login returned one.
    pub fn id_token(&self) -> Option<&SecretString> {
        self.id_token.as_ref()
    }

    /// The access token.
    pub fn cognito_access_token(&self) -> &SecretString {
        &self.access_token
    }

    /// The refresh token, if any.
    pub fn refresh_token(&self) -> Option<&SecretString> {
        self.refresh_token.as_ref()
    }

    /// The pool's internal user name, read from the access token's `username` claim.
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }
}

impl AccessToken for CognitoTokens {
    fn access_token(&self) -> &str {
        match (self.header, &self.id_token) {
            (HeaderToken::IdToken, Some(id)) => id.expose_secret(),
            _ => self.access_token.expose_secret(),
        }
    }

    fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }

    fn issued_at(&self) -> Option<DateTime<Utc>> {
        Some(self.issued_at)
    }
}

impl fmt::Debug for CognitoTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CognitoTokens")
            .field("access_token", &"[REDACTED]")
            .field("id_token", &self.id_token.as_ref().map(|_| "[REDACTED]"))
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("expires_at", &self.expires_at)
            .field("username", &self.username)
            .field("header", &self.header)
            .finish()
    }
}

/// The `username` claim of a JWT, read without verification (it only selects the user name
/// for SECRET_HASH; Cognito verifies the refresh itself).
fn username_claim(jwt: &str) -> Option<String> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims
        .get("username")
        .or_else(|| claims.get("cognito:username"))
        .and_then(|v| v.as_str())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_token_is_selectable_and_secrets_are_redacted() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"username":"internal-7"}"#);
        let access = format!("h.{payload}.s");
        let tokens = CognitoTokens::new(
            access.clone(),
            Some("id-tok".into()),
            Some("ref-tok".into()),
            None,
            HeaderToken::IdToken,
        );
        assert_eq!(tokens.access_token(), "id-tok");
        assert_eq!(tokens.username(), Some("internal-7"));
        let debug = format!("{tokens:?}");
        assert!(
            !debug.contains("id-tok") && !debug.contains("ref-tok") && !debug.contains(&payload)
        );
        let access_only =
            CognitoTokens::new(access.clone(), None, None, None, HeaderToken::IdToken);
        assert_eq!(
            access_only.access_token(),
            access,
            "falls back to the access token"
        );
    }
}
