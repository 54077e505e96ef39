//! Keeps an async-std program's Redis connections authenticated through token renewals.
//!
//! Without configuration it runs locally: a mock Entra token endpoint on loopback issues
//! JWTs that live 6 seconds, and a private `redis-server` accepts each token for its
//! `oid` only until the token expires. A `MultiplexedConnection` and a
//! `ConnectionManager` run commands through three renewals, re-authenticating
//! themselves after each one, and a new connection opens with each token. No tokio
//! runtime runs in the process.
//!
//! With `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET` and `REDIS_HOST` set
//! (and optionally `REDIS_PORT`, default 6380), it connects to that Azure cache over TLS
//! instead, with the default refresh policy, and stops after one round of commands.
//!
//! Run it with `cargo run --example async_std --features async-std`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::ExitCode;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, AsyncConnectionConfig, Client};
use redis_entraid::async_std::EntraIdProvider;
use redis_entraid::{ClientSecretCredential, RefreshPolicy};

use common::plain_endpoint::PlainTokenEndpoint;
use common::redis_server::RedisServer;

fn main() -> ExitCode {
    let result = async_std::task::block_on(async {
        match std::env::var("REDIS_HOST").ok().filter(|h| !h.is_empty()) {
            Some(host) => run_against_azure(&host).await,
            None => run_locally().await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("example failed: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run_against_azure(host: &str) -> Result<(), String> {
    let port = std::env::var("REDIS_PORT").unwrap_or_else(|_| "6380".to_owned());
    let credential = ClientSecretCredential::from_env(|name| std::env::var(name).ok())
        .map_err(|e| e.to_string())?;
    let provider = EntraIdProvider::new(credential);
    run(&format!("rediss://{host}:{port}"), &provider, 0).await
}

async fn run_locally() -> Result<(), String> {
    let redis = RedisServer::start();
    let endpoint = PlainTokenEndpoint::start(Duration::from_secs(6), Some(redis.url()));
    println!(
        "redis-server on {}, mock Entra endpoint on {}",
        redis.url(),
        endpoint.base_url()
    );
    // Renew 3 s before expiry: Azure's 3-minute margin, scaled down to 6-second tokens.
    let provider = EntraIdProvider::builder(endpoint.credential())
        .refresh_policy(RefreshPolicy::default().with_margin(Duration::from_secs(3)))
        .start();
    run(&redis.url(), &provider, 3).await
}

/// Runs commands on two kinds of connection until `renewals` tokens have replaced the
/// first one.
async fn run(url: &str, provider: &EntraIdProvider, renewals: usize) -> Result<(), String> {
    let client = Client::open(url).map_err(|e| e.to_string())?;
    // Both connection kinds take their credentials from the provider and send AUTH with
    // each new token by themselves.
    let config = AsyncConnectionConfig::new().set_credentials_provider(provider.clone());
    let mut connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let manager_config = ConnectionManagerConfig::new().set_credentials_provider(provider.clone());
    let mut manager = ConnectionManager::new_with_config(client.clone(), manager_config)
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;

    let mut changes = provider.credentials_stream();
    for round in 0..=renewals {
        let credentials = changes.next().await.ok_or("provider shut down")?;
        let credentials = credentials.map_err(|e| e.to_string())?;
        let _: () = connection
            .set("greeting", round)
            .await
            .map_err(|e| e.to_string())?;
        let value: usize = manager.get("greeting").await.map_err(|e| e.to_string())?;
        // A new connection authenticates its handshake with the current token.
        let mut fresh = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| e.to_string())?;
        let pong: String = redis::cmd("PING")
            .query_async(&mut fresh)
            .await
            .map_err(|e| e.to_string())?;
        println!(
            "token {} for {}: GET returned {value}, a new connection answered {pong}",
            round + 1,
            credentials.username()
        );
    }
    Ok(())
}
