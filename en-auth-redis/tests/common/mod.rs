//! Shared by the Redis tests: fleet members (separate OS processes running the
//! `fleet_member` example) and a protected API that accepts any bearer token it was not told
//! to reject.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use en_auth_testkit::{LoopbackServer, RedisServer};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The fleet key every member and test uses.
pub const FLEET_KEY: &str = "test-fleet-key-0123456789abcdef-0123456789";

/// FNV-1a over `bytes`, continuing from `hash` (a compile-time build id).
const fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// The build id the `fleet_member` example of this checkout prints after `READY`.
pub const MEMBER_BUILD_ID: u64 = fnv1a(
    fnv1a(0xcbf2_9ce4_8422_2325, env!("CARGO_PKG_VERSION").as_bytes()),
    include_str!("../../examples/fleet_member.rs").as_bytes(),
);

/// The `fleet_member` example next to this test binary (`cargo test` builds examples).
pub fn member_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join("examples").join("fleet_member");
    assert!(
        path.exists(),
        "{} is missing: run `cargo test -p en-auth-redis` (it builds the examples) or \
         `cargo build -p en-auth-redis --examples`",
        path.display()
    );
    path
}

/// One fleet member process.
pub struct Member {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Member {
    /// Starts a member with `env` (on top of the fleet key) and waits until it is ready.
    pub async fn start(env: &[(&str, String)]) -> Self {
        let mut command = Command::new(member_binary());
        command
            .env("EN_AUTH_FLEET_KEY", FLEET_KEY)
            .env("RUST_LOG", "off")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("fleet member starts");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let ready = stdout.next_line().await.expect("member output");
        let ready = ready.expect("member did not start");
        assert!(ready.starts_with("READY"), "member did not start: {ready}");
        assert_eq!(
            ready,
            format!("READY {MEMBER_BUILD_ID:016x}"),
            "the fleet_member example is another checkout's build (checkouts share the target \
             directory): run `cargo build -p en-auth-redis --examples` in this checkout"
        );
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends a command and returns its JSON answer.
    pub async fn ask(&mut self, command: &str) -> Value {
        self.send(command).await;
        self.answer().await
    }

    /// Sends a command without waiting for its answer.
    pub async fn send(&mut self, command: &str) {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .expect("member stdin");
        self.stdin.flush().await.expect("flush");
    }

    /// The answer to the last command sent.
    pub async fn answer(&mut self) -> Value {
        let line = self
            .stdout
            .next_line()
            .await
            .expect("member output")
            .expect("member answered");
        serde_json::from_str(&line).expect("JSON answer")
    }

    /// SIGKILL.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("kill");
        let _ = self.child.wait().await;
    }
}

/// Asks every member the same command at once and collects the answers.
pub async fn ask_all(members: &mut [Member], command: &str) -> Vec<Value> {
    for member in members.iter_mut() {
        member.send(command).await;
    }
    let mut answers = Vec::new();
    for member in members.iter_mut() {
        answers.push(member.answer().await);
    }
    answers
}

/// Sum of a numeric field over answers.
pub fn sum(answers: &[Value], field: &str) -> u64 {
    answers.iter().map(|a| a[field].as_u64().unwrap_or(0)).sum()
}

#[derive(Default)]
pub struct ApiState {
    rejected: Mutex<HashSet<String>>,
    by_status: Mutex<HashMap<u16, u64>>,
    tokens: Mutex<HashSet<String>>,
}

/// An API that answers 200 to any bearer token except those it was told to reject (401).
pub struct TestApi {
    server: LoopbackServer,
    state: Arc<ApiState>,
}

impl TestApi {
    pub async fn start() -> Self {
        let state = Arc::new(ApiState::default());
        let router = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&state));
        Self {
            server: LoopbackServer::start(router).await.expect("api starts"),
            state,
        }
    }

    pub fn url(&self) -> String {
        self.server.url("/data")
    }

    /// From now on, answer 401 to `token`.
    pub fn reject(&self, token: &str) {
        self.state.rejected.lock().insert(token.to_owned());
    }

    /// Requests answered with `status`.
    pub fn count(&self, status: u16) -> u64 {
        self.state
            .by_status
            .lock()
            .get(&status)
            .copied()
            .unwrap_or(0)
    }

    /// Distinct tokens seen.
    pub fn tokens(&self) -> Vec<String> {
        self.state.tokens.lock().iter().cloned().collect()
    }
}

async fn handle(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> StatusCode {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let status = match &token {
        Some(token) if !state.rejected.lock().contains(token) => StatusCode::OK,
        _ => StatusCode::UNAUTHORIZED,
    };
    if let Some(token) = token {
        state.tokens.lock().insert(token);
    }
    *state.by_status.lock().entry(status.as_u16()).or_default() += 1;
    status
}

/// Every key and value in Redis, as text (string values only; other types show as errors).
pub fn dump(redis: &RedisServer) -> String {
    let keys = redis.command(&["KEYS", "*"]).unwrap_or_default();
    let mut all = keys.clone();
    for key in keys
        .lines()
        .filter(|l| !l.starts_with('*') && !l.starts_with('$'))
    {
        if let Some(value) = redis.command(&["GET", key]) {
            all.push_str(&value);
        }
    }
    all
}
