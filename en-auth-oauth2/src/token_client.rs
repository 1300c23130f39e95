//! Which HTTP client a grant sends its requests to the identity provider with:
//! [`TokenClient`].
//!
//! # The rule
//!
//! - en-auth builds the client from the settings (`with_timeouts`,
//!   `with_root_certificate`) when it is first needed, so the order of the builder calls
//!   does not matter.
//! - With mutual TLS client authentication (`tls_client_auth`,
//!   `self_signed_tls_client_auth`), token requests go through a client that presents the
//!   authentication's certificate, whenever the authentication was set. OIDC discovery
//!   needs no certificate and goes through a client without it.
//! - A client of your own (`with_http_client`) is used as it is, for discovery and token
//!   requests. en-auth cannot add a certificate to a client it did not build, so with mutual
//!   TLS authentication every token request fails with
//!   [`Error::InvalidConfiguration`] (before anything is sent) rather than going out without
//!   the certificate: configure en-auth's client instead.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use en_auth_core::{CONNECT_TIMEOUT, Error, REQUEST_TIMEOUT, provider_http_client_with_identity};

use crate::client_auth::ClientAuthentication;

/// The HTTP clients of one authorizer: see the [module](self) documentation.
///
/// Clones share the clients built so far and those built later (one connection pool, one
/// load of the CA certificates, for all the callers of an `OnBehalfOf`, say); a setter called
/// on a clone gives that clone clients of its own, leaving the others as they were.
#[derive(Clone)]
pub(crate) struct TokenClient {
    setting: Setting,
    /// Without a certificate: discovery, and token requests without mTLS.
    plain: Built,
    /// Presenting the authentication's certificate (built by en-auth only).
    tls: Built,
}

/// A client built once when first needed, shared by clones.
type Built = Arc<OnceLock<Result<reqwest::Client, Error>>>;

#[derive(Clone)]
enum Setting {
    Built {
        connect: Duration,
        total: Duration,
        roots: Vec<reqwest::Certificate>,
    },
    Custom(reqwest::Client),
}

impl TokenClient {
    /// en-auth's client with the default timeouts.
    pub(crate) fn new() -> Self {
        Self::with(Setting::Built {
            connect: CONNECT_TIMEOUT,
            total: REQUEST_TIMEOUT,
            roots: Vec::new(),
        })
    }

    fn with(setting: Setting) -> Self {
        Self {
            setting,
            plain: Built::default(),
            tls: Built::default(),
        }
    }

    /// en-auth's client with these timeouts (replacing a client of your own), keeping the
    /// roots added so far.
    pub(crate) fn set_timeouts(&mut self, connect: Duration, total: Duration) {
        let (_, _, roots) = self.built_parts();
        *self = Self::with(Setting::Built {
            connect,
            total,
            roots,
        });
    }

    /// Trusts `root` besides the system's roots (replacing a client of your own).
    pub(crate) fn add_root(&mut self, root: reqwest::Certificate) {
        let (connect, total, mut roots) = self.built_parts();
        roots.push(root);
        *self = Self::with(Setting::Built {
            connect,
            total,
            roots,
        });
    }

    /// The settings of en-auth's client so far (the defaults after a client of your own).
    fn built_parts(&self) -> (Duration, Duration, Vec<reqwest::Certificate>) {
        match &self.setting {
            Setting::Built {
                connect,
                total,
                roots,
            } => (*connect, *total, roots.clone()),
            Setting::Custom(_) => (CONNECT_TIMEOUT, REQUEST_TIMEOUT, Vec::new()),
        }
    }

    /// Your own client, used as it is.
    pub(crate) fn set_custom(&mut self, http: reqwest::Client) {
        *self = Self::with(Setting::Custom(http));
    }

    /// The client for requests that need no certificate (OIDC discovery).
    pub(crate) fn plain(&self) -> Result<&reqwest::Client, Error> {
        let built = self.plain.get_or_init(|| match &self.setting {
            Setting::Built {
                connect,
                total,
                roots,
            } => provider_http_client_with_identity(*connect, *total, None, roots),
            Setting::Custom(http) => Ok(http.clone()),
        });
        built.as_ref().map_err(copy)
    }

    /// The client for token requests authenticated with `authentication`: presenting its
    /// certificate, if it has one.
    pub(crate) fn for_token_requests(
        &self,
        authentication: &ClientAuthentication,
    ) -> Result<&reqwest::Client, Error> {
        let Some(identity) = authentication.tls_identity() else {
            return self.plain();
        };
        let built = self.tls.get_or_init(|| match &self.setting {
            Setting::Built {
                connect,
                total,
                roots,
            } => provider_http_client_with_identity(
                *connect,
                *total,
                Some(identity.reqwest_identity()),
                roots,
            ),
            Setting::Custom(_) => Err(invalid(
                "a client given with `with_http_client` cannot be made to present the client \
                 certificate of tls_client_auth / self_signed_tls_client_auth: drop \
                 `with_http_client` and configure en-auth's client (`with_timeouts`, \
                 `with_root_certificate`)"
                    .to_owned(),
            )),
        });
        built.as_ref().map_err(copy)
    }

    /// Forgets the client built for the authentication's certificate (the authentication
    /// changed).
    pub(crate) fn authentication_changed(&mut self) {
        self.tls = Built::default();
    }
}

/// A copy of the error a client was built with, its setting name and reason kept.
fn copy(err: &Error) -> Error {
    match err {
        Error::InvalidConfiguration { setting, reason } => Error::InvalidConfiguration {
            setting: setting.clone(),
            reason: reason.clone(),
        },
        other => invalid(other.to_string()),
    }
}

fn invalid(reason: String) -> Error {
    Error::InvalidConfiguration {
        setting: "HTTP client for token requests".into(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_built_clients_until_a_setter_changes_one() {
        // Cloned before the client is built (an `OnBehalfOf` cloning its settings for each
        // caller): built once through one of them, the same client (the same pool) for all.
        let first = TokenClient::new();
        let mut second = first.clone();
        let third = second.clone();
        let built = third.plain().expect("a client");
        assert!(std::ptr::eq(built, first.plain().expect("a client")));
        assert!(std::ptr::eq(built, second.plain().expect("a client")));
        // A setter on a clone: a client of its own, the others keep theirs.
        second.set_timeouts(Duration::from_secs(1), Duration::from_secs(2));
        let changed = second.plain().expect("a client");
        assert!(!std::ptr::eq(changed, built));
        assert!(std::ptr::eq(built, first.plain().expect("a client")));
        assert!(std::ptr::eq(built, third.plain().expect("a client")));
        second.authentication_changed();
        assert!(Arc::ptr_eq(&first.tls, &third.tls));
        assert!(!Arc::ptr_eq(&first.tls, &second.tls));
    }

    #[test]
    fn a_custom_client_with_a_certificate_is_refused_with_the_setting_named() {
        let mut client = TokenClient::new();
        client.set_custom(reqwest::Client::new());
        let pki = en_auth_testkit::TestPki::create();
        let key = pki.client("c", "/CN=c");
        let authentication =
            ClientAuthentication::tls_client_auth(&key.cert_pem, &key.key_pem).expect("pair");
        let err = client
            .for_token_requests(&authentication)
            .expect_err("refused");
        assert!(
            matches!(&err, Error::InvalidConfiguration { setting, reason }
                if setting == "HTTP client for token requests" && reason.contains("with_http_client")),
            "{err:?}"
        );
    }
}
