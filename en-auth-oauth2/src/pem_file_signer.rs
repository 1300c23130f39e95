//! [`PemFileSigner`]: a private key read from a PEM file and read again when the file changes,
//! so a rotated key is used without a restart.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use en_auth_core::Error;

use crate::private_key_signer::PrivateKeySigner;
use crate::signer::{Signer, SigningAlgorithm};

/// The largest key file read (64 KiB): a PEM private key is a few kilobytes.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// A private key in a PEM file (PKCS#8, or PKCS#1 RSA), followed as the file is rotated.
///
/// Before each JWT it signs ([`Signer::current`]) it looks at the file's modification time,
/// length (and, on Unix, inode: a file replaced by a rename, as Kubernetes does with a
/// secret volume, counts as changed) — one `stat`, no read — and reads the key again when
/// any of them changed. A new file that cannot be read or is not a key leaves the last good
/// key in use, with one warning per such version of the file (never a panic, never the key
/// in a message); the next change is read again.
///
/// **Key id**: by default the `kid` is the RFC 7638 thumbprint of each key's public half
/// (base64url SHA-256), so a rotated key announces itself under its own id: register the
/// keys at the provider under their thumbprints
/// (`jose.calculateJwkThumbprint`, `step crypto jwk thumbprint`). [`with_key_id`](Self::with_key_id)
/// sets one fixed `kid` for every key instead.
///
/// ```no_run
/// use std::sync::Arc;
/// use en_auth_core::ClientInfo;
/// use en_auth_oauth2::{ClientAuthentication, PemFileSigner, ServiceAccountAuthorizer};
/// # fn demo() -> Result<(), en_auth_core::Error> {
/// let signer = PemFileSigner::open("/etc/svc/client-key.pem")?; // rotated by cert-manager, vault-agent, …
/// let authorizer = ServiceAccountAuthorizer::new(ClientInfo::new("svc", ""), "https://idp.example.com/token")
///     .with_authentication(ClientAuthentication::private_key_jwt_signer(Arc::new(signer)));
/// # Ok(()) }
/// ```
pub struct PemFileSigner {
    path: PathBuf,
    kid: Option<String>,
    state: Mutex<State>,
}

struct State {
    /// The key in use: the last one read successfully.
    key: Arc<PrivateKeySigner>,
    /// The file version `key` was read from.
    loaded: Stamp,
    /// A file version that could not be used (warned about once; not read again).
    refused: Option<Stamp>,
}

/// What identifies a version of the file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Stamp {
    fn of(metadata: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(metadata);
        #[cfg(not(unix))]
        let inode = 0;
        Self {
            modified: metadata.modified().ok(),
            len: metadata.len(),
            inode,
        }
    }
}

impl PemFileSigner {
    /// Reads the key in the file at `path` now: a missing file or one that holds no usable
    /// key is [`Error::InvalidConfiguration`] naming the path (never the key). The `kid` is
    /// each key's RFC 7638 thumbprint.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, Error> {
        let path = path.into();
        let metadata = std::fs::metadata(&path).map_err(|e| unreadable(&path, &e.to_string()))?;
        let stamp = Stamp::of(&metadata);
        let pem = read_capped(&path, stamp.len)
            .and_then(|()| std::fs::read(&path).map_err(|e| unreadable(&path, &e.to_string())))?;
        let key = parse(&path, &pem, None)?;
        Ok(Self {
            path,
            kid: None,
            state: Mutex::new(State {
                key: Arc::new(key),
                loaded: stamp,
                refused: None,
            }),
        })
    }

    /// Announces every key (this one and the ones rotated in later) with `kid` instead of its
    /// thumbprint.
    pub fn with_key_id(mut self, kid: impl Into<String>) -> Self {
        let kid = kid.into();
        let state = self
            .state
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.key = Arc::new((*state.key).clone().with_key_id(Some(kid.clone())));
        self.kid = Some(kid);
        self
    }

    /// The key file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn key(&self) -> Arc<PrivateKeySigner> {
        Arc::clone(
            &self
                .state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .key,
        )
    }

    /// Reads the file again if it changed since the key in use was read; the key to sign
    /// with.
    async fn reload(&self) -> Arc<PrivateKeySigner> {
        let stamp = match tokio::fs::metadata(&self.path).await {
            Ok(metadata) => Stamp::of(&metadata),
            Err(e) => {
                // Missing for a moment (a rotation that deletes, then writes): keep the key.
                self.refuse(None, &e.to_string());
                return self.key();
            }
        };
        {
            let state = self
                .state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if state.loaded == stamp || state.refused == Some(stamp) {
                return Arc::clone(&state.key);
            }
        }
        let read = match read_capped(&self.path, stamp.len) {
            Ok(()) => tokio::fs::read(&self.path)
                .await
                .map_err(|e| unreadable(&self.path, &e.to_string())),
            Err(e) => Err(e),
        };
        match read.and_then(|pem| parse(&self.path, &pem, self.kid.clone())) {
            Ok(key) => {
                let key = Arc::new(key);
                let mut state = self
                    .state
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                tracing::info!(
                    path = %self.path.display(),
                    thumbprint = key.thumbprint(),
                    "read the rotated signing key"
                );
                state.key = Arc::clone(&key);
                state.loaded = stamp;
                state.refused = None;
                key
            }
            Err(err) => {
                let reason = match err {
                    Error::InvalidConfiguration { reason, .. } => reason,
                    other => other.to_string(),
                };
                self.refuse(Some(stamp), &reason);
                self.key()
            }
        }
    }

    /// Remembers a file version that cannot be used, warning once for it.
    fn refuse(&self, stamp: Option<Stamp>, reason: &str) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let version = stamp.unwrap_or(Stamp {
            modified: None,
            len: u64::MAX,
            inode: u64::MAX,
        });
        if state.refused != Some(version) {
            state.refused = Some(version);
            tracing::warn!(
                path = %self.path.display(),
                reason,
                "the signing key file changed but cannot be used; still signing with the last \
                 key read"
            );
        }
    }
}

fn unreadable(path: &Path, reason: &str) -> Error {
    Error::InvalidConfiguration {
        setting: format!("private key file {}", path.display()),
        reason: reason.to_owned(),
    }
}

fn read_capped(path: &Path, len: u64) -> Result<(), Error> {
    if len > MAX_KEY_FILE_BYTES {
        return Err(unreadable(
            path,
            &format!("larger than {MAX_KEY_FILE_BYTES} bytes; not a PEM key"),
        ));
    }
    Ok(())
}

/// The key in `pem`; `kid` given, or else the key's thumbprint.
fn parse(path: &Path, pem: &[u8], kid: Option<String>) -> Result<PrivateKeySigner, Error> {
    let key = PrivateKeySigner::from_pem(pem, None).map_err(|e| match e {
        Error::InvalidConfiguration { reason, .. } => unreadable(path, &reason),
        other => other,
    })?;
    let kid = kid.unwrap_or_else(|| key.thumbprint().to_owned());
    Ok(key.with_key_id(Some(kid)))
}

#[async_trait]
impl Signer for PemFileSigner {
    fn algorithm(&self) -> SigningAlgorithm {
        self.key().algorithm()
    }

    fn key_id(&self) -> Option<String> {
        self.key().key_id()
    }

    fn public_jwk(&self) -> serde_json::Value {
        self.key().public_jwk()
    }

    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        self.key().sign_now(message)
    }

    async fn current(&self) -> Result<Option<Arc<dyn Signer>>, Error> {
        let key: Arc<dyn Signer> = self.reload().await;
        Ok(Some(key))
    }
}

impl fmt::Debug for PemFileSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PemFileSigner")
            .field("path", &self.path)
            .field("key", &self.key())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_useless_file_is_a_configuration_error_naming_the_path_only() {
        let dir = std::env::temp_dir().join(format!("en-auth-pem-signer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        match PemFileSigner::open(&missing) {
            Err(Error::InvalidConfiguration { setting, .. }) => {
                assert!(
                    setting.contains(&missing.display().to_string()),
                    "{setting}"
                );
            }
            other => panic!("{other:?}"),
        }
        let useless = dir.join("useless.pem");
        std::fs::write(
            &useless,
            "-----BEGIN PRIVATE KEY-----\nMIIBVQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        match PemFileSigner::open(&useless) {
            Err(Error::InvalidConfiguration { setting, reason }) => {
                assert!(setting.contains("useless.pem"), "{setting}");
                assert!(!reason.contains("MII"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
