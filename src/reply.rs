//! Classifies Redis error replies by what they mean for a connection's authentication.

/// The meaning of a Redis error reply for the credentials a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorReply {
    /// The server rejected the username and token (`WRONGPASS` in any of its forms). The
    /// command did not run, and a newer token may succeed.
    CredentialsRejected,
    /// `AUTH` is not allowed in the connection's current state, such as RESP2 subscribe
    /// mode. The token may be fine: the connection must be replaced instead.
    AuthNotAllowedHere,
    /// Any other error, `NOPERM` included: an ordinary command error.
    Other,
}

/// Classifies the error reply `code detail` (the reply line without its `-`).
///
/// Servers report rejected credentials as `WRONGPASS invalid username-password pair or
/// user is disabled.` (Redis 6 and later), `ERR WRONGPASS invalid username-password pair`
/// and `ERR invalid username-password pair` (older servers and proxies). RESP2 subscribe
/// mode rejects `AUTH` with `ERR Can't execute 'auth': only (P|S)SUBSCRIBE / … are
/// allowed in this context` (Redis 7) or `ERR only (P)SUBSCRIBE / (P)UNSUBSCRIBE / PING
/// / QUIT allowed in this context` (Redis 6).
pub(crate) fn classify_error_reply(code: &str, detail: &str) -> ErrorReply {
    if code.eq_ignore_ascii_case("WRONGPASS") {
        return ErrorReply::CredentialsRejected;
    }
    if !code.eq_ignore_ascii_case("ERR") {
        return ErrorReply::Other;
    }
    let detail = detail.to_ascii_lowercase();
    if detail.starts_with("wrongpass") || detail.contains("invalid username-password pair") {
        ErrorReply::CredentialsRejected
    } else if detail.contains("allowed in this context") {
        ErrorReply::AuthNotAllowedHere
    } else {
        ErrorReply::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits a reply line as the `redis` crate does: the code, then the detail.
    fn classify(line: &str) -> ErrorReply {
        let (code, detail) = line.split_once(' ').unwrap_or((line, ""));
        classify_error_reply(code, detail)
    }

    #[test]
    fn wrongpass_forms_reject_credentials() {
        for line in [
            "WRONGPASS invalid username-password pair or user is disabled.",
            "ERR WRONGPASS invalid username-password pair",
            "ERR invalid username-password pair",
            "wrongpass invalid username-password pair",
        ] {
            assert_eq!(classify(line), ErrorReply::CredentialsRejected, "{line}");
        }
    }

    #[test]
    fn subscribe_context_needs_new_connection() {
        for line in [
            "ERR Can't execute 'auth': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT \
             / RESET are allowed in this context",
            "ERR only (P)SUBSCRIBE / (P)UNSUBSCRIBE / PING / QUIT allowed in this context",
        ] {
            assert_eq!(classify(line), ErrorReply::AuthNotAllowedHere, "{line}");
        }
    }

    #[test]
    fn noperm_and_others_are_ordinary_errors() {
        for line in [
            "NOPERM User 11111111-2222-3333-4444-555555555555 has no permissions to run the \
             'set' command",
            "ERR unknown command 'FOO'",
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "NOAUTH Authentication required.",
            "ERR",
        ] {
            assert_eq!(classify(line), ErrorReply::Other, "{line}");
        }
    }
}
