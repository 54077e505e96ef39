//! Time from a token renewal to the last connection re-authenticated: 1,000 async
//! `MultiplexedConnection`s on smol sharing one provider, and 200 blocking
//! `EntraConnection`s on 200 threads.
//!
//! The server counts `AUTH` commands (`INFO commandstats`); the benchmark polls that
//! count every millisecond from an admin connection and stops the clock when every
//! connection has sent one more. The renewal is `force_refresh()`, answered by a mock
//! endpoint on loopback. Two starting points are reported: the `force_refresh()` call
//! (the figure includes the token request) and the moment the provider published the
//! new credentials (its generation changed). A blocking connection re-authenticates
//! before its next command, and each of the 200 threads sends `PING` every millisecond,
//! so that figure includes up to a millisecond of waiting for the next command.
//!
//! For scale, the async case also times the same 1,000 connections each completing one
//! `PING`, all sent at once: the least time in which every connection can finish one
//! round trip on this machine, with the same executor and server.
//! Run with `cargo bench --bench fanout --features smol`; it needs about 1,300 open
//! files.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::{AsyncConnectionConfig, Client};
use serde_json::json;

use common::plain_endpoint::PlainTokenEndpoint;
use common::redis_server::RedisServer;
use support::{Summary, accept_any_token, auth_calls, require_open_files, write_result};

const ASYNC_CONNECTIONS: usize = 1000;
const BLOCKING_CONNECTIONS: usize = 200;
/// Renewals measured for each kind of connection.
const RENEWALS: usize = 15;
/// How long one renewal may take to reach every connection before the run fails.
const FAN_OUT_TIMEOUT: Duration = Duration::from_secs(30);

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    require_open_files(ASYNC_CONNECTIONS as u64 + 300);
    let redis = RedisServer::start();
    accept_any_token(&redis);
    let endpoint = PlainTokenEndpoint::start(Duration::from_secs(3600), None);

    let asynchronous = smol::block_on(async_fan_out(&redis, &endpoint));
    let blocking = blocking_fan_out(&redis, &endpoint);
    write_result(
        "fanout",
        &json!({ "async_1000": asynchronous, "blocking_200": blocking }),
    );
}

async fn async_fan_out(redis: &RedisServer, endpoint: &PlainTokenEndpoint) -> serde_json::Value {
    let provider = redis_entraid::smol::EntraIdProvider::new(endpoint.credential());
    let config = AsyncConnectionConfig::new().set_credentials_provider(provider.clone());
    let client = Client::open(redis.url()).expect("redis URL");
    let mut connections = Vec::with_capacity(ASYNC_CONNECTIONS);
    for _ in 0..ASYNC_CONNECTIONS {
        let connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("open a MultiplexedConnection with the provider");
        connections.push(connection);
    }
    let mut admin = redis.admin().expect("admin connection");
    settle(&mut admin);
    let renew = || {
        provider.force_refresh();
    };
    let generation = || provider.generation();
    let mut result = measure(
        "async, 1,000 connections",
        &mut admin,
        ASYNC_CONNECTIONS,
        renew,
        generation,
    );
    let mut rounds = Vec::new();
    for _ in 0..RENEWALS {
        rounds.push(concurrent_pings(&connections).await);
    }
    let rounds = Summary::of(&rounds);
    println!(
        "async, 1,000 connections: one PING each at once {}",
        rounds.display("ms")
    );
    result["one_ping_each_ms"] = rounds.to_json("ms");
    drop(connections);
    result
}

/// Sends one `PING` on every connection at once and returns the milliseconds until the
/// last reply.
async fn concurrent_pings(connections: &[redis::aio::MultiplexedConnection]) -> f64 {
    let started = Instant::now();
    let pings = connections.iter().map(|connection| {
        let mut connection = connection.clone();
        async move {
            redis::cmd("PING")
                .exec_async(&mut connection)
                .await
                .expect("PING");
        }
    });
    futures_util::future::join_all(pings).await;
    started.elapsed().as_secs_f64() * 1e3
}

fn blocking_fan_out(redis: &RedisServer, endpoint: &PlainTokenEndpoint) -> serde_json::Value {
    let provider = redis_entraid::blocking::EntraIdProvider::new(endpoint.credential());
    let stop = Arc::new(AtomicBool::new(false));
    let url = redis.url();
    let workers: Vec<_> = (0..BLOCKING_CONNECTIONS)
        .map(|_| {
            let mut connection =
                redis_entraid::blocking::EntraConnection::open(url.as_str(), &provider)
                    .expect("open an EntraConnection");
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    redis::cmd("PING")
                        .exec(&mut connection)
                        .expect("PING through an EntraConnection");
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        })
        .collect();
    let mut admin = redis.admin().expect("admin connection");
    settle(&mut admin);
    let result = measure(
        "blocking, 200 connections",
        &mut admin,
        BLOCKING_CONNECTIONS,
        || provider.force_refresh(),
        || provider.generation(),
    );
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().expect("connection thread panicked");
    }
    result
}

/// Waits until the `AUTH` count has not moved for half a second, so the handshakes of
/// new connections are not counted as re-authentications.
fn settle(admin: &mut redis::Connection) {
    let mut last = auth_calls(admin);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = auth_calls(admin);
        if now == last {
            return;
        }
        last = now;
    }
}

/// Runs `RENEWALS` renewals and returns the fan-out times in milliseconds.
fn measure(
    label: &str,
    admin: &mut redis::Connection,
    connections: usize,
    renew: impl Fn(),
    generation: impl Fn() -> u64,
) -> serde_json::Value {
    let (mut from_request, mut from_publish) = (Vec::new(), Vec::new());
    for _ in 0..RENEWALS {
        // The mock's `exp` has one-second resolution, and the provider ignores a token
        // that does not expire later than the current one.
        std::thread::sleep(Duration::from_millis(1100));
        let (before, target) = (generation(), auth_calls(admin) + connections as u64);
        let requested = Instant::now();
        renew();
        let mut published = None;
        let deadline = requested + FAN_OUT_TIMEOUT;
        loop {
            if published.is_none() && generation() != before {
                published = Some(Instant::now());
            }
            if published.is_some() && auth_calls(admin) >= target {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{label}: fewer than {connections} re-authentications within {FAN_OUT_TIMEOUT:?}"
            );
            // Poll the generation often and the server every millisecond.
            if published.is_some() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let done = Instant::now();
        from_request.push(done.duration_since(requested).as_secs_f64() * 1e3);
        from_publish.push(done.duration_since(published.unwrap()).as_secs_f64() * 1e3);
    }
    let (from_request, from_publish) = (Summary::of(&from_request), Summary::of(&from_publish));
    println!("{label}: from force_refresh {}", from_request.display("ms"));
    println!(
        "{label}: from new credentials {}",
        from_publish.display("ms")
    );
    json!({
        "connections": connections,
        "from_force_refresh_ms": from_request.to_json("ms"),
        "from_new_credentials_ms": from_publish.to_json("ms"),
    })
}
