//! Refresh tokens across a fleet (docs/fleet.md, "Refresh tokens across a fleet"): under the
//! store's lock a refresh starts from the newest token in the store, so caches sharing a
//! store never spend a refresh token another cache already rotated.
//!
//! The caches stand in for the processes of a fleet: they share one store and nothing else.
//! The provider is in process and behaves like oidc-provider with `rotateRefreshToken`: every
//! refresh rotates the refresh token, and spending a rotated one again revokes the whole
//! grant (every access and refresh token of that login). The authorizer, like
//! `PasswordAuthorizer`, logs in again when its refresh token is refused.
//!
//! On paused time. The tokens' times follow tokio's clock (a token's `expires_at` is computed
//! from it when asked), so a token read from the store after a virtual minute is a minute
//! older, as it would be in another process.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use en_auth_core::secrecy::{ExposeSecret, SecretString};
use en_auth_core::{
    AccessToken, Authorizer, CacheKey, ClientInfo, Error, LifecyclePolicy, MemoryTokenStore,
    StoreLock, TokenCache, TokenStore, async_trait,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Access tokens live a minute; they turn stale 30 s before they expire.
const LIFETIME: Duration = Duration::from_secs(60);
const GAP: Duration = Duration::from_secs(30);

thread_local! {
    /// The start of this test's clock (tests run on a current-thread runtime).
    static EPOCH: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Milliseconds on this test's tokio clock.
fn sim_ms() -> i64 {
    let now = Instant::now();
    let epoch = EPOCH.with(|e| {
        let epoch = e.get().unwrap_or(now);
        e.set(Some(epoch));
        epoch
    });
    i64::try_from(now.duration_since(epoch).as_millis()).unwrap_or(i64::MAX)
}

/// A time on the tokio clock as the wall-clock time a token reports.
fn as_wall(at_ms: i64) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::milliseconds(at_ms - sim_ms())
}

/// An access token and the refresh token that came with it.
#[derive(Clone, Serialize, Deserialize)]
struct UserToken {
    access: String,
    refresh: String,
    issued_ms: i64,
    expires_ms: i64,
}

impl AccessToken for UserToken {
    fn access_token(&self) -> &str {
        &self.access
    }
    fn expires_at(&self) -> Option<DateTime<Utc>> {
        Some(as_wall(self.expires_ms))
    }
    fn issued_at(&self) -> Option<DateTime<Utc>> {
        // An application's token method with a bug.
        assert!(self.access != "access-panics", "a token method that panics");
        Some(as_wall(self.issued_ms))
    }
}

#[derive(Default)]
struct ProviderState {
    next: u64,
    /// Grant of each login, and whether it was revoked.
    revoked: HashMap<u64, bool>,
    /// Refresh token → its grant and whether it was spent.
    refresh_tokens: HashMap<String, (u64, bool)>,
    /// Access token → its grant and expiry.
    access_tokens: HashMap<String, (u64, i64)>,
}

/// A provider that rotates refresh tokens and refuses reuse by revoking the grant.
#[derive(Default)]
struct Provider {
    state: Mutex<ProviderState>,
    logins: AtomicU64,
    refreshes: AtomicU64,
    /// Refreshes with a refresh token that had been spent already (each revoked its grant).
    reuses: AtomicU64,
    /// Refresh tokens spent, in order.
    spent: Mutex<Vec<String>>,
    /// Whether a refresh keeps the access token and rotates only the refresh token.
    keep_access: AtomicBool,
    /// Added to the issue time of the tokens issued (the clock of the host that receives
    /// them, behind or ahead).
    issued_skew_ms: std::sync::atomic::AtomicI64,
}

impl Provider {
    fn issue(&self, state: &mut ProviderState, grant: u64, access: Option<&str>) -> UserToken {
        state.next += 1;
        let n = state.next;
        let now = sim_ms();
        let expires_ms = now + i64::try_from(LIFETIME.as_millis()).unwrap();
        let token = UserToken {
            access: access.map_or_else(|| format!("access-{n}"), str::to_owned),
            refresh: format!("refresh-{n}"),
            issued_ms: now + self.issued_skew_ms.load(Ordering::SeqCst),
            expires_ms,
        };
        state
            .access_tokens
            .insert(token.access.clone(), (grant, expires_ms));
        state
            .refresh_tokens
            .insert(token.refresh.clone(), (grant, false));
        token
    }

    fn login(&self) -> UserToken {
        self.logins.fetch_add(1, Ordering::SeqCst);
        let mut state = self.state.lock();
        state.next += 1;
        let grant = state.next;
        state.revoked.insert(grant, false);
        self.issue(&mut state, grant, None)
    }

    fn refresh(&self, old: &UserToken) -> Result<UserToken, Error> {
        let refresh_token = old.refresh.as_str();
        self.refreshes.fetch_add(1, Ordering::SeqCst);
        self.spent.lock().push(refresh_token.to_owned());
        let mut state = self.state.lock();
        let refused = Error::Authorization {
            status: Some(400),
            error: "invalid_grant".into(),
            description: None,
            error_uri: None,
        };
        let Some((grant, spent)) = state.refresh_tokens.get(refresh_token).copied() else {
            return Err(refused);
        };
        if spent {
            self.reuses.fetch_add(1, Ordering::SeqCst);
            state.revoked.insert(grant, true);
            return Err(refused);
        }
        if state.revoked.get(&grant).copied().unwrap_or(true) {
            return Err(refused);
        }
        state
            .refresh_tokens
            .insert(refresh_token.to_owned(), (grant, true));
        let keep = self.keep_access.load(Ordering::SeqCst);
        Ok(self.issue(&mut state, grant, keep.then_some(old.access.as_str())))
    }

    /// Whether an API checking with the provider (introspection) accepts `access` now.
    fn accepts(&self, access: &str) -> bool {
        let state = self.state.lock();
        state
            .access_tokens
            .get(access)
            .is_some_and(|(grant, expires)| {
                *expires > sim_ms() && !state.revoked.get(grant).copied().unwrap_or(true)
            })
    }

    fn logins(&self) -> u64 {
        self.logins.load(Ordering::SeqCst)
    }
    fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::SeqCst)
    }
    fn reuses(&self) -> u64 {
        self.reuses.load(Ordering::SeqCst)
    }
}

/// Logs in, renews with the refresh token, and logs in again when it is refused (as
/// `PasswordAuthorizer` does) unless `no_login_fallback`.
struct UserAuthorizer {
    info: ClientInfo,
    provider: Arc<Provider>,
    no_login_fallback: bool,
}

#[async_trait]
impl Authorizer for UserAuthorizer {
    type Token = UserToken;
    fn client_info(&self) -> &ClientInfo {
        &self.info
    }
    async fn authorize(&self) -> Result<UserToken, Error> {
        Ok(self.provider.login())
    }
    async fn refresh(&self, token: &UserToken) -> Result<UserToken, Error> {
        match self.provider.refresh(token) {
            Err(Error::Authorization { .. }) if !self.no_login_fallback => {
                Ok(self.provider.login())
            }
            other => other,
        }
    }
    fn cache_key(&self) -> CacheKey {
        CacheKey::builder("test").part("user", "alice").build()
    }
    fn refresh_spends_token(&self) -> bool {
        true
    }
}

/// Client credentials: `refresh` is a new authorization (the trait's default), and does not
/// spend the token it is given.
struct ClientCredentials {
    info: ClientInfo,
    provider: Arc<Provider>,
}

#[async_trait]
impl Authorizer for ClientCredentials {
    type Token = UserToken;
    fn client_info(&self) -> &ClientInfo {
        &self.info
    }
    async fn authorize(&self) -> Result<UserToken, Error> {
        Ok(self.provider.login())
    }
    fn cache_key(&self) -> CacheKey {
        key()
    }
}

/// A memory store whose calls all fail while it is `down`. Its values outlive their time to
/// live on paused time (the memory store's clock is the system's) unless it is `expiring`:
/// then a value lives as long as the store was told, on tokio's clock, as in Redis.
#[derive(Default)]
struct Store {
    memory: MemoryTokenStore,
    down: AtomicBool,
    expiring: AtomicBool,
    until: Mutex<Option<Instant>>,
    /// How long the next `try_lock` takes to answer (once).
    lock_delay: Mutex<Option<Duration>>,
}

impl Store {
    fn check(&self) -> Result<(), Error> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::Store {
                message: "down".into(),
                source: None,
            });
        }
        Ok(())
    }
}

#[async_trait]
impl TokenStore for Store {
    async fn load(&self, key: &CacheKey) -> Result<Option<SecretString>, Error> {
        self.check()?;
        let expired = self
            .until
            .lock()
            .is_some_and(|until| until <= Instant::now());
        if self.expiring.load(Ordering::SeqCst) && expired {
            return Ok(None);
        }
        self.memory.load(key).await
    }
    async fn save(&self, key: &CacheKey, value: &SecretString, ttl: Duration) -> Result<(), Error> {
        self.check()?;
        *self.until.lock() = Some(Instant::now() + ttl);
        self.memory.save(key, value, ttl).await
    }
    async fn remove_if(&self, key: &CacheKey, value: &SecretString) -> Result<(), Error> {
        self.check()?;
        self.memory.remove_if(key, value).await
    }
    async fn try_lock(&self, key: &CacheKey, ttl: Duration) -> Result<Option<StoreLock>, Error> {
        self.check()?;
        let delay = self.lock_delay.lock().take();
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        self.memory.try_lock(key, ttl).await
    }
    async fn unlock(&self, key: &CacheKey, lock: StoreLock) -> Result<(), Error> {
        self.check()?;
        self.memory.unlock(key, lock).await
    }
}

fn key() -> CacheKey {
    CacheKey::builder("test").part("user", "alice").build()
}

fn authorizer(provider: &Arc<Provider>) -> UserAuthorizer {
    UserAuthorizer {
        info: ClientInfo::new("client", "secret"),
        provider: Arc::clone(provider),
        no_login_fallback: false,
    }
}

fn policy() -> LifecyclePolicy {
    LifecyclePolicy::default().with_expiration_gap(GAP)
}

/// One fleet member: a cache of its own on the shared store.
fn member(provider: &Arc<Provider>, store: &Arc<Store>) -> TokenCache<UserAuthorizer> {
    TokenCache::builder(authorizer(provider))
        .policy(policy())
        .store(Arc::clone(store) as Arc<dyn TokenStore>)
        .build()
}

fn fleet(n: usize) -> (Arc<Provider>, Arc<Store>, Vec<TokenCache<UserAuthorizer>>) {
    sim_ms(); // starts the test's clock
    let provider = Arc::new(Provider::default());
    let store = Arc::new(Store::default());
    let members = (0..n).map(|_| member(&provider, &store)).collect();
    (provider, store, members)
}

/// A token from `cache`, and lets a refresh it started in the background finish.
async fn token(cache: &TokenCache<UserAuthorizer>) -> String {
    let token = cache.get().await.expect("a token").token().access.clone();
    tokio::time::sleep(Duration::from_millis(10)).await;
    token
}

/// The access token in the store.
async fn stored(store: &Store) -> Option<UserToken> {
    let value = store.memory.load(&key()).await.expect("memory store")?;
    serde_json::from_str(value.expose_secret()).ok()
}

#[tokio::test(start_paused = true)]
async fn replicas_refresh_from_the_newest_stored_token_never_from_a_spent_one() {
    let (provider, _store, members) = fleet(3);
    for member in &members {
        let token = token(member).await;
        assert!(provider.accepts(&token));
    }
    assert_eq!(provider.logins(), 1, "one login for the fleet");
    // Each lifetime one member asks, in turn: the one that asks last refreshed two
    // rotations ago, and its own refresh token has been spent since. The stored token is
    // stale (older than 30 s) but carries the newest refresh token.
    const LIFETIMES: u64 = 9;
    for lifetime in 0..LIFETIMES {
        tokio::time::sleep(Duration::from_secs(40)).await;
        let member = &members[(lifetime % 3) as usize];
        let token = token(member).await;
        // A member whose token was merely stale was served it while the refresh ran; the
        // refresh has finished since.
        let current = member.get().await.unwrap().token().access.clone();
        assert!(
            provider.accepts(&token) && provider.accepts(&current),
            "lifetime {lifetime}: the provider accepts the member's tokens"
        );
    }
    assert_eq!(provider.reuses(), 0, "no refresh token was spent twice");
    assert_eq!(
        provider.logins(),
        1,
        "still the one login: the session lives on"
    );
    assert_eq!(provider.refreshes(), LIFETIMES, "one refresh per lifetime");
    let from_store: u64 = members.iter().map(|m| m.stats().refreshes_from_store).sum();
    // All but the first: that member refreshed its own token, which was the stored one.
    assert_eq!(
        from_store,
        LIFETIMES - 1,
        "refreshes started from the stored token"
    );
    // Every refresh token was spent once, in the order they were issued.
    let expected: Vec<String> = (2..2 + LIFETIMES).map(|n| format!("refresh-{n}")).collect();
    assert_eq!(*provider.spent.lock(), expected);
}

#[tokio::test(start_paused = true)]
async fn a_cold_member_refreshes_the_stored_token_instead_of_logging_in() {
    let (captured, _guard) = en_auth_testkit::capture_traces();
    let (provider, store, members) = fleet(1);
    token(&members[0]).await;
    // Long after the token expired (the store still holds it: think of clocks that differ
    // between hosts, or a store that keeps it longer) a new member starts.
    tokio::time::sleep(LIFETIME * 3).await;
    let cold = member(&provider, &store);
    let obtained = token(&cold).await;
    assert!(provider.accepts(&obtained));
    assert_eq!(
        provider.logins(),
        1,
        "no second login: the session lives on"
    );
    assert_eq!(provider.refreshes(), 1);
    assert_eq!(provider.spent.lock().as_slice(), ["refresh-2"]);
    let stats = cold.stats();
    assert_eq!((stats.authorizations, stats.refreshes), (0, 1));
    assert_eq!(stats.refreshes_from_store, 1);
    let text = captured.text();
    assert!(text.contains("cold_start=true"), "{text}");

    // A stale (not yet expired) stored token: the same.
    tokio::time::sleep(Duration::from_secs(40)).await;
    let another = member(&provider, &store);
    assert!(provider.accepts(&token(&another).await));
    assert_eq!((provider.logins(), provider.refreshes()), (1, 2));
    assert_eq!(another.stats().refreshes_from_store, 1);
}

#[tokio::test(start_paused = true)]
async fn a_cold_member_with_an_empty_store_logs_in() {
    let (provider, _store, members) = fleet(1);
    token(&members[0]).await;
    assert_eq!((provider.logins(), provider.refreshes()), (1, 0));
    assert_eq!(members[0].stats().refreshes_from_store, 0);
}

#[tokio::test(start_paused = true)]
async fn without_a_store_a_cache_refreshes_its_own_token() {
    sim_ms();
    let provider = Arc::new(Provider::default());
    let cache = TokenCache::builder(authorizer(&provider))
        .policy(policy())
        .build();
    for _ in 0..4 {
        assert!(provider.accepts(&token(&cache).await));
        tokio::time::sleep(Duration::from_secs(40)).await;
    }
    assert_eq!((provider.logins(), provider.reuses()), (1, 0));
    assert_eq!(provider.refreshes(), 3);
    assert_eq!(cache.stats().refreshes_from_store, 0);
}

#[tokio::test(start_paused = true)]
async fn a_store_older_than_the_own_token_is_not_refreshed_from() {
    let (provider, store, members) = fleet(1);
    let member = &members[0];
    token(member).await;
    let first = stored(&store).await.expect("the login's token is stored");
    // The store is down while the member refreshes: its new token is not stored, and the
    // store still holds the first one (whose refresh token the member has spent).
    store.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(40)).await;
    token(member).await;
    assert_eq!(provider.refreshes(), 1);
    store.down.store(false, Ordering::SeqCst);
    assert_eq!(stored(&store).await.unwrap().access, first.access);
    // The next refresh starts from the member's own, newer token.
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert!(provider.accepts(&token(member).await));
    assert_eq!((provider.refreshes(), provider.reuses()), (2, 0));
    assert_eq!(provider.logins(), 1);
    assert_eq!(member.stats().refreshes_from_store, 0);
}

#[tokio::test(start_paused = true)]
async fn an_unreadable_stored_value_is_ignored() {
    let (provider, store, members) = fleet(1);
    token(&members[0]).await;
    store
        .memory
        .save(&key(), &SecretString::from("{not a token"), LIFETIME)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert!(provider.accepts(&token(&members[0]).await));
    assert_eq!((provider.refreshes(), provider.reuses()), (1, 0));
    assert_eq!(members[0].stats().refreshes_from_store, 0);
}

#[tokio::test(start_paused = true)]
async fn with_the_store_down_each_member_refreshes_its_own_token() {
    let (provider, store, members) = fleet(2);
    for member in &members {
        token(member).await;
    }
    store.down.store(true, Ordering::SeqCst);
    // Without the store there is no lock and no shared token: both members refresh the
    // same refresh token, and the provider refuses the second (the documented risk). No
    // request fails: the refused member logs in again.
    tokio::time::sleep(Duration::from_secs(40)).await;
    for member in &members {
        assert!(member.get().await.is_ok());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(provider.refreshes(), 2);
    assert_eq!(provider.spent.lock().as_slice(), ["refresh-2", "refresh-2"]);
    assert_eq!(provider.reuses(), 1);
    assert_eq!(provider.logins(), 2);
}

#[tokio::test(start_paused = true)]
async fn after_a_lock_wait_timeout_the_stored_token_is_still_refreshed_from() {
    let (provider, store, members) = fleet(2);
    for member in &members {
        token(member).await;
    }
    tokio::time::sleep(Duration::from_secs(40)).await;
    token(&members[0]).await; // rotates: the store holds the newest refresh token
    assert_eq!(provider.refreshes(), 1);
    // A holder that never lets go (its lock outlives this test's clock): the other member
    // waits, gives up and fetches without the lock, still from the stored token.
    let stuck = store
        .memory
        .try_lock(&key(), Duration::from_secs(3600))
        .await
        .unwrap()
        .expect("lock free");
    tokio::time::sleep(Duration::from_secs(40)).await;
    let obtained = token(&members[1]).await;
    let stats = members[1].stats();
    assert_eq!(stats.lock_timeouts, 1, "{stats:?}");
    assert!(provider.accepts(&obtained));
    assert_eq!((provider.refreshes(), provider.reuses()), (2, 0));
    assert_eq!(provider.logins(), 1);
    assert_eq!(stats.refreshes_from_store, 1);
    drop(stuck);
}

#[tokio::test(start_paused = true)]
async fn a_token_removed_as_rejected_is_refreshed_once_by_the_member_that_rejected_it() {
    let (provider, store, members) = fleet(2);
    for member in &members {
        token(member).await;
    }
    // An API rejects the shared token in member 0: it is removed from the store, and member
    // 0 refreshes its own copy (nothing newer is stored).
    let rejected = members[0].get().await.unwrap();
    assert!(members[0].invalidate(&rejected).await);
    let replacement = token(&members[0]).await;
    assert_ne!(replacement, rejected.token().access);
    assert_eq!(provider.spent.lock().as_slice(), ["refresh-2"]);
    assert_eq!(stored(&store).await.unwrap().access, replacement);
    // Member 1 still holds the rejected token; once it is stale it takes the stored
    // replacement, and the refresh after that starts from the replacement's refresh token.
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert_eq!(token(&members[1]).await, rejected.token().access);
    let taken = members[1].get().await.unwrap().token().access.clone();
    assert!(provider.accepts(&taken));
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert!(provider.accepts(&token(&members[1]).await));
    // The replacement was stale by then (issued 40 s before): member 1 refreshed from it.
    assert_eq!(
        provider.spent.lock().as_slice(),
        ["refresh-2", "refresh-3", "refresh-4"]
    );
    assert_eq!(provider.reuses(), 0);
    assert_eq!(provider.logins(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_fleet_idle_past_the_stored_tokens_life_spends_a_rotated_token_the_documented_risk() {
    let (provider, store, members) = fleet(2);
    store.expiring.store(true, Ordering::SeqCst);
    for member in &members {
        token(member).await;
    }
    tokio::time::sleep(Duration::from_secs(40)).await;
    token(&members[0]).await; // rotates
    // Member 1 wakes after that token expired and left the store: nothing newer to refresh
    // from, so it spends its own refresh token, which member 0 already rotated.
    tokio::time::sleep(LIFETIME * 2).await;
    assert!(
        stored(&store).await.is_some(),
        "the memory store still has it"
    );
    assert!(
        store.load(&key()).await.unwrap().is_none(),
        "as Redis would not"
    );
    assert!(provider.accepts(&token(&members[1]).await));
    assert_eq!(provider.spent.lock().as_slice(), ["refresh-2", "refresh-2"]);
    assert_eq!((provider.reuses(), provider.logins()), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn with_background_refresh_an_idle_fleet_never_falls_behind() {
    sim_ms();
    let provider = Arc::new(Provider::default());
    let store = Arc::new(Store::default());
    store.expiring.store(true, Ordering::SeqCst);
    let members: Vec<_> = (0..3)
        .map(|_| {
            TokenCache::builder(authorizer(&provider))
                .policy(policy())
                .store(Arc::clone(&store) as Arc<dyn TokenStore>)
                .background_refresh(true)
                .build()
        })
        .collect();
    for member in &members {
        member.warm_up().await.unwrap();
    }
    // Ten lifetimes without a single request: each member's background refresh looks at the
    // store once per lifetime, and takes the token another member just rotated.
    tokio::time::sleep(LIFETIME * 10).await;
    for member in &members {
        assert!(provider.accepts(&member.get().await.unwrap().token().access));
    }
    assert_eq!((provider.reuses(), provider.logins()), (0, 1));
    let spent = provider.spent.lock().clone();
    let distinct: std::collections::HashSet<_> = spent.iter().collect();
    assert_eq!(distinct.len(), spent.len(), "each refresh token spent once");
    assert!(spent.len() >= 10, "refreshes: {}", spent.len());
    let hits: u64 = members.iter().map(|m| m.stats().store_hits).sum();
    assert!(
        hits >= spent.len() as u64,
        "the others took each new token: {hits}"
    );
}

#[tokio::test(start_paused = true)]
async fn refreshing_from_the_stored_token_logs_no_token() {
    let (captured, _guard) = en_auth_testkit::capture_traces();
    let (provider, _store, members) = fleet(2);
    for member in &members {
        token(member).await;
    }
    tokio::time::sleep(Duration::from_secs(40)).await;
    token(&members[0]).await;
    tokio::time::sleep(Duration::from_secs(40)).await;
    token(&members[1]).await;
    assert_eq!(members[1].stats().refreshes_from_store, 1);
    let text = captured.text();
    assert!(
        text.contains("refreshing from the token another process stored"),
        "{text}"
    );
    assert!(text.contains("cold_start=false"), "{text}");
    let issued = provider.state.lock().next;
    for n in 1..=issued {
        for secret in [format!("access-{n}"), format!("refresh-{n}")] {
            assert!(!text.contains(&secret), "the log holds {secret}: {text}");
        }
    }
}

fn client_credentials(
    provider: &Arc<Provider>,
    store: &Arc<Store>,
) -> TokenCache<ClientCredentials> {
    TokenCache::builder(ClientCredentials {
        info: ClientInfo::new("client", "secret"),
        provider: Arc::clone(provider),
    })
    .policy(policy())
    .store(Arc::clone(store) as Arc<dyn TokenStore>)
    .build()
}

#[tokio::test(start_paused = true)]
async fn a_cold_cache_whose_refresh_spends_no_token_authorizes() {
    sim_ms();
    let provider = Arc::new(Provider::default());
    let store = Arc::new(Store::default());
    let first = client_credentials(&provider, &store);
    first.get().await.unwrap();
    // The stored token is stale: a new process does not take it, and (its authorizer's
    // refresh spending nothing) does not refresh it either: it authorizes, as without the
    // rule for refresh tokens.
    tokio::time::sleep(Duration::from_secs(40)).await;
    let cold = client_credentials(&provider, &store);
    let obtained = cold.get().await.unwrap().token().access.clone();
    assert!(provider.accepts(&obtained));
    let stats = cold.stats();
    assert_eq!(
        (
            stats.authorizations,
            stats.refreshes,
            stats.refreshes_from_store
        ),
        (1, 0, 0),
        "{stats:?}"
    );
    assert_eq!((provider.logins(), provider.refreshes()), (2, 0));
    assert_eq!(stored(&store).await.unwrap().access, obtained);
    // A warm cache refreshes its own token (the default refresh: an authorization).
    tokio::time::sleep(Duration::from_secs(40)).await;
    first.get().await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let stats = first.stats();
    assert_eq!((stats.refreshes, stats.refreshes_from_store), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_rotated_refresh_token_behind_an_unchanged_access_token_is_refreshed_from() {
    let (provider, store, members) = fleet(2);
    // A provider that keeps the access token and rotates only the refresh token.
    provider.keep_access.store(true, Ordering::SeqCst);
    for member in &members {
        token(member).await;
    }
    tokio::time::sleep(Duration::from_secs(40)).await;
    token(&members[0]).await;
    let rotated = stored(&store).await.unwrap();
    assert_eq!(
        (rotated.access.as_str(), rotated.refresh.as_str()),
        ("access-2", "refresh-3")
    );
    // Member 1 holds the same access token with the spent refresh token: the stored record
    // is not "the token being replaced".
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert!(provider.accepts(&token(&members[1]).await));
    assert_eq!(provider.spent.lock().as_slice(), ["refresh-2", "refresh-3"]);
    assert_eq!((provider.reuses(), provider.logins()), (0, 1));
    assert_eq!(members[1].stats().refreshes_from_store, 1);
}

#[tokio::test(start_paused = true)]
async fn a_stored_token_written_by_a_host_whose_clock_is_behind_is_refreshed_from() {
    let (provider, _store, members) = fleet(2);
    for member in &members {
        token(member).await;
    }
    // Member 0's host runs 50 s behind: the token it stores says it was issued before the
    // login's token, yet it is the newer one (member 1's own token was saved).
    tokio::time::sleep(Duration::from_secs(40)).await;
    provider.issued_skew_ms.store(-50_000, Ordering::SeqCst);
    token(&members[0]).await;
    provider.issued_skew_ms.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert!(provider.accepts(&token(&members[1]).await));
    assert_eq!(provider.spent.lock().as_slice(), ["refresh-2", "refresh-3"]);
    assert_eq!((provider.reuses(), provider.logins()), (0, 1));
    assert_eq!(members[1].stats().refreshes_from_store, 1);
}

#[tokio::test(start_paused = true)]
async fn a_refused_stored_token_is_removed_and_the_own_token_refreshed() {
    sim_ms();
    let provider = Arc::new(Provider::default());
    let store = Arc::new(Store::default());
    // No login to fall back on: a refused refresh token is the end of the session.
    let member = TokenCache::builder(UserAuthorizer {
        no_login_fallback: true,
        ..authorizer(&provider)
    })
    .policy(policy())
    .store(Arc::clone(&store) as Arc<dyn TokenStore>)
    .build();
    let own = token(&member).await;
    // Another process (say, of an older release) stored a token the provider no longer
    // accepts the refresh token of.
    let dead = UserToken {
        access: "access-dead".into(),
        refresh: "refresh-dead".into(),
        issued_ms: sim_ms(),
        expires_ms: sim_ms() + 60_000,
    };
    store
        .memory
        .save(
            &key(),
            &SecretString::from(serde_json::to_string(&dead).unwrap()),
            LIFETIME,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(40)).await;
    token(&member).await;
    let current = member.get().await.unwrap().token().access.clone();
    assert_ne!(current, own, "the member refreshed");
    assert!(provider.accepts(&current));
    assert_eq!(
        provider.spent.lock().as_slice(),
        ["refresh-dead", "refresh-2"]
    );
    assert_eq!(stored(&store).await.unwrap().access, current);
    assert!(
        store.memory.load_failure(&key()).await.unwrap().is_none(),
        "no failure published"
    );
    assert_eq!(member.stats().failures, 0);
}

#[tokio::test(start_paused = true)]
async fn a_rejected_token_stays_stored_until_its_replacement_is_fetched_under_the_lock() {
    let (provider, store, members) = fleet(2);
    for member in &members {
        token(member).await;
    }
    tokio::time::sleep(Duration::from_secs(40)).await;
    token(&members[0]).await; // rotates: member 1's refresh token is spent
    tokio::time::sleep(Duration::from_secs(10)).await;
    // An API rejects member 0's token, the newest; member 0's fetch of its replacement is
    // slow to get an answer to its first lock attempt. Meanwhile member 1, whose own token
    // is stale, looks at the store.
    *store.lock_delay.lock() = Some(Duration::from_millis(100));
    let rejected = members[0].get().await.unwrap();
    assert!(members[0].invalidate(&rejected).await);
    token(&members[1]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Member 1 never found the store empty, so it never spent its own refresh token: it
    // took the stored token; member 0 removed it under the lock and refreshed it.
    assert_eq!(provider.reuses(), 0, "no refresh token was spent twice");
    assert_eq!(provider.logins(), 1);
    assert_eq!(provider.spent.lock().as_slice(), ["refresh-2", "refresh-3"]);
    let replacement = members[0].get().await.unwrap().token().access.clone();
    assert_ne!(replacement, rejected.token().access);
    assert!(provider.accepts(&replacement));
    assert_eq!(stored(&store).await.unwrap().access, replacement);
    assert!(provider.accepts(&token(&members[1]).await));
}

#[tokio::test(start_paused = true)]
async fn a_token_method_that_panics_while_the_refresh_base_is_chosen_keeps_the_own_token() {
    let (provider, store, members) = fleet(1);
    let member = &members[0];
    token(member).await;
    // The member's next token is not saved (the store is down): choosing the refresh base
    // then compares issue times.
    store.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(40)).await;
    token(member).await;
    store.down.store(false, Ordering::SeqCst);
    // Another process stored a token whose `issued_at` panics.
    let odd = UserToken {
        access: "access-panics".into(),
        refresh: "refresh-odd".into(),
        issued_ms: sim_ms(),
        expires_ms: sim_ms() + 60_000,
    };
    store
        .memory
        .save(
            &key(),
            &SecretString::from(serde_json::to_string(&odd).unwrap()),
            LIFETIME,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(40)).await;
    token(member).await; // stale: served while the refresh runs
    let obtained = member.get().await.expect("a token despite the panic");
    assert!(provider.accepts(&obtained.token().access));
    assert_eq!(provider.spent.lock().as_slice(), ["refresh-2", "refresh-3"]);
    let lock = store.memory.try_lock(&key(), Duration::from_secs(1)).await;
    assert!(lock.unwrap().is_some(), "the store's lock was released");
}
