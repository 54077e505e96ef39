//! Resident memory that a provider with 100 connections adds to a process: the blocking
//! provider with 100 `EntraConnection`s, and the smol provider with 100
//! `MultiplexedConnection`s.
//!
//! Each measurement runs in a new process (this benchmark runs itself again with
//! `BENCH_MEMORY_CASE` set), so one case cannot reuse memory the other freed. The
//! process starts `redis-server` (a child, not counted) and the mock endpoint, opens an
//! admin connection, reads `VmRSS`, then starts the provider, opens the connections,
//! sends one `PING` on each and reads `VmRSS` again. Both readings and their difference
//! are reported; the difference includes the code pages the provider first touches.
//! Run with `cargo bench --bench memory --features smol`.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::process::Command;
use std::time::Duration;

use redis::{AsyncConnectionConfig, Client};
use serde_json::{Value, json};

use common::plain_endpoint::PlainTokenEndpoint;
use common::redis_server::RedisServer;
use support::{Summary, accept_any_token, resident_kib, write_result};

const CONNECTIONS: usize = 100;
/// Processes per case.
const REPEATS: usize = 7;
const CASE_VARIABLE: &str = "BENCH_MEMORY_CASE";
const CASES: [&str; 2] = ["blocking", "smol"];

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    if let Ok(case) = std::env::var(CASE_VARIABLE) {
        let (before, after) = measure(&case);
        println!("{before} {after}");
        return;
    }
    let mut samples: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); CASES.len()];
    for _ in 0..REPEATS {
        for (case, (added, total)) in CASES.iter().zip(samples.iter_mut()) {
            let (before, after) = run_case(case);
            added.push((after - before) as f64 / 1024.0);
            total.push(after as f64 / 1024.0);
        }
    }
    let mut results = serde_json::Map::new();
    for (case, (added, total)) in CASES.iter().zip(&samples) {
        let (added, total) = (Summary::of(added), Summary::of(total));
        println!(
            "{case}, {CONNECTIONS} connections: added {}",
            added.display("MiB")
        );
        println!(
            "{case}, {CONNECTIONS} connections: process {}",
            total.display("MiB")
        );
        results.insert(
            (*case).to_owned(),
            json!({
                "connections": CONNECTIONS,
                "added_mib": added.to_json("MiB"),
                "process_mib": total.to_json("MiB"),
            }),
        );
    }
    write_result("memory", &Value::Object(results));
}

/// Runs one case in a new process and returns its `VmRSS` before and after, in KiB.
fn run_case(case: &str) -> (u64, u64) {
    let output = Command::new(std::env::current_exe().expect("path of this benchmark"))
        .env(CASE_VARIABLE, case)
        .output()
        .expect("run the benchmark again for one case");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "memory case {case} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut numbers = stdout
        .split_whitespace()
        .map(|n| n.parse().expect("a VmRSS reading"));
    (
        numbers.next().expect("VmRSS before"),
        numbers.next().expect("VmRSS after"),
    )
}

fn measure(case: &str) -> (u64, u64) {
    let redis = RedisServer::start();
    accept_any_token(&redis);
    let endpoint = PlainTokenEndpoint::start(Duration::from_secs(3600), None);
    let mut admin = redis.admin().expect("admin connection");
    redis::cmd("PING").exec(&mut admin).expect("PING");
    let before = resident_kib();
    match case {
        "blocking" => {
            let provider = redis_entraid::blocking::EntraIdProvider::new(endpoint.credential());
            let connections: Vec<_> = (0..CONNECTIONS)
                .map(|_| {
                    let mut connection = redis_entraid::blocking::EntraConnection::open(
                        redis.url().as_str(),
                        &provider,
                    )
                    .expect("open an EntraConnection");
                    redis::cmd("PING").exec(&mut connection).expect("PING");
                    connection
                })
                .collect();
            let after = resident_kib();
            drop(connections);
            (before, after)
        }
        "smol" => smol::block_on(async {
            let provider = redis_entraid::smol::EntraIdProvider::new(endpoint.credential());
            let config = AsyncConnectionConfig::new().set_credentials_provider(provider.clone());
            let client = Client::open(redis.url()).expect("redis URL");
            let mut connections = Vec::new();
            for _ in 0..CONNECTIONS {
                let mut connection = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .expect("open a MultiplexedConnection with the provider");
                redis::cmd("PING")
                    .exec_async(&mut connection)
                    .await
                    .expect("PING");
                connections.push(connection);
            }
            // Lets each connection's re-authentication task send its first AUTH.
            smol::Timer::after(Duration::from_millis(200)).await;
            (before, resident_kib())
        }),
        other => panic!("unknown memory case {other}; expected one of {CASES:?}"),
    }
}
