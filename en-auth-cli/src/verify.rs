//! `en-auth verify`: the verdict on a token, and the reason when it is refused.

use std::io::Read;
use std::process::ExitCode;

use chrono::Utc;
use en_auth_core::{CONNECT_TIMEOUT, Error, REQUEST_TIMEOUT, discover, provider_http_client};
use en_auth_verify::Verifier;
use serde_json::json;

use crate::cli::VerifyArgs;
use crate::decode::{decode_unverified, scopes};

/// Verifies the token `args` name; exit status 0 when valid, 1 when not.
pub async fn run(args: VerifyArgs) -> Result<ExitCode, String> {
    let token = if args.token == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read the token from standard input: {e}"))?;
        text.trim().to_owned()
    } else {
        args.token.trim().to_owned()
    };
    let token = token.strip_prefix("Bearer ").unwrap_or(&token).to_owned();
    let jwks_url = match (&args.jwks_url, &args.issuer) {
        (Some(url), _) => url.clone(),
        (None, Some(issuer)) => {
            let http = provider_http_client(CONNECT_TIMEOUT, REQUEST_TIMEOUT);
            let config = discover(&http, issuer).await.map_err(|e| e.to_string())?;
            config.jwks_uri.ok_or_else(|| {
                "the issuer's discovery document has no jwks_uri; pass --jwks-url".to_owned()
            })?
        }
        (None, None) => {
            return Err(
                "say whose tokens to accept: pass --issuer (the JWKS is discovered) \
                        or --jwks-url"
                    .into(),
            );
        }
    };
    let mut verifier = Verifier::jwks(jwks_url);
    if let Some(issuer) = &args.issuer {
        verifier = verifier.with_issuer(issuer);
    }
    if let Some(audience) = &args.audience {
        verifier = verifier.with_audience(audience);
    }
    match verifier.verify(&token).await {
        Ok(claims) => {
            // Verified: the claims may now be shown as the token states them.
            let all = decode_unverified(&token)
                .map(|d| d.claims)
                .unwrap_or_default();
            let expires_in = claims.exp.map(|exp| exp - Utc::now().timestamp());
            if args.json {
                println!(
                    "{:#}",
                    json!({"valid": true, "claims": all, "expires_in": expires_in})
                );
            } else {
                println!("valid");
                let show = |name: &str, value: Option<&str>| {
                    if let Some(value) = value {
                        // Claims are the token's text: escaped for the terminal.
                        println!("{name}: {}", en_auth_core::untrusted_text(value));
                    }
                };
                show("issuer", claims.iss.as_deref());
                show("subject", claims.sub.as_deref());
                show("client", claims.client_id.as_deref());
                if !claims.aud.is_empty() {
                    println!(
                        "audience: {}",
                        en_auth_core::untrusted_text(&claims.aud.join(" "))
                    );
                }
                if let Some(seconds) = expires_in {
                    println!("expires in: {seconds} s");
                }
                println!(
                    "scopes: {}",
                    en_auth_core::untrusted_text(&scopes(&all).join(" "))
                );
                if args.audience.is_none() {
                    println!("note: the audience was not checked (no --audience)");
                }
                if args.issuer.is_none() {
                    println!("note: the issuer was not checked (no --issuer)");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(Error::InvalidToken { reason }) => {
            if args.json {
                println!("{:#}", json!({"valid": false, "reason": reason}));
            } else {
                println!("invalid: {reason}");
            }
            Ok(ExitCode::FAILURE)
        }
        Err(Error::InsufficientScope { required }) => {
            let reason = format!("missing scopes: {}", required.join(" "));
            if args.json {
                println!("{:#}", json!({"valid": false, "reason": reason}));
            } else {
                println!("invalid: {reason}");
            }
            Ok(ExitCode::FAILURE)
        }
        // The keys could not be fetched: no verdict on the token.
        Err(other) => Err(other.to_string()),
    }
}
