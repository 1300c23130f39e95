//! OIDC discovery: an issuer URL (first line) and the document its provider serves (the
//! rest), read as the OAuth2 client and the verifier do. Never a panic; a document naming
//! another issuer is refused; every URL that would be used passes the endpoint policy (https,
//! or http to loopback; no user name or password); URLs as logged carry no secrets; errors
//! are log-safe.
#![no_main]

use en_auth_core::{OpenIdConfiguration, secure_url, str_for_logs, url_for_logs};
use en_auth_fuzz::{assert_error_safe, assert_log_safe, first_line};
use libfuzzer_sys::fuzz_target;
use url::Url;

fn assert_policy(what: &str, url: &Url) {
    assert!(
        url.username().is_empty() && url.password().is_none(),
        "{what}: userinfo in {url}"
    );
    match url.scheme() {
        "https" => {}
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            assert!(loopback, "{what}: plain http to {url}");
        }
        other => panic!("{what}: scheme {other} accepted"),
    }
}

fn assert_logged_url(what: &str, shown: &str) {
    assert_log_safe(what, shown);
    if shown == "<not a URL>" {
        return;
    }
    if shown.ends_with(" more bytes)") {
        // Cut at the cap: what is left must still have no query or fragment (in a URL as
        // written out, `?` and `#` only ever start them).
        assert!(shown.len() <= 300, "{what}: {} bytes", shown.len());
        assert!(!shown.contains(['?', '#']), "{what}: query or fragment in {shown:?}");
        return;
    }
    let url = Url::parse(shown).unwrap_or_else(|e| panic!("{what}: logged URL {shown:?}: {e}"));
    assert!(
        url.username().is_empty()
            && url.password().is_none()
            && url.query().is_none()
            && url.fragment().is_none(),
        "{what}: secrets in the logged URL {shown:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let (issuer, document) = first_line(data);
    let issuer = String::from_utf8_lossy(issuer);
    assert_logged_url("issuer for logs", &str_for_logs(&issuer));
    let issuer = match secure_url("issuer", &issuer) {
        Ok(url) => url,
        Err(err) => {
            assert_error_safe("issuer", &err);
            return;
        }
    };
    assert_policy("issuer", &issuer);
    assert_logged_url("issuer for logs", &url_for_logs(&issuer));
    let config = match OpenIdConfiguration::from_document(&issuer, document) {
        Ok(config) => config,
        Err(err) => {
            assert_error_safe("discovery", &err);
            return;
        }
    };
    if let Some(named) = &config.issuer {
        assert_eq!(
            named.trim_end_matches('/'),
            issuer.as_str().trim_end_matches('/'),
            "accepted a document of another issuer"
        );
    }
    for (setting, url) in [
        ("jwks_uri", &config.jwks_uri),
        ("token_endpoint", &config.token_endpoint),
    ] {
        let Some(url) = url else { continue };
        assert_logged_url(setting, &str_for_logs(url));
        match secure_url(setting, url) {
            Ok(parsed) => assert_policy(setting, &parsed),
            Err(err) => assert_error_safe(setting, &err),
        }
    }
});
