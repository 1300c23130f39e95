//! The one error type of en-auth.
//!
//! Every variant carries what a caller needs to act on it — the HTTP status, the identity
//! provider's `error` / `error_description`, when a rate limit resets — and never a secret:
//! no client secret, password, access token or refresh token is ever put into an `Error`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// Result alias used across en-auth.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while obtaining, refreshing or using a token.
///
/// Use [`Error::is_transient`] to tell failures worth retrying (rate limits, 5xx, timeouts)
/// from permanent ones (wrong secret, disallowed scope), and [`Error::retry_after`] for the
/// delay the server asked for.
///
/// ```
/// use en_auth_core::Error;
/// let err = Error::MissingConfiguration { setting: "EN_AUTH_CLIENT_ID".into() };
/// assert_eq!(err.to_string(), "missing configuration: EN_AUTH_CLIENT_ID is not set");
/// assert!(!err.is_transient());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The identity provider does not accept the client id / secret (OAuth2 `invalid_client`).
    #[error("invalid client{}: check the client id and secret", fmt_status(*.status))]
    InvalidClient {
        /// HTTP status of the provider's answer, when there was one.
        status: Option<u16>,
        /// The provider's `error_description`, if it sent one.
        description: Option<String>,
    },

    /// The user name or password was refused. The message is the same for an unknown user
    /// and a wrong password, so it cannot be used to find out which users exist.
    #[error("invalid credentials: the user name or password is wrong")]
    InvalidCredentials,

    /// The provider refused to authorize (`invalid_scope`, `invalid_target`,
    /// `unauthorized_client`, …) or answered with another error status.
    #[error("authorization failed{}: {error}{}", fmt_status(*.status), fmt_description(.description))]
    Authorization {
        /// HTTP status of the provider's answer, when there was one.
        status: Option<u16>,
        /// The provider's `error` code, such as `invalid_scope`.
        error: String,
        /// The provider's `error_description`.
        description: Option<String>,
        /// The provider's `error_uri`.
        error_uri: Option<String>,
    },

    /// The provider answered 429 (or its own throttling error) and retries did not get through.
    #[error("rate limited by the identity provider{}", fmt_reset(*.retry_after, *.reset_at))]
    RateLimited {
        /// How long the provider asked us to wait (`Retry-After`).
        retry_after: Option<Duration>,
        /// When the limit resets (`X-RateLimit-Reset`, or now + `Retry-After`).
        reset_at: Option<DateTime<Utc>>,
    },

    /// The provider failed with a server error (5xx); usually worth retrying.
    #[error("identity provider unavailable: HTTP {status}")]
    ServerError {
        /// The HTTP status code (500–599).
        status: u16,
        /// How long the provider asked us to wait (`Retry-After`), if it said.
        retry_after: Option<Duration>,
    },

    /// A required setting is absent, such as an environment variable.
    #[error("missing configuration: {setting} is not set")]
    MissingConfiguration {
        /// The name of the missing setting, e.g. `EN_AUTH_CLIENT_SECRET`.
        setting: String,
    },

    /// A setting is present but unusable (malformed URL, plain-http remote token endpoint, …).
    #[error("invalid configuration: {setting}: {reason}")]
    InvalidConfiguration {
        /// The name of the setting.
        setting: String,
        /// Why it cannot be used.
        reason: String,
    },

    /// A credential read afresh for each token request could not be read: a client assertion
    /// or subject token from a file (a Kubernetes projected service-account token) or from the
    /// application's callback (a SPIFFE workload API, a CI system's OIDC endpoint). No request
    /// was sent to the provider. Transient: a file being rotated or an agent restarting is
    /// retried with back-off.
    ///
    /// Names where the credential comes from (a path, or `callback`), never its content.
    #[error("credential unavailable: {credential}: {reason}")]
    CredentialUnavailable {
        /// Where it is read from: the file's path, or `callback`.
        credential: String,
        /// Why it could not be used (the I/O error, "empty", "too large", …).
        reason: String,
    },

    /// The identity provider asked for a step a machine cannot take (a new password, MFA).
    #[error(
        "the identity provider requires the `{challenge}` challenge, which en-auth cannot answer"
    )]
    UnsupportedChallenge {
        /// The challenge name, e.g. `NEW_PASSWORD_REQUIRED`.
        challenge: String,
    },

    /// The request did not complete: connection refused or reset, DNS, TLS, timeout.
    #[error("transport error{}: {message}", if *.timeout { " (timed out)" } else { "" })]
    Transport {
        /// What went wrong, without secrets.
        message: String,
        /// Whether the failure was a timeout.
        timeout: bool,
        /// The underlying error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// The provider answered something we cannot use: HTML error page, malformed JSON, a
    /// redirect, a token type we do not support.
    #[error("invalid response from the identity provider{}: {reason}", fmt_status(*.status))]
    InvalidResponse {
        /// HTTP status of the answer, when there was one.
        status: Option<u16>,
        /// What was wrong with it (never the body of a successful token response).
        reason: String,
    },

    /// An incoming token failed verification (bad signature, expired, wrong issuer or
    /// audience, malformed, …). The reason is for logs; callers only learn "invalid_token".
    #[error("invalid token: {reason}")]
    InvalidToken {
        /// Why the token was rejected.
        reason: String,
    },

    /// An incoming token is valid but lacks scopes or permissions the resource requires.
    #[error("insufficient scope: requires {}", .required.join(" "))]
    InsufficientScope {
        /// The scopes (or permissions) required.
        required: Vec<String>,
    },

    /// A token store (e.g. Redis) failed.
    #[error("token store error: {message}")]
    Store {
        /// What went wrong.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl Error {
    /// Whether retrying the same request later may succeed: rate limits, server errors,
    /// timeouts and connection failures. Configuration and credential errors are permanent,
    /// and so are TLS certificate failures (a wrong or untrusted certificate does not fix
    /// itself within a retry budget).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::RateLimited { .. }
            | Error::ServerError { .. }
            | Error::CredentialUnavailable { .. } => true,
            Error::Transport { .. } => !self.is_certificate_failure(),
            _ => false,
        }
    }

    /// Whether this is a transport failure caused by the server's TLS certificate (untrusted
    /// issuer, wrong name, expired), judged from the causes in the error chain. reqwest's own
    /// error is skipped (its text names the URL, which proves nothing), and a timeout is
    /// never a certificate failure.
    pub fn is_certificate_failure(&self) -> bool {
        let Error::Transport { timeout, .. } = self else {
            return false;
        };
        if *timeout {
            return false;
        }
        let mentions_certificate = |text: &str| {
            let text = text.to_ascii_lowercase();
            text.contains("certificate") || text.contains("unknownissuer")
        };
        let mut cause = std::error::Error::source(self);
        while let Some(err) = cause {
            if err.downcast_ref::<reqwest::Error>().is_none()
                && mentions_certificate(&err.to_string())
            {
                return true;
            }
            cause = err.source();
        }
        false
    }

    /// The delay the server asked for before the next attempt, if it named one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited {
                retry_after,
                reset_at,
            } => retry_after.or_else(|| reset_at.and_then(|at| (at - Utc::now()).to_std().ok())),
            Error::ServerError { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status of the identity provider's answer, when the error came from one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::InvalidClient { status, .. }
            | Error::Authorization { status, .. }
            | Error::InvalidResponse { status, .. } => *status,
            Error::ServerError { status, .. } => Some(*status),
            Error::RateLimited { .. } => Some(429),
            _ => None,
        }
    }

    /// A transport error from any source, with the message taken from it.
    pub fn transport(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Transport {
            message: source.to_string(),
            timeout: false,
            source: Some(Box::new(source)),
        }
    }

    /// A store error from any source.
    pub fn store(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Store {
            message: source.to_string(),
            source: Some(Box::new(source)),
        }
    }
}

impl From<reqwest::Error> for Error {
    fn from(mut err: reqwest::Error) -> Self {
        // The URL reqwest includes tells the operator which endpoint failed; its user name,
        // password, query and fragment (which may carry secrets) are removed.
        if let Some(url) = err.url_mut() {
            crate::endpoint::strip_secrets(url);
        }
        Error::Transport {
            message: err.to_string(),
            timeout: err.is_timeout(),
            source: Some(Box::new(err)),
        }
    }
}

impl Error {
    /// A copy of a shared error, for one more caller of the fetch that failed `elapsed` ago.
    /// The copy keeps the message and the chain of causes (shared, not cloned); a
    /// server-named delay counts down by `elapsed`.
    pub(crate) fn shared_copy(self: &Arc<Self>, elapsed: Duration) -> Error {
        let shared_source = || -> Option<Box<dyn std::error::Error + Send + Sync>> {
            std::error::Error::source(&**self)
                .map(|_| Box::new(SharedSource(Arc::clone(self))) as Box<_>)
        };
        match &**self {
            Error::InvalidClient {
                status,
                description,
            } => Error::InvalidClient {
                status: *status,
                description: description.clone(),
            },
            Error::InvalidCredentials => Error::InvalidCredentials,
            Error::Authorization {
                status,
                error,
                description,
                error_uri,
            } => Error::Authorization {
                status: *status,
                error: error.clone(),
                description: description.clone(),
                error_uri: error_uri.clone(),
            },
            Error::RateLimited {
                retry_after,
                reset_at,
            } => Error::RateLimited {
                retry_after: retry_after.map(|d| d.saturating_sub(elapsed)),
                reset_at: *reset_at,
            },
            Error::ServerError {
                status,
                retry_after,
            } => Error::ServerError {
                status: *status,
                retry_after: retry_after.map(|d| d.saturating_sub(elapsed)),
            },
            Error::MissingConfiguration { setting } => Error::MissingConfiguration {
                setting: setting.clone(),
            },
            Error::InvalidConfiguration { setting, reason } => Error::InvalidConfiguration {
                setting: setting.clone(),
                reason: reason.clone(),
            },
            Error::CredentialUnavailable { credential, reason } => Error::CredentialUnavailable {
                credential: credential.clone(),
                reason: reason.clone(),
            },
            Error::UnsupportedChallenge { challenge } => Error::UnsupportedChallenge {
                challenge: challenge.clone(),
            },
            Error::Transport {
                message, timeout, ..
            } => Error::Transport {
                message: message.clone(),
                timeout: *timeout,
                source: shared_source(),
            },
            Error::InvalidResponse { status, reason } => Error::InvalidResponse {
                status: *status,
                reason: reason.clone(),
            },
            Error::InvalidToken { reason } => Error::InvalidToken {
                reason: reason.clone(),
            },
            Error::InsufficientScope { required } => Error::InsufficientScope {
                required: required.clone(),
            },
            Error::Store { message, .. } => Error::Store {
                message: message.clone(),
                source: shared_source(),
            },
        }
    }
}

/// Stands in for the source of a shared error: shows it and continues its chain.
struct SharedSource(Arc<Error>);

impl SharedSource {
    fn original(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.0)
    }
}

impl std::fmt::Display for SharedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.original() {
            Some(source) => std::fmt::Display::fmt(source, f),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for SharedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.original() {
            Some(source) => std::fmt::Debug::fmt(source, f),
            None => Ok(()),
        }
    }
}

impl std::error::Error for SharedSource {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.original().and_then(std::error::Error::source)
    }
}

fn fmt_status(status: Option<u16>) -> String {
    status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
}

fn fmt_description(description: &Option<String>) -> String {
    description
        .as_deref()
        .map(|d| format!(" ({d})"))
        .unwrap_or_default()
}

fn fmt_reset(retry_after: Option<Duration>, reset_at: Option<DateTime<Utc>>) -> String {
    match (retry_after, reset_at) {
        (_, Some(at)) => format!("; the limit resets at {}", at.to_rfc3339()),
        (Some(d), None) => format!("; retry after {} s", d.as_secs_f64()),
        (None, None) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_failures_are_not_transient_other_transport_errors_are() {
        let certificate = Error::transport(std::io::Error::other(
            "invalid peer certificate: UnknownIssuer",
        ));
        assert!(certificate.is_certificate_failure());
        assert!(!certificate.is_transient());
        let refused = Error::transport(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        assert!(!refused.is_certificate_failure());
        assert!(refused.is_transient());
        // A URL that happens to contain the word proves nothing.
        let by_name = Error::Transport {
            message: "error sending request for url (https://certificate.example.com/token)".into(),
            timeout: false,
            source: None,
        };
        assert!(by_name.is_transient());
    }

    #[test]
    fn a_shared_copy_keeps_the_message_and_chain_and_counts_down() {
        let original = Arc::new(Error::transport(std::io::Error::other("reset by peer")));
        let copy = original.shared_copy(Duration::ZERO);
        assert_eq!(copy.to_string(), original.to_string());
        let source = std::error::Error::source(&copy).expect("a source");
        assert_eq!(source.to_string(), "reset by peer");

        let limited = Arc::new(Error::RateLimited {
            retry_after: Some(Duration::from_secs(60)),
            reset_at: None,
        });
        let later = limited.shared_copy(Duration::from_secs(45));
        assert_eq!(later.retry_after(), Some(Duration::from_secs(15)));
    }
}
