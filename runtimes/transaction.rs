//! The errors of a transaction whose connection closed after `MULTI`, shared by the
//! blocking and async connection types.
//!
//! Redis discards the queued commands when the connection closes. A connection type that
//! replaces the connection fails the transaction's later commands with
//! [`transaction_lost`] instead of sending them, and its `EXEC` or `DISCARD` with
//! [`transaction_aborted`].

use redis::{ErrorKind, RedisError};

/// Returns the error for a command other than `EXEC` or `DISCARD` sent after the
/// connection closed inside a transaction.
pub(crate) fn transaction_lost() -> RedisError {
    RedisError::from((
        ErrorKind::Io,
        "transaction lost",
        "the connection closed after MULTI; send EXEC or DISCARD to end the transaction".to_owned(),
    ))
}

/// Returns the error for the `EXEC` or `DISCARD` that ends a lost transaction.
pub(crate) fn transaction_aborted() -> RedisError {
    RedisError::from((
        ErrorKind::Io,
        "transaction aborted",
        "the connection closed after MULTI, so none of the queued commands ran".to_owned(),
    ))
}
