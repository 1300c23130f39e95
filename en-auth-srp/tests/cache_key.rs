//! The SRP cache key: who the user is, never their password.

use en_auth_core::{Authorizer, ClientInfo, UserCredentials};
use en_auth_srp::SrpAuthorizer;

fn authorizer(secret: &str, user: &str, password: &str) -> SrpAuthorizer {
    SrpAuthorizer::new(
        ClientInfo::new("app-client", secret),
        UserCredentials::new(user, password),
        "us-east-1_AbC123",
    )
    .unwrap()
}

#[tokio::test]
async fn the_cache_key_leaves_the_password_out_and_keys_the_client_secret() {
    let key = authorizer("s1", "alice", "hunter2").cache_key();
    assert_eq!(
        key,
        authorizer("s1", "alice", "a new password").cache_key(),
        "a password change does not change who the user is"
    );
    assert_ne!(key, authorizer("s2", "alice", "hunter2").cache_key());
    assert_ne!(key, authorizer("s1", "bob", "hunter2").cache_key());
    assert!(!key.as_str().contains("hunter2") && !key.as_str().contains("s1"));
}
