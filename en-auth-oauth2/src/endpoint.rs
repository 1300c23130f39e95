//! Where tokens come from: validated endpoint URLs, the token HTTP client, OIDC discovery.

use std::time::Duration;

use en_auth_core::{Error, discover, secure_url};
use reqwest::Url;

/// Connect timeout of the token client: a provider that cannot be reached in 5 s is down.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Total timeout of one token request, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The HTTP client en-auth uses for token requests: no redirects, its own timeouts.
pub fn token_http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap_or_default()
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
