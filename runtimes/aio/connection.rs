//! An async Redis connection that re-authenticates after each renewal and retries a
//! command once after `WRONGPASS`.

use std::fmt;
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
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::{
    Arg, AsyncConnectionConfig, BasicAuth, Client, Cmd, ErrorKind, Pipeline, RedisError,
    RedisFuture, RedisResult, StreamingCredentialsProvider, Value,
};

use super::Runtime;
use super::provider::EntraIdProvider;
use super::stream::{first_credentials, to_basic_auth, to_redis_error};
use crate::Credentials;
use crate::reply::{ErrorReply, classify_error_reply};

/// The delay before the first new attempt after an `AUTH` that failed for another reason
/// than a rejected token. It doubles after each failure, up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(200);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// An async Redis connection that authenticates with Entra ID credentials, sends the new
/// token after each renewal, and retries a command once after `WRONGPASS`.
///
/// It wraps a `MultiplexedConnection` ([`multiplexed`](Self::multiplexed)) or a
/// `ConnectionManager` ([`manager`](Self::manager)) and implements the `redis` crate's
/// async [`ConnectionLike`], so `AsyncCommands`, `query_async` and pipelines work on it.
/// Clones share the inner connection and its authentication state.
///
/// # Re-authentication
///
/// The inner connection takes its handshake credentials from the provider, so a
/// `ConnectionManager` that reconnects authenticates with the token current at that
/// moment, and never with an expired one. The `redis` crate's own re-authentication task
/// (redis 1.8.2) ends for good after one failed `AUTH`, so this type does not rely on it:
/// the stream it gives that task yields the handshake's credentials and nothing after
/// them. A task of this type sends `AUTH <username> <token>` after each renewal instead,
/// on idle and busy connections alike:
///
/// - When the `AUTH` fails for another reason than a rejected token (a response timeout,
///   a closed connection, another error reply), the task tries again after 0.2 s. The
///   delay doubles up to 5 s, and the retries go on until the `AUTH` succeeds, a newer
///   token arrives or the token expires. A `ConnectionManager` reconnects after an I/O
///   error, and its new connection authenticates in the handshake.
/// - When the server rejects the token, the task forces one refresh and sends the newer
///   token. If that one is rejected too, the task waits for the next renewal.
/// - The task sends no `AUTH` between a `MULTI` sent through this type (as a command or
///   in a pipeline that is not atomic) and its `EXEC` or `DISCARD`. It sends it when the
///   transaction ends. An `EXEC` or `DISCARD` ends the transaction once it was passed to
///   this type, even when the caller drops its future, as a timeout does. A `MULTI`
///   whose future is dropped before its reply counts as open, because the server may
///   have run it.
/// - The task defers an `AUTH` for a transaction only until half the time left before
///   the connection's token expires, measured when the deferral starts. Then it sends
///   the `AUTH` anyway, because Azure closes the connection at expiry. A server that is
///   in a transaction replies `QUEUED` (Redis 7.0) and runs the `AUTH` at `EXEC`, so the
///   `EXEC` reply has one more element, the `AUTH`'s `OK`. A server that is not in a
///   transaction runs it at once, and the connection counts the transaction as ended.
///
/// The task stops when the last clone is dropped or the provider shuts down. Over a
/// `MultiplexedConnection`, the connection sends one `AUTH` (or handshake) per token.
/// Each connection a `ConnectionManager` opens sends one more, with its handshake's token
/// right after connecting, because the `redis` crate's task starts with those
/// credentials.
///
/// # When a command is sent again
///
/// A command is sent at most twice, and the second time only when the server replied
/// `WRONGPASS` (in any of its forms), so the command did not run. The connection then
/// authenticates with a newer token and sends the command once more. It forces a
/// refresh only when no token newer than the connection's has arrived, and concurrent
/// failures cause one token request and one `AUTH`. It waits for the newer token up to
/// the provider's first-token timeout, and concurrent failures wait together, so each
/// gives up after about one timeout. A second `WRONGPASS` is returned to the caller, and
/// so is the first when a clone has sent `MULTI` while the newer token was on its way.
///
/// A pipeline is sent again only when every reply in it was a `WRONGPASS`. Nothing is
/// sent again inside an atomic pipeline or between `MULTI` and `EXEC`. A command that
/// failed in any other way, an I/O error after it was written included, is returned,
/// because it may have run. `NOPERM` and other error replies are returned as they are,
/// with no refresh and no reconnect.
///
/// # Closed connections and blocking commands
///
/// A `ConnectionManager` replaces a connection the server closed when the next command
/// fails on it; that command returns the I/O error. A `MultiplexedConnection` is never
/// replaced: use a `ConnectionManager` where the server may close connections.
///
/// On a multiplexed connection, an `AUTH` sent while a command blocks (such as
/// `BLPOP q 0`) is written behind it, and Redis runs the `AUTH` only after the blocking
/// command returns. Whether Azure keeps such a connection open past the old token's
/// expiry is not documented. If the server closes it, the blocked command fails with an
/// I/O error and is not sent again. The inner connection's response timeout (500 ms by
/// default in redis 1.8.2) also applies to blocking commands: set it above their
/// timeout, or to `None`.
pub struct EntraConnection<R, C> {
    inner: C,
    shared: Arc<Shared<R, C>>,
}

/// State shared by the clones of one connection and its re-authentication task.
struct Shared<R, C> {
    /// A clone of the inner connection for the re-authentication task.
    inner: C,
    provider: EntraIdProvider<R>,
    state: Arc<AuthState>,
}

impl<R, C> Drop for Shared<R, C> {
    fn drop(&mut self) {
        self.state.closed.store(true, Ordering::Release);
        self.state.wake_task();
    }
}

/// The authentication state of one connection, shared by its clones, its
/// re-authentication task and its handshake credentials.
struct AuthState {
    /// The provider generation of the newest credentials the connection authenticated
    /// with, in a handshake or an `AUTH`.
    authenticated: AtomicU64,
    /// The expiry of those credentials, in milliseconds since the Unix epoch.
    expires_on_millis: AtomicU64,
    /// Serialises `AUTH` and `MULTI`, so that concurrent failures send one `AUTH` and no
    /// `AUTH` is queued inside a transaction.
    auth_lock: AsyncMutex<()>,
    in_transaction: AtomicBool,
    /// Counts the commands that handle a `WRONGPASS`. The task sends no `AUTH` meanwhile,
    /// so the newer token goes out once, from the command that waited for it.
    rejections_handled: AtomicU64,
    reauthentications: AtomicU64,
    /// Set when the last clone is dropped.
    closed: AtomicBool,
    /// Wakes the re-authentication task when a transaction ends or the last clone goes.
    task: AtomicWaker,
    task_woken: AtomicBool,
}

impl AuthState {
    fn new() -> Self {
        AuthState {
            authenticated: AtomicU64::new(0),
            expires_on_millis: AtomicU64::new(0),
            auth_lock: AsyncMutex::new(()),
            in_transaction: AtomicBool::new(false),
            rejections_handled: AtomicU64::new(0),
            reauthentications: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            task: AtomicWaker::new(),
            task_woken: AtomicBool::new(false),
        }
    }

    fn authenticated(&self) -> u64 {
        self.authenticated.load(Ordering::Acquire)
    }

    /// Records an authentication with generation `generation`, whose token expires at
    /// `expires_on`. An older generation than the recorded one changes nothing.
    fn record(&self, generation: u64, expires_on: SystemTime) {
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
    fn transaction_deadline(&self) -> Instant {
        let millis = self.expires_on_millis.load(Ordering::Acquire);
        let expires_on = UNIX_EPOCH + Duration::from_millis(millis);
        let left = expires_on
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        Instant::now() + left / 2
    }

    fn in_transaction(&self) -> bool {
        self.in_transaction.load(Ordering::Acquire)
    }

    fn begin_transaction(&self) {
        self.in_transaction.store(true, Ordering::Release);
    }

    fn end_transaction(&self) {
        if self.in_transaction.swap(false, Ordering::AcqRel) {
            // A renewal that arrived during the transaction can be sent now.
            self.wake_task();
        }
    }

    fn wake_task(&self) {
        self.task_woken.store(true, Ordering::Release);
        self.task.wake();
    }

    /// Completes at the next [`wake_task`](Self::wake_task), or at once if one came since
    /// the last wake-up.
    async fn task_wakeup(&self) {
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
struct TransactionEnd<'a>(&'a AuthState);

impl Drop for TransactionEnd<'_> {
    fn drop(&mut self) {
        self.0.end_transaction();
    }
}

/// Marks a command that handles a `WRONGPASS` until dropped, and then wakes the
/// re-authentication task.
struct RejectionHandled<'a>(&'a AuthState);

impl<'a> RejectionHandled<'a> {
    fn new(state: &'a AuthState) -> Self {
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
enum AuthOutcome {
    Accepted,
    /// The server replied `QUEUED`, because it is inside a transaction. It runs the
    /// `AUTH` at `EXEC`.
    Queued,
    /// The server rejected the credentials (`WRONGPASS`).
    Rejected(RedisError),
    Failed(RedisError),
}

/// The re-authentication task's next step after an attempt.
enum Renewal {
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

impl<R: Runtime> EntraConnection<R, MultiplexedConnection> {
    /// Opens a `MultiplexedConnection` that authenticates with the provider's credentials.
    ///
    /// Waits for the first token up to the provider's first-token timeout.
    pub async fn multiplexed(client: &Client, provider: &EntraIdProvider<R>) -> RedisResult<Self> {
        Self::multiplexed_with_config(client, provider, AsyncConnectionConfig::new()).await
    }

    /// Like [`multiplexed`](Self::multiplexed), with the connection settings in `config`.
    /// A credentials provider set in `config` is replaced by `provider`.
    pub async fn multiplexed_with_config(
        client: &Client,
        provider: &EntraIdProvider<R>,
        config: AsyncConnectionConfig,
    ) -> RedisResult<Self> {
        let state = Arc::new(AuthState::new());
        let config =
            config.set_credentials_provider(HandshakeCredentials::new(provider, &state, true));
        let inner = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(Self::start(inner, provider.clone(), state))
    }
}

impl<R: Runtime> EntraConnection<R, ConnectionManager> {
    /// Opens a `ConnectionManager` that authenticates every connection it opens with the
    /// provider's credentials current at that moment.
    ///
    /// Waits for the first token up to the provider's first-token timeout.
    pub async fn manager(client: Client, provider: &EntraIdProvider<R>) -> RedisResult<Self> {
        Self::manager_with_config(client, provider, ConnectionManagerConfig::new()).await
    }

    /// Like [`manager`](Self::manager), with the settings in `config`. A credentials
    /// provider set in `config` is replaced by `provider`.
    pub async fn manager_with_config(
        client: Client,
        provider: &EntraIdProvider<R>,
        config: ConnectionManagerConfig,
    ) -> RedisResult<Self> {
        let state = Arc::new(AuthState::new());
        let config =
            config.set_credentials_provider(HandshakeCredentials::new(provider, &state, false));
        let inner = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self::start(inner, provider.clone(), state))
    }
}

impl<R, C> EntraConnection<R, C> {
    /// Returns the provider this connection takes credentials from.
    pub fn provider(&self) -> &EntraIdProvider<R> {
        &self.shared.provider
    }

    /// Counts the `AUTH` commands with a renewed token that the server accepted, from all
    /// clones. Handshakes are not counted.
    pub fn reauthentications(&self) -> u64 {
        self.shared.state.reauthentications.load(Ordering::Relaxed)
    }
}

impl<R, C: Clone> Clone for EntraConnection<R, C> {
    fn clone(&self) -> Self {
        EntraConnection {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<R, C> fmt::Debug for EntraConnection<R, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = &self.shared.state;
        f.debug_struct("EntraConnection")
            .field("provider", &self.shared.provider)
            .field("authenticated_generation", &state.authenticated())
            .field("in_transaction", &state.in_transaction())
            .finish_non_exhaustive()
    }
}

impl<R, C> EntraConnection<R, C>
where
    R: Runtime,
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    fn start(inner: C, provider: EntraIdProvider<R>, state: Arc<AuthState>) -> Self {
        let shared = Arc::new(Shared {
            inner: inner.clone(),
            provider: provider.clone(),
            state: Arc::clone(&state),
        });
        R::spawn(reauthenticate_on_renewal(
            Arc::downgrade(&shared),
            state,
            provider,
        ));
        EntraConnection { inner, shared }
    }

    async fn send_command(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        let kind = transaction_command(cmd);
        if kind == Some(TransactionCommand::Multi) {
            return self.send_multi(cmd).await;
        }
        let state = &self.shared.state;
        let in_transaction = state.in_transaction();
        let rejected = state.authenticated();
        let transaction_end =
            (kind == Some(TransactionCommand::End)).then(|| TransactionEnd(state));
        let result = self.inner.req_packed_command(cmd).await;
        drop(transaction_end);
        match result {
            Ok(reply) if !in_transaction && is_rejection_reply(&reply) => {
                debug!("Redis rejected the connection's token; sending the command again");
                if !self.shared.authenticate_after_rejection(rejected).await {
                    return Ok(reply);
                }
                self.inner.req_packed_command(cmd).await
            }
            Err(error) => {
                self.after_error(&error);
                Err(error)
            }
            other => other,
        }
    }

    /// Sends `MULTI`, and once more after `WRONGPASS`.
    async fn send_multi(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        let rejected = self.shared.state.authenticated();
        match self.send_multi_once(cmd).await {
            Ok(reply) if is_rejection_reply(&reply) => {
                if !self.shared.authenticate_after_rejection(rejected).await {
                    return Ok(reply);
                }
                self.send_multi_once(cmd).await
            }
            other => other,
        }
    }

    /// Sends `MULTI` while holding the authentication lock, so no `AUTH` is written
    /// between the transaction's commands.
    ///
    /// The transaction state is set before `MULTI` is written. When the caller drops the
    /// future before the reply, it stays set, because the server may have started the
    /// transaction. The transaction deadline bounds how long it defers `AUTH`.
    async fn send_multi_once(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        let state = &self.shared.state;
        let _auth = state.auth_lock.lock().await;
        state.begin_transaction();
        let result = self.inner.req_packed_command(cmd).await;
        if !matches!(result, Ok(Value::Okay)) {
            state.end_transaction();
        }
        result
    }

    async fn send_pipeline(
        &mut self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let state = &self.shared.state;
        // An atomic pipeline opens and ends its own transaction. In another pipeline, the
        // last `MULTI`, `EXEC` or `DISCARD` decides whether a transaction stays open.
        let last_transaction_command = if pipeline.is_transaction() {
            None
        } else {
            pipeline.cmd_iter().filter_map(transaction_command).last()
        };

        let no_resend = state.in_transaction()
            || pipeline.is_transaction()
            || last_transaction_command.is_some();
        let rejected = state.authenticated();
        let mut auth_lock = None;
        let mut transaction_end = None;
        match last_transaction_command {
            Some(TransactionCommand::Multi) => {
                // As in `send_multi_once`: no `AUTH` may follow the pipeline's `MULTI`.
                auth_lock = Some(state.auth_lock.lock().await);
                state.begin_transaction();
            }
            Some(TransactionCommand::End) => transaction_end = Some(TransactionEnd(state)),
            None => {}
        }
        let result = self
            .inner
            .req_packed_commands(pipeline, offset, count)
            .await;
        drop(transaction_end);
        drop(auth_lock);

        let replies = match result {
            Ok(replies) => replies,
            Err(error) => {
                self.after_error(&error);
                return Err(error);
            }
        };
        let all_rejected = !replies.is_empty() && replies.iter().all(is_rejection_reply);
        if !all_rejected || no_resend {
            return Ok(replies);
        }
        debug!("Redis rejected the connection's token; sending the pipeline again");
        if !self.shared.authenticate_after_rejection(rejected).await {
            return Ok(replies);
        }
        self.inner
            .req_packed_commands(pipeline, offset, count)
            .await
    }

    fn after_error(&self, error: &RedisError) {
        if error.is_unrecoverable_error() || error.is_connection_dropped() {
            // The transaction ended with the connection.
            self.shared.state.end_transaction();
        }
    }
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
    async fn authenticate_after_rejection(&self, rejected: u64) -> bool {
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
    async fn renew(&self, past_deadline: bool) -> Renewal {
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
    async fn renew_after_rejection(&self, rejected: u64) -> Renewal {
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
    async fn send_auth(&self, generation: u64, credentials: &Credentials) -> AuthOutcome {
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
            Ok(reply) if is_rejection_reply(&reply) => AuthOutcome::Rejected(into_error(reply)),
            Ok(reply) => AuthOutcome::Failed(into_error(reply)),
            Err(error) => AuthOutcome::Failed(error),
        }
    }
}

/// How the re-authentication task waits for an open transaction to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deferral {
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
/// The task holds the connection only while it sends, so dropping the last clone ends it.
async fn reauthenticate_on_renewal<R, C>(
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
/// task, which sends `AUTH` for every item, the first included. [`EntraConnection`]'s
/// own task sends the renewals, so the crate's task needs no items:
///
/// - For a `MultiplexedConnection`, which opens one connection, the first subscription
///   yields the current credentials once and the second yields nothing. The connection
///   sends one `AUTH` per token.
/// - A `ConnectionManager` opens a connection again after a failure, and a handshake
///   that fails subscribes once, not twice, so the two kinds cannot be told apart by
///   their order. Each subscription yields the current credentials once, and the
///   crate's task repeats the handshake's token in one `AUTH` per connection.
struct HandshakeCredentials<R> {
    provider: EntraIdProvider<R>,
    state: Arc<AuthState>,
    /// Set for a `MultiplexedConnection`: subscriptions after the first yield nothing.
    single_connection: bool,
    subscriptions: AtomicU64,
}

impl<R> HandshakeCredentials<R> {
    fn new(provider: &EntraIdProvider<R>, state: &Arc<AuthState>, single: bool) -> Self {
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
            // subscriptions cannot be told apart here (see the type's comment).
            state.record(generation, credentials.expires_on());
            Ok(to_basic_auth(&credentials))
        };
        Box::pin(stream::once(first).chain(stream::pending()))
    }
}

impl<R, C> ConnectionLike for EntraConnection<R, C>
where
    R: Runtime,
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(self.send_command(cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(self.send_pipeline(pipeline, offset, count))
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TransactionCommand {
    Multi,
    /// `EXEC` or `DISCARD`.
    End,
}

fn transaction_command(cmd: &Cmd) -> Option<TransactionCommand> {
    let Some(Arg::Simple(name)) = cmd.args_iter().next() else {
        return None;
    };
    if name.eq_ignore_ascii_case(b"MULTI") {
        Some(TransactionCommand::Multi)
    } else if name.eq_ignore_ascii_case(b"EXEC") || name.eq_ignore_ascii_case(b"DISCARD") {
        Some(TransactionCommand::End)
    } else {
        None
    }
}

fn is_rejection_reply(reply: &Value) -> bool {
    match reply {
        Value::ServerError(error) => {
            classify_error_reply(error.code(), error.details().unwrap_or(""))
                == ErrorReply::CredentialsRejected
        }
        _ => false,
    }
}

fn into_error(reply: Value) -> RedisError {
    match reply.extract_error() {
        Err(error) => error,
        Ok(other) => RedisError::from((
            ErrorKind::UnexpectedReturnType,
            "unexpected reply to AUTH",
            format!("{other:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_commands_are_recognised() {
        assert_eq!(
            transaction_command(&redis::cmd("multi")),
            Some(TransactionCommand::Multi)
        );
        assert_eq!(
            transaction_command(&redis::cmd("EXEC")),
            Some(TransactionCommand::End)
        );
        assert_eq!(
            transaction_command(&redis::cmd("Discard")),
            Some(TransactionCommand::End)
        );
        assert_eq!(transaction_command(redis::cmd("GET").arg("MULTI")), None);
        assert_eq!(transaction_command(&Cmd::new()), None);
    }

    #[test]
    fn wrongpass_replies_are_rejections() {
        let rejections = [
            "WRONGPASS invalid username-password pair or user is disabled.",
            "ERR WRONGPASS invalid username-password pair",
            "ERR invalid username-password pair",
        ];
        for line in rejections {
            let reply = error_reply(line);
            assert!(is_rejection_reply(&reply), "{line}");
        }
        let noperm = error_reply("NOPERM User u has no permissions to run the 'set' command");
        assert!(!is_rejection_reply(&noperm));
        assert!(!is_rejection_reply(&Value::Okay));
    }

    /// Parses `-{line}` as a server would send it.
    fn error_reply(line: &str) -> Value {
        redis::parse_redis_value(format!("-{line}\r\n").as_bytes()).unwrap()
    }
}
