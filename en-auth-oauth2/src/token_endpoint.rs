//! One token request, for callers that drive their own token lifecycle (the token proxy):
//! [`request_token`] sends a form to a token endpoint with the client's authentication and
//! hands back the answer's status and headers — of every answer, successful ones included,
//! for the rate-limit headers — with the parsed result. The grants of this crate
//! ([`ServiceAccountAuthorizer`](crate::ServiceAccountAuthorizer) and the others) send and
//! read their token requests with the same functions.
//!
//! | answer | [`TokenEndpointAnswer::result`] |
//! |---|---|
//! | 2xx with `access_token` | a [`GrantedToken`]; `expires_in` as number or numeric string (at most 10⁹ s), missing → the default lifetime if one was given, else no expiry |
//! | 3xx | [`Error::InvalidResponse`]: redirects are never followed |
//! | 429 | [`Error::RateLimited`] with [`retry_after`] and [`rate_limit_reset`] |
//! | 5xx | [`Error::ServerError`] (transient) with [`retry_after`] |
//! | 4xx `invalid_client` | [`Error::InvalidClient`] |
//! | 4xx other `error` | [`Error::Authorization`] with status, `error`, `error_description`, `error_uri` (escaped and capped: they reach logs) |
//! | anything else unparseable, or a body larger than [`MAX_DOCUMENT_BYTES`](en_auth_core::MAX_DOCUMENT_BYTES) | [`Error::InvalidResponse`] with the status; never a panic |
//!
//! ```no_run
//! use en_auth_core::ClientInfo;
//! use en_auth_oauth2::{ClientAuthentication, secure_url, token_endpoint, token_http_client};
//!
//! # async fn demo() -> Result<(), en_auth_core::Error> {
//! let http = token_http_client();
//! let url = secure_url("token_url", "https://tenant.us.auth0.com/oauth/token")?;
//! let info = ClientInfo::new("client-id", "client-secret");
//! let form = [("grant_type", "client_credentials"), ("audience", "https://api.example.com")];
//! let answer =
//!     token_endpoint::request_token(&http, &url, &info, &ClientAuthentication::ClientSecretPost, &form)
//!         .await?;
//! let remaining = answer.headers.get("x-ratelimit-remaining"); // also on a 200
//! let reset = token_endpoint::rate_limit_reset(&answer.headers);
//! let granted = answer.result?;
//! println!("granted scope {:?}", granted.scope);
//! # Ok(()) }
//! ```

use std::time::Duration;

use en_auth_core::{ClientInfo, Error, secure_url};
use reqwest::Url;
use reqwest::header::HeaderMap;

use crate::client_auth::ClientAuthentication;
use crate::dpop::{DPOP_HEADER, Dpop};
use crate::endpoint::{send, token_request};
use crate::response::parse_token_response_for;
pub use crate::response::{
    GrantedToken, MAX_RETRY_AFTER, parse_answer, rate_limit_reset, retry_after,
};

/// A token endpoint's answer: its status and headers, and what it means.
#[derive(Debug)]
#[non_exhaustive]
pub struct TokenEndpointAnswer {
    /// The HTTP status.
    pub status: u16,
    /// The answer's headers (`X-RateLimit-*`, `Retry-After`, provider quotas, …), whatever
    /// the status.
    pub headers: HeaderMap,
    /// The granted token, or the typed error the answer means (a body that could not be read
    /// whole included): see the [module](self) documentation.
    pub result: Result<GrantedToken, Error>,
}

/// Sends one token request to `url`: a form POST of `form` (e.g. `grant_type`, `audience`,
/// `scope`) plus what `authentication` adds for `info` (an `Authorization: Basic` header, or
/// `client_id` and `client_secret` / a client assertion in the form), with `http` (build it
/// with [`token_http_client`](crate::token_http_client): no redirects, timeouts).
///
/// `Err` only when no answer came: `url` is not `https://` (or `http://` on loopback), the
/// credentials cannot be sent, or the connection failed or timed out. Every answer that
/// came, whatever its status, is `Ok` with the status, headers and
/// [result](TokenEndpointAnswer::result). A token without `expires_in` has no expiry.
///
/// Mutual TLS client authentication (`tls_client_auth`, `self_signed_tls_client_auth`) is
/// refused with [`Error::InvalidConfiguration`] before anything is sent: the certificate
/// would have to be presented by `http`, and whether a `reqwest::Client` presents one cannot
/// be told from outside, so the request could leave without it. The grants
/// ([`ServiceAccountAuthorizer`](crate::ServiceAccountAuthorizer) and the others) build a
/// client that presents it.
pub async fn request_token(
    http: &reqwest::Client,
    url: &Url,
    info: &ClientInfo,
    authentication: &ClientAuthentication,
    form: &[(&str, &str)],
) -> Result<TokenEndpointAnswer, Error> {
    if authentication.tls_identity().is_some() {
        return Err(Error::InvalidConfiguration {
            setting: "token_endpoint::request_token".into(),
            reason: "mutual TLS client authentication needs a client that presents the \
                     certificate, which a given reqwest::Client cannot be checked for: use a \
                     grant (ServiceAccountAuthorizer, …), which builds one"
                .into(),
        });
    }
    let url = secure_url("token_url", url.as_str())?;
    exchange(http, &url, info, authentication, form, None, None).await
}

/// [`request_token`] with the options of the grants: `default_lifetime` for tokens without
/// `expires_in`, and DPoP: a proof with every request, once more with the server's nonce
/// when it asks for one (`use_dpop_nonce`), and only a `DPoP` token accepted. The request is
/// built afresh for every send, so a retry carries a new client assertion
/// (`private_key_jwt` assertions are single-use).
pub(crate) async fn exchange(
    http: &reqwest::Client,
    url: &Url,
    info: &ClientInfo,
    authentication: &ClientAuthentication,
    form: &[(&str, &str)],
    default_lifetime: Option<Duration>,
    dpop: Option<&Dpop>,
) -> Result<TokenEndpointAnswer, Error> {
    let mut first = true;
    loop {
        let mut request =
            token_request(http, url, info, authentication, form.iter().copied()).await?;
        if let Some(dpop) = dpop {
            request = request.header(DPOP_HEADER, dpop.header("POST", url.as_str(), None).await?);
        }
        let (status, headers, body) = send(request).await?;
        if let Some(dpop) = dpop {
            let read = body.as_deref().unwrap_or_default();
            if first && dpop.token_endpoint_challenge(url.as_str(), status, &headers, read) {
                tracing::debug!("the token endpoint asked for a DPoP nonce: sending once more");
                first = false;
                continue;
            }
        }
        let result = body.and_then(|body| {
            parse_token_response_for(status, &headers, &body, default_lifetime, dpop.is_some())
        });
        return Ok(TokenEndpointAnswer {
            status,
            headers,
            result,
        });
    }
}
