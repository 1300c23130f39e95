//! The value stored under a token key: a versioned JSON record, optionally encrypted.
//!
//! Plain: `{"v":1,"token":"<serialized token>","expires_at":<ms>,"issued_at":<ms>}`.
//! Encrypted: `{"v":1,"kid":"<key id>","nonce":"<b64>","ct":"<b64>"}`, where the ciphertext is
//! the plain record and the Redis key is the associated data.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use en_auth_core::Error;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::{EncryptionKeys, SCHEMA_VERSION};

/// A record read back.
pub(crate) struct Record {
    pub(crate) token: SecretString,
    pub(crate) expires_at_ms: i64,
}

impl Record {
    pub(crate) fn is_live(&self) -> bool {
        self.expires_at_ms > chrono::Utc::now().timestamp_millis()
    }
}

#[derive(Serialize, Deserialize)]
struct Plain {
    v: u32,
    token: String,
    expires_at: i64,
    issued_at: i64,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    issued_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ct: Option<String>,
}

/// The bytes to store for `token`, living `ttl` from now.
pub(crate) fn seal(
    token: &SecretString,
    ttl: Duration,
    redis_key: &str,
    keys: Option<&EncryptionKeys>,
) -> Result<Vec<u8>, Error> {
    let now = chrono::Utc::now().timestamp_millis();
    let plain = Plain {
        v: SCHEMA_VERSION,
        token: token.expose_secret().to_owned(),
        expires_at: now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
        issued_at: now,
    };
    let plain = serde_json::to_vec(&plain).map_err(Error::store)?;
    let Some(keys) = keys else {
        return Ok(plain);
    };
    let (kid, nonce, ct) = keys.seal(&plain, redis_key.as_bytes())?;
    serde_json::to_vec(&Envelope {
        v: SCHEMA_VERSION,
        token: None,
        expires_at: None,
        issued_at: None,
        kid: Some(kid),
        nonce: Some(STANDARD.encode(nonce)),
        ct: Some(STANDARD.encode(ct)),
    })
    .map_err(Error::store)
}

/// The record in `raw`, or `None` when it cannot be used: other schema version, malformed,
/// encrypted under an unknown key, tampered with, moved from another key, or plain while
/// encryption is on.
pub(crate) fn open(raw: &[u8], redis_key: &str, keys: Option<&EncryptionKeys>) -> Option<Record> {
    let envelope: Envelope = serde_json::from_slice(raw).ok()?;
    if envelope.v != SCHEMA_VERSION {
        return None;
    }
    let plain: Plain = match (&envelope.kid, keys) {
        (Some(kid), Some(keys)) => {
            let nonce = STANDARD.decode(envelope.nonce.as_deref()?).ok()?;
            let ct = STANDARD.decode(envelope.ct.as_deref()?).ok()?;
            let bytes = keys.open(kid, &nonce, &ct, redis_key.as_bytes())?;
            serde_json::from_slice(&bytes).ok()?
        }
        // Encrypted, but this process has no keys; or plain while this process encrypts
        // (a downgrade must not be accepted silently): a miss, overwritten by the next token.
        (Some(_), None) | (None, Some(_)) => return None,
        (None, None) => Plain {
            v: envelope.v,
            token: envelope.token?,
            expires_at: envelope.expires_at?,
            issued_at: envelope.issued_at.unwrap_or(0),
        },
    };
    if plain.v != SCHEMA_VERSION {
        return None;
    }
    Some(Record {
        token: SecretString::from(plain.token),
        expires_at_ms: plain.expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> SecretString {
        SecretString::from(r#"{"access_token":"tok-123"}"#.to_owned())
    }

    #[test]
    fn plain_round_trip_and_versions() {
        let raw = seal(&token(), Duration::from_secs(60), "k", None).unwrap();
        let record = open(&raw, "k", None).unwrap();
        assert_eq!(record.token.expose_secret(), token().expose_secret());
        assert!(record.is_live());
        let other = String::from_utf8(raw)
            .unwrap()
            .replace("\"v\":1", "\"v\":2");
        assert!(open(other.as_bytes(), "k", None).is_none());
        assert!(open(b"not json", "k", None).is_none());
    }

    #[test]
    fn encrypted_round_trip_binds_key_and_key_id() {
        let keys = EncryptionKeys::new("a", &[3u8; 32]).unwrap();
        let raw = seal(&token(), Duration::from_secs(60), "k1", Some(&keys)).unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains("tok-123"));
        assert!(open(&raw, "k1", Some(&keys)).is_some());
        // Moved to another key's slot: associated data differs.
        assert!(open(&raw, "k2", Some(&keys)).is_none());
        // Unknown key id.
        let other = EncryptionKeys::new("b", &[3u8; 32]).unwrap();
        assert!(open(&raw, "k1", Some(&other)).is_none());
        // Rotation: the old key still reads.
        let rotated = EncryptionKeys::new("c", &[4u8; 32])
            .unwrap()
            .with_old_key("a", &[3u8; 32])
            .unwrap();
        assert!(open(&raw, "k1", Some(&rotated)).is_some());
        // No keys here, or plain while encrypting: misses.
        assert!(open(&raw, "k1", None).is_none());
        let plain = seal(&token(), Duration::from_secs(60), "k1", None).unwrap();
        assert!(open(&plain, "k1", Some(&keys)).is_none());
    }
}
