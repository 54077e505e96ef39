//! The smol and async-std providers with the `redis` crate's async connections through the
//! Azure-like proxy: which handles keep renewal going, when the renewal task ends, and how
//! many `AUTH` commands a connection sends.
//!
//! Each scenario is generic over the runtime and runs under smol's and async-std's own
//! `block_on`. The token endpoint is the std-only one, so no tokio runtime runs in this
//! process. Each scenario starts its own `redis-server`, proxy and endpoint, so scenarios
//! can run side by side.
#![cfg(any(feature = "smol", feature = "async-std"))]

mod common;

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::{Either, select};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncCommands, AsyncConnectionConfig, Client};
use redis_entraid::aio::EntraIdProvider;
use redis_entraid::{ClientSecretCredential, Error, Exchange, RefreshPolicy, TokenSource};

use common::async_scenarios::TestRuntime;
use common::azure_proxy::AzureProxy;
use common::plain_endpoint::PlainTokenEndpoint;
use common::redis_server::RedisServer;

/// Tokens live 3 to 4 s (the endpoint's `exp` has whole seconds) and are refreshed 2 s
/// before expiry.
const LIFETIME: Duration = Duration::from_secs(4);
const MARGIN: Duration = Duration::from_secs(2);

/// Runs `scenario` under `R`'s `block_on`.
fn run<R: TestRuntime>(scenario: impl Future<Output = ()>) {
    R::block_on(scenario);
}

/// A token source that sets a flag when it is dropped. The renewal task owns its source,
/// so the flag shows that the task has ended.
struct DropFlag {
    inner: ClientSecretCredential,
    dropped: Arc<AtomicBool>,
}

impl TokenSource for DropFlag {
    fn name(&self) -> &str {
        TokenSource::name(&self.inner)
    }

    fn exchange(&self) -> Box<dyn Exchange> {
        self.inner.exchange()
    }
}

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

/// A `redis-server` behind the proxy, and a token endpoint that adds each token to the
/// server's ACL until it expires. The fields are dropped in the order they are declared.
struct Azure {
    proxy: AzureProxy,
    endpoint: PlainTokenEndpoint,
    _redis: RedisServer,
    /// Set when the renewal task of the provider from [`Azure::provider`] has ended.
    renewal_ended: Arc<AtomicBool>,
}

impl Azure {
    fn start(lifetime: Duration) -> Self {
        let redis = RedisServer::start();
        let endpoint = PlainTokenEndpoint::start(lifetime, Some(redis.url()));
        let proxy = AzureProxy::start(redis.port());
        Azure {
            proxy,
            endpoint,
            _redis: redis,
            renewal_ended: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Starts a provider on the endpoint that refreshes `margin` before expiry, and waits
    /// for its first token.
    async fn provider<R: TestRuntime>(&self, margin: Duration) -> EntraIdProvider<R> {
        self.provider_with(RefreshPolicy::default().with_margin(margin))
            .await
    }

    /// Starts a provider on the endpoint with `policy`, and waits for its first token.
    async fn provider_with<R: TestRuntime>(&self, policy: RefreshPolicy) -> EntraIdProvider<R> {
        let source = DropFlag {
            inner: self.endpoint.credential(),
            dropped: Arc::clone(&self.renewal_ended),
        };
        let provider = EntraIdProvider::<R>::builder(source)
            .refresh_policy(policy)
            .start();
        provider.get_credentials_async().await.expect("first token");
        provider
    }

    async fn multiplexed<R: TestRuntime>(
        &self,
        provider: &EntraIdProvider<R>,
    ) -> MultiplexedConnection {
        let config = AsyncConnectionConfig::new().set_credentials_provider(provider.clone());
        Client::open(self.proxy.url())
            .unwrap()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("connect through the proxy")
    }

    /// Lists the `exp` of the token in each `AUTH` of the proxy's only connection.
    fn only_connection_expiries(&self) -> Vec<u64> {
        let expiries = self.proxy.token_expiries();
        assert_eq!(expiries.len(), 1, "one connection through the proxy");
        expiries[0].clone()
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Checks `condition` every 20 ms until it holds, failing the test after `limit`.
async fn eventually<R: TestRuntime>(
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

/// Awaits `future`, failing the test with `description` after `limit`.
async fn within<R: TestRuntime, T>(
    limit: Duration,
    description: &str,
    future: impl Future<Output = T>,
) -> T {
    match select(pin!(future), pin!(R::sleep(limit))).await {
        Either::Left((output, _)) => output,
        Either::Right(_) => panic!("{description}: not done after {limit:?}"),
    }
}

async fn set_and_get<C: AsyncCommands>(connection: &mut C, value: u64) -> redis::RedisResult<u64> {
    connection.set::<_, _, ()>("k", value).await?;
    connection.get("k").await
}

/// Checks that no token request arrives for two token lifetimes, and that the renewal
/// task has ended.
async fn assert_renewal_ended<R: TestRuntime>(azure: &Azure) {
    eventually::<R>(LIFETIME, "renewal task ended", || {
        azure.renewal_ended.load(Ordering::SeqCst)
    })
    .await;
    let requests = azure.endpoint.requests();
    // A renewal that went on would request a token every LIFETIME - MARGIN.
    R::sleep(LIFETIME * 2).await;
    assert_eq!(
        azure.endpoint.requests(),
        requests,
        "token requests after renewal ended"
    );
}

/// Checks that with a provider and a clone, a `MultiplexedConnection` opened through one
/// of them keeps renewal going after the other is dropped: one token request per renewal,
/// and an `AUTH` with the new token before the first one expires. With `drop_original`,
/// the original is dropped and the connection uses the clone; otherwise the clone is
/// dropped after the connection was opened through it. Dropping the connection and the
/// last handle then ends the renewal task.
pub async fn renewal_survives_dropping_one_handle<R: TestRuntime>(drop_original: bool) {
    let azure = Azure::start(LIFETIME);
    let original = azure.provider::<R>(MARGIN).await;
    // The next request is the refresh, at least a second after the first token.
    let requests = azure.endpoint.requests();
    let first_generation = original.generation();
    let clone = original.clone();
    let mut connection = azure.multiplexed(&clone).await;
    let (kept, dropped) = if drop_original {
        (clone, original)
    } else {
        (original, clone)
    };
    drop(dropped);
    let first_exp = azure.only_connection_expiries()[0];

    let mut changes = kept.credentials_stream();
    while kept.generation() == first_generation {
        within::<R, _>(
            LIFETIME,
            "renewal",
            futures_util::StreamExt::next(&mut changes),
        )
        .await;
    }
    assert_eq!(kept.generation(), first_generation + 1);
    assert_eq!(
        azure.endpoint.requests(),
        requests + 1,
        "one token request for one renewal"
    );
    drop(changes);

    // The proxy closes the connection at the first token's `exp` unless a newer token
    // authenticated it before then.
    let wait = first_exp as f64 + 0.3 - unix_now();
    R::sleep(Duration::from_secs_f64(wait.max(0.0))).await;
    assert_eq!(
        azure.proxy.closed_at_expiry(),
        0,
        "closed at the first expiry"
    );
    let expiries = azure.only_connection_expiries();
    assert!(
        expiries.iter().any(|exp| *exp > first_exp),
        "no AUTH with a newer token: {expiries:?}"
    );
    let value = set_and_get(&mut connection, 7).await;
    assert_eq!(value.expect("command after the first expiry"), 7);
    assert!(!azure.renewal_ended.load(Ordering::SeqCst));

    drop(connection);
    drop(kept);
    assert_renewal_ended::<R>(&azure).await;
}

/// Checks that `shutdown` ends renewal while a connection still reads the provider's
/// credential streams, and that later callers get [`Error::ShutDown`].
pub async fn shutdown_ends_renewal_despite_connection<R: TestRuntime>() {
    let azure = Azure::start(LIFETIME);
    let provider = azure.provider::<R>(MARGIN).await;
    let mut connection = azure.multiplexed(&provider).await;
    assert_eq!(set_and_get(&mut connection, 1).await.expect("command"), 1);

    provider.shutdown();
    assert_renewal_ended::<R>(&azure).await;
    // The token has expired by now, and no new one will come.
    let requested_at = Instant::now();
    let outcome = provider.get_credentials_async().await;
    assert!(matches!(outcome, Err(Error::ShutDown)), "{outcome:?}");
    assert!(
        requested_at.elapsed() < Duration::from_millis(100),
        "waited for a token"
    );
    drop(connection);
}

/// Checks that while the identity endpoint is down, a new connection authenticates at once
/// with the token that is still valid. When the outage outlasts that token, callers get
/// [`Error::TokenExpired`] at once, and the first token after the outage restores service
/// without a restart.
pub async fn outage_serves_valid_token_then_recovers<R: TestRuntime>() {
    let azure = Azure::start(Duration::from_secs(6));
    // Retries run at the cap after expiry, so a 1 s cap brings the first token after the
    // outage within a second.
    let policy = RefreshPolicy::default()
        .with_margin(Duration::from_secs(4))
        .with_max_backoff(Duration::from_secs(1));
    let provider = azure.provider_with::<R>(policy).await;
    azure.endpoint.set_down(true);
    // The refresh falls due after 2 s and fails, while the token stays valid until 5 to 6 s.
    eventually::<R>(Duration::from_secs(5), "failed refresh", || {
        azure.endpoint.failures() > 0
    })
    .await;
    let started = Instant::now();
    let mut during_outage = azure.multiplexed(&provider).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "connecting took {:?}",
        started.elapsed()
    );
    let value = set_and_get(&mut during_outage, 1).await;
    assert_eq!(value.expect("command during the outage"), 1);

    let first_exp = azure.endpoint.issued()[0].exp;
    let wait = first_exp as f64 + 0.3 - unix_now();
    R::sleep(Duration::from_secs_f64(wait.max(0.0))).await;
    let requested_at = Instant::now();
    let outcome = provider.get_credentials_async().await;
    assert!(
        matches!(outcome, Err(Error::TokenExpired { .. })),
        "{outcome:?}"
    );
    assert!(
        requested_at.elapsed() < Duration::from_millis(100),
        "waited for a token"
    );
    let generation = provider.generation();
    azure.endpoint.set_down(false);
    eventually::<R>(Duration::from_secs(5), "token after the outage", || {
        provider.generation() > generation
    })
    .await;
    let mut after_outage = azure.multiplexed(&provider).await;
    let value = set_and_get(&mut after_outage, 2).await;
    assert_eq!(value.expect("command after the outage"), 2);
    assert_eq!(azure.proxy.expired_tokens(), 0, "an expired token was sent");
}

/// Pins the number of `AUTH` commands of a `MultiplexedConnection` and of a
/// `ConnectionManager` (redis 1.8.2): one more than the distinct tokens they were given.
///
/// The connection authenticates its handshake with the first item of one subscription to
/// the provider. Its re-authentication task subscribes again and sends `AUTH` for that
/// subscription's first item, which is the same token. After that, it sends one `AUTH`
/// per renewal, and none while the endpoint returns the same token again.
///
/// `EntraConnection::multiplexed` sends exactly one per distinct token; the test of that
/// is `auth_count_equals_distinct_tokens` in `tests/async_faults.rs`.
pub async fn auth_count_is_distinct_tokens_plus_one<R: TestRuntime>() {
    // Long enough that the first token outlives the phase in which it comes back.
    let azure = Azure::start(Duration::from_secs(10));
    let provider = azure.provider::<R>(Duration::from_secs(8)).await;
    let first_generation = provider.generation();
    let mut multiplexed = azure.multiplexed(&provider).await;
    let config = ConnectionManagerConfig::new().set_credentials_provider(provider.clone());
    let client = Client::open(azure.proxy.url()).unwrap();
    let mut manager = ConnectionManager::new_with_config(client, config)
        .await
        .expect("connect the manager");
    assert_eq!(set_and_get(&mut multiplexed, 1).await.expect("command"), 1);
    assert_eq!(set_and_get(&mut manager, 2).await.expect("command"), 2);

    let requests = azure.endpoint.requests();
    azure.endpoint.repeat_last_token(true);
    eventually::<R>(
        Duration::from_secs(8),
        "two requests for the same token",
        || azure.endpoint.requests() >= requests + 2,
    )
    .await;
    assert_eq!(
        provider.generation(),
        first_generation,
        "the same token changes nothing"
    );
    azure.endpoint.repeat_last_token(false);
    eventually::<R>(Duration::from_secs(15), "two renewals", || {
        provider.generation() >= first_generation + 2
    })
    .await;
    let tokens = (provider.generation() - first_generation + 1) as usize;
    let expected = tokens + 1;
    eventually::<R>(Duration::from_secs(2), "an AUTH per token", || {
        azure.proxy.authentications().iter().all(|n| *n >= expected)
    })
    .await;
    // Renewals continue, so count only the AUTHs up to the last token counted above.
    let last_exp = azure.endpoint.issued()[tokens - 1].exp;
    for (connection, expiries) in azure.proxy.token_expiries().iter().enumerate() {
        let sent: Vec<u64> = expiries
            .iter()
            .copied()
            .filter(|e| *e <= last_exp)
            .collect();
        let mut distinct = sent.clone();
        distinct.dedup();
        assert_eq!(distinct.len(), tokens, "connection {connection}: {sent:?}");
        assert_eq!(sent.len(), tokens + 1, "connection {connection}: {sent:?}");
        assert_eq!(sent[0], sent[1], "connection {connection}: {sent:?}");
    }
    assert_eq!(azure.proxy.connections(), 2);
}

#[cfg(feature = "smol")]
mod smol_runtime {
    use redis_entraid::smol::Smol;

    #[test]
    fn renewal_survives_dropping_original() {
        super::run::<Smol>(super::renewal_survives_dropping_one_handle::<Smol>(true));
    }

    #[test]
    fn renewal_survives_dropping_clone() {
        super::run::<Smol>(super::renewal_survives_dropping_one_handle::<Smol>(false));
    }

    #[test]
    fn shutdown_ends_renewal_despite_connection() {
        super::run::<Smol>(super::shutdown_ends_renewal_despite_connection::<Smol>());
    }

    #[test]
    fn outage_serves_valid_token_then_recovers() {
        super::run::<Smol>(super::outage_serves_valid_token_then_recovers::<Smol>());
    }

    #[test]
    fn auth_count_is_distinct_tokens_plus_one() {
        super::run::<Smol>(super::auth_count_is_distinct_tokens_plus_one::<Smol>());
    }
}

#[cfg(feature = "async-std")]
mod async_std_runtime {
    use redis_entraid::async_std::AsyncStd;

    #[test]
    fn renewal_survives_dropping_original() {
        super::run::<AsyncStd>(super::renewal_survives_dropping_one_handle::<AsyncStd>(
            true,
        ));
    }

    #[test]
    fn renewal_survives_dropping_clone() {
        super::run::<AsyncStd>(super::renewal_survives_dropping_one_handle::<AsyncStd>(
            false,
        ));
    }

    #[test]
    fn shutdown_ends_renewal_despite_connection() {
        super::run::<AsyncStd>(super::shutdown_ends_renewal_despite_connection::<AsyncStd>());
    }

    #[test]
    fn outage_serves_valid_token_then_recovers() {
        super::run::<AsyncStd>(super::outage_serves_valid_token_then_recovers::<AsyncStd>());
    }

    #[test]
    fn auth_count_is_distinct_tokens_plus_one() {
        super::run::<AsyncStd>(super::auth_count_is_distinct_tokens_plus_one::<AsyncStd>());
    }
}
