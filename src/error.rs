//! The crate's error type.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Everything that can go wrong while obtaining or using a token.
///
/// Messages name the failing value and the fix. They never contain a token, a secret or
/// a raw response body.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A credential cannot work in this environment (its variables are not set, its
    /// endpoint does not exist, its program is not installed). A chain of credentials
    /// moves on to the next one only after this error.
    CredentialUnavailable {
        /// The credential, such as `managed identity`.
        credential: String,
        /// The reason it is unavailable and how to make it available.
        reason: String,
    },
    /// A chain of credentials stopped at a credential that failed with an error other
    /// than [`Error::CredentialUnavailable`].
    ChainFailed {
        /// The credential that failed, such as `workload identity`.
        credential: String,
        /// Its failure, which decides [`Error::is_transient`].
        error: Box<Error>,
        /// The [`Error::CredentialUnavailable`] errors of the credentials tried before it,
        /// in chain order.
        unavailable: Vec<Error>,
    },
    /// A configuration value is missing or invalid.
    Config {
        /// The setting, for example `AZURE_TENANT_ID` or `authority host`.
        setting: String,
        /// The problem and how to fix it.
        reason: String,
    },
    /// The token request could not be sent, or its response could not be read.
    Transport {
        /// The failure, without secrets.
        reason: String,
        /// Whether the request timed out.
        timed_out: bool,
    },
    /// A local operation of a token exchange failed: reading a file or running a program.
    Io {
        /// The operation, such as `read /var/run/secrets/token`.
        operation: String,
        /// The kind of failure, such as `NotFound`.
        kind: std::io::ErrorKind,
        /// The operating system's message.
        reason: String,
    },
    /// The identity endpoint returned an error.
    IdentityEndpoint(EndpointError),
    /// The identity endpoint returned a body this crate cannot read.
    InvalidResponse {
        /// HTTP status of the response.
        status: u16,
        /// The problem with the body (the body itself is never included).
        reason: String,
    },
    /// The access token cannot be used for Redis.
    InvalidToken(TokenError),
    /// The last token expired and no new one could be obtained yet.
    TokenExpired {
        /// When the last token expired.
        expired_at: SystemTime,
        /// The most recent failure of the identity endpoint, if any.
        last_error: Option<Box<Error>>,
    },
    /// No token has been acquired yet.
    NotAcquired {
        /// The most recent failure of the identity endpoint, if any.
        last_error: Option<Box<Error>>,
    },
    /// No token arrived within the time the caller was willing to wait.
    Timeout {
        /// How long the caller waited.
        waited: Duration,
        /// The most recent failure of the identity endpoint, if any.
        last_error: Option<Box<Error>>,
    },
    /// The provider was shut down, so no new token will arrive.
    ShutDown,
}

impl Error {
    /// Returns true when retrying the same request later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transport { .. } | Error::InvalidResponse { .. } | Error::Io { .. } => true,
            Error::IdentityEndpoint(e) => e.transient,
            Error::ChainFailed { error, .. } => error.is_transient(),
            Error::TokenExpired { .. } | Error::NotAcquired { .. } | Error::Timeout { .. } => true,
            Error::Config { .. }
            | Error::CredentialUnavailable { .. }
            | Error::InvalidToken(_)
            | Error::ShutDown => false,
        }
    }

    /// Returns the delay the identity endpoint asked for with `Retry-After`, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::IdentityEndpoint(e) => e.retry_after,
            Error::ChainFailed { error, .. } => error.retry_after(),
            _ => None,
        }
    }

    pub(crate) fn config(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            setting: setting.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::CredentialUnavailable { credential, reason } => {
                write!(f, "{credential} credential unavailable: {reason}")
            }
            Error::ChainFailed {
                credential,
                error,
                unavailable,
            } => {
                write!(f, "{credential} credential failed: {error}")?;
                write_unavailable(f, unavailable)
            }
            Error::Config { setting, reason } => write!(f, "invalid {setting}: {reason}"),
            Error::Transport { reason, timed_out } => {
                if *timed_out {
                    write!(f, "token request timed out: {reason}")
                } else {
                    write!(f, "token request failed: {reason}")
                }
            }
            Error::Io {
                operation, reason, ..
            } => write!(f, "cannot {operation}: {reason}"),
            Error::IdentityEndpoint(e) => e.fmt(f),
            Error::InvalidResponse { status, reason } => {
                write!(f, "invalid token response (HTTP {status}): {reason}")
            }
            Error::InvalidToken(e) => e.fmt(f),
            Error::TokenExpired {
                expired_at,
                last_error,
            } => {
                write!(
                    f,
                    "token expired at {} (Unix seconds) and the identity endpoint has not \
                     issued a new one yet; retries continue",
                    unix_seconds(*expired_at)
                )?;
                write_last_error(f, last_error)
            }
            Error::NotAcquired { last_error } => {
                f.write_str("no token has been acquired yet")?;
                write_last_error(f, last_error)
            }
            Error::Timeout { waited, last_error } => {
                write!(f, "no token after waiting {:.1} s", waited.as_secs_f64())?;
                write_last_error(f, last_error)
            }
            Error::ShutDown => f.write_str("token provider was shut down"),
        }
    }
}

fn write_last_error(f: &mut fmt::Formatter<'_>, last: &Option<Box<Error>>) -> fmt::Result {
    match last {
        Some(e) => write!(f, "; last error: {e}"),
        None => Ok(()),
    }
}

fn write_unavailable(f: &mut fmt::Formatter<'_>, unavailable: &[Error]) -> fmt::Result {
    for (i, error) in unavailable.iter().enumerate() {
        let separator = if i == 0 { " (tried before: " } else { "; " };
        write!(f, "{separator}{error}")?;
    }
    if !unavailable.is_empty() {
        f.write_str(")")?;
    }
    Ok(())
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl std::error::Error for Error {}

/// An error response of an identity endpoint, as far as it is safe to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointError {
    /// HTTP status.
    pub status: u16,
    /// The OAuth `error` code, such as `invalid_client`.
    pub error: Option<String>,
    /// The first line of `error_description`, without trace and correlation lines.
    pub description: Option<String>,
    /// The AADSTS codes from `error_codes`.
    pub codes: Vec<u64>,
    /// The `correlation_id`, which Microsoft support asks for.
    pub correlation_id: Option<String>,
    /// The delay from a `Retry-After` header.
    pub retry_after: Option<Duration>,
    /// Whether retrying the same request later may succeed.
    pub transient: bool,
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "identity endpoint returned HTTP {}", self.status)?;
        if let Some(error) = &self.error {
            write!(f, " {error}")?;
        }
        if !self.codes.is_empty() {
            let codes: Vec<String> = self.codes.iter().map(|c| format!("AADSTS{c}")).collect();
            write!(f, " ({})", codes.join(", "))?;
        }
        if let Some(description) = &self.description {
            write!(f, ": {description}")?;
        }
        if let Some(hint) = self.codes.iter().find_map(|c| hint_for_code(*c)) {
            write!(f, "; {hint}")?;
        }
        if let Some(id) = &self.correlation_id {
            write!(f, " (correlation id {id})")?;
        }
        Ok(())
    }
}

/// Returns the fix for the AADSTS codes that users of a service principal meet most.
fn hint_for_code(code: u64) -> Option<&'static str> {
    Some(match code {
        7000215 => "check AZURE_CLIENT_SECRET: it must be the secret's value, not its secret id",
        7000222 => "the client secret has expired: create a new one for the app registration",
        700016 => "check AZURE_CLIENT_ID and AZURE_TENANT_ID: the app is not in this tenant",
        90002 => "check AZURE_TENANT_ID and AZURE_AUTHORITY_HOST: the tenant is not in this cloud",
        700024 => {
            "the client assertion has expired or is not valid yet: check the clock, and for \
             workload identity that the federated token file is being renewed"
        }
        70011 | 700022 | 700023 | 28002 => {
            "check the scope: Azure Redis expects https://redis.azure.com/.default"
        }
        _ => return None,
    })
}

/// The reason an access token cannot be used as a Redis password.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// The token does not have three dot-separated segments.
    NotJwt {
        /// The number of segments found.
        segments: usize,
    },
    /// The payload segment is not valid base64url.
    InvalidBase64,
    /// The payload is not a JSON object.
    InvalidJson,
    /// A claim has the wrong JSON type.
    InvalidClaim {
        /// The claim name.
        claim: &'static str,
    },
    /// The token has no `oid` claim, so the Redis username is unknown.
    MissingObjectId,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::NotJwt { segments } => write!(
                f,
                "access token is not a JWT: expected 3 dot-separated segments, found \
                 {segments}; configure a Redis username if this token source is not Entra ID"
            ),
            TokenError::InvalidBase64 => f.write_str("access token payload is not valid base64url"),
            TokenError::InvalidJson => f.write_str("access token payload is not a JSON object"),
            TokenError::InvalidClaim { claim } => {
                write!(f, "access token claim `{claim}` has an unexpected type")
            }
            TokenError::MissingObjectId => f.write_str(
                "access token has no `oid` claim, so the Redis username is unknown; \
                 configure the username (the identity's object id) explicitly",
            ),
        }
    }
}

impl std::error::Error for TokenError {}

impl From<TokenError> for Error {
    fn from(e: TokenError) -> Self {
        Error::InvalidToken(e)
    }
}
