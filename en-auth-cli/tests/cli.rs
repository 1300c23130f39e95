//! The built `en-auth` binary against panva's `oidc-provider` on loopback.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use en_auth_testkit::OidcProvider;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::Value;

/// `en-auth` with no EN_AUTH_* variables from the outside, plus `vars`.
fn en_auth(args: &[&str], vars: &[(&str, String)], stdin: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_en-auth"));
    command.args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("EN_AUTH_") {
            command.env_remove(name);
        }
    }
    command.envs(vars.iter().map(|(k, v)| (*k, v.as_str())));
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("the binary runs");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn client_vars(provider: &OidcProvider) -> Vec<(&'static str, String)> {
    vec![
        ("EN_AUTH_CLIENT_ID", OidcProvider::BASIC_CLIENT.0.to_owned()),
        (
            "EN_AUTH_CLIENT_SECRET",
            OidcProvider::BASIC_CLIENT.1.to_owned(),
        ),
        ("EN_AUTH_TOKEN_URL", provider.token_url()),
        ("EN_AUTH_AUDIENCE", OidcProvider::API.to_owned()),
        ("EN_AUTH_SCOPES", "read:data write:data".to_owned()),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn token_prints_claims_and_raw_prints_exactly_the_token() {
    let provider = OidcProvider::start(600).await;
    let vars = client_vars(&provider);

    let shown = en_auth(&["token"], &vars, None);
    let stdout = text(&shown.stdout);
    assert!(shown.status.success(), "{stdout}{}", text(&shown.stderr));
    assert!(stdout.contains("WITHOUT verifying"), "{stdout}");
    assert!(
        stdout.contains("\"client_id\": \"basic-client\""),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("\"aud\": \"{}\"", OidcProvider::API)),
        "{stdout}"
    );
    assert!(stdout.contains("Scopes: read:data write:data"), "{stdout}");
    assert!(stdout.contains("Expires in: "), "{stdout}");
    assert!(
        !stdout.contains("eyJ"),
        "no token (nor any base64 JSON) is printed: {stdout}"
    );
    assert!(!stdout.contains(OidcProvider::BASIC_CLIENT.1), "{stdout}");

    let raw = en_auth(&["token", "--raw"], &vars, None);
    assert!(raw.status.success(), "{}", text(&raw.stderr));
    let token = text(&raw.stdout);
    // Exactly the token: no newline when piped, and it verifies as the provider's JWT.
    assert_eq!(token.trim(), token);
    let jwks: JwkSet = reqwest::get(provider.jwks_url())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // This test's own jsonwebtoken calls go through the process default: name it, since the
    // workspace build also enables the rust_crypto backend (tests/backend-clash).
    let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
        &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
    );
    let kid = decode_header(&token).unwrap().kid.unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[OidcProvider::API]);
    let claims = decode::<Value>(
        &token,
        &DecodingKey::from_jwk(jwks.find(&kid).unwrap()).unwrap(),
        &validation,
    )
    .unwrap()
    .claims;
    assert_eq!(claims["client_id"], "basic-client");
    assert!(!stdout.contains(&token));

    let json = en_auth(&["token", "--json"], &vars, None);
    let parsed: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(parsed["verified"], false);
    assert_eq!(parsed["claims"]["client_id"], "basic-client");
    assert_eq!(
        parsed["scopes"],
        serde_json::json!(["read:data", "write:data"])
    );
    assert!(parsed["expires_in"].as_i64().unwrap() > 500);
    assert!(!text(&json.stdout).contains("eyJ"));
    assert_eq!(provider.tokens_issued().await, 3);

    // private_key_jwt from the command line: no secret anywhere.
    let key_file =
        std::env::temp_dir().join(format!("en-auth-cli-test-{}.pem", std::process::id()));
    std::fs::write(&key_file, provider.client_key("ec").await).unwrap();
    let with_key = en_auth(
        &[
            "token",
            "--json",
            "--private-key",
            key_file.to_str().unwrap(),
            "--key-id",
            "ec-1",
        ],
        &[
            (
                "EN_AUTH_CLIENT_ID",
                OidcProvider::EC_KEY_CLIENT.0.to_owned(),
            ),
            ("EN_AUTH_TOKEN_URL", provider.token_url()),
            ("EN_AUTH_AUDIENCE", OidcProvider::API.to_owned()),
        ],
        None,
    );
    let _ = std::fs::remove_file(&key_file);
    assert!(with_key.status.success(), "{}", text(&with_key.stderr));
    let parsed: Value = serde_json::from_slice(&with_key.stdout).unwrap();
    assert_eq!(parsed["claims"]["client_id"], OidcProvider::EC_KEY_CLIENT.0);
    assert_eq!(provider.client_assertions().await.len(), 1);

    // A JWK file carries its own kid.
    let jwk_file =
        std::env::temp_dir().join(format!("en-auth-cli-test-{}.jwk", std::process::id()));
    std::fs::write(&jwk_file, provider.client_key("ec_jwk").await).unwrap();
    let with_jwk = en_auth(
        &[
            "token",
            "--json",
            "--private-key",
            jwk_file.to_str().unwrap(),
        ],
        &[
            (
                "EN_AUTH_CLIENT_ID",
                OidcProvider::EC_KEY_CLIENT.0.to_owned(),
            ),
            ("EN_AUTH_TOKEN_URL", provider.token_url()),
            ("EN_AUTH_AUDIENCE", OidcProvider::API.to_owned()),
        ],
        None,
    );
    let _ = std::fs::remove_file(&jwk_file);
    assert!(with_jwk.status.success(), "{}", text(&with_jwk.stderr));
    assert_eq!(provider.client_assertions().await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_accepts_a_good_token_and_explains_a_bad_one() {
    let provider = OidcProvider::start(600).await;
    let raw = en_auth(&["token", "--raw"], &client_vars(&provider), None);
    let token = text(&raw.stdout);
    let issuer = provider.issuer();
    let check = ["--issuer", issuer.as_str(), "--audience", OidcProvider::API];

    let good = en_auth(
        &[&["verify", token.as_str()][..], &check].concat(),
        &[],
        None,
    );
    let stdout = text(&good.stdout);
    assert!(good.status.success(), "{stdout}{}", text(&good.stderr));
    assert!(stdout.starts_with("valid\n"), "{stdout}");
    assert!(stdout.contains("client: basic-client"), "{stdout}");

    // From standard input, as JSON.
    let piped = en_auth(
        &[&["verify", "-", "--json"][..], &check].concat(),
        &[],
        Some(&token),
    );
    let parsed: Value = serde_json::from_slice(&piped.stdout).unwrap();
    assert_eq!(parsed["valid"], true, "{parsed}");

    // A changed signature.
    let mut tampered = token.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let bad = en_auth(
        &[&["verify", tampered.as_str()][..], &check].concat(),
        &[],
        None,
    );
    let stdout = text(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "{stdout}");
    assert!(stdout.starts_with("invalid: "), "{stdout}");
    assert!(stdout.to_lowercase().contains("signature"), "{stdout}");

    // Another audience.
    let other = en_auth(
        &[
            "verify",
            &token,
            "--issuer",
            &issuer,
            "--audience",
            "https://other.example.com",
        ],
        &[],
        None,
    );
    let stdout = text(&other.stdout);
    assert_eq!(other.status.code(), Some(1), "{stdout}");
    assert!(stdout.to_lowercase().contains("aud"), "{stdout}");

    // Not a JWT at all.
    let garbage = en_auth(
        &[&["verify", "not-a-token", "--json"][..], &check].concat(),
        &[],
        None,
    );
    let parsed: Value = serde_json::from_slice(&garbage.stdout).unwrap();
    assert_eq!(parsed["valid"], false);
    assert!(
        parsed["reason"].as_str().unwrap().contains("malformed"),
        "{parsed}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn discover_prints_the_endpoints() {
    let provider = OidcProvider::start(600).await;
    let out = en_auth(&["discover", &provider.issuer()], &[], None);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("token_endpoint"), "{stdout}");
    assert!(stdout.contains(&provider.token_url()), "{stdout}");
    let json = en_auth(&["discover", &provider.issuer(), "--json"], &[], None);
    let parsed: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(parsed["jwks_uri"], provider.jwks_url().as_str());
}

#[test]
fn a_missing_variable_is_one_line_naming_it_and_a_failure_status() {
    let out = en_auth(&["token"], &[], None);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("EN_AUTH_CLIENT_ID"), "{stderr}");

    let out = en_auth(
        &["token"],
        &[
            ("EN_AUTH_CLIENT_ID", "svc".into()),
            ("EN_AUTH_CLIENT_SECRET", "s3cret-value".into()),
        ],
        None,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("EN_AUTH_TOKEN_URL"), "{stderr}");
    assert!(!stderr.contains("s3cret-value"));
}

#[test]
fn help_lists_every_command_and_hides_secret_values() {
    let out = en_auth(&["--help"], &[], None);
    let help = text(&out.stdout);
    for command in ["token", "verify", "discover"] {
        assert!(help.contains(command), "{help}");
    }
    let out = en_auth(
        &["token", "--help"],
        &[("EN_AUTH_CLIENT_SECRET", "s3cret-value".into())],
        None,
    );
    let help = text(&out.stdout);
    assert!(
        help.contains("EN_AUTH_CLIENT_SECRET") && help.contains("--raw"),
        "{help}"
    );
    assert!(!help.contains("s3cret-value"), "{help}");
}
