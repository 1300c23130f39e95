//! Proxy environment variables and loopback: a token request to a loopback provider never
//! goes through a proxy (the client credentials would travel to it), while remote providers
//! still use the proxy the environment names.
//!
//! The proxy variables are set only for a child process running this same test binary (so
//! they cannot race other tests, and no `unsafe` `set_var` is needed); the recording proxy
//! and the identity provider run in the parent, on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use en_auth_core::{Authorizer, ClientInfo, Error};
use en_auth_oauth2::ServiceAccountAuthorizer;
use en_auth_testkit::{IdpConfig, LocalIdp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHILD: &str = "EN_AUTH_PROXY_TEST_CHILD";

/// A proxy on loopback that counts the connections it gets and answers each with a 502.
async fn recording_proxy() -> (String, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let count = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (url, count)
}

#[tokio::test]
async fn loopback_token_requests_bypass_proxies_from_the_environment() {
    let idp = LocalIdp::start(IdpConfig::default()).await.expect("idp");
    let (proxy, proxied) = recording_proxy().await;
    let status = tokio::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child_fetches_tokens", "--nocapture"])
        .env(
            CHILD,
            format!(
                "{}|{}|{}",
                idp.token_url(),
                idp.client_id(),
                idp.client_secret()
            ),
        )
        .env("HTTP_PROXY", &proxy)
        .env("http_proxy", &proxy)
        .env("ALL_PROXY", &proxy)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .status()
        .await
        .expect("child runs");
    assert!(status.success(), "the child's checks failed: {status}");
    assert_eq!(
        idp.token_requests(),
        2,
        "both loopback requests reached the provider directly"
    );
    assert_eq!(
        proxied.load(Ordering::SeqCst),
        1,
        "only the remote provider's request went to the proxy"
    );
}

/// Runs only in the child process started above, with the proxy variables set.
#[tokio::test]
async fn child_fetches_tokens() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let mut parts = spec.split('|');
    let (url, id, secret) = (
        parts.next().expect("url"),
        parts.next().expect("id"),
        parts.next().expect("secret"),
    );
    let info = ClientInfo::new(id, secret);
    ServiceAccountAuthorizer::new(info.clone(), url)
        .authorize()
        .await
        .expect("a loopback provider is reached directly");
    let localhost = url.replacen("127.0.0.1", "localhost", 1);
    ServiceAccountAuthorizer::new(info.clone(), localhost)
        .authorize()
        .await
        .expect("localhost too");
    // A remote provider goes through the proxy (which refuses): the variables are in effect.
    // The name is never resolved: the proxy gets it.
    let err = ServiceAccountAuthorizer::new(info, "https://idp.invalid/oauth/token")
        .authorize()
        .await
        .expect_err("the recording proxy answers 502");
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
}
