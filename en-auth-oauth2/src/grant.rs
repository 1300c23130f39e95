//! What the token exchange, JWT bearer and password grants share: what the token is asked for
//! ([`TokenTarget`]), client authentication that may be absent, and one token request sent
//! through the crate's token-request path.
//!
//! Both grants may be used by a public client (one without a secret, which only names itself
//! with `client_id`), and RFC 7523 §3.2 lets a JWT bearer grant go without any client
//! authentication. So, unlike the client-credentials grant, a client with an empty secret is
//! not authenticated by default: it sends `client_id` alone (or nothing, when the id is empty
//! too).

use crate::token_client::TokenClient;
use std::fmt;
use std::time::{Duration, Instant};

use en_auth_core::{CacheKeyBuilder, ClientInfo, Error, untrusted_text, url_for_logs};
use reqwest::Url;
use secrecy::ExposeSecret;
use tracing::Instrument;

use crate::client_auth::ClientAuthentication;
use crate::endpoint::{form_request, send_once, token_request};
use crate::response::{GrantedToken, parse_token_response};

/// What a token is asked for: `audience` and `resource` (each repeatable) and `scope`.
#[derive(Clone, Debug, Default)]
pub(crate) struct TokenTarget {
    pub(crate) audiences: Vec<String>,
    pub(crate) resources: Vec<String>,
    scopes: Vec<String>,
    /// `scopes`, space-separated: the `scope` parameter.
    scope: String,
}

impl TokenTarget {
    pub(crate) fn set_scopes<I, S>(&mut self, scopes: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self.scope = self.scopes.join(" ");
    }

    /// Adds `audience`, `resource` and `scope` (those set) to a token request's form.
    pub(crate) fn add_to_form<'a>(&'a self, form: &mut Vec<(&'a str, &'a str)>) {
        form.extend(self.audiences.iter().map(|a| ("audience", a.as_str())));
        form.extend(self.resources.iter().map(|r| ("resource", r.as_str())));
        if !self.scope.is_empty() {
            form.push(("scope", &self.scope));
        }
    }

    /// Adds the target to a cache key (order of scopes aside, a different target is a
    /// different token).
    pub(crate) fn add_to_cache_key(&self, mut key: CacheKeyBuilder) -> CacheKeyBuilder {
        let mut scopes = self.scopes.clone();
        scopes.sort();
        key = key.part("scopes", &scopes.join(" "));
        for audience in &self.audiences {
            key = key.part("audience", audience);
        }
        for resource in &self.resources {
            key = key.part("resource", resource);
        }
        key
    }
}

/// How a grant of this module authenticates the client.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) enum GrantAuthentication {
    /// `client_secret_basic` when the client has a secret; otherwise as [`Public`](Self::Public).
    #[default]
    Default,
    /// As the [`ClientAuthentication`] says.
    Client(ClientAuthentication),
    /// No client authentication: `client_id` in the form when the id is not empty.
    Public,
}

impl GrantAuthentication {
    /// The client authentication to use for `info`, `None` for none.
    fn resolve<'a>(&'a self, info: &ClientInfo) -> Option<&'a ClientAuthentication> {
        static BASIC: ClientAuthentication = ClientAuthentication::ClientSecretBasic;
        match self {
            Self::Default if info.client_secret().expose_secret().is_empty() => None,
            Self::Default => Some(&BASIC),
            Self::Client(authentication) => Some(authentication),
            Self::Public => None,
        }
    }

    /// The client certificate token requests present (mutual TLS), if any.
    pub(crate) fn tls_identity(&self) -> Option<&crate::TlsClientIdentity> {
        match self {
            Self::Client(authentication) => authentication.tls_identity(),
            _ => None,
        }
    }

    /// Adds what distinguishes this authentication to a cache key.
    pub(crate) fn add_to_cache_key(
        &self,
        info: &ClientInfo,
        key: CacheKeyBuilder,
    ) -> CacheKeyBuilder {
        match self.resolve(info) {
            Some(authentication) => authentication.add_to_cache_key(key),
            None => key.part("client_authentication", "none"),
        }
    }
}

impl fmt::Debug for GrantAuthentication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("Default"),
            Self::Client(authentication) => fmt::Debug::fmt(authentication, f),
            Self::Public => f.write_str("None"),
        }
    }
}

/// Who sends a grant's token request, and how.
pub(crate) struct GrantClient<'a> {
    /// Chooses the HTTP client: one presenting the certificate, with mutual TLS.
    pub(crate) http: &'a TokenClient,
    pub(crate) info: &'a ClientInfo,
    pub(crate) authentication: &'a GrantAuthentication,
    /// Lifetime of tokens whose answer has no `expires_in`.
    pub(crate) default_lifetime: Option<Duration>,
}

/// Sends one token request of grant `grant` (named in the span) with `form` plus the client's
/// authentication, checks a successful answer's body with `check` (for what only this grant
/// reads), and parses the answer through the crate's shared parser. Any failure is logged once,
/// at debug level, in the request's span (errors never carry a secret).
pub(crate) async fn send_grant(
    client: GrantClient<'_>,
    url: &Url,
    grant: &'static str,
    mut form: Vec<(&str, &str)>,
    check: impl FnOnce(u16, &[u8]) -> Result<(), Error>,
) -> Result<GrantedToken, Error> {
    let GrantClient {
        http,
        info,
        authentication,
        default_lifetime,
    } = client;
    let span = tracing::debug_span!(
        "en_auth.token_request",
        endpoint = %url_for_logs(url),
        client_id = info.client_id(),
        grant,
        status = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
    );
    let result = async {
        let http = match authentication {
            GrantAuthentication::Client(authentication) => {
                http.for_token_requests(authentication)?
            }
            _ => http.plain()?,
        };
        let request = match authentication.resolve(info) {
            Some(authentication) => token_request(http, url, info, authentication, form).await?,
            None => {
                if !info.client_id().is_empty() {
                    form.push(("client_id", info.client_id()));
                }
                form_request(http, url, form)
            }
        };
        let started = Instant::now();
        let (status, headers, body) = send_once(request).await?;
        let span = tracing::Span::current();
        span.record("status", status);
        span.record("duration_ms", started.elapsed().as_millis() as u64);
        if (200..300).contains(&status) {
            check(status, &body)?;
        }
        let granted = parse_token_response(status, &headers, &body, default_lifetime)?;
        if let Some(scope) = &granted.scope {
            tracing::debug!(granted_scope = %untrusted_text(scope), "token granted");
        }
        Ok(granted)
    }
    .instrument(span.clone())
    .await;
    if let Err(err) = &result {
        span.in_scope(|| tracing::debug!(error = %err, "token request failed"));
    }
    result
}
