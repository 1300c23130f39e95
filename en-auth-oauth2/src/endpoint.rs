//! Where tokens come from: validated endpoint URLs, the token HTTP client, OIDC discovery.

use en_auth_core::{
    CONNECT_TIMEOUT, ClientInfo, Error, MAX_DOCUMENT_BYTES, REQUEST_TIMEOUT, discover,
    provider_http_client, read_body_limited, secure_url,
};
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};

use crate::client_auth::ClientAuthentication;

/// The HTTP client en-auth uses for token requests: no redirects, [`CONNECT_TIMEOUT`] and
/// [`REQUEST_TIMEOUT`].
pub fn token_http_client() -> reqwest::Client {
    provider_http_client(CONNECT_TIMEOUT, REQUEST_TIMEOUT)
}

/// Fetches `{issuer}/.well-known/openid-configuration` and returns its `token_endpoint`.
pub async fn discover_token_endpoint(http: &reqwest::Client, issuer: &str) -> Result<Url, Error> {
    Ok(discover_token_endpoints(http, issuer).await?.url)
}

/// A provider's token endpoint found by OIDC discovery, with its mutual-TLS alias.
#[derive(Clone, Debug)]
pub(crate) struct DiscoveredTokenEndpoint {
    /// `token_endpoint`.
    pub url: Url,
    /// `mtls_endpoint_aliases.token_endpoint` (RFC 8705 §5), checked with [`secure_url`]
    /// only when used: a client without mTLS never depends on it.
    pub mtls_alias: Option<String>,
}

impl DiscoveredTokenEndpoint {
    /// The endpoint to send token requests to: the mTLS alias, when the client authenticates
    /// with a certificate and the provider names one (RFC 8705 §5), else `token_endpoint`.
    pub fn for_client(&self, mtls: bool) -> Result<Url, Error> {
        match (&self.mtls_alias, mtls) {
            (Some(alias), true) => secure_url("mtls_endpoint_aliases.token_endpoint", alias),
            _ => Ok(self.url.clone()),
        }
    }
}

/// Fetches `{issuer}/.well-known/openid-configuration`: its `token_endpoint` and the mTLS
/// alias of it.
pub(crate) async fn discover_token_endpoints(
    http: &reqwest::Client,
    issuer: &str,
) -> Result<DiscoveredTokenEndpoint, Error> {
    let config = discover(http, issuer).await?;
    let endpoint = config
        .token_endpoint
        .ok_or_else(|| Error::InvalidResponse {
            status: Some(200),
            reason: "discovery document has no token_endpoint".into(),
        })?;
    Ok(DiscoveredTokenEndpoint {
        url: secure_url("token_endpoint", &endpoint)?,
        mtls_alias: config.mtls_endpoint_aliases.and_then(|a| a.token_endpoint),
    })
}

/// A token request: a form POST to `url` with `form` and the client's authentication
/// (`Authorization` header and/or form parameters). Build one per send: a `private_key_jwt`
/// assertion is single-use.
pub(crate) async fn token_request<'a>(
    http: &reqwest::Client,
    url: &Url,
    info: &ClientInfo,
    authentication: &ClientAuthentication,
    form: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<reqwest::RequestBuilder, Error> {
    let credentials = authentication.credentials(info, url).await?;
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .extend_pairs(credentials.form())
        .finish();
    let request = post_form(http, url, body);
    Ok(match credentials.authorization.clone() {
        Some(value) => request.header(AUTHORIZATION, value),
        None => request,
    })
}

/// A token request without client authentication: a form POST of `form` to `url` (a public
/// client, which names itself with `client_id` in `form`; a JWT bearer grant, RFC 7523 §3.2).
pub(crate) fn form_request<'a>(
    http: &reqwest::Client,
    url: &Url,
    form: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> reqwest::RequestBuilder {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    post_form(http, url, body)
}

/// A form POST of the encoded `body` to `url`.
fn post_form(http: &reqwest::Client, url: &Url, body: String) -> reqwest::RequestBuilder {
    http.post(url.clone())
        .header(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        )
        .body(body)
}

/// Sends one token request and reads the answer (bounded).
pub(crate) async fn send_once(
    request: reqwest::RequestBuilder,
) -> Result<(u16, HeaderMap, Vec<u8>), Error> {
    let (status, headers, body) = send(request).await?;
    Ok((status, headers, body?))
}

/// Sends one request: `Err` when no answer came (connection, timeout); otherwise its status,
/// headers and body (bounded), the body `Err` when it could not be read whole.
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
) -> Result<(u16, HeaderMap, Result<Vec<u8>, Error>), Error> {
    let mut response = request.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = read_body_limited(&mut response, MAX_DOCUMENT_BYTES).await;
    Ok((status, headers, body))
}
