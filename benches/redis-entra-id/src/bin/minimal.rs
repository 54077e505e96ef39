//! Obtains a token from the mock endpoint through the redis crate's
//! `EntraIdCredentialsProvider`, authenticates one `MultiplexedConnection`, sends
//! `PING`, and sleeps `IDLE_SECONDS` (default 0). Prints `authenticated` after `PING`.
//! Environment: `MOCK_AUTHORITY`, `REDIS_URL`, `SSL_CERT_FILE`; see the library.

use std::time::Duration;

use redis::AsyncConnectionConfig;

#[tokio::main]
async fn main() {
    let provider = redis_entra_id_comparison::start_provider();
    let config = AsyncConnectionConfig::new().set_credentials_provider(provider);
    let mut connection = redis::Client::open(redis_entra_id_comparison::variable("REDIS_URL"))
        .expect("REDIS_URL")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect");
    redis::cmd("PING")
        .exec_async(&mut connection)
        .await
        .expect("PING");
    println!("authenticated");
    let idle = std::env::var("IDLE_SECONDS").unwrap_or_else(|_| "0".to_owned());
    let idle: u64 = idle
        .parse()
        .unwrap_or_else(|_| panic!("IDLE_SECONDS is not a number of seconds: {idle}"));
    tokio::time::sleep(Duration::from_secs(idle)).await;
}
