//! A soak test: continuous load on several connections through the Azure-like proxy, with
//! tokens a few seconds long and an identity endpoint that fails every third request.
//!
//! The blocking connection types run on threads. With the `smol` and `async-std` features,
//! each runtime also runs its own provider on the same endpoint and proxy. It drives the
//! `redis` crate's `MultiplexedConnection` and `ConnectionManager` configured with the
//! provider, the same two wrapped in this crate's async `EntraConnection`, and a RESP2 and
//! a RESP3 `EntraPubSub` that must receive every message published to them.
//!
//! Run it with `SOAK_SECS=120 cargo test --release --all-features --test soak --
//! --ignored` (the default length is 30 s). It prints `commands: N, failed: F, renewals: R`
//! (all connection types and all providers), then the counts per connection type and per
//! provider. It fails unless `F` is 0 and each provider renewed at least once per
//! `TOKEN_LIFETIME + REFRESH_MARGIN` of run time.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::azure_proxy::AzureProxy;
use common::plain_endpoint::PlainTokenEndpoint;
use common::redis_server::RedisServer;
use redis::{Commands, RedisResult};
use redis_entraid::RefreshPolicy;
use redis_entraid::blocking::{
    EntraConnection, EntraConnectionManager, EntraIdProvider, EntraPubSub,
};

/// Token lifetime; the endpoint's whole-second `exp` makes it 3 to 4 s.
const TOKEN_LIFETIME: Duration = Duration::from_secs(4);
/// Refresh this long before expiry, so a renewal lands about every 2 s.
const REFRESH_MARGIN: Duration = Duration::from_secs(2);
/// Every this many token requests, the endpoint fails with HTTP 503. The providers share
/// the endpoint, so the failures fall on each provider in no fixed pattern.
const FAIL_EVERY: u64 = 3;
/// Connections running plain commands, pipelines and transactions.
const COMMAND_WORKERS: usize = 4;
/// An idle time after which the token a connection authenticated with has expired.
const IDLE_PAST_EXPIRY: Duration = TOKEN_LIFETIME.saturating_add(Duration::from_millis(500));
/// How many errors of one connection type to print before staying quiet.
const MAX_PRINTED_ERRORS: u64 = 10;

/// Retry delays shrink with the token lifetime, as the refresh time does. With the default
/// 1 s first retry, two failed requests in a row can outlast a 4 s token. Retries after
/// expiry then run at the 60 s cap (jittered to 30 to 60 s), which leaves that provider
/// without a token for that long. Because the providers share the endpoint, one of them
/// can get several failures in a row.
const INITIAL_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

fn refresh_policy() -> RefreshPolicy {
    RefreshPolicy::default()
        .with_margin(REFRESH_MARGIN)
        .with_initial_backoff(INITIAL_BACKOFF)
        .with_max_backoff(MAX_BACKOFF)
}

/// Counters of one connection type.
struct Tally {
    label: String,
    commands: AtomicU64,
    failed: AtomicU64,
    started: Instant,
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
            let at = self.started.elapsed().as_secs_f64();
            eprintln!("soak failure at {at:.1} s, {}: {message}", self.label);
        }
        None
    }
}

/// One tally per connection type, in the order they were added.
struct Tallies {
    started: Instant,
    all: Mutex<Vec<Arc<Tally>>>,
}

impl Tallies {
    fn new() -> Self {
        Tallies {
            started: Instant::now(),
            all: Mutex::new(Vec::new()),
        }
    }

    /// Returns the tally for `label`, adding it on first use.
    fn get(&self, label: &str) -> Arc<Tally> {
        let mut all = self.all.lock().unwrap();
        if let Some(tally) = all.iter().find(|t| t.label == label) {
            return Arc::clone(tally);
        }
        let tally = Arc::new(Tally {
            label: label.to_owned(),
            commands: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            started: self.started,
        });
        all.push(Arc::clone(&tally));
        tally
    }

    /// Returns the commands and failures of all connection types.
    fn totals(&self) -> (u64, u64) {
        let all = self.all.lock().unwrap();
        let commands = all.iter().map(|t| t.commands.load(Ordering::SeqCst)).sum();
        let failed = all.iter().map(|t| t.failed.load(Ordering::SeqCst)).sum();
        (commands, failed)
    }

    /// Lists `label commands/failed` per connection type.
    fn breakdown(&self) -> String {
        let all = self.all.lock().unwrap();
        let parts: Vec<String> = all
            .iter()
            .map(|t| {
                let commands = t.commands.load(Ordering::SeqCst);
                let failed = t.failed.load(Ordering::SeqCst);
                format!("{} {commands}/{failed}", t.label)
            })
            .collect();
        parts.join(", ")
    }
}

struct Soak {
    provider: EntraIdProvider,
    proxy: AzureProxy,
    tallies: Arc<Tallies>,
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
    redis_log::install();
    let duration = soak_duration();
    let redis = RedisServer::start();
    let endpoint = PlainTokenEndpoint::start(TOKEN_LIFETIME, Some(redis.url()));
    endpoint.fail_every(FAIL_EVERY);
    let proxy = AzureProxy::start(redis.port());
    let provider = EntraIdProvider::builder(endpoint.credential())
        .refresh_policy(refresh_policy())
        .start();
    provider.get_credentials().expect("first token");
    let soak = Soak {
        provider,
        proxy,
        tallies: Arc::new(Tallies::new()),
        stop: Arc::new(AtomicBool::new(false)),
    };
    let first_generation = soak.provider.generation();

    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    for worker in 0..COMMAND_WORKERS {
        workers.push(soak.spawn("blocking", move |s| command_worker(s, worker)));
    }
    workers.push(soak.spawn("blocking", blocking_pop_worker));
    workers.push(soak.spawn("blocking pool", pool_worker));
    workers.push(soak.spawn("blocking pub/sub", |s| subscriber_worker(s, false)));
    workers.push(soak.spawn("blocking pub/sub", |s| subscriber_worker(s, true)));
    let async_loads: Vec<JoinHandle<(&str, u64)>> = vec![
        #[cfg(feature = "smol")]
        async_load::start::<redis_entraid::smol::Smol>(&soak, &endpoint, "smol"),
        #[cfg(feature = "async-std")]
        async_load::start::<redis_entraid::async_std::AsyncStd>(&soak, &endpoint, "async-std"),
    ];

    std::thread::sleep(duration);
    soak.stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.join().expect("soak worker panicked");
    }
    let mut renewals = vec![("blocking", soak.provider.generation() - first_generation)];
    for load in async_loads {
        renewals.push(load.join().expect("async soak panicked"));
    }

    let (commands, failed) = soak.tallies.totals();
    let total_renewals: u64 = renewals.iter().map(|(_, n)| n).sum();
    let per_provider: Vec<String> = renewals.iter().map(|(p, n)| format!("{p} {n}")).collect();
    println!("commands: {commands}, failed: {failed}, renewals: {total_renewals}");
    println!(
        "commands/failed by connection type: {}; renewals by provider: {}",
        soak.tallies.breakdown(),
        per_provider.join(", ")
    );
    println!(
        "token requests: {}, failed by the endpoint: {}, connections: {}, closed at expiry: {}, \
         AUTHs repeating the previous token: {}, redis crate warnings: {}",
        endpoint.requests(),
        endpoint.failures(),
        soak.proxy.connections(),
        soak.proxy.closed_at_expiry(),
        repeated_authentications(&soak.proxy),
        redis_log::warnings()
    );
    assert_eq!(failed, 0, "commands failed");
    assert!(endpoint.failures() > 0, "the endpoint never failed");
    // A renewal lands about every TOKEN_LIFETIME - REFRESH_MARGIN. The bound is three
    // times that interval, which leaves room for failed requests and their retries.
    let min_renewals = duration.as_secs() / (TOKEN_LIFETIME + REFRESH_MARGIN).as_secs();
    for (provider, count) in &renewals {
        assert!(
            *count >= min_renewals,
            "{provider}: only {count} renewals in {duration:?}"
        );
    }
    assert_eq!(soak.proxy.expired_tokens(), 0, "an expired token was sent");
}

/// Counts the `AUTH` commands that sent the same token as the connection's previous one.
/// The proxy records each token by its `exp`, which differs between renewals because a
/// refresh waits at least a second after the last token arrived.
fn repeated_authentications(proxy: &AzureProxy) -> usize {
    proxy
        .token_expiries()
        .iter()
        .map(|exps| exps.windows(2).filter(|pair| pair[0] == pair[1]).count())
        .sum()
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
    /// Runs `work` on a thread, counting its commands under `label`.
    fn spawn(
        &self,
        label: &'static str,
        work: impl FnOnce(WorkerContext) + Send + 'static,
    ) -> JoinHandle<()> {
        let context = WorkerContext {
            url: self.proxy.url(),
            provider: self.provider.clone(),
            tally: self.tallies.get(label),
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
        std::thread::sleep(if round.is_multiple_of(10) {
            IDLE_PAST_EXPIRY
        } else {
            Duration::from_millis(50)
        });
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

/// Counts the warnings and errors that the `redis` crate logs, such as the end of a
/// connection's re-authentication task, and prints the first few.
mod redis_log {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use log::{Level, LevelFilter, Log, Metadata, Record};

    const MAX_PRINTED: usize = 20;

    /// Counts per message, with the part after the first `:` cut off, so that messages
    /// differing only in their error group together.
    static COUNTS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

    struct Counter;

    impl Log for Counter {
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            let target = metadata.target();
            metadata.level() <= Level::Warn && (target == "redis" || target.starts_with("redis::"))
        }

        fn log(&self, record: &Record<'_>) {
            if !self.enabled(record.metadata()) {
                return;
            }
            let message = record.args().to_string();
            let mut counts = COUNTS.lock().unwrap();
            if counts.values().sum::<u64>() < MAX_PRINTED as u64 {
                eprintln!("{} {}: {message}", record.level(), record.target());
            }
            let kind = message.split(':').next().unwrap_or_default().to_owned();
            *counts.entry(kind).or_default() += 1;
        }

        fn flush(&self) {}
    }

    static COUNTER: Counter = Counter;

    pub fn install() {
        log::set_logger(&COUNTER).expect("no other logger in the soak");
        log::set_max_level(LevelFilter::Warn);
    }

    /// Lists the count of each message, or `0`.
    pub fn warnings() -> String {
        let counts = COUNTS.lock().unwrap();
        if counts.is_empty() {
            return "0".to_owned();
        }
        let parts: Vec<String> = counts.iter().map(|(m, n)| format!("{n} × {m}")).collect();
        parts.join("; ")
    }
}

/// The `redis` crate's async connection types under the same kind of load, one provider
/// per runtime. Each type is opened by one function and driven through
/// `redis::aio::ConnectionLike`, so another type needs only its own `open_*` function and
/// one more `load_type` call in `run`.
#[cfg(any(feature = "smol", feature = "async-std"))]
mod async_load {
    use std::collections::BTreeSet;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    use redis::aio::MultiplexedConnection;
    use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
    use redis::{AsyncCommands, AsyncConnectionConfig, Client};
    use redis_entraid::aio::{EntraConnection, EntraIdProvider, EntraPubSub, Runtime};

    use super::common::async_scenarios::TestRuntime;
    use super::common::plain_endpoint::PlainTokenEndpoint;
    use super::{IDLE_PAST_EXPIRY, Soak, Tally, refresh_policy};

    /// Busy connections of each type per runtime.
    const BUSY_CONNECTIONS: usize = 2;
    /// Tasks sharing one busy connection, each on keys of its own.
    const TASKS_PER_CONNECTION: usize = 2;

    type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

    /// What the tasks of one runtime share.
    struct Load<R> {
        runtime: &'static str,
        url: String,
        provider: EntraIdProvider<R>,
        soak_tallies: Arc<super::Tallies>,
        stop: Arc<AtomicBool>,
    }

    /// Starts a provider for `runtime` on `endpoint` and, on a thread of its own, the
    /// runtime's connections. The thread ends when the soak stops and returns the
    /// runtime's name and how many renewals its provider made.
    pub fn start<R: TestRuntime>(
        soak: &Soak,
        endpoint: &PlainTokenEndpoint,
        runtime: &'static str,
    ) -> JoinHandle<(&'static str, u64)> {
        let provider = EntraIdProvider::<R>::builder(endpoint.credential())
            .refresh_policy(refresh_policy())
            .start();
        let load = Load {
            runtime,
            url: soak.proxy.url(),
            provider,
            soak_tallies: Arc::clone(&soak.tallies),
            stop: Arc::clone(&soak.stop),
        };
        std::thread::spawn(move || R::block_on(run(load)))
    }

    async fn run<R: TestRuntime>(load: Load<R>) -> (&'static str, u64) {
        let provider = &load.provider;
        provider.get_credentials_async().await.expect("first token");
        let first_generation = provider.generation();
        let mut tasks = load_type(&load, "multiplexed", open_multiplexed::<R>).await;
        tasks.extend(load_type(&load, "manager", open_manager::<R>).await);
        tasks.extend(load_type(&load, "entra multiplexed", open_entra_multiplexed::<R>).await);
        tasks.extend(load_type(&load, "entra manager", open_entra_manager::<R>).await);
        for resp3 in [false, true] {
            let subscriber = subscriber_task(&load, resp3).await;
            tasks.push(Box::pin(R::spawn_task(subscriber)));
        }
        for task in tasks {
            task.await;
        }
        (load.runtime, provider.generation() - first_generation)
    }

    /// Opens `BUSY_CONNECTIONS` busy connections and one idle connection of one type with
    /// `open`, and spawns their tasks.
    async fn load_type<R, C, F, Opening>(load: &Load<R>, kind: &str, open: F) -> Vec<Task>
    where
        R: TestRuntime,
        C: ConnectionLike + Clone + Send + Sync + 'static,
        F: Fn(String, EntraIdProvider<R>) -> Opening,
        Opening: Future<Output = C>,
    {
        let tally = load.soak_tallies.get(&format!("{} {kind}", load.runtime));
        let mut tasks: Vec<Task> = Vec::new();
        for connection_number in 0..BUSY_CONNECTIONS {
            let connection = open(load.url.clone(), load.provider.clone()).await;
            for task_number in 0..TASKS_PER_CONNECTION {
                let key = format!(
                    "soak:{}:{kind}:{connection_number}:{task_number}",
                    load.runtime
                );
                let busy = busy_task::<R, C>(
                    connection.clone(),
                    Arc::clone(&tally),
                    key,
                    Arc::clone(&load.stop),
                );
                tasks.push(Box::pin(R::spawn_task(busy)));
            }
        }
        let connection = open(load.url.clone(), load.provider.clone()).await;
        let key = format!("soak:{}:{kind}:idle", load.runtime);
        let idle = idle_task::<R, C>(connection, tally, key, Arc::clone(&load.stop));
        tasks.push(Box::pin(R::spawn_task(idle)));
        tasks
    }

    async fn open_multiplexed<R: Runtime>(
        url: String,
        provider: EntraIdProvider<R>,
    ) -> MultiplexedConnection {
        let config = AsyncConnectionConfig::new().set_credentials_provider(provider);
        Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("open a MultiplexedConnection")
    }

    async fn open_manager<R: Runtime>(
        url: String,
        provider: EntraIdProvider<R>,
    ) -> ConnectionManager {
        let config = ConnectionManagerConfig::new().set_credentials_provider(provider);
        ConnectionManager::new_with_config(Client::open(url).unwrap(), config)
            .await
            .expect("open a ConnectionManager")
    }

    /// Returns a task that publishes a counter every 10 ms through an `EntraConnection`
    /// and reads it back through this crate's async `EntraPubSub` until the soak stops,
    /// then records every number that never arrived as a failure.
    async fn subscriber_task<R: TestRuntime>(
        load: &Load<R>,
        resp3: bool,
    ) -> impl Future<Output = ()> + Send + 'static {
        let protocol = if resp3 { "resp3" } else { "resp2" };
        let url = format!("{}?protocol={protocol}", load.url);
        let channel = format!("soak:{}:{protocol}", load.runtime);
        let tally = load
            .soak_tallies
            .get(&format!("{} pub/sub {protocol}", load.runtime));
        let mut subscriber = EntraPubSub::open(url.as_str(), &load.provider)
            .await
            .expect("open an async EntraPubSub");
        subscriber.subscribe(&channel).await.expect("SUBSCRIBE");
        let mut publisher = open_entra_multiplexed(load.url.clone(), load.provider.clone()).await;
        let stop = Arc::clone(&load.stop);
        async move {
            let mut sent = 0u64;
            let mut received = BTreeSet::new();
            let mut last_publish = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if last_publish.elapsed() >= Duration::from_millis(10) {
                    let published = publisher.publish::<_, _, ()>(&channel, sent).await;
                    tally.record("PUBLISH", published);
                    sent += 1;
                    last_publish = Instant::now();
                }
                let message = subscriber
                    .next_message_timeout(Duration::from_millis(10))
                    .await;
                if let Some(Some(message)) = tally.record("next_message", message) {
                    received.insert(message.get_payload::<u64>().unwrap_or(u64::MAX));
                }
            }
            // Collect what is still on its way.
            let deadline = Instant::now() + Duration::from_secs(2);
            while received.len() < sent as usize && Instant::now() < deadline {
                let message = subscriber
                    .next_message_timeout(Duration::from_millis(100))
                    .await;
                if let Ok(Some(message)) = message {
                    received.insert(message.get_payload::<u64>().unwrap_or(u64::MAX));
                }
            }
            let missing = (0..sent).filter(|n| !received.contains(n)).count();
            if missing > 0 {
                tally.fail::<()>(&format!("{channel}: {missing} of {sent} messages lost"));
            }
        }
    }

    async fn open_entra_multiplexed<R: Runtime>(
        url: String,
        provider: EntraIdProvider<R>,
    ) -> EntraConnection<R, MultiplexedConnection> {
        let client = Client::open(url).unwrap();
        EntraConnection::multiplexed(&client, &provider)
            .await
            .expect("open an EntraConnection over a MultiplexedConnection")
    }

    async fn open_entra_manager<R: Runtime>(
        url: String,
        provider: EntraIdProvider<R>,
    ) -> EntraConnection<R, ConnectionManager> {
        EntraConnection::manager(Client::open(url).unwrap(), &provider)
            .await
            .expect("open an EntraConnection over a ConnectionManager")
    }

    /// Runs rounds of commands on `connection` until the soak stops.
    async fn busy_task<R: Runtime, C: ConnectionLike + Send + Sync>(
        mut connection: C,
        tally: Arc<Tally>,
        key: String,
        stop: Arc<AtomicBool>,
    ) {
        let mut rounds = Rounds::new(key);
        while !stop.load(Ordering::Relaxed) {
            rounds.run(&mut connection, &tally).await;
            R::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Runs a round of commands on `connection` once per `IDLE_PAST_EXPIRY`, so the
    /// connection stays idle through renewals and past the expiry of its token.
    async fn idle_task<R: Runtime, C: ConnectionLike + Send + Sync>(
        mut connection: C,
        tally: Arc<Tally>,
        key: String,
        stop: Arc<AtomicBool>,
    ) {
        let mut rounds = Rounds::new(key);
        let mut next_round = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if Instant::now() >= next_round {
                rounds.run(&mut connection, &tally).await;
                next_round = Instant::now() + IDLE_PAST_EXPIRY;
            }
            R::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Plain commands, a pipeline and a transaction per round, checking every reply.
    ///
    /// A failed command is counted once: the checks that follow it skip values it may
    /// have left behind, such as an `INCR` whose reply was lost.
    struct Rounds {
        key: String,
        round: u64,
        /// The counter's value after the last pipeline, if that pipeline succeeded.
        count: Option<u64>,
    }

    impl Rounds {
        fn new(key: String) -> Self {
            Rounds {
                key,
                round: 0,
                count: Some(0),
            }
        }

        async fn run<C: ConnectionLike + Send + Sync>(
            &mut self,
            connection: &mut C,
            tally: &Tally,
        ) {
            let (key, round) = (self.key.as_str(), self.round);
            let set = tally.record("SET", connection.set::<_, _, ()>(key, round).await);
            let get = tally.record("GET", connection.get::<_, u64>(key).await);
            if let (Some(()), Some(value)) = (set, get)
                && value != round
            {
                tally.fail::<()>(&format!("GET {key} returned {value}, expected {round}"));
            }

            let pipeline = redis::pipe()
                .incr(format!("{key}:count"), 1)
                .get(key)
                .query_async::<(u64, u64)>(connection)
                .await;
            let pipeline = tally.record("pipeline", pipeline);
            if let Some((count, value)) = pipeline {
                let count_ok = self.count.is_none_or(|previous| count == previous + 1);
                if !count_ok || (set.is_some() && value != round) {
                    tally.fail::<()>(&format!(
                        "pipeline returned ({count}, {value}) in round {round}"
                    ));
                }
            }
            self.count = pipeline.map(|(count, _)| count);

            let transaction = redis::pipe()
                .atomic()
                .set(format!("{key}:tx"), round)
                .ignore()
                .get(format!("{key}:tx"))
                .query_async::<(u64,)>(connection)
                .await;
            if let Some((value,)) = tally.record("transaction", transaction)
                && value != round
            {
                tally.fail::<()>(&format!("transaction returned {value} in round {round}"));
            }
            self.round += 1;
        }
    }
}
