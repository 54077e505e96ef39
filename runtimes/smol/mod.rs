//! The smol adapter: token renewal as a task on smol's global executor, with smol's
//! timers, and each token request on a thread of its own.
//!
//! Enabled by the `smol` feature. [`EntraIdProvider`] implements the `redis` crate's
//! `StreamingCredentialsProvider`; pass it to `AsyncConnectionConfig`,
//! `ConnectionManagerConfig` or `ClusterClientBuilder` with `set_credentials_provider`.
//! The `redis` crate's async I/O must use its `smol-comp` support, which this feature
//! enables. Nothing here starts or needs a tokio runtime.

use std::future::Future;
use std::time::Duration;

use crate::aio::{Runtime, sealed};

pub use crate::aio::{CredentialsStream, DEFAULT_FIRST_TOKEN_TIMEOUT};

/// A provider whose renewal task runs on smol.
pub type EntraIdProvider = crate::aio::EntraIdProvider<Smol>;

/// A connection that re-authenticates on its own and retries after `WRONGPASS`; see
/// [`crate::aio::EntraConnection`].
pub type EntraConnection<C = redis::aio::MultiplexedConnection> =
    crate::aio::EntraConnection<Smol, C>;

/// Builds an [`EntraIdProvider`] for smol.
pub type ProviderBuilder = crate::aio::ProviderBuilder<Smol>;

/// A pub/sub subscriber whose connection task runs on smol.
pub type EntraPubSub = crate::aio::EntraPubSub<Smol>;

/// The smol runtime, for [`crate::aio`].
#[derive(Debug, Clone, Copy)]
pub struct Smol;

impl sealed::Sealed for Smol {}

impl Runtime for Smol {
    async fn sleep(duration: Duration) {
        smol::Timer::after(duration).await;
    }

    fn spawn_blocking<T: Send + 'static>(
        work: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = T> + Send {
        smol::unblock(work)
    }

    fn spawn(task: impl Future<Output = ()> + Send + 'static) {
        smol::spawn(task).detach();
    }
}
