//! [`Verifier`]: checks an incoming access token and returns its [`Claims`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use en_auth_core::Error;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, decode_header};

use crate::Claims;
use crate::jwks::{JwksCache, JwksLocation, JwksSettings, VerificationKey};
use crate::token_cache::{Entry, TokenCache, TokenCacheSettings, TokenDigest};

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

impl Keys {
    /// The key that verified a cached token, if it is still the one a fresh verification
    /// would pick: the key published for the token's `kid`, or — for a token without one —
    /// still the set's only key.
    fn still_published(&self, key: &Arc<VerificationKey>, token_names_kid: bool) -> bool {
        match self {
            Keys::Jwks(cache) => cache
                .cached_key(key.kid.as_deref().filter(|_| token_names_kid))
                .is_some_and(|current| Arc::ptr_eq(&current, key)),
            Keys::Shared(shared) => Arc::ptr_eq(shared, key),
        }
    }
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
    token_cache: Option<TokenCacheSettings>,
}

/// Verifies incoming JWT access tokens: signature (with keys from a JWKS or a shared secret),
/// an algorithm allow-list, issuer, audience, time claims, and optionally `typ`, scopes and
/// organization. Cheap to clone; clones share the key cache and the verified-token cache.
///
/// Every bad token is an `Err` ([`Error::InvalidToken`] or [`Error::InsufficientScope`]),
/// never a panic. Failing to get the issuer's keys is a transient error instead.
///
/// A token seen before is answered from the verified-token cache (see
/// [`with_token_cache`](Self::with_token_cache)): its signature is not checked again, but
/// everything that can change is — expiry and the other time claims, the policy checks, and
/// whether its signing key is still published.
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
    /// Verified tokens of exactly this configuration and key source.
    verified: Option<Arc<TokenCache>>,
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
        let config = Config {
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
            token_cache: Some(TokenCacheSettings::default()),
        };
        Self {
            keys,
            config: Arc::new(config),
            verified: None,
        }
        .with_fresh_token_cache()
    }

    /// A new, empty verified-token cache: every change of configuration or key source makes
    /// one, so entries verified under other rules are never reused.
    fn with_fresh_token_cache(mut self) -> Self {
        self.verified = self
            .config
            .token_cache
            .map(|settings| Arc::new(TokenCache::new(settings)));
        self
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

    /// Tokens signed with the keys of the JWKS `document` held in memory, never fetched nor
    /// refreshed: keys shipped with the application, tests, fuzzing. Set issuer and audience
    /// as with [`jwks`](Self::jwks). Fails with [`Error::InvalidConfiguration`] when the
    /// document is not a JWKS or has no usable signing key.
    ///
    /// ```
    /// use en_auth_verify::Verifier;
    /// let document = br#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256","use":"sig",
    ///   "x":"K6HEw0P4RrsEGVKfIwz-sh_FC5cH_2q_4afnCuSZ9Ls","y":"kb-InbTpDD20czIrUsFGl6shDXDvDYD55q4wmCP-Bck"}]}"#;
    /// let verifier = Verifier::jwks_document(document)?
    ///     .with_issuer("https://issuer.example.com/")
    ///     .with_audience("https://api.example.com");
    /// assert!(Verifier::jwks_document(br#"{"keys":[]}"#).is_err());
    /// # Ok::<(), en_auth_core::Error>(())
    /// ```
    pub fn jwks_document(document: &[u8]) -> Result<Self, Error> {
        let cache = JwksCache::fixed(document, jwks_http_client()).map_err(|err| match err {
            Error::InvalidResponse { reason, .. } => Error::InvalidConfiguration {
                setting: "jwks".into(),
                reason,
            },
            other => other,
        })?;
        Ok(Self::with_keys(
            Keys::Jwks(Arc::new(cache)),
            ASYMMETRIC_ALGORITHMS.to_vec(),
        ))
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
        let client_id = client_id.into();
        Self::jwks(format!("{issuer}/.well-known/jwks.json"))
            .with_issuer(issuer)
            .configure(|c| {
                c.client_id = Some(client_id);
                c.token_use = Some("access".into());
            })
    }

    /// Tokens signed with HS256 and a shared `secret` (auth0-python's symmetric verifier).
    pub fn hs256(secret: impl AsRef<[u8]>) -> Self {
        let key =
            VerificationKey::shared(DecodingKey::from_secret(secret.as_ref()), Algorithm::HS256);
        Self::with_keys(Keys::Shared(Arc::new(key)), vec![Algorithm::HS256])
    }

    fn configure(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(Arc::make_mut(&mut self.config));
        self.with_fresh_token_cache()
    }

    fn reconfigure_jwks(
        mut self,
        location: Option<JwksLocation>,
        change: impl FnOnce(&mut JwksSettings),
    ) -> Self {
        if let Keys::Jwks(cache) = &self.keys {
            self.keys = Keys::Jwks(Arc::new(cache.reconfigured(location, change)));
        }
        self.with_fresh_token_cache()
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
    pub fn with_jwks_url(self, jwks_url: impl Into<String>) -> Self {
        self.reconfigure_jwks(Some(JwksLocation::Url(jwks_url.into())), |_| {})
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

    /// At most one JWKS fetch starts per `interval` (default
    /// [`DEFAULT_MIN_REFRESH_INTERVAL`](crate::DEFAULT_MIN_REFRESH_INTERVAL), 10 s): how often tokens with unknown `kid`s may make
    /// the verifier ask the provider again.
    pub fn with_jwks_refresh_interval(self, interval: Duration) -> Self {
        self.reconfigure_jwks(None, |s| s.min_refresh_interval = interval)
    }

    /// Refreshes the key set in the background every `period` (default
    /// [`DEFAULT_REFRESH_EVERY`](crate::DEFAULT_REFRESH_EVERY), 15 min; 5 to 60 minutes suit every provider), starting
    /// with the first verification, so keys published ahead of use are known before the
    /// first token signed with them arrives. A set older than `period` is also refreshed in
    /// the background on the next verification, while its keys keep serving. The period is
    /// kept between 10 ms and 30 days.
    pub fn with_jwks_refresh_every(self, period: Duration) -> Self {
        self.reconfigure_jwks(None, |s| s.refresh_every = period)
    }

    /// Keeps up to `capacity` verified tokens (default [`DEFAULT_TOKEN_CACHE_CAPACITY`](crate::DEFAULT_TOKEN_CACHE_CAPACITY)) for
    /// at most `max_age` each (default [`DEFAULT_TOKEN_CACHE_MAX_AGE`](crate::DEFAULT_TOKEN_CACHE_MAX_AGE); a token's expiry or
    /// the removal of its key from the JWKS ends an entry sooner). A token seen again is then
    /// answered without checking its signature again; every check whose answer can change
    /// still runs. `capacity` 0 turns the cache off
    /// ([`without_token_cache`](Self::without_token_cache)).
    pub fn with_token_cache(self, capacity: usize, max_age: Duration) -> Self {
        self.configure(|c| {
            c.token_cache = (capacity > 0).then_some(TokenCacheSettings { capacity, max_age });
        })
    }

    /// Verifies every token in full, every time.
    pub fn without_token_cache(self) -> Self {
        self.configure(|c| c.token_cache = None)
    }

    /// Tokens held by the verified-token cache (0 without one).
    pub fn cached_tokens(&self) -> usize {
        self.verified.as_ref().map_or(0, |cache| cache.len())
    }

    /// Verifications answered from the verified-token cache so far (0 without one): with
    /// the verifications made, the cache's hit rate.
    pub fn token_cache_hits(&self) -> u64 {
        self.verified.as_ref().map_or(0, |cache| cache.hits())
    }

    /// JWKS fetches started so far (0 for a shared-secret verifier).
    pub fn jwks_fetches(&self) -> u64 {
        match &self.keys {
            Keys::Jwks(cache) => cache.fetches(),
            Keys::Shared(_) => 0,
        }
    }

    /// JWKS fetches so far whose key set is now in use (0 for a shared-secret verifier): with
    /// [`jwks_fetches`](Self::jwks_fetches), how many fetches failed; for a test, when a
    /// published change has been learnt.
    pub fn jwks_updates(&self) -> u64 {
        match &self.keys {
            Keys::Jwks(cache) => cache.updates(),
            Keys::Shared(_) => 0,
        }
    }

    /// Verifies `token` (the bare JWT, without `Bearer `) and returns its claims.
    pub async fn verify(&self, token: &str) -> Result<Claims, Error> {
        self.verify_shared(token).await.map(Arc::unwrap_or_clone)
    }

    /// [`verify`](Self::verify), returning the claims behind an `Arc`: a token answered from
    /// the verified-token cache is then not copied (what [`RequireAuth`](crate::RequireAuth)
    /// uses).
    pub async fn verify_shared(&self, token: &str) -> Result<Arc<Claims>, Error> {
        let config = &*self.config;
        if token.len() > config.max_token_bytes {
            return Err(invalid(format!(
                "token longer than {} bytes",
                config.max_token_bytes
            )));
        }
        let now = unix_now();
        let digest = self.verified.as_ref().map(|cache| {
            let digest = TokenDigest::of(token);
            (cache, digest)
        });
        if let Some((cache, digest)) = &digest {
            if let Some(entry) = cache.get(digest) {
                if self.keys.still_published(&entry.key, entry.token_names_kid) {
                    // The same checks a fresh verification ends with.
                    self.check_time(&entry.claims, now)?;
                    self.check_claims(&entry.claims)?;
                    cache.hit();
                    return Ok(entry.claims);
                }
                cache.remove(digest);
            }
        }
        let (claims, key, token_names_kid) = self.verify_signature(token).await?;
        self.check_registered(&claims, now)?;
        let claims = Arc::new(claims);
        if let Some((cache, digest)) = digest {
            cache.insert(
                digest,
                Entry {
                    claims: Arc::clone(&claims),
                    key,
                    token_names_kid,
                    verified_at: Instant::now(),
                },
            );
        }
        self.check_claims(&claims)?;
        Ok(claims)
    }

    /// Header checks, the key, and the signature: the claims of an authentic token.
    /// Also says whether the token named a `kid` (a token without one used the set's only key).
    async fn verify_signature(
        &self,
        token: &str,
    ) -> Result<(Claims, Arc<VerificationKey>, bool), Error> {
        let config = &*self.config;
        // The parser's message can quote the token (an unknown `alg`): escaped and capped.
        let header = decode_header(token).map_err(|e| {
            invalid(format!(
                "malformed token: {}",
                en_auth_core::untrusted_text(&e.to_string())
            ))
        })?;
        if !config.algorithms.contains(&header.alg) {
            return Err(invalid(format!(
                "algorithm {:?} is not allowed",
                header.alg
            )));
        }
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
        let claims = crate::decode::signed_claims(token, header.alg, &key)?;
        Ok((claims, key, header.kid.is_some()))
    }

    /// The registered claims of an authentic token: `exp` (required), `nbf`, `iss`, `aud`.
    fn check_registered(&self, claims: &Claims, now: i64) -> Result<(), Error> {
        let config = &*self.config;
        if claims.exp.is_none() {
            return Err(invalid("missing claim `exp`".into()));
        }
        self.check_time(claims, now)?;
        if let Some(issuer) = &config.issuer {
            match &claims.iss {
                None => return Err(invalid("missing claim `iss`".into())),
                Some(iss) if iss != issuer => return Err(invalid("wrong issuer".into())),
                Some(_) => {}
            }
        }
        if !config.audiences.is_empty() {
            if claims.aud.is_empty() {
                return Err(invalid("missing claim `aud`".into()));
            }
            if !claims.aud.iter().any(|aud| config.audiences.contains(aud)) {
                return Err(invalid("wrong audience".into()));
            }
        }
        Ok(())
    }

    /// The time claims against `now`, with the leeway: `exp` passed, `nbf` not reached, `iat`
    /// in the future. Run on every verification, cached or not.
    fn check_time(&self, claims: &Claims, now: i64) -> Result<(), Error> {
        let leeway = i64::try_from(self.config.leeway.as_secs()).unwrap_or(i64::MAX);
        if claims
            .exp
            .is_some_and(|exp| exp < now.saturating_sub(leeway))
        {
            return Err(invalid("token expired".into()));
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(leeway))
        {
            return Err(invalid("token not yet valid (nbf)".into()));
        }
        if claims
            .iat
            .is_some_and(|iat| iat > now.saturating_add(leeway))
        {
            return Err(invalid("token issued in the future".into()));
        }
        Ok(())
    }

    /// The policy checks: `token_use`, `client_id`, `org_id`, scopes.
    fn check_claims(&self, claims: &Claims) -> Result<(), Error> {
        let config = &*self.config;
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

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
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

/// Entry points for the fuzz targets (feature `fuzzing`): a child module, so that it can
/// build verifiers around single keys.
#[cfg(feature = "fuzzing")]
#[path = "fuzzing.rs"]
pub mod fuzzing;
