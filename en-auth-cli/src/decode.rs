//! Reading a JWT's header and claims WITHOUT verifying it: for display only.

use base64::Engine;
use serde_json::Value;

/// A JWT's header and claims, as JSON.
pub struct Decoded {
    /// The JOSE header.
    pub header: Value,
    /// The claims.
    pub claims: Value,
}

/// Decodes `token`'s header and claims; `None` when it is not a JWS compact JWT (an opaque
/// token). Nothing is verified.
pub fn decode_unverified(token: &str) -> Option<Decoded> {
    let mut parts = token.split('.');
    let (header, claims, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let part = |text: &str| -> Option<Value> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .ok()?;
        serde_json::from_slice::<Value>(&bytes)
            .ok()
            .filter(Value::is_object)
    };
    Some(Decoded {
        header: part(header)?,
        claims: part(claims)?,
    })
}

/// The scopes a token's claims grant: `scope` (space-separated), `scp` (string or list, as
/// Okta and Entra write it) and Auth0's `permissions`.
pub fn scopes(claims: &Value) -> Vec<String> {
    let mut scopes: Vec<String> = Vec::new();
    for name in ["scope", "scp", "permissions"] {
        match &claims[name] {
            Value::String(text) => scopes.extend(text.split_whitespace().map(str::to_owned)),
            Value::Array(items) => {
                scopes.extend(items.iter().filter_map(Value::as_str).map(str::to_owned))
            }
            _ => {}
        }
    }
    scopes.dedup();
    scopes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwts_are_decoded_and_opaque_tokens_are_not() {
        let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let jwt = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"RS256","kid":"k"}"#),
            b64(r#"{"sub":"svc","scope":"a b","permissions":["c"]}"#)
        );
        let decoded = decode_unverified(&jwt).unwrap();
        assert_eq!(decoded.header["kid"], "k");
        assert_eq!(scopes(&decoded.claims), ["a", "b", "c"]);
        assert!(decode_unverified("opaque-token-123").is_none());
        assert!(decode_unverified("a.b.c").is_none());
        assert!(decode_unverified(&format!("{jwt}.extra")).is_none());
    }
}
