//! Counters for `GET /metrics`, in the Prometheus text format.
//!
//! Labels carry client ids only, never a secret or a token. Client ids come from callers, so
//! the number of distinct `client_id` labels is bounded ([`MAX_CLIENT_LABELS`]); further ids
//! are counted under `client_id="_other"`.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use parking_lot::RwLock;

/// Most distinct `client_id` label values per metric.
pub const MAX_CLIENT_LABELS: usize = 10_000;

/// Upper bounds of the upstream latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// A counter per client id, bounded in cardinality.
#[derive(Default)]
struct PerClient {
    counts: RwLock<HashMap<String, AtomicU64>>,
    other: AtomicU64,
}

impl PerClient {
    fn bump(&self, client_id: &str) {
        self.bump_labelled(client_id, true);
    }

    /// Counts one for `client_id`; a label not yet shown is added only when `may_add` (and
    /// while fewer than [`MAX_CLIENT_LABELS`] exist), else the count goes to `_other`.
    fn bump_labelled(&self, client_id: &str, may_add: bool) {
        if let Some(counter) = self.counts.read().get(client_id) {
            counter.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if !may_add {
            self.other.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut counts = self.counts.write();
        if let Some(counter) = counts.get(client_id) {
            counter.fetch_add(1, Ordering::Relaxed);
        } else if counts.len() < MAX_CLIENT_LABELS {
            counts.insert(client_id.to_owned(), AtomicU64::new(1));
        } else {
            self.other.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn get(&self, client_id: &str) -> u64 {
        self.counts
            .read()
            .get(client_id)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        let counts = self.counts.read();
        let mut ids: Vec<&String> = counts.keys().collect();
        ids.sort();
        for id in ids {
            let value = counts[id].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{client_id=\"{}\"}} {value}", escape(id));
        }
        let other = self.other.load(Ordering::Relaxed);
        if other > 0 {
            let _ = writeln!(out, "{name}{{client_id=\"_other\"}} {other}");
        }
    }
}

/// Escapes a label value (backslash, double quote, line feed).
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Everything the proxy counts.
#[derive(Default)]
pub struct Metrics {
    token_requests: PerClient,
    quota_exceeded: PerClient,
    quota_rejections: PerClient,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    upstream_requests: AtomicU64,
    upstream_answers: RwLock<HashMap<&'static str, AtomicU64>>,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
    /// `X-RateLimit-Remaining` last seen, -1 when unknown.
    upstream_remaining: AtomicI64,
    throttled: AtomicU64,
    refused_locally: AtomicU64,
    evictions: AtomicU64,
    cached_keys: AtomicI64,
}

/// A snapshot of the main counters, for tests and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Token requests received (both endpoints), all clients.
    pub token_requests: u64,
    /// Requests answered from a cached token without waiting on the upstream.
    pub cache_hits: u64,
    /// Requests that had to wait for a token (from upstream or a shared store).
    pub cache_misses: u64,
    /// Token requests sent upstream.
    pub upstream_requests: u64,
    /// Requests answered 429 because the upstream budget was spent (upstream not called).
    pub throttled: u64,
    /// Requests over their client's quota (monitor and enforce modes).
    pub quota_exceeded: u64,
    /// Requests refused because of the client's quota (enforce mode).
    pub quota_rejections: u64,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let metrics = Self::default();
        metrics.upstream_remaining.store(-1, Ordering::Relaxed);
        metrics
    }

    /// Counts a token request of `client_id`. Only a client id that authenticated (now, or
    /// earlier) gets a label of its own: made-up client ids cannot use up the labels.
    pub(crate) fn token_request(&self, client_id: &str, authenticated: bool) {
        self.token_requests.bump_labelled(client_id, authenticated);
    }

    pub(crate) fn cache_hit(&self) {
        self.cache_hits.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn cache_miss(&self) {
        self.cache_misses.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn upstream_request(&self) {
        self.upstream_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn upstream_answer(&self, class: &'static str, seconds: f64) {
        if let Some(c) = self.upstream_answers.read().get(class) {
            c.fetch_add(1, Ordering::Relaxed);
        } else {
            self.upstream_answers
                .write()
                .entry(class)
                .or_default()
                .fetch_add(1, Ordering::Relaxed);
        }
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.latency_buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    pub(crate) fn set_upstream_remaining(&self, remaining: Option<u64>) {
        let value = remaining.map_or(-1, |r| i64::try_from(r).unwrap_or(i64::MAX));
        self.upstream_remaining.store(value, Ordering::Relaxed);
    }

    pub(crate) fn throttled(&self) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refused_locally(&self) {
        self.refused_locally.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn quota_exceeded(&self, client_id: &str, enforced: bool) {
        self.quota_exceeded.bump(client_id);
        if enforced {
            self.quota_rejections.bump(client_id);
        }
    }

    pub(crate) fn evicted(&self, n: usize) {
        self.evictions.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn set_cached_keys(&self, n: usize) {
        self.cached_keys
            .store(i64::try_from(n).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// Token requests counted for `client_id`.
    pub fn token_requests_of(&self, client_id: &str) -> u64 {
        self.token_requests.get(client_id)
    }

    /// The main counters now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let sum = |p: &PerClient| {
            p.counts
                .read()
                .values()
                .map(|c| c.load(Ordering::Relaxed))
                .sum::<u64>()
                + p.other.load(Ordering::Relaxed)
        };
        MetricsSnapshot {
            token_requests: sum(&self.token_requests),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            cache_misses: self.cache_misses.load(Ordering::Relaxed),
            upstream_requests: self.upstream_requests.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            quota_exceeded: sum(&self.quota_exceeded),
            quota_rejections: sum(&self.quota_rejections),
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.token_requests.render(
            &mut out,
            "en_auth_proxy_token_requests_total",
            "Token requests received, per client.",
        );
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        counter(
            "en_auth_proxy_cache_hits_total",
            "Token requests answered from a cached token.",
            load(&self.cache_hits),
        );
        counter(
            "en_auth_proxy_cache_misses_total",
            "Token requests that waited for a token.",
            load(&self.cache_misses),
        );
        counter(
            "en_auth_proxy_upstream_requests_total",
            "Token requests sent to the upstream identity provider.",
            load(&self.upstream_requests),
        );
        counter(
            "en_auth_proxy_throttled_total",
            "Token requests answered 429 because the upstream rate limit was spent.",
            load(&self.throttled),
        );
        counter(
            "en_auth_proxy_refused_locally_total",
            "Token requests refused with an error the upstream gave moments ago.",
            load(&self.refused_locally),
        );
        counter(
            "en_auth_proxy_evictions_total",
            "Cached keys dropped to stay within max_keys.",
            load(&self.evictions),
        );
        let _ = writeln!(
            out,
            "# HELP en_auth_proxy_upstream_responses_total Upstream answers by status class.\n\
             # TYPE en_auth_proxy_upstream_responses_total counter"
        );
        {
            let answers = self.upstream_answers.read();
            let mut classes: Vec<_> = answers.keys().copied().collect();
            classes.sort_unstable();
            for class in classes {
                let _ = writeln!(
                    out,
                    "en_auth_proxy_upstream_responses_total{{status=\"{class}\"}} {}",
                    load(&answers[class])
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP en_auth_proxy_upstream_duration_seconds Upstream token request latency.\n\
             # TYPE en_auth_proxy_upstream_duration_seconds histogram"
        );
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.latency_buckets) {
            let _ = writeln!(
                out,
                "en_auth_proxy_upstream_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                load(bucket)
            );
        }
        let count = load(&self.latency_count);
        let _ = writeln!(
            out,
            "en_auth_proxy_upstream_duration_seconds_bucket{{le=\"+Inf\"}} {count}\n\
             en_auth_proxy_upstream_duration_seconds_sum {}\n\
             en_auth_proxy_upstream_duration_seconds_count {count}",
            load(&self.latency_sum_micros) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "# HELP en_auth_proxy_upstream_ratelimit_remaining X-RateLimit-Remaining last seen (-1: unknown).\n\
             # TYPE en_auth_proxy_upstream_ratelimit_remaining gauge\n\
             en_auth_proxy_upstream_ratelimit_remaining {}",
            self.upstream_remaining.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP en_auth_proxy_cached_keys Cached (client, audience, scopes) keys.\n\
             # TYPE en_auth_proxy_cached_keys gauge\n\
             en_auth_proxy_cached_keys {}",
            self.cached_keys.load(Ordering::Relaxed)
        );
        self.quota_exceeded.render(
            &mut out,
            "en_auth_proxy_quota_exceeded_total",
            "Token requests over the client's quota (enforce and monitor modes).",
        );
        self.quota_rejections.render(
            &mut out,
            "en_auth_proxy_quota_rejections_total",
            "Token requests refused with 429 for the client's quota (enforce mode).",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_labels_are_escaped_and_bounded() {
        let m = Metrics::new();
        m.token_request("a\"b\\c\nd", true);
        let text = m.render();
        assert!(
            text.contains(r#"en_auth_proxy_token_requests_total{client_id="a\"b\\c\nd"} 1"#),
            "{text}"
        );
        for i in 0..MAX_CLIENT_LABELS + 5 {
            m.token_request(&format!("c{i}"), true);
        }
        assert!(
            m.render()
                .contains("en_auth_proxy_token_requests_total{client_id=\"_other\"} 6")
        );
    }
}
