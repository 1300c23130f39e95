//! [`Verifier`]: checks an incoming access token and returns its [`Claims`].

use std::sync::Arc;
use std::time::Duration;

use en_auth_core::Error;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation, decode_header};

use crate::Claims;
use crate::jwks::{JwksCache, JwksLocation, VerificationKey};

/// Tokens longer than this are refused before any parsing (a JWT is usually under 2 KiB).
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Clock leeway for `exp`, `nbf` and `iat`: covers ordinary clock skew, no more.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// The asymmetric algorithms accepted by default with a JWKS. `none` and the HMAC family are
/// never accepted with public keys.
pub const ASYMMETRIC_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

#[derive(Clone)]
enum Keys {
    Jwks(Arc<JwksCache>),
    Shared(Arc<VerificationKey>),
}

#[derive(Clone)]
struct Config {
    issuer: Option<String>,
    audiences: Vec<String>,
    client_id: Option<String>,
    token_use: Option<String>,
    algorithms: Vec<Algorithm>,
    leeway: Duration,
    required_typ: Option<String>,
    required_scopes: Vec<String>,
    org_id: Option<String>,
    max_token_bytes: usize,
    /// One prepared `Validation` per allowed algorithm, rebuilt when the config changes.
    validations: Vec<(Algorithm, Validation)>,
}

impl Config {
    fn rebuild(&mut self) {
        self.validations = self
            .algorithms
            .iter()
            .map(|alg| {
                let mut v = Validation::new(*alg);
                v.leeway = self.leeway.as_secs();
                v.validate_nbf = true;
                v.required_spec_claims = ["exp".to_string()].into_iter().collect();
                if let Some(iss) = &self.issuer {
                    v.set_issuer(&[iss]);
                    v.required_spec_claims.insert("iss".into());
                }
                if self.audiences.is_empty() {
                    v.validate_aud = false;
                } else {
                    v.set_audience(&self.audiences);
                    v.required_spec_claims.insert("aud".into());
                }
                (*alg, v)
            })
            .collect();
    }
}

/// Verifies incoming JWT access tokens: signature (with keys from a JWKS or a shared secret),
/// an algorithm allow-list, issuer, audience, time claims, and optionally `typ`, scopes and
/// organization. Cheap to clone; clones share the key cache.
///
/// Every bad token is an `Err` ([`Error::InvalidToken`] or [`Error::InsufficientScope`]),
/// never a panic. Failing to get the issuer's keys is a transient error instead.
///
/// ```no_run
/// use en_auth_verify::Verifier;
/// # async fn demo(token: &str) -> Result<(), en_auth_core::Error> {
/// let verifier = Verifier::auth0("tenant.us.auth0.com", "https://api.example.com")
///     .require_scopes(["read:orders"]);
/// let claims = verifier.verify(token).await?;
/// println!("request from {:?}", claims.sub);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Verifier {
    keys: Keys,
    config: Arc<Config>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.config.issuer)
            .field("audiences", &self.config.audiences)
            .field("algorithms", &self.config.algorithms)
            .field("required_scopes", &self.config.required_scopes)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    fn with_keys(keys: Keys, algorithms: Vec<Algorithm>) -> Self {
        let mut config = Config {
            issuer: None,
            audiences: Vec::new(),
            client_id: None,
            token_use: None,
            algorithms,
            leeway: DEFAULT_LEEWAY,
            required_typ: None,
            required_scopes: Vec::new(),
            org_id: None,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            validations: Vec::new(),
        };
        config.rebuild();
        Self {
            keys,
            config: Arc::new(config),
        }
    }

    fn jwks_at(location: JwksLocation) -> Self {
        Self::with_keys(
            Keys::Jwks(Arc::new(JwksCache::new(location, jwks_http_client()))),
            ASYMMETRIC_ALGORITHMS.to_vec(),
        )
    }

    /// Tokens signed with keys from the JWKS at `jwks_url`. Set issuer and audience with
    /// [`with_issuer`](Self::with_issuer) and [`with_audience`](Self::with_audience).
    pub fn jwks(jwks_url: impl Into<String>) -> Self {
        Self::jwks_at(JwksLocation::Url(jwks_url.into()))
    }

    /// Tokens from the OpenID provider `issuer` for `audience`; the JWKS is found through
    /// `{issuer}/.well-known/openid-configuration` on first use.
    pub fn oidc(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        let issuer = issuer.into();
        Self::jwks_at(JwksLocation::Discover(issuer.clone()))
            .with_issuer(issuer)
            .with_audience(audience)
    }

    /// Tokens from the Auth0 tenant `domain` (e.g. `tenant.us.auth0.com`) for the API
    /// `audience`: issuer `https://{domain}/`, keys at `https://{domain}/.well-known/jwks.json`.
    pub fn auth0(domain: &str, audience: impl Into<String>) -> Self {
        let domain = domain.trim_start_matches("https://").trim_end_matches('/');
        Self::jwks(format!("https://{domain}/.well-known/jwks.json"))
            .with_issuer(format!("https://{domain}/"))
            .with_audience(audience)
    }

    /// Cognito access tokens of the user pool `pool_id` in `region` for the app client
    /// `client_id`: checks `token_use = access` and `client_id` (Cognito access tokens have
    /// no `aud`).
    pub fn cognito(region: &str, pool_id: &str, client_id: impl Into<String>) -> Self {
        let issuer = format!("https://cognito-idp.{region}.amazonaws.com/{pool_id}");
        let mut verifier =
            Self::jwks(format!("{issuer}/.well-known/jwks.json")).with_issuer(issuer);
        let config = Arc::make_mut(&mut verifier.config);
        config.client_id = Some(client_id.into());
        config.token_use = Some("access".into());
        verifier
    }

    /// Tokens signed with HS256 and a shared `secret` (auth0-python's symmetric verifier).
    pub fn hs256(secret: impl AsRef<[u8]>) -> Self {
        let key = VerificationKey {
            key: DecodingKey::from_secret(secret.as_ref()),
            family: AlgorithmFamily::Hmac,
            alg: Some(Algorithm::HS256),
        };
        Self::with_keys(Keys::Shared(Arc::new(key)), vec![Algorithm::HS256])
    }

    fn configure(mut self, change: impl FnOnce(&mut Config)) -> Self {
        let config = Arc::make_mut(&mut self.config);
        change(config);
        config.rebuild();
        self
    }

    /// Requires `iss` to equal `issuer`.
    pub fn with_issuer(self, issuer: impl Into<String>) -> Self {
        let issuer = issuer.into();
        self.configure(|c| c.issuer = Some(issuer))
    }

    /// Requires `aud` (string or array) to contain `audience`; may be called more than once
    /// to accept any of several audiences.
    pub fn with_audience(self, audience: impl Into<String>) -> Self {
        let audience = audience.into();
        self.configure(|c| c.audiences.push(audience))
    }

    /// Fetches the keys from `jwks_url` instead of the preset's location (a JWKS proxy, a test
    /// server). Keeps issuer, audience and other checks.
    pub fn with_jwks_url(mut self, jwks_url: impl Into<String>) -> Self {
        if let Keys::Jwks(cache) = &self.keys {
            let location = JwksLocation::Url(jwks_url.into());
            self.keys = Keys::Jwks(Arc::new(cache.reconfigured(Some(location), |_| {})));
        }
        self
    }

    /// The algorithms accepted (default: [`ASYMMETRIC_ALGORITHMS`] with a JWKS, HS256 with a
    /// shared secret). HMAC algorithms are ignored for a JWKS verifier.
    pub fn with_algorithms(self, algorithms: impl IntoIterator<Item = Algorithm>) -> Self {
        let symmetric = matches!(self.keys, Keys::Shared(_));
        let algorithms: Vec<_> = algorithms
            .into_iter()
            .filter(|a| (a.family() == AlgorithmFamily::Hmac) == symmetric)
            .collect();
        self.configure(|c| c.algorithms = algorithms)
    }

    /// Clock leeway for `exp`, `nbf` and `iat` (default [`DEFAULT_LEEWAY`]).
    pub fn with_leeway(self, leeway: Duration) -> Self {
        self.configure(|c| c.leeway = leeway)
    }

    /// Requires the header's `typ`, e.g. `at+jwt` (RFC 9068); `application/` prefix allowed.
    pub fn require_typ(self, typ: impl Into<String>) -> Self {
        let typ = typ.into();
        self.configure(|c| c.required_typ = Some(typ))
    }

    /// Requires every one of `scopes`, each found in `scope` or in Auth0's `permissions`.
    pub fn require_scopes<I, S>(self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let scopes: Vec<String> = scopes.into_iter().map(Into::into).collect();
        self.configure(|c| c.required_scopes.extend(scopes))
    }

    /// Requires `org_id` to equal `org_id` (Auth0 organizations).
    pub fn require_org_id(self, org_id: impl Into<String>) -> Self {
        let org_id = org_id.into();
        self.configure(|c| c.org_id = Some(org_id))
    }

    /// Refuses tokens longer than `bytes` before parsing (default [`DEFAULT_MAX_TOKEN_BYTES`]).
    pub fn with_max_token_bytes(self, bytes: usize) -> Self {
        self.configure(|c| c.max_token_bytes = bytes)
    }

    /// At most one JWKS refetch for unknown `kid`s per `interval` (default 10 s).
    pub fn with_jwks_refresh_interval(mut self, interval: Duration) -> Self {
        if let Keys::Jwks(cache) = &self.keys {
            let fresh = cache.reconfigured(None, |c| c.min_refresh_interval = interval);
            self.keys = Keys::Jwks(Arc::new(fresh));
        }
        self
    }

    /// JWKS documents fetched so far (0 for a shared-secret verifier).
    pub fn jwks_fetches(&self) -> u64 {
        match &self.keys {
            Keys::Jwks(cache) => cache.fetches(),
            Keys::Shared(_) => 0,
        }
    }

    /// Verifies `token` (the bare JWT, without `Bearer `) and returns its claims.
    pub async fn verify(&self, token: &str) -> Result<Claims, Error> {
        let config = &*self.config;
        if token.len() > config.max_token_bytes {
            return Err(invalid(format!(
                "token longer than {} bytes",
                config.max_token_bytes
            )));
        }
        // The parser's message can quote the token (an unknown `alg`): escaped and capped.
        let header = decode_header(token).map_err(|e| {
            invalid(format!(
                "malformed token: {}",
                en_auth_core::untrusted_text(&e.to_string())
            ))
        })?;
        let Some(validation) = config
            .validations
            .iter()
            .find_map(|(alg, v)| (*alg == header.alg).then_some(v))
        else {
            return Err(invalid(format!(
                "algorithm {:?} is not allowed",
                header.alg
            )));
        };
        if let Some(required) = &config.required_typ {
            let typ = header.typ.as_deref().unwrap_or("");
            let typ = typ.strip_prefix("application/").unwrap_or(typ);
            if !typ.eq_ignore_ascii_case(required) {
                return Err(invalid(format!(
                    "token type `{}` is not `{}`",
                    en_auth_core::untrusted_text(typ),
                    en_auth_core::untrusted_text(required)
                )));
            }
        }
        let key = match &self.keys {
            Keys::Jwks(cache) => cache.key_for(header.kid.as_deref()).await?,
            Keys::Shared(key) => Arc::clone(key),
        };
        if key.family != header.alg.family() || key.alg.is_some_and(|a| a != header.alg) {
            return Err(invalid(format!(
                "algorithm {:?} does not match the key",
                header.alg
            )));
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, validation)
            .map_err(|e| invalid(describe(&e)))?
            .claims;
        self.check_claims(&claims)?;
        Ok(claims)
    }

    fn check_claims(&self, claims: &Claims) -> Result<(), Error> {
        let config = &*self.config;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if claims
            .iat
            .is_some_and(|iat| iat > now + config.leeway.as_secs() as i64)
        {
            return Err(invalid("token issued in the future".into()));
        }
        if let Some(expected) = &config.token_use {
            if claims.token_use.as_deref() != Some(expected) {
                return Err(invalid(format!("token_use is not `{expected}`")));
            }
        }
        if let Some(expected) = &config.client_id {
            if claims.client_id.as_deref() != Some(expected) {
                return Err(invalid("token was issued to another client".into()));
            }
        }
        if let Some(expected) = &config.org_id {
            if claims.org_id.as_deref() != Some(expected) {
                return Err(invalid("token belongs to another organization".into()));
            }
        }
        check_scopes(claims, &config.required_scopes)
    }
}

/// `Ok` if every required scope is in `scope` or `permissions`, else `InsufficientScope`.
pub(crate) fn check_scopes(claims: &Claims, required: &[String]) -> Result<(), Error> {
    let missing = required
        .iter()
        .any(|r| !claims.has_scope(r) && !claims.has_permission(r));
    if missing {
        return Err(Error::InsufficientScope {
            required: required.to_vec(),
        });
    }
    Ok(())
}

/// The client used for JWKS and discovery: no redirects; a key fetch holds requests up, so
/// its total timeout is shorter than a token request's.
fn jwks_http_client() -> reqwest::Client {
    en_auth_core::provider_http_client(en_auth_core::CONNECT_TIMEOUT, Duration::from_secs(10))
}

fn invalid(reason: String) -> Error {
    Error::InvalidToken { reason }
}

fn describe(err: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match err.kind() {
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::ExpiredSignature => "token expired".into(),
        ErrorKind::ImmatureSignature => "token not yet valid (nbf)".into(),
        ErrorKind::InvalidIssuer => "wrong issuer".into(),
        ErrorKind::InvalidAudience => "wrong audience".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("missing claim `{claim}`"),
        ErrorKind::InvalidAlgorithm => "algorithm does not match the key".into(),
        other => format!(
            "malformed token: {}",
            en_auth_core::untrusted_text(&format!("{other:?}"))
        ),
    }
}

/// Entry points for the fuzz targets (feature `fuzzing`): a child module, so that it can
/// build verifiers around single keys.
#[cfg(feature = "fuzzing")]
#[path = "fuzzing.rs"]
pub mod fuzzing;
