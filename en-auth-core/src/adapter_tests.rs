//! The adapter core's decisions, as plain tests.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::{AccessToken, BearerToken, ClientInfo};

/// Issues `token-1`, `token-2`, … With `proofs`, it makes a DPoP-like proof per request
/// (`<method> <url>`) and asks for a nonce on a 401 that says `use_dpop_nonce`.
struct Numbered {
    info: ClientInfo,
    issued: AtomicUsize,
    proofs: bool,
    responses_read: AtomicUsize,
    /// While set, a proof never comes (a hung KMS).
    proof_hangs: AtomicBool,
}

impl Numbered {
    fn cache(info: ClientInfo, proofs: bool) -> TokenCache<Self> {
        TokenCache::new(Self::new(info, proofs))
    }

    fn new(info: ClientInfo, proofs: bool) -> Self {
        Self {
            info,
            issued: AtomicUsize::new(0),
            proofs,
            responses_read: AtomicUsize::new(0),
            proof_hangs: AtomicBool::new(false),
        }
    }
}

#[async_trait::async_trait]
impl Authorizer for Numbered {
    type Token = BearerToken;
    fn client_info(&self) -> &ClientInfo {
        &self.info
    }
    async fn authorize(&self) -> Result<BearerToken, Error> {
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(BearerToken::new(
            format!("token-{n}"),
            Some(Duration::from_secs(3600)),
        ))
    }
    fn uses_request_proofs(&self) -> bool {
        self.proofs
    }
    async fn request_proof(
        &self,
        _token: &BearerToken,
        method: &Method,
        url: &str,
    ) -> Result<Option<(HeaderName, HeaderValue)>, Error> {
        if self.proof_hangs.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let value = HeaderValue::from_str(&format!("{method} {url}")).map_err(|_| {
            Error::InvalidConfiguration {
                setting: "test".into(),
                reason: "bad url".into(),
            }
        })?;
        Ok(Some((HeaderName::from_static("dpop"), value)))
    }
    fn proof_challenge(&self, _url: &str, status: u16, headers: &HeaderMap) -> bool {
        self.responses_read.fetch_add(1, Ordering::SeqCst);
        status == 401
            && headers
                .get(http::header::WWW_AUTHENTICATE)
                .is_some_and(|v| v.as_bytes().ends_with(b"error=\"use_dpop_nonce\""))
    }
}

fn bearer() -> AdapterCore<Numbered> {
    AdapterCore::new(
        Numbered::cache(ClientInfo::new("id", "s"), false),
        "TestAdapter",
    )
}

fn dpop() -> AdapterCore<Numbered> {
    AdapterCore::new(
        Numbered::cache(ClientInfo::new("id", "s"), true),
        "TestAdapter",
    )
}

fn access_token(token: &CachedToken<BearerToken>) -> &str {
    token.token().access_token()
}

fn nonce_challenge() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("DPoP error=\"use_dpop_nonce\""),
    );
    headers
}

const URL: &str = "https://api.example.com/orders?page=2";

#[test]
fn every_combination_of_rejection_challenge_and_replayability_has_one_decision() {
    use Decision::*;
    let table = [
        ((false, false, false), Accept),
        ((false, false, true), Accept),
        ((false, true, false), Accept),
        ((false, true, true), Accept),
        ((true, false, false), Report),
        ((true, false, true), Replay),
        ((true, true, false), Keep),
        ((true, true, true), Resend),
    ];
    for ((rejected, challenged, replayable), expected) in table {
        assert_eq!(
            decide(rejected, challenged, replayable),
            expected,
            "rejected {rejected}, challenged {challenged}, replayable {replayable}"
        );
    }
}

fn refused_setting(result: Result<(), Error>) -> Option<String> {
    match result {
        Ok(()) => None,
        Err(Error::InvalidConfiguration { setting, .. }) => Some(setting),
        Err(other) => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn plain_http_goes_only_to_loopback_unless_allowed() {
    let core = bearer();
    let refused = |scheme: Option<&str>, host: Option<&str>| {
        refused_setting(core.check_request(scheme, || host))
    };
    for host in ["127.0.0.1", "localhost", "LOCALHOST", "[::1]", "127.8.0.1"] {
        assert_eq!(refused(Some("http"), Some(host)), None, "{host}");
    }
    assert_eq!(refused(Some("https"), Some("api.example.com")), None);
    assert_eq!(
        refused(None, None),
        None,
        "a path-only URI cannot be checked"
    );
    for (scheme, host) in [
        ("http", Some("api.example.com")),
        ("http", Some("10.0.0.1")),
        ("http", Some("[::2]")),
        ("http", None),
        ("ws", Some("api.example.com")),
    ] {
        assert_eq!(
            refused(Some(scheme), host).as_deref(),
            Some("request URL"),
            "{scheme}://{host:?}"
        );
    }

    let Err(Error::InvalidConfiguration { reason, .. }) =
        core.check_request(Some("http"), || Some("api.example.com"))
    else {
        panic!("refused");
    };
    assert!(reason.contains("`http://` to api.example.com"), "{reason}");
    assert!(
        reason.contains("TestAdapter::allow_plain_http(true)"),
        "names the switch of the adapter at hand: {reason}"
    );

    let open = bearer().allow_plain_http(true);
    assert!(
        open.check_request(Some("http"), || Some("api.example.com"))
            .is_ok()
    );
    let unasked = || -> Option<&str> { panic!("the host is not needed for https") };
    assert!(core.check_request(Some("https"), unasked).is_ok());
}

#[test]
fn an_api_key_that_cannot_be_sent_refuses_every_request_before_the_url_rules() {
    let info = ClientInfo::new("id", "s").with_api_key("key\r\n");
    let cache = Numbered::cache(info, false);
    assert!(AdapterCore::try_new(cache.clone(), "TestAdapter").is_err());
    let core = AdapterCore::new(cache, "TestAdapter").allow_plain_http(true);
    for (scheme, host) in [(Some("https"), Some("api.example.com")), (None, None)] {
        assert_eq!(
            refused_setting(core.check_request(scheme, || host)).as_deref(),
            Some("api_key")
        );
    }
    let debug = format!("{core:?}");
    assert!(!debug.contains("key\r\n"), "{debug}");
}

#[tokio::test]
async fn credentials_are_the_token_and_the_api_key_replacing_what_the_request_had() {
    let info = ClientInfo::new("id", "s").with_api_key("key-1");
    let core = AdapterCore::new(Numbered::cache(info, false), "TestAdapter");
    assert!(core.cached_token().is_none(), "nothing fetched yet");
    let token = core.token().await.expect("token");
    assert!(core.cached_token().is_some_and(|t| Arc::ptr_eq(&t, &token)));

    let mut headers = HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, HeaderValue::from_static("old"));
    let credentials = core
        .credentials(&token, &Method::GET, URL)
        .await
        .expect("credentials");
    let debug = format!("{credentials:?}");
    assert!(
        !debug.contains("token-1") && !debug.contains("key-1"),
        "{debug}"
    );
    assert!(
        credentials.proof().is_none(),
        "bearer tokens carry no proof"
    );
    credentials.apply(&mut headers);
    assert_eq!(headers.len(), 2);
    assert_eq!(headers[http::header::AUTHORIZATION], "Bearer token-1");
    assert!(headers[http::header::AUTHORIZATION].is_sensitive());
    assert_eq!(headers["x-api-key"], "key-1");
    assert_eq!(core.access_token().await.expect("token"), "token-1");
}

#[tokio::test]
async fn a_proof_is_made_for_each_request_s_method_and_url() {
    let core = dpop();
    let token = core.token().await.expect("token");
    let mut headers = HeaderMap::new();
    core.credentials(&token, &Method::POST, URL)
        .await
        .expect("credentials")
        .apply(&mut headers);
    assert_eq!(headers["dpop"], format!("POST {URL}").as_str());
    assert!(headers.get("x-api-key").is_none(), "no API key configured");
}

/// A signer that never answers (a hung KMS) fails the request after the proof timeout —
/// the default, or the policy's — instead of hanging it; then proofs work again.
#[tokio::test(start_paused = true)]
async fn a_proof_that_never_comes_fails_the_request_after_the_proof_timeout() {
    let configured =
        crate::LifecyclePolicy::default().with_proof_timeout(Duration::from_millis(250));
    let cases = [
        (
            Numbered::cache(ClientInfo::new("id", "s"), true),
            crate::DEFAULT_PROOF_TIMEOUT,
        ),
        (
            TokenCache::builder(Numbered::new(ClientInfo::new("id", "s"), true))
                .policy(configured)
                .build(),
            Duration::from_millis(250),
        ),
    ];
    assert_eq!(crate::DEFAULT_PROOF_TIMEOUT, Duration::from_secs(5));
    for (cache, timeout) in cases {
        let core = AdapterCore::new(cache, "TestAdapter");
        let token = core.token().await.expect("token");
        core.cache()
            .authorizer()
            .proof_hangs
            .store(true, Ordering::SeqCst);
        let started = tokio::time::Instant::now();
        // Bounded here too, so that a missing timeout fails the test instead of hanging it.
        let waited = tokio::time::timeout(timeout * 2, core.credentials(&token, &Method::GET, URL));
        match waited.await.expect("the proof timeout ended the wait") {
            Err(err @ Error::Transport { timeout: true, .. }) => {
                assert!(err.is_transient(), "{err:?}");
                assert!(err.to_string().contains("proof_timeout"), "{err}");
            }
            other => panic!("{timeout:?}: {:?}", other.map(|c| c.proof().is_some())),
        }
        assert_eq!(started.elapsed(), timeout);
        core.cache()
            .authorizer()
            .proof_hangs
            .store(false, Ordering::SeqCst);
        let credentials = core
            .credentials(&token, &Method::GET, URL)
            .await
            .expect("a proof");
        assert!(credentials.proof().is_some());
    }
}

#[tokio::test]
async fn bearer_credentials_never_leave_out_a_proof() {
    let core = bearer();
    let token = core.token().await.expect("token");
    let mut headers = HeaderMap::new();
    core.bearer_credentials(&token)
        .expect("bearer credentials")
        .apply(&mut headers);
    assert_eq!(headers[http::header::AUTHORIZATION], "Bearer token-1");

    let core = dpop();
    let token = core.token().await.expect("token");
    match core.bearer_credentials(&token) {
        Err(Error::InvalidConfiguration { setting, reason }) => {
            assert_eq!(setting, "authorizer");
            assert!(reason.contains("TestAdapter"), "{reason}");
        }
        other => panic!(
            "credentials without their proof: {:?}",
            other.map(|c| c.proof().is_some())
        ),
    }
}

#[tokio::test]
async fn a_401_is_replayed_with_a_new_token_when_the_request_can_be_sent_again() {
    let core = bearer();
    let token = core.token().await.expect("token");
    let ok = HeaderMap::new();
    assert!(!core.reads_response(ResponseHead::new(URL, 200, &ok).is_rejection()));
    let head = ResponseHead::new(URL, 401, &ok);
    assert!(core.reads_response(head.is_rejection()));
    match core.after_response(&token, head, true).await {
        AfterResponse::Replay(new) => assert_eq!(access_token(&new), "token-2"),
        other => panic!("expected a replay, got {other:?}"),
    }
    let stats = core.stats();
    assert_eq!((stats.invalidations, stats.replays), (1, 1));
}

#[tokio::test]
async fn a_401_that_cannot_be_replayed_is_still_reported() {
    for (replays_on, replayable) in [(true, false), (false, true)] {
        let core = bearer().replay_on_unauthorized(replays_on);
        let token = core.token().await.expect("token");
        let headers = HeaderMap::new();
        let head = ResponseHead::new(URL, 401, &headers);
        let after = core.after_response(&token, head, replayable).await;
        assert!(matches!(after, AfterResponse::Done), "{after:?}");
        let stats = core.stats();
        assert_eq!((stats.invalidations, stats.replays), (1, 0));
    }
}

#[tokio::test]
async fn a_transport_rejection_counts_like_a_401() {
    let core = bearer();
    let token = core.token().await.expect("token");
    let headers = HeaderMap::new();
    let head = ResponseHead::new(URL, 200, &headers).rejected_if(true);
    assert!(head.is_rejection());
    let after = core.after_response(&token, head, true).await;
    assert!(matches!(after, AfterResponse::Replay(_)), "{after:?}");
    assert!(
        !ResponseHead::new(URL, 200, &headers)
            .rejected_if(false)
            .is_rejection()
    );
}

#[tokio::test]
async fn a_nonce_challenge_resends_with_the_same_token_and_reports_nothing() {
    let core = dpop();
    let token = core.token().await.expect("token");
    let challenge = nonce_challenge();
    let head = ResponseHead::new(URL, 401, &challenge);
    match core.after_response(&token, head, true).await {
        AfterResponse::Resend(same) => assert!(Arc::ptr_eq(&same, &token)),
        other => panic!("expected a resend, got {other:?}"),
    }
    // Not replayable: returned as it is, and the token is not blamed either.
    let after = core.after_response(&token, head, false).await;
    assert!(matches!(after, AfterResponse::Done), "{after:?}");
    let stats = core.stats();
    assert_eq!((stats.invalidations, stats.replays), (0, 1));

    // A 401 without the challenge is a rejection of the token, as for bearer tokens.
    let plain = HeaderMap::new();
    let head = ResponseHead::new(URL, 401, &plain);
    let after = core.after_response(&token, head, true).await;
    assert!(matches!(after, AfterResponse::Replay(_)), "{after:?}");
}

#[tokio::test]
async fn with_proofs_every_response_is_read_and_only_proofs_read_final_ones() {
    let core = dpop();
    let token = core.token().await.expect("token");
    let read = || {
        core.cache()
            .authorizer()
            .responses_read
            .load(Ordering::SeqCst)
    };
    let headers = HeaderMap::new();
    assert!(core.reads_response(false), "a 200 may carry a new nonce");
    let after = core
        .after_response(&token, ResponseHead::new(URL, 200, &headers), true)
        .await;
    assert!(matches!(after, AfterResponse::Done), "{after:?}");
    assert_eq!(read(), 1);
    core.after_final_response(ResponseHead::new(URL, 200, &headers));
    assert_eq!(read(), 2);

    let core = bearer();
    core.after_final_response(ResponseHead::new(URL, 200, &headers));
    assert_eq!(
        core.cache()
            .authorizer()
            .responses_read
            .load(Ordering::SeqCst),
        0,
        "bearer tokens never show responses to the authorizer"
    );
}
