//! What customers send: `POST /oauth/token` (RFC 6749 client credentials) and `POST /m2mauth`
//! bodies, read into credentials and a [`TokenRequest`], checked before any cache or upstream
//! work.

use base64::Engine;
use http::{HeaderMap, StatusCode, header};
use secrecy::SecretString;
use serde::Deserialize;

use crate::answer::OAuthError;
use crate::upstream::TokenRequest;

/// Longest client id accepted.
const MAX_CLIENT_ID: usize = 256;
/// Longest client secret accepted.
const MAX_SECRET: usize = 1024;
/// Longest audience, resource or scope string accepted.
const MAX_PARAM: usize = 2048;
/// Most `resource` parameters in one request.
const MAX_RESOURCES: usize = 10;

/// A customer's credentials as presented.
pub(crate) struct Credentials {
    pub(crate) client_id: String,
    pub(crate) secret: SecretString,
}

pub(crate) fn check_client_id(client_id: &str) -> Result<(), OAuthError> {
    if client_id.is_empty()
        || client_id.len() > MAX_CLIENT_ID
        || client_id.chars().any(char::is_control)
    {
        return Err(OAuthError::invalid_client(format!(
            "client_id must be 1 to {MAX_CLIENT_ID} printable characters"
        )));
    }
    Ok(())
}

pub(crate) fn check_secret(secret: &str) -> Result<(), OAuthError> {
    if secret.is_empty() || secret.len() > MAX_SECRET {
        return Err(OAuthError::invalid_client(format!(
            "client_secret must be 1 to {MAX_SECRET} bytes"
        )));
    }
    Ok(())
}

fn check_param(name: &str, value: &str) -> Result<(), OAuthError> {
    if value.len() > MAX_PARAM || value.chars().any(char::is_control) {
        return Err(OAuthError::invalid_request(format!(
            "{name} must be at most {MAX_PARAM} printable characters"
        )));
    }
    Ok(())
}

/// Scopes sorted, without duplicates, space-separated.
fn normalize_scope(scope: &str) -> Result<String, OAuthError> {
    check_param("scope", scope)?;
    let mut scopes: Vec<&str> = scope.split_ascii_whitespace().collect();
    if scopes.iter().any(|s| {
        s.chars()
            .any(|c| c == '"' || c == '\\' || !c.is_ascii_graphic())
    }) {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "scope tokens are printable ASCII without double quotes or backslashes (RFC 6749 \
             section 3.3)",
        ));
    }
    scopes.sort_unstable();
    scopes.dedup();
    Ok(scopes.join(" "))
}

fn token_request(
    audience: Option<String>,
    mut resources: Vec<String>,
    scope: Option<&str>,
) -> Result<TokenRequest, OAuthError> {
    if let Some(audience) = &audience {
        check_param("audience", audience)?;
    }
    if resources.len() > MAX_RESOURCES {
        return Err(OAuthError::invalid_request(format!(
            "at most {MAX_RESOURCES} resource parameters"
        )));
    }
    for resource in &resources {
        check_param("resource", resource)?;
    }
    resources.sort_unstable();
    resources.dedup();
    Ok(TokenRequest {
        audience: audience.filter(|a| !a.is_empty()),
        resources,
        scope: normalize_scope(scope.unwrap_or(""))?,
    })
}

/// `Authorization: Basic` credentials, form-urldecoded as RFC 6749 §2.3.1 requires.
pub(crate) fn basic_credentials(headers: &HeaderMap) -> Result<Option<Credentials>, OAuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || OAuthError::invalid_client("malformed Basic authorization header");
    let value = value.to_str().map_err(|_| malformed())?;
    let Some((scheme, encoded)) = value.trim().split_once(' ') else {
        return Err(malformed());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::invalid_client(
            "only Basic client authentication is supported in the Authorization header",
        ));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    let id = String::from_utf8(form_decode(id)).map_err(|_| malformed())?;
    let secret = String::from_utf8(form_decode(secret)).map_err(|_| malformed())?;
    Ok(Some(Credentials {
        client_id: id,
        secret: SecretString::from(secret),
    }))
}

/// `application/x-www-form-urlencoded` decoding of one value: `+` is a space, `%XX` a byte;
/// anything else (a client that did not encode) is taken as it is.
fn form_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let hex = |i: usize| bytes.get(i).and_then(|b| (*b as char).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 2;
            }
            (b, _, _) => out.push(b),
        }
        i += 1;
    }
    out
}

/// Reads a `POST /oauth/token` request — its `Content-Type`, the Basic credentials already
/// decoded from its `Authorization` header, its form body — into the customer's credentials
/// and the token request.
pub(crate) fn token_form(
    headers: &HeaderMap,
    basic: Option<Credentials>,
    bytes: &[u8],
) -> Result<(Credentials, TokenRequest), OAuthError> {
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if form_type != Some(true) {
        return Err(OAuthError::invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let mut grant_type = None;
    let mut client_id = None;
    let mut client_secret = None;
    let mut audience = None;
    let mut scope = None;
    let mut resources = Vec::new();
    for (name, value) in form_urlencoded::parse(bytes) {
        let slot = match name.as_ref() {
            "grant_type" => &mut grant_type,
            "client_id" => &mut client_id,
            "client_secret" => &mut client_secret,
            "audience" => &mut audience,
            "scope" => &mut scope,
            "resource" => {
                if resources.len() <= MAX_RESOURCES {
                    resources.push(value.into_owned());
                }
                continue;
            }
            _ => continue, // RFC 6749 §3.2: unknown parameters are ignored
        };
        if slot.is_some() {
            return Err(OAuthError::invalid_request(format!(
                "parameter `{name}` is repeated (RFC 6749 section 3.2)"
            )));
        }
        *slot = Some(value.into_owned());
    }
    match grant_type.as_deref() {
        None => return Err(OAuthError::invalid_request("grant_type is required")),
        Some("client_credentials") => {}
        Some(_) => {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only the client_credentials grant is supported",
            ));
        }
    }
    let credentials = match (basic, client_secret) {
        (Some(_), Some(_)) => {
            return Err(OAuthError::invalid_request(
                "use one client authentication method, not both Basic and client_secret",
            ));
        }
        (Some(basic), None) => {
            if client_id.as_ref().is_some_and(|id| *id != basic.client_id) {
                return Err(OAuthError::invalid_request(
                    "client_id in the body differs from the Authorization header",
                ));
            }
            basic
        }
        (None, Some(secret)) => Credentials {
            client_id: client_id.unwrap_or_default(),
            secret: SecretString::from(secret),
        },
        (None, None) => {
            return Err(OAuthError::invalid_client(
                "client authentication required: Basic, or client_id and client_secret in \
                 the body",
            ));
        }
    };
    let request = token_request(audience, resources, scope.as_deref())?;
    Ok((credentials, request))
}

/// `permissions` as a space-separated string or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum Permissions {
    Text(String),
    List(Vec<String>),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct M2mBody {
    client_id: Option<String>,
    client_secret: Option<String>,
    permissions: Option<Permissions>,
    audience: Option<String>,
}

/// Reads a `POST /m2mauth` JSON body into the customer's credentials and the token request.
pub(crate) fn m2m_request(bytes: &[u8]) -> Result<(Credentials, TokenRequest), OAuthError> {
    let parsed: M2mBody = serde_json::from_slice(bytes).map_err(|_| {
        OAuthError::invalid_request(
            "the body must be a JSON object with clientId, clientSecret, permissions and \
             optionally audience",
        )
    })?;
    let (Some(client_id), Some(secret)) = (parsed.client_id, parsed.client_secret) else {
        return Err(OAuthError::invalid_request(
            "clientId and clientSecret are required",
        ));
    };
    let scope = match parsed.permissions {
        None => String::new(),
        Some(Permissions::Text(text)) => text,
        Some(Permissions::List(list)) => list.join(" "),
    };
    let request = token_request(parsed.audience, Vec::new(), Some(&scope))?;
    Ok((
        Credentials {
            client_id,
            secret: SecretString::from(secret),
        },
        request,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::clean;
    use http::HeaderValue;

    #[test]
    fn basic_credentials_are_form_decoded() {
        assert_eq!(form_decode("a%3Ab+c%25%2"), b"a:b c%%2");
        assert_eq!(form_decode("raw&=secret%zz"), b"raw&=secret%zz");
        let mut headers = HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD.encode("my%20id:p%26ss+word");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).unwrap(),
        );
        let credentials = basic_credentials(&headers).unwrap().unwrap();
        assert_eq!(credentials.client_id, "my id");
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(&credentials.secret),
            "p&ss word"
        );
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert!(basic_credentials(&headers).is_err());
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert!(basic_credentials(&headers).is_err());
    }

    #[test]
    fn scopes_are_normalized() {
        assert_eq!(normalize_scope(" b a  b ").unwrap(), "a b");
        assert!(normalize_scope("a\\b").is_err());
    }

    fn refusal(result: Result<(Credentials, TokenRequest), OAuthError>) -> String {
        let err = result.err().expect("refused");
        let body: serde_json::Value = serde_json::from_slice(&err.body()).unwrap();
        body["error_description"].as_str().unwrap().to_owned()
    }

    /// Found by the `proxy_request` fuzz target: three of the proxy's own refusals had
    /// `"`, `\\` or `§` in `error_description`, which RFC 6749 §5.2 limits to
    /// `%x20-21 / %x23-5B / %x5D-7E`.
    #[test]
    fn refusals_use_only_the_characters_rfc_6749_allows() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let descriptions = [
            refusal(token_form(
                &headers,
                None,
                b"grant_type=client_credentials&client_id=a&client_secret=b&scope=%22x%5C",
            )),
            refusal(token_form(
                &headers,
                None,
                b"grant_type=client_credentials&grant_type=client_credentials",
            )),
            refusal(m2m_request(b"not json")),
        ];
        for description in descriptions {
            assert_eq!(clean(&description), description, "{description:?}");
        }
    }
}
