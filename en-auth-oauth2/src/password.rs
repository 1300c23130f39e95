//! [`PasswordAuthorizer`]: a user's token from their name and password (RFC 6749 §4.3, and
//! Auth0's `password-realm` grant), renewed with the refresh token the provider returned.
//!
//! The rules, in the order a token's life meets them:
//! - **Login**: `grant_type=password` with `username` and `password` (or Auth0's
//!   `http://auth0.com/oauth/grant-type/password-realm` with `realm` when
//!   [`with_realm`](PasswordAuthorizer::with_realm) is set), plus `audience` / `scope` and the
//!   client's authentication ([`ClientAuthentication`]).
//! - **Refresh**: when the login (or a refresh) returned a `refresh_token`, the lifecycle's
//!   refresh uses `grant_type=refresh_token` instead of sending the password again. A rotated
//!   refresh token (a new one in the answer) replaces the old one; an answer without one keeps
//!   the old one.
//! - **Refused refresh**: `invalid_grant` on a refresh (revoked, expired or already-rotated
//!   refresh token) falls back to one new login. If that fails, its error is returned.
//! - **Errors**: `invalid_grant` on a login is [`Error::InvalidCredentials`]; Auth0's
//!   `mfa_required` is [`Error::UnsupportedChallenge`] (a machine cannot answer it).
//!
//! The password and refresh token are [`SecretString`]s: never in `Debug`, errors or logs.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use en_auth_core::{
    AccessToken, Authorizer, BearerToken, CacheKey, ClientInfo, Error, UserCredentials,
    deserialize_optional_secret, secure_url, serialize_optional_secret, str_for_logs,
};
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::client_auth::ClientAuthentication;
use crate::grant::{GrantAuthentication, GrantClient, send_grant};
use crate::token_client::TokenClient;

/// Auth0's grant for a password login against a named connection (`realm`).
pub const PASSWORD_REALM_GRANT: &str = "http://auth0.com/oauth/grant-type/password-realm";

/// The challenge name in [`Error::UnsupportedChallenge`] when the provider wants a second
/// factor (Auth0's `mfa_required`).
pub const MFA_REQUIRED: &str = "mfa_required";

/// A user's access token and, when the provider returned one, the refresh token that renews
/// it. `Debug` redacts both; serialized (for a token store you trust) both are in clear.
#[derive(Clone, Serialize, Deserialize)]
pub struct PasswordToken {
    access: BearerToken,
    #[serde(
        default,
        serialize_with = "serialize_optional_secret",
        deserialize_with = "deserialize_optional_secret"
    )]
    refresh_token: Option<SecretString>,
}

impl PasswordToken {
    /// Whether a refresh token came with this token (then refreshes do not send the password).
    pub fn has_refresh_token(&self) -> bool {
        self.refresh_token.is_some()
    }

    /// The refresh token; call `expose_secret()` where it must be used.
    pub fn refresh_token(&self) -> Option<&SecretString> {
        self.refresh_token.as_ref()
    }
}

impl AccessToken for PasswordToken {
    fn access_token(&self) -> &str {
        self.access.access_token()
    }

    fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.access.expires_at()
    }

    fn issued_at(&self) -> Option<DateTime<Utc>> {
        self.access.issued_at()
    }
}

impl fmt::Debug for PasswordToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordToken")
            .field("access", &self.access)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[REDACTED]"),
            )
            .finish()
    }
}

/// The part of a token response only this grant reads.
#[derive(Deserialize)]
struct RefreshField {
    refresh_token: Option<String>,
}

/// Logs a user in with the OAuth2 password grant (auth0-python's `GetToken.login`) and keeps
/// the session alive with refresh tokens.
///
/// ```no_run
/// use en_auth_core::{AuthMiddleware, ClientInfo, UserCredentials};
/// use en_auth_oauth2::PasswordAuthorizer;
///
/// let authorizer = PasswordAuthorizer::new(
///     ClientInfo::new("my-client-id", "my-client-secret"),
///     UserCredentials::new("alice@example.com", "correct horse battery staple"),
///     "https://tenant.us.auth0.com/oauth/token",
/// )
/// .with_realm("Username-Password-Authentication")
/// .with_audience("https://api.example.com")
/// .with_scopes(["openid", "offline_access", "read:orders"]);
/// let auth = AuthMiddleware::new(authorizer);
/// ```
///
/// Ask for `offline_access` where the provider (Auth0, Okta) wants it before it issues a
/// refresh token; without one, every renewal is a new login.
pub struct PasswordAuthorizer {
    info: ClientInfo,
    credentials: UserCredentials,
    token_url: String,
    realm: Option<String>,
    audience: Option<String>,
    scopes: Vec<String>,
    /// Always a client authentication (default `client_secret_basic`), never none.
    authentication: GrantAuthentication,
    default_lifetime: Option<Duration>,
    http: TokenClient,
}

impl PasswordAuthorizer {
    /// An authorizer logging `credentials` in as client `client_info` at `token_url` (which
    /// must be `https://`, or `http://` on loopback; checked before each request).
    pub fn new(
        client_info: ClientInfo,
        credentials: UserCredentials,
        token_url: impl AsRef<str>,
    ) -> Self {
        Self {
            info: client_info,
            credentials,
            token_url: token_url.as_ref().to_owned(),
            realm: None,
            audience: None,
            scopes: Vec::new(),
            authentication: GrantAuthentication::Client(ClientAuthentication::default()),
            default_lifetime: None,
            http: TokenClient::new(),
        }
    }

    /// Logs in against this Auth0 connection (`realm`), with Auth0's `password-realm` grant.
    pub fn with_realm(mut self, realm: impl Into<String>) -> Self {
        self.realm = Some(realm.into());
        self
    }

    /// Asks for a token for this API (Auth0's `audience` parameter).
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Asks for these scopes (sent space-separated as `scope`).
    pub fn with_scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// How the client authenticates (default: `client_secret_basic`; a public client with an
    /// empty secret may use [`ClientAuthentication::ClientSecretPost`]).
    ///
    /// With mutual TLS ([`ClientAuthentication::tls_client_auth`]) token requests present the
    /// certificate, and so does
    /// [`AuthMiddleware::client`](en_auth_core::AuthMiddleware::client) for the bound tokens;
    /// the rules are those of
    /// [`ServiceAccountAuthorizer::with_authentication`](crate::ServiceAccountAuthorizer::with_authentication).
    pub fn with_authentication(mut self, authentication: ClientAuthentication) -> Self {
        self.authentication = GrantAuthentication::Client(authentication);
        self.http.authentication_changed();
        self
    }

    /// Lifetime given to tokens whose response has no `expires_in`.
    pub fn with_default_lifetime(mut self, lifetime: Duration) -> Self {
        self.default_lifetime = Some(lifetime);
        self
    }

    /// Uses your own HTTP client for token requests (build it without redirects and with
    /// timeouts, as en-auth's own is). Not with mutual TLS client authentication: token
    /// requests then fail with [`Error::InvalidConfiguration`] rather than go out without the
    /// certificate (see [`with_root_certificate`](Self::with_root_certificate)).
    pub fn with_http_client(mut self, http: reqwest::Client) -> Self {
        self.http.set_custom(http);
        self
    }

    /// Trusts this certificate authority for the provider's TLS certificate, besides the
    /// system's roots. Replaces a client given with
    /// [`with_http_client`](Self::with_http_client).
    pub fn with_root_certificate(mut self, root: reqwest::Certificate) -> Self {
        self.http.add_root(root);
        self
    }

    async fn login(&self) -> Result<PasswordToken, Error> {
        let scope = self.scopes.join(" ");
        let mut form = vec![
            (
                "grant_type",
                if self.realm.is_some() {
                    PASSWORD_REALM_GRANT
                } else {
                    "password"
                },
            ),
            ("username", self.credentials.user_name()),
            ("password", self.credentials.password().expose_secret()),
        ];
        if let Some(realm) = &self.realm {
            form.push(("realm", realm));
        }
        if let Some(audience) = &self.audience {
            form.push(("audience", audience));
        }
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        match self.request("password", form).await {
            Err(Error::Authorization { error, .. }) if error == "invalid_grant" => {
                Err(Error::InvalidCredentials)
            }
            other => other.map(|(access, refresh_token)| PasswordToken {
                access,
                refresh_token,
            }),
        }
    }

    async fn refresh_with(
        &self,
        previous: &PasswordToken,
        refresh_token: &SecretString,
    ) -> Result<PasswordToken, Error> {
        let form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose_secret()),
        ];
        let (access, rotated) = self.request("refresh_token", form).await?;
        Ok(PasswordToken {
            access,
            refresh_token: rotated.or_else(|| previous.refresh_token.clone()),
        })
    }

    /// Sends one token request of `grant` (named in the span) with `form` plus the client's
    /// authentication, through the grants' shared path; the answer's refresh token, if any.
    async fn request(
        &self,
        grant: &'static str,
        form: Vec<(&str, &str)>,
    ) -> Result<(BearerToken, Option<SecretString>), Error> {
        let url: Url = secure_url("token_url", &self.token_url)?;
        let client = GrantClient {
            http: &self.http,
            info: &self.info,
            authentication: &self.authentication,
            default_lifetime: self.default_lifetime,
        };
        let mut refresh_token = None;
        let granted = send_grant(client, &url, grant, form, |_, body| {
            refresh_token = serde_json::from_slice::<RefreshField>(body)
                .ok()
                .and_then(|f| f.refresh_token)
                .filter(|t| !t.is_empty())
                .map(SecretString::from);
            Ok(())
        })
        .await
        .map_err(mfa_required)?;
        Ok((granted.token, refresh_token))
    }
}

/// Auth0's `mfa_required` (and `mfa_registration_required`): a step en-auth cannot take.
fn mfa_required(err: Error) -> Error {
    match err {
        Error::Authorization { error, .. } if error.starts_with("mfa_") => {
            Error::UnsupportedChallenge {
                challenge: if error == MFA_REQUIRED {
                    MFA_REQUIRED.to_owned()
                } else {
                    error
                },
            }
        }
        other => other,
    }
}

#[async_trait]
impl Authorizer for PasswordAuthorizer {
    type Token = PasswordToken;

    fn client_info(&self) -> &ClientInfo {
        &self.info
    }

    async fn authorize(&self) -> Result<PasswordToken, Error> {
        self.login().await
    }

    fn tls_client_identity(&self) -> Option<reqwest::Identity> {
        self.authentication
            .tls_identity()
            .map(crate::TlsClientIdentity::reqwest_identity)
    }

    async fn refresh(&self, token: &PasswordToken) -> Result<PasswordToken, Error> {
        let Some(refresh_token) = &token.refresh_token else {
            return self.login().await;
        };
        match self.refresh_with(token, refresh_token).await {
            Err(Error::Authorization { ref error, .. }) if error == "invalid_grant" => {
                tracing::debug!(
                    client_id = self.info.client_id(),
                    "refresh token refused (invalid_grant); logging in again"
                );
                self.login().await
            }
            other => other,
        }
    }

    /// `true`: a refresh spends the token's refresh token (rotated by many providers), and a
    /// refused one falls back to a login; a fleet refreshes from the newest stored token.
    fn refresh_spends_token(&self) -> bool {
        true
    }

    fn cache_key(&self) -> CacheKey {
        let mut scopes = self.scopes.clone();
        scopes.sort();
        // Like the SRP key: the user name, not the password (a keyed hash of a password in a
        // shared store would still be a target for guessing if the fleet key leaked).
        let key = CacheKey::builder("oauth2-password")
            .part("endpoint", &self.token_url)
            .part("client_id", self.info.client_id())
            .secret("client_secret", self.info.client_secret().expose_secret())
            .part("username", self.credentials.user_name())
            .part("realm", self.realm.as_deref().unwrap_or(""))
            .part("audience", self.audience.as_deref().unwrap_or(""))
            .part("scopes", &scopes.join(" "));
        self.authentication
            .add_to_cache_key(&self.info, key)
            .build()
    }
}

impl fmt::Debug for PasswordAuthorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordAuthorizer")
            .field("client_info", &self.info)
            .field("credentials", &self.credentials)
            .field("token_url", &str_for_logs(&self.token_url))
            .field("realm", &self.realm)
            .field("audience", &self.audience)
            .field("scopes", &self.scopes)
            .field("authentication", &self.authentication)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mfa_answers_are_unsupported_challenges() {
        let err = mfa_required(Error::Authorization {
            status: Some(403),
            error: "mfa_required".into(),
            description: Some("Multifactor authentication required".into()),
            error_uri: None,
        });
        assert!(
            matches!(err, Error::UnsupportedChallenge { ref challenge } if challenge == MFA_REQUIRED)
        );
        let other = mfa_required(Error::Authorization {
            status: Some(400),
            error: "invalid_scope".into(),
            description: None,
            error_uri: None,
        });
        assert!(matches!(other, Error::Authorization { .. }));
    }

    #[test]
    fn debug_redacts_password_and_refresh_token() {
        let token = PasswordToken {
            access: BearerToken::new("access-abc", None),
            refresh_token: Some(SecretString::from("refresh-xyz".to_owned())),
        };
        let shown = format!("{token:?}");
        assert!(!shown.contains("refresh-xyz") && !shown.contains("access-abc"));
        let auth = PasswordAuthorizer::new(
            ClientInfo::new("c", "client-secret-1"),
            UserCredentials::new("alice", "hunter2-password"),
            "https://idp.example.com/oauth/token",
        );
        let shown = format!("{auth:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("client-secret-1"));
    }
}
