//! Client assertions issued by someone else (issue 18, item 1) against panva's
//! `oidc-provider`: the test plays the kubelet (or SPIFFE agent) — it signs a short-lived
//! assertion for `workload-client` with a key only it and the provider's registration know,
//! writes it to a file and rewrites it between token requests. The provider verifies every
//! assertion's signature, `iss`/`sub`, `aud`, `exp` and refuses a replayed `jti`, so a token
//! obtained twice from one file proves the file was read again.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use en_auth_core::{
    AuthMiddleware, Authorizer, ClientInfo, Error, LifecyclePolicy, RetryPolicy, TokenCache,
};
use en_auth_oauth2::{AssertionSource, ClientAuthentication, ServiceAccountAuthorizer};
use en_auth_testkit::OidcProvider;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const CLIENT: &str = "workload-client";

/// The provider's key for `workload-client`, which the test holds as the kubelet would.
async fn workload_key(provider: &OidcProvider) -> String {
    let keys: serde_json::Value = reqwest::get(format!("{}/__signer_keys", provider.issuer()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    keys["workload"].as_str().unwrap().to_owned()
}

/// What the kubelet projects: a JWT for `workload-client`, audience the token endpoint,
/// valid for two minutes, with `jti`.
fn issue(key_pem: &str, audience: &str, jti: &str) -> String {
    // This test's own jsonwebtoken calls go through the process default: name it, since the
    // workspace build also enables the rust_crypto backend.
    let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
        &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": CLIENT, "sub": CLIENT, "aud": audience, "jti": jti, "iat": now, "exp": now + 120,
    });
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("workload-1".into());
    let key = EncodingKey::from_ec_pem(key_pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// Writes `content` as the kubelet does: a new file renamed over the old one.
fn project(path: &Path, content: &str) {
    let staging = path.with_extension("new");
    std::fs::write(&staging, content).unwrap();
    std::fs::rename(&staging, path).unwrap();
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("en-auth-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn authorizer(
    provider: &OidcProvider,
    authentication: ClientAuthentication,
) -> ServiceAccountAuthorizer {
    ServiceAccountAuthorizer::new(ClientInfo::new(CLIENT, ""), provider.token_url())
        .with_audience(OidcProvider::API)
        .with_authentication(authentication)
}

async fn last_jti(provider: &OidcProvider) -> String {
    let assertions = provider.client_assertions().await;
    assertions.last().unwrap()["claims"]["jti"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn the_file_is_read_afresh_for_every_token_request() {
    let provider = OidcProvider::start(600).await;
    let key = workload_key(&provider).await;
    let dir = temp_dir("workload-file");
    let path = dir.join("token");
    let sa = authorizer(&provider, ClientAuthentication::assertion_file(&path));

    project(&path, &issue(&key, &provider.token_url(), "kubelet-1"));
    sa.authorize()
        .await
        .expect("a token for the first projected token");
    assert_eq!(last_jti(&provider).await, "kubelet-1");

    // The kubelet rewrites the file: the next token request carries the new assertion (the
    // old one would be refused: its jti was used).
    project(&path, &issue(&key, &provider.token_url(), "kubelet-2"));
    sa.authorize()
        .await
        .expect("a token for the rewritten file");
    assert_eq!(last_jti(&provider).await, "kubelet-2");
    assert_eq!(provider.tokens_issued().await, 2);

    // A file the kubelet has not rewritten yet holds a spent assertion: the provider refuses
    // it, which shows it was sent as it is in the file, not remembered from before.
    let err = sa.authorize().await.expect_err("a replayed jti");
    assert!(matches!(err, Error::InvalidClient { .. }), "{err:?}");
    assert_eq!(provider.tokens_issued().await, 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn the_lifecycle_renews_with_the_rewritten_file_after_the_token_expires() {
    // Tokens live 2 s. Only the lifecycle needs to see the first one expire, and it runs on
    // tokio's clock: that clock is run ahead (paused, advanced, resumed; no I/O is pending
    // meanwhile), not waited for. The provider issues the second token for the rewritten
    // assertion whatever became of the first.
    let provider = OidcProvider::start(2).await;
    let key = workload_key(&provider).await;
    let dir = temp_dir("workload-lifecycle");
    let path = dir.join("token");
    let cache = TokenCache::builder(authorizer(
        &provider,
        ClientAuthentication::assertion_file(&path),
    ))
    .policy(LifecyclePolicy::default().with_expiration_gap(Duration::from_millis(500)))
    .build();
    let auth = AuthMiddleware::from_cache(cache);

    project(&path, &issue(&key, &provider.token_url(), "pod-start"));
    let first = auth.access_token().await.expect("first token");
    assert_eq!(auth.access_token().await.unwrap(), first, "cached");
    assert_eq!(provider.token_requests().await, 1);

    project(
        &path,
        &issue(&key, &provider.token_url(), "rotated-by-kubelet"),
    );
    tokio::time::pause();
    tokio::time::advance(Duration::from_millis(2100)).await;
    tokio::time::resume();
    let second = auth.access_token().await.expect("renewed token");
    assert_ne!(second, first);
    assert_eq!(provider.token_requests().await, 2);
    assert_eq!(last_jti(&provider).await, "rotated-by-kubelet");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_missing_unreadable_or_empty_file_fails_before_any_request() {
    let provider = OidcProvider::start(600).await;
    let dir = temp_dir("workload-missing");
    let empty = dir.join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let cases = [
        (dir.join("missing"), "No such file"),
        (dir.clone(), "directory"),
        (empty, "empty"),
    ];
    for (path, why) in cases {
        let sa = authorizer(&provider, ClientAuthentication::assertion_file(&path));
        match sa.authorize().await {
            Err(Error::CredentialUnavailable { credential, reason }) => {
                assert_eq!(credential, path.display().to_string());
                assert!(reason.contains(why), "{why}: {reason}");
            }
            other => panic!("{why}: {:?}", other.map(|_| "a token")),
        }
        // Through the lifecycle too: a transient error, and still nothing sent.
        let cache = TokenCache::builder(sa)
            .policy(LifecyclePolicy::default().with_retry(RetryPolicy::none()))
            .build();
        let err = AuthMiddleware::from_cache(cache)
            .access_token()
            .await
            .expect_err("no credential");
        assert!(err.is_transient(), "{err:?}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
    assert_eq!(
        provider.token_requests().await,
        0,
        "nothing reached the provider"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn the_callback_is_called_once_per_token_request_and_its_error_passes_through() {
    let provider = OidcProvider::start(600).await;
    let key = workload_key(&provider).await;
    let token_url = provider.token_url();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    // The SPIFFE agent: a fresh JWT-SVID per call, down on the third.
    let sa = authorizer(
        &provider,
        ClientAuthentication::assertion_from_fn(move || {
            let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
            let svid = issue(&key, &token_url, &format!("svid-{n}"));
            async move {
                if n == 3 {
                    Err(Error::CredentialUnavailable {
                        credential: "spiffe workload API".into(),
                        reason: "connection refused".into(),
                    })
                } else {
                    Ok(svid)
                }
            }
        }),
    );
    sa.authorize().await.expect("first");
    sa.authorize().await.expect("second");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(last_jti(&provider).await, "svid-2");
    assert_eq!(provider.token_requests().await, 2);

    match sa.authorize().await {
        Err(Error::CredentialUnavailable { credential, reason }) => {
            assert_eq!(credential, "spiffe workload API");
            assert_eq!(reason, "connection refused");
        }
        other => panic!("{:?}", other.map(|_| "a token")),
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        provider.token_requests().await,
        2,
        "no request without an assertion"
    );
    sa.authorize().await.expect("the agent is back");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn the_assertion_is_in_no_debug_error_or_trace_output() {
    let provider = OidcProvider::start(600).await;
    let key = workload_key(&provider).await;
    let (captured, _guard) = en_auth_testkit::capture_traces();
    let dir = temp_dir("workload-secret");
    let path = dir.join("token");
    let sa = authorizer(&provider, ClientAuthentication::assertion_file(&path));
    let good = issue(&key, &provider.token_url(), "secret-1");
    project(&path, &good);
    sa.authorize().await.expect("token");

    // An assertion the provider refuses (wrong audience): its error is logged and returned.
    let refused = issue(&key, "https://elsewhere.example.com/token", "secret-2");
    project(&path, &refused);
    let err = sa.authorize().await.expect_err("wrong audience");
    let callback = authorizer(
        &provider,
        ClientAuthentication::assertion_from_fn({
            let refused = refused.clone();
            move || {
                let refused = refused.clone();
                async move { Ok(refused) }
            }
        }),
    );
    let err_callback = callback.authorize().await.expect_err("wrong audience");

    let outputs = [
        format!("{sa:?}"),
        format!("{callback:?}"),
        format!("{err} {err:?}"),
        format!("{err_callback} {err_callback:?}"),
        captured.text(),
    ];
    assert!(
        outputs[0].contains(&path.display().to_string()),
        "{}",
        outputs[0]
    );
    assert!(outputs[1].contains("Callback"), "{}", outputs[1]);
    assert!(
        outputs[4].contains("en_auth.token_request"),
        "TRACE output was captured"
    );
    for jwt in [&good, &refused] {
        // Any of the three parts (the signature is what makes it usable).
        for part in jwt.split('.') {
            for output in &outputs {
                assert!(!output.contains(part), "assertion part in output: {output}");
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_cache_key_names_the_source_never_its_content() {
    let key = |auth: ClientAuthentication| {
        ServiceAccountAuthorizer::new(ClientInfo::new(CLIENT, ""), "https://idp.example.com/token")
            .with_authentication(auth)
            .cache_key()
    };
    let a = key(ClientAuthentication::assertion_file(
        "/var/run/secrets/tokens/a",
    ));
    assert_eq!(
        a,
        key(ClientAuthentication::assertion_file(
            "/var/run/secrets/tokens/a"
        ))
    );
    assert_ne!(
        a,
        key(ClientAuthentication::assertion_file(
            "/var/run/secrets/tokens/b"
        ))
    );
    let callback = key(ClientAuthentication::assertion_from_fn(|| async {
        Ok::<_, Error>("eyJ.callback.secret")
    }));
    assert_ne!(a, callback);
    assert_ne!(a, key(ClientAuthentication::ClientSecretBasic));
    assert!(!format!("{callback:?}").contains("callback.secret"));
    assert_eq!(
        format!("{:?}", AssertionSource::file("/var/run/secrets/tokens/a")),
        "AssertionSource::File(/var/run/secrets/tokens/a)"
    );
}
