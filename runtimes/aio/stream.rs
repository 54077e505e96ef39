//! Credential streams, and the `redis` crate's `StreamingCredentialsProvider` on top.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use futures_util::task::AtomicWaker;
use futures_util::{Stream, StreamExt};
use redis::{BasicAuth, ErrorKind, RedisError, RedisResult, StreamingCredentialsProvider};

use super::Runtime;
use super::provider::EntraIdProvider;
use crate::{Credentials, Error};

/// The current credentials, then each change, from
/// [`EntraIdProvider::credentials_stream`].
///
/// The first item waits up to the provider's first-token timeout for credentials that
/// have not expired. It is an error if none arrive by then, or at once if the first token
/// failed for good. Either way, the items after it are changes only. Each later item is
/// the newest credentials at the time the stream is polled, so a stream that is polled
/// rarely, or never, skips the values in between and holds nothing up: the renewal task
/// only bumps a counter and wakes the stream. Credentials that have already expired are
/// skipped. The stream ends when the provider shuts down.
///
/// A stream keeps the provider's renewal running, like a clone of the provider does.
pub struct CredentialsStream {
    inner: Pin<Box<dyn Stream<Item = Result<Credentials, Error>> + Send>>,
}

impl CredentialsStream {
    pub(super) fn new<R: Runtime>(provider: EntraIdProvider<R>) -> Self {
        let cursor = Cursor {
            provider,
            seen: None,
            watcher: None,
        };
        let stream = futures_util::stream::unfold(cursor, |mut cursor| async move {
            let item = cursor.next().await?;
            Some((item, cursor))
        });
        CredentialsStream {
            inner: Box::pin(stream),
        }
    }
}

impl Stream for CredentialsStream {
    type Item = Result<Credentials, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl fmt::Debug for CredentialsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialsStream").finish_non_exhaustive()
    }
}

/// Waits for credentials as a stream's first item does, and returns them with their
/// generation.
pub(super) async fn first_credentials<R: Runtime>(
    provider: &EntraIdProvider<R>,
) -> (u64, Result<Credentials, Error>) {
    let mut cursor = Cursor {
        provider: provider.clone(),
        seen: None,
        watcher: None,
    };
    let outcome = cursor.first().await;
    // `first` sets the generation on every path.
    (cursor.seen.unwrap_or_default(), outcome)
}

/// Converts credentials to the `redis` crate's type.
pub(super) fn to_basic_auth(credentials: &Credentials) -> BasicAuth {
    BasicAuth::new(
        credentials.username().to_owned(),
        credentials.password().to_owned(),
    )
}

/// Position of a stream: the generation it last returned, `None` before the first item.
struct Cursor<R> {
    provider: EntraIdProvider<R>,
    seen: Option<u64>,
    watcher: Option<Arc<AtomicWaker>>,
}

impl<R: Runtime> Cursor<R> {
    async fn next(&mut self) -> Option<Result<Credentials, Error>> {
        match self.seen {
            None => Some(self.first().await),
            Some(seen) => self.change(seen).await,
        }
    }

    /// Waits for credentials that have not expired. While the token is expired a refresh
    /// is under way, so this waits for it rather than failing (and never hands out the
    /// expired token).
    async fn first(&mut self) -> Result<Credentials, Error> {
        let started = Instant::now();
        let timeout = self.provider.first_token_timeout();
        let shared = self.provider.shared();
        let found =
            shared
                .wait_until::<R, _>(&mut self.watcher, Some(timeout), |inner, generation| {
                    match inner.manager.credentials(SystemTime::now()) {
                        Ok(credentials) => Some(Ok((generation, credentials.clone()))),
                        Err(_) if inner.shutdown => Some(Err((generation, Error::ShutDown))),
                        Err(Error::NotAcquired { .. } | Error::TokenExpired { .. }) => None,
                        Err(error) => Some(Err((generation, error))),
                    }
                })
                .await;
        let (generation, outcome) = match found {
            Some(Ok((generation, credentials))) => (generation, Ok(credentials)),
            Some(Err((generation, error))) => (generation, Err(error)),
            None => {
                let inner = shared.lock();
                let error = match inner.manager.credentials(SystemTime::now()) {
                    Err(expired @ Error::TokenExpired { .. }) => expired,
                    _ => Error::Timeout {
                        waited: started.elapsed(),
                        last_error: inner.manager.last_error().cloned().map(Box::new),
                    },
                };
                (shared.generation(), Err(error))
            }
        };
        self.seen = Some(generation);
        outcome
    }

    /// Waits for credentials newer than generation `seen`; `None` once shut down.
    async fn change(&mut self, mut seen: u64) -> Option<Result<Credentials, Error>> {
        let shared = self.provider.shared();
        let (generation, credentials) = shared
            .wait_until::<R, _>(&mut self.watcher, None, |inner, generation| {
                if generation != seen {
                    match inner.manager.credentials(SystemTime::now()) {
                        Ok(credentials) => return Some(Some((generation, credentials.clone()))),
                        // The newest credentials expired before this stream looked; the
                        // next ones will do.
                        Err(_) => seen = generation,
                    }
                }
                inner.shutdown.then_some(None)
            })
            .await
            .flatten()?;
        self.seen = Some(generation);
        Some(Ok(credentials))
    }
}

/// Lets `MultiplexedConnection`, `ConnectionManager` and the async cluster client of the
/// `redis` crate take their credentials from this provider.
///
/// Each subscription is a [`CredentialsStream`]. A connection authenticates its
/// handshake with the first item, and its re-authentication task, which subscribes
/// separately, sends `AUTH` for the first item and for each change. So a new connection
/// sends one `AUTH` with the credentials of its handshake, then one per renewal. A
/// `ConnectionManager` subscribes again for each new connection, so a reconnect always
/// uses the current token.
impl<R: Runtime> StreamingCredentialsProvider for EntraIdProvider<R> {
    fn subscribe(&self) -> Pin<Box<dyn Stream<Item = RedisResult<BasicAuth>> + Send + 'static>> {
        let stream = self.credentials_stream().map(|item| {
            item.map(|credentials| to_basic_auth(&credentials))
                .map_err(to_redis_error)
        });
        Box::pin(stream)
    }
}

/// Maps a failure to hand out credentials to a `redis` error.
///
/// A transient failure (no token yet, expired token, endpoint unreachable) becomes an
/// I/O error. `ConnectionManager` (redis 1.8.2) tries a new connection after a failed one
/// only when the error was an I/O error. With any other kind it returns the same error
/// for every later command.
pub(super) fn to_redis_error(error: Error) -> RedisError {
    let kind = match error {
        _ if error.is_transient() => ErrorKind::Io,
        Error::Config { .. } => ErrorKind::InvalidClientConfig,
        _ => ErrorKind::AuthenticationFailed,
    };
    RedisError::from((kind, "no Entra ID credentials", error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors_let_connection_manager_retry() {
        let timeout = Error::Timeout {
            waited: std::time::Duration::from_secs(30),
            last_error: None,
        };
        let error = to_redis_error(timeout);
        assert!(error.is_io_error(), "{error}");
        assert!(
            error.to_string().contains("no token after waiting 30.0 s"),
            "{error}"
        );
    }

    #[test]
    fn permanent_errors_are_authentication_failures() {
        let error = to_redis_error(Error::ShutDown);
        assert_eq!(error.kind(), ErrorKind::AuthenticationFailed);
        let config = Error::Config {
            setting: "AZURE_TENANT_ID".to_owned(),
            reason: "missing".to_owned(),
        };
        assert_eq!(
            to_redis_error(config).kind(),
            ErrorKind::InvalidClientConfig
        );
    }
}
