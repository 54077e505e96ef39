//! The steps from a host name to an authenticated Redis connection, each timed and
//! explained on failure.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use redis::{ConnectionAddr, IntoConnectionInfo, Value};
use redis_entraid::blocking::{EntraConnection, EntraIdProvider};

use crate::explain::{self, RedisStep};
use crate::failure::{Category, Failure};

/// The Redis server to connect to.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub connect_timeout: Duration,
}

impl Target {
    /// Describes the target, such as `my-cache.redis.cache.windows.net:6380 over TLS`.
    pub fn describe(&self) -> String {
        let transport = if self.tls { "over TLS" } else { "without TLS" };
        format!("{}:{} {transport}", self.host, self.port)
    }

    /// Returns the options that select this target, such as `--host h --port 6380`.
    pub fn command_line(&self) -> String {
        let tls = if self.tls { "" } else { " --no-tls" };
        format!("--host {} --port {}{tls}", self.host, self.port)
    }
}

/// A step's result with its duration.
pub struct Timed<T> {
    pub value: T,
    pub elapsed: Duration,
}

fn timed<T, E>(step: impl FnOnce() -> Result<T, E>) -> Result<Timed<T>, E> {
    let started = Instant::now();
    let value = step()?;
    Ok(Timed {
        value,
        elapsed: started.elapsed(),
    })
}

/// Resolves the host name to socket addresses.
pub fn resolve(target: &Target) -> Result<Timed<Vec<SocketAddr>>, Failure> {
    timed(|| {
        let addresses: Vec<SocketAddr> = (target.host.as_str(), target.port)
            .to_socket_addrs()
            .map_err(|error| dns_failure(&target.host, &error.to_string()))?
            .collect();
        if addresses.is_empty() {
            return Err(dns_failure(&target.host, "no addresses"));
        }
        Ok(addresses)
    })
}

fn dns_failure(host: &str, detail: &str) -> Failure {
    Failure::new(
        Category::Redis,
        format!("the host name `{host}` could not be resolved (DNS)"),
        "check the spelling of --host: Azure Cache for Redis names end in \
         .redis.cache.windows.net and Azure Managed Redis names in .redis.azure.net; a cache \
         behind a private endpoint resolves only inside its virtual network",
    )
    .with_detail(detail.to_owned())
}

/// Opens a TCP connection to the first address that accepts one, to tell network
/// problems apart from TLS and authentication problems. The connection is closed again.
pub fn tcp_connect(
    target: &Target,
    addresses: &[SocketAddr],
) -> Result<Timed<SocketAddr>, Failure> {
    timed(|| {
        let mut last_error = None;
        for address in addresses {
            match TcpStream::connect_timeout(address, target.connect_timeout) {
                Ok(_) => return Ok(*address),
                Err(error) => last_error = Some(format!("{address}: {error}")),
            }
        }
        let fix = if target.tls {
            "check --port (6380 for Azure Cache for Redis, 10000 for Azure Managed Redis) and \
             that the cache's firewall or private endpoint allows this machine"
        } else {
            "check that redis-server is running and listens on this address and port"
        };
        Err(Failure::new(
            Category::Redis,
            format!("no TCP connection to {}", target.describe()),
            fix,
        )
        .with_detail(last_error.unwrap_or_default()))
    })
}

/// Connects with the provider's credentials: TCP, TLS unless disabled, and `AUTH` in the
/// handshake.
pub fn open(
    target: &Target,
    provider: &EntraIdProvider,
    username: &str,
) -> Result<Timed<EntraConnection>, Failure> {
    let address = if target.tls {
        ConnectionAddr::TcpTls {
            host: target.host.clone(),
            port: target.port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(target.host.clone(), target.port)
    };
    timed(|| {
        let info = address.into_connection_info().and_then(|info| {
            let mut connection =
                EntraConnection::open_with_timeout(info, provider, Some(target.connect_timeout))?;
            // A server that stops replying fails the command instead of blocking it.
            let reply_timeout = target.connect_timeout.max(Duration::from_millis(1));
            connection.set_response_timeout(Some(reply_timeout))?;
            Ok(connection)
        });
        info.map_err(|error| explain::redis_error(RedisStep::Open, &error, username, target.tls))
    })
}

/// Runs a command without arguments, such as `PING`.
pub fn command(
    connection: &mut EntraConnection,
    name: &'static str,
    username: &str,
    tls: bool,
) -> Result<Timed<Value>, Failure> {
    timed(|| {
        redis::cmd(name)
            .query::<Value>(connection)
            .map_err(|error| explain::redis_error(RedisStep::Command(name), &error, username, tls))
    })
}

/// Formats a simple reply for the terminal: `PONG`, `42`.
pub fn reply_text(value: &Value) -> String {
    match value {
        Value::SimpleString(text) => text.clone(),
        Value::Okay => "OK".to_owned(),
        Value::Int(n) => n.to_string(),
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        other => format!("{other:?}"),
    }
}
