//! [`OnBehalfOf`] against panva's `oidc-provider` with a token-exchange grant handler that
//! verifies each caller's token (tests/peers/oidc-provider.mjs) and counts the exchanges it
//! received: one exchange per caller's token, whatever the number of requests; callers never
//! share a token; the number of callers remembered is bounded; nothing outlives the caller's
//! token.

#[path = "support/exchange_peer.rs"]
mod exchange_peer;

use std::time::Duration;

use en_auth_core::{AccessToken, ClientInfo, Error};
use en_auth_oauth2::{CallerToken, JWT_TOKEN_TYPE, OnBehalfOf, SubjectToken};
use en_auth_testkit::OidcProvider;
use exchange_peer::{TOKEN_EXCHANGE, claims, keys, now, recorded, upstream_token};
use serde_json::json;

fn on_behalf_of(provider: &OidcProvider) -> OnBehalfOf {
    OnBehalfOf::new(
        ClientInfo::new("exchange-client", "exchange-secret"),
        provider.token_url(),
    )
    .with_audience(OidcProvider::API)
    .with_scopes(["read:data"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_of_one_caller_cost_one_exchange() {
    let provider = OidcProvider::start(600).await;
    let keys = keys(&provider).await;
    let obo = on_behalf_of(&provider);
    let caller = upstream_token(&keys, "alice", 600, json!({}));

    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..1_000 {
        let (obo, caller) = (obo.clone(), caller.clone());
        requests.spawn(async move {
            let token = obo.token_for(caller.as_str()).await?;
            Ok::<_, Error>(token.token().access_token().to_owned())
        });
    }
    let mut tokens = std::collections::HashSet::new();
    while let Some(token) = requests.join_next().await {
        tokens.insert(token.unwrap().unwrap());
    }
    let exchanges = provider.grants(TOKEN_EXCHANGE).await;
    println!("measure: exchanges per 1,000 requests of one caller: {exchanges}");
    assert_eq!(exchanges, 1);
    assert_eq!(tokens.len(), 1);
    let token = tokens.into_iter().next().unwrap();
    assert_eq!(claims(&token)["sub"], "alice");
    assert_eq!(claims(&token)["aud"], json!([OidcProvider::API]));
    assert_eq!(obo.remembered_callers(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_callers_cost_a_hundred_exchanges_and_never_share_a_token() {
    let provider = OidcProvider::start(600).await;
    let keys = keys(&provider).await;
    let obo = on_behalf_of(&provider);
    let callers: Vec<(String, String)> = (0..100)
        .map(|n| {
            let sub = format!("user-{n}");
            let token = upstream_token(&keys, &sub, 600, json!({}));
            (sub, token)
        })
        .collect();

    // Ten requests per caller, all at once.
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..10 {
        for (sub, caller) in &callers {
            let (obo, sub, caller) = (obo.clone(), sub.clone(), caller.clone());
            requests.spawn(async move {
                let token = obo.authorization_for(&caller).await?;
                Ok::<_, Error>((sub, token.to_str().unwrap().to_owned()))
            });
        }
    }
    let mut token_of = std::collections::HashMap::<String, String>::new();
    while let Some(result) = requests.join_next().await {
        let (sub, authorization) = result.unwrap().unwrap();
        let token = authorization.strip_prefix("Bearer ").unwrap().to_owned();
        // Each caller gets a token issued for them, and always the same one.
        assert_eq!(claims(&token)["sub"], sub.as_str());
        let first = token_of.entry(sub).or_insert_with(|| token.clone());
        assert_eq!(*first, token);
    }
    let exchanges = provider.grants(TOKEN_EXCHANGE).await;
    println!("measure: exchanges for 1,000 requests of 100 callers: {exchanges}");
    assert_eq!(exchanges, 100);
    let distinct: std::collections::HashSet<_> = token_of.values().collect();
    assert_eq!(distinct.len(), 100, "two callers shared a token");
    // The provider exchanged each caller's own token, once.
    let mut subjects: Vec<String> = recorded(&provider).await["exchanges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sub"].as_str().unwrap().to_owned())
        .collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), 100);
}

#[tokio::test]
async fn the_number_of_callers_remembered_is_bounded() {
    let provider = OidcProvider::start(600).await;
    let keys = keys(&provider).await;
    let obo = on_behalf_of(&provider).with_max_callers(10);
    let callers: Vec<String> = (0..25)
        .map(|n| upstream_token(&keys, &format!("user-{n}"), 600, json!({})))
        .collect();
    for caller in &callers {
        obo.token_for(caller).await.unwrap();
        assert!(obo.remembered_callers() <= 10);
    }
    assert_eq!(obo.remembered_callers(), 10);
    assert_eq!(provider.grants(TOKEN_EXCHANGE).await, 25);
    // The most recent caller is still remembered; the first was dropped and costs a new one.
    obo.token_for(&callers[24]).await.unwrap();
    assert_eq!(provider.grants(TOKEN_EXCHANGE).await, 25);
    obo.token_for(&callers[0]).await.unwrap();
    assert_eq!(provider.grants(TOKEN_EXCHANGE).await, 26);
}

// The exchange runs in real time (the provider checks the caller's `exp` on its own clock);
// after it, OnBehalfOf and the lifecycle run on tokio's clock, paused and advanced here.
#[tokio::test]
async fn a_downstream_token_never_outlives_the_callers_token() {
    let provider = OidcProvider::start(600).await;
    let keys = keys(&provider).await;
    let obo = on_behalf_of(&provider);

    // A caller whose token expires in 59-60 s; the provider's tokens live 600 s.
    let caller = upstream_token(&keys, "dave", 60, json!({}));
    let exp = claims(&caller)["exp"].as_i64().unwrap();
    let token = obo.token_for(caller.as_str()).await.unwrap();
    assert!(
        token.expires_at().timestamp() <= exp,
        "outlives the caller's token"
    );
    assert!(token.token().expires_at().unwrap().timestamp() <= exp);
    assert_eq!(provider.grants(TOKEN_EXCHANGE).await, 1);

    // Used until the end: past half its life it is stale, yet a new exchange could not end
    // any later, so it is served on without one…
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(35)).await;
    for _ in 0..3 {
        let again = obo.token_for(caller.as_str()).await.unwrap();
        assert!(again.same_token(&token));
        tokio::task::yield_now().await;
    }

    // …and refused after it, without asking the provider; the entry is dropped.
    tokio::time::advance(Duration::from_secs(26)).await;
    let err = obo.token_for(caller.as_str()).await.unwrap_err();
    assert!(matches!(err, Error::InvalidToken { .. }), "{err}");
    assert_eq!(obo.remembered_callers(), 0);
    tokio::time::resume();
    assert_eq!(provider.grants(TOKEN_EXCHANGE).await, 1);
}

#[tokio::test]
async fn a_token_the_downstream_api_rejected_is_exchanged_anew() {
    let provider = OidcProvider::start(600).await;
    let keys = keys(&provider).await;
    let obo = on_behalf_of(&provider);
    // The caller's token ends before the provider's would: the downstream token is clamped
    // to it, and could not be bettered by a new exchange — unless it is rejected.
    let caller = upstream_token(&keys, "grace", 300, json!({}));
    let first = obo.token_for(caller.as_str()).await.unwrap();
    assert_eq!(
        first.expires_at().timestamp(),
        claims(&caller)["exp"].as_i64().unwrap()
    );
    assert!(!obo.invalidate("a-stranger", &first).await, "not a caller");
    assert!(obo.invalidate(caller.as_str(), &first).await);
    let second = obo.token_for(caller.as_str()).await.unwrap();
    assert!(!second.same_token(&first), "the rejected token again");
    assert_eq!(claims(second.token().access_token())["sub"], "grace");
    assert_eq!(provider.grants(TOKEN_EXCHANGE).await, 2);
    // Exactly one more exchange: the new token is served on.
    for _ in 0..10 {
        assert!(
            obo.token_for(caller.as_str())
                .await
                .unwrap()
                .same_token(&second)
        );
    }
    assert_eq!(provider.grants(TOKEN_EXCHANGE).await, 2);
}

#[tokio::test]
async fn a_rejected_token_is_not_handed_back_when_the_first_new_exchange_fails() {
    let provider = OidcProvider::start(600).await;
    let keys = keys(&provider).await;
    // The actor token is read before each exchange: its second read (the first exchange
    // after the rejection) fails, transiently, and the lifecycle tries again.
    let actor = upstream_token(&keys, "orders-api", 600, json!({}));
    let reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = reads.clone();
    let obo = on_behalf_of(&provider).with_actor(SubjectToken::from_fn(
        move || {
            let read = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let actor = actor.clone();
            async move {
                if read == 1 {
                    return Err(Error::CredentialUnavailable {
                        credential: "actor".into(),
                        reason: "not yet".into(),
                    });
                }
                Ok(actor)
            }
        },
        JWT_TOKEN_TYPE,
    ));
    let caller = upstream_token(&keys, "heidi", 300, json!({}));
    let first = obo.token_for(caller.as_str()).await.unwrap();
    assert!(obo.invalidate(caller.as_str(), &first).await);
    let second = obo.token_for(caller.as_str()).await.unwrap();
    assert!(!second.same_token(&first), "the rejected token again");
    assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(provider.grants(TOKEN_EXCHANGE).await, 2);
}

#[tokio::test]
async fn a_caller_dropped_while_its_exchange_is_in_flight_still_gets_its_own_token() {
    let provider = OidcProvider::start(600).await;
    let keys = keys(&provider).await;
    // The actor token is read before each exchange is sent: the first read waits until the
    // test lets it go, which holds alice's exchange in flight.
    let actor = upstream_token(&keys, "orders-api", 600, json!({}));
    let (release, held) = tokio::sync::oneshot::channel::<()>();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Some(held)));
    let obo = on_behalf_of(&provider)
        .with_actor(SubjectToken::from_fn(
            move || {
                let (held, actor) = (held.clone(), actor.clone());
                async move {
                    let first = held.lock().unwrap().take();
                    if let Some(held) = first {
                        let _ = held.await;
                    }
                    Ok::<_, Error>(actor)
                }
            },
            JWT_TOKEN_TYPE,
        ))
        .with_max_callers(1);
    let alice = upstream_token(&keys, "alice", 600, json!({}));
    let bob = upstream_token(&keys, "bob", 600, json!({}));

    let in_flight = tokio::spawn({
        let (obo, alice) = (obo.clone(), alice.clone());
        async move { obo.token_for(alice.as_str()).await }
    });
    while obo.remembered_callers() == 0 {
        tokio::task::yield_now().await;
    }
    // Bob takes the only place: alice's entry is dropped while her exchange waits.
    let bobs = obo.token_for(bob.as_str()).await.unwrap();
    assert_eq!(claims(bobs.token().access_token())["sub"], "bob");
    assert_eq!(obo.evicted_callers(), 1);
    release.send(()).unwrap();
    let alices = in_flight.await.unwrap().unwrap();
    assert_eq!(claims(alices.token().access_token())["sub"], "alice");
    assert_eq!(obo.remembered_callers(), 1);
    assert_eq!(provider.grants(TOKEN_EXCHANGE).await, 2);
    // Bob is remembered; alice's next request costs an exchange again.
    assert!(obo.token_for(bob.as_str()).await.unwrap().same_token(&bobs));
    obo.token_for(alice.as_str()).await.unwrap();
    assert_eq!(provider.grants(TOKEN_EXCHANGE).await, 3);
}

#[tokio::test]
async fn an_expired_or_refused_caller_token_is_an_error_that_never_shows_it() {
    let (captured, _guard) = en_auth_testkit::capture_traces();
    let provider = OidcProvider::start(600).await;
    let keys = keys(&provider).await;
    let obo = on_behalf_of(&provider);

    // Expired already: refused before any request.
    let expired = upstream_token(&keys, "erin", -10, json!({}));
    let err = obo.token_for(expired.as_str()).await.unwrap_err();
    assert!(matches!(err, Error::InvalidToken { .. }), "{err}");
    // An opaque token given its verified expiry, in the past.
    let err = obo
        .token_for(CallerToken::new("opaque-caller-token").with_exp(now() - 1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidToken { .. }), "{err}");
    assert_eq!(provider.token_requests().await, 0);

    // A token the provider does not accept: its refusal, once per caller token.
    let stranger = "not-a-token-of-the-upstream-issuer";
    let refused = obo.token_for(stranger).await.unwrap_err();
    assert!(
        matches!(&refused, Error::Authorization { error, .. } if error == "invalid_grant"),
        "{refused}"
    );
    assert_eq!(provider.grants(TOKEN_EXCHANGE).await, 1);
    // Asked again, at once: the refusal is remembered, not asked for again.
    let again = obo.token_for(stranger).await.unwrap_err();
    assert!(
        matches!(&again, Error::Authorization { error, .. } if error == "invalid_grant"),
        "{again}"
    );
    assert_eq!(provider.grants(TOKEN_EXCHANGE).await, 1);

    let valid = upstream_token(&keys, "frank", 600, json!({}));
    let token = obo.token_for(valid.as_str()).await.unwrap();
    let shown = format!("{obo:?} {err} {refused} {token:?}");
    let logs = captured.text();
    for secret in [
        expired.as_str(),
        valid.as_str(),
        stranger,
        token.token().access_token(),
    ] {
        assert!(!shown.contains(secret), "{shown}");
        assert!(
            !logs.contains(secret),
            "a caller's or issued token in the logs"
        );
    }
}
