//! Scenarios for the smol and async-std adapters against a real `redis-server` and the
//! plain mock token endpoint, generic over the runtime. `tests/smol_redis.rs` and
//! `tests/async_std_redis.rs` run each one under their runtime's own `block_on`; no
//! tokio runtime runs in those processes.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::{Either, select};
use futures_util::{FutureExt, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncCommands, AsyncConnectionConfig, Client, PushInfo, PushKind};
use redis::{StreamingCredentialsProvider, Value};
use redis_entraid::aio::{EntraIdProvider, Runtime};
use redis_entraid::{Credentials, Error, RefreshPolicy};

use super::jwt::OID;
use super::plain_endpoint::{PlainTokenEndpoint, SilentEndpoint};
use super::redis_server::RedisServer;

/// Tokens live 4 s and are refreshed 2 s before expiry, so a renewal lands every 2 s.
const LIFETIME: Duration = Duration::from_secs(4);
const MARGIN: Duration = Duration::from_secs(2);
/// The maximum wait for one renewal: one token lifetime.
const RENEWAL_LIMIT: Duration = LIFETIME;
const TASKS: usize = 4;

/// What the scenarios need from a runtime besides the adapter's own services.
pub trait TestRuntime: Runtime {
    /// Runs `future` to completion on the current thread.
    fn block_on<T>(future: impl Future<Output = T>) -> T;

    /// Spawns `future` and returns a handle that completes with its output.
    fn spawn_task<T: Send + 'static>(
        future: impl Future<Output = T> + Send + 'static,
    ) -> impl Future<Output = T> + Send;
}

fn policy() -> RefreshPolicy {
    RefreshPolicy::default().with_margin(MARGIN)
}

fn start<R: TestRuntime>() -> (RedisServer, PlainTokenEndpoint, EntraIdProvider<R>) {
    let redis = RedisServer::start();
    let endpoint = PlainTokenEndpoint::start(LIFETIME, Some(redis.url()));
    let provider = EntraIdProvider::<R>::builder(endpoint.credential())
        .refresh_policy(policy())
        .start();
    (redis, endpoint, provider)
}

/// Awaits `future`, failing the test with `description` after `limit`.
async fn within<R: Runtime, T>(
    limit: Duration,
    description: &str,
    future: impl Future<Output = T>,
) -> T {
    match select(pin!(future), pin!(R::sleep(limit))).await {
        Either::Left((output, _)) => output,
        Either::Right(_) => panic!("{description}: not done after {limit:?}"),
    }
}

/// Checks `condition` every 20 ms until it holds, failing the test after `limit`.
async fn eventually<R: Runtime>(
    limit: Duration,
    description: &str,
    mut condition: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "{description}: not true after {limit:?}"
        );
        R::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the provider has published `target` credentials in all (the first token
/// counts as one), one renewal limit per missing change.
async fn wait_for_generation<R: Runtime>(provider: &EntraIdProvider<R>, target: u64) {
    let mut changes = provider.credentials_stream();
    while provider.generation() < target {
        let missing = target - provider.generation();
        let limit = RENEWAL_LIMIT * missing as u32;
        let item = within::<R, _>(limit, "next credentials", changes.next()).await;
        item.expect("stream ended").expect("credentials");
    }
}

/// Reads how often the server executed `AUTH`, on a blocking thread.
async fn auth_calls<R: Runtime>(redis_url: &str) -> u64 {
    let url = redis_url.to_owned();
    R::spawn_blocking(move || {
        let mut admin = Client::open(url).unwrap().get_connection().unwrap();
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut admin)
            .unwrap();
        info.lines()
            .find_map(|line| line.strip_prefix("cmdstat_auth:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |calls| calls.parse().unwrap())
    })
    .await
}

/// Waits until the server has executed at least `target` `AUTH` commands.
async fn wait_for_auth_calls<R: Runtime>(redis_url: &str, target: u64) -> u64 {
    let deadline = Instant::now() + RENEWAL_LIMIT;
    loop {
        let calls = auth_calls::<R>(redis_url).await;
        if calls >= target {
            return calls;
        }
        assert!(
            Instant::now() < deadline,
            "{calls} AUTH commands, expected {target}"
        );
        R::sleep(Duration::from_millis(20)).await;
    }
}

type Worker = Pin<Box<dyn Future<Output = u64> + Send>>;

/// Runs `SET`/`GET` on `connection` from several tasks until `stop` is set; each task
/// completes with the number of rounds it finished. Errors are recorded with their time
/// in `errors`, or fail the test when `errors` is `None`.
fn spawn_workers<R, C>(
    connection: &C,
    stop: &Arc<AtomicBool>,
    errors: Option<Arc<Mutex<Vec<Instant>>>>,
) -> Vec<Worker>
where
    R: TestRuntime,
    C: AsyncCommands + Clone + Send + Sync + 'static,
{
    let mut workers: Vec<Worker> = Vec::new();
    for task in 0..TASKS {
        let (mut connection, stop) = (connection.clone(), Arc::clone(stop));
        let errors = errors.clone();
        workers.push(Box::pin(R::spawn_task(async move {
            let key = format!("task:{task}");
            let mut rounds = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let result = set_and_get(&mut connection, &key, rounds).await;
                match (result, &errors) {
                    (Ok(value), _) => {
                        assert_eq!(value, rounds, "task {task} read another value");
                        rounds += 1;
                    }
                    (Err(_), Some(errors)) => errors.lock().unwrap().push(Instant::now()),
                    (Err(error), None) => panic!("task {task}: command failed: {error}"),
                }
                R::sleep(Duration::from_millis(10)).await;
            }
            rounds
        })));
    }
    workers
}

async fn set_and_get<C: AsyncCommands>(
    connection: &mut C,
    key: &str,
    value: u64,
) -> redis::RedisResult<u64> {
    connection.set::<_, _, ()>(key, value).await?;
    connection.get(key).await
}

async fn join_workers<R: Runtime>(stop: &AtomicBool, workers: Vec<Worker>) {
    stop.store(true, Ordering::SeqCst);
    for (task, worker) in workers.into_iter().enumerate() {
        let rounds = within::<R, _>(Duration::from_secs(5), "worker to stop", worker).await;
        assert!(rounds > 0, "task {task} completed no command");
    }
}

/// Checks that a `MultiplexedConnection` serves commands from several tasks through three renewals
/// and sends one `AUTH` per new token.
pub async fn multiplexed_through_renewals<R: TestRuntime>() {
    let (redis, endpoint, provider) = start::<R>();
    let client = Client::open(redis.url()).unwrap();
    let config = AsyncConnectionConfig::new().set_credentials_provider(provider.clone());
    let connection: MultiplexedConnection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect with the first token");
    let first_generation = provider.generation();
    let stop = Arc::new(AtomicBool::new(false));
    let workers = spawn_workers::<R, _>(&connection, &stop, None);

    wait_for_generation(&provider, first_generation + 3).await;
    // The handshake, the first item of the re-authentication stream (the same token),
    // then one AUTH per renewal.
    let renewals = provider.generation() - first_generation;
    let calls = wait_for_auth_calls::<R>(&redis.url(), 2 + renewals).await;
    join_workers::<R>(&stop, workers).await;
    let issued = endpoint.issued().len() as u64;
    assert!(
        calls <= 1 + issued,
        "{calls} AUTH commands for {issued} tokens"
    );
}

/// Checks that a `ConnectionManager` serves commands from several tasks through renewals and a
/// server restart, after which the server accepts only the current token.
pub async fn manager_survives_restart<R: TestRuntime>() {
    let (redis, endpoint, provider) = start::<R>();
    let client = Client::open(redis.url()).unwrap();
    let config = ConnectionManagerConfig::new()
        .set_credentials_provider(provider.clone())
        .set_min_delay(Duration::from_millis(20))
        .set_max_delay(Duration::from_millis(200))
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    let manager = ConnectionManager::new_with_config(client, config)
        .await
        .expect("connect with the first token");
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let workers = spawn_workers::<R, _>(&manager, &stop, Some(Arc::clone(&errors)));

    // Restart right after a renewal, so the token stays current for a while.
    wait_for_generation(&provider, provider.generation() + 1).await;
    let restart_began = Instant::now();
    let current = provider.get_credentials_timeout_async(Duration::ZERO).await;
    let current = current.expect("credentials after a renewal");
    let url = redis.url();
    let redis = R::spawn_blocking(move || restart_accepting_only(redis, &current)).await;
    // Commands fail until the manager has reconnected; then they must work again.
    let recovered = within::<R, _>(Duration::from_secs(10), "reconnect", async {
        let mut probe = manager.clone();
        while set_and_get(&mut probe, "probe", 1).await.is_err() {
            R::sleep(Duration::from_millis(20)).await;
        }
        Instant::now()
    })
    .await;
    assert!(
        auth_calls::<R>(&url).await >= 1,
        "no AUTH after the restart"
    );

    // Two more renewals after the restart, three in all.
    wait_for_generation(&provider, provider.generation() + 2).await;
    join_workers::<R>(&stop, workers).await;
    // In-flight commands may fail up to a response timeout after the reconnect.
    let grace = recovered + Duration::from_secs(2);
    for error_at in errors.lock().unwrap().iter() {
        assert!(
            *error_at >= restart_began && *error_at <= grace,
            "a command failed {:?} after the restart began, outside the restart",
            error_at.duration_since(restart_began)
        );
    }
    assert!(endpoint.issued().len() >= 4);
    drop(redis);
}

/// Restarts the server and lets the ACL user authenticate with `current` only.
fn restart_accepting_only(mut redis: RedisServer, current: &Credentials) -> RedisServer {
    redis.restart();
    let mut admin = redis.admin().unwrap();
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(OID)
        .arg("on")
        .arg("resetpass")
        .arg(format!(">{}", current.password()))
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query::<()>(&mut admin)
        .unwrap();
    redis
}

/// Checks that a stream that is never polled, and one polled once, hold up neither
/// renewal nor the other subscribers. When they are polled at last, they return only the
/// newest credentials.
pub async fn stalled_subscriber_does_not_delay_renewal<R: TestRuntime>() {
    let endpoint = PlainTokenEndpoint::start(LIFETIME, None);
    let provider = EntraIdProvider::<R>::builder(endpoint.credential())
        .refresh_policy(policy())
        .start();
    let never_polled = provider.credentials_stream();
    let mut polled_once = StreamingCredentialsProvider::subscribe(&provider);
    let first = within::<R, _>(RENEWAL_LIMIT, "first credentials", polled_once.next()).await;
    let first = first.unwrap().expect("first credentials");
    let mut active = provider.credentials_stream();
    let mut previous = active.next().await.unwrap().unwrap();
    assert_eq!(previous.password(), first.password());

    let started = Instant::now();
    for renewal in 1..=3 {
        let next = within::<R, _>(RENEWAL_LIMIT, "renewal", active.next()).await;
        let next = next.expect("stream ended").expect("credentials");
        assert_ne!(next.password(), previous.password(), "renewal {renewal}");
        previous = next;
    }
    // Each token is refreshed MARGIN before it expires, so three renewals take about
    // 3 × (LIFETIME − MARGIN); a stalled subscriber would stretch that.
    let limit = (LIFETIME - MARGIN) * 3 + Duration::from_secs(2);
    assert!(
        started.elapsed() < limit,
        "three renewals took {:?}",
        started.elapsed()
    );

    let newest = provider.get_credentials_timeout_async(Duration::ZERO).await;
    let newest = newest.expect("current credentials");
    let mut never_polled = never_polled;
    let late_first = never_polled.next().now_or_never().flatten();
    assert_eq!(late_first.unwrap().unwrap().password(), newest.password());
    let late_change = polled_once.next().now_or_never().flatten();
    assert_eq!(late_change.unwrap().unwrap().password(), newest.password());
    assert!(
        polled_once.next().now_or_never().is_none(),
        "intermediate credentials queued"
    );

    provider.shutdown();
    let end = within::<R, _>(Duration::from_secs(1), "stream end", active.next()).await;
    assert!(end.is_none(), "stream goes on after shutdown");
}

/// Checks that a RESP3 connection stays subscribed through renewals, re-authenticates in-band and
/// keeps receiving messages.
pub async fn resp3_subscriber_keeps_receiving<R: TestRuntime>() {
    let (redis, _endpoint, provider) = start::<R>();
    let received = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let sink = Arc::clone(&received);
    let push_sender = move |push: PushInfo| {
        if push.kind == PushKind::Message {
            sink.lock().unwrap().push(Instant::now());
        }
        Ok::<(), ()>(())
    };
    let resp3 = Client::open(format!("{}?protocol=resp3", redis.url())).unwrap();
    let config = AsyncConnectionConfig::new()
        .set_credentials_provider(provider.clone())
        .set_push_sender(push_sender);
    let mut subscriber = resp3
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect the subscriber");
    subscriber.subscribe("news").await.unwrap();

    let publisher_config = AsyncConnectionConfig::new().set_credentials_provider(provider.clone());
    let mut publisher = Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection_with_config(&publisher_config)
        .await
        .expect("connect the publisher");
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let publishing = {
        let (stop, published) = (Arc::clone(&stop), Arc::clone(&published));
        R::spawn_task(async move {
            while !stop.load(Ordering::SeqCst) {
                let _: () = publisher.publish("news", "update").await.expect("PUBLISH");
                published.fetch_add(1, Ordering::SeqCst);
                R::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let first_generation = provider.generation();
    for renewal in 1..=3 {
        wait_for_generation(&provider, first_generation + renewal).await;
        let renewed_at = Instant::now();
        let description = format!("a message after renewal {renewal}");
        eventually::<R>(Duration::from_secs(2), &description, || {
            received.lock().unwrap().iter().any(|at| *at > renewed_at)
        })
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    within::<R, _>(Duration::from_secs(5), "publisher to stop", publishing).await;
    // Both connections: the handshake, the first stream item, then three renewals.
    wait_for_auth_calls::<R>(&redis.url(), 2 * (2 + 3)).await;
    let ping: Value = redis::cmd("PING")
        .query_async(&mut subscriber)
        .await
        .unwrap();
    assert!(
        matches!(ping, Value::SimpleString(_) | Value::Array(_)),
        "{ping:?}"
    );
    let received = received.lock().unwrap().len() as u64;
    assert!(received > 0);
    assert!(received <= published.load(Ordering::SeqCst));
}

/// Checks that while the identity endpoint never responds, waiting for the first token
/// times out on time, the executor thread keeps running other work, and a zero-timeout
/// call returns at once.
pub async fn first_token_wait_never_blocks_executor<R: TestRuntime>() {
    let silent = SilentEndpoint::start();
    let credential = silent
        .credential()
        .with_request_timeout(Duration::from_secs(3));
    let provider = EntraIdProvider::<R>::builder(credential)
        .first_token_timeout(Duration::from_millis(500))
        .start();
    let ticks = AtomicU64::new(0);
    let ticker = async {
        loop {
            R::sleep(Duration::from_millis(10)).await;
            ticks.fetch_add(1, Ordering::SeqCst);
        }
    };
    let started = Instant::now();
    let outcome = match select(pin!(provider.get_credentials_async()), pin!(ticker)).await {
        Either::Left((outcome, _)) => outcome,
        Either::Right(_) => unreachable!("the ticker never ends"),
    };
    let waited = started.elapsed();
    assert!(matches!(outcome, Err(Error::Timeout { .. })), "{outcome:?}");
    assert!(
        waited >= Duration::from_millis(500),
        "returned after {waited:?}"
    );
    assert!(waited < Duration::from_secs(2), "returned after {waited:?}");
    // About 50 ticks fit in 500 ms; a blocked executor thread would run none.
    let ticks = ticks.load(Ordering::SeqCst);
    assert!(ticks >= 20, "only {ticks} ticks while waiting");

    let requested_at = Instant::now();
    let now = provider.get_credentials_timeout_async(Duration::ZERO).await;
    assert!(matches!(now, Err(Error::NotAcquired { .. })), "{now:?}");
    assert!(requested_at.elapsed() < Duration::from_millis(100));

    // A connection's first credentials time out the same way, as an I/O error, so a
    // ConnectionManager tries again later.
    let mut stream = StreamingCredentialsProvider::subscribe(&provider);
    let first = within::<R, _>(Duration::from_secs(2), "first item", stream.next()).await;
    let error = first.unwrap().expect_err("no token to hand out");
    assert!(error.is_io_error(), "{error}");
}

/// Checks that renewal goes on while a connection keeps the provider's stream, after
/// every other handle is gone, and that dropping the connection stops it.
pub async fn connection_keeps_renewal_alive<R: TestRuntime>() {
    let (redis, endpoint, provider) = start::<R>();
    let client = Client::open(redis.url()).unwrap();
    let config = AsyncConnectionConfig::new().set_credentials_provider(provider.clone());
    let mut connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect with the first token");
    drop(config);
    drop(provider);

    let issued = endpoint.issued().len();
    eventually::<R>(RENEWAL_LIMIT * 2, "two renewals", || {
        endpoint.issued().len() >= issued + 2
    })
    .await;
    wait_for_auth_calls::<R>(&redis.url(), 2 + 2).await;
    set_and_get(&mut connection, "k", 7)
        .await
        .expect("command after renewals");

    drop(connection);
    let requests = endpoint.requests();
    // No event marks the end of renewal: wait one renewal interval and more, and check
    // that no request came.
    R::sleep(LIFETIME - MARGIN + Duration::from_millis(800)).await;
    assert_eq!(
        endpoint.requests(),
        requests,
        "renewal went on without handles"
    );
}

#[cfg(feature = "smol")]
impl TestRuntime for redis_entraid::smol::Smol {
    fn block_on<T>(future: impl Future<Output = T>) -> T {
        smol::block_on(future)
    }

    fn spawn_task<T: Send + 'static>(
        future: impl Future<Output = T> + Send + 'static,
    ) -> impl Future<Output = T> + Send {
        smol::spawn(future)
    }
}

#[cfg(feature = "async-std")]
impl TestRuntime for redis_entraid::async_std::AsyncStd {
    fn block_on<T>(future: impl Future<Output = T>) -> T {
        async_std::task::block_on(future)
    }

    fn spawn_task<T: Send + 'static>(
        future: impl Future<Output = T> + Send + 'static,
    ) -> impl Future<Output = T> + Send {
        async_std::task::spawn(future)
    }
}
