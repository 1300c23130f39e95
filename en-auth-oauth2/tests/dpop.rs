//! DPoP on the client side against panva's `oidc-provider`: the private key stays out of every
//! `Debug`, error and TRACE output; the cache key tells DPoP keys apart.

use base64::Engine;
use en_auth_core::{AuthMiddleware, Authorizer, ClientInfo};
use en_auth_oauth2::{DpopKey, ServiceAccountAuthorizer};
use en_auth_testkit::OidcProvider;

/// A P-256 key made with `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`
/// for this test only.
const PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQggUl/4NRkHEH/12n8
idVRr3RIl8NhXHOnOPf0QnO8f0ChRANCAARfxHJq3HH6hNZBau23Y3Gd0pa2vg5S
GgId0sbgP9TTTKmzvwK73Fq88XA0ywZp4ILDrze1lA6INCK2XfibxmEi
-----END PRIVATE KEY-----
";
/// Its private scalar, as `openssl ec -text` prints it.
const PRIVATE_HEX: &str = "81497fe0d4641c41ffd769fc89d551af744897c3615c73a738f7f44273bc7f40";

/// Every form the private key could leak in.
fn private_forms() -> Vec<String> {
    let bytes: Vec<u8> = (0..PRIVATE_HEX.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&PRIVATE_HEX[i..i + 2], 16).unwrap())
        .collect();
    let mut forms = vec![
        PRIVATE_HEX.to_owned(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes),
        base64::engine::general_purpose::STANDARD.encode(&bytes),
    ];
    forms.extend(PEM.lines().skip(1).take(3).map(|l| l[..40].to_owned()));
    forms
}

#[tokio::test]
async fn the_dpop_private_key_appears_in_no_debug_error_or_trace_output() {
    let provider = OidcProvider::start(600).await;
    let (captured, _guard) = en_auth_testkit::capture_traces();

    let key = DpopKey::from_pkcs8_pem(PEM).unwrap();
    let (id, secret) = OidcProvider::DPOP_CLIENT;
    let sa = ServiceAccountAuthorizer::new(ClientInfo::new(id, secret), provider.token_url())
        .with_audience(OidcProvider::API)
        .with_dpop_key(key.clone());
    let mut outputs = vec![format!("{sa:?}"), format!("{key:?}")];
    let auth = AuthMiddleware::new(sa);
    auth.access_token().await.expect("a DPoP-bound token");

    let wrong = ServiceAccountAuthorizer::new(ClientInfo::new(id, "wrong"), provider.token_url())
        .with_dpop_key(key.clone());
    let err = wrong.authorize().await.expect_err("wrong secret");
    outputs.push(format!("{err} {err:?}"));
    let bad_pem = DpopKey::from_pkcs8_pem(&PEM.replace("MIGH", "MIGX")).expect_err("bad PEM");
    outputs.push(format!("{bad_pem} {bad_pem:?}"));
    outputs.push(captured.text());

    assert!(outputs[0].contains(key.thumbprint()), "{}", outputs[0]);
    assert!(
        outputs[4].contains("en_auth.token_request"),
        "TRACE output was captured"
    );
    for output in &outputs {
        for form in private_forms() {
            assert!(!output.contains(&form), "private key ({form}) in {output}");
        }
    }
}

#[test]
fn the_cache_key_covers_dpop_and_its_key() {
    let sa = || ServiceAccountAuthorizer::new(ClientInfo::new("c", "s"), "https://idp.test/token");
    let key = DpopKey::from_pkcs8_pem(PEM).unwrap();
    let plain = sa().cache_key();
    let with_key = sa().with_dpop_key(key.clone()).cache_key();
    let same_key = sa().with_dpop_key(key).cache_key();
    let fresh = sa().with_dpop().cache_key();
    assert_ne!(plain, with_key);
    assert_ne!(with_key, fresh);
    assert_eq!(with_key, same_key);
}
