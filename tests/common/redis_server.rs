//! A private `redis-server` on a free loopback port, stopped when dropped.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process that keeps nothing on disk.
pub struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    /// Starts `redis-server` from `PATH` and waits until it answers `PING`.
    ///
    /// # Panics
    ///
    /// Panics with installation advice when `redis-server` is not on `PATH`, and when the
    /// server does not answer within ten seconds.
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|message| panic!("{message}"))
    }

    /// Like [`start`](Self::start), returning a missing `redis-server` as a message.
    pub fn try_start() -> Result<Self, String> {
        let port = free_port();
        let server = RedisServer {
            child: spawn(port)?,
            port,
        };
        server.wait_ready();
        Ok(server)
    }

    /// Stops the server and starts a new one on the same port, with an empty data set
    /// and ACL, and waits until it answers `PING`. Clients see their connections closed.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(self.port).unwrap_or_else(|message| panic!("{message}"));
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut connection) = self.admin()
                && redis::cmd("PING").query::<String>(&mut connection).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL for client connections, without credentials.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Opens a connection as the `default` user, which has no password.
    pub fn admin(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection()
    }

    /// Reads how often the server has executed `command` (from `INFO commandstats`).
    pub fn command_calls(&self, command: &str) -> u64 {
        let mut admin = self.admin().expect("admin connection");
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut admin)
            .unwrap();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |calls| calls.parse().unwrap())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(port: u16) -> Result<Child, String> {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|error| {
            format!(
                "cannot start redis-server ({error}); it must be on PATH: install it with \
                 `apt-get install redis-server` (Debian, Ubuntu) or `brew install redis` \
                 (macOS)"
            )
        })
}

/// Returns a loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().unwrap().port()
}
