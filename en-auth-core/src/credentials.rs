//! What a client presents to an identity provider: [`ClientInfo`] and [`UserCredentials`].
//!
//! Secrets are held in [`secrecy::SecretString`]; `Debug` shows `[REDACTED]` in their place.

use std::fmt;

use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};

use crate::Error;

/// The standard `Authorization` header name.
pub const AUTHORIZATION_HEADER: &str = "Authorization";

/// The `X-Api-Key` header some APIs want beside the bearer token.
pub const API_KEY_HEADER: &str = "X-Api-Key";

/// An application's identity at its identity provider: client id, client secret and an
/// optional API key sent as [`API_KEY_HEADER`] with every request.
///
/// ```
/// use en_auth_core::ClientInfo;
/// let info = ClientInfo::new("my-service", "s3cr3t").with_api_key("key-123");
/// assert_eq!(info.client_id(), "my-service");
/// assert!(!format!("{info:?}").contains("s3cr3t"));
/// ```
#[derive(Clone)]
pub struct ClientInfo {
    client_id: String,
    client_secret: SecretString,
    api_key: Option<SecretString>,
}

impl ClientInfo {
    /// A client with the given id and secret. Public clients may pass an empty secret.
    pub fn new(client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: SecretString::from(client_secret.into()),
            api_key: None,
        }
    }

    /// Adds an API key, sent as `X-Api-Key` on every authorized request. An empty key is
    /// treated as no key (en_auth's default of `''`).
    ///
    /// A key that cannot be an HTTP header value (see [`try_with_api_key`]) is kept, and every
    /// request of an [`AuthMiddleware`](crate::AuthMiddleware) built on it fails with
    /// [`Error::InvalidConfiguration`] before anything is sent — it is never dropped silently.
    /// Use [`try_with_api_key`] to get the error here instead.
    ///
    /// [`try_with_api_key`]: ClientInfo::try_with_api_key
    pub fn with_api_key(mut self, api_key: impl Into<String>) -> Self {
        let key = api_key.into();
        self.api_key = (!key.is_empty()).then(|| SecretString::from(key));
        self
    }

    /// Like [`with_api_key`](ClientInfo::with_api_key), but refuses a key that cannot be sent
    /// as a header value — control characters (a trailing newline read from a file, say) or
    /// leading or trailing whitespace — with [`Error::InvalidConfiguration`]. The error does
    /// not contain the key.
    ///
    /// ```
    /// use en_auth_core::{ClientInfo, Error};
    /// assert!(ClientInfo::new("id", "secret").try_with_api_key("key-123").is_ok());
    /// let err = ClientInfo::new("id", "secret").try_with_api_key("key-123\n").unwrap_err();
    /// assert!(matches!(err, Error::InvalidConfiguration { .. }));
    /// ```
    pub fn try_with_api_key(self, api_key: impl Into<String>) -> Result<Self, Error> {
        let info = self.with_api_key(api_key);
        info.api_key_header()?;
        Ok(info)
    }

    /// The API key as a (sensitive) `X-Api-Key` header value, `None` without a key, or
    /// [`Error::InvalidConfiguration`] when the key cannot be one (what every adapter that
    /// sends the key checks, so that none drops it silently).
    pub fn api_key_header(&self) -> Result<Option<HeaderValue>, Error> {
        let Some(key) = &self.api_key else {
            return Ok(None);
        };
        let key = key.expose_secret();
        let invalid = |reason: &str| Error::InvalidConfiguration {
            setting: "api_key".into(),
            reason: format!("the API key {reason}; it cannot be sent as `{API_KEY_HEADER}`"),
        };
        if key.trim() != key {
            return Err(invalid("has leading or trailing whitespace"));
        }
        let mut value =
            HeaderValue::from_str(key).map_err(|_| invalid("contains control characters"))?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The client secret; call `expose_secret()` on it where it must be sent.
    pub fn client_secret(&self) -> &SecretString {
        &self.client_secret
    }

    /// Whether the client has a non-empty secret (Cognito app clients may have none).
    pub fn has_secret(&self) -> bool {
        !self.client_secret.expose_secret().is_empty()
    }

    /// The API key, if the client has one.
    pub fn api_key(&self) -> Option<&SecretString> {
        self.api_key.as_ref()
    }

    /// The `(client_id, client_secret)` pair for HTTP basic authentication, as en_auth's
    /// `to_basic_auth()`; the secret stays wrapped until the caller exposes it.
    pub fn to_basic_auth(&self) -> (&str, &SecretString) {
        (&self.client_id, &self.client_secret)
    }
}

impl fmt::Debug for ClientInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientInfo")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[REDACTED]")
            .field("api_key", &self.api_key.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

/// A user's name and password, for providers that log a user in (such as Cognito SRP).
///
/// ```
/// use en_auth_core::UserCredentials;
/// let creds = UserCredentials::new("alice", "correct horse");
/// assert_eq!(creds.user_name(), "alice");
/// assert!(!format!("{creds:?}").contains("horse"));
/// ```
#[derive(Clone)]
pub struct UserCredentials {
    user_name: String,
    password: SecretString,
}

impl UserCredentials {
    /// Credentials for `user_name` with `password`.
    pub fn new(user_name: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            user_name: user_name.into(),
            password: SecretString::from(password.into()),
        }
    }

    /// The user name used to log in.
    pub fn user_name(&self) -> &str {
        &self.user_name
    }

    /// The password; call `expose_secret()` where it must be used.
    pub fn password(&self) -> &SecretString {
        &self.password
    }
}

impl fmt::Debug for UserCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserCredentials")
            .field("user_name", &self.user_name)
            .field("password", &"[REDACTED]")
            .finish()
    }
}
