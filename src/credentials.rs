//! Redis username and password derived from an access token.

use std::fmt;
use std::time::SystemTime;

use crate::error::{Error, TokenError};
use crate::secret::Secret;
use crate::token::Token;

/// The source of the Redis username.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Username {
    /// The token's `oid` claim, as Azure Cache for Redis and Azure Managed Redis expect.
    #[default]
    ObjectId,
    /// A fixed username, for tokens without `oid` or for servers with other ACL names.
    Fixed(String),
}

impl Username {
    /// Builds the credentials that authenticate with `token`.
    pub fn credentials_for(&self, token: &Token) -> Result<Credentials, Error> {
        let username = match self {
            Username::Fixed(name) => name.clone(),
            Username::ObjectId => token
                .try_claims()?
                .oid
                .ok_or(Error::InvalidToken(TokenError::MissingObjectId))?,
        };
        Ok(Credentials {
            username,
            password: token.access_token().clone(),
            expires_on: token.expires_on(),
        })
    }
}

/// The username and password for `AUTH`, valid until the token expires.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    username: String,
    password: Secret,
    expires_on: SystemTime,
}

impl Credentials {
    /// Creates credentials from their parts; useful for tests and custom providers.
    pub fn new(
        username: impl Into<String>,
        password: impl Into<Secret>,
        expires_on: SystemTime,
    ) -> Self {
        Credentials {
            username: username.into(),
            password: password.into(),
            expires_on,
        }
    }

    /// The Redis username (by default the token's `oid`).
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The Redis password: the access token.
    ///
    /// Security: send it only in `AUTH` or `HELLO`; never log or display it.
    pub fn password(&self) -> &str {
        self.password.expose_secret()
    }

    /// When the token, and so these credentials, stop being accepted.
    pub fn expires_on(&self) -> SystemTime {
        self.expires_on
    }

    /// Returns true when the credentials have expired at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.expires_on
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("expires_on", &self.expires_on)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use std::time::UNIX_EPOCH;

    fn jwt(payload: &str) -> String {
        format!("e30.{}.c2ln", URL_SAFE_NO_PAD.encode(payload))
    }

    #[test]
    fn username_defaults_to_oid() {
        let token = Token::new(jwt(r#"{"oid":"abc","sub":"s","appid":"c"}"#), UNIX_EPOCH);
        let credentials = Username::ObjectId.credentials_for(&token).unwrap();
        assert_eq!(credentials.username(), "abc");
        assert_eq!(credentials.password(), token.access_token().expose_secret());
    }

    #[test]
    fn missing_oid_is_an_error_unless_username_fixed() {
        let token = Token::new(jwt(r#"{"sub":"s"}"#), UNIX_EPOCH);
        let err = Username::ObjectId.credentials_for(&token).unwrap_err();
        assert_eq!(err, Error::InvalidToken(TokenError::MissingObjectId));
        let fixed = Username::Fixed("app".into())
            .credentials_for(&token)
            .unwrap();
        assert_eq!(fixed.username(), "app");
    }

    #[test]
    fn opaque_token_needs_fixed_username() {
        let token = Token::new("not-a-jwt", UNIX_EPOCH);
        let err = Username::ObjectId.credentials_for(&token).unwrap_err();
        assert_eq!(err, Error::InvalidToken(TokenError::NotJwt { segments: 1 }));
        assert!(Username::Fixed("u".into()).credentials_for(&token).is_ok());
    }

    #[test]
    fn debug_hides_password() {
        let credentials = Credentials::new("user", "tok3n-value", UNIX_EPOCH);
        let debug = format!("{credentials:?}");
        assert!(!debug.contains("tok3n-value"), "{debug}");
        assert!(debug.contains("user"), "{debug}");
    }
}
