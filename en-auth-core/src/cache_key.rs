//! [`CacheKey`]: which token a cache holds, and [`FleetKey`]: the secret a shared store names
//! it with.
//!
//! # Two steps
//!
//! 1. An authorizer describes its token with [`CacheKey::builder`]: every input that changes
//!    the token (token URL, client id, audience, scopes, …) and its secrets. The key keeps
//!    only a SHA-256 digest of them; secrets enter it hashed. The digest never leaves the
//!    process and is never printed: a plain hash of a weak secret could be guessed offline.
//! 2. A store that other processes can read names the key with a secret of its own:
//!    [`CacheKey::name_with`] is an HMAC-SHA256 of the digest keyed with a [`FleetKey`], the
//!    same in every process of a fleet. Two stores with different fleet keys name the same
//!    credentials differently and share nothing, even in one process.
//!
//! What a key prints ([`Display`](std::fmt::Display), [`Debug`], [`CacheKey::as_str`]) is a
//! label keyed with a random secret of this process: stable while the process runs, useless
//! for guessing anything outside it.

use std::sync::OnceLock;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::{Digest, Sha256};

use crate::Error;

/// The environment variable a shared store reads its [`FleetKey`] from when none was given
/// in code: at least 32 bytes of random text, the same for every process of a fleet.
pub const FLEET_KEY_ENV: &str = "EN_AUTH_FLEET_KEY";

/// The shortest fleet key accepted, in bytes.
pub const MIN_FLEET_KEY_BYTES: usize = 32;

/// The secret with which a shared store (Redis) names [`CacheKey`]s: every process of a fleet
/// must use the same one to share tokens, and it must be kept as secret as the client secrets
/// it protects (from a secret manager, or the [`FLEET_KEY_ENV`] variable). Its `Debug` output
/// is redacted.
///
/// ```
/// use en_auth_core::FleetKey;
/// let key = FleetKey::new(b"0123456789abcdef0123456789abcdef-example").unwrap();
/// assert_eq!(format!("{key:?}"), "FleetKey([REDACTED])");
/// assert!(FleetKey::new(b"too short").is_err());
/// ```
#[derive(Clone)]
pub struct FleetKey(SecretSlice<u8>);

impl FleetKey {
    /// A fleet key from `bytes`; fails with [`Error::InvalidConfiguration`] when it is shorter
    /// than [`MIN_FLEET_KEY_BYTES`].
    pub fn new(bytes: impl AsRef<[u8]>) -> Result<Self, Error> {
        Self::named(bytes.as_ref(), "fleet key")
    }

    /// The fleet key from the [`FLEET_KEY_ENV`] environment variable (or, while the
    /// deprecated [`set_fleet_key`] is still in use, the key given to it). Fails with
    /// [`Error::MissingConfiguration`] naming the variable when there is none: a store that
    /// cannot share must not start as if it did.
    pub fn from_env() -> Result<Self, Error> {
        if let Some(key) = DEPRECATED_PROCESS_KEY.get() {
            return Ok(key.clone());
        }
        match std::env::var(FLEET_KEY_ENV) {
            Ok(value) => Self::from_env_value(Some(&value)),
            Err(std::env::VarError::NotPresent) => Self::from_env_value(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(Error::InvalidConfiguration {
                setting: FLEET_KEY_ENV.into(),
                reason: "is not valid UTF-8".into(),
            }),
        }
    }

    /// What [`from_env`](Self::from_env) makes of the variable's value (`None`: not set).
    /// An empty value counts as not set.
    pub fn from_env_value(value: Option<&str>) -> Result<Self, Error> {
        match value {
            None | Some("") => Err(Error::MissingConfiguration {
                setting: FLEET_KEY_ENV.into(),
            }),
            Some(value) => Self::named(value.as_bytes(), FLEET_KEY_ENV),
        }
    }

    fn named(bytes: &[u8], setting: &str) -> Result<Self, Error> {
        if bytes.len() < MIN_FLEET_KEY_BYTES {
            return Err(Error::InvalidConfiguration {
                setting: setting.into(),
                reason: format!(
                    "the fleet key has {} bytes; it must have at least {MIN_FLEET_KEY_BYTES} \
                     bytes of random data, the same in every process of the fleet (e.g. \
                     `openssl rand -base64 48`)",
                    bytes.len()
                ),
            });
        }
        Ok(Self(SecretSlice::from(bytes.to_vec())))
    }

    fn mac(&self) -> Hmac<Sha256> {
        keyed(self.0.expose_secret())
    }

    fn same_as(&self, other: &FleetKey) -> bool {
        self.0.expose_secret() == other.0.expose_secret()
    }
}

impl std::fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetKey([REDACTED])")
    }
}

/// HMAC-SHA256 keyed with `key`. HMAC pads keys up to its block size and hashes longer ones
/// first; doing that here gives the same MAC as `new_from_slice` without a fallible call.
fn keyed(key: &[u8]) -> Hmac<Sha256> {
    let mut block = hmac::digest::generic_array::GenericArray::default();
    if key.len() <= block.len() {
        block[..key.len()].copy_from_slice(key);
    } else {
        block[..32].copy_from_slice(&Sha256::digest(key));
    }
    <Hmac<Sha256> as hmac::digest::KeyInit>::new(&block)
}

/// The key of [`set_fleet_key`], read by [`FleetKey::from_env`] only.
static DEPRECATED_PROCESS_KEY: OnceLock<FleetKey> = OnceLock::new();

/// Sets a process-wide default fleet key for stores given none.
///
/// Fails with [`Error::InvalidConfiguration`] for a key shorter than
/// [`MIN_FLEET_KEY_BYTES`] or when another key was set before.
#[deprecated(
    note = "give the key to the store: `RedisTokenStore::builder(url).fleet_key(&key)`, or set \
            EN_AUTH_FLEET_KEY"
)]
pub fn set_fleet_key(key: &[u8]) -> Result<(), Error> {
    let key = FleetKey::new(key)?;
    let current = DEPRECATED_PROCESS_KEY.get_or_init(|| key.clone());
    if current.same_as(&key) {
        Ok(())
    } else {
        Err(Error::InvalidConfiguration {
            setting: "fleet key".into(),
            reason: "another fleet key was set before; give each store its own key with \
                     `RedisTokenStore::builder(url).fleet_key(&key)` instead"
                .into(),
        })
    }
}

/// Whether a store given no key would find one ([`FleetKey::from_env`] succeeds).
#[deprecated(note = "connecting a shared store without a fleet key fails with \
            Error::MissingConfiguration; call `FleetKey::from_env()` to check beforehand")]
pub fn fleet_key_is_shared() -> bool {
    FleetKey::from_env().is_ok()
}

/// A random secret of this process, for the labels keys print.
fn process_secret() -> &'static [u8; 32] {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    SECRET.get_or_init(|| {
        let mut bytes = [0u8; 32];
        if getrandom::getrandom(&mut bytes).is_err() {
            // No OS randomness: mix what there is; still unknown outside this process.
            let mut hasher = Sha256::new();
            hasher.update(fastrand::u64(..).to_le_bytes());
            hasher.update(std::process::id().to_le_bytes());
            hasher.update(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
                    .to_le_bytes(),
            );
            bytes.copy_from_slice(&hasher.finalize());
        }
        bytes
    })
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Which token a cache holds: a digest of every input that changes the token, with secrets
/// entering it hashed. The digest stays in memory; a shared store files the key under
/// [`name_with`](Self::name_with) its [`FleetKey`]. What a key prints is a per-process label
/// ([`as_str`](Self::as_str)) from which nothing can be guessed outside the process.
///
/// ```
/// use en_auth_core::{CacheKey, FleetKey};
/// let a = CacheKey::builder("oauth2").part("client_id", "svc").secret("secret", "s1").build();
/// let b = CacheKey::builder("oauth2").part("client_id", "svc").secret("secret", "s2").build();
/// assert_ne!(a, b);
/// assert!(a.as_str().starts_with("en-auth:oauth2:"));
///
/// let fleet = FleetKey::new([7u8; 32]).unwrap();
/// let other = FleetKey::new([8u8; 32]).unwrap();
/// assert!(a.name_with(&fleet).starts_with("oauth2:"));
/// assert_ne!(a.name_with(&fleet), a.name_with(&other));
/// ```
#[derive(Clone)]
pub struct CacheKey {
    kind: String,
    digest: [u8; 32],
    label: String,
}

impl CacheKey {
    /// Starts a key for the given kind of authorizer (`"oauth2"`, `"srp"`, …).
    pub fn builder(kind: &str) -> CacheKeyBuilder {
        let mut hasher = Sha256::new();
        hasher.update(b"en-auth cache key\0");
        let builder = CacheKeyBuilder {
            kind: kind.to_owned(),
            hasher,
        };
        builder.field(b'k', kind.as_bytes())
    }

    /// The kind of authorizer the key was built for.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// This process's label for the key, e.g. `en-auth:oauth2:3f7a…`: equal keys have equal
    /// labels within one process, and [`StoreEvent`](crate::StoreEvent)s name keys by it. It
    /// is keyed with a random secret of the process, so it differs between processes and
    /// reveals nothing about the inputs: it is what logs may show, and never the name a
    /// shared store files the key under.
    pub fn as_str(&self) -> &str {
        &self.label
    }

    /// The name a shared store files this key under: `<kind>:<hex>`, an HMAC-SHA256 of the
    /// key's digest with `fleet_key`. Processes with the same fleet key get the same name for
    /// the same inputs; without the fleet key the name cannot be linked to any input.
    pub fn name_with(&self, fleet_key: &FleetKey) -> String {
        let mut mac = fleet_key.mac();
        mac.update(b"en-auth store name\0");
        mac.update(&self.digest);
        format!("{}:{}", self.kind, hex(&mac.finalize().into_bytes()[..16]))
    }
}

impl PartialEq for CacheKey {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

impl Eq for CacheKey {}

impl std::hash::Hash for CacheKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.digest.hash(state);
    }
}

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label)
    }
}

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CacheKey").field(&self.label).finish()
    }
}

/// Builds a [`CacheKey`]; each input is tagged and length-prefixed so that no two
/// different sets of inputs give the same digest.
pub struct CacheKeyBuilder {
    kind: String,
    hasher: Sha256,
}

impl std::fmt::Debug for CacheKeyBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheKeyBuilder")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl CacheKeyBuilder {
    fn field(mut self, tag: u8, value: &[u8]) -> Self {
        self.hasher.update([tag]);
        self.hasher.update((value.len() as u64).to_be_bytes());
        self.hasher.update(value);
        self
    }

    /// Adds a named input that changes the token (token URL, audience, scopes, …).
    pub fn part(self, name: &str, value: &str) -> Self {
        self.field(b'n', name.as_bytes())
            .field(b'v', value.as_bytes())
    }

    /// Adds a secret input (a client secret): only its SHA-256 enters the key, and the key
    /// never shows its digest.
    pub fn secret(self, name: &str, value: &str) -> Self {
        let mut inner = Sha256::new();
        inner.update(b"en-auth secret\0");
        inner.update((value.len() as u64).to_be_bytes());
        inner.update(value.as_bytes());
        let hashed = inner.finalize();
        self.field(b'n', name.as_bytes()).field(b's', &hashed)
    }

    /// The finished key.
    pub fn build(self) -> CacheKey {
        let digest: [u8; 32] = self.hasher.finalize().into();
        let mut mac = keyed(process_secret());
        mac.update(b"en-auth label\0");
        mac.update(&digest);
        let label = format!(
            "en-auth:{}:{}",
            self.kind,
            hex(&mac.finalize().into_bytes()[..16])
        );
        CacheKey {
            kind: self.kind,
            digest,
            label,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &str) -> CacheKey {
        CacheKey::builder("oauth2")
            .part("client_id", "svc")
            .secret("client_secret", secret)
            .build()
    }

    #[test]
    fn equal_inputs_give_equal_keys_and_names() {
        let fleet = FleetKey::new([1u8; 32]).unwrap();
        assert_eq!(key("s"), key("s"));
        assert_eq!(key("s").as_str(), key("s").as_str());
        assert_eq!(key("s").name_with(&fleet), key("s").name_with(&fleet));
        assert_ne!(key("s"), key("t"));
        assert_ne!(key("s").name_with(&fleet), key("t").name_with(&fleet));
    }

    #[test]
    fn parts_do_not_run_into_each_other() {
        let a = CacheKey::builder("x").part("ab", "c").build();
        let b = CacheKey::builder("x").part("a", "bc").build();
        assert_ne!(a, b);
        let plain = CacheKey::builder("x").part("s", "v").build();
        let secret = CacheKey::builder("x").secret("s", "v").build();
        assert_ne!(plain, secret, "a secret and a plain part never collide");
        assert_ne!(
            CacheKey::builder("x").build(),
            CacheKey::builder("y").build()
        );
    }

    #[test]
    fn names_depend_on_the_fleet_key() {
        let a = FleetKey::new([1u8; 32]).unwrap();
        let b = FleetKey::new([2u8; 32]).unwrap();
        assert_ne!(key("s").name_with(&a), key("s").name_with(&b));
        assert!(key("s").name_with(&a).starts_with("oauth2:"));
        assert_eq!(key("s").name_with(&a).len(), "oauth2:".len() + 32);
    }

    /// What a key prints is neither the digest nor anything computed from the secret without
    /// a key this process keeps to itself.
    #[test]
    fn printing_a_key_reveals_no_hash_of_the_secret() {
        let k = key("hunter2");
        let printed = format!("{k} {k:?} {}", k.as_str());
        assert!(!printed.contains("hunter2"));
        assert!(!printed.contains(&hex(&k.digest)));
        assert!(!printed.contains(&hex(&k.digest[..16])));
        let plain_sha = hex(&Sha256::digest(b"hunter2"));
        assert!(!printed.contains(&plain_sha[..16]));
        let fleet = FleetKey::new([1u8; 32]).unwrap();
        assert!(!printed.contains(&k.name_with(&fleet)));
    }

    #[test]
    fn short_or_missing_fleet_keys_are_refused() {
        match FleetKey::from_env_value(None) {
            Err(Error::MissingConfiguration { setting }) => assert_eq!(setting, FLEET_KEY_ENV),
            other => panic!("{other:?}"),
        }
        match FleetKey::from_env_value(Some("")) {
            Err(Error::MissingConfiguration { setting }) => assert_eq!(setting, FLEET_KEY_ENV),
            other => panic!("{other:?}"),
        }
        let short = "k".repeat(MIN_FLEET_KEY_BYTES - 1);
        match FleetKey::from_env_value(Some(&short)) {
            Err(err @ Error::InvalidConfiguration { .. }) => {
                let text = err.to_string();
                assert!(text.contains(FLEET_KEY_ENV) && text.contains("at least 32"));
                assert!(!text.contains(&short), "the key is never in the error");
            }
            other => panic!("{other:?}"),
        }
        assert!(FleetKey::from_env_value(Some(&"k".repeat(MIN_FLEET_KEY_BYTES))).is_ok());
        assert!(matches!(
            FleetKey::new([0u8; 31]),
            Err(Error::InvalidConfiguration { .. })
        ));
    }

    #[test]
    fn keyed_is_hmac_for_short_and_long_keys() {
        for len in [0, 1, 32, 64, 65, 200] {
            let key = vec![0x5a; len];
            let mut ours = keyed(&key);
            let mut reference = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
            ours.update(b"message");
            reference.update(b"message");
            assert_eq!(
                ours.finalize().into_bytes(),
                reference.finalize().into_bytes()
            );
        }
    }

    #[test]
    fn the_fleet_key_is_never_printed() {
        let key = FleetKey::new("a-fleet-key-that-must-stay-secret-0123").unwrap();
        let printed = format!("{key:?}");
        assert!(!printed.contains("secret-0123"), "{printed}");
    }
}
