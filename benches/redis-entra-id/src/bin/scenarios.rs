//! Memory and renewal fan-out of the redis crate's `EntraIdCredentialsProvider`, in
//! the same way as redis-entraid's `memory` and `fanout` benchmarks.
//!
//! `scenarios memory`: prints the process's `VmRSS` in KiB before and after starting
//! the provider and opening 100 `MultiplexedConnection`s with one `PING` each.
//!
//! `scenarios fanout <renewals>`: opens 1,000 `MultiplexedConnection`s and, for each of
//! `<renewals>` renewals, prints the milliseconds from the mock endpoint's token
//! response (the last line of `MOCK_LOG`, Unix nanoseconds) to the moment the server
//! has counted one more `AUTH` per connection. The provider renews 240 s before
//! expiry and has no call that forces a renewal, so the mock must issue tokens that
//! live a few seconds longer than that.
//!
//! Environment: `MOCK_AUTHORITY`, `REDIS_URL`, `SSL_CERT_FILE`, and for `fanout`
//! `MOCK_LOG`; the server's user must accept any password.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use redis_entra_id_comparison::{start_provider, variable};

const MEMORY_CONNECTIONS: usize = 100;
const FAN_OUT_CONNECTIONS: u64 = 1000;
/// How long to wait for a renewal, or for its fan-out to finish, before failing.
const TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("memory") => memory().await,
        Some("fanout") => {
            let renewals = args
                .get(2)
                .and_then(|n| n.parse().ok())
                .expect("usage: scenarios fanout <renewals>");
            fan_out(renewals).await;
        }
        _ => panic!("usage: scenarios memory | scenarios fanout <renewals>"),
    }
}

async fn connect(client: &redis::Client, config: &AsyncConnectionConfig) -> MultiplexedConnection {
    client
        .get_multiplexed_async_connection_with_config(config)
        .await
        .expect("open a MultiplexedConnection with the provider")
}

async fn memory() {
    let client = redis::Client::open(variable("REDIS_URL")).expect("REDIS_URL");
    let mut admin = client.get_connection().expect("admin connection");
    redis::cmd("PING").exec(&mut admin).expect("PING");
    let before = resident_kib();
    let config = AsyncConnectionConfig::new().set_credentials_provider(start_provider());
    let mut connections = Vec::new();
    for _ in 0..MEMORY_CONNECTIONS {
        let mut connection = connect(&client, &config).await;
        redis::cmd("PING")
            .exec_async(&mut connection)
            .await
            .expect("PING");
        connections.push(connection);
    }
    // Lets each connection's re-authentication task take its first credentials.
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!("{before} {}", resident_kib());
}

async fn fan_out(renewals: usize) {
    let client = redis::Client::open(variable("REDIS_URL")).expect("REDIS_URL");
    let config = AsyncConnectionConfig::new().set_credentials_provider(start_provider());
    let mut connections = Vec::new();
    for _ in 0..FAN_OUT_CONNECTIONS {
        connections.push(connect(&client, &config).await);
    }
    let log = variable("MOCK_LOG");
    // Polling blocks, so it runs off the runtime's worker threads.
    tokio::task::spawn_blocking(move || {
        let mut admin = client.get_connection().expect("admin connection");
        let (mut auths, mut tokens) = settle(&mut admin, &log);
        for _ in 0..renewals {
            wait_for(|| (token_times(&log).len() > tokens).then_some(()));
            let issued_at = token_times(&log)[tokens];
            auths += FAN_OUT_CONNECTIONS;
            wait_for(|| (auth_calls(&mut admin) >= auths).then_some(()));
            let done = unix_nanos();
            println!("{:.3}", (done - issued_at) as f64 / 1e6);
            tokens += 1;
        }
    })
    .await
    .expect("fan-out measurement panicked");
    drop(connections);
}

/// Waits until neither the `AUTH` count nor the number of tokens has moved for half a
/// second, and returns both.
fn settle(admin: &mut redis::Connection, log: &str) -> (u64, usize) {
    let mut last = (auth_calls(admin), token_times(log).len());
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = (auth_calls(admin), token_times(log).len());
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Polls `check` every millisecond until it returns a value.
///
/// # Panics
///
/// Panics after [`TIMEOUT`].
fn wait_for<T>(mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "no progress within {TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn token_times(log: &str) -> Vec<u128> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|line| line.parse().expect("a time in the mock's log"))
        .collect()
}

fn auth_calls(admin: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(admin)
        .expect("INFO commandstats");
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_auth:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().expect("a number of calls"))
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos()
}

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS in /proc/self/status")
}
