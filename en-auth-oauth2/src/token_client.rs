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

use std::sync::OnceLock;
use std::time::Duration;

use en_auth_core::{CONNECT_TIMEOUT, Error, REQUEST_TIMEOUT, provider_http_client_with_identity};

use crate::client_auth::ClientAuthentication;

/// The HTTP clients of one authorizer: see the [module](self) documentation.
#[derive(Clone)]
pub(crate) struct TokenClient {
    setting: Setting,
    /// Without a certificate: discovery, and token requests without mTLS.
    plain: OnceLock<Result<reqwest::Client, String>>,
    /// Presenting the authentication's certificate (built by en-auth only).
    tls: OnceLock<Result<reqwest::Client, String>>,
}

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
            plain: OnceLock::new(),
            tls: OnceLock::new(),
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
            } => provider_http_client_with_identity(*connect, *total, None, roots)
                .map_err(|e| e.to_string()),
            Setting::Custom(http) => Ok(http.clone()),
        });
        built.as_ref().map_err(|reason| invalid(reason.clone()))
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
            )
            .map_err(|e| e.to_string()),
            Setting::Custom(_) => Err(
                "a client given with `with_http_client` cannot be made to present the client \
                 certificate of tls_client_auth / self_signed_tls_client_auth: drop \
                 `with_http_client` and configure en-auth's client (`with_timeouts`, \
                 `with_root_certificate`)"
                    .to_owned(),
            ),
        });
        built.as_ref().map_err(|reason| invalid(reason.clone()))
    }

    /// Forgets the client built for the authentication's certificate (the authentication
    /// changed).
    pub(crate) fn authentication_changed(&mut self) {
        self.tls = OnceLock::new();
    }
}

fn invalid(reason: String) -> Error {
    Error::InvalidConfiguration {
        setting: "HTTP client for token requests".into(),
        reason,
    }
}
