//! Parsers for identity endpoint responses: token bodies and error bodies.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::date::parse_date;
use crate::error::{EndpointError, Error};
use crate::http::HttpResponse;
use crate::token::{Token, from_unix_seconds};

/// The longest lifetime accepted from an endpoint. Entra issues tokens of at most about
/// 28 hours, so a later expiry is a bug or a hostile endpoint and is capped to this.
pub const MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// An `expires_on` below this (2001-09-09) is read as a lifetime in seconds rather than
/// as a Unix time, because no real token expires before it.
const SMALLEST_EPOCH: u64 = 1_000_000_000;

/// AADSTS codes that Microsoft documents as transient.
const TRANSIENT_CODES: &[u64] = &[
    50033, 50087, 90006, 90012, 90024, 90033, 90090, 40010, 70012, 501621, 90055, 50196,
];

/// Parses a token response received at `now`.
///
/// A 2xx body must carry `access_token`. The expiry is taken from `expires_on` (Unix
/// seconds), else `now + expires_in`, else the token's `exp` claim. Each may be a JSON
/// number or a string of digits. Older App Service and Azure ML endpoints send
/// `expires_on` as a date string instead, such as `06/20/2019 02:57:58 +00:00` or
/// `1/16/2020 5:24:12 AM +00:00`. When the body and `exp` disagree, the earlier wins.
/// Other statuses become [`Error::IdentityEndpoint`].
pub fn parse_token_response(response: &HttpResponse, now: SystemTime) -> Result<Token, Error> {
    if !(200..300).contains(&response.status) {
        return Err(parse_error_response(response));
    }
    let invalid = |reason: &str| Error::InvalidResponse {
        status: response.status,
        reason: reason.to_owned(),
    };
    let json: Value =
        serde_json::from_slice(&response.body).map_err(|_| invalid("body is not JSON"))?;
    let Value::Object(body) = json else {
        return Err(invalid("body is not a JSON object"));
    };
    let access_token = match body.get("access_token") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        Some(_) => return Err(invalid("`access_token` is not a non-empty string")),
        None => return Err(invalid("`access_token` is missing")),
    };
    let expires_on = expires_on_field(&body, now).map_err(|r| invalid(&r))?;
    let expires_in = seconds_field(&body, "expires_in").map_err(|r| invalid(&r))?;
    let refresh_in = seconds_field(&body, "refresh_in").map_err(|r| invalid(&r))?;

    let from_body = match (expires_on, expires_in) {
        (Some(on), _) => Some(on),
        (None, Some(lifetime)) => {
            Some(now + Duration::from_secs(lifetime.min(MAX_LIFETIME.as_secs())))
        }
        (None, None) => None,
    };
    let token = Token::new(access_token, now);
    let from_claim = token.claims().and_then(|c| c.exp).map(from_unix_seconds);
    let expiry = match (from_body, from_claim) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => {
            return Err(invalid(
                "`expires_in` and `expires_on` are missing and the token has no `exp` claim",
            ));
        }
    };
    let expiry = expiry.min(now + MAX_LIFETIME);
    let mut token = Token::new(token.access_token().clone(), expiry);
    if let Some(refresh_in) = refresh_in {
        token = token
            .with_refresh_on(now + Duration::from_secs(refresh_in.min(MAX_LIFETIME.as_secs())));
    }
    Ok(token)
}

/// Reads `expires_on`: Unix seconds, a lifetime when below [`SMALLEST_EPOCH`], or a date.
fn expires_on_field(
    body: &Map<String, Value>,
    now: SystemTime,
) -> Result<Option<SystemTime>, String> {
    if let Some(Value::String(text)) = body.get("expires_on")
        && !text.trim().bytes().all(|b| b.is_ascii_digit())
    {
        return match parse_date(text) {
            Some(seconds) => Ok(Some(from_unix_seconds(seconds))),
            None => Err("`expires_on` is neither a number of seconds nor a known date form".into()),
        };
    }
    let Some(seconds) = seconds_field(body, "expires_on")? else {
        return Ok(None);
    };
    let base = if seconds >= SMALLEST_EPOCH {
        UNIX_EPOCH
    } else {
        now
    };
    // An overflowing value is absurd; the caller caps the expiry to `now + MAX_LIFETIME`.
    Ok(Some(
        base.checked_add(Duration::from_secs(seconds))
            .unwrap_or(now + MAX_LIFETIME),
    ))
}

/// Reads a field that contains whole seconds as a number or a string of digits.
fn seconds_field(body: &Map<String, Value>, name: &str) -> Result<Option<u64>, String> {
    let invalid = || format!("`{name}` is not a number of seconds");
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(v), _) => Ok(Some(v)),
            (None, Some(f)) if f.is_finite() && (0.0..1e15).contains(&f) => Ok(Some(f as u64)),
            _ => Err(invalid()),
        },
        Some(Value::String(s)) => s.trim().parse::<u64>().map(Some).map_err(|_| invalid()),
        Some(_) => Err(invalid()),
    }
}

/// Turns a non-2xx response into a classified error.
///
/// Reads Entra's and IMDS's `error` and `error_description`, Service Fabric's nested
/// `error` object and App Service's `message`.
///
/// Transient: HTTP 408, 429 and 5xx, the OAuth error `temporarily_unavailable`, and the
/// AADSTS codes Microsoft documents as retryable. Everything else is permanent.
pub fn parse_error_response(response: &HttpResponse) -> Error {
    let body = serde_json::from_slice::<Value>(&response.body).ok();
    let body = body.as_ref().and_then(Value::as_object);
    // Bounded, because these strings come from the endpoint and end up in messages.
    let text = |name: &str| {
        body.and_then(|b| b.get(name))
            .and_then(Value::as_str)
            .map(|v| v.chars().take(200).collect::<String>())
    };
    // Service Fabric nests its error: {"error":{"code","message","correlationId"}}.
    let nested = body.and_then(|b| b.get("error")).and_then(Value::as_object);
    let nested_text = |name: &str| {
        nested
            .and_then(|n| n.get(name))
            .and_then(Value::as_str)
            .map(|v| v.chars().take(200).collect::<String>())
    };
    let error = text("error").or_else(|| nested_text("code"));
    // App Service reports some failures as {"statusCode":…,"message":…}.
    let description = text("error_description")
        .or_else(|| nested_text("message"))
        .or_else(|| text("message"))
        .and_then(|d| first_line(&d));
    let codes: Vec<u64> = body
        .and_then(|b| b.get("error_codes"))
        .and_then(Value::as_array)
        .map(|codes| codes.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let status = response.status;
    let transient = matches!(status, 408 | 429 | 500..=599)
        || error.as_deref() == Some("temporarily_unavailable")
        || codes.iter().any(|c| TRANSIENT_CODES.contains(c));
    Error::IdentityEndpoint(EndpointError {
        status,
        error,
        description,
        codes,
        correlation_id: text("correlation_id").or_else(|| nested_text("correlationId")),
        retry_after: response.retry_after(),
        transient,
    })
}

/// Keeps the first line of an `error_description`, which Entra follows with trace and
/// correlation lines, and bounds its length.
fn first_line(description: &str) -> Option<String> {
    let mut line = description.lines().next()?.trim();
    // The AADSTS code is reported from `error_codes`, so drop its repetition here.
    if let Some(rest) = line.strip_prefix("AADSTS")
        && let Some((code, text)) = rest.split_once(':')
        && code.chars().all(|c| c.is_ascii_digit())
    {
        line = text.trim();
    }
    if line.is_empty() {
        return None;
    }
    Some(line.chars().take(300).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            status,
            headers: vec![],
            body: body.as_bytes().to_vec(),
        }
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    const T0: u64 = 1767225600;

    #[test]
    fn expires_in_as_number_or_string() {
        for body in [
            r#"{"access_token":"t","expires_in":3599}"#,
            r#"{"access_token":"t","expires_in":"3599"}"#,
        ] {
            let token = parse_token_response(&response(200, body), at(T0)).unwrap();
            assert_eq!(token.expires_on(), at(T0 + 3599), "{body}");
        }
    }

    #[test]
    fn expires_on_epoch_wins_over_expires_in() {
        let body = format!(
            r#"{{"access_token":"t","expires_in":3599,"expires_on":"{}"}}"#,
            T0 + 100
        );
        let token = parse_token_response(&response(200, &body), at(T0)).unwrap();
        assert_eq!(token.expires_on(), at(T0 + 100));
    }

    #[test]
    fn small_expires_on_is_a_lifetime() {
        let body = r#"{"access_token":"t","expires_on":600}"#;
        let token = parse_token_response(&response(200, body), at(T0)).unwrap();
        assert_eq!(token.expires_on(), at(T0 + 600));
    }

    #[test]
    fn refresh_in_sets_refresh_on() {
        let body = r#"{"access_token":"t","expires_in":86399,"refresh_in":43199}"#;
        let token = parse_token_response(&response(200, body), at(T0)).unwrap();
        assert_eq!(token.refresh_on(), Some(at(T0 + 43199)));
    }

    #[test]
    fn unrepresentable_expires_on_is_capped() {
        let body = r#"{"access_token":"t","expires_on":18446744073709551615}"#;
        let token = parse_token_response(&response(200, body), at(T0)).unwrap();
        assert_eq!(token.expires_on(), at(T0) + MAX_LIFETIME);
    }

    #[test]
    fn absurd_lifetime_is_capped() {
        let body = r#"{"access_token":"t","expires_in":999999999999}"#;
        let token = parse_token_response(&response(200, body), at(T0)).unwrap();
        assert_eq!(token.expires_on(), at(T0) + MAX_LIFETIME);
    }

    #[test]
    fn malformed_success_bodies_are_invalid_responses() {
        let cases = [
            ("not json", "body is not JSON"),
            ("[]", "body is not a JSON object"),
            (r#"{"expires_in":5}"#, "`access_token` is missing"),
            (
                r#"{"access_token":7,"expires_in":5}"#,
                "`access_token` is not a non-empty string",
            ),
            (
                r#"{"access_token":"t","expires_in":"soon"}"#,
                "`expires_in` is not a number of seconds",
            ),
            (
                r#"{"access_token":"t","expires_in":-5}"#,
                "`expires_in` is not a number of seconds",
            ),
            (
                r#"{"access_token":"t"}"#,
                "`expires_in` and `expires_on` are missing and the token has no `exp` claim",
            ),
        ];
        for (body, reason) in cases {
            let err = parse_token_response(&response(200, body), at(T0)).unwrap_err();
            assert_eq!(
                err,
                Error::InvalidResponse {
                    status: 200,
                    reason: reason.to_owned()
                },
                "{body}"
            );
        }
    }

    #[test]
    fn entra_error_body_is_classified_permanent() {
        let body = r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x\r\nCorrelation ID: y","error_codes":[7000215],"correlation_id":"cid-1"}"#;
        let err = parse_error_response(&response(401, body));
        assert!(!err.is_transient());
        assert_eq!(
            err.to_string(),
            "identity endpoint returned HTTP 401 invalid_client (AADSTS7000215): Invalid \
             client secret provided.; check AZURE_CLIENT_SECRET: it must be the \
             secret's value, not its secret id (correlation id cid-1)"
        );
    }

    #[test]
    fn transient_statuses_and_codes() {
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(
                parse_error_response(&response(status, "")).is_transient(),
                "{status}"
            );
        }
        for status in [400, 401, 403, 404] {
            assert!(
                !parse_error_response(&response(status, "{}")).is_transient(),
                "{status}"
            );
        }
        let unavailable = r#"{"error":"temporarily_unavailable"}"#;
        assert!(parse_error_response(&response(400, unavailable)).is_transient());
        let retryable = r#"{"error":"invalid_request","error_codes":[50033]}"#;
        assert!(parse_error_response(&response(400, retryable)).is_transient());
    }

    #[test]
    fn expires_on_date_strings() {
        let cases = [
            (r#""06/20/2019 02:57:58 +00:00""#, 1_560_999_478),
            (r#""1/16/2020 5:24:12 AM +00:00""#, 1_579_152_252),
            (r#""1/16/2020 5:24:12 PM +00:00""#, 1_579_195_452),
        ];
        for (expires_on, expected) in cases {
            let body = format!(r#"{{"access_token":"t","expires_on":{expires_on}}}"#);
            // Received an hour before expiry, so no cap applies.
            let token = parse_token_response(&response(200, &body), at(expected - 3600)).unwrap();
            assert_eq!(token.expires_on(), at(expected), "{expires_on}");
        }
        let body = r#"{"access_token":"t","expires_on":"next tuesday"}"#;
        let err = parse_token_response(&response(200, body), at(T0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid token response (HTTP 200): `expires_on` is neither a number of seconds \
             nor a known date form"
        );
    }

    #[test]
    fn imds_body_with_string_values() {
        let body = format!(
            r#"{{"access_token":"t","client_id":"c","expires_in":"86399","expires_on":"{}","ext_expires_in":"86399","not_before":"{T0}","resource":"https://redis.azure.com","token_type":"Bearer"}}"#,
            T0 + 86399
        );
        let token = parse_token_response(&response(200, &body), at(T0)).unwrap();
        assert_eq!(token.expires_on(), at(T0 + 86399));
        assert_eq!(token.refresh_on(), None);
    }

    #[test]
    fn overflowing_expires_on_is_capped() {
        let body = r#"{"access_token":"t","expires_on":18446744073709551615}"#;
        let token = parse_token_response(&response(200, body), at(T0)).unwrap();
        assert_eq!(token.expires_on(), at(T0) + MAX_LIFETIME);
    }

    #[test]
    fn service_fabric_nested_error_is_read() {
        let body = r#"{"error":{"correlationId":"cid-7","code":"SecretHeaderNotFound","message":"Secret is not found in the request headers."}}"#;
        let Error::IdentityEndpoint(err) = parse_error_response(&response(401, body)) else {
            panic!("expected an endpoint error");
        };
        assert_eq!(err.error.as_deref(), Some("SecretHeaderNotFound"));
        assert_eq!(
            err.description.as_deref(),
            Some("Secret is not found in the request headers.")
        );
        assert_eq!(err.correlation_id.as_deref(), Some("cid-7"));
    }

    #[test]
    fn app_service_message_is_read() {
        let body = r#"{"statusCode":500,"message":"An unexpected error occured while fetching the AAD Token."}"#;
        let Error::IdentityEndpoint(err) = parse_error_response(&response(500, body)) else {
            panic!("expected an endpoint error");
        };
        assert!(err.transient);
        assert_eq!(
            err.description.as_deref(),
            Some("An unexpected error occured while fetching the AAD Token.")
        );
    }

    #[test]
    fn retry_after_header_is_kept() {
        let mut throttled = response(429, "");
        throttled.headers.push(("Retry-After".into(), "7".into()));
        let err = parse_error_response(&throttled);
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    }

    #[test]
    fn error_body_that_is_not_json_keeps_no_text() {
        let err = parse_error_response(&response(500, "<html>secret-ish</html>"));
        assert!(!err.to_string().contains("secret-ish"));
        assert_eq!(err.to_string(), "identity endpoint returned HTTP 500");
    }
}
