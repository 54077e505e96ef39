//! A synchronous Redis connection that authenticates with the provider's credentials.

use std::io;
use std::sync::mpsc::Sender;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::debug;
use redis::{
    Cmd, ConnectionInfo, ConnectionLike, ErrorKind, IntoConnectionInfo, PushInfo, RedisError,
    RedisResult, Value,
};

use super::provider::EntraIdProvider;
use crate::replies::{
    TransactionCommand, auth_reply_error, is_rejection, is_rejection_reply, transaction_aborted,
    transaction_lost,
};
use crate::{Credentials, Error};

/// A Redis connection that authenticates with Entra ID credentials and re-authenticates
/// when they change.
///
/// Use it wherever the `redis` crate takes a [`ConnectionLike`]: commands, pipelines and
/// transactions. Before each command it compares the provider's generation with the one
/// it authenticated with (one atomic load); after a renewal it sends
/// `AUTH <username> <token>` first. It never re-authenticates between `MULTI` and
/// `EXEC`/`DISCARD`, and it never sends an expired token. A connection the server closed,
/// or whose token has expired, is replaced with the current credentials before the next
/// command. After `WRONGPASS` it authenticates with a newer token and sends the command
/// once more.
///
/// # When a command is sent again
///
/// A command is sent at most twice, and the second time only when the first attempt
/// cannot have run on the server:
///
/// - The server replied to it with `WRONGPASS` (in any of its forms), so authentication
///   failed and nothing ran. The connection authenticates with a newer token, forcing a
///   refresh if none has arrived, and sends the command once more. A second rejection is
///   returned to the caller.
/// - Writing a single command to the socket failed. Redis runs only complete commands, and
///   a failed write leaves the command incomplete, so the connection is replaced and the
///   command is sent on the new one.
///
/// A command whose bytes were all written may have run, even when its reply is lost to a
/// reset, an end of file or a timeout. It is never sent again: the error is returned, and
/// the next command reconnects. A pipeline is sent again only when every reply in it was a
/// `WRONGPASS`, and a failed pipeline write is returned, because its first commands may
/// have reached the server complete.
///
/// `MULTI`, `EXEC` and `DISCARD` are tracked whether they are sent alone or in a
/// pipeline. Nothing is sent again between `MULTI` and `EXEC`. When the connection
/// closes or a reply times out inside a transaction, Redis has discarded the queued
/// commands. The transaction's later commands then fail with `transaction lost` instead
/// of running on their own on a new connection, and `EXEC` or `DISCARD` ends it with
/// `transaction aborted`. A connection whose token has expired is known to be closed
/// (Azure closes it at the token's expiry), so it is replaced before the next command is
/// written, which needs no retry at all.
pub struct EntraConnection {
    info: ConnectionInfo,
    provider: EntraIdProvider,
    connection: Option<redis::Connection>,
    /// The provider generation of the credentials this connection last authenticated with.
    generation: u64,
    /// When those credentials expire; the server closes the connection then.
    expires_on: SystemTime,
    in_transaction: bool,
    authentications: u64,
    connect_timeout: Option<Duration>,
    response_timeout: Option<Duration>,
    push_sender: Option<Sender<PushInfo>>,
}

/// The outcome of one attempt to send a command.
enum Attempt {
    /// The command was not written completely, so it cannot have run.
    NotSent(RedisError),
    /// The command was written; this is its reply or the failure to read it.
    Sent(RedisResult<Value>),
}

/// The outcome of an `AUTH` on an open connection.
enum AuthOutcome {
    Accepted,
    /// The server rejected the credentials (`WRONGPASS`).
    Rejected(RedisError),
    Failed(RedisError),
}

impl EntraConnection {
    /// Connects to `info` (for example `rediss://my-cache.redis.cache.windows.net:6380`)
    /// and authenticates with the provider's current credentials.
    ///
    /// A username or password in `info` is replaced by the provider's credentials.
    pub fn open(info: impl IntoConnectionInfo, provider: &EntraIdProvider) -> RedisResult<Self> {
        Self::open_with_timeout(info, provider, None)
    }

    /// Like [`open`](Self::open), with a limit on each TCP connect and handshake.
    pub fn open_with_timeout(
        info: impl IntoConnectionInfo,
        provider: &EntraIdProvider,
        connect_timeout: Option<Duration>,
    ) -> RedisResult<Self> {
        let mut connection = EntraConnection {
            info: info.into_connection_info()?,
            provider: provider.clone(),
            connection: None,
            generation: 0,
            expires_on: UNIX_EPOCH,
            in_transaction: false,
            authentications: 0,
            connect_timeout,
            response_timeout: None,
            push_sender: None,
        };
        connection.connect()?;
        Ok(connection)
    }

    /// Counts the `AUTH` commands and authenticated handshakes this connection has sent.
    pub fn authentications(&self) -> u64 {
        self.authentications
    }

    /// The provider this connection takes credentials from.
    pub fn provider(&self) -> &EntraIdProvider {
        &self.provider
    }

    /// Returns true between a `MULTI` and its `EXEC` or `DISCARD`, including a transaction
    /// lost with its connection.
    pub fn in_transaction(&self) -> bool {
        self.in_transaction
    }

    /// Returns true when the token this connection authenticated with has expired, so the
    /// next command reconnects first.
    pub fn token_expired(&self) -> bool {
        SystemTime::now() >= self.expires_on
    }

    /// Sets how long a command waits for its reply. `None` (the default) waits as long as
    /// the operating system keeps the socket open.
    ///
    /// It applies to this connection and to every connection that replaces it. When a
    /// reply does not come in time, the command fails with a timeout error and the
    /// connection is closed, because its reply may still arrive and would be taken for
    /// the reply to the next command. The next command opens a new connection. The timed
    /// out command is not sent again: it may have run.
    ///
    /// # Errors
    ///
    /// A zero duration is refused, as `std::net::TcpStream::set_read_timeout` refuses it.
    pub fn set_response_timeout(&mut self, timeout: Option<Duration>) -> RedisResult<()> {
        if timeout == Some(Duration::ZERO) {
            return Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "invalid response timeout 0 s: use a positive duration, or None to wait without limit",
            )));
        }
        if let Some(connection) = self.connection.as_mut() {
            connection.set_read_timeout(timeout)?;
        }
        self.response_timeout = timeout;
        Ok(())
    }

    /// Sends RESP3 push messages (pub/sub messages included) to `sender`, on this
    /// connection and on every connection that replaces it.
    ///
    /// Pushes are read while a reply is awaited, so an in-band `AUTH` after a renewal
    /// matches its `+OK` even when messages arrive first. Subscriptions are not restored
    /// on a replacement connection; use [`EntraPubSub`](super::EntraPubSub) for that.
    pub fn set_push_sender(&mut self, sender: Sender<PushInfo>) {
        if let Some(connection) = self.connection.as_mut() {
            connection.set_push_sender(sender.clone());
        }
        self.push_sender = Some(sender);
    }

    /// Opens a new connection with the provider's current credentials. When the server
    /// rejects them, it retries once with newer ones.
    fn connect(&mut self) -> RedisResult<()> {
        self.connection = None;
        self.in_transaction = false;
        let timeout = self.provider.first_token_timeout();
        let (generation, credentials) = self.provider.snapshot_timeout(timeout);
        let credentials = credentials.map_err(to_redis_error)?;
        match self.open_with(generation, &credentials) {
            Err(error) if is_rejection(&error) => {
                debug!("Redis rejected the token at connect; asking for a newer one");
                let Some((generation, credentials)) =
                    self.provider.credentials_after_rejection(generation)
                else {
                    return Err(error);
                };
                self.open_with(generation, &credentials)
            }
            other => other,
        }
    }

    fn open_with(&mut self, generation: u64, credentials: &Credentials) -> RedisResult<()> {
        let connection = open_redis(&self.info, credentials, self.connect_timeout)?;
        connection.set_read_timeout(self.response_timeout)?;
        debug!("connected to Redis as {}", credentials.username());
        self.connection = Some(connection);
        if let (Some(connection), Some(sender)) = (&mut self.connection, &self.push_sender) {
            connection.set_push_sender(sender.clone());
        }
        self.record_authentication(generation, credentials);
        Ok(())
    }

    fn record_authentication(&mut self, generation: u64, credentials: &Credentials) {
        self.generation = generation;
        self.expires_on = credentials.expires_on();
        self.authentications += 1;
    }

    /// Brings the connection up to date before a command: replaces a closed or expired
    /// one and re-authenticates after a renewal, unless a transaction is open.
    fn prepare(&mut self) -> RedisResult<()> {
        if self.in_transaction {
            // An AUTH or a new connection would break the open transaction.
            return match self.connection {
                Some(_) => Ok(()),
                None => Err(closed_error()),
            };
        }
        if !self.is_open() || self.token_expired() {
            return self.connect();
        }
        if self.provider.generation() == self.generation {
            return Ok(());
        }
        match self.reauthenticate() {
            // The AUTH did not get through; a new connection authenticates in its handshake.
            Err(error) if self.connection.is_none() => {
                debug!("re-authentication failed ({error}); reconnecting");
                self.connect()
            }
            other => other,
        }
    }

    fn reauthenticate(&mut self) -> RedisResult<()> {
        let (generation, credentials) = self.provider.snapshot_timeout(Duration::ZERO);
        let credentials = match credentials {
            Ok(credentials) => credentials,
            // The newest token has expired too: sending it is useless. The connection keeps
            // its authentication and is replaced once its own token expires.
            Err(Error::TokenExpired { .. }) => return Ok(()),
            Err(error) => return Err(to_redis_error(error)),
        };
        match self.send_auth(generation, &credentials) {
            AuthOutcome::Accepted => Ok(()),
            AuthOutcome::Failed(error) => Err(error),
            AuthOutcome::Rejected(error) => self.authenticate_after_rejection(generation, error),
        }
    }

    /// Authenticates with credentials newer than `rejected`, or returns `error` when none
    /// arrive in time.
    fn authenticate_after_rejection(
        &mut self,
        rejected: u64,
        error: RedisError,
    ) -> RedisResult<()> {
        let Some((generation, credentials)) = self.provider.credentials_after_rejection(rejected)
        else {
            return Err(error);
        };
        if self.connection.is_none() {
            return self.open_with(generation, &credentials);
        }
        match self.send_auth(generation, &credentials) {
            AuthOutcome::Accepted => Ok(()),
            AuthOutcome::Rejected(error) | AuthOutcome::Failed(error) => Err(error),
        }
    }

    fn send_auth(&mut self, generation: u64, credentials: &Credentials) -> AuthOutcome {
        let auth = redis::cmd("AUTH")
            .arg(credentials.username())
            .arg(credentials.password())
            .get_packed_command();
        let reply = match self.send(&auth) {
            Attempt::Sent(Ok(reply)) => reply,
            Attempt::Sent(Err(error)) | Attempt::NotSent(error) => {
                // The connection's state is unknown: replace it.
                self.connection = None;
                return AuthOutcome::Failed(error);
            }
        };
        match reply {
            Value::Okay => {
                debug!("re-authenticated as {}", credentials.username());
                self.record_authentication(generation, credentials);
                AuthOutcome::Accepted
            }
            reply if is_rejection_reply(&reply) => {
                debug!("Redis rejected the token of generation {generation}");
                AuthOutcome::Rejected(auth_reply_error(reply))
            }
            reply => AuthOutcome::Failed(auth_reply_error(reply)),
        }
    }

    /// Writes `packed` and reads its reply, skipping RESP3 pushes as the `redis` crate does
    /// (they still reach the push sender).
    fn send(&mut self, packed: &[u8]) -> Attempt {
        let Some(connection) = self.connection.as_mut() else {
            return Attempt::NotSent(closed_error());
        };
        if let Err(error) = connection.send_packed_command(packed) {
            return Attempt::NotSent(error);
        }
        loop {
            match connection.recv_response() {
                Ok(Value::Push { .. }) => continue,
                Err(error) => {
                    return Attempt::Sent(Err(reply_timeout(error, self.response_timeout)));
                }
                reply => return Attempt::Sent(reply),
            }
        }
    }

    /// Sends one command, and sends it again when the module's rules allow.
    fn send_command(&mut self, packed: &[u8]) -> RedisResult<Value> {
        self.prepare()?;
        match self.send(packed) {
            Attempt::NotSent(error) if !self.in_transaction => {
                debug!("command not sent ({error}); reconnecting to send it again");
                self.connection = None;
                self.prepare()?;
                self.send_again(packed)
            }
            Attempt::Sent(Ok(reply)) if !self.in_transaction && is_rejection_reply(&reply) => {
                let rejected = self.generation;
                let error = auth_reply_error(reply.clone());
                if self.authenticate_after_rejection(rejected, error).is_err() {
                    return Ok(reply);
                }
                self.send_again(packed)
            }
            Attempt::NotSent(error) => Err(error),
            Attempt::Sent(result) => result,
        }
    }

    fn send_again(&mut self, packed: &[u8]) -> RedisResult<Value> {
        match self.send(packed) {
            Attempt::NotSent(error) => Err(error),
            Attempt::Sent(result) => result,
        }
    }

    fn send_pipeline(
        &mut self,
        packed: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        self.prepare()?;
        let timeout = self.response_timeout;
        let connection = self.connection.as_mut().ok_or_else(closed_error)?;
        let replies = connection
            .req_packed_commands(packed, offset, count)
            .map_err(|error| reply_timeout(error, timeout))?;
        let all_rejected = !replies.is_empty() && replies.iter().all(is_rejection_reply);
        if !all_rejected || self.in_transaction {
            return Ok(replies);
        }
        let error = auth_reply_error(replies[0].clone());
        if self
            .authenticate_after_rejection(self.generation, error)
            .is_err()
        {
            return Ok(replies);
        }
        let connection = self.connection.as_mut().ok_or_else(closed_error)?;
        connection
            .req_packed_commands(packed, offset, count)
            .map_err(|error| reply_timeout(error, timeout))
    }

    fn track_transaction(&mut self, name: &[u8]) {
        match TransactionCommand::from_name(name) {
            Some(TransactionCommand::Multi) => self.in_transaction = true,
            Some(TransactionCommand::End) => self.in_transaction = false,
            None => {}
        }
    }

    fn after_command<T>(&mut self, result: RedisResult<T>) -> RedisResult<T> {
        let Err(error) = result else {
            return result;
        };
        if !(error.is_unrecoverable_error() || error.is_connection_dropped() || error.is_timeout())
        {
            return Err(error);
        }
        // Replaced, with the current credentials, before the next command. Inside a
        // transaction `in_transaction` stays set, so the transaction's remaining commands
        // fail instead of running on their own on the new connection.
        self.connection = None;
        Err(error)
    }

    /// Returns the error for commands sent after the connection closed inside `MULTI`.
    /// Redis discarded the queued commands, so `EXEC` or `DISCARD` (alone or in a
    /// pipeline) ends the lost transaction with an error, and anything else fails until
    /// then.
    fn lost_transaction<'a>(&mut self, mut names: impl Iterator<Item = &'a [u8]>) -> RedisError {
        if names.any(|name| TransactionCommand::from_name(name) == Some(TransactionCommand::End)) {
            self.in_transaction = false;
            return transaction_aborted();
        }
        transaction_lost()
    }
}

/// Opens a `redis` connection authenticated with `credentials`.
fn open_redis(
    info: &ConnectionInfo,
    credentials: &Credentials,
    connect_timeout: Option<Duration>,
) -> RedisResult<redis::Connection> {
    let settings = info
        .redis_settings()
        .clone()
        .set_username(credentials.username())
        .set_password(credentials.password());
    let client = redis::Client::open(info.clone().set_redis_settings(settings))?;
    match connect_timeout {
        Some(timeout) => client.get_connection_with_timeout(timeout),
        None => client.get_connection(),
    }
}

pub(crate) fn closed_error() -> RedisError {
    RedisError::from((ErrorKind::Io, "connection to Redis was closed"))
}

/// Reads the command name from a RESP-encoded command (`*N\r\n$len\r\nNAME\r\n…`), or
/// returns `None` when `packed` does not start with a whole command.
pub(crate) fn command_name(packed: &[u8]) -> Option<&[u8]> {
    split_command(packed).map(|(name, _)| name)
}

/// Reads the names of the RESP-encoded commands in `packed`, a pipeline, up to the first
/// bytes that are not a whole command.
fn command_names(packed: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = packed;
    std::iter::from_fn(move || {
        let (name, after) = split_command(rest)?;
        rest = after;
        Some(name)
    })
}

/// Splits the first RESP-encoded command off `packed` into its name and the bytes after
/// it.
fn split_command(packed: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = packed.strip_prefix(b"*")?;
    let (count, mut rest) = split_length(rest)?;
    let mut name = None;
    for _ in 0..count {
        let (bulk, after) = split_bulk(rest)?;
        name.get_or_insert(bulk);
        rest = after;
    }
    Some((name?, rest))
}

/// Splits a RESP bulk string (`$len\r\nbytes\r\n`) off `packed`.
fn split_bulk(packed: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = packed.strip_prefix(b"$")?;
    let (len, rest) = split_length(rest)?;
    let bulk = rest.get(..len)?;
    let after = rest.get(len..)?.strip_prefix(b"\r\n")?;
    Some((bulk, after))
}

/// Splits a decimal length and its `\r\n` off `packed`.
fn split_length(packed: &[u8]) -> Option<(usize, &[u8])> {
    let line_end = packed.iter().position(|&b| b == b'\r')?;
    let len = std::str::from_utf8(&packed[..line_end])
        .ok()?
        .parse()
        .ok()?;
    let rest = packed[line_end..].strip_prefix(b"\r\n")?;
    Some((len, rest))
}

/// Rewrites a timed-out wait for a reply as an error that names the configured wait.
fn reply_timeout(error: RedisError, timeout: Option<Duration>) -> RedisError {
    let Some(waited) = timeout.filter(|_| error.is_timeout()) else {
        return error;
    };
    let message = format!("no reply from Redis within {waited:?}; the connection was closed");
    RedisError::from(io::Error::new(io::ErrorKind::TimedOut, message))
}

pub(crate) fn to_redis_error(error: Error) -> RedisError {
    let kind = match error {
        Error::Config { .. } => ErrorKind::InvalidClientConfig,
        _ => ErrorKind::AuthenticationFailed,
    };
    RedisError::from((kind, "no Entra ID credentials", error.to_string()))
}

impl ConnectionLike for EntraConnection {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        if self.in_transaction && self.connection.is_none() {
            return Err(self.lost_transaction(command_name(cmd).into_iter()));
        }
        let result = self.send_command(cmd);
        if result.is_ok()
            && let Some(name) = command_name(cmd)
        {
            self.track_transaction(name);
        }
        self.after_command(result)
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        if self.in_transaction && self.connection.is_none() {
            return Err(self.lost_transaction(command_names(cmd)));
        }
        let result = self.send_pipeline(cmd, offset, count);
        if result.is_ok() {
            // The last MULTI, EXEC or DISCARD in the pipeline decides the state.
            for name in command_names(cmd) {
                self.track_transaction(name);
            }
        }
        self.after_command(result)
    }

    fn req_command(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        if !cmd.is_no_response() {
            return self.req_packed_command(&cmd.get_packed_command());
        }
        // A command without a reply, such as SUBSCRIBE on RESP3: write it and return.
        let result = self.prepare().and_then(|()| {
            let connection = self.connection.as_mut().ok_or_else(closed_error)?;
            connection.send_packed_command(&cmd.get_packed_command())?;
            Ok(Value::Nil)
        });
        self.after_command(result)
    }

    fn get_db(&self) -> i64 {
        self.info.redis_settings().db()
    }

    fn check_connection(&mut self) -> bool {
        redis::cmd("PING").query::<String>(self).is_ok()
    }

    fn is_open(&self) -> bool {
        self.connection.as_ref().is_some_and(|c| c.is_open())
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::time::Duration;

    use redis::RedisError;

    use super::{command_name, command_names, reply_timeout};

    #[test]
    fn command_name_reads_first_bulk_string() {
        assert_eq!(command_name(b"*1\r\n$5\r\nMULTI\r\n"), Some(&b"MULTI"[..]));
        assert_eq!(
            command_name(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"),
            Some(&b"GET"[..])
        );
        assert_eq!(command_name(b"PING\r\n"), None);
        assert_eq!(command_name(b"*1\r\n$9\r\nEX"), None);
    }

    #[test]
    fn command_names_read_each_command_of_pipeline() {
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("MULTI")
            .cmd("SET")
            .arg("k")
            .arg("v\r\n$4")
            .cmd("EXEC");
        let packed = pipeline.get_packed_pipeline();
        let names: Vec<&[u8]> = command_names(&packed).collect();
        assert_eq!(names, [&b"MULTI"[..], b"SET", b"EXEC"]);
        let cut = &packed[..packed.len() - 3];
        assert_eq!(command_names(cut).count(), 2);
    }

    #[test]
    fn reply_timeout_names_configured_wait() {
        let timed_out = || RedisError::from(io::Error::from(io::ErrorKind::WouldBlock));
        let error = reply_timeout(timed_out(), Some(Duration::from_millis(300)));
        assert!(error.is_timeout(), "{error}");
        assert!(error.to_string().contains("within 300ms"), "{error}");
        // A connect or handshake timeout is left as it is.
        let error = reply_timeout(timed_out(), None);
        assert!(!error.to_string().contains("no reply"), "{error}");
    }

    #[test]
    fn command_name_rejects_absurd_lengths() {
        let huge = format!("*1\r\n${}\r\nGET\r\n", usize::MAX);
        assert_eq!(command_name(huge.as_bytes()), None);
        assert_eq!(command_name(b"*1\r\n$-1\r\n"), None);
        assert_eq!(command_name(b"*1\r\n$\r\n"), None);
        assert_eq!(command_name(b"*"), None);
        assert_eq!(command_name(b""), None);
    }

    /// Feeds random bytes and mutated commands to the reader, which the fuzz crate cannot
    /// reach because it builds without the `blocking` feature. The reader must not panic,
    /// and a name it returns must lie inside the input.
    #[test]
    fn command_name_survives_random_input() {
        let seeds: [&[u8]; 4] = [
            b"*1\r\n$5\r\nMULTI\r\n",
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n",
            b"*1\r\n$18446744073709551615\r\nX\r\n",
            b"*\n$\r",
        ];
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            // xorshift64: reproducible, with no dependency.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..200_000 {
            let mut input = seeds[round % seeds.len()].to_vec();
            for _ in 0..(next() % 4) {
                let at = (next() as usize) % (input.len() + 1);
                match next() % 3 {
                    0 if at < input.len() => input[at] = next() as u8,
                    1 => input.insert(at, b"*$\r\n0123456789"[(next() % 14) as usize]),
                    _ if at < input.len() => {
                        input.remove(at);
                    }
                    _ => {}
                }
            }
            if let Some(name) = command_name(&input) {
                let start = name.as_ptr() as usize - input.as_ptr() as usize;
                assert!(start + name.len() <= input.len(), "{input:?}");
            }
        }
    }
}
