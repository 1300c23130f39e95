//! `en-auth`: fetch, inspect and verify OAuth2 tokens from the shell.
//!
//! ```text
//! en-auth token                      # a token from EN_AUTH_* variables, decoded (not the token)
//! en-auth token --raw                # just the token, for curl -H "Authorization: Bearer $(…)"
//! en-auth verify - --issuer https://idp.example.com/ --audience https://api.example.com
//! en-auth discover https://idp.example.com/
//! ```
//!
//! Every command takes `--json` for scripts. Errors are one line on stderr and a non-zero
//! exit status: 1 for a failure (a refused token, a missing variable), 2 for a usage error.
#![forbid(unsafe_code)]
// Doc comments on the argument types are clap's --help text, read in a terminal: URLs stay bare.
#![allow(rustdoc::bare_urls)]
#![warn(missing_docs)]

mod cli;
mod decode;
mod discover;
mod token;
mod verify;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Token(args) => token::run(args).await,
            Command::Verify(args) => verify::run(args).await,
            Command::Discover(args) => discover::run(args).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(message) => fail(&message),
    }
}

/// One line on stderr, exit status 1.
fn fail(message: &str) -> ExitCode {
    eprintln!("en-auth: error: {}", message.replace(['\n', '\r'], " "));
    ExitCode::FAILURE
}
