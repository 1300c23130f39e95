//! The endpoint policy shared by every client en-auth runs: https, or http on loopback only.

use std::net::IpAddr;

use reqwest::Url;

use crate::Error;

/// Parses `url` for `setting` and refuses plain `http://` unless the host is loopback, so a
/// secret or a key set never crosses a network in clear. Checked before any I/O.
///
/// ```
/// use en_auth_core::secure_url;
/// assert!(secure_url("token_url", "https://idp.example.com/oauth/token").is_ok());
/// assert!(secure_url("token_url", "http://127.0.0.1:8080/token").is_ok());
/// assert!(secure_url("token_url", "http://idp.example.com/oauth/token").is_err());
/// ```
pub fn secure_url(setting: &str, url: &str) -> Result<Url, Error> {
    let invalid = |reason: String| Error::InvalidConfiguration {
        setting: setting.to_owned(),
        reason,
    };
    let parsed = Url::parse(url).map_err(|e| invalid(format!("not a URL: {e}")))?;
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if is_loopback(&parsed) => Ok(parsed),
        "http" => Err(invalid(
            "plain http is refused except on loopback; use https".into(),
        )),
        other => Err(invalid(format!("unsupported scheme `{other}`"))),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}
