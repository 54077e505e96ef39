//! Setup shared by the programs that measure the `redis` crate's `entra-id` feature.
//!
//! azure_identity 0.31 accepts only an `https` authority host (`get_authority_host` in
//! its `lib.rs` rejects any other scheme), so benches/run.sh serves the mock token
//! endpoint over TLS on 127.0.0.1 with a self-signed certificate. The programs trust
//! that certificate through `SSL_CERT_FILE`, which OpenSSL (azure_core's default
//! native-tls transport on Linux) reads per process; no system trust store changes.

use std::sync::Arc;

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_identity::ClientSecretCredentialOptions;
use redis::{EntraIdCredentialsProvider, REDIS_SCOPE_DEFAULT, RetryConfig};

/// The tenant and client that benches/mock_token_endpoint.py accepts.
const TENANT: &str = "00000000-0000-0000-0000-0000000000aa";
const CLIENT_ID: &str = "99999999-8888-7777-6666-555555555555";

/// Starts the redis crate's provider with a client-secret credential whose authority
/// host is `MOCK_AUTHORITY`.
///
/// # Panics
///
/// Panics unless `MOCK_AUTHORITY` is an `https` URL on 127.0.0.1, so that no request
/// can leave the machine: azure_identity's default authority is Microsoft's public
/// cloud.
pub fn start_provider() -> EntraIdCredentialsProvider {
    let authority = variable("MOCK_AUTHORITY");
    assert!(
        authority.starts_with("https://127.0.0.1:"),
        "MOCK_AUTHORITY must be https://127.0.0.1:<port>, not {authority}"
    );
    let mut custom = CustomConfiguration::default();
    custom.authority_host = authority;
    let mut options = ClientSecretCredentialOptions::default();
    options.client_options.cloud = Some(Arc::new(CloudConfiguration::Custom(custom)));
    let mut provider = EntraIdCredentialsProvider::new_client_secret_with_scopes(
        TENANT.to_owned(),
        CLIENT_ID.to_owned(),
        "mock-client-secret".to_owned(),
        vec![REDIS_SCOPE_DEFAULT.to_owned()],
        Some(options),
    )
    .expect("client-secret credential for the mock endpoint");
    provider.start(RetryConfig::default());
    provider
}

/// Returns the environment variable `name`.
///
/// # Panics
///
/// Panics when it is not set.
pub fn variable(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}
