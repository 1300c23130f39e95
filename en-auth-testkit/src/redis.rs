//! Debian's `redis-server` on a free loopback port, without persistence, stopped when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` (installed by `./scripts/install-peers`) bound to `127.0.0.1` on a free
/// port, with `--save "" --appendonly no`. It can be stopped and started again on the same
/// port to simulate an outage.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// The CA and server certificate of a TLS server.
    tls: Option<crate::TestPki>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut server = Self {
            port,
            child: None,
            tls: None,
        };
        server.restart();
        server
    }

    /// Starts a server that only speaks TLS (`rediss://`), with a fresh CA made by `openssl`
    /// (see [`ca_certificate`](Self::ca_certificate)); no client certificates required.
    pub fn start_tls() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut server = Self {
            port,
            child: None,
            tls: Some(crate::TestPki::create()),
        };
        server.restart();
        server
    }

    /// The CA certificate (PEM) of a [`start_tls`](Self::start_tls) server.
    pub fn ca_certificate(&self) -> Option<Vec<u8>> {
        Some(self.tls.as_ref()?.ca_pem().to_vec())
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://…` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the server process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (its data is lost: nothing is persisted).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`stop`](Self::stop)).
    pub fn restart(&mut self) {
        self.stop();
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1"]);
        match &self.tls {
            None => {
                command.arg("--port").arg(self.port.to_string());
            }
            Some(tls) => {
                let (cert, key) = tls.server_files();
                command
                    .args(["--port", "0", "--tls-port"])
                    .arg(self.port.to_string())
                    .arg("--tls-cert-file")
                    .arg(cert)
                    .arg("--tls-key-file")
                    .arg(key)
                    .arg("--tls-ca-cert-file")
                    .arg(tls.ca_file())
                    .args(["--tls-auth-clients", "no"]);
            }
        }
        let child = command
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server is not installed: run ./scripts/install-peers (./scripts/test does)",
            );
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let ready = match &self.tls {
                // No TLS client here: a TLS server is ready once it accepts connections.
                Some(_) => TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
                None => self
                    .command(&["PING"])
                    .is_some_and(|r| r.starts_with("+PONG")),
            };
            if ready {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} did not answer PING within 20 s",
            self.port
        );
    }

    /// Sends one command and returns the raw reply (RESP), for test inspection such as
    /// `KEYS *` or `GET key`; `None` if the server is unreachable (or speaks only TLS).
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).ok()?;
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut reply = String::new();
        let mut buf = [0u8; 65536];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => reply.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(_) => break,
            }
        }
        Some(reply)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
