//! One process against a real `redis-server`: what is stored, what is not shared, what is a
//! miss, the hot path, and a Redis that is not there.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{FLEET_KEY, TestApi, dump};
use en_auth_core::{AuthMiddleware, ClientInfo, TokenCache};
use en_auth_oauth2::ServiceAccountAuthorizer;
use en_auth_redis::{EncryptionKeys, RedisTokenStore};
use en_auth_testkit::{IdpConfig, LocalIdp, RedisServer};
use sha2::{Digest, Sha256};

const SECRET: &str = "a-client-secret-nobody-may-see";

/// A store with generous timeouts: on a loaded 2-core CI machine a Redis command can take
/// longer than the 200 ms default, and one slow command would trip the circuit breaker and
/// turn a sharing test into a fallback test. (The fallback has its own tests.)
fn store_builder(url: String) -> en_auth_redis::RedisTokenStoreBuilder {
    RedisTokenStore::builder(url)
        .fleet_key(FLEET_KEY)
        .command_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(5))
}

async fn idp() -> LocalIdp {
    LocalIdp::start(IdpConfig {
        client_secret: SECRET.into(),
        lifetime: Some(Duration::from_secs(600)),
        ..IdpConfig::default()
    })
    .await
    .unwrap()
}

fn authorizer(idp: &LocalIdp) -> ServiceAccountAuthorizer {
    ServiceAccountAuthorizer::new(ClientInfo::new(idp.client_id(), SECRET), idp.token_url())
}

fn cache(
    authorizer: ServiceAccountAuthorizer,
    store: &RedisTokenStore,
) -> TokenCache<ServiceAccountAuthorizer> {
    TokenCache::builder(authorizer)
        .store(Arc::new(store.clone()))
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hot_path_sends_no_redis_command() {
    let redis = RedisServer::start();
    let idp = idp().await;
    let api = TestApi::start().await;
    let store = store_builder(redis.url()).connect().await.unwrap();
    let auth = AuthMiddleware::from_cache(cache(authorizer(&idp), &store));
    auth.cache().warm_up().await.unwrap();
    let before = store.stats().commands;
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(auth.clone())
        .build();
    for _ in 0..500 {
        assert!(
            client
                .get(api.url())
                .send()
                .await
                .unwrap()
                .status()
                .is_success()
        );
    }
    let per_request = store.stats().commands - before;
    eprintln!("HOT PATH: {per_request} Redis commands for 500 API requests with a cached token");
    assert_eq!(per_request, 0);
    assert_eq!(idp.token_requests(), 1);
    let key = en_auth_core::Authorizer::cache_key(auth.cache().authorizer());
    assert_eq!(store.fleet_fetches(&key).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_values_hold_no_plaintext_secret_and_encrypted_values_no_token() {
    let redis = RedisServer::start();
    let idp = idp().await;
    let plain = store_builder(redis.url())
        .prefix("plain")
        .connect()
        .await
        .unwrap();
    let token = cache(authorizer(&idp), &plain)
        .access_token()
        .await
        .unwrap();
    let encrypted = store_builder(redis.url())
        .prefix("sealed")
        .encryption(EncryptionKeys::new("k1", &[9u8; 32]).unwrap())
        .connect()
        .await
        .unwrap();
    let sealed_token = cache(authorizer(&idp), &encrypted)
        .access_token()
        .await
        .unwrap();
    assert_ne!(token, sealed_token, "different prefixes do not share");
    let everything = dump(&redis);
    assert!(everything.contains("plain:v1:tok:oauth2:"), "{everything}");
    assert!(everything.contains("sealed:v1:tok:oauth2:"), "{everything}");
    let secret_sha256: String = Sha256::digest(SECRET.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!everything.contains(SECRET));
    assert!(!everything.contains(&secret_sha256));
    assert!(
        everything.contains(&token),
        "the plain store keeps the token readable"
    );
    assert!(
        !everything.contains(&sealed_token),
        "the encrypted store keeps no plaintext token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_values_are_misses_and_get_overwritten() {
    let redis = RedisServer::start();
    let idp = idp().await;
    let store = store_builder(redis.url()).connect().await.unwrap();
    let key = store.token_key(&en_auth_core::Authorizer::cache_key(&authorizer(&idp)));
    // A record valid in every way but its schema version, then garbage: both misses.
    let first = cache(authorizer(&idp), &store)
        .access_token()
        .await
        .unwrap();
    assert_eq!(idp.token_requests(), 1);
    let raw = redis.command(&["GET", &key]).unwrap();
    let record = raw.split("\r\n").nth(1).expect("a bulk string reply");
    assert!(
        record.contains(r#""v":1"#) && record.contains(&first),
        "{record}"
    );
    let other_version = record.replace(r#""v":1"#, r#""v":2"#);
    for (n, value) in [other_version.as_str(), "\u{1}not json"]
        .into_iter()
        .enumerate()
    {
        redis.command(&["SET", &key, value, "PX", "60000"]).unwrap();
        let token = cache(authorizer(&idp), &store)
            .access_token()
            .await
            .unwrap();
        assert_ne!(token, first, "the other version's token was not used");
        assert_eq!(idp.token_requests(), n as u64 + 2);
        let stored = redis.command(&["GET", &key]).unwrap();
        assert!(stored.contains(r#""v":1"#), "overwritten: {stored}");
    }
    // Written under a key id this process does not know: a miss, then overwritten.
    let old = store_builder(redis.url())
        .prefix("rotating")
        .encryption(EncryptionKeys::new("old", &[1u8; 32]).unwrap())
        .connect()
        .await
        .unwrap();
    cache(authorizer(&idp), &old).access_token().await.unwrap();
    let new = store_builder(redis.url())
        .prefix("rotating")
        .encryption(EncryptionKeys::new("new", &[2u8; 32]).unwrap())
        .connect()
        .await
        .unwrap();
    let before = idp.token_requests();
    cache(authorizer(&idp), &new).access_token().await.unwrap();
    assert_eq!(idp.token_requests(), before + 1, "unknown key id is a miss");
    assert!(new.stats().unreadable_values >= 1);
    // With the old key kept for rotation, the new writer's value is read by both.
    let both = store_builder(redis.url())
        .prefix("rotating")
        .encryption(
            EncryptionKeys::new("newer", &[3u8; 32])
                .unwrap()
                .with_old_key("new", &[2u8; 32])
                .unwrap(),
        )
        .connect()
        .await
        .unwrap();
    cache(authorizer(&idp), &both).access_token().await.unwrap();
    assert_eq!(
        idp.token_requests(),
        before + 1,
        "rotation keeps reading old values"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_scopes_audiences_secrets_and_urls_never_share() {
    let redis = RedisServer::start();
    let (one, two) = tokio::join!(idp(), idp());
    let store = store_builder(redis.url()).connect().await.unwrap();
    let base = || authorizer(&one);
    let mut seen = std::collections::HashSet::new();
    seen.insert(cache(base(), &store).access_token().await.unwrap());
    assert_eq!(one.token_requests(), 1);
    // Same inputs in another cache: shared.
    assert!(!seen.insert(cache(base(), &store).access_token().await.unwrap()));
    assert_eq!(one.token_requests(), 1);
    let variants = [
        base().with_scopes(["read"]),
        base().with_scopes(["write"]),
        base().with_audience("https://a.example.com"),
        base().with_audience("https://b.example.com"),
    ];
    for (n, variant) in variants.into_iter().enumerate() {
        assert!(seen.insert(cache(variant, &store).access_token().await.unwrap()));
        assert_eq!(one.token_requests(), n as u64 + 2);
    }
    // Another token URL (same credentials).
    let other_url =
        ServiceAccountAuthorizer::new(ClientInfo::new(one.client_id(), SECRET), two.token_url());
    assert!(seen.insert(cache(other_url, &store).access_token().await.unwrap()));
    assert_eq!(two.token_requests(), 1);
    // Another secret: not served the stored token, so the provider refuses it.
    let wrong = ServiceAccountAuthorizer::new(
        ClientInfo::new(one.client_id(), "another-secret"),
        one.token_url(),
    );
    assert!(cache(wrong, &store).access_token().await.is_err());
    assert_eq!(one.token_requests(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_at_start_up_does_not_fail_requests() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let idp = idp().await;
    let api = TestApi::start().await;
    let store = RedisTokenStore::builder(format!("redis://127.0.0.1:{port}"))
        .fleet_key(FLEET_KEY)
        .connect()
        .await
        .expect("connect succeeds degraded");
    assert!(!store.is_available());
    let auth = AuthMiddleware::from_cache(cache(authorizer(&idp), &store));
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(auth.clone())
        .build();
    for _ in 0..20 {
        assert!(
            client
                .get(api.url())
                .send()
                .await
                .unwrap()
                .status()
                .is_success()
        );
    }
    assert_eq!(
        idp.token_requests(),
        1,
        "in-process single flight still holds"
    );
    let stats = auth.stats();
    assert!(stats.store_errors >= 1, "{stats:?}");
    let redis_stats = store.stats();
    assert!(redis_stats.breaker_trips >= 1, "{redis_stats:?}");
    assert!(
        redis_stats.short_circuited >= 1,
        "later calls fail fast without touching Redis: {redis_stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_shares_tokens_and_an_untrusted_certificate_falls_back() {
    let redis = RedisServer::start_tls();
    assert!(redis.url().starts_with("rediss://"));
    let idp = idp().await;
    // Generous timeouts: a TLS handshake in a debug build (post-quantum key exchange when the
    // workspace build enables it) on a loaded machine can take longer than the 200 ms default.
    let trusted = store_builder(redis.url())
        .tls_root_certificate(redis.ca_certificate().unwrap())
        .command_timeout(Duration::from_secs(3))
        .connect()
        .await
        .unwrap();
    assert!(trusted.is_available(), "{:?}", trusted.stats());
    let first = cache(authorizer(&idp), &trusted)
        .access_token()
        .await
        .unwrap();
    let second = cache(authorizer(&idp), &trusted)
        .access_token()
        .await
        .unwrap();
    assert_eq!(first, second, "shared over TLS");
    assert_eq!(idp.token_requests(), 1);
    assert_eq!(trusted.stats().errors, 0);
    // The system roots do not know the test CA: the handshake fails, the store is degraded,
    // and tokens still come from the provider.
    let untrusted = store_builder(redis.url()).connect().await.unwrap();
    assert!(!untrusted.is_available());
    let other = cache(authorizer(&idp).with_scopes(["x"]), &untrusted);
    other.access_token().await.unwrap();
    assert!(other.stats().store_errors >= 1);
    assert_eq!(idp.token_requests(), 2);
}

/// A TCP relay to Redis whose existing connections can go silent (open, but nothing passes
/// either way: a vanished host or a partition, no FIN or RST), while new ones work.
struct SilencingRelay {
    port: u16,
    generation: Arc<std::sync::atomic::AtomicU64>,
    silenced_up_to: Arc<std::sync::atomic::AtomicU64>,
}

impl SilencingRelay {
    async fn start(redis_port: u16) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let generation = Arc::new(AtomicU64::new(1));
        let silenced_up_to = Arc::new(AtomicU64::new(0));
        let (gen_, silenced) = (Arc::clone(&generation), Arc::clone(&silenced_up_to));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let born = gen_.load(Ordering::SeqCst);
                let silenced = Arc::clone(&silenced);
                tokio::spawn(async move {
                    let Ok(server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", redis_port)).await
                    else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = {
                        let silenced = Arc::clone(&silenced);
                        async move {
                            let mut buf = [0u8; 16 * 1024];
                            loop {
                                let n = match tokio::io::AsyncReadExt::read(&mut cr, &mut buf).await
                                {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => n,
                                };
                                if silenced.load(Ordering::SeqCst) >= born {
                                    std::future::pending::<()>().await;
                                }
                                if tokio::io::AsyncWriteExt::write_all(&mut sw, &buf[..n])
                                    .await
                                    .is_err()
                                {
                                    return;
                                }
                            }
                        }
                    };
                    let down = async move {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            let n = match tokio::io::AsyncReadExt::read(&mut sr, &mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if silenced.load(Ordering::SeqCst) >= born {
                                std::future::pending::<()>().await;
                            }
                            if tokio::io::AsyncWriteExt::write_all(&mut cw, &buf[..n])
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Self {
            port,
            generation,
            silenced_up_to,
        }
    }

    /// Every connection open now goes silent; later ones work.
    fn silence_open_connections(&self) {
        use std::sync::atomic::Ordering;
        let current = self.generation.fetch_add(1, Ordering::SeqCst);
        self.silenced_up_to.store(current, Ordering::SeqCst);
    }
}

/// The connection that listens for other processes' rejections is pinged: when it goes
/// silent without being closed, it is replaced, and events reach the process again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_events_connection_is_replaced() {
    let redis = RedisServer::start();
    let relay = SilencingRelay::start(redis.port()).await;
    let store = RedisTokenStore::builder(format!("redis://127.0.0.1:{}/", relay.port))
        .fleet_key(FLEET_KEY)
        .connect_timeout(Duration::from_millis(500))
        .events_ping_interval(Duration::from_millis(300))
        .connect()
        .await
        .unwrap();
    let _events = en_auth_core::TokenStore::events(&store).unwrap();
    let channel = "en-auth:v1:events";
    let publish = || {
        redis.command(&[
            "PUBLISH",
            channel,
            r#"{"k":"some-key","f":"some-fingerprint"}"#,
        ]);
    };
    let received = |at_least: u64| {
        let store = store.clone();
        async move {
            for _ in 0..100 {
                if store.stats().events_received >= at_least {
                    return true;
                }
                publish();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        }
    };
    assert!(
        received(1).await,
        "the listener hears events through the relay"
    );
    relay.silence_open_connections();
    let before = store.stats().events_received;
    assert!(
        received(before + 1).await,
        "events arrive again once the silent connection is replaced"
    );
}

/// The fleet key belongs to the store: two stores with one key share tokens, a store with
/// another key in the same process shares nothing, and neither's key names show the label
/// this process prints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_share_tokens_only_with_the_same_fleet_key() {
    const OTHER_KEY: &str = "another-fleet-key-abcdefghijklmnopqrstuvwxyz";
    let redis = RedisServer::start();
    let idp = idp().await;
    let first = store_builder(redis.url()).connect().await.unwrap();
    let same = store_builder(redis.url()).connect().await.unwrap();
    let other = store_builder(redis.url())
        .fleet_key(OTHER_KEY)
        .connect()
        .await
        .unwrap();
    let key = en_auth_core::Authorizer::cache_key(&authorizer(&idp));
    assert_eq!(first.token_key(&key), same.token_key(&key));
    assert_ne!(first.token_key(&key), other.token_key(&key));

    let token = cache(authorizer(&idp), &first)
        .access_token()
        .await
        .unwrap();
    assert_eq!(idp.token_requests(), 1);
    let shared = cache(authorizer(&idp), &same).access_token().await.unwrap();
    assert_eq!(shared, token, "the same fleet key shares the token");
    assert_eq!(idp.token_requests(), 1);
    let separate = cache(authorizer(&idp), &other)
        .access_token()
        .await
        .unwrap();
    assert_ne!(separate, token, "another fleet key shares nothing");
    assert_eq!(idp.token_requests(), 2);

    let keys = redis.command(&["KEYS", "*"]).unwrap();
    let label = key.as_str();
    let label_hex = label.rsplit(':').next().unwrap();
    assert!(!keys.contains(label_hex), "{keys} contains {label}");
    assert!(keys.contains(&first.token_key(&key)), "{keys}");
    assert!(keys.contains(&other.token_key(&key)), "{keys}");
}

/// Another process's rejection arrives under the local key's label, whatever the name the
/// key has in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_under_the_local_label() {
    use en_auth_core::TokenStore;
    use en_auth_core::secrecy::SecretString;
    let redis = RedisServer::start();
    let sender = store_builder(redis.url()).connect().await.unwrap();
    let receiver = store_builder(redis.url()).connect().await.unwrap();
    let key = en_auth_core::CacheKey::builder("test")
        .part("client_id", "events")
        .secret("client_secret", SECRET)
        .build();
    // The receiver uses the key (as a cache does: it reads before anything else).
    assert!(receiver.load(&key).await.unwrap().is_none());
    let mut events = receiver.events().unwrap();
    let value = SecretString::from("a-rejected-token-value".to_owned());
    let mut event = None;
    for _ in 0..50 {
        sender.remove_if(&key, &value).await.unwrap();
        if let Ok(Ok(got)) = tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
            event = Some(got);
            break;
        }
    }
    assert_eq!(
        event,
        Some(en_auth_core::StoreEvent::invalidated(
            key.as_str(),
            en_auth_core::value_fingerprint("a-rejected-token-value"),
        ))
    );
}

#[tokio::test]
async fn a_short_fleet_key_is_refused_without_being_shown() {
    let short = "short-fleet-key-1234";
    let err = RedisTokenStore::builder("redis://127.0.0.1:1")
        .fleet_key(short)
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(err, en_auth_core::Error::InvalidConfiguration { .. }),
        "{err:?}"
    );
    let text = format!("{err} {err:?}");
    assert!(text.contains("at least 32 bytes"), "{text}");
    assert!(!text.contains(short), "{text}");
    let builder = RedisTokenStore::builder("redis://127.0.0.1:1").fleet_key(FLEET_KEY);
    assert!(!format!("{builder:?}").contains(FLEET_KEY));
}

/// Durations from configuration never overflow `Instant`: a breaker cool-down of
/// `Duration::MAX` opens the breaker (for as long as an `Instant` can say) instead of
/// panicking inside the fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_configured_durations_do_not_panic() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let idp = idp().await;
    let store = RedisTokenStore::builder(format!("redis://127.0.0.1:{port}"))
        .fleet_key(FLEET_KEY)
        .breaker_cooldown(Duration::MAX)
        .events_ping_interval(Duration::MAX)
        .max_failure_wait(Duration::MAX)
        .connect()
        .await
        .expect("connect succeeds degraded");
    assert!(!store.is_available());
    let cache = cache(authorizer(&idp), &store);
    cache.access_token().await.expect("fetched in-process");
    assert_eq!(idp.token_requests(), 1);
    let stats = store.stats();
    assert!(stats.breaker_trips >= 1, "{stats:?}");
    assert!(!store.is_available(), "the breaker stays open");
}

/// A failure record is data anyone who can write to Redis could have written: its `retry_at`
/// is trusted only up to the configured bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_records_from_redis_wait_at_most_the_bound() {
    use en_auth_core::TokenStore;
    let redis = RedisServer::start();
    let idp = idp().await;
    let key = en_auth_core::Authorizer::cache_key(&authorizer(&idp));
    let record = r#"{"kind":"server_error","status":503,"retry_at":"9999-01-01T00:00:00Z"}"#;
    for (bound, store) in [
        (
            Duration::from_secs(3600),
            store_builder(redis.url()).connect().await.unwrap(),
        ),
        (
            Duration::from_secs(30),
            store_builder(redis.url())
                .max_failure_wait(Duration::from_secs(30))
                .connect()
                .await
                .unwrap(),
        ),
    ] {
        let fail_key = store.failure_key(&key);
        redis
            .command(&["SET", &fail_key, record, "PX", "600000"])
            .unwrap();
        let before = chrono::Utc::now();
        let failure = store
            .load_failure(&key)
            .await
            .unwrap()
            .expect("the record is read");
        assert_eq!(failure.kind, "server_error");
        let bound = chrono::Duration::from_std(bound).unwrap();
        assert!(failure.retry_at > before, "{failure:?}");
        assert!(
            failure.retry_at <= chrono::Utc::now() + bound,
            "retry_at {} is beyond the bound {bound}",
            failure.retry_at
        );
        assert!(failure.retry_at >= before + bound - chrono::Duration::seconds(5));
    }
}
