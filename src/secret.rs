//! A string that must never reach a log line, an error message or Debug output.

use std::fmt;
use std::sync::Arc;

/// A secret value: an access token, a client secret or an assertion.
///
/// It has no `Display`, and its `Debug` prints `Secret(<redacted>)`. Cloning is cheap
/// because the value is shared.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }

    /// Returns the secret value.
    ///
    /// Security: everything that receives this string can leak it. Pass it only to the
    /// party that needs it (Redis `AUTH`, the identity endpoint) and never log it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        assert_eq!(secret.expose_secret(), "hunter2");
    }
}
