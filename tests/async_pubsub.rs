//! The async `EntraPubSub` through the Azure-like proxy in front of a private
//! `redis-server`, with tokens a few seconds long, under smol and async-std. The
//! publisher connects to `redis-server` directly as the passwordless `default` user, so
//! every connection through the proxy belongs to the subscriber.

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::async_azure::{Azure, wait_until};
use common::async_scenarios::TestRuntime;
use common::azure_proxy::WRONGPASS;
use common::redis_server::RedisServer;
use futures_util::StreamExt;
use futures_util::future::{Either, select};
use redis::Commands;
use redis_entraid::aio::EntraPubSub;
use redis_entraid::async_std::AsyncStd;
use redis_entraid::smol::Smol;

/// The error Redis 7 returns for `AUTH` on a RESP2 connection in subscribe mode.
const AUTH_NOT_ALLOWED: &str = "ERR Can't execute 'auth': only (P|S)SUBSCRIBE / \
                                (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this \
                                context";

impl<R: TestRuntime> Azure<R> {
    async fn subscriber(&self, query: &str) -> EntraPubSub<R> {
        let url = format!("{}{query}", self.proxy.url());
        EntraPubSub::open(url.as_str(), &self.provider)
            .await
            .expect("open the subscriber through the proxy")
    }

    /// Publishes `payload` directly to redis-server and returns the number of receivers.
    fn publish(&self, channel: &str, payload: &str) -> u64 {
        let mut admin = self.redis.admin().expect("admin connection");
        admin.publish(channel, payload).expect("PUBLISH")
    }

    /// Checks that token requests stayed at least the minimum refresh delay (1 s) apart,
    /// so nothing forced a refresh.
    fn assert_no_forced_refresh(&self) {
        let times = self.endpoint.request_times();
        for pair in times.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap > Duration::from_millis(900),
                "token requests {gap:?} apart"
            );
        }
    }
}

/// Publishes the numbers 0, 1, 2, … to each of `channels` directly to redis-server, every
/// 5 ms, on a thread of its own until stopped. The thread returns how many it sent.
fn publisher(redis: &RedisServer, channels: &'static [&'static str]) -> Publisher {
    let stop = Arc::new(AtomicBool::new(false));
    let mut connection = redis.admin().expect("admin connection");
    let flag = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
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
    Publisher { stop, thread }
}

struct Publisher {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<u64>,
}

/// What a subscriber received while the publisher ran.
struct Received {
    sent: u64,
    /// The numbers received on each channel, in the order of the `channels` argument.
    numbers: Vec<Vec<u64>>,
    /// Whether every message on the second channel matched a pattern.
    second_from_pattern: bool,
}

/// Receives until `renewals` more tokens arrived, then stops the publisher and receives
/// until 500 ms pass without a message.
async fn receive<R: TestRuntime>(
    azure: &Azure<R>,
    pubsub: &mut EntraPubSub<R>,
    channels: &[&str],
    renewals: u64,
    publisher: Publisher,
) -> Received {
    let target = azure.provider.generation() + renewals;
    let mut numbers = vec![Vec::new(); channels.len()];
    let mut second_from_pattern = true;
    let mut stopped_at: Option<Instant> = None;
    let started = Instant::now();
    loop {
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(30), "subscriber stalled");
        if stopped_at.is_none() && azure.provider.generation() >= target {
            publisher.stop.store(true, Ordering::SeqCst);
            stopped_at = Some(Instant::now());
        }
        let message = pubsub
            .next_message_timeout(Duration::from_millis(200))
            .await
            .expect("subscriber");
        let Some(message) = message else {
            if stopped_at.is_some_and(|at| at.elapsed() > Duration::from_millis(500)) {
                break;
            }
            continue;
        };
        let name = message.get_channel_name();
        let index = channels.iter().position(|c| *c == name);
        let index = index.expect("a subscribed channel");
        if index == 1 {
            second_from_pattern &= message.from_pattern();
        }
        numbers[index].push(message.get_payload().unwrap());
    }
    let thread = publisher.thread;
    let sent = R::spawn_blocking(move || thread.join().unwrap()).await;
    Received {
        sent,
        numbers,
        second_from_pattern,
    }
}

/// Checks that every number sent arrived on each channel; returns the duplicates.
fn assert_nothing_lost(received: &Received) -> usize {
    let mut duplicates = 0;
    for (channel, numbers) in received.numbers.iter().enumerate() {
        let distinct: BTreeSet<u64> = numbers.iter().copied().collect();
        duplicates += numbers.len() - distinct.len();
        let missing: Vec<u64> = (0..received.sent)
            .filter(|n| !distinct.contains(n))
            .collect();
        assert!(
            missing.is_empty(),
            "channel {channel}: {} of {} messages lost, the first {:?}",
            missing.len(),
            received.sent,
            &missing[..missing.len().min(10)]
        );
    }
    duplicates
}

/// Checks that a RESP2 subscriber moves to a new connection after each of three
/// renewals, before the old token expires, with its channel and pattern, and loses no
/// message.
async fn resp2_subscriber_moves_before_expiry<R: TestRuntime>() {
    let azure = Azure::<R>::start(4, 2).await;
    let mut pubsub = azure.subscriber("").await;
    pubsub.subscribe("ch1").await.unwrap();
    pubsub.psubscribe("news.*").await.unwrap();
    let channels: &'static [&'static str] = &["ch1", "news.a"];
    let publishing = publisher(&azure.redis, channels);
    let started = Instant::now();
    let received = receive(&azure, &mut pubsub, channels, 3, publishing).await;

    assert!(received.sent > 100, "{} messages sent", received.sent);
    let duplicates = assert_nothing_lost(&received);
    assert!(
        received.second_from_pattern,
        "news.a arrived without the pattern"
    );
    assert!(
        pubsub.replacements() >= 3,
        "{} replacements",
        pubsub.replacements()
    );
    assert_eq!(azure.proxy.closed_at_expiry(), 0, "moved before expiry");
    assert_eq!(azure.proxy.expired_tokens(), 0);
    // Each connection authenticated once, in its handshake: no AUTH in subscribe mode.
    let authentications = azure.proxy.authentications();
    assert!(
        authentications.iter().all(|n| *n == 1),
        "{authentications:?}"
    );
    azure.assert_no_forced_refresh();
    eprintln!(
        "RESP2: {} sent per channel, {} received, {duplicates} duplicates, {} replacements, \
         {:?}",
        received.sent,
        received.numbers.iter().map(Vec::len).sum::<usize>(),
        pubsub.replacements(),
        started.elapsed()
    );
}

/// Checks that a RESP3 subscriber sends `AUTH` in band on its one connection after each
/// of three renewals and receives every message exactly once.
async fn resp3_subscriber_reauthenticates_in_band<R: TestRuntime>() {
    let azure = Azure::<R>::start(4, 2).await;
    let mut pubsub = azure.subscriber("?protocol=resp3").await;
    pubsub.subscribe("ch1").await.unwrap();
    pubsub.psubscribe("news.*").await.unwrap();
    let channels: &'static [&'static str] = &["ch1", "news.a"];
    let publishing = publisher(&azure.redis, channels);
    let started = Instant::now();
    let received = receive(&azure, &mut pubsub, channels, 3, publishing).await;

    assert_eq!(assert_nothing_lost(&received), 0, "duplicates");
    assert!(
        received.second_from_pattern,
        "news.a arrived without the pattern"
    );
    assert_eq!(pubsub.replacements(), 0);
    assert_eq!(azure.proxy.connections(), 1);
    // The handshake, then one AUTH per renewal on the same connection.
    let authentications = azure.proxy.authentications();
    assert!(authentications[0] >= 4, "{authentications:?}");
    assert!(pubsub.authentications() >= 4);
    assert_eq!(azure.proxy.closed_at_expiry(), 0);
    eprintln!(
        "RESP3: {} sent per channel, {} AUTH on one connection, {:?}",
        received.sent,
        authentications[0],
        started.elapsed()
    );
}

/// Checks that after the server closes the connection, the subscriber reconnects and
/// subscribes again to exactly its current channels and patterns.
async fn subscriber_replaces_closed_connection_and_resubscribes<R: TestRuntime>() {
    let azure = Azure::<R>::start(30, 3).await;
    let mut pubsub = azure.subscriber("").await;
    pubsub.subscribe(&["a", "b"]).await.unwrap();
    pubsub.psubscribe("p.*").await.unwrap();
    pubsub.unsubscribe("b").await.unwrap();

    azure.proxy.close_all();
    let limit = Duration::from_secs(5);
    wait_until::<R>(limit, "replacement", || pubsub.replacements() == 1).await;
    assert_eq!(azure.publish("a", "hello"), 1, "resubscribed to a");
    assert_eq!(azure.publish("b", "gone"), 0, "not resubscribed to b");
    assert_eq!(azure.publish("p.x", "matched"), 1, "resubscribed to p.*");

    let mut messages = pubsub.on_message();
    let first = messages.next().await.expect("a message");
    assert_eq!(first.get_payload::<String>().unwrap(), "hello");
    let second = messages.next().await.expect("a message");
    assert_eq!(second.get_payload::<String>().unwrap(), "matched");
    assert_eq!(azure.proxy.connections(), 2);
    assert_eq!(azure.proxy.expired_tokens(), 0);
}

/// Checks that when the server replies to the in-band `AUTH` with the subscribe-mode error,
/// the subscriber moves to a new connection before expiry and forces no token refresh.
async fn auth_not_allowed_moves_without_refresh<R: TestRuntime>() {
    let azure = Azure::<R>::start(4, 2).await;
    let mut pubsub = azure.subscriber("?protocol=resp3").await;
    pubsub.subscribe("ch1").await.unwrap();
    azure.proxy.reject_next_auth(AUTH_NOT_ALLOWED);

    azure.wait_for_renewals(1, Duration::from_secs(10)).await;
    let limit = Duration::from_secs(2);
    wait_until::<R>(limit, "replacement", || pubsub.replacements() == 1).await;
    assert_eq!(
        azure.publish("ch1", "after"),
        1,
        "one subscribed connection"
    );
    let message = pubsub.next_message_timeout(Duration::from_secs(2)).await;
    let message = message.unwrap().expect("the message after the move");
    assert_eq!(message.get_payload::<String>().unwrap(), "after");

    // One more renewal, which the new connection accepts in band.
    azure.wait_for_renewals(1, Duration::from_secs(10)).await;
    let limit = Duration::from_secs(2);
    let proxy = &azure.proxy;
    wait_until::<R>(limit, "in-band AUTH", || proxy.authentications() == [2, 2]).await;
    assert_eq!(pubsub.replacements(), 1);
    assert_eq!(azure.proxy.closed_at_expiry(), 0, "moved before expiry");
    azure.assert_no_forced_refresh();
}

/// Checks that a RESP3 subscriber whose connection closes while it sends `AUTH` for a
/// renewal reconnects with the new token and keeps its subscription.
async fn closed_during_auth_reconnects_with_new_token<R: TestRuntime>() {
    let azure = Azure::<R>::start(4, 2).await;
    let mut pubsub = azure.subscriber("?protocol=resp3").await;
    pubsub.subscribe("ch1").await.unwrap();
    azure.proxy.close_on_next_auth();

    azure.wait_for_renewals(1, Duration::from_secs(10)).await;
    let limit = Duration::from_secs(2);
    wait_until::<R>(limit, "replacement", || pubsub.replacements() == 1).await;
    assert_eq!(azure.publish("ch1", "again"), 1, "resubscribed");
    let message = pubsub.next_message_timeout(Duration::from_secs(2)).await;
    assert!(message.unwrap().is_some(), "no message after the reconnect");

    let expiries = azure.proxy.token_expiries();
    let newest = azure.endpoint.issued().last().unwrap().exp;
    assert_eq!(expiries.len(), 2, "{expiries:?}");
    assert_eq!(
        expiries[1],
        [newest],
        "the new connection used the new token"
    );
    assert_eq!(azure.proxy.expired_tokens(), 0);
}

/// Checks that when the server rejects the renewed token in band, the subscriber reports
/// the rejection, forces a refresh and authenticates the same connection with the next
/// token.
async fn rejected_token_refreshes_and_stays_connected<R: TestRuntime>() {
    let azure = Azure::<R>::start(4, 2).await;
    let mut pubsub = azure.subscriber("?protocol=resp3").await;
    pubsub.subscribe("ch1").await.unwrap();
    azure.proxy.reject_next_auth(WRONGPASS);

    let reported = pubsub.next_message_timeout(Duration::from_secs(5)).await;
    let error = reported.expect_err("the rejection is reported");
    assert_eq!(error.code(), Some("WRONGPASS"), "{error}");
    let limit = Duration::from_secs(3);
    let proxy = &azure.proxy;
    wait_until::<R>(limit, "AUTH with the next token", || {
        proxy.authentications() == [3]
    })
    .await;
    // A forced refresh follows the renewal at once, while scheduled requests stay at
    // least the minimum refresh delay (1 s) apart.
    let times = azure.endpoint.request_times();
    assert!(times.len() >= 3, "{} token requests", times.len());
    let gap = times[2] - times[1];
    assert!(
        gap < Duration::from_millis(900),
        "no forced refresh: {gap:?}"
    );
    assert_eq!(pubsub.replacements(), 0);
    assert_eq!(azure.publish("ch1", "still here"), 1);
    let message = pubsub.next_message_timeout(Duration::from_secs(2)).await;
    assert!(message.unwrap().is_some(), "no message after the rejection");
    assert_eq!(azure.proxy.closed_at_expiry(), 0);
}

/// Runs `scenario` and fails the test if it takes more than 40 s.
fn run<R: TestRuntime>(scenario: impl Future<Output = ()>) {
    R::block_on(async {
        let limit = Duration::from_secs(40);
        match select(pin!(scenario), pin!(R::sleep(limit))).await {
            Either::Left(((), _)) => {}
            Either::Right(_) => panic!("scenario not done after {limit:?}"),
        }
    });
}

#[test]
fn smol_resp2_subscriber_moves_before_expiry() {
    run::<Smol>(resp2_subscriber_moves_before_expiry::<Smol>());
}

#[test]
fn smol_resp3_subscriber_reauthenticates_in_band() {
    run::<Smol>(resp3_subscriber_reauthenticates_in_band::<Smol>());
}

#[test]
fn smol_subscriber_replaces_closed_connection() {
    run::<Smol>(subscriber_replaces_closed_connection_and_resubscribes::<Smol>());
}

#[test]
fn smol_auth_not_allowed_moves_without_refresh() {
    run::<Smol>(auth_not_allowed_moves_without_refresh::<Smol>());
}

#[test]
fn smol_closed_during_auth_reconnects() {
    run::<Smol>(closed_during_auth_reconnects_with_new_token::<Smol>());
}

#[test]
fn smol_rejected_token_refreshes_in_band() {
    run::<Smol>(rejected_token_refreshes_and_stays_connected::<Smol>());
}

#[test]
fn async_std_resp2_subscriber_moves_before_expiry() {
    run::<AsyncStd>(resp2_subscriber_moves_before_expiry::<AsyncStd>());
}

#[test]
fn async_std_resp3_subscriber_reauthenticates_in_band() {
    run::<AsyncStd>(resp3_subscriber_reauthenticates_in_band::<AsyncStd>());
}
