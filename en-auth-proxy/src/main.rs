//! The `en-auth-proxy` binary: configuration from `EN_AUTH_PROXY_*` variables and an optional
//! `--config file.toml`; stops gracefully on SIGTERM or Ctrl-C.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use en_auth_proxy::{Proxy, ProxyConfig};
use tracing_subscriber::filter::LevelFilter;

const USAGE: &str = "usage: en-auth-proxy [--config FILE.toml]\n\
    Configuration: EN_AUTH_PROXY_TOKEN_URL (or EN_AUTH_PROXY_ISSUER) is required; \
    EN_AUTH_PROXY_LISTEN (default 127.0.0.1:8080), EN_AUTH_PROXY_REDIS_URL and the other \
    keys are described in docs/proxy.md.";

fn config_path() -> Result<Option<PathBuf>, String> {
    let mut args = std::env::args_os().skip(1);
    let mut path = None;
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--config") => match args.next() {
                Some(p) => path = Some(PathBuf::from(p)),
                None => return Err("--config needs a file name".into()),
            },
            Some("--help" | "-h") => return Err(String::new()),
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    Ok(path)
}

#[tokio::main]
async fn main() -> ExitCode {
    let path = match config_path() {
        Ok(path) => path,
        Err(problem) => {
            if !problem.is_empty() {
                eprintln!("en-auth-proxy: {problem}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let config = match ProxyConfig::load(path.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("en-auth-proxy: {err}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let level = config
        .log
        .parse::<LevelFilter>()
        .unwrap_or(LevelFilter::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .init();
    if config.redis_url.is_some() {
        // en-auth-redis has not landed yet; refuse rather than silently not sharing.
        eprintln!(
            "en-auth-proxy: EN_AUTH_PROXY_REDIS_URL is set, but this build has no Redis \
             support yet; unset it to run with the in-memory cache"
        );
        return ExitCode::from(2);
    }
    let listen = config.listen;
    let proxy = match Proxy::new(config) {
        Ok(proxy) => proxy,
        Err(err) => {
            eprintln!("en-auth-proxy: {err}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("en-auth-proxy: cannot listen on {listen}: {err} (set EN_AUTH_PROXY_LISTEN)");
            return ExitCode::from(1);
        }
    };
    match proxy.serve(listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("en-auth-proxy: {err}");
            ExitCode::from(1)
        }
    }
}

/// SIGTERM (Unix) or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown requested; finishing requests in flight");
}
