//! DPoP (RFC 9449): proofs of possession that bind a token to a key the client holds.
//!
//! A DPoP client owns an EC P-256 key. Every request — the token request and each API request
//! — carries a `DPoP` header: a short JWT (`typ: dpop+jwt`, `alg: ES256`, the public key as
//! `jwk` in its header) that names the request's method (`htm`) and URL without query and
//! fragment (`htu`), when it was made (`iat`), a random id (`jti`), for API requests the
//! SHA-256 of the access token (`ath`), and the server's latest nonce when it handed one out.
//! The provider binds the token to the key's thumbprint (RFC 7638, the token's `cnf.jkt`), so
//! a stolen token is useless without the key.
//!
//! [`DpopKey`] makes the proofs (ECDSA from RustCrypto's `p256`; the private key never leaves
//! it and is never printed). The nonces servers hand out (`DPoP-Nonce`) are remembered per
//! origin by the authorizer.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use en_auth_core::Error;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::signer::{Signer, SigningAlgorithm};

/// The request header a DPoP proof travels in.
pub const DPOP_HEADER: HeaderName = HeaderName::from_static("dpop");
/// The response header a server hands out its nonce in.
pub const DPOP_NONCE_HEADER: HeaderName = HeaderName::from_static("dpop-nonce");

/// Servers whose nonces are remembered at most; past it the memory starts over (a forgotten
/// nonce costs one retry, never a failure).
const MAX_REMEMBERED_ORIGINS: usize = 256;

/// An EC P-256 key that signs DPoP proofs (ES256).
///
/// Generate one per authorizer ([`generate`](Self::generate), what
/// [`with_dpop`](crate::ServiceAccountAuthorizer::with_dpop) does) or load a key you keep
/// ([`from_pkcs8_pem`](Self::from_pkcs8_pem)) when tokens must stay bound to the same key
/// across restarts. `Debug` shows only the public key's thumbprint.
///
/// ```
/// use en_auth_oauth2::DpopKey;
/// let key = DpopKey::generate().unwrap();
/// let proof = key.proof("GET", "https://api.example.com/orders?page=2", Some("token"), None).unwrap();
/// assert_eq!(proof.split('.').count(), 3);
/// assert_eq!(key.thumbprint().len(), 43); // base64url of a SHA-256
/// assert!(!format!("{key:?}").contains("d\""));
/// ```
///
/// Clones share nothing but the key: one key may serve several authorizers.
#[derive(Clone)]
pub struct DpopKey {
    signing: SigningKey,
    /// The public key as a JWK, members in RFC 7638 order.
    jwk: PublicJwk,
    thumbprint: String,
    /// The proof header, base64url-encoded once: it is the same for every proof.
    header_b64: String,
}

#[derive(Clone, Serialize)]
struct PublicJwk {
    crv: &'static str,
    kty: &'static str,
    x: String,
    y: String,
}

#[derive(Serialize)]
struct ProofHeader<'a, J: Serialize> {
    typ: &'static str,
    alg: &'a str,
    jwk: &'a J,
}

#[derive(Serialize)]
struct ProofClaims<'a> {
    jti: &'a str,
    htm: &'a str,
    htu: &'a str,
    iat: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ath: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
}

impl DpopKey {
    /// A fresh random key (from the operating system's random source).
    pub fn generate() -> Result<Self, Error> {
        // A random 32-byte string is a valid P-256 scalar except with probability ~2^-32;
        // draw again in that case.
        for _ in 0..8 {
            let mut bytes = [0u8; 32];
            getrandom::getrandom(&mut bytes).map_err(|e| Error::InvalidConfiguration {
                setting: "DPoP key".into(),
                reason: format!("the operating system gave no randomness for a key ({e})"),
            })?;
            if let Ok(signing) = SigningKey::from_slice(&bytes) {
                return Ok(Self::from_signing_key(signing));
            }
        }
        Err(Error::InvalidConfiguration {
            setting: "DPoP key".into(),
            reason: "could not draw a valid P-256 key; check the system's random source".into(),
        })
    }

    /// Loads an EC P-256 private key from PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), as
    /// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` writes it.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, Error> {
        use p256::pkcs8::DecodePrivateKey;
        let signing = SigningKey::from_pkcs8_pem(pem).map_err(|_| Error::InvalidConfiguration {
            setting: "DPoP key".into(),
            reason: "not a PKCS#8 PEM EC P-256 private key (`-----BEGIN PRIVATE KEY-----`); \
                     convert a SEC1 key with `openssl pkcs8 -topk8 -nocrypt`"
                .into(),
        })?;
        Ok(Self::from_signing_key(signing))
    }

    fn from_signing_key(signing: SigningKey) -> Self {
        let point = signing.verifying_key().to_encoded_point(false);
        let coordinate = |c: Option<&p256::FieldBytes>| c.map(|c| URL_SAFE_NO_PAD.encode(c));
        let jwk = PublicJwk {
            crv: "P-256",
            kty: "EC",
            x: coordinate(point.x()).unwrap_or_default(),
            y: coordinate(point.y()).unwrap_or_default(),
        };
        // RFC 7638: the required members, lexicographic order, no whitespace — exactly how
        // `PublicJwk` serializes.
        let canonical = serde_json::to_vec(&jwk).unwrap_or_default();
        let thumbprint = URL_SAFE_NO_PAD.encode(Sha256::digest(&canonical));
        let header_b64 = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&ProofHeader {
                typ: "dpop+jwt",
                alg: "ES256",
                jwk: &jwk,
            })
            .unwrap_or_default(),
        );
        Self {
            signing,
            jwk,
            thumbprint,
            header_b64,
        }
    }

    /// The RFC 7638 thumbprint of the public key (base64url SHA-256): what a DPoP-bound
    /// token's `cnf.jkt` names.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// The public key as a JWK (`kty`, `crv`, `x`, `y`), e.g. to register it with a provider.
    pub fn public_jwk(&self) -> serde_json::Value {
        serde_json::to_value(&self.jwk).unwrap_or_default()
    }

    /// A proof for one request: `method` and `url` (its query and fragment are left out of
    /// `htu`), the access token it goes with (`ath`; `None` for the token request) and the
    /// server's nonce, if it gave one.
    pub fn proof(
        &self,
        method: &str,
        url: &str,
        access_token: Option<&str>,
        nonce: Option<&str>,
    ) -> Result<String, Error> {
        let mut jwt = signing_input(&self.header_b64, method, url, access_token, nonce)?;
        let signature: Signature = self.signing.sign(jwt.as_bytes());
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut jwt);
        Ok(jwt)
    }
}

/// A `DpopKey` signs like any [`Signer`] (ES256, no `kid`): it can also sign client
/// assertions or JWT bearer grants.
#[async_trait]
impl Signer for DpopKey {
    fn algorithm(&self) -> SigningAlgorithm {
        SigningAlgorithm::ES256
    }

    fn key_id(&self) -> Option<String> {
        None
    }

    fn public_jwk(&self) -> serde_json::Value {
        DpopKey::public_jwk(self)
    }

    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        let signature: Signature = self.signing.sign(message);
        Ok(signature.to_bytes().to_vec())
    }
}

impl fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopKey")
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

/// A proof's `jti`: 128 random bits, base64url.
fn proof_id() -> Result<String, Error> {
    let mut jti = [0u8; 16];
    getrandom::getrandom(&mut jti).map_err(|e| Error::InvalidConfiguration {
        setting: "DPoP proof".into(),
        reason: format!("the operating system gave no randomness for a proof id ({e})"),
    })?;
    Ok(URL_SAFE_NO_PAD.encode(jti))
}

/// `ath`: base64url of the SHA-256 of the access token.
pub fn access_token_hash(access_token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(access_token.as_bytes()))
}

/// A proof's signing input, `base64url(header) "." base64url(claims)`: the claims of a
/// request (`jti`, `htm`, `htu`, `iat`, `ath`, `nonce`) after the proof header
/// `header_b64`, already encoded. Both kinds of proof key sign this.
fn signing_input(
    header_b64: &str,
    method: &str,
    url: &str,
    access_token: Option<&str>,
    nonce: Option<&str>,
) -> Result<String, Error> {
    let htu = htu(url)?;
    let jti = proof_id()?;
    let claims = ProofClaims {
        jti: &jti,
        htm: method,
        htu: &htu,
        iat: chrono::Utc::now().timestamp(),
        ath: access_token.map(access_token_hash),
        nonce,
    };
    let claims = serde_json::to_vec(&claims).map_err(|e| Error::InvalidConfiguration {
        setting: "DPoP proof".into(),
        reason: format!("could not encode the proof's claims ({e})"),
    })?;
    // Room for the claims, the signature (ES256: 86 characters) and the dots.
    let mut jwt = String::with_capacity(header_b64.len() + claims.len() * 4 / 3 + 92);
    jwt.push_str(header_b64);
    jwt.push('.');
    URL_SAFE_NO_PAD.encode_string(&claims, &mut jwt);
    Ok(jwt)
}

/// `htu`: the URL without user info, query and fragment, normalized as a WHATWG URL
/// serializes it (RFC 9449's target URI never carries a user name or password).
fn htu(url: &str) -> Result<String, Error> {
    let mut parsed = Url::parse(url).map_err(|_| Error::InvalidConfiguration {
        setting: "request URL".into(),
        reason: "a DPoP proof needs the request's absolute URL (scheme, host and path)".into(),
    })?;
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    parsed.set_query(None);
    parsed.set_fragment(None);
    Ok(parsed.into())
}

#[cfg(test)]
mod htu_tests {
    #[test]
    fn htu_drops_user_info_query_and_fragment() {
        assert_eq!(
            super::htu("https://user:pass@API.test:443/x/y?q=1#f").unwrap(),
            "https://api.test/x/y"
        );
    }
}

/// An authorizer's DPoP state: the key and the latest nonce of each server.
pub(crate) struct Dpop {
    key: ProofKey,
    /// RFC 7638 thumbprint of the public key: the tokens' `cnf.jkt`.
    thumbprint: String,
    nonces: Mutex<HashMap<String, String>>,
}

/// What signs the proofs.
enum ProofKey {
    /// The built-in key: proofs signed in place, no waiting.
    Key(Box<DpopKey>),
    /// Any [`Signer`] (a key in a KMS or an HSM): proofs signed through it, by the key it
    /// names at the first proof, kept from then on.
    Signer {
        signer: Arc<dyn Signer>,
        pinned: OnceCell<PinnedKey>,
    },
}

/// The key a [`Signer`] resolved to ([`Signer::current`]) at the first proof: the tokens are
/// bound to it, so every later proof is signed by it, whatever the signer rotates to.
struct PinnedKey {
    signer: Arc<dyn Signer>,
    /// The proof header (`typ`, `alg`, and the RFC 7638 members of the public key as `jwk`),
    /// base64url-encoded once: it is the same for every proof.
    header_b64: String,
}

impl Dpop {
    pub(crate) fn new(key: DpopKey) -> Self {
        Self {
            thumbprint: key.thumbprint.clone(),
            key: ProofKey::Key(Box::new(key)),
            nonces: Mutex::new(HashMap::new()),
        }
    }

    /// Proofs signed by `signer`; the tokens are bound to its public key as it is now
    /// ([`Signer::public_jwk`]). The key that signs is pinned at the first proof (see
    /// [`pinned`](Self::pinned)).
    pub(crate) fn with_signer(signer: Arc<dyn Signer>) -> Self {
        Self {
            thumbprint: crate::private_key_signer::jwk_thumbprint(&signer.public_jwk()),
            key: ProofKey::Signer {
                signer,
                pinned: OnceCell::new(),
            },
            nonces: Mutex::new(HashMap::new()),
        }
    }

    /// The key that signs every proof of a [`Signer`]: its [`current`](Signer::current) key,
    /// asked once (at the first proof) and kept, so that a signer that rotates its key cannot
    /// make proofs from a key the tokens are not bound to. A key whose thumbprint is not
    /// [`thumbprint`](Self::thumbprint) (the key changed between `with_dpop_signer` and the
    /// first proof) is refused with [`Error::InvalidConfiguration`], and asked again next
    /// time.
    async fn pinned<'a>(
        &self,
        signer: &Arc<dyn Signer>,
        pinned: &'a OnceCell<PinnedKey>,
    ) -> Result<&'a PinnedKey, Error> {
        pinned
            .get_or_try_init(|| async {
                let key = signer
                    .current()
                    .await?
                    .unwrap_or_else(|| Arc::clone(signer));
                let jwk = crate::private_key_signer::thumbprint_members(&key.public_jwk());
                let thumbprint = crate::private_key_signer::jwk_thumbprint(&jwk.clone().into());
                if thumbprint != self.thumbprint {
                    return Err(Error::InvalidConfiguration {
                        setting: "DPoP signer".into(),
                        reason: format!(
                            "the signer's key changed before its first proof (thumbprint {} \
                             when the authorizer was built, {thumbprint} now); the tokens are \
                             bound to the first: build the authorizer again to use the new key",
                            self.thumbprint
                        ),
                    });
                }
                let header = ProofHeader {
                    typ: "dpop+jwt",
                    alg: key.algorithm().name(),
                    jwk: &jwk,
                };
                let header =
                    serde_json::to_vec(&header).map_err(|e| Error::InvalidConfiguration {
                        setting: "DPoP proof".into(),
                        reason: format!("could not encode the proof's header ({e})"),
                    })?;
                tracing::debug!(thumbprint, "DPoP proofs are signed by the signer's key");
                Ok(PinnedKey {
                    signer: key,
                    header_b64: URL_SAFE_NO_PAD.encode(header),
                })
            })
            .await
    }

    /// The RFC 7638 thumbprint of the proof key: the tokens' `cnf.jkt`.
    pub(crate) fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    fn nonce_for(&self, url: &str) -> Option<String> {
        let origin = Url::parse(url).ok()?.origin().ascii_serialization();
        self.nonces
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&origin)
            .cloned()
    }

    /// The `DPoP` header value for a request, with the server's latest nonce.
    pub(crate) async fn header(
        &self,
        method: &str,
        url: &str,
        access_token: Option<&str>,
    ) -> Result<HeaderValue, Error> {
        let nonce = self.nonce_for(url);
        let proof = match &self.key {
            ProofKey::Key(key) => key.proof(method, url, access_token, nonce.as_deref())?,
            ProofKey::Signer { signer, pinned } => {
                let key = self.pinned(signer, pinned).await?;
                let mut jwt =
                    signing_input(&key.header_b64, method, url, access_token, nonce.as_deref())?;
                let signature = key.signer.sign(jwt.as_bytes()).await?;
                jwt.push('.');
                URL_SAFE_NO_PAD.encode_string(signature, &mut jwt);
                jwt
            }
        };
        let mut value = HeaderValue::try_from(proof).map_err(|_| Error::InvalidConfiguration {
            setting: "DPoP proof".into(),
            reason: "the proof is not a valid header value".into(),
        })?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// Remembers the nonce a response handed out.
    fn remember_nonce(&self, url: &str, headers: &HeaderMap) {
        let Some(nonce) = headers
            .get(DPOP_NONCE_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|n| !n.is_empty() && n.len() <= 1024)
        else {
            return;
        };
        let Some(origin) = Url::parse(url)
            .ok()
            .map(|u| u.origin().ascii_serialization())
        else {
            return;
        };
        let mut nonces = self
            .nonces
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if nonces.len() >= MAX_REMEMBERED_ORIGINS && !nonces.contains_key(&origin) {
            nonces.clear();
        }
        nonces.insert(origin, nonce.to_owned());
    }

    /// An API's answer: remembers its nonce; `true` when it refused the request only for
    /// want of that nonce (`401`, `WWW-Authenticate: DPoP error="use_dpop_nonce"` and a
    /// `DPoP-Nonce`). The callers retry at most once, so a server that keeps asking cannot
    /// make a loop.
    pub(crate) fn api_challenge(&self, url: &str, status: u16, headers: &HeaderMap) -> bool {
        let has_nonce = headers.contains_key(DPOP_NONCE_HEADER);
        self.remember_nonce(url, headers);
        has_nonce
            && status == 401
            && headers
                .get_all(reqwest::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| {
                    v.trim_start()
                        .get(..4)
                        .is_some_and(|s| s.eq_ignore_ascii_case("dpop"))
                        && v.contains("use_dpop_nonce")
                })
    }

    /// The token endpoint's answer: remembers its nonce; `true` when it refused the request
    /// only for want of that nonce (`400` with `"error": "use_dpop_nonce"`).
    pub(crate) fn token_endpoint_challenge(
        &self,
        url: &str,
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
    ) -> bool {
        #[derive(serde::Deserialize)]
        struct ErrorBody {
            error: String,
        }
        let has_nonce = headers.contains_key(DPOP_NONCE_HEADER);
        self.remember_nonce(url, headers);
        has_nonce
            && (400..500).contains(&status)
            && serde_json::from_slice::<ErrorBody>(body)
                .is_ok_and(|body| body.error == "use_dpop_nonce")
    }
}

impl fmt::Debug for Dpop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key: &dyn fmt::Debug = match &self.key {
            ProofKey::Key(key) => &**key,
            ProofKey::Signer { signer, .. } => signer,
        };
        f.debug_struct("Dpop")
            .field("key", key)
            .field("thumbprint", &self.thumbprint)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::VerifyingKey;
    use p256::ecdsa::signature::Verifier;

    fn decode(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn a_proof_is_an_es256_jwt_with_the_public_key_and_the_request() {
        let key = DpopKey::generate().unwrap();
        let proof = key
            .proof(
                "POST",
                "https://API.example.com:443/orders/7?x=1#frag",
                Some("tok"),
                Some("n-1"),
            )
            .unwrap();
        let parts: Vec<&str> = proof.split('.').collect();
        let header = decode(parts[0]);
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["jwk"]["kty"], "EC");
        assert!(header["jwk"].get("d").is_none(), "no private part");
        let claims = decode(parts[1]);
        assert_eq!(claims["htm"], "POST");
        assert_eq!(claims["htu"], "https://api.example.com/orders/7");
        assert_eq!(claims["ath"], access_token_hash("tok"));
        assert_eq!(claims["nonce"], "n-1");
        assert!((claims["iat"].as_i64().unwrap() - chrono::Utc::now().timestamp()).abs() < 5);
        // The signature verifies with the public key.
        let signature = Signature::from_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
        let verifying = VerifyingKey::from(&key.signing);
        let input = format!("{}.{}", parts[0], parts[1]);
        verifying.verify(input.as_bytes(), &signature).unwrap();
        // A second proof has another jti.
        let other = key
            .proof("POST", "https://api.example.com/", None, None)
            .unwrap();
        let other_claims = decode(other.split('.').nth(1).unwrap());
        assert_ne!(claims["jti"], other_claims["jti"]);
        assert!(other_claims.get("ath").is_none() && other_claims.get("nonce").is_none());
    }

    #[test]
    fn the_thumbprint_follows_rfc_7638() {
        // RFC 7638's members for an EC key, computed by hand from the JWK text.
        let key = DpopKey::generate().unwrap();
        let jwk = key.public_jwk();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk["x"].as_str().unwrap(),
            jwk["y"].as_str().unwrap()
        );
        assert_eq!(
            key.thumbprint(),
            URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
        );
        assert_ne!(
            key.thumbprint(),
            DpopKey::generate().unwrap().thumbprint(),
            "a fresh key each time"
        );
    }

    #[test]
    fn nonces_are_remembered_per_origin_and_challenges_recognised() {
        let dpop = Dpop::new(DpopKey::generate().unwrap());
        let mut headers = HeaderMap::new();
        headers.insert(DPOP_NONCE_HEADER, HeaderValue::from_static("n-7"));
        headers.insert(
            reqwest::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"DPoP error="use_dpop_nonce", algs="ES256""#),
        );
        assert!(dpop.api_challenge("http://127.0.0.1:9/a?q", 401, &headers));
        assert!(
            !dpop.api_challenge("http://127.0.0.1:9/b", 403, &headers),
            "only a 401 is a challenge"
        );
        assert_eq!(
            dpop.nonce_for("http://127.0.0.1:9/x").as_deref(),
            Some("n-7")
        );
        assert_eq!(dpop.nonce_for("http://127.0.0.1:10/x"), None);
        let body = br#"{"error":"use_dpop_nonce"}"#;
        headers.insert(DPOP_NONCE_HEADER, HeaderValue::from_static("n-8"));
        assert!(dpop.token_endpoint_challenge("http://127.0.0.1:9/token", 400, &headers, body));
        assert_eq!(
            dpop.nonce_for("http://127.0.0.1:9/x").as_deref(),
            Some("n-8")
        );
        headers.remove(DPOP_NONCE_HEADER);
        assert!(
            !dpop.token_endpoint_challenge("http://127.0.0.1:9/token", 400, &headers, body),
            "no nonce, nothing to retry with"
        );
    }

    /// A [`Signer`] over `DpopKey`s that can be switched to another key (a rotated key file,
    /// a new KMS key version), and whose JWK carries more than the public key.
    #[derive(Debug)]
    struct Rotating {
        key: Mutex<Arc<DpopKey>>,
        /// Calls of `current` (for a `PemFileSigner`, one `stat` each).
        currents: std::sync::atomic::AtomicUsize,
    }

    impl Rotating {
        fn new(key: &DpopKey) -> Arc<Self> {
            Arc::new(Self {
                key: Mutex::new(Arc::new(key.clone())),
                currents: std::sync::atomic::AtomicUsize::new(0),
            })
        }
        fn rotate(&self, key: &DpopKey) {
            *self.key.lock().unwrap() = Arc::new(key.clone());
        }
        fn key(&self) -> Arc<DpopKey> {
            Arc::clone(&self.key.lock().unwrap())
        }
    }

    #[async_trait]
    impl Signer for Rotating {
        fn algorithm(&self) -> SigningAlgorithm {
            SigningAlgorithm::ES256
        }
        fn key_id(&self) -> Option<String> {
            Some("rotating".into())
        }
        fn public_jwk(&self) -> serde_json::Value {
            let key = self.key();
            let mut jwk = key.public_jwk();
            // What a careless signer might hand over: the private scalar and extra members.
            jwk["d"] = URL_SAFE_NO_PAD.encode(key.signing.to_bytes()).into();
            jwk["kid"] = "rotating".into();
            jwk["use"] = "sig".into();
            jwk
        }
        async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
            Signer::sign(&*self.key(), message).await
        }
        async fn current(&self) -> Result<Option<Arc<dyn Signer>>, Error> {
            self.currents
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let key: Arc<dyn Signer> = Arc::new(Pinned(self.key()));
            Ok(Some(key))
        }
    }

    /// One key of [`Rotating`], with the same oversharing JWK.
    #[derive(Debug)]
    struct Pinned(Arc<DpopKey>);

    #[async_trait]
    impl Signer for Pinned {
        fn algorithm(&self) -> SigningAlgorithm {
            SigningAlgorithm::ES256
        }
        fn key_id(&self) -> Option<String> {
            None
        }
        fn public_jwk(&self) -> serde_json::Value {
            let mut jwk = self.0.public_jwk();
            jwk["d"] = URL_SAFE_NO_PAD.encode(self.0.signing.to_bytes()).into();
            jwk["kid"] = "rotating".into();
            jwk
        }
        async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
            Signer::sign(&*self.0, message).await
        }
    }

    /// The proof's header, and whether its signature verifies with `key`.
    fn read_proof(proof: &HeaderValue, key: &DpopKey) -> (serde_json::Value, bool) {
        let proof = proof.to_str().unwrap();
        let parts: Vec<&str> = proof.split('.').collect();
        let signature = Signature::from_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
        let input = format!("{}.{}", parts[0], parts[1]);
        let verifies = VerifyingKey::from(&key.signing)
            .verify(input.as_bytes(), &signature)
            .is_ok();
        (decode(parts[0]), verifies)
    }

    #[tokio::test]
    async fn the_proof_header_carries_only_the_public_key_members() {
        let key = DpopKey::generate().unwrap();
        let dpop = Dpop::with_signer(Rotating::new(&key));
        assert_eq!(dpop.thumbprint(), key.thumbprint());
        let proof = dpop
            .header("GET", "https://api.test/x", Some("t"))
            .await
            .unwrap();
        let (header, verifies) = read_proof(&proof, &key);
        assert!(verifies);
        assert_eq!(
            header["jwk"],
            key.public_jwk(),
            "kty, crv, x, y and nothing else"
        );
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(header["alg"], "ES256");
        assert!(header.get("kid").is_none(), "{header}");
    }

    #[tokio::test]
    async fn a_signer_s_key_is_pinned_at_the_first_proof() {
        let (first, second) = (DpopKey::generate().unwrap(), DpopKey::generate().unwrap());
        let signer = Rotating::new(&first);
        let dpop = Dpop::with_signer(signer.clone());
        let proof = dpop
            .header("GET", "https://api.test/x", Some("t"))
            .await
            .unwrap();
        assert!(read_proof(&proof, &first).1);

        // The signer rotates: proofs still come from the key the tokens are bound to.
        signer.rotate(&second);
        for _ in 0..2 {
            let proof = dpop
                .header("POST", "https://api.test/y", Some("t"))
                .await
                .unwrap();
            let (header, verifies) = read_proof(&proof, &first);
            assert!(verifies, "signed by the first key");
            assert_eq!(header["jwk"], first.public_jwk());
        }
        assert_eq!(dpop.thumbprint(), first.thumbprint());
        assert_eq!(
            signer.currents.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "the signer is asked for its key once, not per proof (no stat per request)"
        );
    }

    #[tokio::test]
    async fn a_key_changed_before_the_first_proof_is_refused() {
        let (first, second) = (DpopKey::generate().unwrap(), DpopKey::generate().unwrap());
        let signer = Rotating::new(&first);
        let dpop = Dpop::with_signer(signer.clone());
        signer.rotate(&second);
        for _ in 0..2 {
            match dpop.header("GET", "https://api.test/x", None).await {
                Err(Error::InvalidConfiguration { setting, reason }) => {
                    assert_eq!(setting, "DPoP signer");
                    assert!(reason.contains(first.thumbprint()), "{reason}");
                    assert!(reason.contains(second.thumbprint()), "{reason}");
                }
                other => panic!("{other:?}"),
            }
        }
        // Back to the key the authorizer was built with: proofs work.
        signer.rotate(&first);
        let proof = dpop
            .header("GET", "https://api.test/x", None)
            .await
            .unwrap();
        assert!(read_proof(&proof, &first).1);
    }

    #[test]
    fn the_private_key_is_never_printed() {
        let key = DpopKey::generate().unwrap();
        let secret = URL_SAFE_NO_PAD.encode(key.signing.to_bytes());
        let printed = format!("{key:?} {:?}", Dpop::new(key.clone()));
        assert!(!printed.contains(&secret));
        assert!(printed.contains("thumbprint"));
    }
}
