//! The authentication side of the async [`EntraConnection`](super::EntraConnection):
//! its shared state, the `AUTH` after a rejection, the task that sends each renewal, and
//! the credentials of its handshakes.

use std::future::{pending, poll_fn};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::{Either, select};
use futures_util::lock::Mutex as AsyncMutex;
use futures_util::stream::{self, Stream, StreamExt};
use futures_util::task::AtomicWaker;
use log::{debug, warn};
use redis::aio::ConnectionLike;
use redis::{BasicAuth, RedisError, RedisResult, StreamingCredentialsProvider, Value};

use super::super::Runtime;
use super::super::provider::EntraIdProvider;
use super::super::stream::{first_credentials, to_basic_auth, to_redis_error};
use super::Shared;
use crate::Credentials;
use crate::replies::{auth_reply_error, is_rejection_reply, transaction_aborted, transaction_lost};

/// The delay before the first new attempt after an `AUTH` that failed for another reason
/// than a rejected token. It doubles after each failure, up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(200);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// The authentication state of one connection, shared by its clones, its
/// re-authentication task and its handshake credentials.
pub(super) struct AuthState {
    /// The provider generation of the newest credentials the connection authenticated
    /// with, in a handshake or an `AUTH`.
    pub(super) authenticated: AtomicU64,
    /// The expiry of those credentials, in milliseconds since the Unix epoch.
    pub(super) expires_on_millis: AtomicU64,
    /// Serialises `AUTH` and `MULTI`, so that concurrent failures send one `AUTH` and no
    /// `AUTH` is queued inside a transaction.
    pub(super) auth_lock: AsyncMutex<()>,
    pub(super) in_transaction: AtomicBool,
    /// Set when the connection closed inside a transaction, until an `EXEC` or `DISCARD`.
    /// Commands fail without being sent meanwhile, because Redis discarded the queued
    /// commands and a new connection would run them on their own.
    pub(super) transaction_lost: AtomicBool,
    /// Counts the commands that handle a `WRONGPASS`. The task sends no `AUTH` meanwhile,
    /// so the newer token goes out once, from the command that waited for it.
    pub(super) rejections_handled: AtomicU64,
    pub(super) reauthentications: AtomicU64,
    /// Set when the last clone is dropped.
    pub(super) closed: AtomicBool,
    /// Wakes the re-authentication task when a transaction ends or the last clone goes.
    pub(super) task: AtomicWaker,
    pub(super) task_woken: AtomicBool,
}

impl AuthState {
    pub(super) fn new() -> Self {
        AuthState {
            authenticated: AtomicU64::new(0),
            expires_on_millis: AtomicU64::new(0),
            auth_lock: AsyncMutex::new(()),
            in_transaction: AtomicBool::new(false),
            transaction_lost: AtomicBool::new(false),
            rejections_handled: AtomicU64::new(0),
            reauthentications: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            task: AtomicWaker::new(),
            task_woken: AtomicBool::new(false),
        }
    }

    pub(super) fn authenticated(&self) -> u64 {
        self.authenticated.load(Ordering::Acquire)
    }

    /// Records an authentication with generation `generation`, whose token expires at
    /// `expires_on`. An older generation than the recorded one changes nothing.
    pub(super) fn record(&self, generation: u64, expires_on: SystemTime) {
        let previous = self.authenticated.fetch_max(generation, Ordering::AcqRel);
        if generation > previous {
            let millis = expires_on
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as u64);
            self.expires_on_millis.fetch_max(millis, Ordering::AcqRel);
        }
    }

    /// Returns the moment halfway between now and the expiry of the connection's token,
    /// after which the re-authentication task sends `AUTH` even inside a transaction.
    pub(super) fn transaction_deadline(&self) -> Instant {
        let millis = self.expires_on_millis.load(Ordering::Acquire);
        let expires_on = UNIX_EPOCH + Duration::from_millis(millis);
        let left = expires_on
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        Instant::now() + left / 2
    }

    pub(super) fn in_transaction(&self) -> bool {
        self.in_transaction.load(Ordering::Acquire)
    }

    pub(super) fn begin_transaction(&self) {
        self.in_transaction.store(true, Ordering::Release);
    }

    pub(super) fn end_transaction(&self) {
        if self.in_transaction.swap(false, Ordering::AcqRel) {
            // A renewal that arrived during the transaction can be sent now.
            self.wake_task();
        }
    }

    /// Marks the open transaction lost with its connection and ends it, so the
    /// re-authentication task may send `AUTH` on the next connection.
    pub(super) fn lose_transaction(&self) {
        self.transaction_lost.store(true, Ordering::Release);
        self.end_transaction();
    }

    pub(super) fn transaction_lost(&self) -> bool {
        self.transaction_lost.load(Ordering::Acquire)
    }

    /// Returns the error for a request sent while the transaction is lost, or `None`
    /// when it is not. A request that ends the transaction (`EXEC` or `DISCARD`) clears
    /// the mark.
    pub(super) fn lost_transaction_error(&self, ends_transaction: bool) -> Option<RedisError> {
        if !self.transaction_lost() {
            return None;
        }
        if ends_transaction && self.transaction_lost.swap(false, Ordering::AcqRel) {
            return Some(transaction_aborted());
        }
        Some(transaction_lost())
    }

    pub(super) fn wake_task(&self) {
        self.task_woken.store(true, Ordering::Release);
        self.task.wake();
    }

    /// Completes at the next [`wake_task`](Self::wake_task), or at once if one came since
    /// the last wake-up.
    pub(super) async fn task_wakeup(&self) {
        poll_fn(|cx| {
            self.task.register(cx.waker());
            if self.task_woken.swap(false, Ordering::AcqRel) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// Ends the connection's transaction state when dropped, so that an `EXEC` or `DISCARD`
/// whose future the caller drops after it was written still ends it.
pub(super) struct TransactionEnd<'a>(pub(super) &'a AuthState);

impl Drop for TransactionEnd<'_> {
    fn drop(&mut self) {
        self.0.end_transaction();
    }
}

/// Marks a command that handles a `WRONGPASS` until dropped, and then wakes the
/// re-authentication task.
pub(super) struct RejectionHandled<'a>(&'a AuthState);

impl<'a> RejectionHandled<'a> {
    pub(super) fn new(state: &'a AuthState) -> Self {
        state.rejections_handled.fetch_add(1, Ordering::AcqRel);
        RejectionHandled(state)
    }
}

impl Drop for RejectionHandled<'_> {
    fn drop(&mut self) {
        if self.0.rejections_handled.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.wake_task();
        }
    }
}

/// The outcome of one `AUTH`.
pub(super) enum AuthOutcome {
    Accepted,
    /// The server replied `QUEUED`, because it is inside a transaction. It runs the
    /// `AUTH` at `EXEC`.
    Queued,
    /// The server rejected the credentials (`WRONGPASS`).
    Rejected(RedisError),
    Failed(RedisError),
}

/// The re-authentication task's next step after an attempt.
pub(super) enum Renewal {
    /// The connection uses the current credentials.
    Done,
    /// A transaction is open, so try again when it ends or at the transaction deadline.
    Deferred,
    /// The server queued the `AUTH` in an open transaction, so try again when it ends.
    Queued,
    /// A command handles a `WRONGPASS`, so look again when it is done.
    Yielded,
    /// The `AUTH` for this generation failed, so try again after a delay.
    Failed(u64),
    /// This generation was rejected or has expired, so wait for a newer one.
    WaitForNewer(u64),
}

impl<R, C> Shared<R, C>
where
    R: Runtime,
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Authenticates with credentials newer than generation `rejected`, and returns
    /// whether the connection now uses them.
    ///
    /// It waits for the credentials without the authentication lock, so concurrent
    /// rejections wait once, together, and takes the lock only to send `AUTH`.
    pub(super) async fn authenticate_after_rejection(&self, rejected: u64) -> bool {
        let _handled = RejectionHandled::new(&self.state);
        let newer = self.provider.credentials_after_rejection(rejected).await;
        let Some((generation, credentials)) = newer else {
            debug!("no token newer than the rejected one arrived");
            return false;
        };
        let _auth = self.state.auth_lock.lock().await;
        if self.state.in_transaction() {
            // A clone sent `MULTI` meanwhile, and an `AUTH` now would join its transaction.
            debug!("a transaction started before the newer token arrived; not sending AUTH");
            return false;
        }
        if generation <= self.state.authenticated() {
            // Another command or the re-authentication task has sent them already.
            return true;
        }
        matches!(
            self.send_auth(generation, &credentials).await,
            AuthOutcome::Accepted
        )
    }

    /// Sends the current credentials unless the connection already uses them.
    ///
    /// Inside a transaction it sends nothing, unless `past_deadline` is set.
    pub(super) async fn renew(&self, past_deadline: bool) -> Renewal {
        let (generation, outcome) = {
            let _auth = self.state.auth_lock.lock().await;
            if self.state.rejections_handled.load(Ordering::Acquire) > 0 {
                return Renewal::Yielded;
            }
            if self.state.in_transaction() {
                if !past_deadline {
                    return Renewal::Deferred;
                }
                warn!("a transaction is still open close to the token's expiry; sending AUTH");
            }
            let (generation, credentials) = self.provider.snapshot();
            if generation <= self.state.authenticated() {
                return Renewal::Done;
            }
            let credentials = match credentials {
                Ok(credentials) => credentials,
                Err(error) => {
                    debug!("no credentials to re-authenticate with: {error}");
                    return Renewal::WaitForNewer(generation);
                }
            };
            (generation, self.send_auth(generation, &credentials).await)
        };
        match outcome {
            AuthOutcome::Accepted => Renewal::Done,
            AuthOutcome::Queued => Renewal::Queued,
            AuthOutcome::Failed(error) => {
                debug!("re-authentication failed ({error}); trying again");
                Renewal::Failed(generation)
            }
            AuthOutcome::Rejected(error) => {
                debug!("Redis rejected the renewed token ({error}); forcing a refresh");
                self.renew_after_rejection(generation).await
            }
        }
    }

    /// Waits for credentials newer than generation `rejected` without the authentication
    /// lock, then sends them unless the connection uses them already.
    pub(super) async fn renew_after_rejection(&self, rejected: u64) -> Renewal {
        let Some((generation, credentials)) =
            self.provider.credentials_after_rejection(rejected).await
        else {
            warn!("Redis rejected the renewed token and no newer token arrived");
            return Renewal::WaitForNewer(rejected);
        };
        let _auth = self.state.auth_lock.lock().await;
        if self.state.in_transaction() {
            return Renewal::Deferred;
        }
        if generation <= self.state.authenticated() {
            return Renewal::Done;
        }
        match self.send_auth(generation, &credentials).await {
            AuthOutcome::Accepted => Renewal::Done,
            AuthOutcome::Queued => Renewal::Queued,
            AuthOutcome::Failed(_) => Renewal::Failed(generation),
            AuthOutcome::Rejected(error) => {
                warn!("Redis rejected a freshly refreshed token too ({error})");
                Renewal::WaitForNewer(generation)
            }
        }
    }

    /// Sends `AUTH` with `credentials`. The caller holds the authentication lock.
    pub(super) async fn send_auth(
        &self,
        generation: u64,
        credentials: &Credentials,
    ) -> AuthOutcome {
        let mut auth = redis::cmd("AUTH");
        auth.arg(credentials.username()).arg(credentials.password());
        let mut connection = self.inner.clone();
        match connection.req_packed_command(&auth).await {
            Ok(Value::Okay) => {
                debug!("re-authenticated as {}", credentials.username());
                self.state.record(generation, credentials.expires_on());
                self.state.reauthentications.fetch_add(1, Ordering::Relaxed);
                // The server ran the `AUTH` at once, so no transaction is open there.
                self.state.end_transaction();
                AuthOutcome::Accepted
            }
            Ok(Value::SimpleString(status)) if status == "QUEUED" => {
                warn!("Redis queued AUTH in an open transaction; it runs at EXEC");
                self.state.begin_transaction();
                AuthOutcome::Queued
            }
            Ok(reply) if is_rejection_reply(&reply) => {
                AuthOutcome::Rejected(auth_reply_error(reply))
            }
            Ok(reply) => AuthOutcome::Failed(auth_reply_error(reply)),
            Err(error) => AuthOutcome::Failed(error),
        }
    }
}

/// The re-authentication task's wait for an open transaction to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Deferral {
    /// No `AUTH` is waiting for a transaction.
    None,
    /// An `AUTH` waits for the transaction to end, or until this deadline passes.
    Until(Instant),
    /// The server queued an `AUTH` in the transaction, so the next one waits for its end.
    AuthQueued,
}

/// Sends `AUTH` after each renewal until the last clone of the connection is dropped or
/// the provider shuts down.
///
/// The task upgrades its weak reference to the connection only to send, so dropping the
/// last clone ends it.
pub(super) async fn reauthenticate_on_renewal<R, C>(
    shared: Weak<Shared<R, C>>,
    state: Arc<AuthState>,
    provider: EntraIdProvider<R>,
) where
    R: Runtime,
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let mut watcher = None;
    // The generation whose last attempt failed: a change alone does not retry it.
    let mut failed: Option<u64> = None;
    let mut retry_delay: Option<Duration> = None;
    let mut deferral = Deferral::None;
    // Set while a command handles a `WRONGPASS`. Its end wakes the task, so no timer runs
    // meanwhile, even past a transaction deadline.
    let mut yielded = false;
    loop {
        let changed =
            provider
                .shared()
                .wait_until::<R, _>(&mut watcher, None, |inner, generation| {
                    if inner.shutdown {
                        return Some(true);
                    }
                    // Inside a transaction, the first renewal starts the deferral, and
                    // later ones change nothing until the transaction ends.
                    let needed = generation > state.authenticated()
                        && Some(generation) != failed
                        && state.rejections_handled.load(Ordering::Acquire) == 0
                        && (!state.in_transaction() || deferral == Deferral::None);
                    needed.then_some(false)
                });
        let delay = match deferral {
            _ if yielded => None,
            Deferral::Until(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                Some(retry_delay.map_or(left, |delay| delay.min(left)))
            }
            _ => retry_delay,
        };
        let retry = async {
            match delay {
                Some(delay) => R::sleep(delay).await,
                None => pending().await,
            }
        };
        let woken = async {
            select(pin!(state.task_wakeup()), pin!(retry)).await;
        };
        let shutdown = match select(pin!(changed), pin!(woken)).await {
            Either::Left((shutdown, _)) => shutdown == Some(true),
            Either::Right(_) => false,
        };
        if shutdown || state.closed.load(Ordering::Acquire) {
            break;
        }
        let Some(shared) = shared.upgrade() else {
            break;
        };
        let past_deadline =
            matches!(deferral, Deferral::Until(deadline) if Instant::now() >= deadline);
        let renewal = shared.renew(past_deadline).await;
        yielded = matches!(renewal, Renewal::Yielded);
        deferral = match renewal {
            Renewal::Deferred => match deferral {
                Deferral::None => Deferral::Until(state.transaction_deadline()),
                Deferral::Until(_) | Deferral::AuthQueued => deferral,
            },
            Renewal::Queued => Deferral::AuthQueued,
            Renewal::Yielded => deferral,
            _ => Deferral::None,
        };
        match renewal {
            Renewal::Done => (failed, retry_delay) = (None, None),
            Renewal::Deferred | Renewal::Queued | Renewal::Yielded => retry_delay = None,
            Renewal::Failed(generation) => {
                failed = Some(generation);
                let delay = retry_delay.map_or(FIRST_RETRY_DELAY, |delay| delay * 2);
                retry_delay = Some(delay.min(MAX_RETRY_DELAY));
            }
            Renewal::WaitForNewer(generation) => (failed, retry_delay) = (Some(generation), None),
        }
    }
    debug!("re-authentication task stopped");
}

/// The credentials the inner connection authenticates its handshakes with.
///
/// The `redis` crate (1.8.2) subscribes twice for each connection it opens: once for the
/// handshake, and once more, after a successful handshake, for its re-authentication
/// task, which sends `AUTH` for every item, the first included. The renewals come from
/// the task of [`EntraConnection`](super::EntraConnection), so the crate's task needs no
/// items:
///
/// - For a `MultiplexedConnection`, which opens one connection, the first subscription
///   yields the current credentials once and the second yields nothing. The connection
///   sends one `AUTH` per token.
/// - A `ConnectionManager` opens a connection again after a failure, and a handshake
///   that fails subscribes once, not twice, so the two kinds cannot be distinguished by
///   their order. Each subscription yields the current credentials once, and the
///   crate's task repeats the handshake's token in one `AUTH` per connection.
pub(super) struct HandshakeCredentials<R> {
    provider: EntraIdProvider<R>,
    state: Arc<AuthState>,
    /// Set for a `MultiplexedConnection`: subscriptions after the first yield nothing.
    single_connection: bool,
    subscriptions: AtomicU64,
}

impl<R> HandshakeCredentials<R> {
    pub(super) fn new(provider: &EntraIdProvider<R>, state: &Arc<AuthState>, single: bool) -> Self {
        HandshakeCredentials {
            provider: provider.clone(),
            state: Arc::clone(state),
            single_connection: single,
            subscriptions: AtomicU64::new(0),
        }
    }
}

impl<R: Runtime> StreamingCredentialsProvider for HandshakeCredentials<R> {
    fn subscribe(&self) -> Pin<Box<dyn Stream<Item = RedisResult<BasicAuth>> + Send + 'static>> {
        let earlier = self.subscriptions.fetch_add(1, Ordering::AcqRel);
        if self.single_connection && earlier > 0 {
            return Box::pin(stream::pending());
        }
        let provider = self.provider.clone();
        let state = Arc::clone(&self.state);
        let first = async move {
            let (generation, credentials) = first_credentials(&provider).await;
            let credentials = credentials.map_err(to_redis_error)?;
            // Recorded before the handshake ends. A handshake that fails leaves no
            // connection behind, so the record can only be early, never wrong for a
            // connection that exists.
            // NOTE: for a `ConnectionManager`, this item may instead feed the `redis`
            // crate's re-authentication task right after a handshake. When a renewal
            // lands between that handshake and the crate's `AUTH`, and that `AUTH` fails,
            // the newer generation stays recorded although the connection uses the
            // handshake's token. No `AUTH` follows until the next renewal, and a
            // `WRONGPASS` meanwhile forces a refresh and an `AUTH`. The two
            // subscriptions cannot be distinguished here (see the type's comment).
            state.record(generation, credentials.expires_on());
            Ok(to_basic_auth(&credentials))
        };
        Box::pin(stream::once(first).chain(stream::pending()))
    }
}
