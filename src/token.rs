//! Access tokens and the JWT claims this crate reads from them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::error::TokenError;
use crate::secret::Secret;

/// The claims of an Entra ID access token that matter for Redis.
///
/// The signature is not checked: Redis verifies the token, and a client cannot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Claims {
    /// `oid`: object id of the service principal, managed identity or user; the Redis
    /// username.
    pub oid: Option<String>,
    /// `tid`: tenant id.
    pub tid: Option<String>,
    /// `aud`: audience; a JWT may carry one string or an array.
    pub aud: Vec<String>,
    /// `appid` (v1 tokens) or `azp` (v2 tokens): the client application id.
    pub app_id: Option<String>,
    /// `exp`: expiry, Unix seconds.
    pub exp: Option<i64>,
    /// `iat`: issue time, Unix seconds.
    pub iat: Option<i64>,
    /// `nbf`: not-before time, Unix seconds.
    pub nbf: Option<i64>,
}

impl Claims {
    /// Decodes the payload of a JWT (`header.payload.signature`).
    ///
    /// The payload may be base64url with or without `=` padding.
    pub fn from_jwt(jwt: &str) -> Result<Self, TokenError> {
        let segments: Vec<&str> = jwt.split('.').collect();
        if segments.len() != 3 {
            return Err(TokenError::NotJwt {
                segments: segments.len(),
            });
        }
        let payload = segments[1].trim_end_matches('=');
        let bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::InvalidBase64)?;
        let json: Value = serde_json::from_slice(&bytes).map_err(|_| TokenError::InvalidJson)?;
        let Value::Object(map) = json else {
            return Err(TokenError::InvalidJson);
        };
        Self::from_map(&map)
    }

    fn from_map(map: &Map<String, Value>) -> Result<Self, TokenError> {
        let app_id = match string_claim(map, "appid")? {
            Some(id) => Some(id),
            None => string_claim(map, "azp")?,
        };
        Ok(Claims {
            oid: string_claim(map, "oid")?,
            tid: string_claim(map, "tid")?,
            aud: audience_claim(map)?,
            app_id,
            exp: time_claim(map, "exp")?,
            iat: time_claim(map, "iat")?,
            nbf: time_claim(map, "nbf")?,
        })
    }

    /// Returns `exp` as a point in time.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.exp.map(from_unix_seconds)
    }
}

fn string_claim(
    map: &Map<String, Value>,
    claim: &'static str,
) -> Result<Option<String>, TokenError> {
    match map.get(claim) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(TokenError::InvalidClaim { claim }),
    }
}

fn audience_claim(map: &Map<String, Value>) -> Result<Vec<String>, TokenError> {
    let invalid = TokenError::InvalidClaim { claim: "aud" };
    match map.get("aud") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned).ok_or(invalid.clone()))
            .collect(),
        Some(_) => Err(invalid),
    }
}

/// Reads a NumericDate claim. RFC 7519 allows fractions, so floats are truncated.
fn time_claim(map: &Map<String, Value>, claim: &'static str) -> Result<Option<i64>, TokenError> {
    match map.get(claim) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Ok(Some(i)),
            (None, Some(f)) if f.is_finite() && f.abs() < 1e15 => Ok(Some(f as i64)),
            _ => Err(TokenError::InvalidClaim { claim }),
        },
        Some(_) => Err(TokenError::InvalidClaim { claim }),
    }
}

/// Converts Unix seconds to a point in time; values before 1970 map to the epoch.
pub(crate) fn from_unix_seconds(seconds: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds.max(0) as u64)
}

/// An access token with its expiry, as an identity endpoint issued it.
#[derive(Debug, Clone)]
pub struct Token {
    access_token: Secret,
    claims: Option<Claims>,
    expires_on: SystemTime,
    refresh_on: Option<SystemTime>,
}

impl Token {
    /// Creates a token that expires at `expires_on`.
    ///
    /// The claims are decoded when the token is a JWT; otherwise only a configured
    /// username can be used with it.
    pub fn new(access_token: impl Into<Secret>, expires_on: SystemTime) -> Self {
        let access_token = access_token.into();
        let claims = Claims::from_jwt(access_token.expose_secret()).ok();
        Token {
            access_token,
            claims,
            expires_on,
            refresh_on: None,
        }
    }

    /// Sets the time the identity endpoint suggested for refreshing (`refresh_in`).
    pub fn with_refresh_on(mut self, refresh_on: SystemTime) -> Self {
        self.refresh_on = Some(refresh_on);
        self
    }

    /// Returns the access token itself.
    pub fn access_token(&self) -> &Secret {
        &self.access_token
    }

    /// Returns the decoded claims, or `None` when the token is not a readable JWT.
    pub fn claims(&self) -> Option<&Claims> {
        self.claims.as_ref()
    }

    /// Decodes the claims again, reporting why they cannot be read.
    pub fn try_claims(&self) -> Result<Claims, TokenError> {
        match &self.claims {
            Some(claims) => Ok(claims.clone()),
            None => Claims::from_jwt(self.access_token.expose_secret()),
        }
    }

    /// When the token stops being accepted.
    pub fn expires_on(&self) -> SystemTime {
        self.expires_on
    }

    /// When the identity endpoint suggested refreshing, if it did.
    pub fn refresh_on(&self) -> Option<SystemTime> {
        self.refresh_on
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(payload: &str) -> String {
        format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn claims_read_from_unpadded_payload_with_underscore() {
        // A field case token whose payload encodes to base64url containing `_`.
        let jwt = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJhdWQiOiJodHRwczovL3JlZGlzLmF6dXJlLmNvbSIsImV4cCI6MTc2NzMxMjAwMCwibmFtZSI6Ij8_fj4iLCJvaWQiOiIxMTExMTExMS0yMjIyLTMzMzMtNDQ0NC01NTU1NTU1NTU1NTUiLCJ0aWQiOiIwMDAwMDAwMC0wMDAwLTAwMDAtMDAwMC0wMDAwMDAwMDAwYWEifQ.c2ln";
        let claims = Claims::from_jwt(jwt).unwrap();
        assert_eq!(
            claims.oid.as_deref(),
            Some("11111111-2222-3333-4444-555555555555")
        );
        assert_eq!(
            claims.tid.as_deref(),
            Some("00000000-0000-0000-0000-0000000000aa")
        );
        assert_eq!(claims.aud, vec!["https://redis.azure.com".to_owned()]);
        assert_eq!(claims.exp, Some(1767312000));
    }

    #[test]
    fn claims_accept_padded_payload() {
        let payload = URL_SAFE_NO_PAD.encode(r#"{"oid":"o"}"#);
        let padding = "=".repeat((4 - payload.len() % 4) % 4);
        let claims = Claims::from_jwt(&format!("h.{payload}{padding}.s")).unwrap();
        assert_eq!(claims.oid.as_deref(), Some("o"));
    }

    #[test]
    fn claims_prefer_appid_over_azp_and_accept_audience_array() {
        let claims =
            Claims::from_jwt(&encode(r#"{"appid":"a","azp":"b","aud":["x","y"]}"#)).unwrap();
        assert_eq!(claims.app_id.as_deref(), Some("a"));
        assert_eq!(claims.aud, vec!["x".to_owned(), "y".to_owned()]);
        let claims = Claims::from_jwt(&encode(r#"{"azp":"b"}"#)).unwrap();
        assert_eq!(claims.app_id.as_deref(), Some("b"));
    }

    #[test]
    fn claims_truncate_fractional_times() {
        let claims = Claims::from_jwt(&encode(r#"{"exp":1767312000.9,"iat":5,"nbf":4}"#)).unwrap();
        assert_eq!(claims.exp, Some(1767312000));
        assert_eq!(claims.iat, Some(5));
        assert_eq!(claims.nbf, Some(4));
    }

    #[test]
    fn claims_parse_errors_are_typed() {
        assert_eq!(
            Claims::from_jwt("not-a-jwt"),
            Err(TokenError::NotJwt { segments: 1 })
        );
        assert_eq!(
            Claims::from_jwt("a.b.c.d"),
            Err(TokenError::NotJwt { segments: 4 })
        );
        assert_eq!(Claims::from_jwt("a.!!!.c"), Err(TokenError::InvalidBase64));
        assert_eq!(
            Claims::from_jwt(&encode("[1,2]")),
            Err(TokenError::InvalidJson)
        );
        assert_eq!(Claims::from_jwt(&encode("{")), Err(TokenError::InvalidJson));
        assert_eq!(
            Claims::from_jwt(&encode(r#"{"oid":5}"#)),
            Err(TokenError::InvalidClaim { claim: "oid" })
        );
        assert_eq!(
            Claims::from_jwt(&encode(r#"{"exp":"soon"}"#)),
            Err(TokenError::InvalidClaim { claim: "exp" })
        );
        assert_eq!(
            Claims::from_jwt(&encode(r#"{"aud":[1]}"#)),
            Err(TokenError::InvalidClaim { claim: "aud" })
        );
    }

    #[test]
    fn token_debug_hides_access_token() {
        let token = Token::new(encode(r#"{"oid":"o"}"#), UNIX_EPOCH);
        let debug = format!("{token:?}");
        assert!(!debug.contains("c2ln"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }
}
