//! The middleware's replay bookkeeping and the size of its per-request future.

use super::*;

mod replay {
    use super::*;
    use http::HeaderValue;

    fn url(text: &str) -> reqwest::Url {
        reqwest::Url::parse(text).expect("url")
    }

    /// The request a replay would send after a 401 from `answered_from`, if any.
    fn replayed(replay: Replay, sent_to: &KeptUrl, answered_from: &str) -> Option<Request> {
        let answered_from = url(answered_from);
        if replay.possible(sent_to, &answered_from) {
            replay.into_request(&answered_from)
        } else {
            None
        }
    }

    #[test]
    fn a_body_less_replay_goes_to_the_kept_url_and_only_when_the_401_came_from_it() {
        let mut request = Request::new(
            http::Method::DELETE,
            reqwest::Url::parse("http://127.0.0.1:9/orders/7?x=1").expect("url"),
        );
        request
            .headers_mut()
            .insert("x-request-id", HeaderValue::from_static("r-1"));

        let sent_to = KeptUrl::new(request.url());
        let replay = Replay::prepare(&request);
        assert!(
            replayed(replay, &sent_to, "http://127.0.0.1:9/orders/8?x=1").is_none(),
            "a 401 from another URL (a redirect) is not replayed"
        );

        let replay = Replay::prepare(&request);
        let again =
            replayed(replay, &sent_to, "http://127.0.0.1:9/orders/7?x=1").expect("replayed");
        assert_eq!(again.url(), request.url(), "the request's own URL");
        assert_eq!(again.method(), http::Method::DELETE);
        assert_eq!(again.headers().get("x-request-id").unwrap(), "r-1");

        // A long URL (kept on the heap) is compared the same way.
        let long = format!("http://127.0.0.1:9/{}", "a".repeat(300));
        let request = Request::new(http::Method::GET, reqwest::Url::parse(&long).expect("url"));
        let sent_to = KeptUrl::new(request.url());
        let replay = Replay::prepare(&request);
        assert!(replayed(replay, &sent_to, &format!("{long}b")).is_none());
        let replay = Replay::prepare(&request);
        assert!(replayed(replay, &sent_to, &long).is_some());
        assert!(sent_to.same_origin(&reqwest::Url::parse("http://127.0.0.1:9/x").expect("url")));
        assert!(!sent_to.same_origin(&reqwest::Url::parse("http://127.0.0.1:10/").expect("url")));
        assert!(!sent_to.same_origin(&reqwest::Url::parse("https://127.0.0.1:9/").expect("url")));
    }
}

mod future_size {
    use super::*;
    use crate::{BearerToken, ClientInfo};
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Fixed(ClientInfo);

    #[async_trait::async_trait]
    impl Authorizer for Fixed {
        type Token = BearerToken;
        fn client_info(&self) -> &ClientInfo {
            &self.0
        }
        async fn authorize(&self) -> Result<BearerToken, Error> {
            Ok(BearerToken::new(
                "t",
                Some(std::time::Duration::from_secs(3600)),
            ))
        }
    }

    static SIZE: AtomicUsize = AtomicUsize::new(0);

    struct Probe(AuthMiddleware<Fixed>);

    #[async_trait::async_trait]
    impl Middleware for Probe {
        async fn handle(
            &self,
            request: Request,
            extensions: &mut Extensions,
            next: Next<'_>,
        ) -> reqwest_middleware::Result<Response> {
            let future = self.0.handle(request, extensions, next);
            SIZE.store(std::mem::size_of_val(&*future), Ordering::SeqCst);
            future.await
        }
    }

    /// The future of a request with a cached token is the one allocation the middleware
    /// makes per request. glibc serves requests up to about 1 KiB from its per-thread cache;
    /// larger ones take its slow path on every request, which costs more than the rest of
    /// the middleware together.
    #[tokio::test]
    async fn the_per_request_future_stays_well_under_a_kilobyte() {
        let auth = AuthMiddleware::new(Fixed(ClientInfo::new("a", "b")));
        auth.access_token().await.expect("a cached token");
        let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(Probe(auth))
            .build();
        // Nothing listens on the discard port: the request fails after its future was made.
        let _ = client.get("http://127.0.0.1:9/").send().await;
        let size = SIZE.load(Ordering::SeqCst);
        assert!(size > 0, "measured");
        assert!(size <= 1024, "the request future takes {size} bytes");
    }
}
