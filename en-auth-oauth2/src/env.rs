//! Configuration from environment variables ([`ServiceAccountAuthorizer::from_env`]).

use std::time::Duration;

use en_auth_core::{ClientInfo, Error};

use crate::{ClientAuthentication, ServiceAccountAuthorizer};

/// Client id (required).
pub const CLIENT_ID: &str = "EN_AUTH_CLIENT_ID";
/// Client secret (required).
pub const CLIENT_SECRET: &str = "EN_AUTH_CLIENT_SECRET";
/// Token endpoint URL (this or [`ISSUER`] is required).
pub const TOKEN_URL: &str = "EN_AUTH_TOKEN_URL";
/// Issuer, for OIDC discovery of the token endpoint (this or [`TOKEN_URL`] is required).
pub const ISSUER: &str = "EN_AUTH_ISSUER";
/// Auth0 `audience` (optional).
pub const AUDIENCE: &str = "EN_AUTH_AUDIENCE";
/// Scopes, separated by spaces or commas (optional).
pub const SCOPES: &str = "EN_AUTH_SCOPES";
/// API key sent as `X-Api-Key` (optional).
pub const API_KEY: &str = "EN_AUTH_API_KEY";
/// Lifetime in seconds of tokens whose response has no `expires_in` (optional).
pub const DEFAULT_TOKEN_LIFETIME: &str = "EN_AUTH_DEFAULT_TOKEN_LIFETIME";
/// A private key file (PEM or JWK) for `private_key_jwt` client authentication (optional;
/// when set, no client secret is needed).
pub const PRIVATE_KEY_FILE: &str = "EN_AUTH_PRIVATE_KEY_FILE";
/// The key id (`kid`) of a PEM [`PRIVATE_KEY_FILE`] (a JWK carries its own).
pub const KEY_ID: &str = "EN_AUTH_KEY_ID";
/// A file holding a client assertion issued by someone else (a Kubernetes projected
/// service-account token), read for every token request (optional; when set, no client
/// secret is needed). See [`ClientAuthentication::assertion_file`].
pub const CLIENT_ASSERTION_FILE: &str = "EN_AUTH_CLIENT_ASSERTION_FILE";

impl ServiceAccountAuthorizer {
    /// Builds an authorizer from `EN_AUTH_*` environment variables:
    ///
    /// | variable | |
    /// |---|---|
    /// | `EN_AUTH_CLIENT_ID` | required |
    /// | `EN_AUTH_CLIENT_SECRET` | required |
    /// | `EN_AUTH_TOKEN_URL` or `EN_AUTH_ISSUER` | one required; the issuer is discovered on first use |
    /// | `EN_AUTH_AUDIENCE`, `EN_AUTH_SCOPES`, `EN_AUTH_API_KEY` | optional |
    /// | `EN_AUTH_DEFAULT_TOKEN_LIFETIME` | optional, seconds |
    /// | `EN_AUTH_PRIVATE_KEY_FILE` (+ `EN_AUTH_KEY_ID` for PEM) | optional: `private_key_jwt` instead of the secret |
    /// | `EN_AUTH_CLIENT_ASSERTION_FILE` | optional: a client assertion read from this file for every token request, instead of the secret |
    ///
    /// A missing (or empty) required variable is [`Error::MissingConfiguration`] naming it.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`from_env`](Self::from_env), reading variables through `lookup` (for tests and
    /// other configuration sources).
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use en_auth_core::Error;
    /// use en_auth_oauth2::ServiceAccountAuthorizer;
    /// let vars = HashMap::from([("EN_AUTH_CLIENT_ID", "svc")]);
    /// let err = ServiceAccountAuthorizer::from_lookup(|k| vars.get(k).map(|v| v.to_string())).unwrap_err();
    /// assert!(matches!(err, Error::MissingConfiguration { ref setting } if setting == "EN_AUTH_CLIENT_SECRET"));
    /// ```
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let require = |name: &str| {
            get(name).ok_or_else(|| Error::MissingConfiguration {
                setting: name.to_owned(),
            })
        };
        let client_id = require(CLIENT_ID)?;
        let key_file = get(PRIVATE_KEY_FILE);
        let assertion_file = get(CLIENT_ASSERTION_FILE);
        if key_file.is_some() && assertion_file.is_some() {
            return Err(Error::InvalidConfiguration {
                setting: CLIENT_ASSERTION_FILE.to_owned(),
                reason: format!("set either it or {PRIVATE_KEY_FILE}, not both"),
            });
        }
        // With a private key or an assertion the client proves itself without a secret.
        let client_secret = match (&key_file, &assertion_file) {
            (None, None) => require(CLIENT_SECRET)?,
            _ => get(CLIENT_SECRET).unwrap_or_default(),
        };
        let mut info = ClientInfo::new(client_id, client_secret);
        if let Some(key) = get(API_KEY) {
            info = info.try_with_api_key(key).map_err(|err| match err {
                Error::InvalidConfiguration { reason, .. } => Error::InvalidConfiguration {
                    setting: API_KEY.to_owned(),
                    reason,
                },
                other => other,
            })?;
        }
        let mut authorizer = match (get(TOKEN_URL), get(ISSUER)) {
            (Some(url), _) => Self::new(info, url.trim()),
            (None, Some(issuer)) => Self::discover_lazily(info, issuer.trim()),
            (None, None) => {
                return Err(Error::MissingConfiguration {
                    setting: format!("{TOKEN_URL} (or {ISSUER})"),
                });
            }
        };
        if let Some(audience) = get(AUDIENCE) {
            authorizer = authorizer.with_audience(audience.trim());
        }
        if let Some(scopes) = get(SCOPES) {
            authorizer = authorizer.with_scopes(
                scopes
                    .split([' ', ','])
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            );
        }
        if let Some(path) = key_file {
            let path = path.trim();
            let key = std::fs::read(path).map_err(|e| Error::InvalidConfiguration {
                setting: PRIVATE_KEY_FILE.to_owned(),
                reason: format!("cannot read `{path}`: {e}"),
            })?;
            let authentication = if key.trim_ascii_start().starts_with(b"{") {
                let jwk = String::from_utf8(key).map_err(|_| Error::InvalidConfiguration {
                    setting: PRIVATE_KEY_FILE.to_owned(),
                    reason: "the JWK is not UTF-8 text".into(),
                })?;
                ClientAuthentication::private_key_jwt_jwk(&jwk)?
            } else {
                ClientAuthentication::private_key_jwt_pem(&key, require(KEY_ID)?.trim())?
            };
            authorizer = authorizer.with_authentication(authentication);
        }
        if let Some(path) = assertion_file {
            authorizer =
                authorizer.with_authentication(ClientAuthentication::assertion_file(path.trim()));
        }
        if let Some(lifetime) = get(DEFAULT_TOKEN_LIFETIME) {
            let seconds: u64 =
                lifetime
                    .trim()
                    .parse()
                    .map_err(|_| Error::InvalidConfiguration {
                        setting: DEFAULT_TOKEN_LIFETIME.to_owned(),
                        reason: format!("`{lifetime}` is not a whole number of seconds"),
                    })?;
            authorizer = authorizer.with_default_lifetime(Duration::from_secs(seconds));
        }
        Ok(authorizer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &HashMap<&str, String>) -> Result<ServiceAccountAuthorizer, Error> {
        ServiceAccountAuthorizer::from_lookup(|k| vars.get(k).cloned())
    }

    #[test]
    fn a_private_key_file_replaces_the_secret_and_its_problems_name_the_variable() {
        let pem = std::env::temp_dir().join(format!("en-auth-env-test-{}.pem", std::process::id()));
        std::fs::write(
            &pem,
            "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let mut vars = HashMap::from([
            (CLIENT_ID, "svc".to_owned()),
            (TOKEN_URL, "https://idp.example.com/token".to_owned()),
            (PRIVATE_KEY_FILE, pem.display().to_string()),
        ]);
        // No secret is asked for; a PEM key needs its key id.
        let err = from(&vars).unwrap_err();
        assert!(
            matches!(err, Error::MissingConfiguration { ref setting } if setting == KEY_ID),
            "{err:?}"
        );
        vars.insert(KEY_ID, "key-1".to_owned());
        let err = from(&vars).unwrap_err();
        assert!(
            matches!(err, Error::InvalidConfiguration { ref setting, .. } if setting == "private_key"),
            "{err:?}"
        );
        let _ = std::fs::remove_file(&pem);
        let err = from(&vars).unwrap_err();
        assert!(
            matches!(err, Error::InvalidConfiguration { ref setting, .. } if setting == PRIVATE_KEY_FILE),
            "{err:?}"
        );
    }

    #[test]
    fn an_assertion_file_replaces_the_secret() {
        let mut vars = HashMap::from([
            (CLIENT_ID, "svc".to_owned()),
            (TOKEN_URL, "https://idp.example.com/token".to_owned()),
            (
                CLIENT_ASSERTION_FILE,
                " /var/run/secrets/tokens/idp ".to_owned(),
            ),
        ]);
        let sa = from(&vars).expect("no secret needed");
        let debug = format!("{sa:?}");
        assert!(
            debug.contains("AssertionSource::File(/var/run/secrets/tokens/idp)"),
            "{debug}"
        );
        vars.insert(PRIVATE_KEY_FILE, "/etc/key.pem".to_owned());
        let err = from(&vars).unwrap_err();
        assert!(
            matches!(err, Error::InvalidConfiguration { ref setting, .. } if setting == CLIENT_ASSERTION_FILE),
            "{err:?}"
        );
    }
}
