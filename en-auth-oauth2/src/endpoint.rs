//! Where tokens come from: validated endpoint URLs, the token HTTP client, OIDC discovery.

use en_auth_core::{
    CONNECT_TIMEOUT, Error, REQUEST_TIMEOUT, discover, provider_http_client, secure_url,
};
use reqwest::Url;

/// The HTTP client en-auth uses for token requests: no redirects, [`CONNECT_TIMEOUT`] and
/// [`REQUEST_TIMEOUT`].
pub fn token_http_client() -> reqwest::Client {
    provider_http_client(CONNECT_TIMEOUT, REQUEST_TIMEOUT)
}

/// Fetches `{issuer}/.well-known/openid-configuration` and returns its `token_endpoint`.
pub async fn discover_token_endpoint(http: &reqwest::Client, issuer: &str) -> Result<Url, Error> {
    let config = discover(http, issuer).await?;
    let endpoint = config
        .token_endpoint
        .ok_or_else(|| Error::InvalidResponse {
            status: Some(200),
            reason: "discovery document has no token_endpoint".into(),
        })?;
    secure_url("token_endpoint", &endpoint)
}
