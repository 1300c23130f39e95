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

/// The body types `POST /oauth/token` accepts, as Auth0's does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyType {
    Form,
    Json,
}

/// The media type of `Content-Type` (parameters such as `; charset=utf-8` allowed).
fn body_type(headers: &HeaderMap) -> Option<BodyType> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let media_type = value.split(';').next()?.trim();
    if media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        Some(BodyType::Form)
    } else if media_type.eq_ignore_ascii_case("application/json") {
        Some(BodyType::Json)
    } else {
        None
    }
}

/// The client-credentials parameters of a token request, whatever the body type.
#[derive(Default)]
struct Params {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<SecretString>,
    audience: Option<String>,
    scope: Option<String>,
    resources: Vec<String>,
}

fn repeated(name: &str) -> OAuthError {
    OAuthError::invalid_request(format!(
        "parameter `{name}` is repeated (RFC 6749 section 3.2)"
    ))
}

/// Reads a `POST /oauth/token` request — its `Content-Type`, the Basic credentials already
/// decoded from its `Authorization` header, its body (`application/x-www-form-urlencoded` or
/// `application/json`, as Auth0 accepts) — into the customer's credentials and the token
/// request.
pub(crate) fn token_body(
    headers: &HeaderMap,
    basic: Option<Credentials>,
    bytes: &[u8],
) -> Result<(Credentials, TokenRequest), OAuthError> {
    let params = match body_type(headers) {
        Some(BodyType::Form) => form_params(bytes)?,
        Some(BodyType::Json) => json_params(bytes)?,
        None => {
            return Err(OAuthError::invalid_request(
                "the body must be application/x-www-form-urlencoded or application/json",
            ));
        }
    };
    client_credentials(basic, params)
}

fn form_params(bytes: &[u8]) -> Result<Params, OAuthError> {
    let mut params = Params::default();
    let mut client_secret = None;
    for (name, value) in form_urlencoded::parse(bytes) {
        let slot = match name.as_ref() {
            "grant_type" => &mut params.grant_type,
            "client_id" => &mut params.client_id,
            "client_secret" => &mut client_secret,
            "audience" => &mut params.audience,
            "scope" => &mut params.scope,
            "resource" => {
                if params.resources.len() <= MAX_RESOURCES {
                    params.resources.push(value.into_owned());
                }
                continue;
            }
            _ => continue, // RFC 6749 §3.2: unknown parameters are ignored
        };
        if slot.is_some() {
            return Err(repeated(&name));
        }
        *slot = Some(value.into_owned());
    }
    params.client_secret = client_secret.map(SecretString::from);
    Ok(params)
}

/// One member's value in a JSON token request, kept only as far as the proxy uses it.
enum JsonValue {
    /// `null`: as if the member were absent (auth0-python sends `"organization": null`).
    Null,
    Text(String),
    /// An array of strings (`resource`, RFC 8707's repeatable parameter).
    List(Vec<String>),
    /// Anything else (numbers, booleans, objects, arrays of non-strings): consumed, not kept.
    Other,
}

impl<'de> Deserialize<'de> for JsonValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonValueVisitor)
    }
}

struct JsonValueVisitor;

impl<'de> serde::de::Visitor<'de> for JsonValueVisitor {
    type Value = JsonValue;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<JsonValue, E> {
        Ok(JsonValue::Null)
    }
    fn visit_none<E>(self) -> Result<JsonValue, E> {
        Ok(JsonValue::Null)
    }
    fn visit_str<E>(self, v: &str) -> Result<JsonValue, E> {
        Ok(JsonValue::Text(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<JsonValue, E> {
        Ok(JsonValue::Text(v))
    }
    fn visit_bool<E>(self, _: bool) -> Result<JsonValue, E> {
        Ok(JsonValue::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<JsonValue, E> {
        Ok(JsonValue::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<JsonValue, E> {
        Ok(JsonValue::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<JsonValue, E> {
        Ok(JsonValue::Other)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<JsonValue, A::Error> {
        let mut list = Vec::new();
        let mut strings = true;
        // Every element is read (the body is bounded); at most MAX_RESOURCES + 1 are kept,
        // enough to refuse a longer list.
        while let Some(element) = seq.next_element::<JsonValue>()? {
            match element {
                JsonValue::Text(text) if strings => {
                    if list.len() <= MAX_RESOURCES {
                        list.push(text);
                    }
                }
                _ => strings = false,
            }
        }
        Ok(if strings {
            JsonValue::List(list)
        } else {
            JsonValue::Other
        })
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<JsonValue, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(JsonValue::Other)
    }
}

/// A JSON token request body: the members the proxy uses, in order, each at most once.
struct JsonBody(Vec<(&'static str, JsonValue)>);

impl<'de> Deserialize<'de> for JsonBody {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BodyVisitor;
        impl<'de> serde::de::Visitor<'de> for BodyVisitor {
            type Value = JsonBody;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<JsonBody, A::Error> {
                let mut members = Vec::new();
                while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    let known = JSON_MEMBERS.iter().find(|known| **known == name.as_ref());
                    match known {
                        Some(known) => members.push((*known, map.next_value::<JsonValue>()?)),
                        // Unknown members are ignored, as Auth0 does.
                        None => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(JsonBody(members))
            }
        }
        deserializer.deserialize_map(BodyVisitor)
    }
}

const JSON_MEMBERS: [&str; 6] = [
    "grant_type",
    "client_id",
    "client_secret",
    "audience",
    "scope",
    "resource",
];

fn json_params(bytes: &[u8]) -> Result<Params, OAuthError> {
    let body: JsonBody = serde_json::from_slice(bytes).map_err(|_| {
        OAuthError::invalid_request("the body must be a JSON object (application/json)")
    })?;
    let mut params = Params::default();
    let mut client_secret = None;
    let mut seen = Vec::with_capacity(JSON_MEMBERS.len());
    for (name, value) in body.0 {
        if seen.contains(&name) {
            return Err(repeated(name));
        }
        seen.push(name);
        if name == "resource" {
            match value {
                JsonValue::Null => {}
                JsonValue::Text(text) => params.resources.push(text),
                JsonValue::List(list) => params.resources = list,
                JsonValue::Other => {
                    return Err(OAuthError::invalid_request(
                        "resource must be a string or an array of strings",
                    ));
                }
            }
            continue;
        }
        let text = match value {
            JsonValue::Null => continue,
            JsonValue::Text(text) => text,
            JsonValue::List(_) | JsonValue::Other => {
                return Err(OAuthError::invalid_request(format!(
                    "`{name}` must be a string"
                )));
            }
        };
        let slot = match name {
            "grant_type" => &mut params.grant_type,
            "client_id" => &mut params.client_id,
            "client_secret" => &mut client_secret,
            "audience" => &mut params.audience,
            _ => &mut params.scope,
        };
        *slot = Some(text);
    }
    params.client_secret = client_secret.map(SecretString::from);
    Ok(params)
}

/// The credentials (Basic or in the body, never both) and the token request.
fn client_credentials(
    basic: Option<Credentials>,
    params: Params,
) -> Result<(Credentials, TokenRequest), OAuthError> {
    match params.grant_type.as_deref() {
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
    let credentials = match (basic, params.client_secret) {
        (Some(_), Some(_)) => {
            return Err(OAuthError::invalid_request(
                "use one client authentication method, not both Basic and client_secret",
            ));
        }
        (Some(basic), None) => {
            if params
                .client_id
                .as_ref()
                .is_some_and(|id| *id != basic.client_id)
            {
                return Err(OAuthError::invalid_request(
                    "client_id in the body differs from the Authorization header",
                ));
            }
            basic
        }
        (None, Some(secret)) => Credentials {
            client_id: params.client_id.unwrap_or_default(),
            secret,
        },
        (None, None) => {
            return Err(OAuthError::invalid_client(
                "client authentication required: Basic, or client_id and client_secret in \
                 the body",
            ));
        }
    };
    let request = token_request(params.audience, params.resources, params.scope.as_deref())?;
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

    fn json(body: &str) -> Result<(Credentials, TokenRequest), OAuthError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        token_body(&headers, None, body.as_bytes())
    }

    #[test]
    fn json_bodies_read_like_forms() {
        let (credentials, request) = json(
            r#"{"client_id":"a","client_secret":"s","grant_type":"client_credentials",
                "audience":"https://api","scope":"w r w","organization":null,
                "extra":{"x":[1,{"y":null}]},"n":-1.5,"t":true,"resource":null}"#,
        )
        .unwrap();
        assert_eq!(credentials.client_id, "a");
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(&credentials.secret),
            "s"
        );
        assert_eq!(request.audience.as_deref(), Some("https://api"));
        assert_eq!(request.scope, "r w");
        assert!(request.resources.is_empty());
        let (_, request) = json(
            r#"{"client_id":"a","client_secret":"s","grant_type":"client_credentials",
                "resource":["https://b","https://a","https://b"]}"#,
        )
        .unwrap();
        assert_eq!(request.resources, ["https://a", "https://b"]);
        let (_, request) = json(
            r#"{"client_id":"a","client_secret":"s","grant_type":"client_credentials",
                "resource":"https://c"}"#,
        )
        .unwrap();
        assert_eq!(request.resources, ["https://c"]);
    }

    #[test]
    fn json_bodies_have_the_forms_limits() {
        let base = r#""client_id":"a","client_secret":"s","grant_type":"client_credentials""#;
        let eleven: Vec<String> = (0..11).map(|i| format!("\"https://r{i}\"")).collect();
        let cases = [
            (
                format!("{{{base},\"audience\":\"x\",\"audience\":\"y\"}}"),
                "repeated",
            ),
            (
                format!("{{{base},\"audience\":null,\"audience\":\"y\"}}"),
                "repeated",
            ),
            (format!("{{{base},\"client_id\":\"b\"}}"), "repeated"),
            (
                format!("{{{base},\"resource\":\"a\",\"resource\":\"b\"}}"),
                "repeated",
            ),
            (
                format!("{{{base},\"audience\":[\"x\"]}}"),
                "must be a string",
            ),
            (format!("{{{base},\"scope\":7}}"), "must be a string"),
            (
                format!("{{{base},\"resource\":[\"a\",1]}}"),
                "resource must be",
            ),
            (
                format!("{{{base},\"resource\":[{}]}}", eleven.join(",")),
                "at most 10",
            ),
            (
                format!("{{{base},\"audience\":\"a\\u0000b\"}}"),
                "printable",
            ),
            (
                format!("{{{base},\"audience\":\"{}\"}}", "a".repeat(2049)),
                "printable",
            ),
            ("[1,2]".to_owned(), "JSON object"),
            ("{\"grant_type\":".to_owned(), "JSON object"),
            (format!("{{{base}}} trailing"), "JSON object"),
        ];
        for (body, expected) in cases {
            let description = refusal(json(&body));
            assert!(description.contains(expected), "{body}: {description}");
        }
        // No client authentication, a wrong grant: the form's answers.
        let err = json(r#"{"grant_type":"client_credentials"}"#)
            .err()
            .unwrap();
        assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
        let err = json(r#"{"grant_type":"password","client_id":"a","client_secret":"s"}"#)
            .err()
            .unwrap();
        assert!(String::from_utf8_lossy(&err.body()).contains("unsupported_grant_type"));
        // Basic with a JSON body.
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let basic = Credentials {
            client_id: "a".into(),
            secret: SecretString::from("s"),
        };
        let (credentials, _) = token_body(
            &headers,
            Some(basic),
            br#"{"grant_type":"client_credentials","client_id":"a"}"#,
        )
        .unwrap();
        assert_eq!(credentials.client_id, "a");
        // Neither form nor JSON.
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let description = refusal(token_body(&headers, None, b"{}"));
        assert!(description.contains("application/json"), "{description}");
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
            refusal(token_body(
                &headers,
                None,
                b"grant_type=client_credentials&client_id=a&client_secret=b&scope=%22x%5C",
            )),
            refusal(token_body(
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
