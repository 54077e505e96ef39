//! An Azure-like setup for the async tests: a private `redis-server` behind the proxy, the
//! std-only token endpoint, which adds each token to the server's ACL, and a provider on
//! the runtime under test.

use std::time::{Duration, Instant};

use redis_entraid::RefreshPolicy;
use redis_entraid::aio::{EntraIdProvider, Runtime};

use super::azure_proxy::AzureProxy;
use super::plain_endpoint::PlainTokenEndpoint;
use super::redis_server::RedisServer;

/// The proxied server, the endpoint and the provider, dropped in the order the fields are
/// declared.
pub struct Azure<R> {
    pub provider: EntraIdProvider<R>,
    pub proxy: AzureProxy,
    pub endpoint: PlainTokenEndpoint,
    pub redis: RedisServer,
}

impl<R: Runtime> Azure<R> {
    /// Starts everything with tokens of `lifetime_secs`, refreshed `margin_secs` before
    /// expiry, and waits for the first token.
    pub async fn start(lifetime_secs: u64, margin_secs: u64) -> Self {
        let redis = RedisServer::start();
        let lifetime = Duration::from_secs(lifetime_secs);
        let endpoint = PlainTokenEndpoint::start(lifetime, Some(redis.url()));
        let proxy = AzureProxy::start(redis.port());
        let policy = RefreshPolicy::default().with_margin(Duration::from_secs(margin_secs));
        let provider = EntraIdProvider::<R>::builder(endpoint.credential())
            .refresh_policy(policy)
            .first_token_timeout(Duration::from_secs(10))
            .start();
        provider.get_credentials_async().await.expect("first token");
        Azure {
            provider,
            proxy,
            endpoint,
            redis,
        }
    }

    /// Waits until the provider has published `more` new tokens, failing the test after
    /// `limit_each` per token.
    pub async fn wait_for_renewals(&self, more: u64, limit_each: Duration) {
        let target = self.provider.generation() + more;
        let limit = limit_each * more as u32;
        wait_until::<R>(limit, "renewal", || self.provider.generation() >= target).await;
    }

    /// Returns the `exp` of the newest token the endpoint issued.
    pub fn newest_exp(&self) -> u64 {
        self.endpoint
            .issued()
            .last()
            .expect("a token was issued")
            .exp
    }
}

/// Checks `condition` every 10 ms until it holds, failing the test after `limit`.
pub async fn wait_until<R: Runtime>(
    limit: Duration,
    description: &str,
    mut condition: impl FnMut() -> bool,
) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < limit,
            "no {description} within {limit:?}"
        );
        R::sleep(Duration::from_millis(10)).await;
    }
}
