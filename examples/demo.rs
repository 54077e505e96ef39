//! Keeps Redis connections authenticated through several token renewals.
//!
//! Without configuration it runs locally: a mock Entra token endpoint on loopback issues
//! JWTs that live 15 seconds, and a private `redis-server` accepts each token for its
//! `oid` only until the token expires, as Azure does. Three connections issue commands
//! while a fourth reconnects every two seconds, through three renewals. It exits with
//! status 0 only if no command failed.
//!
//! With `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET` and `REDIS_HOST` set
//! (and optionally `REDIS_PORT`, default 6380), it connects to that Azure cache over TLS
//! instead and prints the number of keys.
//!
//! Run it with `cargo run --example demo`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use redis::Commands;
use redis_entraid::blocking::{EntraConnection, EntraIdProvider};
use redis_entraid::{ClientSecretCredential, Credentials, RefreshPolicy};

use common::redis_server::RedisServer;
use common::token_endpoint::TokenEndpoint;

const TOKEN_LIFETIME: Duration = Duration::from_secs(15);
/// Renew 8 s before expiry: Azure's 3-minute margin, scaled down to 15-second tokens.
const REFRESH_MARGIN: Duration = Duration::from_secs(8);
const RENEWALS: u64 = 3;
const WORKERS: usize = 3;

fn main() -> ExitCode {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let result = match env("REDIS_HOST") {
        Some(host) => run_against_azure(&host, env("REDIS_PORT")),
        None => run_locally(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("demo failed: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run_against_azure(host: &str, port: Option<String>) -> Result<(), String> {
    let port = port.unwrap_or_else(|| "6380".to_owned());
    let credential = ClientSecretCredential::from_env(|name| std::env::var(name).ok())
        .map_err(|e| e.to_string())?;
    let provider = EntraIdProvider::new(credential);
    let credentials = provider.get_credentials().map_err(|e| e.to_string())?;
    println!("token acquired for oid {}", credentials.username());
    let url = format!("rediss://{host}:{port}");
    let mut connection = EntraConnection::open(url.as_str(), &provider)
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let keys: u64 = redis::cmd("DBSIZE")
        .query(&mut connection)
        .map_err(|e| format!("DBSIZE failed: {e}"))?;
    println!("{url}: {keys} keys");
    Ok(())
}

/// Counters the workers share with the timeline printer.
#[derive(Default)]
struct Stats {
    ok: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
}

/// The number of failures printed; later ones are only counted.
const PRINTED_FAILURES: u64 = 10;

impl Stats {
    fn record_failure(&self, message: &str) {
        let count = self.failed.fetch_add(1, Ordering::SeqCst) + 1;
        if count <= PRINTED_FAILURES {
            eprintln!("{message}");
        }
        if count == PRINTED_FAILURES {
            eprintln!("further failures are counted, not printed");
        }
    }
}

fn run_locally() -> Result<(), String> {
    let started = Instant::now();
    let stamp = move || format!("[{:5.1}s]", started.elapsed().as_secs_f64());
    let redis = RedisServer::try_start()?;
    let endpoint = TokenEndpoint::start(TOKEN_LIFETIME, Some(redis.url()));
    println!(
        "{} redis-server on {}, mock Entra endpoint on {}",
        stamp(),
        redis.url(),
        endpoint.server.base_url()
    );
    let provider = EntraIdProvider::builder(endpoint.credential())
        .refresh_policy(RefreshPolicy::default().with_margin(REFRESH_MARGIN))
        .start();
    let first = provider.get_credentials().map_err(|e| e.to_string())?;
    let mut renewals = provider.subscribe();
    println!(
        "{} token 1 acquired for oid {}, expires in {} s",
        stamp(),
        first.username(),
        seconds_until(first.expires_on())
    );

    let stats = Arc::new(Stats::default());
    let generations: Vec<Arc<AtomicU64>> = (0..WORKERS).map(|_| Arc::default()).collect();
    let mut workers = Vec::new();
    for (id, seen) in generations.iter().enumerate() {
        let mut connection =
            EntraConnection::open(redis.url(), &provider).map_err(|e| e.to_string())?;
        let (stats, seen) = (Arc::clone(&stats), Arc::clone(seen));
        workers.push(thread::spawn(move || {
            command_loop(id, &mut connection, &stats, &seen)
        }));
    }
    let reconnector = {
        let (stats, provider, url) = (Arc::clone(&stats), provider.clone(), redis.url());
        thread::spawn(move || reconnect_loop(&url, &provider, &stats))
    };
    println!(
        "{} {WORKERS} connections issuing commands, one more reconnecting every 2 s",
        stamp()
    );

    let mut renewed = 0;
    while renewed < RENEWALS {
        let Some(credentials) = renewals.next_timeout(TOKEN_LIFETIME * 2) else {
            stats.stop.store(true, Ordering::SeqCst);
            return Err("no renewal within two token lifetimes".to_owned());
        };
        renewed += 1;
        report_renewal(&stamp(), &credentials, &provider, &generations, &stats);
    }
    // Run on until the token before the last renewal has expired, so connections are seen
    // to outlive it; report any renewal that lands meanwhile.
    let deadline = Instant::now() + REFRESH_MARGIN + Duration::from_secs(1);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if let Some(credentials) = renewals.next_timeout(left) {
            renewed += 1;
            report_renewal(&stamp(), &credentials, &provider, &generations, &stats);
        }
    }
    stats.stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.join().map_err(|_| "a worker panicked".to_owned())?;
    }
    reconnector
        .join()
        .map_err(|_| "the reconnecting worker panicked".to_owned())?;

    let ok = stats.ok.load(Ordering::SeqCst);
    let failed = stats.failed.load(Ordering::SeqCst);
    println!(
        "{} summary: tokens {}, renewals {renewed}, commands ok {ok}, failed {failed}",
        stamp(),
        endpoint.issued().len()
    );
    if failed > 0 {
        return Err(format!("{failed} commands failed"));
    }
    Ok(())
}

fn report_renewal(
    stamp: &str,
    credentials: &Credentials,
    provider: &EntraIdProvider,
    generations: &[Arc<AtomicU64>],
    stats: &Stats,
) {
    println!(
        "{stamp} token {} acquired, expires in {} s (commands so far: {} ok, {} failed)",
        provider.generation(),
        seconds_until(credentials.expires_on()),
        stats.ok.load(Ordering::SeqCst),
        stats.failed.load(Ordering::SeqCst),
    );
    let reauthenticated = wait_for_reauthentication(provider, generations);
    println!(
        "{stamp} re-authenticated {reauthenticated} of {} connections",
        generations.len()
    );
}

fn command_loop(id: usize, connection: &mut EntraConnection, stats: &Stats, seen: &AtomicU64) {
    let key = format!("demo:{id}");
    let mut n: u64 = 0;
    while !stats.stop.load(Ordering::SeqCst) {
        let result: redis::RedisResult<u64> =
            connection.set(&key, n).and_then(|()| connection.get(&key));
        match result {
            Ok(value) if value == n => {
                stats.ok.fetch_add(2, Ordering::SeqCst);
            }
            Ok(value) => {
                stats.record_failure(&format!("connection {id}: read {value}, expected {n}"))
            }
            Err(error) => {
                stats.record_failure(&format!("connection {id}: command failed: {error}"))
            }
        }
        seen.store(connection.authentications(), Ordering::SeqCst);
        n += 1;
        thread::sleep(Duration::from_millis(10));
    }
}

/// Opens a new connection every 2 s, so each handshake must use a token that is valid.
fn reconnect_loop(url: &str, provider: &EntraIdProvider, stats: &Stats) {
    while !stats.stop.load(Ordering::SeqCst) {
        let result = EntraConnection::open(url, provider)
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
        match result {
            Ok(_) => {
                stats.ok.fetch_add(1, Ordering::SeqCst);
            }
            Err(error) => stats.record_failure(&format!("new connection failed: {error}")),
        };
        thread::sleep(Duration::from_secs(2));
    }
}

/// Waits up to 2 s until every worker has authenticated once per token so far, and
/// returns how many have.
fn wait_for_reauthentication(provider: &EntraIdProvider, generations: &[Arc<AtomicU64>]) -> usize {
    // Each connection authenticates once per token: the handshake, then one AUTH per renewal.
    let tokens = provider.generation();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let done = generations
            .iter()
            .filter(|g| g.load(Ordering::SeqCst) >= tokens)
            .count();
        if done == generations.len() || Instant::now() >= deadline {
            return done;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn seconds_until(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::now())
        .map_or(0, |d| d.as_secs_f64().round() as u64)
}
