//! Mutual TLS (RFC 8705) end to end: panva's `oidc-provider` (with `features.mTLS`) behind
//! a TLS-terminating front (`MtlsFront`, which forwards the client certificate as nginx
//! does), issuing certificate-bound tokens (`cnf.x5t#S256`) to `tls_client_auth` and
//! `self_signed_tls_client_auth` clients; an axum API over TLS behind
//! `RequireAuth::certificate_bound()` that accepts such a token only from the certificate it
//! is bound to; the same behind a TLS-terminating proxy (`certificate_from_header`).
//!
//! Certificates are made for each test by a throw-away CA (`TestPki`, with `openssl`). The
//! provider runs as its own process, so these tests run in real time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::middleware::{Next, from_fn};
use axum::routing::get;
use base64::Engine;
use en_auth_core::{AccessToken, AuthMiddleware, Authorizer, ClientInfo, Error, UserCredentials};
use en_auth_oauth2::{
    ClientAuthentication, PasswordAuthorizer, ServiceAccountAuthorizer, TlsClientIdentity,
};
use en_auth_testkit::{CertifiedKey, LoopbackServer, MtlsFront, OidcProvider, TestPki, TlsServer};
use en_auth_verify::{Authenticated, PeerCertificate, RequireAuth, Verifier};

/// The provider, its TLS front (named as the mTLS alias of the token endpoint) and the CA.
struct Setup {
    pki: TestPki,
    provider: OidcProvider,
    front: MtlsFront,
}

impl Setup {
    async fn start() -> Self {
        let pki = TestPki::create();
        let provider = OidcProvider::start(600).await;
        let front = MtlsFront::start(&pki, &provider.issuer()).await;
        provider
            .set_mtls_token_endpoint_alias(&format!("{}/token", front.url()))
            .await;
        Self {
            pki,
            provider,
            front,
        }
    }

    fn ca(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_pem(self.pki.ca_pem()).expect("CA PEM")
    }

    /// A certificate of the CA for `mtls-ca-client`'s registered subject.
    fn client_certificate(&self, name: &str) -> CertifiedKey {
        self.pki.client(name, OidcProvider::MTLS_CA_CLIENT.1)
    }

    /// `mtls-ca-client` with `certificate`, at the front's token endpoint.
    fn authorizer(&self, certificate: &CertifiedKey) -> ServiceAccountAuthorizer {
        ServiceAccountAuthorizer::new(
            ClientInfo::new(OidcProvider::MTLS_CA_CLIENT.0, ""),
            format!("{}/token", self.front.url()),
        )
        .with_audience(OidcProvider::API)
        .with_scopes(["read:data"])
        .with_root_certificate(self.ca())
        .with_authentication(tls_client_auth(certificate))
    }
}

fn tls_client_auth(certificate: &CertifiedKey) -> ClientAuthentication {
    ClientAuthentication::tls_client_auth(&certificate.cert_pem, &certificate.key_pem)
        .expect("certificate and key")
}

fn identity(certificate: &CertifiedKey) -> TlsClientIdentity {
    TlsClientIdentity::from_pem(&certificate.cert_pem, &certificate.key_pem).expect("identity")
}

fn claims_of(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("json")
}

fn bound_to(jwt: &str) -> String {
    claims_of(jwt)["cnf"]["x5t#S256"]
        .as_str()
        .unwrap_or_else(|| panic!("no cnf.x5t#S256 in {}", claims_of(jwt)))
        .to_owned()
}

async fn orders(claims: Authenticated) -> String {
    format!("orders for {}", claims.client_id.as_deref().unwrap_or("?"))
}

/// `/orders` behind `layer`, counting the requests that reach it (refused ones included).
fn api(layer: RequireAuth, requests: Arc<AtomicU64>) -> Router {
    Router::new()
        .route("/orders", get(orders).layer(layer))
        .layer(from_fn(move |request: Request, next: Next| {
            requests.fetch_add(1, Ordering::SeqCst);
            next.run(request)
        }))
}

/// A plain reqwest client trusting the test CA, presenting `certificate` if given.
fn http_client(setup: &Setup, certificate: Option<&CertifiedKey>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(setup.ca());
    if let Some(certificate) = certificate {
        builder = builder.identity(identity(certificate).reqwest_identity());
    }
    builder.build().expect("client")
}

/// `GET url` with `Authorization: Bearer token` (and `extra` headers): status and challenge.
async fn get_with(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    extra: &[(&str, String)],
) -> (u16, String) {
    let mut request = http.get(url).bearer_auth(token);
    for (name, value) in extra {
        request = request.header(*name, value);
    }
    let response = request.send().await.expect("api answers");
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (response.status().as_u16(), challenge)
}

/// nginx's `$ssl_client_escaped_cert`: the PEM, URL-encoded.
fn escaped_pem(certificate: &CertifiedKey) -> String {
    let pem = String::from_utf8(certificate.cert_pem.clone()).expect("PEM text");
    pem.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn tls_client_auth_gets_a_token_bound_to_its_certificate() {
    let setup = Setup::start().await;
    let certificate = setup.client_certificate("client");
    let sa = setup.authorizer(&certificate);
    let token = sa.authorize().await.expect("a token");
    assert_eq!(setup.provider.tokens_issued().await, 1);
    assert_eq!(setup.provider.token_requests().await, 1);
    assert_eq!(
        bound_to(token.access_token()),
        identity(&certificate).certificate_thumbprint()
    );
    assert_eq!(
        sa.tls_identity()
            .map(TlsClientIdentity::certificate_thumbprint),
        Some(identity(&certificate).certificate_thumbprint())
    );
}

#[tokio::test]
async fn self_signed_tls_client_auth_uses_the_discovered_mtls_alias() {
    let setup = Setup::start().await;
    let certificate = setup
        .pki
        .self_signed_client("self-signed", "/CN=en-auth self-signed client");
    setup
        .provider
        .register_self_signed_client(&certificate)
        .await;
    // Discovery goes to the provider itself (plain http on loopback, no certificate); the
    // token request must go to the mTLS alias, the front: the provider's own token endpoint
    // never sees a certificate.
    let sa = ServiceAccountAuthorizer::discover(
        ClientInfo::new(OidcProvider::MTLS_SELF_SIGNED_CLIENT, ""),
        setup.provider.issuer(),
    )
    .await
    .expect("discovery")
    .with_authentication(
        ClientAuthentication::self_signed_tls_client_auth(
            &certificate.cert_pem,
            &certificate.key_pem,
        )
        .expect("certificate and key"),
    )
    .with_root_certificate(setup.ca())
    .with_audience(OidcProvider::API);
    assert_eq!(
        sa.token_url().await.expect("token url").as_str(),
        format!("{}/token", setup.front.url())
    );
    let token = sa.authorize().await.expect("a token");
    assert_eq!(setup.provider.tokens_issued().await, 1);
    assert_eq!(
        bound_to(token.access_token()),
        identity(&certificate).certificate_thumbprint()
    );
}

#[tokio::test]
async fn the_provider_refuses_a_client_without_its_certificate() {
    let setup = Setup::start().await;
    let token_url = format!("{}/token", setup.front.url());
    // No certificate at all: the client id alone, over the front.
    let without = ServiceAccountAuthorizer::new(
        ClientInfo::new(OidcProvider::MTLS_CA_CLIENT.0, ""),
        &token_url,
    )
    .with_authentication(ClientAuthentication::ClientSecretPost)
    .with_root_certificate(setup.ca())
    .with_audience(OidcProvider::API);
    let err = without.authorize().await.expect_err("refused");
    assert!(matches!(err, Error::InvalidClient { .. }), "{err:?}");
    // The right subject, but not from the CA.
    let forged = setup
        .pki
        .self_signed_client("forged", OidcProvider::MTLS_CA_CLIENT.1);
    let err = setup
        .authorizer(&forged)
        .authorize()
        .await
        .expect_err("refused");
    assert!(matches!(err, Error::InvalidClient { .. }), "{err:?}");
    // A certificate of the CA for another subject.
    let other = setup.pki.client("other", "/CN=someone else");
    let err = setup
        .authorizer(&other)
        .authorize()
        .await
        .expect_err("refused");
    assert!(matches!(err, Error::InvalidClient { .. }), "{err:?}");
    assert_eq!(setup.provider.token_requests().await, 3);
    assert_eq!(setup.provider.tokens_issued().await, 0);
}

#[tokio::test]
async fn the_certificate_survives_any_order_of_builder_calls_and_a_custom_client_is_refused() {
    let setup = Setup::start().await;
    let certificate = setup.client_certificate("client");
    let info = || ClientInfo::new(OidcProvider::MTLS_CA_CLIENT.0, "");
    let url = format!("{}/token", setup.front.url());
    let orders: Vec<(&str, ServiceAccountAuthorizer)> = vec![
        (
            "authentication, timeouts, root",
            ServiceAccountAuthorizer::new(info(), &url)
                .with_authentication(tls_client_auth(&certificate))
                .with_timeouts(Duration::from_secs(5), Duration::from_secs(15))
                .with_root_certificate(setup.ca()),
        ),
        (
            "root, timeouts, authentication",
            ServiceAccountAuthorizer::new(info(), &url)
                .with_root_certificate(setup.ca())
                .with_timeouts(Duration::from_secs(5), Duration::from_secs(15))
                .with_authentication(tls_client_auth(&certificate)),
        ),
        (
            "custom client, authentication, root (replaces the custom client)",
            ServiceAccountAuthorizer::new(info(), &url)
                .with_http_client(reqwest::Client::new())
                .with_authentication(tls_client_auth(&certificate))
                .with_root_certificate(setup.ca()),
        ),
    ];
    for (n, (order, sa)) in orders.into_iter().enumerate() {
        let sa = sa.with_audience(OidcProvider::API);
        let token = sa
            .authorize()
            .await
            .unwrap_or_else(|e| panic!("{order}: {e}"));
        assert_eq!(
            bound_to(token.access_token()),
            identity(&certificate).certificate_thumbprint(),
            "{order}"
        );
        assert_eq!(
            setup.provider.tokens_issued().await,
            n as u64 + 1,
            "{order}"
        );
    }
    // A client of one's own cannot be given the certificate: refused before anything is sent,
    // in either order.
    let custom = || {
        reqwest::Client::builder()
            .add_root_certificate(setup.ca())
            .build()
            .expect("client")
    };
    let refused = [
        ServiceAccountAuthorizer::new(info(), &url)
            .with_http_client(custom())
            .with_authentication(tls_client_auth(&certificate)),
        ServiceAccountAuthorizer::new(info(), &url)
            .with_authentication(tls_client_auth(&certificate))
            .with_http_client(custom()),
    ];
    let requests = setup.provider.token_requests().await;
    for sa in refused {
        match sa.authorize().await {
            Err(Error::InvalidConfiguration { reason, .. }) => {
                assert!(reason.contains("with_http_client"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(setup.provider.token_requests().await, requests);
}

#[tokio::test]
async fn a_bound_token_is_accepted_only_from_its_certificate() {
    let setup = Setup::start().await;
    let certificate = setup.client_certificate("client");
    let requests = Arc::new(AtomicU64::new(0));
    let verifier = Verifier::oidc(setup.provider.issuer(), OidcProvider::API);
    let server = TlsServer::start(
        &setup.pki,
        api(
            RequireAuth::new(verifier).certificate_bound(),
            requests.clone(),
        ),
        PeerCertificate::new,
    )
    .await;
    let url = format!("{}/orders", server.url());

    // Through AuthMiddleware's client: it presents the authorizer's certificate.
    let auth = AuthMiddleware::new(setup.authorizer(&certificate));
    let client = auth
        .client_with(|builder| builder.no_proxy().add_root_certificate(setup.ca()))
        .expect("client");
    let response = client.get(&url).send().await.expect("api answers");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.unwrap(),
        format!("orders for {}", OidcProvider::MTLS_CA_CLIENT.0)
    );
    assert_eq!(setup.provider.tokens_issued().await, 1);

    // The same token from a client with another certificate of the CA, or none: refused.
    let token = auth.access_token().await.expect("token");
    let other = setup.client_certificate("other");
    for (who, http) in [
        ("another certificate", http_client(&setup, Some(&other))),
        ("no certificate", http_client(&setup, None)),
    ] {
        let (status, challenge) = get_with(&http, &url, &token, &[]).await;
        assert_eq!(status, 401, "{who}");
        assert!(challenge.contains("invalid_token"), "{who}: {challenge}");
    }
    // With its certificate, from any client: accepted.
    let (status, _) = get_with(&http_client(&setup, Some(&certificate)), &url, &token, &[]).await;
    assert_eq!(status, 200);
    // A header naming the certificate is no certificate: never read unless configured.
    let (status, _) = get_with(
        &http_client(&setup, None),
        &url,
        &token,
        &[("x-client-cert", escaped_pem(&certificate))],
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(requests.load(Ordering::SeqCst), 5);
    // The middleware's token was fetched once.
    assert_eq!(setup.provider.tokens_issued().await, 1);
}

#[tokio::test]
async fn behind_a_tls_terminating_proxy_the_certificate_comes_from_its_header() {
    let setup = Setup::start().await;
    let certificate = setup.client_certificate("client");
    let token = setup
        .authorizer(&certificate)
        .authorize()
        .await
        .expect("a token");
    let token = token.access_token();
    let verifier = || Verifier::oidc(setup.provider.issuer(), OidcProvider::API);
    let requests = Arc::new(AtomicU64::new(0));
    // The API on plain loopback http, behind the front (which sets x-client-cert as nginx's
    // $ssl_client_escaped_cert, replacing the client's own).
    let behind = LoopbackServer::start(api(
        RequireAuth::new(verifier()).certificate_from_header("x-client-cert"),
        requests.clone(),
    ))
    .await
    .expect("api");
    let proxy = MtlsFront::start(&setup.pki, &behind.url("")).await;
    let url = format!("{}/orders", proxy.url());
    let other = setup.client_certificate("other");
    let cases = [
        ("its certificate", Some(&certificate), vec![], 200),
        ("another certificate", Some(&other), vec![], 401),
        ("no certificate", None, vec![], 401),
        (
            "no certificate, the header forged by the client",
            None,
            vec![("x-client-cert", escaped_pem(&certificate))],
            401,
        ),
    ];
    for (who, cert, extra, expected) in cases {
        let (status, _) = get_with(&http_client(&setup, cert), &url, token, &extra).await;
        assert_eq!(status, expected, "{who}");
    }
    assert_eq!(requests.load(Ordering::SeqCst), 4);

    // Without certificate_from_header the header is never read, even from the proxy.
    let unconfigured = LoopbackServer::start(api(
        RequireAuth::new(verifier()).certificate_bound(),
        requests.clone(),
    ))
    .await
    .expect("api");
    let proxy = MtlsFront::start(&setup.pki, &unconfigured.url("")).await;
    let (status, _) = get_with(
        &http_client(&setup, Some(&certificate)),
        &format!("{}/orders", proxy.url()),
        token,
        &[],
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn unbound_tokens_pass_unless_binding_is_required() {
    let setup = Setup::start().await;
    // basic-client's tokens are not certificate-bound.
    let plain = ServiceAccountAuthorizer::new(
        ClientInfo::new(OidcProvider::BASIC_CLIENT.0, OidcProvider::BASIC_CLIENT.1),
        setup.provider.token_url(),
    )
    .with_audience(OidcProvider::API)
    .authorize()
    .await
    .expect("a token");
    assert!(claims_of(plain.access_token()).get("cnf").is_none());
    let verifier = || Verifier::oidc(setup.provider.issuer(), OidcProvider::API);
    let requests = Arc::new(AtomicU64::new(0));
    let lenient = TlsServer::start(
        &setup.pki,
        api(
            RequireAuth::new(verifier()).certificate_bound(),
            requests.clone(),
        ),
        PeerCertificate::new,
    )
    .await;
    let strict = TlsServer::start(
        &setup.pki,
        api(
            RequireAuth::new(verifier())
                .certificate_bound()
                .require_certificate_binding(),
            requests.clone(),
        ),
        PeerCertificate::new,
    )
    .await;
    let certificate = setup.client_certificate("client");
    let http = http_client(&setup, Some(&certificate));
    let lenient_url = format!("{}/orders", lenient.url());
    let strict_url = format!("{}/orders", strict.url());
    let (status, _) = get_with(&http, &lenient_url, plain.access_token(), &[]).await;
    assert_eq!(status, 200);
    let (status, challenge) = get_with(&http, &strict_url, plain.access_token(), &[]).await;
    assert_eq!(status, 401);
    assert!(challenge.contains("invalid_token"), "{challenge}");
    // A bound token passes the strict route with its certificate.
    let bound = setup
        .authorizer(&certificate)
        .authorize()
        .await
        .expect("a token");
    let (status, _) = get_with(&http, &strict_url, bound.access_token(), &[]).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_password_grant_authenticates_the_client_with_its_certificate() {
    let setup = Setup::start().await;
    let certificate = setup.client_certificate("client");
    let token_url = format!("{}/token", setup.front.url());
    let login = |authentication: ClientAuthentication| {
        PasswordAuthorizer::new(
            ClientInfo::new(OidcProvider::MTLS_CA_CLIENT.0, ""),
            UserCredentials::new(OidcProvider::USER.0, OidcProvider::USER.1),
            &token_url,
        )
        .with_scopes(["openid", "offline_access"])
        .with_authentication(authentication)
        .with_root_certificate(setup.ca())
    };
    let pw = login(tls_client_auth(&certificate));
    assert!(pw.tls_client_identity().is_some());
    pw.authorize().await.expect("logged in");
    assert_eq!(setup.provider.grants("password").await, 1);
    assert_eq!(setup.provider.tokens_issued().await, 1);
    // Without the certificate the provider refuses the client.
    let err = login(ClientAuthentication::ClientSecretPost)
        .authorize()
        .await
        .expect_err("refused");
    assert!(matches!(err, Error::InvalidClient { .. }), "{err:?}");
    assert_eq!(setup.provider.grants("password").await, 2);
    assert_eq!(setup.provider.tokens_issued().await, 1);
}

#[tokio::test]
async fn the_private_key_never_appears_in_debug_or_errors() {
    let pki = TestPki::create();
    let certificate = pki.client("client", "/CN=secretive");
    let wrong_key = pki.client("wrong", "/CN=wrong");
    // The keys' base64 bodies, line by line: none may appear anywhere.
    let key_text = [&certificate, &wrong_key]
        .map(|c| String::from_utf8(c.key_pem.clone()).unwrap())
        .join("\n");
    let key_lines: Vec<&str> = key_text
        .lines()
        .filter(|line| !line.starts_with("-----") && line.len() > 16)
        .collect();
    assert!(key_lines.len() >= 2);
    let authentication = tls_client_auth(&certificate);
    let sa = ServiceAccountAuthorizer::new(ClientInfo::new("svc", ""), "https://127.0.0.1:9/token")
        .with_authentication(authentication.clone());
    let auth = AuthMiddleware::new(
        ServiceAccountAuthorizer::new(ClientInfo::new("svc", ""), "https://127.0.0.1:9/token")
            .with_authentication(authentication.clone()),
    );
    let mismatched = TlsClientIdentity::from_pem(&certificate.cert_pem, b"-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n")
        .expect_err("not a key");
    let swapped = TlsClientIdentity::from_pem(&certificate.cert_pem, &wrong_key.key_pem)
        .expect_err("not the certificate's key");
    let shown = [
        format!("{authentication:?}"),
        format!("{sa:?}"),
        format!("{auth:?}"),
        format!("{:?}", identity(&certificate)),
        format!("{certificate:?}"),
        format!("{mismatched} {mismatched:?}"),
        format!("{swapped} {swapped:?}"),
        format!("{:?}", PeerCertificate::new(certificate.der())),
    ];
    for text in &shown {
        for line in &key_lines {
            assert!(!text.contains(line), "the key leaked: {text}");
        }
    }
    assert!(shown[0].contains("REDACTED"), "{}", shown[0]);
    assert!(
        shown[3].contains(identity(&certificate).certificate_thumbprint()),
        "{}",
        shown[3]
    );
}

#[tokio::test]
async fn a_bound_token_is_refused_where_no_certificate_is_read() {
    let setup = Setup::start().await;
    let certificate = setup.client_certificate("client");
    let bound = setup
        .authorizer(&certificate)
        .authorize()
        .await
        .expect("a token");
    let bound = bound.access_token();
    let unbound = ServiceAccountAuthorizer::new(
        ClientInfo::new(OidcProvider::BASIC_CLIENT.0, OidcProvider::BASIC_CLIENT.1),
        setup.provider.token_url(),
    )
    .with_audience(OidcProvider::API)
    .authorize()
    .await
    .expect("a token");
    let unbound = unbound.access_token();
    let verifier = || Verifier::oidc(setup.provider.issuer(), OidcProvider::API);
    let requests = Arc::new(AtomicU64::new(0));
    let route = |layer: RequireAuth| get(orders).layer(layer);
    let app = Router::new()
        // No certificate source: a bound token is refused, as a DPoP-bound one would be.
        .route("/plain", route(RequireAuth::new(verifier())))
        .route(
            "/opted-out",
            route(RequireAuth::new(verifier()).accept_certificate_bound_as_bearer()),
        )
        // Alone, the same as after certificate_bound(): the TLS layer's certificate.
        .route(
            "/binding-required",
            route(RequireAuth::new(verifier()).require_certificate_binding()),
        )
        .route(
            "/bad-header-name",
            route(RequireAuth::new(verifier()).certificate_from_header("x client cert")),
        )
        .layer(from_fn({
            let requests = requests.clone();
            move |request: Request, next: Next| {
                requests.fetch_add(1, Ordering::SeqCst);
                next.run(request)
            }
        }));
    let server = TlsServer::start(&setup.pki, app, PeerCertificate::new).await;
    let url = |path: &str| format!("{}{path}", server.url());
    let mine = http_client(&setup, Some(&certificate));
    let other = http_client(&setup, Some(&setup.client_certificate("other")));
    let none = http_client(&setup, None);
    let cases = [
        ("/plain", &mine, bound, 401),
        ("/plain", &none, bound, 401),
        ("/plain", &mine, unbound, 200),
        ("/opted-out", &none, bound, 200),
        ("/opted-out", &other, bound, 200),
        ("/binding-required", &mine, bound, 200),
        ("/binding-required", &other, bound, 401),
        ("/binding-required", &none, bound, 401),
        ("/binding-required", &mine, unbound, 401),
        // An invalid header name: 503 for a valid token, 401 first for a bad one.
        ("/bad-header-name", &mine, bound, 503),
        ("/bad-header-name", &mine, unbound, 503),
        ("/bad-header-name", &mine, "not-a-token", 401),
    ];
    for (n, (path, http, token, expected)) in cases.iter().enumerate() {
        let (status, challenge) = get_with(http, &url(path), token, &[]).await;
        assert_eq!(status, *expected, "case {n}: {path}");
        if *expected == 401 {
            assert!(challenge.contains("invalid_token"), "{path}: {challenge}");
        }
    }
    // No token at all on the misconfigured route: 401, not 503.
    let response = mine
        .get(url("/bad-header-name"))
        .send()
        .await
        .expect("api answers");
    assert_eq!(response.status(), 401);
    assert_eq!(requests.load(Ordering::SeqCst), cases.len() as u64 + 1);
}

#[tokio::test]
async fn a_client_sending_its_chain_is_bound_to_and_checked_by_its_leaf() {
    let setup = Setup::start().await;
    let chained = setup
        .pki
        .client_via_intermediate("chained", OidcProvider::MTLS_CA_CLIENT.1);
    assert_eq!(
        chained
            .cert_pem
            .windows(27)
            .filter(|w| w == b"-----BEGIN CERTIFICATE-----")
            .count(),
        2,
        "leaf and intermediate"
    );
    // CertifiedKey::der is the first certificate of the PEM: the leaf.
    let leaf = PeerCertificate::new(chained.der()).thumbprint();
    assert_eq!(identity(&chained).certificate_thumbprint(), leaf);
    let token = setup
        .authorizer(&chained)
        .authorize()
        .await
        .expect("a token");
    assert_eq!(bound_to(token.access_token()), leaf);
    let requests = Arc::new(AtomicU64::new(0));
    let verifier = Verifier::oidc(setup.provider.issuer(), OidcProvider::API);
    let server = TlsServer::start(
        &setup.pki,
        api(
            RequireAuth::new(verifier).certificate_bound(),
            requests.clone(),
        ),
        PeerCertificate::new,
    )
    .await;
    let url = format!("{}/orders", server.url());
    // The client sends leaf and intermediate; the server hands on the leaf.
    let (status, _) = get_with(
        &http_client(&setup, Some(&chained)),
        &url,
        token.access_token(),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}

/// A token bound both to a DPoP key (`cnf.jkt`) and to a client certificate
/// (`cnf.x5t#S256`): no provider issues one (oidc-provider refuses two proof-of-possession
/// mechanisms), so the test signs it with an HS256 secret the API's verifier shares.
#[tokio::test]
async fn a_dpop_route_checks_the_certificate_binding_too() {
    const SECRET: &[u8] = b"a shared HS256 secret of the test, 32+ bytes";
    const ISSUER: &str = "https://issuer.test/";
    let pki = TestPki::create();
    let certificate = pki.client("client", "/CN=client");
    let other = pki.client("other", "/CN=other");
    let key = en_auth_oauth2::DpopKey::generate().expect("a DPoP key");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": ISSUER, "aud": OidcProvider::API, "sub": "svc", "client_id": "svc",
        "iat": now, "exp": now + 300,
        "cnf": {
            "jkt": key.thumbprint(),
            "x5t#S256": PeerCertificate::new(certificate.der()).thumbprint(),
        },
    });
    // Both jsonwebtoken backends are on in workspace builds (`backend-clash`): this test's own
    // `encode` needs a process default.
    let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
        &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
    );
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .expect("a token");
    let verifier = || {
        Verifier::hs256(SECRET)
            .with_issuer(ISSUER)
            .with_audience(OidcProvider::API)
    };
    let requests = Arc::new(AtomicU64::new(0));
    let route = |layer: RequireAuth| get(orders).layer(layer);
    let app = Router::new()
        .route(
            "/both",
            route(RequireAuth::new(verifier()).dpop().certificate_bound()),
        )
        .route("/dpop-only", route(RequireAuth::new(verifier()).dpop()))
        .route(
            "/dpop-opted-out",
            route(
                RequireAuth::new(verifier())
                    .dpop()
                    .accept_certificate_bound_as_bearer(),
            ),
        )
        .layer(from_fn({
            let requests = requests.clone();
            move |request: Request, next: Next| {
                requests.fetch_add(1, Ordering::SeqCst);
                next.run(request)
            }
        }));
    let server = TlsServer::start(&pki, app, PeerCertificate::new).await;
    let ca = reqwest::Certificate::from_pem(pki.ca_pem()).expect("CA PEM");
    let client = |cert: Option<&CertifiedKey>| {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .add_root_certificate(ca.clone());
        if let Some(cert) = cert {
            builder = builder.identity(identity(cert).reqwest_identity());
        }
        builder.build().expect("client")
    };
    let cases = [
        ("/both", Some(&certificate), 200),
        ("/both", Some(&other), 401),
        ("/both", None, 401),
        // No certificate source on the route: the certificate binding cannot be checked.
        ("/dpop-only", Some(&certificate), 401),
        ("/dpop-opted-out", None, 200),
    ];
    for (n, (path, cert, expected)) in cases.iter().enumerate() {
        let url = format!("{}{path}", server.url());
        let proof = key.proof("GET", &url, Some(&token), None).expect("a proof");
        let response = client(*cert)
            .get(&url)
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", proof)
            .send()
            .await
            .expect("api answers");
        assert_eq!(response.status(), *expected, "case {n}: {path}");
        if *expected == 401 {
            let challenge = response.headers()["www-authenticate"].to_str().unwrap();
            assert!(challenge.contains("invalid_token"), "{path}: {challenge}");
        }
    }
    assert_eq!(requests.load(Ordering::SeqCst), cases.len() as u64);
}

/// Set in the child process [`auth_middleware_client_presents_the_certificate`] starts: the
/// file `SSL_CERT_FILE` names, which the child fills with its test CA.
const CHILD_CA_FILE: &str = "EN_AUTH_TEST_CHILD_CA_FILE";

/// `AuthMiddleware::client()` itself (no `client_with` to add the test CA): it trusts the
/// system's CA certificates, so the test runs in a child process (this test binary, running
/// this test alone) whose `SSL_CERT_FILE` names a file the child fills with its throw-away CA
/// before building the client; the environment of this process is left alone.
#[tokio::test]
async fn auth_middleware_client_presents_the_certificate() {
    if let Some(ca_file) = std::env::var_os(CHILD_CA_FILE) {
        let setup = Setup::start().await;
        std::fs::write(&ca_file, setup.pki.ca_pem()).expect("CA file");
        let certificate = setup.client_certificate("client");
        let verifier = Verifier::oidc(setup.provider.issuer(), OidcProvider::API);
        let requests = Arc::new(AtomicU64::new(0));
        let server = TlsServer::start(
            &setup.pki,
            api(
                RequireAuth::new(verifier).certificate_bound(),
                requests.clone(),
            ),
            PeerCertificate::new,
        )
        .await;
        let auth = AuthMiddleware::new(setup.authorizer(&certificate));
        let client = auth.client().expect("client");
        let response = client
            .get(format!("{}/orders", server.url()))
            .send()
            .await
            .expect("api answers");
        assert_eq!(response.status(), 200);
        assert_eq!(requests.load(Ordering::SeqCst), 1);
        assert_eq!(setup.provider.tokens_issued().await, 1);
        return;
    }
    let dir = std::env::temp_dir().join(format!("en-auth-client-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary folder");
    // Until the child writes its own: any CA, for the plain clients it builds before (a
    // system without CA certificates fails every reqwest::Client::new()).
    std::fs::write(dir.join("ca.pem"), TestPki::create().ca_pem()).expect("CA file");
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"));
    child
        .args([
            "--exact",
            "auth_middleware_client_presents_the_certificate",
            "--nocapture",
        ])
        .env(CHILD_CA_FILE, dir.join("ca.pem"))
        .env("SSL_CERT_FILE", dir.join("ca.pem"))
        .env("SSL_CERT_DIR", &dir);
    for proxy in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
        child.env_remove(proxy).env_remove(proxy.to_lowercase());
    }
    let output = tokio::task::spawn_blocking(move || child.output())
        .await
        .expect("joined")
        .expect("the test binary runs");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
