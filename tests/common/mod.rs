//! Fixtures shared by the integration tests and the demo: unsigned JWTs, a private
//! `redis-server`, a mock Entra token endpoint, an Azure-like proxy and test certificates,
//! all on loopback.
#![allow(dead_code)] // Each test binary uses a different part of the fixtures.

#[cfg(any(feature = "smol", feature = "async-std"))]
pub mod async_azure;
#[cfg(any(feature = "smol", feature = "async-std"))]
pub mod async_scenarios;
pub mod azure_proxy;
pub mod certs;
pub mod jwt;
pub mod plain_endpoint;
pub mod redis_server;
pub mod temp_dir;
pub mod token_endpoint;
