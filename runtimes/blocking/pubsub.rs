//! A blocking pub/sub subscriber that keeps its subscriptions through token renewals.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use log::debug;
use redis::{
    ConnectionInfo, ConnectionLike, IntoConnectionInfo, Msg, PushKind, RedisResult, ToRedisArgs,
    Value,
};

use super::connection::{closed_error, to_redis_error};
use super::provider::EntraIdProvider;
use crate::Credentials;
use crate::replies::{classify_reply, is_rejection};
use crate::reply::ErrorReply;

/// How often a waiting subscriber checks for new credentials by default.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How long the subscriber waits for a reply to `AUTH` or to a subscription command
/// before it gives the connection up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a retired connection may take to confirm its unsubscription.
const RETIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// A pub/sub subscriber that authenticates with Entra ID credentials and keeps its
/// channels and patterns through token renewals.
///
/// While it waits for messages it checks the provider for new credentials every
/// [`DEFAULT_CHECK_INTERVAL`] (see [`set_check_interval`](Self::set_check_interval)).
/// When the credentials change it sends `AUTH` in band. A RESP3 connection accepts it, and
/// the `+OK` is matched even when push messages arrive first; the messages are kept. A
/// RESP2 connection in subscribe mode rejects `AUTH` with
/// `ERR Can't execute 'auth' … allowed in this context`. That means "reconnect", not
/// "token rejected", so no refresh is forced. Instead the subscriber opens a replacement
/// connection with the new credentials and subscribes it to the same channels and
/// patterns. Only then does it unsubscribe and close the old one, before the old token
/// expires and Azure would close it.
///
/// No message is lost in the switch, but a message published while both connections are
/// subscribed arrives twice. A connection that the server closed is replaced and
/// resubscribed before the next wait; messages published while no connection was
/// subscribed are lost, as pub/sub delivers at most once.
pub struct EntraPubSub {
    info: ConnectionInfo,
    provider: EntraIdProvider,
    current: Option<Subscriber>,
    channels: BTreeSet<Vec<u8>>,
    patterns: BTreeSet<Vec<u8>>,
    /// Messages read while waiting for a reply, delivered before new ones.
    pending: VecDeque<Msg>,
    check_interval: Duration,
    connect_timeout: Option<Duration>,
    replacements: u64,
    authentications: u64,
}

/// The outcome of an in-band `AUTH` on a subscribed connection.
enum InBand {
    Accepted,
    /// `AUTH` is not allowed here, or did not get through: move to a new connection.
    Reconnect,
    /// The server rejected the token.
    Rejected(redis::RedisError),
}

/// One subscribed connection and the credentials it authenticated with.
struct Subscriber {
    connection: redis::Connection,
    generation: u64,
    expires_on: SystemTime,
}

impl EntraPubSub {
    /// Connects to `info` and authenticates with the provider's current credentials; it
    /// subscribes to nothing yet. `info` chooses RESP2 or RESP3, as for
    /// [`EntraConnection`](super::EntraConnection).
    pub fn open(info: impl IntoConnectionInfo, provider: &EntraIdProvider) -> RedisResult<Self> {
        let mut pubsub = EntraPubSub {
            info: info.into_connection_info()?,
            provider: provider.clone(),
            current: None,
            channels: BTreeSet::new(),
            patterns: BTreeSet::new(),
            pending: VecDeque::new(),
            check_interval: DEFAULT_CHECK_INTERVAL,
            connect_timeout: None,
            replacements: 0,
            authentications: 0,
        };
        pubsub.current = Some(pubsub.connect()?);
        Ok(pubsub)
    }

    /// Sets how often a waiting subscriber checks for new credentials. It must be well
    /// below the time between a renewal and the old token's expiry (at least 3 minutes
    /// with the default refresh policy).
    pub fn set_check_interval(&mut self, interval: Duration) {
        self.check_interval = interval.max(Duration::from_millis(1));
    }

    /// Subscribes to `channels` and waits for the server to confirm.
    pub fn subscribe<T: ToRedisArgs>(&mut self, channels: T) -> RedisResult<()> {
        self.change("SUBSCRIBE", channels.to_redis_args())
    }

    /// Subscribes to the channel `patterns` and waits for the server to confirm.
    pub fn psubscribe<T: ToRedisArgs>(&mut self, patterns: T) -> RedisResult<()> {
        self.change("PSUBSCRIBE", patterns.to_redis_args())
    }

    /// Unsubscribes from `channels` and waits for the server to confirm.
    pub fn unsubscribe<T: ToRedisArgs>(&mut self, channels: T) -> RedisResult<()> {
        self.change("UNSUBSCRIBE", channels.to_redis_args())
    }

    /// Unsubscribes from the channel `patterns` and waits for the server to confirm.
    pub fn punsubscribe<T: ToRedisArgs>(&mut self, patterns: T) -> RedisResult<()> {
        self.change("PUNSUBSCRIBE", patterns.to_redis_args())
    }

    /// Waits for the next message, for as long as it takes.
    pub fn get_message(&mut self) -> RedisResult<Msg> {
        loop {
            if let Some(message) = self.get_message_timeout(Duration::from_secs(3600))? {
                return Ok(message);
            }
        }
    }

    /// Waits up to `timeout` for the next message; `Ok(None)` means none arrived.
    pub fn get_message_timeout(&mut self, timeout: Duration) -> RedisResult<Option<Msg>> {
        let started = Instant::now();
        loop {
            if let Some(message) = self.pending.pop_front() {
                return Ok(Some(message));
            }
            self.maintain()?;
            if let Some(message) = self.pending.pop_front() {
                return Ok(Some(message));
            }
            let left = timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Ok(None);
            }
            let slice = left.min(self.check_interval).max(Duration::from_millis(1));
            let subscriber = self.current.as_mut().ok_or_else(closed_error)?;
            match read_message(&mut subscriber.connection, slice) {
                Ok(message) => return Ok(Some(message)),
                Err(error) if error.is_timeout() => {}
                Err(error) => {
                    debug!("subscriber connection failed ({error}); replacing it");
                    self.current = None;
                }
            }
        }
    }

    /// Counts the connections opened to replace one whose token changed or that closed.
    pub fn replacements(&self) -> u64 {
        self.replacements
    }

    /// Counts the in-band `AUTH` commands and authenticated handshakes sent.
    pub fn authentications(&self) -> u64 {
        self.authentications
    }

    /// Sends a subscription command and records its channels or patterns.
    fn change(&mut self, command: &str, names: Vec<Vec<u8>>) -> RedisResult<()> {
        self.maintain()?;
        let unsubscribe = command.contains("UNSUB");
        let pattern = command.starts_with('P');

        let tracked = if pattern {
            &self.patterns
        } else {
            &self.channels
        };
        // An empty UNSUBSCRIBE means all; name them, so every confirmation is expected.
        let names = if unsubscribe && names.is_empty() {
            tracked.iter().cloned().collect()
        } else {
            names
        };
        if names.is_empty() {
            return Ok(());
        }

        let subscriber = self.current.as_mut().ok_or_else(closed_error)?;
        let result = send_subscription(
            &mut subscriber.connection,
            command,
            &names,
            &mut self.pending,
        );
        if let Err(error) = result {
            self.current = None;
            return Err(error);
        }

        let tracked = if pattern {
            &mut self.patterns
        } else {
            &mut self.channels
        };
        for name in names {
            if unsubscribe {
                tracked.remove(&name);
            } else {
                tracked.insert(name);
            }
        }
        Ok(())
    }

    /// Replaces a closed or expired connection and follows credential changes.
    fn maintain(&mut self) -> RedisResult<()> {
        let usable = self
            .current
            .as_ref()
            .is_some_and(|s| s.connection.is_open() && SystemTime::now() < s.expires_on);
        if !usable {
            debug!("subscriber connection closed or its token expired; reconnecting");
            self.current = None;
            return self.replace();
        }
        let generation = self.provider.generation();
        if self
            .current
            .as_ref()
            .is_some_and(|s| s.generation == generation)
        {
            return Ok(());
        }
        let (generation, credentials) = self.provider.snapshot_timeout(Duration::ZERO);
        let Ok(credentials) = credentials else {
            // No valid newer token: keep the connection until its own token expires.
            return Ok(());
        };
        match self.authenticate_in_band(generation, &credentials)? {
            InBand::Accepted => Ok(()),
            InBand::Reconnect => self.replace(),
            InBand::Rejected(error) => {
                // Only a newer token is worth a new connection; the rejected one is not
                // sent again.
                if self
                    .provider
                    .credentials_after_rejection(generation)
                    .is_none()
                {
                    return Err(error);
                }
                self.replace()
            }
        }
    }

    /// Sends `AUTH` on the subscribed connection and classifies the reply.
    fn authenticate_in_band(
        &mut self,
        generation: u64,
        credentials: &Credentials,
    ) -> RedisResult<InBand> {
        let Some(subscriber) = self.current.as_mut() else {
            return Ok(InBand::Reconnect);
        };
        let auth = redis::cmd("AUTH")
            .arg(credentials.username())
            .arg(credentials.password())
            .get_packed_command();
        let reply = subscriber
            .connection
            .send_packed_command(&auth)
            .and_then(|()| read_reply(&mut subscriber.connection, &mut self.pending));
        let reply = match reply {
            Ok(reply) => reply,
            Err(error) => {
                debug!("in-band AUTH failed ({error}); replacing the connection");
                return Ok(InBand::Reconnect);
            }
        };
        self.authentications += 1;
        if reply == Value::Okay {
            debug!(
                "subscriber re-authenticated in band as {}",
                credentials.username()
            );
            subscriber.generation = generation;
            subscriber.expires_on = credentials.expires_on();
            return Ok(InBand::Accepted);
        }
        let kind = classify_reply(&reply);
        let error = reply.extract_error().err().unwrap_or_else(closed_error);
        match kind {
            ErrorReply::AuthNotAllowedHere => {
                debug!("AUTH is not allowed in subscribe mode; moving to a new connection");
                Ok(InBand::Reconnect)
            }
            ErrorReply::CredentialsRejected => Ok(InBand::Rejected(error)),
            ErrorReply::Other => Err(error),
        }
    }

    /// Opens a connection with the current credentials and subscribes it to every channel
    /// and pattern, then unsubscribes and closes the connection it replaces.
    fn replace(&mut self) -> RedisResult<()> {
        let mut fresh = self.connect()?;
        let mut fresh_pending = VecDeque::new();
        let channels: Vec<Vec<u8>> = self.channels.iter().cloned().collect();
        let patterns: Vec<Vec<u8>> = self.patterns.iter().cloned().collect();
        for (command, names) in [("SUBSCRIBE", channels), ("PSUBSCRIBE", patterns)] {
            if !names.is_empty() {
                send_subscription(&mut fresh.connection, command, &names, &mut fresh_pending)?;
            }
        }
        if let Some(mut old) = self.current.take() {
            retire(&mut old.connection, &mut self.pending);
        }
        self.pending.extend(fresh_pending);
        self.current = Some(fresh);
        self.replacements += 1;
        Ok(())
    }

    /// Opens and authenticates a connection; when the server rejects the credentials, it
    /// retries once with newer ones.
    fn connect(&mut self) -> RedisResult<Subscriber> {
        let timeout = self.provider.first_token_timeout();
        let (generation, credentials) = self.provider.snapshot_timeout(timeout);
        let credentials = credentials.map_err(to_redis_error)?;
        let (generation, credentials, connection) = match self.open_redis(&credentials) {
            Ok(connection) => (generation, credentials, connection),
            Err(error) if is_rejection(&error) => {
                let Some((generation, credentials)) =
                    self.provider.credentials_after_rejection(generation)
                else {
                    return Err(error);
                };
                let connection = self.open_redis(&credentials)?;
                (generation, credentials, connection)
            }
            Err(error) => return Err(error),
        };
        self.authentications += 1;
        Ok(Subscriber {
            connection,
            generation,
            expires_on: credentials.expires_on(),
        })
    }

    fn open_redis(&self, credentials: &Credentials) -> RedisResult<redis::Connection> {
        let settings = self
            .info
            .redis_settings()
            .clone()
            .set_username(credentials.username())
            .set_password(credentials.password());
        let client = redis::Client::open(self.info.clone().set_redis_settings(settings))?;
        match self.connect_timeout {
            Some(timeout) => client.get_connection_with_timeout(timeout),
            None => client.get_connection(),
        }
    }
}

impl std::fmt::Debug for EntraPubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntraPubSub")
            .field("channels", &self.channels.len())
            .field("patterns", &self.patterns.len())
            .field("replacements", &self.replacements)
            .finish_non_exhaustive()
    }
}

/// Reads one message, waiting at most `timeout`.
///
/// It goes through the `redis` crate's `PubSub`, the only reader that leaves the
/// connection's reply bookkeeping untouched when the read times out (`recv_response`
/// would drop the next reply). `PubSub` unsubscribes from everything when dropped, so it
/// is forgotten instead.
/// NOTE: this relies on redis 1.8, where a `PubSub` used only for `get_message` owns no
/// heap memory, so forgetting it leaks nothing.
fn read_message(connection: &mut redis::Connection, timeout: Duration) -> RedisResult<Msg> {
    let mut pubsub = connection.as_pubsub();
    let message = pubsub
        .set_read_timeout(Some(timeout))
        .and_then(|()| pubsub.get_message());
    std::mem::forget(pubsub);
    message
}

/// Reads until the reply to the last command, keeping the messages that arrive first.
fn read_reply(
    connection: &mut redis::Connection,
    pending: &mut VecDeque<Msg>,
) -> RedisResult<Value> {
    connection.set_read_timeout(Some(REPLY_TIMEOUT))?;
    loop {
        let value = connection.recv_response()?;
        if let Some(message) = Msg::from_value(&value) {
            pending.push_back(message);
        } else if !matches!(value, Value::Push { .. }) {
            return Ok(value);
        }
    }
}

/// Sends a subscription command for `names` and waits for one confirmation per name,
/// keeping the messages that arrive first.
fn send_subscription(
    connection: &mut redis::Connection,
    command: &str,
    names: &[Vec<u8>],
    pending: &mut VecDeque<Msg>,
) -> RedisResult<()> {
    let packed = redis::cmd(command).arg(names).get_packed_command();
    connection.send_packed_command(&packed)?;
    connection.set_read_timeout(Some(REPLY_TIMEOUT))?;
    let mut confirmed = 0;
    while confirmed < names.len() {
        let value = connection.recv_response()?;
        if let Value::ServerError(_) = value {
            return value.extract_error().map(|_| ());
        }
        if let Some(message) = Msg::from_value(&value) {
            pending.push_back(message);
        } else if confirmation(&value).is_some() {
            confirmed += 1;
        }
    }
    Ok(())
}

/// Unsubscribes a replaced connection from everything, keeping the messages it received
/// before the unsubscription took effect, then drops it. Failures only end the wait early.
fn retire(connection: &mut redis::Connection, pending: &mut VecDeque<Msg>) {
    let unsubscribe = redis::cmd("UNSUBSCRIBE").get_packed_command();
    let punsubscribe = redis::cmd("PUNSUBSCRIBE").get_packed_command();
    let sent = connection
        .send_packed_command(&unsubscribe)
        .and_then(|()| connection.send_packed_command(&punsubscribe))
        .and_then(|()| connection.set_read_timeout(Some(RETIRE_TIMEOUT)));
    if sent.is_err() {
        return;
    }
    let deadline = Instant::now() + RETIRE_TIMEOUT;
    while Instant::now() < deadline {
        let Ok(value) = connection.recv_response() else {
            return;
        };
        if let Some(message) = Msg::from_value(&value) {
            pending.push_back(message);
        } else if confirmation(&value) == Some((PushKind::PUnsubscribe, 0)) {
            // The server handles UNSUBSCRIBE first, so this is the last confirmation.
            return;
        }
    }
}

/// Reads a subscription confirmation: a RESP2 array `[kind, name, count]` or a RESP3
/// push of that kind with `[name, count]`.
fn confirmation(value: &Value) -> Option<(PushKind, i64)> {
    let (kind, count) = match value {
        Value::Push { kind, data } => (kind.clone(), data.get(1)?),
        Value::Array(items) => {
            let Value::BulkString(name) = items.first()? else {
                return None;
            };
            let kind = match name.to_ascii_lowercase().as_slice() {
                b"subscribe" => PushKind::Subscribe,
                b"psubscribe" => PushKind::PSubscribe,
                b"unsubscribe" => PushKind::Unsubscribe,
                b"punsubscribe" => PushKind::PUnsubscribe,
                _ => return None,
            };
            (kind, items.get(2)?)
        }
        _ => return None,
    };
    let subscription_kind = matches!(
        kind,
        PushKind::Subscribe | PushKind::PSubscribe | PushKind::Unsubscribe | PushKind::PUnsubscribe
    );
    match count {
        Value::Int(count) if subscription_kind => Some((kind, *count)),
        _ => None,
    }
}
