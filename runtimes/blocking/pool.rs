//! An `r2d2` connection manager for [`EntraConnection`].

use std::time::Duration;

use redis::{ConnectionInfo, ConnectionLike, IntoConnectionInfo, RedisError, RedisResult};

use super::connection::EntraConnection;
use super::provider::EntraIdProvider;

/// Creates and checks pooled [`EntraConnection`]s for an `r2d2::Pool`.
///
/// A connection taken from the pool is checked with `PING` (r2d2's `test_on_check_out`,
/// on by default). The check goes through [`EntraConnection`], so an idle connection
/// sends `AUTH` with the newest token first, or is replaced when its token has expired.
/// A connection returned closed, or with an expired token, is dropped instead of being
/// kept.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use redis::Commands;
/// use redis_entraid::ClientSecretCredential;
/// use redis_entraid::blocking::{EntraConnectionManager, EntraIdProvider};
///
/// let credential = ClientSecretCredential::from_env(|name| std::env::var(name).ok())?;
/// let provider = EntraIdProvider::new(credential);
/// let manager = EntraConnectionManager::new(
///     "rediss://my-cache.redis.cache.windows.net:6380",
///     &provider,
/// )?;
/// let pool = r2d2::Pool::builder().max_size(8).build(manager)?;
/// let mut connection = pool.get()?;
/// let _: () = connection.set("greeting", "hello")?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct EntraConnectionManager {
    info: ConnectionInfo,
    provider: EntraIdProvider,
    connect_timeout: Option<Duration>,
    response_timeout: Option<Duration>,
}

impl EntraConnectionManager {
    /// Creates a manager for connections to `info` with credentials from `provider`.
    pub fn new(info: impl IntoConnectionInfo, provider: &EntraIdProvider) -> RedisResult<Self> {
        Ok(EntraConnectionManager {
            info: info.into_connection_info()?,
            provider: provider.clone(),
            connect_timeout: None,
            response_timeout: None,
        })
    }

    /// Limits each TCP connect and handshake to `timeout`.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Limits each wait for a reply to `timeout`; see
    /// [`EntraConnection::set_response_timeout`]. A zero `timeout` fails every connect.
    pub fn with_response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = Some(timeout);
        self
    }
}

impl r2d2::ManageConnection for EntraConnectionManager {
    type Connection = EntraConnection;
    type Error = RedisError;

    fn connect(&self) -> Result<EntraConnection, RedisError> {
        let mut connection = EntraConnection::open_with_timeout(
            self.info.clone(),
            &self.provider,
            self.connect_timeout,
        )?;
        if self.response_timeout.is_some() {
            connection.set_response_timeout(self.response_timeout)?;
        }
        Ok(connection)
    }

    fn is_valid(&self, connection: &mut EntraConnection) -> Result<(), RedisError> {
        redis::cmd("PING").query::<()>(connection)
    }

    /// A connection returned inside a transaction counts as broken: the next user would
    /// otherwise get `QUEUED` replies. Dropping it makes Redis discard the transaction.
    fn has_broken(&self, connection: &mut EntraConnection) -> bool {
        !connection.is_open() || connection.token_expired() || connection.in_transaction()
    }
}
