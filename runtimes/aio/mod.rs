//! The part of the smol and async-std adapters that does not depend on the runtime.
//!
//! [`EntraIdProvider`] runs the token manager in a task of the chosen runtime. The task
//! sleeps on the runtime's timer until the manager's next deadline and runs each token
//! exchange on a thread of its own, which ends with the exchange. It wakes early for
//! [`force_refresh`](EntraIdProvider::force_refresh) and shutdown. The provider
//! implements the `redis` crate's
//! [`StreamingCredentialsProvider`](redis::StreamingCredentialsProvider), so
//! `MultiplexedConnection`, `ConnectionManager` and the async cluster client
//! re-authenticate after each renewal.
//!
//! Use it through the `smol` or `async_std` module of this crate, which fix the runtime.

mod connection;
mod provider;
mod pubsub;
mod stream;
mod thread;

use std::future::Future;
use std::time::Duration;

pub use connection::EntraConnection;
pub use provider::{DEFAULT_FIRST_TOKEN_TIMEOUT, EntraIdProvider, ProviderBuilder};
pub use pubsub::EntraPubSub;
pub use stream::CredentialsStream;

/// The three services the adapters take from an async runtime.
///
/// Implemented by `smol::Smol` and `async_std::AsyncStd` of this crate. The trait is
/// sealed, so the set of runtimes can grow without breaking callers.
pub trait Runtime: sealed::Sealed + Send + Sync + 'static {
    /// Completes after `duration`, on the runtime's own timer.
    fn sleep(duration: Duration) -> impl Future<Output = ()> + Send;

    /// Runs `work` on a thread where blocking is allowed and completes with its result.
    fn spawn_blocking<T: Send + 'static>(
        work: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = T> + Send;

    /// Runs `task` in the background until it completes.
    fn spawn(task: impl Future<Output = ()> + Send + 'static);
}

pub(crate) mod sealed {
    /// Keeps [`Runtime`](super::Runtime) implementable only inside this crate.
    pub trait Sealed {}
}
