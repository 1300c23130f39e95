//! One client, many APIs: a token per audience, each sent only to its API. The provider
//! records which audience each token request asked for; each API accepts only tokens issued
//! for its own audience.

use en_auth_core::{AudienceMiddleware, ClientInfo, DefaultAudience, Error};
use en_auth_oauth2::{Audience, ServiceAccountAuthorizer};
use en_auth_testkit::{IdpConfig, LocalIdp, ProtectedApi};

const BILLING: &str = "https://billing.example.com";
const ORDERS: &str = "https://orders.example.com";

struct Setup {
    idp: LocalIdp,
    billing: ProtectedApi,
    orders: ProtectedApi,
    auth: AudienceMiddleware<ServiceAccountAuthorizer>,
    client: reqwest_middleware::ClientWithMiddleware,
}

async fn setup(
    configure: impl FnOnce(
        AudienceMiddleware<ServiceAccountAuthorizer>,
        &ProtectedApi,
        &ProtectedApi,
    ) -> AudienceMiddleware<ServiceAccountAuthorizer>,
) -> Setup {
    let idp = LocalIdp::start(IdpConfig::default()).await.unwrap();
    let billing = ProtectedApi::start_for_audience(&idp, BILLING)
        .await
        .unwrap();
    let orders = ProtectedApi::start_for_audience(&idp, ORDERS)
        .await
        .unwrap();
    let (id, secret, token_url) = (idp.client_id(), idp.client_secret(), idp.token_url());
    let auth = configure(
        AudienceMiddleware::new(move |audience: &Audience| {
            ServiceAccountAuthorizer::new(ClientInfo::new(&id, &secret), &token_url)
                .with_audience(audience.as_str())
        }),
        &billing,
        &orders,
    );
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(auth.clone())
        .build();
    Setup {
        idp,
        billing,
        orders,
        auth,
        client,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_give_each_api_its_own_token_once_per_lifetime() {
    let s = setup(|auth, billing, orders| {
        auth.route(billing.url("/"), BILLING)
            .route(orders.url("/"), ORDERS)
    })
    .await;
    for _ in 0..20 {
        let b = s
            .client
            .get(s.billing.url("/invoices"))
            .send()
            .await
            .unwrap();
        let o = s.client.get(s.orders.url("/orders")).send().await.unwrap();
        assert_eq!((b.status().as_u16(), o.status().as_u16()), (200, 200));
    }
    assert_eq!(s.idp.token_requests_for(BILLING), 1);
    assert_eq!(s.idp.token_requests_for(ORDERS), 1);
    assert_eq!(s.idp.token_requests(), 2);
    let billing_token = s.billing.seen()[0].token.clone();
    assert!(
        s.orders.seen().iter().all(|r| r.token != billing_token),
        "never crossed"
    );
}

#[tokio::test]
async fn an_audience_extension_wins_and_no_audience_is_refused_before_sending() {
    let s = setup(|auth, billing, _| auth.route(billing.url("/"), BILLING)).await;
    // The extension names the orders audience explicitly.
    let response = s
        .client
        .get(s.orders.url("/orders"))
        .with_extension(Audience::new(ORDERS))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(s.idp.token_requests_for(ORDERS), 1);

    // No extension, no route: refused before anything is sent.
    let err = s
        .client
        .get(s.orders.url("/orders"))
        .send()
        .await
        .unwrap_err();
    let en_auth = match &err {
        reqwest_middleware::Error::Middleware(e) => e.downcast_ref::<Error>(),
        _ => None,
    };
    assert!(
        matches!(en_auth, Some(Error::InvalidConfiguration { .. })),
        "{err:?}"
    );
    assert_eq!(s.orders.requests(), 1);
    assert!(s.auth.cache(&Audience::new(ORDERS)).is_some());
}

#[tokio::test]
async fn a_default_audience_and_the_cap_hold() {
    let s = setup(|auth, _, _| {
        auth.default_audience(DefaultAudience::Use(Audience::new(BILLING)))
            .max_audiences(2)
    })
    .await;
    let response = s.client.get(s.billing.url("/x")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200, "the default audience");
    let response = s
        .client
        .get(s.orders.url("/x"))
        .with_extension(Audience::new(ORDERS))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let err = s
        .client
        .get(s.orders.url("/x"))
        .with_extension(Audience::new("https://third.example.com"))
        .send()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_audiences"), "{err}");
    assert_eq!(s.idp.token_requests(), 2, "no token request beyond the cap");
}

#[tokio::test]
async fn a_route_prefix_matches_by_host_and_path_segment_not_by_text() {
    // The billing API's own URL is routed; look-alike URLs on other hosts or paths are not.
    let s = setup(|auth, billing, _| {
        let prefix = billing.url("/api"); // no trailing slash
        auth.route(prefix, BILLING)
    })
    .await;
    let ok = s
        .client
        .get(s.billing.url("/api/invoices"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    for lookalike in [s.billing.url("/apix"), s.billing.url("/api-evil/x")] {
        let err = s.client.get(lookalike).send().await.unwrap_err();
        assert!(err.to_string().contains("no Audience"), "{err}");
    }
    // Same text prefix, another host: `http://127.0.0.1:PORT/api` vs `…PORT0/api`.
    let other_host = s.billing.url("/api").replace("127.0.0.1", "127.0.0.2");
    let err = s.client.get(other_host).send().await.unwrap_err();
    assert!(err.to_string().contains("no Audience"), "{err}");
    assert_eq!(
        s.billing.requests(),
        1,
        "look-alikes were refused before sending"
    );
}
