//! Where tokens come from: validated endpoint URLs, the token HTTP client, OIDC discovery.

use std::time::Duration;

use en_auth_core::{Error, secure_url};
use reqwest::Url;
use serde::Deserialize;

/// Connect timeout of the token client: a provider that cannot be reached in 5 s is down.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Total timeout of one token request, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest response body read from an identity provider.
pub(crate) const MAX_BODY: usize = 256 * 1024;

/// The HTTP client en-auth uses for token requests: no redirects, its own timeouts.
pub fn token_http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap_or_default()
}

#[derive(Deserialize)]
struct OpenIdConfiguration {
    issuer: Option<String>,
    token_endpoint: Option<String>,
}

/// Fetches `{issuer}/.well-known/openid-configuration` and returns its `token_endpoint`.
pub async fn discover_token_endpoint(http: &reqwest::Client, issuer: &str) -> Result<Url, Error> {
    let base = secure_url("issuer", issuer)?;
    let trimmed = base.as_str().trim_end_matches('/');
    let config_url = format!("{trimmed}/.well-known/openid-configuration");
    let response = http.get(&config_url).send().await?;
    let status = response.status().as_u16();
    if !response.status().is_success() {
        return Err(if status >= 500 {
            Error::ServerError {
                status,
                retry_after: None,
            }
        } else {
            Error::InvalidResponse {
                status: Some(status),
                reason: format!("OIDC discovery at {config_url} failed"),
            }
        });
    }
    let body = response.bytes().await?;
    let config: OpenIdConfiguration =
        serde_json::from_slice(&body).map_err(|e| Error::InvalidResponse {
            status: Some(status),
            reason: format!("OIDC discovery document is not valid JSON: {e}"),
        })?;
    if let Some(found) = &config.issuer {
        if found.trim_end_matches('/') != trimmed {
            return Err(Error::InvalidResponse {
                status: Some(status),
                reason: format!("discovery document names issuer `{found}`, expected `{issuer}`"),
            });
        }
    }
    let endpoint = config
        .token_endpoint
        .ok_or_else(|| Error::InvalidResponse {
            status: Some(status),
            reason: "discovery document has no token_endpoint".into(),
        })?;
    secure_url("token_endpoint", &endpoint)
}
