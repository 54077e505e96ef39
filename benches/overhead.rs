//! Per-command overhead of the crate's connections against plain `redis` connections
//! with a static password, on one private `redis-server`.
//!
//! Four pairs: `PING` and `GET` of a 16-byte value, through the blocking
//! `EntraConnection` against a `redis::Connection`, and through an async
//! `MultiplexedConnection` on smol with and without the smol `EntraIdProvider`. Each
//! round runs a batch of commands on one connection of the pair, then the same batch on
//! the other, alternating which goes first, so drift in the machine's load hits both
//! alike. The figure is the median over rounds of each round's ratio of time per
//! command. Run with `cargo bench --bench overhead --features smol`.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::time::{Duration, Instant};

use redis::{AsyncConnectionConfig, Client, ConnectionLike};
use serde_json::{Value, json};

use common::plain_endpoint::PlainTokenEndpoint;
use common::redis_server::RedisServer;
use support::{Summary, accept_any_token, write_result};

/// Commands per connection in each round.
const BATCH: u32 = 1000;
/// Rounds per pair.
const ROUNDS: usize = 151;
const KEY: &str = "bench:key";
const STATIC_USER: &str = "static";
const STATIC_PASSWORD: &str = "static-password";

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return; // `cargo bench -- --list` lists benchmarks; this file is one.
    }
    let redis = RedisServer::start();
    accept_any_token(&redis);
    let mut admin = redis.admin().expect("admin connection");
    redis::cmd("ACL")
        .arg(&["SETUSER", STATIC_USER, "on", &format!(">{STATIC_PASSWORD}")])
        .arg(&["~*", "+@all"])
        .exec(&mut admin)
        .expect("ACL SETUSER for the static user");
    redis::cmd("SET")
        .arg(KEY)
        .arg("0123456789abcdef")
        .exec(&mut admin)
        .expect("SET the benchmark key");
    let endpoint = PlainTokenEndpoint::start(Duration::from_secs(3600), None);
    let static_url = format!(
        "redis://{STATIC_USER}:{STATIC_PASSWORD}@127.0.0.1:{}",
        redis.port()
    );

    let mut results = serde_json::Map::new();
    let blocking = blocking_pairs(&redis, &endpoint, &static_url);
    let asynchronous = smol::block_on(async_pairs(&redis, &endpoint, &static_url));
    for (name, result) in blocking.into_iter().chain(asynchronous) {
        results.insert(name, result);
    }
    write_result("overhead", &Value::Object(results));
}

fn blocking_pairs(
    redis: &RedisServer,
    endpoint: &PlainTokenEndpoint,
    static_url: &str,
) -> Vec<(String, Value)> {
    let provider = redis_entraid::blocking::EntraIdProvider::new(endpoint.credential());
    let mut entra = redis_entraid::blocking::EntraConnection::open(redis.url().as_str(), &provider)
        .expect("open an EntraConnection");
    let mut plain = Client::open(static_url)
        .and_then(|client| client.get_connection())
        .expect("open a static-password connection");

    let mut pairs = Vec::new();
    for command in ["PING", "GET"] {
        let name = format!("blocking_{}", command.to_lowercase());
        let packed = packed(command);
        let result = interleave(&name, |entra_first| {
            let mut time_entra = || time_blocking(&mut entra, &packed);
            let mut time_plain = || time_blocking(&mut plain, &packed);
            if entra_first {
                let e = time_entra();
                (e, time_plain())
            } else {
                let p = time_plain();
                (time_entra(), p)
            }
        });
        pairs.push((name, result));
    }
    pairs
}

async fn async_pairs(
    redis: &RedisServer,
    endpoint: &PlainTokenEndpoint,
    static_url: &str,
) -> Vec<(String, Value)> {
    let provider = redis_entraid::smol::EntraIdProvider::new(endpoint.credential());
    let config = AsyncConnectionConfig::new().set_credentials_provider(provider.clone());
    let mut entra = Client::open(redis.url())
        .expect("redis URL")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("open a MultiplexedConnection with the provider");
    let mut plain = Client::open(static_url)
        .expect("redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("open a static-password MultiplexedConnection");

    let mut pairs = Vec::new();
    for command in ["PING", "GET"] {
        let name = format!("async_{}", command.to_lowercase());
        let mut ratios = Vec::new();
        let (mut times_entra, mut times_plain) = (Vec::new(), Vec::new());
        time_async(&mut entra, command).await; // warm-up
        time_async(&mut plain, command).await;
        for round in 0..ROUNDS {
            let (e, p) = if round % 2 == 0 {
                let e = time_async(&mut entra, command).await;
                (e, time_async(&mut plain, command).await)
            } else {
                let p = time_async(&mut plain, command).await;
                (time_async(&mut entra, command).await, p)
            };
            times_entra.push(e);
            times_plain.push(p);
            ratios.push(e / p);
        }
        pairs.push((
            name.clone(),
            report(&name, &times_entra, &times_plain, &ratios),
        ));
    }
    pairs
}

/// Runs the warm-up and `ROUNDS` rounds of `round`, which returns the time per command
/// of the crate's connection and of the plain one, and is told which goes first.
fn interleave(name: &str, mut round: impl FnMut(bool) -> (f64, f64)) -> Value {
    round(true);
    let (mut times_entra, mut times_plain, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for index in 0..ROUNDS {
        let (e, p) = round(index % 2 == 0);
        times_entra.push(e);
        times_plain.push(p);
        ratios.push(e / p);
    }
    report(name, &times_entra, &times_plain, &ratios)
}

fn report(name: &str, entra: &[f64], plain: &[f64], ratios: &[f64]) -> Value {
    let (entra, plain, ratio) = (Summary::of(entra), Summary::of(plain), Summary::of(ratios));
    println!("{name}: redis-entraid {}", entra.display("µs"));
    println!("{name}: static password {}", plain.display("µs"));
    println!("{name}: ratio {}", ratio.display(""));
    json!({
        "entraid_us": entra.to_json("µs"),
        "static_us": plain.to_json("µs"),
        "ratio": ratio.to_json(""),
        "batch": BATCH,
    })
}

fn packed(command: &str) -> Vec<u8> {
    match command {
        "GET" => redis::cmd("GET").arg(KEY).get_packed_command(),
        _ => redis::cmd(command).get_packed_command(),
    }
}

/// Returns the time per command, in microseconds, of a batch of `packed` on `connection`.
fn time_blocking(connection: &mut impl ConnectionLike, packed: &[u8]) -> f64 {
    let started = Instant::now();
    for _ in 0..BATCH {
        connection
            .req_packed_command(packed)
            .expect("benchmark command failed");
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(BATCH)
}

/// Returns the time per command, in microseconds, of a batch of `command` on `connection`.
async fn time_async(connection: &mut redis::aio::MultiplexedConnection, command: &str) -> f64 {
    let mut cmd = redis::cmd(command);
    if command == "GET" {
        cmd.arg(KEY);
    }
    let started = Instant::now();
    for _ in 0..BATCH {
        cmd.query_async::<redis::Value>(connection)
            .await
            .expect("benchmark command failed");
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(BATCH)
}
