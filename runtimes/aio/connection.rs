//! An async Redis connection that re-authenticates after each renewal and retries a
//! command once after `WRONGPASS`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use log::debug;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::{
    Arg, AsyncConnectionConfig, Client, Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value,
};

use super::Runtime;
use super::provider::EntraIdProvider;
use crate::replies::{TransactionCommand, is_rejection_reply};

mod auth;

use self::auth::{AuthState, HandshakeCredentials, TransactionEnd, reauthenticate_on_renewal};

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
///   whose future is dropped before its reply, or whose reply times out on an open
///   connection, counts as open, because the server may have run it. A `MULTI` whose
///   connection closes does not.
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
/// When a command or pipeline sent after `MULTI` fails because the connection closed,
/// Redis has discarded the queued commands, and the transaction is lost. Until an
/// `EXEC` or `DISCARD` (alone or in a pipeline) fails with `transaction aborted`, every
/// command and pipeline through this connection and its clones fails with
/// `transaction lost` and is not sent, so none of them runs on its own on a new
/// connection.
///
/// # Closed connections and blocking commands
///
/// A `ConnectionManager` replaces a connection the server closed when the next command
/// fails on it; that command returns the I/O error.
///
/// NOTE: over RESP3, a `ConnectionManager` (redis 1.8.2) also reconnects on its own when
/// the connection reports a disconnect, and then no command fails. A transaction open at
/// that moment is not marked lost, so its later commands run on their own. A `MultiplexedConnection` is never
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
            .field("transaction_lost", &state.transaction_lost())
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
        let ends_transaction = kind == Some(TransactionCommand::End);
        if let Some(error) = self.shared.state.lost_transaction_error(ends_transaction) {
            return Err(error);
        }
        if kind == Some(TransactionCommand::Multi) {
            return self.send_multi(cmd).await;
        }
        let state = &self.shared.state;
        let in_transaction = state.in_transaction();
        let rejected = state.authenticated();
        let transaction_end = ends_transaction.then(|| TransactionEnd(state));
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
                self.after_error(&error, in_transaction && kind.is_none());
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
    /// The transaction state is set before `MULTI` is written. It stays set when the
    /// caller drops the future before the reply, or when the reply fails on a connection
    /// that is still open (a response timeout), because the server may have started the
    /// transaction. The transaction deadline bounds how long it defers `AUTH`. When the
    /// connection closes, the server has discarded the transaction, so it ends.
    async fn send_multi_once(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        let state = &self.shared.state;
        let _auth = state.auth_lock.lock().await;
        let was_open = state.in_transaction();
        state.begin_transaction();
        let result = self.inner.req_packed_command(cmd).await;
        match &result {
            Ok(Value::Okay) => {}
            // Only a transaction opened before this `MULTI` is lost: the caller knows
            // that this one failed.
            Err(error) if is_connection_lost(error) && was_open => state.lose_transaction(),
            Err(error) if is_connection_lost(error) => state.end_transaction(),
            Err(_) => {}
            // An error reply to a nested `MULTI` leaves the earlier transaction open.
            Ok(_) if was_open => {}
            Ok(_) => state.end_transaction(),
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
        let ends_transaction = !pipeline.is_transaction()
            && pipeline
                .cmd_iter()
                .any(|cmd| transaction_command(cmd) == Some(TransactionCommand::End));
        if let Some(error) = state.lost_transaction_error(ends_transaction) {
            return Err(error);
        }
        // Set when the whole pipeline belongs to a transaction opened before it.
        let inside_transaction = state.in_transaction() && last_transaction_command.is_none();

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
                self.after_error(&error, inside_transaction);
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

    /// Ends the transaction state when `error` closed the connection, because the server
    /// discarded the transaction with it. `inside_transaction` is set for a request sent
    /// after `MULTI` and before `EXEC` or `DISCARD`: the caller's later commands belong
    /// to that transaction, so it is marked lost.
    fn after_error(&self, error: &RedisError, inside_transaction: bool) {
        if !is_connection_lost(error) {
            return;
        }
        let state = &self.shared.state;
        if inside_transaction && state.in_transaction() {
            state.lose_transaction();
        } else {
            state.end_transaction();
        }
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

/// Reads whether `cmd` opens or ends a transaction.
fn transaction_command(cmd: &Cmd) -> Option<TransactionCommand> {
    match cmd.args_iter().next() {
        Some(Arg::Simple(name)) => TransactionCommand::from_name(name),
        _ => None,
    }
}

/// Returns whether `error` closed the connection, so a `ConnectionManager` replaces it.
/// A response timeout leaves the connection open.
fn is_connection_lost(error: &RedisError) -> bool {
    error.is_unrecoverable_error() || error.is_connection_dropped()
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
