//! Obtains a token from a mock endpoint, authenticates one Redis connection, sends
//! `PING`, and optionally stays idle, with one adapter of redis-entraid.
//!
//! Environment: `MOCK_AUTHORITY` (the mock endpoint, such as `http://127.0.0.1:41234`;
//! the credential accepts plain `http` only for loopback hosts), `REDIS_URL`, and
//! `IDLE_SECONDS` (default 0), for which the program sleeps after `PING` while the
//! provider keeps renewing. It prints `authenticated` after `PING` succeeds. With the
//! `core` feature it reads a token response body from standard input instead and prints
//! the Redis username; that build does no I/O of its own.

/// The tenant and client that benches/mock_token_endpoint.py accepts.
#[cfg(any(feature = "blocking", feature = "smol", feature = "async-std"))]
mod settings {
    use std::time::Duration;

    const TENANT: &str = "00000000-0000-0000-0000-0000000000aa";
    const CLIENT_ID: &str = "99999999-8888-7777-6666-555555555555";

    pub fn credential() -> redis_entraid::ClientSecretCredential {
        let authority = variable("MOCK_AUTHORITY");
        redis_entraid::ClientSecretCredential::new(TENANT, CLIENT_ID, "mock-client-secret")
            .and_then(|credential| credential.with_authority_host(&authority))
            .unwrap_or_else(|error| panic!("invalid MOCK_AUTHORITY {authority}: {error}"))
    }

    pub fn redis_url() -> String {
        variable("REDIS_URL")
    }

    pub fn idle() -> Duration {
        let seconds = std::env::var("IDLE_SECONDS").unwrap_or_else(|_| "0".to_owned());
        let seconds = seconds
            .parse()
            .unwrap_or_else(|_| panic!("IDLE_SECONDS is not a number of seconds: {seconds}"));
        Duration::from_secs(seconds)
    }

    fn variable(name: &str) -> String {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
    }
}

#[cfg(feature = "blocking")]
fn main() {
    use redis_entraid::blocking::{EntraConnection, EntraIdProvider};

    let provider = EntraIdProvider::new(settings::credential());
    let mut connection =
        EntraConnection::open(settings::redis_url().as_str(), &provider).expect("connect");
    redis::cmd("PING").exec(&mut connection).expect("PING");
    println!("authenticated");
    std::thread::sleep(settings::idle());
}

#[cfg(feature = "smol")]
fn main() {
    use redis::AsyncConnectionConfig;
    use redis_entraid::smol::EntraIdProvider;

    smol::block_on(async {
        let provider = EntraIdProvider::new(settings::credential());
        let config = AsyncConnectionConfig::new().set_credentials_provider(provider);
        let mut connection = redis::Client::open(settings::redis_url())
            .expect("REDIS_URL")
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("connect");
        redis::cmd("PING")
            .exec_async(&mut connection)
            .await
            .expect("PING");
        println!("authenticated");
        smol::Timer::after(settings::idle()).await;
    });
}

#[cfg(feature = "async-std")]
fn main() {
    use redis::AsyncConnectionConfig;
    use redis_entraid::async_std::EntraIdProvider;

    async_std::task::block_on(async {
        let provider = EntraIdProvider::new(settings::credential());
        let config = AsyncConnectionConfig::new().set_credentials_provider(provider);
        let mut connection = redis::Client::open(settings::redis_url())
            .expect("REDIS_URL")
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("connect");
        redis::cmd("PING")
            .exec_async(&mut connection)
            .await
            .expect("PING");
        println!("authenticated");
        async_std::task::sleep(settings::idle()).await;
    });
}

#[cfg(feature = "core")]
fn main() {
    use std::io::Read;
    use std::time::SystemTime;

    use redis_entraid::{HttpResponse, RefreshPolicy, TokenManager, Username};

    let mut body = Vec::new();
    std::io::stdin()
        .read_to_end(&mut body)
        .expect("read standard input");
    let response = HttpResponse {
        status: 200,
        headers: Vec::new(),
        body,
    };
    let now = SystemTime::now();
    let mut manager = TokenManager::new(RefreshPolicy::default(), Username::default(), 1);
    let _request = manager.poll(now);
    let token = redis_entraid::parse_token_response(&response, now);
    manager.handle_response(now, token);
    match manager.credentials(now) {
        Ok(credentials) => println!("{}", credentials.username()),
        Err(error) => eprintln!("no credentials: {error}"),
    }
}

#[cfg(not(any(
    feature = "blocking",
    feature = "smol",
    feature = "async-std",
    feature = "core"
)))]
compile_error!("build with exactly one of the features blocking, smol, async-std or core");
