//! [`LocalLimits`]: the [`LimitStore`] in this process's memory, the default.
//!
//! Bounded: each kind of record (counters, sets, deadlines, budgets) keeps at most
//! `max_keys` keys, and counters and sets do so per kind of key too (what a key has before
//! its first `:`), so that a flood of one kind (counts per source address, sets of made-up
//! client ids) never evicts another (quotas, lock-outs, accepted secrets). Past it, records
//! whose time is over are dropped first; when every record is still live, an eighth of them goes at once (the least used counters, the sets and
//! deadlines that end soonest), so a flood of new keys costs a bounded amount of work per
//! key. Every lock is a `parking_lot` mutex held for one map operation; nothing awaits under
//! it. Arithmetic saturates: no value from a caller makes it panic.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use en_auth_core::Error;
use parking_lot::Mutex;
use subtle::ConstantTimeEq;

use super::{Budget, LimitStore, Mac, Recall, UnixMillis};

/// Keys kept per kind of record by [`LocalLimits::default`].
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// Limits kept in this process's memory, the default [`LimitStore`].
///
/// Bounded: each kind of record (counters, sets, deadlines, budgets) keeps at most
/// `max_keys` keys, counters and sets per kind of key (the part before the first `:`; up to
/// 32 kinds, further ones share a space); past it, records whose time is over go first, then an eighth of the live
/// ones (the least used counters, the sets and deadlines that end soonest). Locks are held
/// for one map operation; arithmetic saturates.
pub struct LocalLimits {
    max_keys: usize,
    counters: Mutex<Spaces<Counter>>,
    sets: Mutex<Spaces<Set>>,
    deadlines: Mutex<HashMap<String, UnixMillis>>,
    budgets: Mutex<HashMap<String, (u64, UnixMillis)>>,
}

struct Counter {
    start: UnixMillis,
    end: UnixMillis,
    count: u64,
}

struct Set {
    members: VecDeque<Mac>,
    expires: UnixMillis,
}

impl Default for LocalLimits {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_KEYS)
    }
}

impl std::fmt::Debug for LocalLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLimits")
            .field("max_keys", &self.max_keys)
            .field("counters", &self.counters.lock().len())
            .field("sets", &self.sets.lock().len())
            .finish_non_exhaustive()
    }
}

impl LocalLimits {
    /// Limits that keep at most `max_keys` keys of each kind of record and, for counters and
    /// sets, of each kind of key (at least 8).
    pub fn new(max_keys: usize) -> Self {
        Self {
            max_keys: max_keys.max(8),
            counters: Mutex::default(),
            sets: Mutex::default(),
            deadlines: Mutex::default(),
            budgets: Mutex::default(),
        }
    }
}

/// Most kinds of keys with a space of their own; keys of further kinds share one.
const MAX_KINDS: usize = 32;

/// Records kept per kind of key, each kind bounded on its own: the kind is what a key has
/// before its first `:` (`quota`, `tried`, `accepted`, `unknown` for the per-source counts,
/// …; keys without one share a space). A flood of one kind (counts per source address,
/// sets of made-up client ids) can only evict records of that kind, never a client's quota,
/// lock-out or accepted secrets.
struct Spaces<V> {
    kinds: HashMap<String, HashMap<String, V>>,
}

impl<V> Default for Spaces<V> {
    fn default() -> Self {
        Self {
            kinds: HashMap::new(),
        }
    }
}

impl<V> Spaces<V> {
    fn kind(key: &str) -> &str {
        key.split_once(':').map_or("", |(kind, _)| kind)
    }

    /// The kind whose space holds `key`: its own, or the shared one when there was no room
    /// for another kind (kinds are never removed, so that does not change).
    fn resolve<'k>(&self, key: &'k str) -> &'k str {
        let kind = Self::kind(key);
        if self.kinds.contains_key(kind) || self.kinds.len() < MAX_KINDS {
            kind
        } else {
            ""
        }
    }

    fn get(&self, key: &str) -> Option<&V> {
        self.kinds.get(self.resolve(key))?.get(key)
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        let kind = self.resolve(key);
        self.kinds.get_mut(kind)?.get_mut(key)
    }

    /// The space of `key`'s kind, created when there is room for another kind.
    fn space(&mut self, key: &str) -> &mut HashMap<String, V> {
        let kind = self.resolve(key).to_owned();
        self.kinds.entry(kind).or_default()
    }

    /// Keys held, all kinds together.
    fn len(&self) -> usize {
        self.kinds.values().map(HashMap::len).sum()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Makes room for one more key in `map`: drops the records for which `over` holds, then, if
/// still full, the eighth of the records that `rank` puts first.
fn make_room<V, R: Ord + Copy>(
    map: &mut HashMap<String, V>,
    max: usize,
    over: impl Fn(&V) -> bool,
    rank: impl Fn(&V) -> R,
) {
    if map.len() < max {
        return;
    }
    map.retain(|_, v| !over(v));
    if map.len() < max {
        return;
    }
    let n = (max / 8).max(1).min(map.len());
    let mut ranks: Vec<R> = map.values().map(&rank).collect();
    ranks.select_nth_unstable(n - 1);
    let cut = ranks[n - 1];
    let mut left = n;
    map.retain(|_, v| {
        if left > 0 && rank(v) <= cut {
            left -= 1;
            false
        } else {
            true
        }
    });
}

#[async_trait]
impl LimitStore for LocalLimits {
    async fn add(
        &self,
        key: &str,
        window: Duration,
        now: UnixMillis,
        add: u64,
    ) -> Result<u64, Error> {
        let window = millis(window).max(1);
        let start = now - now % window;
        let mut counters = self.counters.lock();
        if let Some(counter) = counters.get_mut(key) {
            if counter.start != start {
                *counter = Counter {
                    start,
                    end: start.saturating_add(window),
                    count: 0,
                };
            }
            counter.count = counter.count.saturating_add(add);
            return Ok(counter.count);
        }
        if add == 0 {
            return Ok(0);
        }
        let space = counters.space(key);
        make_room(
            space,
            self.max_keys,
            |c| c.end <= now,
            // The least counted go first: a budget shared by many (a global one) outlives
            // one-off keys of its kind.
            |c| c.count,
        );
        space.insert(
            key.to_owned(),
            Counter {
                start,
                end: start.saturating_add(window),
                count: add,
            },
        );
        Ok(add)
    }

    async fn remember(
        &self,
        key: &str,
        member: Mac,
        cap: usize,
        ttl: Duration,
        now: UnixMillis,
    ) -> Result<u64, Error> {
        if cap == 0 {
            return Ok(0);
        }
        let expires = now.saturating_add(millis(ttl));
        let mut sets = self.sets.lock();
        let sets = sets.space(key);
        if !sets.contains_key(key) {
            make_room(sets, self.max_keys, |s| s.expires <= now, |s| s.expires);
        }
        let set = sets.entry(key.to_owned()).or_insert_with(|| Set {
            members: VecDeque::new(),
            expires,
        });
        if set.expires <= now {
            set.members.clear();
        }
        set.expires = expires;
        // Added again: it becomes the newest.
        set.members.retain(|m| !bool::from(m.ct_eq(&member)));
        set.members.push_back(member);
        while set.members.len() > cap {
            set.members.pop_front();
        }
        Ok(set.members.len() as u64)
    }

    async fn forget(&self, key: &str, member: &Mac) -> Result<(), Error> {
        if let Some(set) = self.sets.lock().get_mut(key) {
            set.members.retain(|m| !bool::from(m.ct_eq(member)));
        }
        Ok(())
    }

    async fn recall(&self, key: &str, member: &Mac, now: UnixMillis) -> Result<Recall, Error> {
        let sets = self.sets.lock();
        let Some(set) = sets.get(key).filter(|s| s.expires > now) else {
            return Ok(Recall::default());
        };
        // Every member is compared, in constant time each.
        let found = set
            .members
            .iter()
            .fold(subtle::Choice::from(0), |found, m| found | m.ct_eq(member));
        Ok(Recall {
            member: bool::from(found),
            any: !set.members.is_empty(),
        })
    }

    async fn hold_until(&self, key: &str, until: UnixMillis) -> Result<(), Error> {
        let mut deadlines = self.deadlines.lock();
        if let Some(held) = deadlines.get_mut(key) {
            *held = (*held).max(until);
            return Ok(());
        }
        // Without a clock of its own, the store drops the deadlines that end first.
        make_room(&mut deadlines, self.max_keys, |_| false, |until| *until);
        deadlines.insert(key.to_owned(), until);
        Ok(())
    }

    async fn held_until(
        &self,
        key: &str,
        now: UnixMillis,
        max: Duration,
    ) -> Result<Option<UnixMillis>, Error> {
        let mut deadlines = self.deadlines.lock();
        let until = deadlines.get(key).copied();
        if until.is_some_and(|until| until > now.saturating_add(millis(max))) {
            deadlines.remove(key);
            return Ok(None);
        }
        Ok(until.filter(|until| *until > now))
    }

    async fn set_budget(&self, key: &str, remaining: u64, reset: UnixMillis) -> Result<(), Error> {
        let mut budgets = self.budgets.lock();
        if !budgets.contains_key(key) {
            make_room(&mut budgets, self.max_keys, |_| false, |(_, reset)| *reset);
        }
        budgets.insert(key.to_owned(), (remaining, reset));
        Ok(())
    }

    async fn take_budget(
        &self,
        key: &str,
        keep: u64,
        now: UnixMillis,
        max: Duration,
    ) -> Result<Budget, Error> {
        let mut budgets = self.budgets.lock();
        let Some((remaining, reset)) = budgets.get_mut(key) else {
            return Ok(Budget::Unknown);
        };
        if *reset <= now || *reset > now.saturating_add(millis(max)) {
            budgets.remove(key);
            return Ok(Budget::Unknown);
        }
        if *remaining <= keep {
            return Ok(Budget::Spent { reset: *reset });
        }
        *remaining -= 1;
        Ok(Budget::Taken {
            remaining: *remaining,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn mac(n: u8) -> Mac {
        [n; 32]
    }

    #[tokio::test]
    async fn counters_count_per_aligned_window() {
        let l = LocalLimits::default();
        let t = 120_000; // the start of a minute
        assert_eq!(l.add("a", MIN, t, 0).await.unwrap(), 0);
        assert_eq!(l.add("a", MIN, t, 1).await.unwrap(), 1);
        assert_eq!(l.add("a", MIN, t + 59_999, 2).await.unwrap(), 3);
        assert_eq!(l.add("a", MIN, t + 59_999, 0).await.unwrap(), 3);
        assert_eq!(l.add("b", MIN, t, 1).await.unwrap(), 1);
        // The next minute starts from zero.
        assert_eq!(l.add("a", MIN, t + 60_000, 0).await.unwrap(), 0);
        assert_eq!(l.add("a", MIN, t + 60_000, 1).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn huge_values_saturate_instead_of_panicking() {
        let l = LocalLimits::default();
        let far = u64::MAX - 1;
        assert_eq!(
            l.add("a", Duration::MAX, far, u64::MAX).await.unwrap(),
            u64::MAX
        );
        assert_eq!(
            l.add("a", Duration::MAX, far, u64::MAX).await.unwrap(),
            u64::MAX
        );
        assert_eq!(l.add("z", Duration::ZERO, far, 1).await.unwrap(), 1);
        l.remember("s", mac(1), usize::MAX, Duration::MAX, far)
            .await
            .unwrap();
        assert!(l.recall("s", &mac(1), far).await.unwrap().member);
        l.hold_until("h", u64::MAX).await.unwrap();
        assert_eq!(
            l.held_until("h", far, Duration::MAX).await.unwrap(),
            Some(u64::MAX)
        );
        l.set_budget("b", u64::MAX, u64::MAX).await.unwrap();
        assert_eq!(
            l.take_budget("b", u64::MAX - 5, far, Duration::MAX)
                .await
                .unwrap(),
            Budget::Taken {
                remaining: u64::MAX - 1
            }
        );
    }

    #[tokio::test]
    async fn sets_keep_the_newest_members_up_to_the_cap_until_their_ttl() {
        let l = LocalLimits::default();
        let ttl = Duration::from_secs(10);
        assert_eq!(l.recall("s", &mac(1), 0).await.unwrap(), Recall::default());
        for n in 1..=4 {
            let members = l.remember("s", mac(n), 3, ttl, 0).await.unwrap();
            assert_eq!(members, u64::from(n.min(3)));
        }
        // A member added again counts once.
        assert_eq!(l.remember("t", mac(1), 3, ttl, 0).await.unwrap(), 1);
        assert_eq!(l.remember("t", mac(1), 3, ttl, 0).await.unwrap(), 1);
        let r = l.recall("s", &mac(1), 0).await.unwrap();
        assert_eq!((r.member, r.any), (false, true), "the oldest went first");
        for n in 2..=4 {
            assert!(l.recall("s", &mac(n), 0).await.unwrap().member);
        }
        // Adding a member again makes it the newest: 3 goes next, not 2.
        l.remember("s", mac(2), 3, ttl, 1_000).await.unwrap();
        l.remember("s", mac(5), 3, ttl, 1_000).await.unwrap();
        assert!(!l.recall("s", &mac(3), 1_000).await.unwrap().member);
        assert!(l.recall("s", &mac(2), 1_000).await.unwrap().member);
        // The TTL runs from the last addition.
        assert!(l.recall("s", &mac(2), 10_999).await.unwrap().member);
        assert_eq!(
            l.recall("s", &mac(2), 11_000).await.unwrap(),
            Recall::default()
        );
        // An expired set starts empty.
        l.remember("s", mac(7), 3, ttl, 20_000).await.unwrap();
        assert!(!l.recall("s", &mac(5), 20_000).await.unwrap().member);
    }

    #[tokio::test]
    async fn deadlines_only_move_later() {
        let l = LocalLimits::default();
        assert_eq!(l.held_until("h", 0, Duration::MAX).await.unwrap(), None);
        l.hold_until("h", 5_000).await.unwrap();
        l.hold_until("h", 3_000).await.unwrap();
        assert_eq!(
            l.held_until("h", 4_000, Duration::MAX).await.unwrap(),
            Some(5_000)
        );
        assert_eq!(l.held_until("h", 5_000, Duration::MAX).await.unwrap(), None);
    }

    #[tokio::test]
    async fn deadlines_and_resets_further_ahead_than_the_cap_are_forgotten() {
        let l = LocalLimits::default();
        let cap = Duration::from_secs(10);
        l.hold_until("h", 20_000).await.unwrap();
        assert_eq!(l.held_until("h", 15_000, cap).await.unwrap(), Some(20_000));
        assert_eq!(l.held_until("h", 5_000, cap).await.unwrap(), None);
        assert_eq!(l.held_until("h", 15_000, cap).await.unwrap(), None, "gone");
        l.set_budget("u", 0, 20_000).await.unwrap();
        assert_eq!(
            l.take_budget("u", 0, 5_000, cap).await.unwrap(),
            Budget::Unknown
        );
        assert_eq!(
            l.take_budget("u", 0, 15_000, cap).await.unwrap(),
            Budget::Unknown
        );
    }

    #[tokio::test]
    async fn budgets_keep_a_reserve_and_forget_after_the_reset() {
        let l = LocalLimits::default();
        assert_eq!(
            l.take_budget("u", 0, 0, Duration::MAX).await.unwrap(),
            Budget::Unknown
        );
        l.set_budget("u", 3, 10_000).await.unwrap();
        assert_eq!(
            l.take_budget("u", 1, 0, Duration::MAX).await.unwrap(),
            Budget::Taken { remaining: 2 }
        );
        assert_eq!(
            l.take_budget("u", 1, 0, Duration::MAX).await.unwrap(),
            Budget::Taken { remaining: 1 }
        );
        assert_eq!(
            l.take_budget("u", 1, 0, Duration::MAX).await.unwrap(),
            Budget::Spent { reset: 10_000 }
        );
        assert_eq!(
            l.take_budget("u", 0, 0, Duration::MAX).await.unwrap(),
            Budget::Taken { remaining: 0 }
        );
        assert_eq!(
            l.take_budget("u", 0, 0, Duration::MAX).await.unwrap(),
            Budget::Spent { reset: 10_000 }
        );
        assert_eq!(
            l.take_budget("u", 0, 10_000, Duration::MAX).await.unwrap(),
            Budget::Unknown
        );
    }

    /// Rotating source addresses (each counted past a client's quota) and sets of another
    /// kind: neither evicts a client's quota, its secrets tried or its accepted secrets.
    #[tokio::test]
    async fn a_flood_of_one_kind_of_key_never_evicts_another() {
        let l = LocalLimits::new(64);
        let hour = Duration::from_secs(3600);
        l.add("quota:acme", MIN, 0, 3).await.unwrap();
        l.remember("tried:acme", mac(1), 16, MIN, 0).await.unwrap();
        l.remember("tried:acme", mac(2), 16, MIN, 0).await.unwrap();
        l.remember("accepted:acme", mac(9), 4, hour, 0)
            .await
            .unwrap();
        for n in 0..10_000u64 {
            let source = format!("unknown:2001:db8:{n:x}::/64");
            l.add(&source, MIN, 0, 11).await.unwrap();
            l.remember(&format!("other:{n}"), mac(1), 4, hour, n)
                .await
                .unwrap();
        }
        assert!(l.counters.lock().len() <= 2 * 64);
        assert!(l.sets.lock().len() <= 3 * 64);
        assert_eq!(l.add("quota:acme", MIN, 0, 0).await.unwrap(), 3);
        assert_eq!(
            l.remember("tried:acme", mac(2), 16, MIN, 0).await.unwrap(),
            2
        );
        assert!(l.recall("accepted:acme", &mac(9), 0).await.unwrap().member);
    }

    #[tokio::test]
    async fn bounded_in_keys_and_busy_counters_survive_a_flood() {
        let l = LocalLimits::new(64);
        for _ in 0..50 {
            l.add("global", MIN, 0, 1).await.unwrap();
        }
        for n in 0..10_000 {
            l.add(&format!("flood-{n}"), MIN, 0, 1).await.unwrap();
            l.remember(&format!("set-{n}"), mac(1), 4, MIN, n)
                .await
                .unwrap();
            l.hold_until(&format!("held-{n}"), n).await.unwrap();
            l.set_budget(&format!("budget-{n}"), 1, n).await.unwrap();
        }
        assert!(l.counters.lock().len() <= 64);
        assert!(l.sets.lock().len() <= 64);
        assert!(l.deadlines.lock().len() <= 64);
        assert!(l.budgets.lock().len() <= 64);
        assert_eq!(l.add("global", MIN, 0, 0).await.unwrap(), 50);
        // The latest set is there; expired windows make room before live ones.
        assert!(l.recall("set-9999", &mac(1), 9_999).await.unwrap().member);
        l.add("later", MIN, 60_000, 1).await.unwrap();
        assert_eq!(l.add("global", MIN, 60_000, 0).await.unwrap(), 0);
    }
}
