//! Talking to identity providers: the endpoint policy shared by every client en-auth runs
//! (https, or http on loopback only), bounded reads, JSON documents and OIDC discovery.

use std::net::IpAddr;
use std::time::Duration;

use reqwest::Url;

use crate::Error;

/// Parses `url` for `setting` and refuses plain `http://` unless the host is loopback, so a
/// secret or a key set never crosses a network in clear, and refuses a user name or password
/// in the URL (`https://user:pass@…`), which would end up in logs and error messages and be
/// sent as a second `Authorization` header. Checked before any I/O; the error never repeats
/// the URL.
///
/// ```
/// use en_auth_core::secure_url;
/// assert!(secure_url("token_url", "https://idp.example.com/oauth/token").is_ok());
/// assert!(secure_url("token_url", "http://127.0.0.1:8080/token").is_ok());
/// assert!(secure_url("token_url", "http://idp.example.com/oauth/token").is_err());
/// assert!(secure_url("token_url", "https://svc:s3cret@idp.example.com/oauth/token").is_err());
/// ```
pub fn secure_url(setting: &str, url: &str) -> Result<Url, Error> {
    let invalid = |reason: String| Error::InvalidConfiguration {
        setting: setting.to_owned(),
        reason,
    };
    let parsed = Url::parse(url).map_err(|e| invalid(format!("not a URL: {e}")))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            "the URL carries a user name or password; remove them from the URL and give \
             client credentials through ClientInfo"
                .into(),
        ));
    }
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if is_loopback(&parsed) => Ok(parsed),
        "http" => Err(invalid(
            "plain http is refused except on loopback; use https".into(),
        )),
        other => Err(invalid(format!("unsupported scheme `{other}`"))),
    }
}

/// `url` as it may appear in logs, spans and errors: scheme, host, port and path — never a
/// user name, password, query string or fragment, which may carry secrets — and at most
/// [`MAX_UNTRUSTED_TEXT`](crate::MAX_UNTRUSTED_TEXT) bytes of it (a provider can name a
/// URL of any length in a discovery document), saying how much was left out.
///
/// ```
/// use en_auth_core::url_for_logs;
/// let url = reqwest::Url::parse("https://u:p@idp.example.com/token?key=s3cret#x").unwrap();
/// assert_eq!(url_for_logs(&url), "https://idp.example.com/token");
/// let long = reqwest::Url::parse(&format!("https://idp.example.com/{}", "a".repeat(10_000))).unwrap();
/// assert!(url_for_logs(&long).ends_with("(9768 more bytes)"));
/// ```
pub fn url_for_logs(url: &Url) -> String {
    let mut shown = url.clone();
    strip_secrets(&mut shown);
    crate::untrusted_text(shown.as_str())
}

/// Like [`url_for_logs`] for a URL given as text; text that is not a URL is shown as
/// `<not a URL>`.
pub fn str_for_logs(url: &str) -> String {
    Url::parse(url).map_or_else(|_| "<not a URL>".to_owned(), |url| url_for_logs(&url))
}

/// Removes the user name, password, query string and fragment of `url`.
pub(crate) fn strip_secrets(url: &mut Url) {
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
}

/// Whether `url`'s host is `localhost` or a loopback address.
pub(crate) fn is_loopback(url: &Url) -> bool {
    url.host_str().is_some_and(is_loopback_host)
}

/// Whether `host` — a name, an IPv4 address or a bracketed IPv6 address, as in a URL or an
/// `http::Uri` — is `localhost` or a loopback address.
pub fn is_loopback_host(host: &str) -> bool {
    // The usual spellings first, without parsing an address.
    if host == "127.0.0.1" || host == "[::1]" || host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Connect timeout towards an identity provider: one that cannot be reached in 5 s is down.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Total timeout of one request to an identity provider (token request, login step), body
/// included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// An HTTP client for talking to identity providers: it follows no redirects (a redirect
/// could carry credentials elsewhere) and has its own connect and total timeouts.
///
/// Proxies come from the environment as usual — `HTTPS_PROXY`, `HTTP_PROXY` (ignored when
/// `REQUEST_METHOD` is set, as in CGI), `ALL_PROXY`, lower-case forms too, and `NO_PROXY` —
/// except that a loopback destination (`localhost`, `127.0.0.0/8`, `::1`) is always reached
/// directly: a token request to a local provider or sidecar never carries client credentials
/// to a proxy, whatever `NO_PROXY` says.
pub fn provider_http_client(connect: Duration, total: Duration) -> reqwest::Client {
    provider_http_client_builder(connect, total)
        .build()
        .unwrap_or_default()
}

/// Like [`provider_http_client`], for mutual TLS (RFC 8705): the client presents `identity`
/// (a client certificate and its key) to servers that ask for one, and trusts the
/// certificate authorities in `roots` besides the system's (a provider whose mTLS endpoint
/// has a certificate from a private CA).
///
/// Unlike [`provider_http_client`], a client that cannot be built is an error, never a
/// client without the certificate: [`Error::InvalidConfiguration`] (without the key).
pub fn provider_http_client_with_identity(
    connect: Duration,
    total: Duration,
    identity: Option<reqwest::Identity>,
    roots: &[reqwest::Certificate],
) -> Result<reqwest::Client, Error> {
    let mut builder = provider_http_client_builder(connect, total);
    if let Some(identity) = identity {
        builder = builder.identity(identity);
    }
    for root in roots {
        builder = builder.add_root_certificate(root.clone());
    }
    builder.build().map_err(|e| Error::InvalidConfiguration {
        setting: "client_certificate".into(),
        // reqwest's and rustls's messages name the TLS problem, never the key.
        reason: format!(
            "the HTTP client for the identity provider cannot be built: {}",
            error_chain(&e)
        ),
    })
}

/// `err`'s message followed by its causes' (`: `-separated): reqwest's own message alone is
/// often just "builder error".
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(err) = cause {
        let next = err.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = err.source();
    }
    text
}

/// The builder behind [`provider_http_client`]: no redirects, timeouts, proxies from the
/// environment except for loopback.
fn provider_http_client_builder(connect: Duration, total: Duration) -> reqwest::ClientBuilder {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect)
        .timeout(total)
        .no_proxy();
    if let Some(proxy) = proxy_from_env(|name| std::env::var(name).ok()) {
        builder = builder.proxy(proxy);
    }
    builder
}

/// The proxy the environment (read through `var`) names, bypassed for loopback destinations.
fn proxy_from_env(var: impl Fn(&str) -> Option<String>) -> Option<reqwest::Proxy> {
    let first = |names: [&str; 2]| {
        names.iter().find_map(|name| {
            let value = var(name)?;
            let value = value.trim();
            if value.is_empty() {
                return None;
            }
            match Url::parse(value) {
                Ok(url) => Some(url),
                Err(e) => {
                    tracing::warn!(variable = name, error = %e, "ignoring a proxy setting that is not a URL");
                    None
                }
            }
        })
    };
    // HTTP_PROXY can be set by a request header in CGI ("httpoxy"); like reqwest, ignore it there.
    let cgi = var("REQUEST_METHOD").is_some();
    let http = if cgi {
        None
    } else {
        first(["HTTP_PROXY", "http_proxy"])
    };
    let https = first(["HTTPS_PROXY", "https_proxy"]);
    let all = first(["ALL_PROXY", "all_proxy"]);
    if http.is_none() && https.is_none() && all.is_none() {
        return None;
    }
    let no_proxy = ["NO_PROXY", "no_proxy"]
        .iter()
        .find_map(|name| var(name))
        .and_then(|list| reqwest::NoProxy::from_string(&list));
    let proxy = reqwest::Proxy::custom(move |destination: &Url| {
        if is_loopback(destination) {
            return None;
        }
        let chosen = match destination.scheme() {
            "https" => https.as_ref(),
            "http" => http.as_ref(),
            _ => None,
        };
        chosen.or(all.as_ref()).cloned()
    });
    Some(proxy.no_proxy(no_proxy))
}

/// Largest JSON document (discovery, JWKS, token response) read from an identity provider.
pub const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

/// Reads `response`'s body, refusing more than `max` bytes (a hostile or broken server cannot
/// make en-auth buffer without bound).
pub async fn read_body_limited(
    response: &mut reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, Error> {
    let status = response.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > max {
            return Err(Error::InvalidResponse {
                status: Some(status),
                reason: format!("response body larger than {max} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// GETs a JSON document (OIDC discovery, JWKS): 429 and 5xx are transient
/// [`Error::ServerError`]s, other failures [`Error::InvalidResponse`]; the body is bounded by
/// [`MAX_DOCUMENT_BYTES`].
pub async fn get_document(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, Error> {
    let mut response = http.get(url).send().await?;
    let status = response.status().as_u16();
    if !response.status().is_success() {
        return Err(if status >= 500 || status == 429 {
            Error::ServerError {
                status,
                retry_after: None,
            }
        } else {
            Error::InvalidResponse {
                status: Some(status),
                reason: format!("GET {} failed", str_for_logs(url)),
            }
        });
    }
    read_body_limited(&mut response, MAX_DOCUMENT_BYTES).await
}

/// The parts of an OpenID provider's configuration en-auth uses.
#[derive(Clone, Debug, serde::Deserialize)]
#[non_exhaustive]
pub struct OpenIdConfiguration {
    /// The issuer, as the provider names itself.
    pub issuer: Option<String>,
    /// Where client credentials are exchanged for tokens.
    pub token_endpoint: Option<String>,
    /// Where the provider publishes its signing keys.
    pub jwks_uri: Option<String>,
    /// Endpoints for clients that use mutual TLS (RFC 8705 §5), when they differ from the
    /// plain ones.
    #[serde(default)]
    pub mtls_endpoint_aliases: Option<MtlsEndpointAliases>,
}

/// The `mtls_endpoint_aliases` of a discovery document (RFC 8705 §5): where clients that
/// authenticate with a certificate, or want certificate-bound tokens, send their requests.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[non_exhaustive]
pub struct MtlsEndpointAliases {
    /// The token endpoint for mTLS clients.
    pub token_endpoint: Option<String>,
}

/// Fetches `{issuer}/.well-known/openid-configuration` and checks that it names `issuer`
/// (trailing slashes aside). The issuer URL must pass [`secure_url`].
pub async fn discover(http: &reqwest::Client, issuer: &str) -> Result<OpenIdConfiguration, Error> {
    let base = secure_url("issuer", issuer)?;
    let trimmed = base.as_str().trim_end_matches('/');
    let url = format!("{trimmed}/.well-known/openid-configuration");
    let body = get_document(http, &url).await?;
    OpenIdConfiguration::from_document(&base, &body)
}

impl OpenIdConfiguration {
    /// Reads a discovery document fetched from `issuer` (already checked with
    /// [`secure_url`]) and checks that it names `issuer`, trailing slashes aside.
    ///
    /// ```
    /// use en_auth_core::{OpenIdConfiguration, secure_url};
    /// let issuer = secure_url("issuer", "https://idp.example.com/").unwrap();
    /// let doc = br#"{"issuer":"https://idp.example.com","jwks_uri":"https://idp.example.com/jwks"}"#;
    /// let config = OpenIdConfiguration::from_document(&issuer, doc).unwrap();
    /// assert_eq!(config.jwks_uri.as_deref(), Some("https://idp.example.com/jwks"));
    /// let other = br#"{"issuer":"https://evil.example.com"}"#;
    /// assert!(OpenIdConfiguration::from_document(&issuer, other).is_err());
    /// ```
    pub fn from_document(issuer: &Url, body: &[u8]) -> Result<Self, Error> {
        let trimmed = issuer.as_str().trim_end_matches('/');
        let config: OpenIdConfiguration =
            serde_json::from_slice(body).map_err(|e| Error::InvalidResponse {
                status: Some(200),
                // serde quotes mistyped values (a whole document sent as one string): capped.
                reason: format!(
                    "OIDC discovery document is not valid: {}",
                    crate::untrusted_text(&e.to_string())
                ),
            })?;
        if let Some(found) = &config.issuer {
            if found.trim_end_matches('/') != trimmed {
                return Err(Error::InvalidResponse {
                    status: Some(200),
                    reason: format!(
                        "discovery document names issuer `{}`, expected `{}`",
                        crate::untrusted_text(found),
                        url_for_logs(issuer)
                    ),
                });
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn the_causes_of_a_client_build_error_are_kept() {
        let err = Layer(
            "builder error",
            Some(Box::new(Layer(
                "unexpected error: no CA",
                Some(Box::new(Layer("no CA", None))),
            ))),
        );
        assert_eq!(error_chain(&err), "builder error: unexpected error: no CA");
        assert_eq!(error_chain(&Layer("alone", None)), "alone");
    }

    /// Found by the `oidc_discovery` fuzz target: a URL of any length (a discovery
    /// document's `jwks_uri`, say) went whole into errors and logs.
    #[test]
    fn urls_in_logs_are_capped() {
        let long = format!("https://idp.example.com/{}", "a".repeat(100_000));
        let shown = str_for_logs(&long);
        assert!(shown.len() < 300, "{} bytes", shown.len());
        assert!(shown.starts_with("https://idp.example.com/aaa"), "{shown}");
        assert!(shown.ends_with("(99768 more bytes)"), "{shown}");
    }

    /// Found by the `oidc_discovery` fuzz target: a document that is one JSON string was
    /// quoted whole by serde's message in the error.
    #[test]
    fn an_invalid_discovery_document_is_quoted_capped() {
        let issuer = secure_url("issuer", "https://idp.example.com").unwrap();
        let document = serde_json::to_vec(&"x".repeat(100_000)).unwrap();
        let err = OpenIdConfiguration::from_document(&issuer, &document)
            .err()
            .unwrap()
            .to_string();
        assert!(err.len() < 600, "{} bytes", err.len());
        assert!(err.contains("more bytes)"), "{err}");
    }
}
