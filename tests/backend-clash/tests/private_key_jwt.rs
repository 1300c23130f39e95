//! `private_key_jwt` keys work in an application that enables both jsonwebtoken backends and
//! installs none: en-auth-oauth2 signs and derives thumbprints with the backend it was built
//! with, never through jsonwebtoken's process default (which cannot choose and panics).

use en_auth_oauth2::ClientAuthentication;

#[test]
fn keys_are_read_and_thumbprinted_with_both_backends_enabled_and_none_installed() {
    for pem in [
        include_bytes!("../../../en-auth-verify/tests/fixtures/ec.pem").as_slice(),
        include_bytes!("../../../en-auth-verify/tests/fixtures/rsa.pem").as_slice(),
    ] {
        let auth = ClientAuthentication::private_key_jwt_pem(pem, "key-1")
            .expect("the key is read and its public half derived");
        let shown = format!("{auth:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    }
}
