//! Encryption at rest: AES-256-GCM with a key id per record, the Redis key as associated data.

use std::collections::HashMap;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use en_auth_core::Error;

/// The keys values are encrypted with: one current key (used to write) and older keys (still
/// read, for rotation). Values written under a key id that is not here are misses: the next
/// token overwrites them.
///
/// Rotation: add the new key as current and keep the old one with
/// [`with_old_key`](Self::with_old_key) until one token lifetime has passed on every process,
/// then drop it.
///
/// ```
/// use en_auth_redis::EncryptionKeys;
/// let keys = EncryptionKeys::new("2026-12", &[1u8; 32])?
///     .with_old_key("2026-11", &[2u8; 32])?;
/// assert_eq!(keys.current_id(), "2026-12");
/// # Ok::<(), en_auth_core::Error>(())
/// ```
#[derive(Clone)]
pub struct EncryptionKeys {
    current: String,
    keys: Arc<HashMap<String, Aes256Gcm>>,
}

impl std::fmt::Debug for EncryptionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&String> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("EncryptionKeys")
            .field("current", &self.current)
            .field("ids", &ids)
            .finish()
    }
}

fn cipher(id: &str, key: &[u8]) -> Result<Aes256Gcm, Error> {
    if id.is_empty() || id.len() > 64 {
        return Err(Error::InvalidConfiguration {
            setting: "encryption key id".into(),
            reason: "give every key a short non-empty id (1 to 64 characters)".into(),
        });
    }
    Aes256Gcm::new_from_slice(key).map_err(|_| Error::InvalidConfiguration {
        setting: format!("encryption key {id}"),
        reason: format!(
            "an AES-256 key is exactly 32 bytes (got {}); generate one with \
             `openssl rand -base64 32` and decode it",
            key.len()
        ),
    })
}

impl EncryptionKeys {
    /// Encrypt new values with `key` (32 bytes) under the id `id`.
    pub fn new(id: impl Into<String>, key: &[u8]) -> Result<Self, Error> {
        let id = id.into();
        let cipher = cipher(&id, key)?;
        let mut keys = HashMap::new();
        keys.insert(id.clone(), cipher);
        Ok(Self {
            current: id,
            keys: Arc::new(keys),
        })
    }

    /// Also read values written under an older key.
    pub fn with_old_key(mut self, id: impl Into<String>, key: &[u8]) -> Result<Self, Error> {
        let id = id.into();
        let cipher = cipher(&id, key)?;
        Arc::make_mut(&mut self.keys).entry(id).or_insert(cipher);
        Ok(self)
    }

    /// The id new values are written under.
    pub fn current_id(&self) -> &str {
        &self.current
    }

    /// `(key id, nonce, ciphertext)` of `plaintext`, bound to `aad`.
    pub(crate) fn seal(
        &self,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<(String, Vec<u8>, Vec<u8>), Error> {
        let cipher = self.keys.get(&self.current).ok_or_else(|| Error::Store {
            message: "the current encryption key is missing".into(),
            source: None,
        })?;
        let mut nonce = [0u8; 12];
        getrandom::getrandom(&mut nonce).map_err(|err| Error::Store {
            message: format!("no randomness for an encryption nonce: {err}"),
            source: None,
        })?;
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| Error::Store {
                message: "encryption failed".into(),
                source: None,
            })?;
        Ok((self.current.clone(), nonce.to_vec(), ciphertext))
    }

    /// The plaintext, or `None` for an unknown key id, a wrong nonce, or a ciphertext that was
    /// tampered with or moved from another key's slot.
    pub(crate) fn open(
        &self,
        id: &str,
        nonce: &[u8],
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Option<Vec<u8>> {
        if nonce.len() != 12 {
            return None;
        }
        self.keys
            .get(id)?
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .ok()
    }
}

/// `bytes` random bytes in hex (OS randomness; a clock-and-counter fallback keeps lock values
/// unique if the OS has none).
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if getrandom::getrandom(&mut buf).is_err() {
        for chunk in buf.chunks_mut(8) {
            let n = fastrand::u64(..).to_le_bytes();
            chunk.copy_from_slice(&n[..chunk.len()]);
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
