//! [`Claims`]: what a verified access token says.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use en_auth_core::Error;

/// The claims of a verified token: the registered ones, the common authorization ones, and
/// every other claim in [`extra`](Claims::extra), readable as typed values with
/// [`custom`](Claims::custom) / [`extra_as`](Claims::extra_as).
///
/// ```
/// # use en_auth_verify::Claims;
/// let claims: Claims = serde_json::from_str(
///     r#"{"sub":"svc","aud":["a","b"],"scope":"read write","customerId":"c-42"}"#,
/// ).unwrap();
/// assert!(claims.has_scope("write"));
/// assert_eq!(claims.audiences(), ["a", "b"]);
/// assert_eq!(claims.custom::<String>("customerId").unwrap(), "c-42");
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: Option<String>,
    /// Subject.
    pub sub: Option<String>,
    /// Audience(s); a single string is read as a one-element list.
    #[serde(default, deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    /// Expiry, seconds since the epoch.
    pub exp: Option<i64>,
    /// Not before, seconds since the epoch.
    pub nbf: Option<i64>,
    /// Issued at, seconds since the epoch.
    pub iat: Option<i64>,
    /// Space-separated scopes (OAuth2 `scope`).
    pub scope: Option<String>,
    /// Auth0 RBAC permissions.
    #[serde(default)]
    pub permissions: Vec<String>,
    /// Client the token was issued to (RFC 9068 `client_id`, Cognito access tokens).
    pub client_id: Option<String>,
    /// Auth0 organization.
    pub org_id: Option<String>,
    /// Cognito `token_use` (`access` or `id`).
    pub token_use: Option<String>,
    /// Every other claim.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Claims {
    /// The scopes, from the space-separated `scope` claim.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.as_deref().unwrap_or("").split_ascii_whitespace()
    }

    /// Whether `scope` was granted.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().any(|s| s == scope)
    }

    /// Whether `permission` is in Auth0's `permissions`.
    pub fn has_permission(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission)
    }

    /// The audiences as string slices.
    pub fn audiences(&self) -> Vec<&str> {
        self.aud.iter().map(String::as_str).collect()
    }

    /// A custom claim by name, deserialized (e.g. a proxy's `customerId`).
    pub fn custom<T: DeserializeOwned>(&self, name: &str) -> Result<T, Error> {
        let value = self.extra.get(name).ok_or_else(|| Error::InvalidToken {
            reason: format!("claim `{name}` is missing"),
        })?;
        T::deserialize(value).map_err(|e| Error::InvalidToken {
            reason: format!("claim `{name}` has the wrong type: {e}"),
        })
    }

    /// All claims not modelled above, deserialized into your own struct.
    pub fn extra_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        T::deserialize(serde_json::Value::Object(self.extra.clone())).map_err(|e| {
            Error::InvalidToken {
                reason: format!("custom claims do not match: {e}"),
            }
        })
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    })
}
