//! [`DpopVerifier`]: checks the DPoP proofs (RFC 9449) that come with sender-constrained
//! tokens.
//!
//! A DPoP-bound access token names the thumbprint of its holder's public key (`cnf.jkt`, RFC
//! 7638); each request carries a `DPoP` header, a JWT signed by that key for this very request.
//! For every request the verifier checks, in this order, and refuses at the first failure:
//!
//! 1. the proof is a JWT with `typ: dpop+jwt`, an asymmetric `alg` (ES256, ES384, RS256, PS256,
//!    EdDSA — never HMAC or `none`) and a public key (`jwk`, without private members);
//! 2. its signature verifies with that key;
//! 3. the key's thumbprint equals the token's `cnf.jkt`;
//! 4. `htm` is the request's method and `htu` its URL (both without query and fragment,
//!    normalized);
//! 5. `iat` lies within the window (default [`DEFAULT_PROOF_WINDOW`] in the past, a few seconds
//!    of clock skew in the future);
//! 6. `ath` is the base64url SHA-256 of the access token;
//! 7. the server nonce, when one is configured ([`DpopVerifier::with_nonce`]); a missing or
//!    stale nonce is answered with `use_dpop_nonce` and the current nonce;
//! 8. its `jti` has not been seen within the window (replay). The memory of seen ids is
//!    bounded ([`DpopVerifier::with_max_remembered`]; one key may hold an eighth of it); when
//!    it is full of live ids, new proofs are refused (503, never let through unchecked).

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::Mutex;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// How old a proof may be: RFC 9449 leaves it to the server; a minute covers clock skew and
/// a slow request while keeping the replay memory small.
pub const DEFAULT_PROOF_WINDOW: Duration = Duration::from_secs(60);
/// How far in the future a proof's `iat` may lie (the client's clock running ahead).
const FUTURE_SKEW_SECS: i64 = 5;
/// Proof ids remembered at most by default: 100,000 ids of at most 128 bytes ≈ 15 MB at worst.
pub const DEFAULT_MAX_REMEMBERED: usize = 100_000;
/// Longest proof accepted (a proof with an RSA-4096 key is under 2 KB).
const MAX_PROOF_BYTES: usize = 8 * 1024;
/// Longest `jti` accepted.
const MAX_JTI_BYTES: usize = 128;

const ALGORITHMS: [Algorithm; 5] = [
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::EdDSA,
];

/// The RFC 7638 SHA-256 thumbprint of a public JWK (EC or RSA), base64url.
fn jwk_thumbprint(jwk: &Jwk) -> Option<String> {
    let members = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(ec) => {
            let crv = serde_json::to_string(&ec.curve).ok()?;
            format!(
                r#"{{"crv":{crv},"kty":"EC","x":"{}","y":"{}"}}"#,
                ec.x, ec.y
            )
        }
        AlgorithmParameters::RSA(rsa) => {
            format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, rsa.e, rsa.n)
        }
        AlgorithmParameters::OctetKeyPair(okp) => {
            let crv = serde_json::to_string(&okp.curve).ok()?;
            format!(r#"{{"crv":{crv},"kty":"OKP","x":"{}"}}"#, okp.x)
        }
        _ => return None,
    };
    Some(URL_SAFE_NO_PAD.encode(Sha256::digest(members.as_bytes())))
}

/// Why a DPoP proof was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DpopError {
    /// The proof is missing, malformed, or does not match the request or the token
    /// (`WWW-Authenticate: DPoP error="invalid_dpop_proof"`).
    InvalidProof(String),
    /// The proof lacks the server's current nonce: send it again with this one
    /// (`error="use_dpop_nonce"` and a `DPoP-Nonce` header).
    UseNonce(String),
    /// The replay memory is full of live proof ids: this proof cannot be checked for replay
    /// now (answered 503 with `Retry-After`, not as a bad token).
    Busy,
}

impl fmt::Display for DpopError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DpopError::InvalidProof(reason) => write!(f, "invalid DPoP proof: {reason}"),
            DpopError::UseNonce(_) => f.write_str("the DPoP proof lacks the server's nonce"),
            DpopError::Busy => {
                f.write_str("too many recent DPoP proofs to check this one for replay")
            }
        }
    }
}

impl std::error::Error for DpopError {}

/// What one request presents: its method and URL, the token and the proof.
#[derive(Clone, Copy, Debug)]
pub struct DpopRequest<'a> {
    /// The HTTP method, e.g. `GET`.
    pub method: &'a str,
    /// The URL the client sent the request to (absolute), or its path when the verifier
    /// knows its public origin ([`DpopVerifier::with_public_origin`]).
    pub url: &'a str,
    /// The `Host` header, used when the URL is only a path and no public origin is set.
    pub host: Option<&'a str>,
    /// The access token (after `DPoP `).
    pub access_token: &'a str,
    /// The `DPoP` header's proof.
    pub proof: &'a str,
    /// The token's `cnf.jkt`.
    pub jkt: &'a str,
}

/// Checks DPoP proofs; clones share the replay memory.
///
/// ```no_run
/// use en_auth_verify::{DpopVerifier, RequireAuth, Verifier};
/// let verifier = Verifier::oidc("https://issuer.example.com/", "https://api.example.com");
/// let layer = RequireAuth::new(verifier)
///     .dpop_with(DpopVerifier::new().with_public_origin("https://api.example.com"));
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct DpopVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    seen: Mutex<SeenIds>,
}

#[derive(Clone)]
struct Settings {
    window: Duration,
    nonce: Option<String>,
    public_origin: Option<String>,
    max_remembered: usize,
}

#[derive(Default)]
struct SeenIds {
    ids: HashSet<String>,
    /// Live ids per key thumbprint: one key cannot fill the memory for every other.
    per_key: std::collections::HashMap<String, usize>,
    /// Insertion order with expiry (seconds): expiries grow with insertion time.
    order: VecDeque<(i64, String)>,
}

impl fmt::Debug for DpopVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopVerifier")
            .field("window", &self.inner.settings.window)
            .field(
                "nonce",
                &self.inner.settings.nonce.as_ref().map(|_| "[set]"),
            )
            .field("public_origin", &self.inner.settings.public_origin)
            .field("max_remembered", &self.inner.settings.max_remembered)
            .finish()
    }
}

impl Default for DpopVerifier {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Deserialize)]
struct ProofClaims {
    jti: Option<String>,
    htm: Option<String>,
    htu: Option<String>,
    iat: Option<i64>,
    ath: Option<String>,
    nonce: Option<String>,
}

fn invalid(reason: impl Into<String>) -> DpopError {
    DpopError::InvalidProof(reason.into())
}

impl DpopVerifier {
    /// A verifier with the default window and replay memory, no server nonce, and the
    /// request's origin taken from its `Host` header.
    pub fn new() -> Self {
        Self::from_settings(Settings {
            window: DEFAULT_PROOF_WINDOW,
            nonce: None,
            public_origin: None,
            max_remembered: DEFAULT_MAX_REMEMBERED,
        })
    }

    fn from_settings(settings: Settings) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                seen: Mutex::new(SeenIds::default()),
            }),
        }
    }

    /// A verifier with changed settings and a replay memory of its own.
    fn rebuild(&self, change: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = self.inner.settings.clone();
        change(&mut settings);
        Self::from_settings(settings)
    }

    /// How old a proof may be (default [`DEFAULT_PROOF_WINDOW`]); proof ids are remembered
    /// this long.
    pub fn with_window(self, window: Duration) -> Self {
        self.rebuild(|s| s.window = window)
    }

    /// Requires proofs to carry this server nonce; proofs without it are answered with
    /// `use_dpop_nonce` and the nonce. Rotate it by building a new verifier.
    pub fn with_nonce(self, nonce: impl Into<String>) -> Self {
        let nonce = nonce.into();
        self.rebuild(|s| s.nonce = Some(nonce))
    }

    /// The origin clients reach this service at (`https://api.example.com`), when it differs
    /// from what the request shows (behind a TLS-terminating proxy). Unset, the `Host` header
    /// names the host and port, and `htu` may use `http` or `https`.
    pub fn with_public_origin(self, origin: impl Into<String>) -> Self {
        let origin = origin.into().trim_end_matches('/').to_owned();
        self.rebuild(|s| s.public_origin = Some(origin))
    }

    /// How many proof ids are remembered at most (default [`DEFAULT_MAX_REMEMBERED`]).
    pub fn with_max_remembered(self, max: usize) -> Self {
        self.rebuild(|s| s.max_remembered = max.max(1))
    }

    /// The server nonce proofs must carry, if any.
    pub fn nonce(&self) -> Option<&str> {
        self.inner.settings.nonce.as_deref()
    }

    /// Checks one request's proof (see the module documentation for the rules).
    pub fn verify(&self, request: &DpopRequest<'_>) -> Result<(), DpopError> {
        let proof = request.proof;
        if proof.len() > MAX_PROOF_BYTES {
            return Err(invalid("the proof is too long"));
        }
        let header = jsonwebtoken::decode_header(proof)
            .map_err(|_| invalid("the proof is not a JWT with a readable header"))?;
        if header.typ.as_deref() != Some("dpop+jwt") {
            return Err(invalid("the proof's typ is not dpop+jwt"));
        }
        if !ALGORITHMS.contains(&header.alg) {
            return Err(invalid(
                "the proof's alg is not an asymmetric signature algorithm",
            ));
        }
        if has_private_members(proof) {
            return Err(invalid("the proof's jwk contains a private key"));
        }
        let jwk = header
            .jwk
            .as_ref()
            .ok_or_else(|| invalid("the proof's header has no jwk"))?;
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|_| invalid("the proof's jwk is not a usable key"))?;
        // Signature and claims with the backend en-auth is built with, never through
        // jsonwebtoken's process default (see `decode`).
        let payload = crate::decode::verified_payload(proof, header.alg, &key)
            .ok_or_else(|| invalid("the proof's signature does not verify with its jwk"))?;
        let claims: ProofClaims = serde_json::from_slice(&payload)
            .map_err(|_| invalid("the proof's claims are not readable"))?;
        let thumbprint =
            jwk_thumbprint(jwk).ok_or_else(|| invalid("the proof's jwk has no thumbprint"))?;
        if thumbprint != request.jkt {
            return Err(invalid(
                "the proof is signed by another key than the token is bound to",
            ));
        }
        if claims.htm.as_deref() != Some(request.method) {
            return Err(invalid("the proof is for another HTTP method"));
        }
        let htu = claims
            .htu
            .as_deref()
            .ok_or_else(|| invalid("the proof has no htu"))?;
        if !self.same_target(htu, request) {
            return Err(invalid("the proof is for another URL"));
        }
        let now = chrono::Utc::now().timestamp();
        let window = i64::try_from(self.inner.settings.window.as_secs()).unwrap_or(i64::MAX);
        let iat = claims.iat.ok_or_else(|| invalid("the proof has no iat"))?;
        if iat > now.saturating_add(FUTURE_SKEW_SECS) || iat < now.saturating_sub(window) {
            return Err(invalid("the proof's iat is outside the accepted window"));
        }
        let ath = URL_SAFE_NO_PAD.encode(Sha256::digest(request.access_token.as_bytes()));
        if claims.ath.as_deref() != Some(ath.as_str()) {
            return Err(invalid("the proof's ath does not match the access token"));
        }
        if let Some(nonce) = &self.inner.settings.nonce {
            if claims.nonce.as_deref() != Some(nonce.as_str()) {
                return Err(DpopError::UseNonce(nonce.clone()));
            }
        }
        let jti = claims
            .jti
            .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_BYTES)
            .ok_or_else(|| invalid("the proof has no usable jti"))?;
        self.remember(&thumbprint, format!("{thumbprint}.{jti}"), now, window)
    }

    /// Records a proof id; refuses one seen within the window.
    /// Each key may hold at most an eighth of the memory (at least 16 ids), so one client
    /// signing proofs in bulk locks out only itself; a memory full across keys answers
    /// [`DpopError::Busy`].
    fn remember(&self, key: &str, id: String, now: i64, window: i64) -> Result<(), DpopError> {
        let max = self.inner.settings.max_remembered;
        let per_key_max = (max / 8).max(16).min(max);
        let mut seen = self.inner.seen.lock();
        while seen.order.front().is_some_and(|(expiry, _)| *expiry < now) {
            if let Some((_, old)) = seen.order.pop_front() {
                seen.ids.remove(&old);
                let owner = old.split_once('.').map_or("", |(k, _)| k).to_owned();
                if let Some(count) = seen.per_key.get_mut(&owner) {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        seen.per_key.remove(&owner);
                    }
                }
            }
        }
        if seen.ids.contains(&id) {
            return Err(invalid("the proof was already used (replayed jti)"));
        }
        if seen.per_key.get(key).is_some_and(|n| *n >= per_key_max) {
            return Err(invalid(
                "too many recent proofs from this key to check this one for replay",
            ));
        }
        if seen.ids.len() >= max {
            return Err(DpopError::Busy);
        }
        let expiry = now.saturating_add(window).saturating_add(FUTURE_SKEW_SECS);
        seen.ids.insert(id.clone());
        *seen.per_key.entry(key.to_owned()).or_insert(0) += 1;
        seen.order.push_back((expiry, id));
        Ok(())
    }

    /// Whether `htu` names the request's URL (scheme, host, port, path; no query/fragment).
    /// The request's path is compared as received, never re-parsed together with the host,
    /// and a `Host` header must be a bare authority: a `Host` such as `api/orders#` cannot
    /// move the comparison to another path.
    fn same_target(&self, htu: &str, request: &DpopRequest<'_>) -> bool {
        let Ok(claimed) = reqwest::Url::parse(htu) else {
            return false;
        };
        let Some(claimed_host) = claimed.host_str() else {
            return false;
        };
        let (scheme, host, port, path): (String, String, Option<u16>, &str) =
            if request.url.starts_with('/') {
                let path = request.url.split(['?', '#']).next().unwrap_or_default();
                match (&self.inner.settings.public_origin, request.host) {
                    (Some(origin), _) => {
                        let Ok(origin) = reqwest::Url::parse(origin) else {
                            return false;
                        };
                        let Some(host) = origin.host_str() else {
                            return false;
                        };
                        (
                            origin.scheme().to_owned(),
                            host.to_owned(),
                            origin.port_or_known_default(),
                            path,
                        )
                    }
                    // Without a configured origin: the Host header, with the proof's own scheme
                    // when it is http or https.
                    (None, Some(host)) if matches!(claimed.scheme(), "http" | "https") => {
                        if host.contains(['/', '?', '#', '@', '\\']) {
                            return false;
                        }
                        let Ok(authority) = host.parse::<http::uri::Authority>() else {
                            return false;
                        };
                        let default = if claimed.scheme() == "https" { 443 } else { 80 };
                        (
                            claimed.scheme().to_owned(),
                            authority.host().to_owned(),
                            Some(authority.port_u16().unwrap_or(default)),
                            path,
                        )
                    }
                    _ => return false,
                }
            } else {
                let Ok(expected) = reqwest::Url::parse(request.url) else {
                    return false;
                };
                let Some(host) = expected.host_str() else {
                    return false;
                };
                if let Some(origin) = &self.inner.settings.public_origin {
                    let same_origin =
                        reqwest::Url::parse(origin).is_ok_and(|o| o.origin() == expected.origin());
                    if !same_origin {
                        return false;
                    }
                }
                return claimed.scheme() == expected.scheme()
                    && claimed_host.eq_ignore_ascii_case(host)
                    && claimed.port_or_known_default() == expected.port_or_known_default()
                    && claimed.path() == expected.path();
            };
        claimed.scheme() == scheme
            && claimed_host.eq_ignore_ascii_case(&host)
            && claimed.port_or_known_default() == port
            && claimed.path() == path
    }
}

/// Whether the proof header's `jwk` carries a private member (`d`, or RSA's `p`, `q`, …).
fn has_private_members(proof: &str) -> bool {
    let Some(header) = proof.split('.').next() else {
        return true;
    };
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(header) else {
        return true;
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return true;
    };
    let Some(jwk) = value.get("jwk").and_then(|j| j.as_object()) else {
        return false;
    };
    ["d", "p", "q", "dp", "dq", "qi", "k"]
        .iter()
        .any(|member| jwk.contains_key(*member))
}

/// The `cnf.jkt` claim of a token's claims, if it is DPoP-bound.
pub(crate) fn bound_thumbprint(claims: &crate::Claims) -> Option<&str> {
    claims.extra.get("cnf")?.get("jkt")?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use en_auth_oauth2::DpopKey;

    fn request<'a>(proof: &'a str, jkt: &'a str, url: &'a str) -> DpopRequest<'a> {
        DpopRequest {
            method: "GET",
            url,
            host: Some("api.test:8443"),
            access_token: "tok",
            proof,
            jkt,
        }
    }

    #[test]
    fn a_proof_is_accepted_once_and_its_replay_refused() {
        let key = DpopKey::generate().unwrap();
        let verifier = DpopVerifier::new();
        let proof = key
            .proof("GET", "https://API.test:8443/orders?q=1", Some("tok"), None)
            .unwrap();
        let req = request(&proof, key.thumbprint(), "/orders?page=3");
        assert_eq!(verifier.verify(&req), Ok(()));
        assert!(matches!(
            verifier.verify(&req),
            Err(DpopError::InvalidProof(r)) if r.contains("replayed")
        ));
        // A clone shares the memory.
        assert!(verifier.clone().verify(&req).is_err());
    }

    #[test]
    fn one_key_cannot_fill_the_replay_memory_for_the_others() {
        let verifier = DpopVerifier::new().with_max_remembered(32); // 16 per key
        let greedy = DpopKey::generate().unwrap();
        let send = |key: &DpopKey| {
            let proof = key
                .proof("GET", "https://api.test:8443/orders", Some("tok"), None)
                .unwrap();
            verifier.verify(&request(&proof, key.thumbprint(), "/orders"))
        };
        for _ in 0..16 {
            assert_eq!(send(&greedy), Ok(()));
        }
        assert!(matches!(send(&greedy), Err(DpopError::InvalidProof(_))));
        // Other keys still get through, until the whole memory is full: then 503, not 401.
        let others: Vec<DpopKey> = (0..2).map(|_| DpopKey::generate().unwrap()).collect();
        for key in &others {
            for _ in 0..8 {
                assert_eq!(send(key), Ok(()));
            }
        }
        let late = DpopKey::generate().unwrap();
        assert_eq!(send(&late), Err(DpopError::Busy));
    }

    #[test]
    fn a_host_header_cannot_move_the_path_comparison() {
        let key = DpopKey::generate().unwrap();
        let verifier = DpopVerifier::new();
        let proof = key
            .proof("GET", "https://api.test:8443/orders", Some("tok"), None)
            .unwrap();
        for (host, path) in [
            ("api.test:8443/orders#", "/admin"),
            ("api.test:8443/orders?", "/admin"),
            ("api.test:8443", "/x/%2e%2e/orders"),
            ("u@api.test:8443", "/orders"),
        ] {
            let request = DpopRequest {
                host: Some(host),
                ..request(&proof, key.thumbprint(), path)
            };
            assert!(
                matches!(verifier.verify(&request), Err(DpopError::InvalidProof(_))),
                "Host {host}, path {path}"
            );
        }
        // The honest request still passes.
        assert_eq!(
            verifier.verify(&request(&proof, key.thumbprint(), "/orders")),
            Ok(())
        );
    }

    #[test]
    fn the_binding_and_the_target_are_checked() {
        let key = DpopKey::generate().unwrap();
        let verifier = DpopVerifier::new();
        let proof = key
            .proof("GET", "https://api.test:8443/orders", Some("tok"), None)
            .unwrap();
        let other = DpopKey::generate().unwrap();
        for (what, req) in [
            (
                "another key",
                request(&proof, other.thumbprint(), "/orders"),
            ),
            ("another path", request(&proof, key.thumbprint(), "/admin")),
            (
                "another host",
                DpopRequest {
                    host: Some("evil.test:8443"),
                    ..request(&proof, key.thumbprint(), "/orders")
                },
            ),
            (
                "another method",
                DpopRequest {
                    method: "POST",
                    ..request(&proof, key.thumbprint(), "/orders")
                },
            ),
            (
                "another token",
                DpopRequest {
                    access_token: "other",
                    ..request(&proof, key.thumbprint(), "/orders")
                },
            ),
        ] {
            assert!(
                matches!(verifier.verify(&req), Err(DpopError::InvalidProof(_))),
                "{what}"
            );
        }
        let pinned = DpopVerifier::new().with_public_origin("https://api.test:8443/");
        let req = DpopRequest {
            host: Some("internal:80"),
            ..request(&proof, key.thumbprint(), "/orders")
        };
        assert_eq!(
            pinned.verify(&req),
            Ok(()),
            "the public origin wins over Host"
        );
    }

    #[test]
    fn nonces_are_required_when_configured() {
        let key = DpopKey::generate().unwrap();
        let verifier = DpopVerifier::new().with_nonce("n-1");
        let url = "https://api.test:8443/orders";
        let without = key.proof("GET", url, Some("tok"), None).unwrap();
        assert_eq!(
            verifier.verify(&request(&without, key.thumbprint(), "/orders")),
            Err(DpopError::UseNonce("n-1".into()))
        );
        let with = key.proof("GET", url, Some("tok"), Some("n-1")).unwrap();
        assert_eq!(
            verifier.verify(&request(&with, key.thumbprint(), "/orders")),
            Ok(())
        );
    }

    #[test]
    fn a_full_replay_memory_refuses_rather_than_forgets() {
        let key = DpopKey::generate().unwrap();
        let verifier = DpopVerifier::new().with_max_remembered(2);
        let url = "https://api.test:8443/orders";
        let results: Vec<bool> = (0..3)
            .map(|_| {
                let proof = key.proof("GET", url, Some("tok"), None).unwrap();
                verifier
                    .verify(&request(&proof, key.thumbprint(), "/orders"))
                    .is_ok()
            })
            .collect();
        assert_eq!(results, [true, true, false]);
    }

    #[test]
    fn symmetric_and_unsigned_proofs_are_refused() {
        let header = |alg: &str| {
            URL_SAFE_NO_PAD.encode(format!(
                r#"{{"typ":"dpop+jwt","alg":"{alg}","jwk":{{"kty":"oct","k":"c2VjcmV0"}}}}"#
            ))
        };
        let claims = URL_SAFE_NO_PAD.encode(r#"{"htm":"GET"}"#);
        for alg in ["HS256", "none"] {
            let proof = format!("{}.{claims}.c2ln", header(alg));
            assert!(
                DpopVerifier::new()
                    .verify(&request(&proof, "x", "/orders"))
                    .is_err(),
                "{alg}"
            );
        }
        assert!(has_private_members(&format!(
            "{}.e30.c2ln",
            header("ES256")
        )));
    }
}

#[cfg(test)]
mod rsa_tests {
    use super::*;
    use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
    use jsonwebtoken::{EncodingKey, Header};

    #[test]
    fn an_rs256_proof_is_checked_like_an_es256_one() {
        // This test's own jsonwebtoken calls use the process default: name it (the workspace
        // build also enables rust_crypto).
        let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
            &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
        );
        let pem = include_bytes!("../tests/fixtures/rsa.pem");
        let key = EncodingKey::from_rsa_pem(pem).unwrap();
        let mut header = Header::new(Algorithm::RS256);
        header.typ = Some("dpop+jwt".into());
        header.jwk = Some(Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap());
        let jkt = header
            .jwk
            .as_ref()
            .unwrap()
            .thumbprint(ThumbprintHash::SHA256)
            .unwrap();
        let claims = serde_json::json!({
            "jti": "rsa-1", "htm": "GET", "htu": "https://api.test:8443/orders",
            "iat": chrono::Utc::now().timestamp(),
            "ath": URL_SAFE_NO_PAD.encode(Sha256::digest(b"tok")),
        });
        let proof = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        let request = DpopRequest {
            method: "GET",
            url: "/orders",
            host: Some("api.test:8443"),
            access_token: "tok",
            proof: &proof,
            jkt: &jkt,
        };
        let verifier = DpopVerifier::new();
        assert_eq!(verifier.verify(&request), Ok(()));
        assert!(verifier.verify(&request).is_err(), "replayed");
        let wrong = DpopRequest {
            jkt: "another",
            ..request
        };
        assert!(DpopVerifier::new().verify(&wrong).is_err());
    }
}
