//! The full Cognito flow against moto's emulator (it does not check the SRP maths, but it
//! speaks the real AWS protocol, hands out real-looking JWTs and enforces pool settings).

use aws_sdk_cognitoidentityprovider::Client;
use aws_sdk_cognitoidentityprovider::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_cognitoidentityprovider::types::{ExplicitAuthFlowsType, MessageActionType};
use en_auth_core::{AccessToken, AuthMiddleware, Authorizer, ClientInfo, Error, UserCredentials};
use en_auth_srp::SrpAuthorizer;
use en_auth_testkit::MotoServer;

/// An admin client for setting pools up (moto accepts any credentials).
fn admin(moto: &MotoServer) -> Client {
    let config = aws_sdk_cognitoidentityprovider::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(moto.endpoint())
        .credentials_provider(Credentials::new("test", "test", None, None, "moto"))
        .build();
    Client::from_conf(config)
}

struct Pool {
    id: String,
    client_id: String,
    client_secret: Option<String>,
}

async fn pool(admin: &Client, with_secret: bool) -> Pool {
    let created = admin
        .create_user_pool()
        .pool_name("en-auth-test")
        .send()
        .await
        .unwrap();
    let id = created.user_pool().and_then(|p| p.id()).unwrap().to_owned();
    let client = admin
        .create_user_pool_client()
        .user_pool_id(&id)
        .client_name("srp-client")
        .generate_secret(with_secret)
        .explicit_auth_flows(ExplicitAuthFlowsType::AllowUserSrpAuth)
        .explicit_auth_flows(ExplicitAuthFlowsType::AllowRefreshTokenAuth)
        .send()
        .await
        .unwrap();
    let client = client.user_pool_client().unwrap();
    Pool {
        id,
        client_id: client.client_id().unwrap().to_owned(),
        client_secret: client.client_secret().map(str::to_owned),
    }
}

async fn user(admin: &Client, pool: &Pool, name: &str, password: &str, permanent: bool) {
    admin
        .admin_create_user()
        .user_pool_id(&pool.id)
        .username(name)
        .temporary_password(password)
        .message_action(MessageActionType::Suppress)
        .send()
        .await
        .unwrap();
    if permanent {
        admin
            .admin_set_user_password()
            .user_pool_id(&pool.id)
            .username(name)
            .password(password)
            .permanent(true)
            .send()
            .await
            .unwrap();
    }
}

fn authorizer(moto: &MotoServer, pool: &Pool, name: &str, password: &str) -> SrpAuthorizer {
    let info = ClientInfo::new(
        &pool.client_id,
        pool.client_secret.clone().unwrap_or_default(),
    );
    SrpAuthorizer::new(info, UserCredentials::new(name, password), &pool.id)
        .unwrap()
        .with_endpoint_url(moto.endpoint())
}

fn claims(jwt: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn full_flow_with_and_without_a_client_secret_and_refresh() {
    let moto = MotoServer::start().await;
    let admin = admin(&moto);
    for with_secret in [false, true] {
        let pool = pool(&admin, with_secret).await;
        assert_eq!(pool.client_secret.is_some(), with_secret);
        user(&admin, &pool, "alice", "Passw0rd!-alice", true).await;
        let srp = authorizer(&moto, &pool, "alice", "Passw0rd!-alice");

        let tokens = srp
            .authorize()
            .await
            .unwrap_or_else(|e| panic!("secret={with_secret}: {e}"));
        let access = claims(tokens.access_token());
        assert_eq!(access["token_use"], "access");
        assert_eq!(access["client_id"], pool.client_id.as_str());
        assert!(tokens.refresh_token().is_some());
        assert_eq!(tokens.username(), access["username"].as_str());

        let refreshed = srp
            .refresh(&tokens)
            .await
            .unwrap_or_else(|e| panic!("refresh, secret={with_secret}: {e}"));
        assert_eq!(claims(refreshed.access_token())["token_use"], "access");
        assert!(refreshed.refresh_token().is_some());
    }
}

#[tokio::test]
async fn a_temporary_password_surfaces_new_password_required() {
    let moto = MotoServer::start().await;
    let admin = admin(&moto);
    let pool = pool(&admin, false).await;
    user(&admin, &pool, "newbie", "Temp0rary!pw", false).await;
    let err = authorizer(&moto, &pool, "newbie", "Temp0rary!pw")
        .authorize()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedChallenge { ref challenge } if challenge == "NEW_PASSWORD_REQUIRED"),
        "{err:?}"
    );
}

#[tokio::test]
async fn unknown_users_are_invalid_credentials() {
    let moto = MotoServer::start().await;
    let admin = admin(&moto);
    let pool = pool(&admin, false).await;
    let err = authorizer(&moto, &pool, "nobody", "Whatever1!")
        .authorize()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidCredentials), "{err:?}");
}

#[tokio::test]
async fn the_middleware_authorizes_with_moto_tokens() {
    let moto = MotoServer::start().await;
    let admin = admin(&moto);
    let pool = pool(&admin, true).await;
    user(&admin, &pool, "svc", "Serv1ce!pw", true).await;
    let auth = AuthMiddleware::new(authorizer(&moto, &pool, "svc", "Serv1ce!pw"));
    let token = auth.access_token().await.unwrap();
    assert_eq!(claims(&token)["username"], "svc");
    assert_eq!(auth.access_token().await.unwrap(), token, "cached");
    assert_eq!(auth.stats().authorizations, 1);
}

#[tokio::test]
async fn moto_access_tokens_verify_with_the_cognito_preset_and_moto_jwks() {
    let moto = MotoServer::start().await;
    let admin = admin(&moto);
    let pool = pool(&admin, false).await;
    user(&admin, &pool, "dave", "Dave-Pa55!", true).await;
    let tokens = authorizer(&moto, &pool, "dave", "Dave-Pa55!")
        .authorize()
        .await
        .unwrap();

    let jwks = format!("{}/{}/.well-known/jwks.json", moto.endpoint(), pool.id);
    let verifier = en_auth_verify::Verifier::cognito("us-east-1", &pool.id, &pool.client_id)
        .with_jwks_url(&jwks);
    let verified = verifier
        .verify(tokens.access_token())
        .await
        .expect("moto's access token verifies");
    assert_eq!(verified.token_use.as_deref(), Some("access"));
    assert_eq!(verified.client_id.as_deref(), Some(pool.client_id.as_str()));

    // The ID token is not an access token; another app client's verifier refuses it too.
    let id_token = secrecy::ExposeSecret::expose_secret(tokens.id_token().unwrap()).to_owned();
    assert!(verifier.verify(&id_token).await.is_err());
    let other = en_auth_verify::Verifier::cognito("us-east-1", &pool.id, "another-client")
        .with_jwks_url(&jwks);
    assert!(other.verify(tokens.access_token()).await.is_err());
}
