//! The blocking connection against a real `redis-server` and a mock token endpoint.

mod common;

use std::time::{Duration, Instant};

use common::jwt::OID;
use common::redis_server::RedisServer;
use common::token_endpoint::TokenEndpoint;
use redis::Commands;
use redis_entraid::RefreshPolicy;
use redis_entraid::blocking::{EntraConnection, EntraIdProvider};

/// Tokens live 4 s and are refreshed 2 s before expiry, so a renewal lands every 2 s.
fn short_token_policy() -> RefreshPolicy {
    RefreshPolicy::default().with_margin(Duration::from_secs(2))
}

fn start(lifetime_secs: u64) -> (RedisServer, TokenEndpoint, EntraIdProvider) {
    let redis = RedisServer::start();
    let endpoint = TokenEndpoint::start(Duration::from_secs(lifetime_secs), Some(redis.url()));
    let provider = EntraIdProvider::builder(endpoint.credential())
        .refresh_policy(short_token_policy())
        .start();
    (redis, endpoint, provider)
}

/// Runs `SET`/`GET` on `connection` until `renewals` more tokens were issued, failing on
/// any command error or after `limit`.
fn run_until_renewals(
    connection: &mut EntraConnection,
    endpoint: &TokenEndpoint,
    renewals: usize,
    limit: Duration,
) -> u64 {
    let target = endpoint.issued().len() + renewals;
    let started = Instant::now();
    let mut commands = 0;
    while endpoint.issued().len() < target {
        assert!(
            started.elapsed() < limit,
            "only {} tokens after {limit:?}",
            endpoint.issued().len()
        );
        let _: () = connection.set("key", commands).expect("SET failed");
        let value: u64 = connection.get("key").expect("GET failed");
        assert_eq!(value, commands);
        commands += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    // The endpoint records a token before the provider has read the response: wait until
    // the provider has published it, then send one more command to pick it up.
    while connection.provider().generation() < target as u64 {
        assert!(
            started.elapsed() < limit,
            "provider did not publish token {target}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let _: () = connection.set("key", commands).expect("SET failed");
    commands + 1
}

#[test]
fn connection_keeps_working_through_renewals() {
    let (redis, endpoint, provider) = start(4);
    let mut connection = EntraConnection::open(redis.url(), &provider).unwrap();
    let commands = run_until_renewals(&mut connection, &endpoint, 3, Duration::from_secs(30));
    assert!(commands > 0);
    // The handshake and each renewal authenticate exactly once: no AUTH on a timer. A
    // renewal may land after the last command, so the count of issued tokens can be one
    // higher than the tokens this connection used.
    let authentications = connection.authentications();
    assert!(authentications >= 4, "{authentications} authentications");
    assert!(authentications as usize <= endpoint.issued().len());
    assert_eq!(redis.command_calls("auth"), authentications);
}

#[test]
fn pipelines_and_transactions_survive_renewals() {
    let (redis, endpoint, provider) = start(4);
    let mut connection = EntraConnection::open(redis.url(), &provider).unwrap();
    let target = endpoint.issued().len() + 2;
    let started = Instant::now();
    let mut round = 0u64;
    while endpoint.issued().len() < target {
        assert!(started.elapsed() < Duration::from_secs(30));
        let (a, b): (u64, u64) = redis::pipe()
            .set("a", round)
            .ignore()
            .set("b", round + 1)
            .ignore()
            .get("a")
            .get("b")
            .query(&mut connection)
            .unwrap();
        assert_eq!((a, b), (round, round + 1));
        let (count,): (u64,) = redis::pipe()
            .atomic()
            .incr("counter", 1)
            .query(&mut connection)
            .unwrap();
        assert_eq!(count, round + 1);
        round += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn same_token_again_sends_no_auth() {
    let (redis, endpoint, provider) = start(4);
    let mut connection = EntraConnection::open(redis.url(), &provider).unwrap();
    endpoint.repeat_last_token(true);
    // The refresh falls due after 1 to 2 s and gets the same token again. The endpoint
    // stops repeating right after that, so the next retry brings a new token before the
    // first one expires and the connection has to be replaced.
    let started = Instant::now();
    while endpoint.requests() < 2 {
        assert!(started.elapsed() < Duration::from_secs(3), "no refresh");
        let _: () = connection.set("k", 1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    // Lets the endpoint finish answering request 2 with the repeated token.
    std::thread::sleep(Duration::from_millis(200));
    let _: () = connection.set("k", 1).unwrap();
    assert_eq!(redis.command_calls("auth"), 1);
    endpoint.repeat_last_token(false);
    run_until_renewals(&mut connection, &endpoint, 1, Duration::from_secs(20));
    assert_eq!(redis.command_calls("auth"), 2);
    assert_eq!(connection.authentications(), 2);
}

#[test]
fn reconnect_authenticates_with_current_token() {
    let (redis, endpoint, provider) = start(4);
    let mut connection = EntraConnection::open(redis.url(), &provider).unwrap();
    run_until_renewals(&mut connection, &endpoint, 1, Duration::from_secs(20));
    // Only the newest token is accepted from now on.
    let newest = endpoint.issued().last().unwrap().token.clone();
    let mut admin = redis.admin().unwrap();
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(OID)
        .arg("resetpass")
        .arg(format!(">{}", newest.expose_secret()))
        .query::<()>(&mut admin)
        .unwrap();
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg(OID)
        .query::<()>(&mut admin)
        .unwrap();
    // The first command after the kill may see the closed socket; the next one reconnects.
    let first: redis::RedisResult<()> = connection.set("k", 1);
    if let Err(error) = first {
        assert!(
            error.is_connection_dropped() || error.is_unrecoverable_error(),
            "{error}"
        );
    }
    let _: () = connection
        .set("k", 2)
        .expect("reconnect with the current token");
    let value: u64 = connection.get("k").unwrap();
    assert_eq!(value, 2);
}

#[test]
fn expired_token_is_rejected_by_fixture() {
    // The fixture must behave like Azure, or the tests above prove nothing.
    let (redis, endpoint, provider) = start(2);
    provider.get_credentials().unwrap();
    drop(provider);
    let first = endpoint.issued().first().unwrap().clone();
    let login = |token: &str| {
        let url = format!("redis://{OID}:{token}@127.0.0.1:{}", redis.port());
        redis::Client::open(url)
            .unwrap()
            .get_connection()
            .map(|_| ())
    };
    login(first.token.expose_secret()).expect("token accepted before expiry");
    std::thread::sleep(Duration::from_millis(2600));
    let error = login(first.token.expose_secret()).unwrap_err();
    // The redis crate reports the server's WRONGPASS as an authentication failure.
    assert_eq!(
        error.kind(),
        redis::ErrorKind::AuthenticationFailed,
        "{error}"
    );
}

#[test]
fn reply_timeout_replaces_connection() {
    let (redis, _endpoint, provider) = start(60);
    let mut connection = EntraConnection::open(redis.url(), &provider).unwrap();
    assert!(
        connection
            .set_response_timeout(Some(Duration::ZERO))
            .is_err()
    );
    connection
        .set_response_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    // The server replies to BLPOP with nil after 2 s, long after the timeout.
    let error = redis::cmd("BLPOP")
        .arg("empty-list")
        .arg(2)
        .query::<redis::Value>(&mut connection)
        .unwrap_err();
    assert!(error.is_timeout(), "{error}");
    // Had the connection been kept, PING would read BLPOP's late nil as its reply.
    let pong: String = redis::cmd("PING").query(&mut connection).unwrap();
    assert_eq!(pong, "PONG");
    assert_eq!(
        connection.authentications(),
        2,
        "the connection was replaced"
    );
}

#[test]
fn timeout_inside_multi_aborts_transaction() {
    let (redis, _endpoint, provider) = start(60);
    let mut connection = EntraConnection::open(redis.url(), &provider).unwrap();
    connection
        .set_response_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let _: () = redis::cmd("MULTI").query(&mut connection).unwrap();
    let mut admin = redis.admin().unwrap();
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1000)
        .arg("WRITE")
        .query::<()>(&mut admin)
        .unwrap();
    let error = redis::cmd("INCR")
        .arg("counter")
        .query::<redis::Value>(&mut connection)
        .unwrap_err();
    assert!(error.is_timeout(), "{error}");
    assert!(
        error.to_string().contains("no reply from Redis within"),
        "{error}"
    );
    std::thread::sleep(Duration::from_millis(1200));

    // The connection closed inside MULTI, so the rest of the transaction must not run
    // on its own on a new connection.
    let error = redis::cmd("INCR")
        .arg("counter")
        .query::<redis::Value>(&mut connection)
        .unwrap_err();
    assert!(error.to_string().contains("transaction lost"), "{error}");
    let error = redis::cmd("EXEC")
        .query::<redis::Value>(&mut connection)
        .unwrap_err();
    assert!(error.to_string().contains("transaction aborted"), "{error}");
    let counter: Option<i64> = admin.get("counter").unwrap();
    assert_eq!(counter, None);

    // After EXEC the connection is replaced and works again.
    let _: () = connection.set("after", 1).unwrap();
    assert_eq!(connection.authentications(), 2);
}
