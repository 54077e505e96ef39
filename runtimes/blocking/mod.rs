//! The blocking adapter: token requests over ureq on a background thread, and a Redis
//! connection type that re-authenticates itself.
//!
//! Enabled by the `blocking` feature (on by default).

mod connection;
mod provider;

pub use connection::EntraConnection;
pub use provider::{DEFAULT_FIRST_TOKEN_TIMEOUT, EntraIdProvider, ProviderBuilder, Subscription};
