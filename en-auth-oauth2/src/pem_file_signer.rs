//! [`PemFileSigner`]: a private key read from a PEM file and read again when the file changes,
//! so a rotated key is used without a restart.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use en_auth_core::Error;
use zeroize::Zeroizing;

use crate::private_key_signer::PrivateKeySigner;
use crate::signer::{Signer, SigningAlgorithm};

/// The largest key file read (64 KiB): a PEM private key is a few kilobytes.
const MAX_KEY_FILE_BYTES: usize = 64 * 1024;

/// A private key in a PEM file (PKCS#8, or PKCS#1 RSA), followed as the file is rotated.
///
/// Before each JWT it signs ([`Signer::current`]) it looks at the file's modification time,
/// length and, on Unix, inode, device and status-change time (`ctime`) — one `stat`, no
/// read — and reads the key again when any of them changed. The inode catches a file
/// replaced by a rename or a `..data` symlink swap, as Kubernetes does with a secret volume;
/// the `ctime`, which no program can set back, catches a rewrite in place of the same length
/// within one tick of the modification time (or with the modification time restored).
/// Only regular files of at most 64 KiB are read (a FIFO put at the path cannot block a
/// thread), and the file's bytes are zeroized once parsed.
///
/// As a DPoP key ([`with_dpop_signer`](crate::ServiceAccountAuthorizer::with_dpop_signer))
/// it is not followed: the authorizer pins the key it read first, the one its tokens are
/// bound to, and never stats the file per request. A new file that cannot be read or is not a key leaves the last good
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
    /// Device and inode: another file under the same path (a rename, a symlink swap).
    device: u64,
    inode: u64,
    /// Status-change time (seconds, nanoseconds): changes with every write, and cannot be set
    /// back (unlike the modification time).
    changed: (i64, i64),
}

impl Stamp {
    fn of(metadata: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let (device, inode, changed) = {
            use std::os::unix::fs::MetadataExt as _;
            (
                metadata.dev(),
                metadata.ino(),
                (metadata.ctime(), metadata.ctime_nsec()),
            )
        };
        #[cfg(not(unix))]
        let (device, inode, changed) = (0, 0, (0, 0));
        Self {
            modified: metadata.modified().ok(),
            len: metadata.len(),
            device,
            inode,
            changed,
        }
    }
}

impl PemFileSigner {
    /// Reads the key in the file at `path` now: a missing file or one that holds no usable
    /// key is [`Error::InvalidConfiguration`] naming the path (never the key). The `kid` is
    /// each key's RFC 7638 thumbprint.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, Error> {
        let path = path.into();
        let (pem, stamp) = checked(&path, crate::secret_file::read(&path, MAX_KEY_FILE_BYTES))?;
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
        // The file read is stamped with its own metadata (it may have changed again since the
        // stat above).
        let read = checked(
            &self.path,
            crate::secret_file::read_async(&self.path, MAX_KEY_FILE_BYTES).await,
        );
        let (stamp, parsed) = match read {
            Ok((pem, read_stamp)) => (read_stamp, parse(&self.path, &pem, self.kid.clone())),
            Err(e) => (stamp, Err(e)),
        };
        match parsed {
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
            device: u64::MAX,
            inode: u64::MAX,
            changed: (i64::MAX, i64::MAX),
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

/// The key file's bytes (zeroized when dropped) and its stamp, from a
/// [`secret_file`](crate::secret_file) read; an oversized or unreadable file is
/// [`Error::InvalidConfiguration`] naming the path.
fn checked(
    path: &Path,
    read: std::io::Result<crate::secret_file::SecretFile>,
) -> Result<(Zeroizing<Vec<u8>>, Stamp), Error> {
    let file = read.map_err(|e| unreadable(path, &e.to_string()))?;
    if file.bytes.len() > MAX_KEY_FILE_BYTES {
        return Err(unreadable(
            path,
            &format!("larger than {MAX_KEY_FILE_BYTES} bytes; not a PEM key"),
        ));
    }
    Ok((file.bytes, Stamp::of(&file.metadata)))
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

    /// A P-256 key as PKCS#8 PEM (every such PEM has the same length), and its thumbprint.
    fn key_pem(seed: u8) -> (String, String) {
        use p256::pkcs8::EncodePrivateKey as _;
        let secret = p256::SecretKey::from_slice(&[seed; 32]).unwrap();
        let pem = secret.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).unwrap();
        let kid = PrivateKeySigner::from_pem(pem.as_bytes(), None)
            .unwrap()
            .thumbprint()
            .to_owned();
        (pem.to_string(), kid)
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("en-auth-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    async fn kid_now(signer: &PemFileSigner) -> Option<String> {
        signer.current().await.unwrap().unwrap().key_id()
    }

    fn set_modified(path: &Path, time: SystemTime) {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(time)
            .unwrap();
    }

    /// Kubernetes updates a secret volume by pointing the `..data` symlink at a new directory:
    /// the key file's path resolves to another inode — seen even when the new file has the
    /// same length and modification time.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_kubelet_style_symlink_swap_is_seen() {
        let dir = temp_dir("pem-symlink-swap");
        let ((pem_a, kid_a), (pem_b, kid_b)) = (key_pem(7), key_pem(9));
        assert_eq!(pem_a.len(), pem_b.len());
        let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        for (version, pem) in [("..v1", &pem_a), ("..v2", &pem_b)] {
            std::fs::create_dir(dir.join(version)).unwrap();
            std::fs::write(dir.join(version).join("key.pem"), pem).unwrap();
            set_modified(&dir.join(version).join("key.pem"), time);
        }
        std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/key.pem", dir.join("key.pem")).unwrap();

        let signer = PemFileSigner::open(dir.join("key.pem")).unwrap();
        assert_eq!(kid_now(&signer).await, Some(kid_a.clone()));
        assert_eq!(kid_now(&signer).await, Some(kid_a));
        std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        assert_eq!(kid_now(&signer).await, Some(kid_b));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A rewrite in place with a key of the same length, the modification time set back (or
    /// within one tick of it): the status-change time still tells.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_same_length_rewrite_in_place_is_seen() {
        let dir = temp_dir("pem-in-place");
        let ((pem_a, kid_a), (pem_b, kid_b)) = (key_pem(3), key_pem(5));
        let path = dir.join("key.pem");
        std::fs::write(&path, &pem_a).unwrap();
        let signer = PemFileSigner::open(&path).unwrap();
        assert_eq!(kid_now(&signer).await, Some(kid_a));
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&path, &pem_b).unwrap();
        set_modified(&path, modified);
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            modified
        );
        assert_eq!(kid_now(&signer).await, Some(kid_b));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A FIFO put at the key's path is refused at once (the last key stays in use), never
    /// waited on.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_fifo_at_the_path_does_not_block() {
        let dir = temp_dir("pem-fifo");
        let ((pem_a, kid_a), _) = (key_pem(4), ());
        let path = dir.join("key.pem");
        std::fs::write(&path, &pem_a).unwrap();
        let signer = PemFileSigner::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        // Real time: a blocked read never returns, so the wait is bounded.
        let kid = tokio::time::timeout(std::time::Duration::from_secs(5), kid_now(&signer))
            .await
            .unwrap_or_else(|_| {
                // Let the blocked reader go (a writer opens the FIFO) so the test fails, not hangs.
                drop(std::fs::OpenOptions::new().write(true).open(&path));
                panic!("blocked on a FIFO")
            });
        assert_eq!(kid, Some(kid_a));
        match PemFileSigner::open(&path) {
            Err(Error::InvalidConfiguration { reason, .. }) => {
                assert!(reason.contains("FIFO"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

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
