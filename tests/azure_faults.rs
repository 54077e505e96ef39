//! The blocking connection types through the Azure-like proxy: renewals, expiry, closed
//! connections, `WRONGPASS` and `NOPERM`, pub/sub and the r2d2 pool.
//!
//! Tokens live 3 to 4 s (the endpoint's `exp` has whole seconds) and are refreshed 2 s
//! before expiry, so the field cases' hours shrink to seconds.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::azure_proxy::{AzureProxy, NOPERM, WRONGPASS, WRONGPASS_FORMS};
use common::jwt::OID;
use common::redis_server::RedisServer;
use common::token_endpoint::TokenEndpoint;
use redis::{Commands, ConnectionLike, RedisResult, Value};
use redis_entraid::RefreshPolicy;
use redis_entraid::blocking::{
    EntraConnection, EntraConnectionManager, EntraIdProvider, EntraPubSub,
};

/// A redis-server behind the proxy, a token endpoint and a provider, dropped in the order
/// the fields are declared.
struct Azure {
    provider: EntraIdProvider,
    proxy: AzureProxy,
    endpoint: TokenEndpoint,
    redis: RedisServer,
}

impl Azure {
    /// Starts everything with tokens of `lifetime_secs`, refreshed `margin_secs` before
    /// expiry.
    fn start(lifetime_secs: u64, margin_secs: u64) -> Self {
        let redis = RedisServer::start();
        let endpoint = TokenEndpoint::start(Duration::from_secs(lifetime_secs), Some(redis.url()));
        let proxy = AzureProxy::start(redis.port());
        let policy = RefreshPolicy::default().with_margin(Duration::from_secs(margin_secs));
        let provider = EntraIdProvider::builder(endpoint.credential())
            .refresh_policy(policy)
            .first_token_timeout(Duration::from_secs(10))
            .start();
        provider.get_credentials().expect("first token");
        Azure {
            provider,
            proxy,
            endpoint,
            redis,
        }
    }

    fn connect(&self) -> EntraConnection {
        EntraConnection::open(self.proxy.url(), &self.provider).expect("connect through proxy")
    }

    /// Waits until the provider has published `more` new tokens.
    fn wait_for_renewals(&self, more: u64) {
        let target = self.provider.generation() + more;
        wait_until(Duration::from_secs(10 * more), "renewal", || {
            self.provider.generation() >= target
        });
    }

    /// Returns the `exp` of the newest token the provider handed out.
    fn current_exp(&self) -> u64 {
        let credentials = self.provider.get_credentials().unwrap();
        let expires = credentials.expires_on();
        let issued = self.endpoint.issued();
        // The provider's expiry is at most one second before the token's `exp`.
        issued
            .iter()
            .map(|i| i.exp)
            .find(|exp| {
                let exp = std::time::UNIX_EPOCH + Duration::from_secs(*exp);
                exp >= expires && exp <= expires + Duration::from_secs(1)
            })
            .expect("the current token was issued by the endpoint")
    }
}

fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "no {what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn proxy_rejects_expired_token_and_closes_at_expiry() {
    let azure = Azure::start(3, 1);
    drop(azure.provider);
    let issued = azure.endpoint.issued()[0].clone();
    let token = issued.token.expose_secret();
    let url = format!("redis://{OID}:{token}@{}", &azure.proxy.url()[8..]);
    let mut connection = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .expect("a valid token is accepted");
    let _: () = connection.set("k", 1).unwrap();
    wait_until(Duration::from_secs(6), "close at expiry", || {
        azure.proxy.closed_at_expiry() == 1
    });
    assert!(connection.get::<_, u64>("k").is_err());

    let auths_at_server = azure.redis.command_calls("auth");
    let error = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .map(|_| ())
        .unwrap_err();
    assert_eq!(error.kind(), redis::ErrorKind::AuthenticationFailed);
    assert_eq!(azure.proxy.expired_tokens(), 1);
    assert_eq!(azure.redis.command_calls("auth"), auths_at_server);
}

#[test]
fn proxy_answers_unauthenticated_commands_with_noauth() {
    let azure = Azure::start(30, 3);
    let mut plain = redis::Client::open(azure.proxy.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let error = redis::cmd("GET").arg("k").query::<Value>(&mut plain);
    assert_eq!(error.unwrap_err().code(), Some("NOAUTH"));
}

#[test]
fn wrongpass_at_handshake_forces_one_refresh_and_retries() {
    let azure = Azure::start(30, 3);
    for form in WRONGPASS_FORMS {
        let requests = azure.endpoint.requests();
        azure.proxy.reject_next_auth(form);
        let mut connection = azure.connect();
        let _: () = connection.set("k", form).expect(form);
        assert_eq!(azure.endpoint.requests(), requests + 1, "{form}");
        let last = azure.proxy.token_expiries().pop().unwrap();
        assert_eq!(
            last.len(),
            1,
            "{form}: one handshake on the retried connection"
        );
    }
    // The username is the token's oid, never `default` or the client id.
    let usernames = azure.proxy.usernames();
    assert_eq!(usernames.len(), 6);
    assert!(usernames.iter().all(|u| u == OID), "{usernames:?}");
}

#[test]
fn connection_keeps_renewal_after_provider_clone_dropped() {
    for drop_original in [true, false] {
        let azure = Azure::start(4, 2);
        let clone = azure.provider.clone();
        let (kept, dropped) = if drop_original {
            (clone, azure.provider)
        } else {
            (azure.provider, clone)
        };
        let mut connection = EntraConnection::open(azure.proxy.url(), &dropped).unwrap();
        drop(dropped);
        let requests = azure.endpoint.requests();
        let generation = kept.generation();
        wait_until(Duration::from_secs(5), "renewal", || {
            kept.generation() > generation
        });
        assert_eq!(
            azure.endpoint.requests(),
            requests + 1,
            "one request at refresh"
        );
        let _: () = connection
            .set("k", 1)
            .expect("re-authenticated before expiry");
        assert_eq!(connection.authentications(), 2);
        assert_eq!(azure.proxy.closed_at_expiry(), 0);
    }
}

#[test]
fn new_connection_during_outage_uses_current_token() {
    let azure = Azure::start(6, 4);
    azure.endpoint.set_down(true);
    // The refresh falls due after 2 s and fails; the token stays valid until 5 to 6 s.
    wait_until(Duration::from_secs(5), "failed refresh", || {
        azure.endpoint.failures() > 0
    });
    let started = Instant::now();
    let mut connection = azure.connect();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "waited for the endpoint"
    );
    let _: () = connection.set("k", 1).unwrap();
    azure.endpoint.set_down(false);
    azure.wait_for_renewals(1);
    let _: () = connection
        .set("k", 2)
        .expect("new token reaches the connection");
    assert_eq!(connection.authentications(), 2);
}

#[test]
fn wrongpass_on_command_retries_once_with_fresh_token() {
    let azure = Azure::start(30, 3);
    let mut connection = azure.connect();
    for (round, form) in WRONGPASS_FORMS.into_iter().enumerate() {
        let requests = azure.endpoint.requests();
        let authentications = connection.authentications();
        azure.proxy.reject_next_command(form);
        let _: () = connection.set("k", round).expect(form);
        let value: usize = connection.get("k").unwrap();
        assert_eq!(value, round, "{form}");
        assert_eq!(
            azure.endpoint.requests(),
            requests + 1,
            "{form}: one forced refresh"
        );
        assert_eq!(connection.authentications(), authentications + 1, "{form}");
    }
    assert_eq!(azure.proxy.connections(), 1, "no reconnect");
}

#[test]
fn wrongpass_with_fresh_token_is_returned() {
    let azure = Azure::start(30, 3);
    let mut connection = azure.connect();
    let requests = azure.endpoint.requests();
    azure.proxy.reject_next_command(WRONGPASS);
    azure.proxy.reject_next_auth(WRONGPASS);
    let error = connection.set::<_, _, ()>("k", 1).unwrap_err();
    assert_eq!(error.code(), Some("WRONGPASS"), "{error}");
    assert_eq!(
        azure.endpoint.requests(),
        requests + 1,
        "exactly one forced refresh"
    );
    // The handshake and the AUTH with the fresh token; the rejected token is not sent again.
    assert_eq!(azure.proxy.authentications(), vec![2]);

    azure.proxy.reject_next_command(WRONGPASS);
    azure.proxy.reject_next_command(WRONGPASS);
    let error = connection.set::<_, _, ()>("k", 2).unwrap_err();
    assert_eq!(error.code(), Some("WRONGPASS"), "{error}");
    assert_eq!(azure.endpoint.requests(), requests + 2);
    let _: () = connection.set("k", 3).expect("the next command works");
}

#[test]
fn noperm_is_an_ordinary_command_error() {
    let azure = Azure::start(30, 3);
    let mut connection = azure.connect();
    let requests = azure.endpoint.requests();

    azure.proxy.reject_next_command(NOPERM);
    let error = connection.set::<_, _, ()>("k", 1).unwrap_err();
    assert_eq!(error.code(), Some("NOPERM"), "{error}");

    // The same from the server's own ACL.
    let mut admin = azure.redis.admin().unwrap();
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(OID)
        .arg("-set")
        .query::<()>(&mut admin)
        .unwrap();
    let error = connection.set::<_, _, ()>("k", 1).unwrap_err();
    assert_eq!(error.code(), Some("NOPERM"), "{error}");
    let _: Option<u64> = connection.get("k").expect("the connection still works");

    assert_eq!(azure.endpoint.requests(), requests, "no refresh");
    assert_eq!(azure.proxy.connections(), 1, "no reconnect");
    assert_eq!(azure.proxy.authentications(), vec![1], "no AUTH");
}

#[test]
fn idle_connections_get_new_token_before_next_command() {
    let azure = Azure::start(4, 2);
    let mut active = azure.connect();
    let mut idle_reauth = azure.connect();
    let mut idle_expired = azure.connect();

    // One renewal: the idle connection re-authenticates before its next command.
    azure.wait_for_renewals(1);
    let _: () = idle_reauth.set("k", 1).unwrap();
    assert_eq!(idle_reauth.authentications(), 2);

    // Past the first token's expiry: the proxy has closed the connection still using it.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        let _: () = active.set("a", 1).expect("active connection");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        azure.proxy.closed_at_expiry(),
        2,
        "both idle connections closed"
    );
    let _: () = idle_expired
        .set("k", 2)
        .expect("replaced before the command");
    let value: u64 = idle_reauth.get("k").expect("replaced before the command");
    assert_eq!(value, 2);
    assert_eq!(azure.proxy.expired_tokens(), 0, "no expired token sent");
    assert_eq!(azure.proxy.connections(), 5, "two replacements");
}

#[test]
fn pool_reauthenticates_or_replaces_idle_connections() {
    let azure = Azure::start(4, 2);
    let manager = EntraConnectionManager::new(azure.proxy.url(), &azure.provider).unwrap();
    let pool = r2d2::Pool::builder()
        .max_size(2)
        .min_idle(Some(2))
        .build(manager)
        .unwrap();
    {
        let mut a = pool.get().unwrap();
        let mut b = pool.get().unwrap();
        let _: () = a.set("k", 1).unwrap();
        let _: () = b.set("k", 2).unwrap();
    }
    azure.wait_for_renewals(1);
    {
        let mut connection = pool.get().expect("checked out after a renewal");
        assert!(
            connection.authentications() >= 2,
            "re-authenticated at check-out"
        );
        let value: u64 = connection.get("k").unwrap();
        assert_eq!(value, 2);
    }
    // Past every token the pool's connections used.
    std::thread::sleep(Duration::from_secs(5));
    for _ in 0..2 {
        let mut connection = pool.get().expect("checked out after expiry");
        let _: () = connection.set("k", 3).expect("command after expiry");
    }
    assert_eq!(azure.proxy.expired_tokens(), 0);
}

#[test]
fn blocking_command_loop_reauthenticates_between_commands() {
    let azure = Azure::start(4, 2);
    let mut blocked = azure.connect();
    let generation = azure.provider.generation();
    let started = Instant::now();
    while azure.provider.generation() < generation + 3 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "too few renewals"
        );
        let popped: Option<(String, String)> = redis::cmd("BLPOP")
            .arg("q")
            .arg(1)
            .query(&mut blocked)
            .expect("BLPOP across renewals");
        assert_eq!(popped, None);
    }
    let _: Option<(String, String)> = redis::cmd("BLPOP")
        .arg("q")
        .arg(1)
        .query(&mut blocked)
        .unwrap();
    assert_eq!(
        azure.proxy.closed_at_expiry(),
        0,
        "re-authenticated before expiry"
    );
    assert_eq!(azure.proxy.connections(), 1);
    assert!(blocked.authentications() >= 4);
}

#[test]
fn command_blocked_past_expiry_is_not_resent() {
    let azure = Azure::start(4, 2);
    let mut blocked = azure.connect();
    let result: RedisResult<Option<(String, String)>> =
        redis::cmd("BLPOP").arg("q").arg(0).query(&mut blocked);
    // The proxy closed the connection at the token's expiry: BLPOP may have popped
    // before that, so it is not sent again.
    let error = result.unwrap_err();
    assert!(
        error.is_connection_dropped() || error.is_io_error(),
        "{error}"
    );
    assert_eq!(azure.proxy.closed_at_expiry(), 1);
    let _: () = blocked.set("k", 1).expect("the next command reconnects");
    assert_eq!(azure.proxy.connections(), 2);
}

#[test]
fn connection_idle_through_many_renewals_authenticates_before_use() {
    let azure = Azure::start(3, 2);
    let mut c = azure.connect();
    let mut d = azure.connect();
    let _: () = c.set("k", "from c").unwrap();
    // All traffic goes to D for several token lifetimes.
    let generation = azure.provider.generation();
    while azure.provider.generation() < generation + 4 {
        let _: () = d.set("k", "from d").unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let value: String = c.get("k").expect("C authenticates before the command");
    assert_eq!(value, "from d");
    // C's first connection was closed at its token's expiry; the replacement
    // authenticated with the current token in its handshake, before GET.
    let expiries = azure.proxy.token_expiries();
    assert_eq!(expiries.len(), 3);
    assert_eq!(expiries[2].len(), 1);
    assert!(expiries[2][0] > expiries[0][0]);
    assert_eq!(azure.proxy.expired_tokens(), 0);
}

#[test]
fn auth_io_error_replaces_connection() {
    let azure = Azure::start(30, 28);
    let mut x = azure.connect();
    let mut y = azure.connect();
    azure.wait_for_renewals(1);
    azure.proxy.close_on_next_auth();
    let _: () = y.set("k", "y").expect("Y replaced after the failed AUTH");
    let _: () = x.set("k", "x").expect("X re-authenticated in band");
    assert_eq!(x.authentications(), 2);
    assert_eq!(
        y.authentications(),
        2,
        "handshake, then the new connection's"
    );
    let expiries = azure.proxy.token_expiries();
    assert_eq!(expiries.len(), 3, "Y was replaced");
    assert_eq!(expiries[2].len(), 1);
    assert_eq!(expiries[2][0], azure.current_exp());
}

#[test]
fn reconnect_after_close_uses_newest_token() {
    let azure = Azure::start(4, 2);
    let mut connection = azure.connect();
    azure.wait_for_renewals(1);
    let _: () = connection.set("k", 1).unwrap();
    let newest = azure.current_exp();
    azure.proxy.close_all();
    // The first command may have been written before the close was seen, so it may fail;
    // it is never an authentication error.
    if let Err(error) = connection.set::<_, _, ()>("k", 2) {
        assert!(
            error.is_connection_dropped() || error.is_io_error(),
            "{error}"
        );
    }
    let _: () = connection.set("k", 3).expect("reconnected");
    let expiries = azure.proxy.token_expiries();
    assert_eq!(expiries.last().unwrap(), &vec![newest]);
}

#[test]
fn reconnect_after_expiry_waits_for_next_token() {
    let azure = Azure::start(3, 2);
    let mut connection = azure.connect();
    let first_exp = azure.current_exp();
    azure.endpoint.set_down(true);
    // The endpoint fails until the token has expired and the proxy closed the connection.
    wait_until(Duration::from_secs(6), "close at expiry", || {
        azure.proxy.closed_at_expiry() == 1
    });
    let error = connection.set::<_, _, ()>("k", 1).unwrap_err();
    assert!(error.to_string().contains("token expired"), "{error}");
    azure.endpoint.set_down(false);
    let generation = azure.provider.generation();
    wait_until(Duration::from_secs(10), "token after the outage", || {
        azure.provider.generation() > generation
    });
    let _: () = connection.set("k", 2).expect("service restored");
    let expiries = azure.proxy.token_expiries();
    assert!(expiries.last().unwrap()[0] > first_exp);
    assert_eq!(azure.proxy.expired_tokens(), 0, "no expired token sent");
}

#[test]
fn transactions_and_pipelines_stay_matched_across_renewals() {
    let azure = Azure::start(4, 2);
    let mut connection = azure.connect();
    for round in 0..2u64 {
        // Start right after a renewal, so the transaction ends before the token expires.
        azure.wait_for_renewals(1);
        let _: () = connection.set("before", round).unwrap();
        let authentications = azure.proxy.authentications()[0];
        let generation = azure.provider.generation();
        redis::cmd("MULTI").query::<()>(&mut connection).unwrap();
        redis::cmd("INCR")
            .arg("counter")
            .query::<()>(&mut connection)
            .unwrap();
        wait_until(Duration::from_secs(5), "renewal inside MULTI", || {
            azure.provider.generation() > generation
        });
        redis::cmd("SET")
            .arg("inside")
            .arg(round)
            .query::<()>(&mut connection)
            .unwrap();
        let (count, ok): (u64, String) = redis::cmd("EXEC").query(&mut connection).unwrap();
        assert_eq!((count, ok.as_str()), (round + 1, "OK"));
        assert_eq!(
            azure.proxy.authentications()[0],
            authentications,
            "no AUTH inside MULTI"
        );
        let (a, b): (u64, u64) = redis::pipe()
            .set("a", round)
            .ignore()
            .get("a")
            .get("inside")
            .query(&mut connection)
            .unwrap();
        assert_eq!((a, b), (round, round));
        assert_eq!(azure.proxy.authentications()[0], authentications + 1);
    }
    assert_eq!(azure.proxy.connections(), 1);
    assert_eq!(azure.proxy.closed_at_expiry(), 0);
}

#[test]
fn auth_count_equals_distinct_tokens() {
    let azure = Azure::start(10, 8);
    let mut connection = azure.connect();
    let first = azure.provider.generation();
    azure.endpoint.repeat_last_token(true);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let _: () = connection.set("k", 1).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(azure.endpoint.requests() >= 2, "the same token came back");
    assert_eq!(
        azure.provider.generation(),
        first,
        "the same token changes nothing"
    );
    azure.endpoint.repeat_last_token(false);
    let started = Instant::now();
    let last = loop {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "too few renewals"
        );
        let generation = azure.provider.generation();
        let _: () = connection.set("k", 2).unwrap();
        if generation >= first + 2 && azure.provider.generation() == generation {
            break generation;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let tokens = (last - first + 1) as usize;
    assert_eq!(azure.proxy.authentications(), vec![tokens]);
}

/// Publishes numbered messages to `channels` through the proxy until stopped.
fn publisher(
    azure: &Azure,
    channels: &'static [&'static str],
) -> (Arc<AtomicBool>, JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut connection = azure.connect();
    let flag = Arc::clone(&stop);
    let handle = std::thread::spawn(move || {
        let mut sent = 0u64;
        while !flag.load(Ordering::SeqCst) {
            for channel in channels {
                let _: () = connection.publish(*channel, sent).expect("PUBLISH");
            }
            sent += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        sent
    });
    (stop, handle)
}

/// Receives until `renewals` more tokens arrived, then stops the publisher and returns the
/// numbers received on each channel, in `channels` order.
fn receive(
    azure: &Azure,
    pubsub: &mut EntraPubSub,
    channels: &[&str],
    renewals: u64,
    publisher: (Arc<AtomicBool>, JoinHandle<u64>),
) -> (u64, Vec<Vec<u64>>) {
    let target = azure.provider.generation() + renewals;
    let mut received = vec![Vec::new(); channels.len()];
    let mut stopped_at = None;
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "subscriber stalled"
        );
        if stopped_at.is_none() && azure.provider.generation() >= target {
            publisher.0.store(true, Ordering::SeqCst);
            stopped_at = Some(Instant::now());
        }
        let message = pubsub
            .get_message_timeout(Duration::from_millis(200))
            .expect("subscriber");
        let Some(message) = message else {
            if stopped_at.is_some_and(|t| t.elapsed() > Duration::from_millis(500)) {
                break;
            }
            continue;
        };
        let name = message.get_channel_name();
        let index = channels
            .iter()
            .position(|c| *c == name)
            .expect("known channel");
        received[index].push(message.get_payload().unwrap());
    }
    (publisher.1.join().unwrap(), received)
}

fn assert_nothing_lost(sent: u64, received: &[Vec<u64>]) {
    for numbers in received {
        let mut numbers = numbers.clone();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers, (0..sent).collect::<Vec<_>>(), "messages lost");
    }
}

#[test]
fn resp2_subscriber_moves_to_new_connection_before_expiry() {
    let azure = Azure::start(4, 2);
    let mut pubsub = EntraPubSub::open(azure.proxy.url(), &azure.provider).unwrap();
    pubsub.set_check_interval(Duration::from_millis(100));
    pubsub.subscribe("ch1").unwrap();
    pubsub.psubscribe("news.*").unwrap();
    let channels: &'static [&'static str] = &["ch1", "news.a"];
    let publishing = publisher(&azure, channels);
    let (sent, received) = receive(&azure, &mut pubsub, channels, 2, publishing);
    assert!(sent > 100, "{sent} messages");
    assert_nothing_lost(sent, &received);
    assert!(
        pubsub.replacements() >= 2,
        "{} replacements",
        pubsub.replacements()
    );
    assert_eq!(azure.proxy.closed_at_expiry(), 0, "moved before expiry");
    // The in-band AUTH was rejected as not allowed in subscribe mode, which forces no
    // refresh: token requests stay at least the minimum refresh delay (1 s) apart.
    let times = azure.endpoint.request_times();
    for pair in times.windows(2) {
        assert!(pair[1] - pair[0] > Duration::from_millis(900), "{times:?}");
    }
}

#[test]
fn resp3_subscriber_reauthenticates_in_band() {
    let azure = Azure::start(4, 2);
    let url = format!("{}?protocol=resp3", azure.proxy.url());
    let mut pubsub = EntraPubSub::open(url.as_str(), &azure.provider).unwrap();
    pubsub.set_check_interval(Duration::from_millis(100));
    pubsub.subscribe("ch1").unwrap();
    pubsub.psubscribe("news.*").unwrap();
    let channels: &'static [&'static str] = &["ch1", "news.a"];
    let publishing = publisher(&azure, channels);
    let (sent, received) = receive(&azure, &mut pubsub, channels, 2, publishing);
    assert_nothing_lost(sent, &received);
    assert_eq!(pubsub.replacements(), 0);
    assert!(pubsub.authentications() >= 3);
    // The subscriber's connection is the first one; it stayed open.
    assert!(azure.proxy.authentications()[0] >= 3);
    assert_eq!(azure.proxy.closed_at_expiry(), 0);
}

#[test]
fn subscriber_replaces_closed_connection_and_resubscribes() {
    let azure = Azure::start(30, 3);
    let mut pubsub = EntraPubSub::open(azure.proxy.url(), &azure.provider).unwrap();
    pubsub.subscribe(&["a", "b"]).unwrap();
    pubsub.unsubscribe("b").unwrap();
    azure.proxy.close_all();
    assert!(
        pubsub
            .get_message_timeout(Duration::from_millis(300))
            .unwrap()
            .is_none()
    );
    let mut publisher = azure.connect();
    let receivers: u64 = publisher.publish("a", "hello").unwrap();
    assert_eq!(receivers, 1, "resubscribed to a");
    let receivers: u64 = publisher.publish("b", "gone").unwrap();
    assert_eq!(receivers, 0, "not resubscribed to b");
    let message = pubsub
        .get_message_timeout(Duration::from_secs(2))
        .unwrap()
        .unwrap();
    assert_eq!(message.get_payload::<String>().unwrap(), "hello");
    assert_eq!(pubsub.replacements(), 1);
}

#[test]
fn resp3_push_before_auth_reply_is_kept() {
    let azure = Azure::start(4, 2);
    let url = format!("{}?protocol=resp3", azure.proxy.url());
    let mut connection = EntraConnection::open(url.as_str(), &azure.provider).unwrap();
    let (sender, pushes) = std::sync::mpsc::channel();
    connection.set_push_sender(sender);
    connection
        .req_command(redis::cmd("SUBSCRIBE").arg("ch1").set_no_response(true))
        .unwrap();
    azure.wait_for_renewals(1);
    let mut publisher = azure.connect();
    let _: () = publisher.publish("ch1", "first").unwrap();
    // The renewal makes the next command send AUTH; the message published before it
    // arrives ahead of the +OK.
    let _: String = redis::cmd("PING")
        .query(&mut connection)
        .expect("PING after AUTH");
    assert_eq!(connection.authentications(), 2);
    let messages: Vec<redis::Msg> = pushes
        .try_iter()
        .filter_map(redis::Msg::from_push_info)
        .collect();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].get_payload::<String>().unwrap(), "first");
}

#[test]
fn pool_drops_connection_returned_inside_multi() {
    let azure = Azure::start(30, 3);
    let manager = EntraConnectionManager::new(azure.proxy.url(), &azure.provider)
        .unwrap()
        .with_response_timeout(Duration::from_secs(5));
    let pool = r2d2::Pool::builder().max_size(1).build(manager).unwrap();
    {
        let mut connection = pool.get().unwrap();
        let _: () = redis::cmd("MULTI").query(&mut *connection).unwrap();
        let queued: String = redis::cmd("SET")
            .arg("k")
            .arg(1)
            .query(&mut *connection)
            .unwrap();
        assert_eq!(queued, "QUEUED");
    }
    let mut connection = pool.get().unwrap();
    assert!(!connection.in_transaction());
    let value: Option<u64> = connection.get("k").unwrap();
    assert_eq!(value, None, "the abandoned transaction never ran");
}

#[test]
fn exec_in_pipeline_ends_transaction() {
    let azure = Azure::start(30, 3);
    let mut connection = EntraConnection::open(azure.proxy.url(), &azure.provider).unwrap();
    let _: () = redis::cmd("MULTI").query(&mut connection).unwrap();
    let (_, (count,)): (String, (u64,)) = redis::pipe()
        .cmd("INCR")
        .arg("counter")
        .cmd("EXEC")
        .query(&mut connection)
        .unwrap();
    assert_eq!(count, 1);
    assert!(!connection.in_transaction());

    // With the transaction over, a closed connection is replaced as usual.
    azure.proxy.close_all();
    let _ = connection.set::<_, _, ()>("k", 1);
    let _: () = connection.set("k", 2).expect("replaced after the close");
}

#[test]
fn pipeline_after_lost_transaction_fails() {
    let azure = Azure::start(30, 3);
    let mut connection = EntraConnection::open(azure.proxy.url(), &azure.provider).unwrap();
    let _: () = redis::cmd("MULTI").query(&mut connection).unwrap();
    azure.proxy.close_all();
    let _ = redis::cmd("SET")
        .arg("a")
        .arg(1)
        .query::<Value>(&mut connection);

    let error = redis::pipe()
        .set("b", 2)
        .query::<Value>(&mut connection)
        .unwrap_err();
    assert!(error.to_string().contains("transaction lost"), "{error}");
    let error = redis::pipe()
        .cmd("EXEC")
        .query::<Value>(&mut connection)
        .unwrap_err();
    assert!(error.to_string().contains("transaction aborted"), "{error}");
    assert!(!connection.in_transaction());
    let _: () = connection
        .set("c", 3)
        .expect("works after the aborted transaction");
    let b: Option<u64> = connection.get("b").unwrap();
    assert_eq!(b, None);
}
