//! Reading Redis replies and errors, shared by the blocking and async connection types:
//! which replies reject the credentials, which commands open and end a transaction, and
//! the errors of a transaction whose connection closed after `MULTI`.
//!
//! Redis discards the queued commands when the connection closes. A connection type that
//! replaces the connection fails the transaction's later commands with
//! [`transaction_lost`] instead of sending them, and its `EXEC` or `DISCARD` with
//! [`transaction_aborted`].

use redis::{ErrorKind, RedisError, Value};

use crate::reply::{ErrorReply, classify_error_reply};

/// A command that opens or ends a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TransactionCommand {
    Multi,
    /// `EXEC` or `DISCARD`.
    End,
}

impl TransactionCommand {
    /// Reads a command name, in any letter case.
    pub(crate) fn from_name(name: &[u8]) -> Option<Self> {
        if name.eq_ignore_ascii_case(b"MULTI") {
            Some(TransactionCommand::Multi)
        } else if name.eq_ignore_ascii_case(b"EXEC") || name.eq_ignore_ascii_case(b"DISCARD") {
            Some(TransactionCommand::End)
        } else {
            None
        }
    }
}

/// Classifies a server error reply; anything else is [`ErrorReply::Other`].
pub(crate) fn classify_reply(reply: &Value) -> ErrorReply {
    match reply {
        Value::ServerError(error) => {
            classify_error_reply(error.code(), error.details().unwrap_or(""))
        }
        _ => ErrorReply::Other,
    }
}

/// Returns true for a `WRONGPASS` reply, in any of its forms.
pub(crate) fn is_rejection_reply(reply: &Value) -> bool {
    classify_reply(reply) == ErrorReply::CredentialsRejected
}

/// Classifies an error of the `redis` crate. It reports a rejected handshake `AUTH` or
/// `HELLO` as [`ErrorKind::AuthenticationFailed`], without the server's text.
pub(crate) fn classify_error(error: &RedisError) -> ErrorReply {
    if error.kind() == ErrorKind::AuthenticationFailed {
        return ErrorReply::CredentialsRejected;
    }
    match error.code() {
        Some(code) => classify_error_reply(code, error.detail().unwrap_or("")),
        None => ErrorReply::Other,
    }
}

/// Returns true when an error means that the server rejected the credentials.
pub(crate) fn is_rejection(error: &RedisError) -> bool {
    classify_error(error) == ErrorReply::CredentialsRejected
}

/// Converts the reply to an `AUTH` that was not `OK` into an error.
pub(crate) fn auth_reply_error(reply: Value) -> RedisError {
    match reply.extract_error() {
        Err(error) => error,
        Ok(other) => RedisError::from((
            ErrorKind::UnexpectedReturnType,
            "unexpected reply to AUTH",
            format!("{other:?}"),
        )),
    }
}

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
