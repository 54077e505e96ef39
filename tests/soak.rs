//! A soak test: continuous load on several connections through the Azure-like proxy, with
//! tokens a few seconds long and an identity endpoint that fails every third request.
//!
//! Run it with `SOAK_SECS=120 cargo test --release --test soak -- --ignored` (the default
//! length is 30 s). It prints one line, `commands: N, failed: F, renewals: R`, and fails
//! unless `F` is 0 and there was at least one renewal per 6 s of run time.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::azure_proxy::AzureProxy;
use common::redis_server::RedisServer;
use common::token_endpoint::TokenEndpoint;
use redis::{Commands, RedisResult};
use redis_entraid::RefreshPolicy;
use redis_entraid::blocking::{
    EntraConnection, EntraConnectionManager, EntraIdProvider, EntraPubSub,
};

/// Token lifetime; the endpoint's whole-second `exp` makes it 3 to 4 s.
const TOKEN_LIFETIME: Duration = Duration::from_secs(4);
/// Refresh this long before expiry, so a renewal lands about every 2 s.
const REFRESH_MARGIN: Duration = Duration::from_secs(2);
/// Every this many token requests, the endpoint fails with HTTP 503.
const FAIL_EVERY: u64 = 3;
/// Connections running plain commands, pipelines and transactions.
const COMMAND_WORKERS: usize = 4;
/// How many errors to print before staying quiet.
const MAX_PRINTED_ERRORS: u64 = 20;

/// Counters shared by the workers.
#[derive(Default)]
struct Tally {
    commands: AtomicU64,
    failed: AtomicU64,
}

impl Tally {
    fn record<T>(&self, what: &str, result: RedisResult<T>) -> Option<T> {
        self.commands.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(value) => Some(value),
            Err(error) => self.fail(&format!("{what}: {error}")),
        }
    }

    fn fail<T>(&self, message: &str) -> Option<T> {
        let failed = self.failed.fetch_add(1, Ordering::Relaxed);
        if failed < MAX_PRINTED_ERRORS {
            eprintln!("soak failure: {message}");
        }
        None
    }
}

struct Soak {
    provider: EntraIdProvider,
    proxy: AzureProxy,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
}

fn soak_duration() -> Duration {
    let secs = std::env::var("SOAK_SECS")
        .ok()
        .map(|value| value.parse().expect("SOAK_SECS must be whole seconds"))
        .unwrap_or(30);
    Duration::from_secs(secs)
}

#[test]
#[ignore = "runs for SOAK_SECS (default 30 s); run with --ignored"]
fn soak_through_renewals_and_endpoint_failures() {
    let duration = soak_duration();
    let redis = RedisServer::start();
    let endpoint = TokenEndpoint::start(TOKEN_LIFETIME, Some(redis.url()));
    endpoint.fail_every(FAIL_EVERY);
    let proxy = AzureProxy::start(redis.port());
    let provider = EntraIdProvider::builder(endpoint.credential())
        .refresh_policy(RefreshPolicy::default().with_margin(REFRESH_MARGIN))
        .start();
    provider.get_credentials().expect("first token");
    let soak = Soak {
        provider,
        proxy,
        tally: Arc::new(Tally::default()),
        stop: Arc::new(AtomicBool::new(false)),
    };
    let first_generation = soak.provider.generation();

    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    for worker in 0..COMMAND_WORKERS {
        workers.push(soak.spawn(move |s| command_worker(s, worker)));
    }
    workers.push(soak.spawn(blocking_pop_worker));
    workers.push(soak.spawn(pool_worker));
    workers.push(soak.spawn(|s| subscriber_worker(s, false)));
    workers.push(soak.spawn(|s| subscriber_worker(s, true)));
    // TODO: when the smol and async-std adapters land, start their connection types here
    // (MultiplexedConnection and ConnectionManager through the proxy on each runtime), so
    // they share this load, the endpoint failures and the summary line.

    std::thread::sleep(duration);
    soak.stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.join().expect("soak worker panicked");
    }

    let commands = soak.tally.commands.load(Ordering::SeqCst);
    let failed = soak.tally.failed.load(Ordering::SeqCst);
    let renewals = soak.provider.generation() - first_generation;
    println!("commands: {commands}, failed: {failed}, renewals: {renewals}");
    println!(
        "token requests: {}, failed by the endpoint: {}, connections: {}, closed at expiry: {}",
        endpoint.requests(),
        endpoint.failures(),
        soak.proxy.connections(),
        soak.proxy.closed_at_expiry()
    );
    assert_eq!(failed, 0, "commands failed");
    assert!(endpoint.failures() > 0, "the endpoint never failed");
    assert!(
        renewals >= duration.as_secs() / 6,
        "only {renewals} renewals in {duration:?}"
    );
    assert_eq!(soak.proxy.expired_tokens(), 0, "an expired token was sent");
}

/// The parts of the soak a worker needs.
struct WorkerContext {
    url: String,
    provider: EntraIdProvider,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
}

impl WorkerContext {
    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }

    fn connect(&self) -> EntraConnection {
        EntraConnection::open(self.url.as_str(), &self.provider).expect("connect")
    }
}

impl Soak {
    fn spawn(&self, work: impl FnOnce(WorkerContext) + Send + 'static) -> JoinHandle<()> {
        let context = WorkerContext {
            url: self.proxy.url(),
            provider: self.provider.clone(),
            tally: Arc::clone(&self.tally),
            stop: Arc::clone(&self.stop),
        };
        std::thread::spawn(move || work(context))
    }
}

/// Plain commands, a pipeline and a transaction per round, checking every reply.
fn command_worker(context: WorkerContext, worker: usize) {
    let mut connection = context.connect();
    let tally = &context.tally;
    let key = format!("soak:{worker}");
    let mut round = 0u64;
    while context.running() {
        tally.record("SET", connection.set::<_, _, ()>(&key, round));
        if let Some(value) = tally.record("GET", connection.get::<_, u64>(&key))
            && value != round
        {
            tally.fail::<()>(&format!("GET {key} returned {value}, expected {round}"));
        }
        let pipeline = redis::pipe()
            .incr(format!("{key}:count"), 1)
            .get(&key)
            .query::<(u64, u64)>(&mut connection);
        if let Some((count, value)) = tally.record("pipeline", pipeline)
            && (count != round + 1 || value != round)
        {
            tally.fail::<()>(&format!(
                "pipeline returned ({count}, {value}) in round {round}"
            ));
        }
        let transaction = redis::pipe()
            .atomic()
            .set(format!("{key}:tx"), round)
            .ignore()
            .get(format!("{key}:tx"))
            .query::<(u64,)>(&mut connection);
        if let Some((value,)) = tally.record("transaction", transaction)
            && value != round
        {
            tally.fail::<()>(&format!("transaction returned {value} in round {round}"));
        }
        round += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `BLPOP q 1` in a loop on one connection while another pushes, as a long-held
/// connection does.
fn blocking_pop_worker(context: WorkerContext) {
    let mut popper = context.connect();
    let mut pusher = context.connect();
    let tally = &context.tally;
    let mut pushed = 0u64;
    let mut popped = 0u64;
    while context.running() {
        if pushed.is_multiple_of(3) {
            tally.record("RPUSH", pusher.rpush::<_, _, ()>("soak:q", pushed));
        }
        pushed += 1;
        let result: RedisResult<Option<(String, u64)>> =
            redis::cmd("BLPOP").arg("soak:q").arg(1).query(&mut popper);
        if let Some(Some((_, value))) = tally.record("BLPOP", result) {
            if value != popped * 3 {
                tally.fail::<()>(&format!("BLPOP returned {value}, expected {}", popped * 3));
            }
            popped += 1;
        }
    }
}

/// Checks connections out of an r2d2 pool, leaving them idle in between.
fn pool_worker(context: WorkerContext) {
    let manager = EntraConnectionManager::new(context.url.as_str(), &context.provider).unwrap();
    let pool = r2d2::Pool::builder().max_size(3).build(manager).unwrap();
    let tally = &context.tally;
    let mut round = 0u64;
    while context.running() {
        match pool.get() {
            Ok(mut connection) => {
                tally.record("pooled SET", connection.set::<_, _, ()>("soak:pool", round));
            }
            Err(error) => {
                tally.fail::<()>(&format!("pool check-out: {error}"));
            }
        }
        round += 1;
        // Idle long enough that connections miss renewals and tokens expire.
        std::thread::sleep(Duration::from_millis(if round.is_multiple_of(10) {
            4500
        } else {
            50
        }));
    }
}

/// Runs a subscriber on RESP2 or RESP3 fed by a publisher, counting a missing message as
/// a failure.
fn subscriber_worker(context: WorkerContext, resp3: bool) {
    let url = if resp3 {
        format!("{}?protocol=resp3", context.url)
    } else {
        context.url.clone()
    };
    let channel = if resp3 { "soak:resp3" } else { "soak:resp2" };
    let mut subscriber = EntraPubSub::open(url.as_str(), &context.provider).expect("subscriber");
    subscriber.set_check_interval(Duration::from_millis(200));
    subscriber.subscribe(channel).expect("SUBSCRIBE");
    let mut publisher = context.connect();
    let tally = &context.tally;
    let mut sent = 0u64;
    let mut received = BTreeSet::new();
    let mut last_publish = Instant::now();
    while context.running() {
        if last_publish.elapsed() >= Duration::from_millis(10) {
            tally.record("PUBLISH", publisher.publish::<_, _, ()>(channel, sent));
            sent += 1;
            last_publish = Instant::now();
        }
        let message = subscriber.get_message_timeout(Duration::from_millis(10));
        if let Some(Some(message)) = tally.record("get_message", message) {
            received.insert(message.get_payload::<u64>().unwrap_or(u64::MAX));
        }
    }
    // Collect what is still on its way.
    let deadline = Instant::now() + Duration::from_secs(2);
    while received.len() < sent as usize && Instant::now() < deadline {
        if let Ok(Some(message)) = subscriber.get_message_timeout(Duration::from_millis(100)) {
            received.insert(message.get_payload::<u64>().unwrap_or(u64::MAX));
        }
    }
    let missing = (0..sent).filter(|n| !received.contains(n)).count();
    if missing > 0 {
        tally.fail::<()>(&format!("{channel}: {missing} of {sent} messages lost"));
    }
}
