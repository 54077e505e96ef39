//! The blocking adapter: token requests over ureq on a background thread, and a Redis
//! connection type that re-authenticates itself.
//!
//! Enabled by the `blocking` feature (on by default).

#[cfg(feature = "certificate")]
mod certificate;
mod connection;
mod local_time;
mod provider;

pub use connection::EntraConnection;
pub use local_time::system_utc_offset;
pub use provider::{DEFAULT_FIRST_TOKEN_TIMEOUT, EntraIdProvider, ProviderBuilder, Subscription};
