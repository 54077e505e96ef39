//! Fixtures shared by the integration tests and the demo: unsigned JWTs, a private
//! `redis-server`, a mock Entra token endpoint, and an Azure-like proxy, all on loopback.
#![allow(dead_code)] // Each test binary uses a different part of the fixtures.

pub mod azure_proxy;
pub mod jwt;
pub mod redis_server;
pub mod token_endpoint;
