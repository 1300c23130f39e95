//! `RedisTokenStore::connect(url)` reads the fleet key from `EN_AUTH_FLEET_KEY`. The
//! environment is shared by every test of a process, so each case runs in a child process of
//! its own (this test binary again, with the variable set or removed for it alone).

use std::process::Command;

use en_auth_core::Error;
use en_auth_redis::RedisTokenStore;

/// Set in the child: which case to run.
const CASE: &str = "EN_AUTH_REDIS_TEST_FLEET_KEY_CASE";

/// Runs `case` in a child with `EN_AUTH_FLEET_KEY` set to `value` (or removed).
fn run_child(case: &str, value: Option<&str>) {
    let mut command = Command::new(std::env::current_exe().expect("test binary path"));
    command
        .args(["--exact", "child", "--test-threads=1", "--nocapture"])
        .env(CASE, case);
    match value {
        Some(value) => command.env("EN_AUTH_FLEET_KEY", value),
        None => command.env_remove("EN_AUTH_FLEET_KEY"),
    };
    let output = command.output().expect("child runs");
    assert!(
        output.status.success(),
        "case {case} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(&format!("CASE {case} DONE")),
        "the child did not run case {case}"
    );
}

/// The child's side: does nothing unless started by one of the tests below.
#[test]
fn child() {
    let Ok(case) = std::env::var(CASE) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Nothing listens on port 1: connecting succeeds degraded, or fails on configuration.
    let outcome = runtime.block_on(RedisTokenStore::connect("redis://127.0.0.1:1"));
    match case.as_str() {
        "missing" => match outcome {
            Err(Error::MissingConfiguration { setting }) => {
                assert_eq!(setting, "EN_AUTH_FLEET_KEY");
            }
            other => panic!("expected MissingConfiguration, got {other:?}"),
        },
        "short" => match outcome {
            Err(err @ Error::InvalidConfiguration { .. }) => {
                let text = err.to_string();
                assert!(text.contains("EN_AUTH_FLEET_KEY"), "{text}");
                assert!(!text.contains("too-short-key"), "{text}");
            }
            other => panic!("expected InvalidConfiguration, got {other:?}"),
        },
        "set" => {
            let store = outcome.expect("a fleet key from the environment is enough");
            assert!(!store.is_available());
        }
        "builder" => {
            let store = runtime
                .block_on(
                    RedisTokenStore::builder("redis://127.0.0.1:1")
                        .fleet_key("a-fleet-key-given-in-code-0123456789")
                        .connect(),
                )
                .expect("a fleet key from the builder needs no variable");
            assert!(!store.is_available());
        }
        other => panic!("unknown case {other}"),
    }
    println!("CASE {case} DONE");
}

#[test]
fn connect_without_a_fleet_key_fails_naming_the_variable() {
    run_child("missing", None);
    run_child("missing", Some(""));
}

#[test]
fn connect_with_a_short_fleet_key_fails() {
    run_child("short", Some("too-short-key"));
}

#[test]
fn connect_reads_the_fleet_key_from_the_environment() {
    run_child("set", Some("a-fleet-key-from-the-environment-0123456789"));
}

#[test]
fn the_builder_needs_no_variable() {
    run_child("builder", None);
}
