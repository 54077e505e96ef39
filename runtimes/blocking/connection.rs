//! A synchronous Redis connection that authenticates with the provider's credentials.

use std::time::Duration;

use log::debug;
use redis::{
    ConnectionInfo, ConnectionLike, ErrorKind, IntoConnectionInfo, RedisError, RedisResult, Value,
};

use super::provider::EntraIdProvider;
use crate::{Credentials, Error};

/// A Redis connection that authenticates with Entra ID credentials and re-authenticates
/// when they change.
///
/// Use it wherever the `redis` crate takes a [`ConnectionLike`]: commands, pipelines and
/// transactions. Before each command it compares the provider's generation with the one
/// it authenticated with (one atomic load); after a renewal it sends
/// `AUTH <username> <token>` first. It never re-authenticates between `MULTI` and
/// `EXEC`/`DISCARD`, and it never sends an expired token. A connection the server closed
/// is replaced, with the current credentials, before the next command.
pub struct EntraConnection {
    info: ConnectionInfo,
    provider: EntraIdProvider,
    connection: Option<redis::Connection>,
    generation: u64,
    in_transaction: bool,
    authentications: u64,
    connect_timeout: Option<Duration>,
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
            in_transaction: false,
            authentications: 0,
            connect_timeout,
        };
        connection.reconnect()?;
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

    fn reconnect(&mut self) -> RedisResult<()> {
        self.connection = None;
        self.in_transaction = false;
        let (generation, credentials) = self
            .provider
            .snapshot_timeout(self.provider.first_token_timeout());
        let credentials = credentials.map_err(to_redis_error)?;
        let settings = self
            .info
            .redis_settings()
            .clone()
            .set_username(credentials.username())
            .set_password(credentials.password());
        let info = self.info.clone().set_redis_settings(settings);
        let client = redis::Client::open(info)?;
        let connection = match self.connect_timeout {
            Some(timeout) => client.get_connection_with_timeout(timeout)?,
            None => client.get_connection()?,
        };
        debug!("connected to Redis as {}", credentials.username());
        self.connection = Some(connection);
        self.generation = generation;
        self.authentications += 1;
        Ok(())
    }

    /// Brings the connection up to date before a command: reconnects a closed one and
    /// re-authenticates after a renewal, unless a transaction is open.
    fn prepare(&mut self) -> RedisResult<&mut redis::Connection> {
        let open = self.connection.as_ref().is_some_and(|c| c.is_open());
        if !open && !self.in_transaction {
            self.reconnect()?;
        } else if !self.in_transaction && self.provider.generation() != self.generation {
            self.reauthenticate()?;
        }
        self.connection
            .as_mut()
            .ok_or_else(|| RedisError::from((ErrorKind::Io, "connection to Redis was closed")))
    }

    fn reauthenticate(&mut self) -> RedisResult<()> {
        let (generation, credentials) = self.provider.snapshot_timeout(Duration::ZERO);
        let credentials = match credentials {
            Ok(credentials) => credentials,
            // The token expired and no new one has arrived: sending it would be useless,
            // so the connection keeps its old authentication until a new token arrives.
            Err(Error::TokenExpired { .. }) => return Ok(()),
            Err(error) => return Err(to_redis_error(error)),
        };
        let Some(connection) = self.connection.as_mut() else {
            return self.reconnect();
        };
        match send_auth(connection, &credentials) {
            Ok(()) => {
                debug!("re-authenticated as {}", credentials.username());
                self.generation = generation;
                self.authentications += 1;
                Ok(())
            }
            Err(error) => {
                if error.is_unrecoverable_error() || error.is_io_error() {
                    self.connection = None;
                }
                Err(error)
            }
        }
    }

    fn track_transaction(&mut self, packed: &[u8]) {
        match command_name(packed) {
            Some(name) if name.eq_ignore_ascii_case(b"MULTI") => self.in_transaction = true,
            Some(name)
                if name.eq_ignore_ascii_case(b"EXEC") || name.eq_ignore_ascii_case(b"DISCARD") =>
            {
                self.in_transaction = false
            }
            _ => {}
        }
    }

    fn after_command<T>(&mut self, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(error) = &result
            && (error.is_unrecoverable_error() || error.is_connection_dropped())
        {
            // Replaced, with the current credentials, before the next command.
            self.connection = None;
            self.in_transaction = false;
        }
        result
    }
}

fn send_auth(connection: &mut redis::Connection, credentials: &Credentials) -> RedisResult<()> {
    redis::cmd("AUTH")
        .arg(credentials.username())
        .arg(credentials.password())
        .query::<()>(connection)
}

/// Reads the command name from a RESP-encoded command (`*N\r\n$len\r\nNAME\r\n…`).
fn command_name(packed: &[u8]) -> Option<&[u8]> {
    let rest = packed.strip_prefix(b"*")?;
    let rest = &rest[rest.iter().position(|&b| b == b'\n')? + 1..];
    let rest = rest.strip_prefix(b"$")?;
    let line_end = rest.iter().position(|&b| b == b'\r')?;
    let len: usize = std::str::from_utf8(&rest[..line_end]).ok()?.parse().ok()?;
    rest.get(line_end + 2..line_end + 2 + len)
}

fn to_redis_error(error: Error) -> RedisError {
    let kind = match error {
        Error::Config { .. } => ErrorKind::InvalidClientConfig,
        _ => ErrorKind::AuthenticationFailed,
    };
    RedisError::from((kind, "no Entra ID credentials", error.to_string()))
}

impl ConnectionLike for EntraConnection {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        let result = self.prepare().and_then(|c| c.req_packed_command(cmd));
        if result.is_ok() {
            self.track_transaction(cmd);
        }
        self.after_command(result)
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let result = self
            .prepare()
            .and_then(|c| c.req_packed_commands(cmd, offset, count));
        self.after_command(result)
    }

    fn get_db(&self) -> i64 {
        self.info.redis_settings().db()
    }

    fn check_connection(&mut self) -> bool {
        self.prepare().is_ok_and(|c| c.check_connection())
    }

    fn is_open(&self) -> bool {
        self.connection.as_ref().is_some_and(|c| c.is_open())
    }
}

#[cfg(test)]
mod tests {
    use super::command_name;

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
}
