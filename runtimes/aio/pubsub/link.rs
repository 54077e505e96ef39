//! One subscribed connection: a `redis::aio::PubSub` for RESP2, or a
//! `MultiplexedConnection` with a push sender for RESP3.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{Either, select};
use futures_util::{FutureExt, StreamExt};
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{
    AsyncConnectionConfig, ConnectionInfo, Msg, ProtocolVersion, PushInfo, PushKind, RedisError,
    RedisResult, Value,
};

use super::queue::Queue;
use crate::Credentials;
use crate::aio::Runtime;

/// How long opening a connection, handshake included, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A subscription command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    Subscribe,
    PSubscribe,
    Unsubscribe,
    PUnsubscribe,
}

impl Change {
    pub(super) fn is_pattern(self) -> bool {
        matches!(self, Change::PSubscribe | Change::PUnsubscribe)
    }

    pub(super) fn is_unsubscribe(self) -> bool {
        matches!(self, Change::Unsubscribe | Change::PUnsubscribe)
    }
}

/// A connection and the generation of the credentials that last authenticated it.
pub(super) struct Link {
    connection: Connection,
    pub(super) generation: u64,
}

enum Connection {
    /// RESP2: the `redis` crate's dedicated pub/sub connection. It has no way to send
    /// `AUTH`, which Redis rejects in RESP2 subscribe mode anyway.
    Resp2 {
        sink: PubSubSink,
        stream: PubSubStream,
    },
    /// RESP3: messages arrive as pushes, and the connection accepts other commands,
    /// `AUTH` included, while subscribed.
    Resp3 {
        connection: MultiplexedConnection,
        messages: Arc<Queue<Msg>>,
    },
}

impl Link {
    /// Connects to `info` and authenticates with `credentials` in the handshake.
    pub(super) async fn open<R: Runtime>(
        info: &ConnectionInfo,
        credentials: &Credentials,
        generation: u64,
        reply_timeout: Duration,
    ) -> RedisResult<Self> {
        let settings = info
            .redis_settings()
            .clone()
            .set_username(credentials.username())
            .set_password(credentials.password());
        let protocol = settings.protocol();
        // NOTE: the tests cover plain TCP only; `rediss://` takes the same calls, with the
        // redis crate's TLS.
        let client = redis::Client::open(info.clone().set_redis_settings(settings))?;
        let connection = if protocol == ProtocolVersion::RESP2 {
            let pubsub = within::<R, _>(CONNECT_TIMEOUT, client.get_async_pubsub()).await??;
            let (sink, stream) = pubsub.split();
            Connection::Resp2 { sink, stream }
        } else {
            let messages = Queue::new();
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(reply_timeout))
                .set_push_sender(push_sender(Arc::clone(&messages)));
            let connection = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            Connection::Resp3 {
                connection,
                messages,
            }
        };
        Ok(Link {
            connection,
            generation,
        })
    }

    /// Polls for the next message; `Ready(None)` once the connection has closed and its
    /// messages are all taken.
    pub(super) fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Msg>> {
        match &mut self.connection {
            Connection::Resp2 { stream, .. } => stream.poll_next_unpin(cx),
            Connection::Resp3 { messages, .. } => messages.poll_pop(cx),
        }
    }

    /// Takes a message that has already arrived, without waiting.
    pub(super) fn try_message(&mut self) -> Option<Msg> {
        match &mut self.connection {
            Connection::Resp2 { stream, .. } => stream.next().now_or_never().flatten(),
            Connection::Resp3 { messages, .. } => messages.try_pop(),
        }
    }

    /// Sends a subscription command for `names` and waits up to `timeout` for every
    /// confirmation.
    ///
    /// Both connection types hand each message that arrives before a confirmation to
    /// [`poll_message`](Self::poll_message) before they complete the command, so once this
    /// returns, [`try_message`](Self::try_message) finds every message the server sent
    /// ahead of the last confirmation.
    pub(super) async fn send<R: Runtime>(
        &mut self,
        change: Change,
        names: &[Vec<u8>],
        timeout: Duration,
    ) -> RedisResult<()> {
        match &mut self.connection {
            Connection::Resp2 { sink, .. } => {
                let sent = match change {
                    Change::Subscribe => sink.subscribe(names).boxed(),
                    Change::PSubscribe => sink.psubscribe(names).boxed(),
                    Change::Unsubscribe => sink.unsubscribe(names).boxed(),
                    Change::PUnsubscribe => sink.punsubscribe(names).boxed(),
                };
                within::<R, _>(timeout, sent).await?
            }
            Connection::Resp3 { connection, .. } => {
                let sent = match change {
                    Change::Subscribe => connection.subscribe(names).boxed(),
                    Change::PSubscribe => connection.psubscribe(names).boxed(),
                    Change::Unsubscribe => connection.unsubscribe(names).boxed(),
                    Change::PUnsubscribe => connection.punsubscribe(names).boxed(),
                };
                within::<R, _>(timeout, sent).await?
            }
        }
    }

    /// Sends `AUTH` on a RESP3 connection and waits up to `timeout` for its reply. Pushes
    /// that arrive before the reply go to the message queue, as always on a
    /// `MultiplexedConnection`. Returns `None` for a RESP2 connection, which has no way
    /// to send `AUTH`.
    pub(super) async fn authenticate<R: Runtime>(
        &mut self,
        credentials: &Credentials,
        timeout: Duration,
    ) -> Option<RedisResult<()>> {
        let Connection::Resp3 { connection, .. } = &mut self.connection else {
            return None;
        };
        let auth = redis::cmd("AUTH")
            .arg(credentials.username())
            .arg(credentials.password())
            .clone();
        let reply = within::<R, _>(timeout, connection.send_packed_command(&auth)).await;
        Some(reply.and_then(|reply| match reply?.extract_error()? {
            Value::Okay => Ok(()),
            other => Err(RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "unexpected reply to AUTH",
                format!("{other:?}"),
            ))),
        }))
    }
}

/// Builds the push sender of a RESP3 connection: it queues messages, ignores
/// subscription confirmations and closes the queue when the connection drops.
fn push_sender(messages: Arc<Queue<Msg>>) -> impl Fn(PushInfo) -> Result<(), ()> + Send + Sync {
    move |push: PushInfo| {
        if push.kind == PushKind::Disconnection {
            messages.close();
        } else if let Some(message) = Msg::from_push_info(push) {
            messages.push(message);
        }
        Ok(())
    }
}

/// Awaits `future` for at most `limit`; a timeout is an I/O error, like a read timeout.
async fn within<R: Runtime, T>(limit: Duration, future: impl Future<Output = T>) -> RedisResult<T> {
    match select(pin!(future), pin!(R::sleep(limit))).await {
        Either::Left((output, _)) => Ok(output),
        Either::Right(_) => Err(RedisError::from(std::io::Error::from(
            std::io::ErrorKind::TimedOut,
        ))),
    }
}
