//! An async pub/sub subscriber that keeps its subscriptions through token renewals.

mod link;
mod queue;

use std::collections::BTreeSet;
use std::fmt;
use std::future::{Future, poll_fn};
use std::marker::PhantomData;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::{Either, select};
use futures_util::task::AtomicWaker;
use futures_util::{Stream, ready};
use log::{debug, warn};
use redis::ToRedisArgs;
use redis::{ConnectionInfo, ErrorKind, IntoConnectionInfo, Msg, RedisError, RedisResult};

use self::link::{Change, Link};
use self::queue::Queue;
use super::Runtime;
use super::provider::EntraIdProvider;
use super::stream::to_redis_error;
use crate::Credentials;
use crate::replies::{classify_error, is_rejection};
use crate::reply::ErrorReply;

/// How long the subscriber waits for the reply to `AUTH` or to a subscription command
/// before it gives the connection up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a retired connection may take to confirm its unsubscription.
const RETIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// The first and the longest wait between two failed attempts to open a connection.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(200);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

/// How many messages the task forwards before it lets the executor run its other ready
/// tasks, such as the provider's renewal. A larger batch costs fewer wake-ups under a
/// flood, and a smaller one keeps the other tasks' wait shorter.
const MESSAGES_PER_TURN: usize = 64;

/// A pub/sub subscriber that authenticates with Entra ID credentials and keeps its
/// channels and patterns through token renewals, for smol and async-std.
///
/// [`open`](Self::open) connects and spawns a task on the runtime `R` that owns the
/// connection. The task forwards messages to [`next_message`](Self::next_message) and
/// [`on_message`](Self::on_message), and it follows the provider's renewals whether or
/// not the caller is reading, so a caller that reads slowly delays neither the move to a
/// new token nor the provider's renewal task. Messages wait in memory until read, with no
/// limit. The task checks for newer credentials before each batch of 64 messages and
/// yields to the executor after each batch.
///
/// NOTE: in redis 1.8.2 the RESP2 pub/sub driver task (`PubSubSink::poll_read`) reads
/// until its socket has no more data, and a RESP3 connection's driver stalled smol's
/// executor the same way in a test. When messages arrive faster than the subscriber
/// parses them, that task keeps the executor thread and delays the renewal task.
///
/// What happens after a renewal depends on the protocol that the connection info
/// chooses:
///
/// - **RESP3** (`?protocol=resp3`): the task sends `AUTH` with the new token on the
///   subscribed connection. Messages that arrive before the `+OK` are kept. If the server
///   replies that `AUTH` is not allowed in this context, the task moves to a new
///   connection as for RESP2, and forces no token refresh. If it rejects the token
///   (`WRONGPASS`), the task forces one refresh and sends `AUTH` again only with a newer
///   token.
/// - **RESP2**: Redis rejects `AUTH` in subscribe mode, and the `redis` crate's RESP2
///   pub/sub connection cannot send it. The task therefore opens a new connection with
///   the new token and subscribes it to the same channels and patterns. Only then does it
///   unsubscribe and close the old one. With the default refresh policy that happens at
///   least 3 minutes before the old token expires.
///
/// A message published while both connections are subscribed arrives twice, once from
/// each. Otherwise the move loses and repeats nothing: messages from the old connection
/// come first, up to its unsubscription, then those of the new one.
///
/// When the server closes the connection (a restart, a failover, or a token that expired
/// because no renewal arrived), the task reconnects with the provider's current token,
/// never an expired one, and subscribes again. Messages published while no connection was
/// subscribed are lost, as pub/sub delivers at most once. A failed attempt is returned by
/// [`next_message`](Self::next_message) as an error, and the task tries again after a
/// delay that doubles from 200 ms up to 10 s. It stops when this value is dropped, or
/// when the provider has shut down and the connection is gone. Like a connection, the
/// task holds a clone of the provider, so renewal runs as long as the subscriber does.
pub struct EntraPubSub<R> {
    requests: Arc<Queue<Request>>,
    messages: Arc<Queue<RedisResult<Msg>>>,
    counters: Arc<Counters>,
    runtime: PhantomData<R>,
}

/// A subscription change requested by the caller, and where its outcome goes.
struct Request {
    change: Change,
    names: Vec<Vec<u8>>,
    outcome: Arc<Queue<RedisResult<()>>>,
}

#[derive(Default)]
struct Counters {
    replacements: AtomicU64,
    authentications: AtomicU64,
}

impl<R: Runtime> EntraPubSub<R> {
    /// Connects to `info` and authenticates with the provider's current credentials,
    /// waiting for the first token up to the provider's first-token timeout. It
    /// subscribes to nothing yet.
    ///
    /// The connection info chooses RESP2 or RESP3 and may hold TLS settings; its username
    /// and password are replaced by the provider's credentials.
    pub async fn open(
        info: impl IntoConnectionInfo,
        provider: &EntraIdProvider<R>,
    ) -> RedisResult<Self> {
        let messages = Queue::new();
        let counters = Arc::new(Counters::default());
        let mut task = Task {
            info: info.into_connection_info()?,
            provider: provider.clone(),
            link: None,
            channels: BTreeSet::new(),
            patterns: BTreeSet::new(),
            messages: Arc::clone(&messages),
            counters: Arc::clone(&counters),
            watcher: None,
            retry_delay: FIRST_RETRY_DELAY,
            retry_at: None,
        };
        task.link = Some(task.connect().await?);
        let requests = Queue::new();
        R::spawn(task.run(Arc::clone(&requests)));
        Ok(EntraPubSub {
            requests,
            messages,
            counters,
            runtime: PhantomData,
        })
    }

    /// Subscribes to `channels` and waits for the server to confirm.
    pub async fn subscribe<T: ToRedisArgs>(&mut self, channels: T) -> RedisResult<()> {
        self.request(Change::Subscribe, channels.to_redis_args())
            .await
    }

    /// Subscribes to the channel `patterns` and waits for the server to confirm.
    pub async fn psubscribe<T: ToRedisArgs>(&mut self, patterns: T) -> RedisResult<()> {
        self.request(Change::PSubscribe, patterns.to_redis_args())
            .await
    }

    /// Unsubscribes from `channels`, or from every channel when `channels` is empty, and
    /// waits for the server to confirm.
    pub async fn unsubscribe<T: ToRedisArgs>(&mut self, channels: T) -> RedisResult<()> {
        self.request(Change::Unsubscribe, channels.to_redis_args())
            .await
    }

    /// Unsubscribes from the channel `patterns`, or from every pattern when `patterns` is
    /// empty, and waits for the server to confirm.
    pub async fn punsubscribe<T: ToRedisArgs>(&mut self, patterns: T) -> RedisResult<()> {
        self.request(Change::PUnsubscribe, patterns.to_redis_args())
            .await
    }

    /// Waits for the next message.
    ///
    /// An error reports a failed attempt to reconnect or to follow a renewal. The
    /// subscriber goes on after it, so the next call waits for the next message. Once the
    /// subscriber has stopped, every call fails with an I/O error.
    pub async fn next_message(&mut self) -> RedisResult<Msg> {
        self.messages.pop().await.unwrap_or_else(|| Err(stopped()))
    }

    /// Like [`next_message`](Self::next_message), waiting at most `timeout`; `Ok(None)`
    /// means no message arrived.
    pub async fn next_message_timeout(&mut self, timeout: Duration) -> RedisResult<Option<Msg>> {
        let next = pin!(self.messages.pop());
        match select(next, pin!(R::sleep(timeout))).await {
            Either::Left((Some(message), _)) => message.map(Some),
            Either::Left((None, _)) => Err(stopped()),
            Either::Right(_) => Ok(None),
        }
    }

    /// Returns the messages as a stream, which ends when the subscriber stops. Errors
    /// that [`next_message`](Self::next_message) would return are skipped; the task logs
    /// them.
    pub fn on_message(&mut self) -> impl Stream<Item = Msg> + '_ {
        futures_util::stream::poll_fn(move |cx| {
            loop {
                match ready!(self.messages.poll_pop(cx)) {
                    Some(Ok(message)) => return Poll::Ready(Some(message)),
                    Some(Err(_)) => continue,
                    None => return Poll::Ready(None),
                }
            }
        })
    }

    /// Counts the connections opened to replace one whose token changed or that closed.
    pub fn replacements(&self) -> u64 {
        self.counters.replacements.load(Ordering::Relaxed)
    }

    /// Counts the authenticated handshakes and in-band `AUTH` commands sent.
    pub fn authentications(&self) -> u64 {
        self.counters.authentications.load(Ordering::Relaxed)
    }

    async fn request(&mut self, change: Change, names: Vec<Vec<u8>>) -> RedisResult<()> {
        let outcome = Queue::new();
        let request = Request {
            change,
            names,
            outcome: Arc::clone(&outcome),
        };
        if !self.requests.push(request) {
            return Err(stopped());
        }
        outcome.pop().await.unwrap_or_else(|| Err(stopped()))
    }
}

impl<R> Drop for EntraPubSub<R> {
    fn drop(&mut self) {
        // The task ends when it finds the queue closed, and closes the connection.
        self.requests.close();
    }
}

impl<R> fmt::Debug for EntraPubSub<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntraPubSub")
            .field(
                "replacements",
                &self.counters.replacements.load(Ordering::Relaxed),
            )
            .field("stopped", &self.messages.is_closed())
            .finish_non_exhaustive()
    }
}

fn stopped() -> RedisError {
    RedisError::from((ErrorKind::Io, "the subscriber has stopped"))
}

fn disconnected() -> RedisError {
    RedisError::from((ErrorKind::Io, "not connected to Redis; reconnecting"))
}

/// An event that needs the task's attention beyond forwarding messages.
enum Wake {
    Request(Request),
    Closed,
    Renewed,
    Stop,
}

/// The outcome of an in-band `AUTH`.
enum InBand {
    Accepted,
    /// The server rejected the token; the connection stays until a newer one arrives.
    Rejected,
    /// `AUTH` is not allowed here, failed or is not possible: use a new connection.
    Move,
}

/// The task that owns the connection.
struct Task<R> {
    info: ConnectionInfo,
    provider: EntraIdProvider<R>,
    link: Option<Link>,
    channels: BTreeSet<Vec<u8>>,
    patterns: BTreeSet<Vec<u8>>,
    messages: Arc<Queue<RedisResult<Msg>>>,
    counters: Arc<Counters>,
    /// Wakes the task when the provider publishes credentials.
    watcher: Option<Arc<AtomicWaker>>,
    retry_delay: Duration,
    /// After a failed move to new credentials, when to try again.
    retry_at: Option<Instant>,
}

impl<R> Drop for Task<R> {
    fn drop(&mut self) {
        // Ends the caller's stream, whether the task ended or its executor dropped it.
        self.messages.close();
    }
}

impl<R: Runtime> Task<R> {
    async fn run(mut self, requests: Arc<Queue<Request>>) {
        loop {
            if self.link.is_none() && !self.reconnect(&requests).await {
                return;
            }
            match self.next_wake(&requests).await {
                Wake::Request(request) => {
                    let outcome = self.change(request.change, request.names).await;
                    request.outcome.push(outcome);
                }
                Wake::Closed => {
                    debug!("subscriber connection closed; reconnecting");
                    self.link = None;
                }
                Wake::Renewed => self.follow_renewal().await,
                Wake::Stop => return,
            }
        }
    }

    /// Forwards messages to the caller until a request, newer credentials or a closed
    /// connection needs the task.
    ///
    /// Requests and renewals are checked before each batch of messages, so a steady flood
    /// delays neither. After each batch of [`MESSAGES_PER_TURN`] messages the task yields
    /// to the executor, which otherwise would run nothing else while messages keep
    /// arriving, the provider's renewal task included.
    async fn next_wake(&mut self, requests: &Queue<Request>) -> Wake {
        let Task {
            provider,
            link,
            messages,
            watcher,
            retry_at,
            ..
        } = self;
        let Some(link) = link.as_mut() else {
            return Wake::Closed;
        };
        let seen = link.generation;
        let renewed = async {
            // The retry time is cleared only once it has passed, so a wake-up for
            // another reason keeps it.
            if let Some(at) = *retry_at {
                R::sleep(at.saturating_duration_since(Instant::now())).await;
                *retry_at = None;
            }
            provider
                .shared()
                .wait_until::<R, _>(watcher, None, |inner, generation| {
                    let valid = inner.manager.credentials(SystemTime::now()).is_ok();
                    (generation != seen && valid).then_some(())
                })
                .await;
        };
        let mut renewed = pin!(renewed);
        poll_fn(|cx| {
            match requests.poll_pop(cx) {
                Poll::Ready(Some(request)) => return Poll::Ready(Wake::Request(request)),
                Poll::Ready(None) => return Poll::Ready(Wake::Stop),
                Poll::Pending => {}
            }
            if renewed.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Renewed);
            }
            for _ in 0..MESSAGES_PER_TURN {
                match link.poll_message(cx) {
                    Poll::Ready(Some(message)) => {
                        messages.push(Ok(message));
                    }
                    Poll::Ready(None) => return Poll::Ready(Wake::Closed),
                    Poll::Pending => return Poll::Pending,
                }
            }
            // More messages may be waiting, so ask to be polled again after the tasks that
            // are already ready.
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await
    }

    /// Sends a subscription change and records its channels or patterns.
    async fn change(&mut self, change: Change, names: Vec<Vec<u8>>) -> RedisResult<()> {
        let tracked = if change.is_pattern() {
            &mut self.patterns
        } else {
            &mut self.channels
        };
        // An empty unsubscription means all; name them, so the confirmations to wait for
        // are known.
        let names = if change.is_unsubscribe() && names.is_empty() {
            tracked.iter().cloned().collect()
        } else {
            names
        };
        if names.is_empty() {
            return Ok(());
        }
        let link = self.link.as_mut().ok_or_else(disconnected)?;
        if let Err(error) = link.send::<R>(change, &names, REPLY_TIMEOUT).await {
            if is_connection_error(&error) {
                debug!("subscription command failed ({error}); reconnecting");
                self.link = None;
            }
            return Err(error);
        }
        for name in names {
            if change.is_unsubscribe() {
                tracked.remove(&name);
            } else {
                tracked.insert(name);
            }
        }
        Ok(())
    }

    /// Moves the connection to the provider's newer credentials.
    async fn follow_renewal(&mut self) {
        let (generation, Ok(credentials)) = self.provider.snapshot() else {
            self.schedule_retry();
            return;
        };
        match self.authenticate_in_band(generation, &credentials).await {
            InBand::Accepted | InBand::Rejected => {}
            InBand::Move => match self.open_subscribed().await {
                Ok(fresh) => {
                    self.retire_link().await;
                    self.install(fresh);
                }
                Err(error) => {
                    warn!("cannot move the subscriber to a new connection: {error}");
                    self.messages.push(Err(error));
                    self.schedule_retry();
                }
            },
        }
    }

    /// Sends `AUTH` on a RESP3 connection and classifies the outcome.
    async fn authenticate_in_band(&mut self, generation: u64, credentials: &Credentials) -> InBand {
        let Some(link) = self.link.as_mut() else {
            return InBand::Move;
        };
        let Some(outcome) = link.authenticate::<R>(credentials, REPLY_TIMEOUT).await else {
            debug!("RESP2 subscriber moves to a new connection for the new token");
            return InBand::Move;
        };
        self.counters
            .authentications
            .fetch_add(1, Ordering::Relaxed);
        let error = match outcome {
            Ok(()) => {
                debug!(
                    "subscriber re-authenticated in band as {}",
                    credentials.username()
                );
                link.generation = generation;
                self.retry_delay = FIRST_RETRY_DELAY;
                return InBand::Accepted;
            }
            Err(error) => error,
        };
        match classify_error(&error) {
            ErrorReply::AuthNotAllowedHere => {
                debug!("AUTH is not allowed on the subscribed connection; moving to a new one");
                InBand::Move
            }
            ErrorReply::CredentialsRejected => {
                warn!("the server rejected the renewed token for the subscriber: {error}");
                // Only a newer token is sent again, so the connection keeps its current
                // token until then.
                link.generation = generation;
                if self.provider.generation() == generation {
                    self.provider.force_refresh();
                }
                self.messages.push(Err(error));
                InBand::Rejected
            }
            ErrorReply::Other => {
                debug!("in-band AUTH failed ({error}); moving to a new connection");
                InBand::Move
            }
        }
    }

    /// Opens a connection with the current credentials and subscribes it. Until that
    /// succeeds, it fails each request and tries again after a growing delay. Returns
    /// `false` when the subscriber must stop.
    async fn reconnect(&mut self, requests: &Queue<Request>) -> bool {
        loop {
            match self.open_subscribed().await {
                Ok(fresh) => {
                    self.install(fresh);
                    return true;
                }
                Err(error) => {
                    let shut_down = self.provider.shared().lock().shutdown;
                    warn!("cannot reconnect the subscriber: {error}");
                    self.messages.push(Err(error));
                    if shut_down || !self.pause(requests).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Waits for the retry delay, failing each request meanwhile, and doubles the delay.
    /// Returns `false` when the caller has dropped the subscriber.
    async fn pause(&mut self, requests: &Queue<Request>) -> bool {
        let delay = self.next_retry_delay();
        let mut sleep = pin!(R::sleep(delay));
        loop {
            match select(pin!(requests.pop()), sleep.as_mut()).await {
                Either::Left((Some(request), _)) => {
                    request.outcome.push(Err(disconnected()));
                }
                Either::Left((None, _)) => return false,
                Either::Right(_) => return true,
            }
        }
    }

    fn schedule_retry(&mut self) {
        self.retry_at = Some(Instant::now() + self.next_retry_delay());
    }

    fn next_retry_delay(&mut self) -> Duration {
        let delay = self.retry_delay;
        self.retry_delay = (delay * 2).min(MAX_RETRY_DELAY);
        delay
    }

    /// Makes `fresh` the subscriber's connection.
    fn install(&mut self, fresh: Link) {
        self.link = Some(fresh);
        self.retry_delay = FIRST_RETRY_DELAY;
        self.retry_at = None;
        self.counters.replacements.fetch_add(1, Ordering::Relaxed);
    }

    /// Unsubscribes the current connection from everything, queues the messages it
    /// received before the unsubscription took effect, then closes it. Failures only end
    /// the wait early.
    async fn retire_link(&mut self) {
        let Some(mut old) = self.link.take() else {
            return;
        };
        let channels: Vec<Vec<u8>> = self.channels.iter().cloned().collect();
        let patterns: Vec<Vec<u8>> = self.patterns.iter().cloned().collect();
        for (change, names) in [
            (Change::Unsubscribe, channels),
            (Change::PUnsubscribe, patterns),
        ] {
            if !names.is_empty() && old.send::<R>(change, &names, RETIRE_TIMEOUT).await.is_err() {
                break;
            }
        }
        let mut forwarded = 0;
        while let Some(message) = old.try_message() {
            self.messages.push(Ok(message));
            forwarded += 1;
            if forwarded % MESSAGES_PER_TURN == 0 {
                yield_now().await;
            }
        }
    }

    /// Opens a connection and subscribes it to every channel and pattern. Messages that
    /// arrive meanwhile stay queued on the new connection.
    async fn open_subscribed(&mut self) -> RedisResult<Link> {
        let mut fresh = self.connect().await?;
        let channels: Vec<Vec<u8>> = self.channels.iter().cloned().collect();
        let patterns: Vec<Vec<u8>> = self.patterns.iter().cloned().collect();
        for (change, names) in [
            (Change::Subscribe, channels),
            (Change::PSubscribe, patterns),
        ] {
            if !names.is_empty() {
                fresh.send::<R>(change, &names, REPLY_TIMEOUT).await?;
            }
        }
        Ok(fresh)
    }

    /// Opens and authenticates a connection; when the server rejects the credentials, it
    /// retries once with newer ones.
    async fn connect(&mut self) -> RedisResult<Link> {
        let timeout = self.provider.first_token_timeout();
        let (generation, credentials) = self
            .provider
            .credentials_with_generation(timeout)
            .await
            .map_err(to_redis_error)?;
        let opened = Link::open::<R>(&self.info, &credentials, generation, REPLY_TIMEOUT).await;
        let opened = match opened {
            Err(error) if is_rejection(&error) => {
                self.counters
                    .authentications
                    .fetch_add(1, Ordering::Relaxed);
                let newer = self.provider.credentials_after_rejection(generation).await;
                let Some((generation, credentials)) = newer else {
                    return Err(error);
                };
                Link::open::<R>(&self.info, &credentials, generation, REPLY_TIMEOUT).await
            }
            opened => opened,
        };
        if opened.is_ok() {
            self.counters
                .authentications
                .fetch_add(1, Ordering::Relaxed);
        }
        opened
    }
}

/// Lets the executor run its other ready tasks before this one goes on.
async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// Returns true for errors after which the connection cannot be trusted: I/O errors,
/// timeouts and a dropped connection.
fn is_connection_error(error: &RedisError) -> bool {
    error.is_io_error() || error.is_timeout() || error.is_connection_dropped()
}
