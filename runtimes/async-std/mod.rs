//! The async-std adapter: token renewal as an async-std task, with async-std's timers,
//! and each token request on a thread of its own.
//!
//! Enabled by the `async-std` feature. async-std is discontinued upstream (its authors
//! recommend smol); this adapter is for programs that still run it. [`EntraIdProvider`]
//! implements the `redis` crate's `StreamingCredentialsProvider`; pass it to
//! `AsyncConnectionConfig`, `ConnectionManagerConfig` or `ClusterClientBuilder` with
//! `set_credentials_provider`. The `redis` crate's async I/O uses its `smol-comp`
//! support, which this feature enables and which runs under async-std, because both
//! are built on `async-io`. Nothing here starts or needs a tokio runtime.

use std::future::Future;
use std::time::Duration;

use crate::aio::{Runtime, sealed};

pub use crate::aio::{CredentialsStream, DEFAULT_FIRST_TOKEN_TIMEOUT};

/// A provider whose renewal task runs on async-std.
pub type EntraIdProvider = crate::aio::EntraIdProvider<AsyncStd>;

/// A connection that re-authenticates on its own and retries after `WRONGPASS`; see
/// [`crate::aio::EntraConnection`].
pub type EntraConnection<C = redis::aio::MultiplexedConnection> =
    crate::aio::EntraConnection<AsyncStd, C>;

/// Builds an [`EntraIdProvider`] for async-std.
pub type ProviderBuilder = crate::aio::ProviderBuilder<AsyncStd>;

/// A pub/sub subscriber whose connection task runs on async-std.
pub type EntraPubSub = crate::aio::EntraPubSub<AsyncStd>;

/// The async-std runtime, for [`crate::aio`].
#[derive(Debug, Clone, Copy)]
pub struct AsyncStd;

impl sealed::Sealed for AsyncStd {}

impl Runtime for AsyncStd {
    async fn sleep(duration: Duration) {
        async_std::task::sleep(duration).await;
    }

    fn spawn_blocking<T: Send + 'static>(
        work: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = T> + Send {
        async_std::task::spawn_blocking(work)
    }

    fn spawn(task: impl Future<Output = ()> + Send + 'static) {
        // Dropping an async-std JoinHandle detaches the task.
        drop(async_std::task::spawn(task));
    }
}
