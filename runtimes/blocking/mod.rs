//! The blocking adapter: token requests over ureq on a background thread, and a Redis
//! connection type that re-authenticates itself.
//!
//! Enabled by the `blocking` feature (on by default).

#[cfg(feature = "certificate")]
mod certificate;
mod connection;
mod local_time;
#[cfg(feature = "r2d2")]
mod pool;
mod provider;
mod pubsub;

pub use connection::EntraConnection;
pub use local_time::system_utc_offset;
#[cfg(feature = "r2d2")]
pub use pool::EntraConnectionManager;
pub use provider::{DEFAULT_FIRST_TOKEN_TIMEOUT, EntraIdProvider, ProviderBuilder, Subscription};
pub use pubsub::{DEFAULT_CHECK_INTERVAL, EntraPubSub};
