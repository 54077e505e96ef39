//! Invariant checks behind the fuzz targets.
//!
//! Each target in `fuzz_targets/` calls one function here. The main crate's
//! `tests/fuzz_corpus.rs` includes this file as a module and replays the seed corpus
//! through the same functions under `cargo test`, so the file may use only `std`,
//! `serde_json` and `redis_entraid`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis_entraid::{
    Claims, Error, HttpResponse, MAX_LIFETIME, Token, parse_error_response, parse_token_response,
};
use serde_json::{Map, Value};

/// The receive time passed to the parsers: 2026-01-01T00:00:00Z in Unix seconds.
pub const NOW_UNIX_SECONDS: u64 = 1_767_225_600;

/// Non-2xx statuses for the second parse of each `token_response` input. The input's
/// first byte minus `b'0'`, modulo the length, is the index, so the ASCII characters `0`
/// to `?` choose the entries in order.
pub const ERROR_STATUSES: [u16; 16] = [
    400, 401, 403, 404, 408, 429, 500, 502, 503, 504, // `0` to `9`
    100, 199, 300, 399, 0, 999, // `:` `;` `<` `=` `>` `?`
];

/// The members of an error body that `parse_error_response` reads.
const ERROR_FIELDS: [&str; 4] = [
    "error",
    "error_description",
    "error_codes",
    "correlation_id",
];

/// The maximum length of the kept `error_description` line, in characters, as
/// `parse_error_response` truncates it.
const MAX_DESCRIPTION_CHARS: usize = 300;

/// Decodes `input`, read as lossy UTF-8, with `Claims::from_jwt` and checks the result.
///
/// Panics when decoding panics, when a text without exactly three dot-separated segments
/// decodes, when `=` padding after the payload changes the result, or when `Token::new`
/// stores other claims than `Claims::from_jwt` returns.
pub fn check_jwt_claims(input: &[u8]) {
    let jwt = String::from_utf8_lossy(input);
    let claims = Claims::from_jwt(&jwt);
    let segments: Vec<&str> = jwt.split('.').collect();

    if let Ok(decoded) = &claims {
        assert_eq!(
            segments.len(),
            3,
            "decoded a text that has no three segments"
        );
        // Any `exp` that decoded, negative or far off, converts without overflow.
        let _ = decoded.expires_at();
    }

    if let [header, payload, signature] = segments[..] {
        let padded = format!("{header}.{payload}==.{signature}");
        assert_eq!(
            Claims::from_jwt(&padded),
            claims,
            "`=` padding after the payload changed the result"
        );
    }

    let token = Token::new(&*jwt, UNIX_EPOCH);
    assert_eq!(
        token.claims(),
        claims.as_ref().ok(),
        "Token::new stored other claims than Claims::from_jwt returned"
    );
}

/// Parses the body in `input` as identity endpoint responses and checks the results.
///
/// The first byte chooses a status from [`ERROR_STATUSES`] and the remaining bytes are
/// the body. The body is parsed once as an HTTP 200 response and once with the chosen
/// status, both received at [`NOW_UNIX_SECONDS`]. An empty input is an empty body.
pub fn check_token_response(input: &[u8]) {
    let (selector, body) = match input.split_first() {
        Some((&selector, body)) => (selector, body),
        None => (b'0', input),
    };
    let now = UNIX_EPOCH + Duration::from_secs(NOW_UNIX_SECONDS);
    check_success_status(body, now);

    let index = usize::from(selector.wrapping_sub(b'0')) % ERROR_STATUSES.len();
    check_error_status(ERROR_STATUSES[index], body, now);
}

/// Checks that an HTTP 200 response yields a non-empty token that expires, and suggests
/// a refresh, no later than `now + MAX_LIFETIME`, or else an invalid-response error.
///
/// NOTE: a token that expires at or before `now` is a valid parse result.
/// `TokenManager` rejects it, so this check does not.
fn check_success_status(body: &[u8], now: SystemTime) {
    let latest = now + MAX_LIFETIME;
    match parse_token_response(&response(200, body), now) {
        Ok(token) => {
            assert!(
                !token.access_token().expose_secret().is_empty(),
                "accepted an empty access token"
            );
            assert!(
                token.expires_on() <= latest,
                "expiry {:?} is after now + MAX_LIFETIME",
                token.expires_on()
            );
            if let Some(refresh_on) = token.refresh_on() {
                assert!(
                    refresh_on <= latest,
                    "refresh time {refresh_on:?} is after now + MAX_LIFETIME"
                );
            }
        }
        Err(error) => assert!(
            matches!(error, Error::InvalidResponse { status: 200, .. }),
            "expected an invalid-response error for HTTP 200, got {error:?}"
        ),
    }
}

/// Checks the error for a non-2xx response: both parsers return the same identity
/// endpoint error, and its content comes only from the status and [`ERROR_FIELDS`].
fn check_error_status(status: u16, body: &[u8], now: SystemTime) {
    let failure = response(status, body);
    let error = parse_error_response(&failure);
    assert_eq!(
        parse_token_response(&failure, now).err(),
        Some(error.clone()),
        "parse_token_response and parse_error_response disagree on HTTP {status}"
    );

    let Error::IdentityEndpoint(endpoint) = &error else {
        panic!("expected an identity endpoint error for HTTP {status}, got {error:?}");
    };
    assert_eq!(endpoint.status, status, "the error reports another status");
    if matches!(status, 408 | 429 | 500..=599) {
        assert!(
            endpoint.transient,
            "HTTP {status} is not classified transient"
        );
    }
    if let Some(description) = &endpoint.description {
        assert!(
            !description.contains('\n'),
            "description has more than one line: {description:?}"
        );
        assert!(
            description.chars().count() <= MAX_DESCRIPTION_CHARS,
            "description is longer than {MAX_DESCRIPTION_CHARS} characters"
        );
    }

    // A message that quoted any other part of the body, or a body that is not a JSON
    // object, would differ from the one for the reduced body.
    let reduced = response(status, &error_fields_only(body));
    assert_eq!(
        parse_error_response(&reduced),
        error,
        "the error depends on body text outside {ERROR_FIELDS:?}"
    );
}

fn response(status: u16, body: &[u8]) -> HttpResponse {
    HttpResponse {
        status,
        headers: Vec::new(),
        body: body.to_vec(),
    }
}

/// Returns `body` with only the members in [`ERROR_FIELDS`], or an empty body when `body`
/// is not a JSON object.
fn error_fields_only(body: &[u8]) -> Vec<u8> {
    let Ok(Value::Object(members)) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    let kept: Map<String, Value> = members
        .into_iter()
        .filter(|(name, _)| ERROR_FIELDS.contains(&name.as_str()))
        .collect();
    serde_json::to_vec(&kept).expect("a JSON object always serializes")
}

/// Drives a `TokenManager` with a script decoded from `input` and checks its invariants.
///
/// Each pair of bytes is one input: the first byte picks what happens, the second is its
/// argument. Time moves only forward. The checks: `poll` never asks for a second request
/// while one is in flight, a `WaitUntil` deadline is never before the time it was
/// returned at, handed-out credentials are never expired, and published credentials expire
/// later than the ones before them, or at the same time after a forced refresh.
pub fn check_token_manager(input: &[u8]) {
    use redis_entraid::{Action, EndpointError, Event, RefreshPolicy, TokenManager, Username};

    let start = UNIX_EPOCH + Duration::from_secs(NOW_UNIX_SECONDS);
    let mut manager = TokenManager::new(RefreshPolicy::default(), Username::Fixed("u".into()), 7);
    let mut now = start;
    let mut in_flight = false;
    // Whether a force is pending, and whether the request in flight was forced.
    let mut force_pending = false;
    let mut request_forced = false;
    let mut last_published: Option<SystemTime> = None;
    let mut serial = 0u64;
    for pair in input.chunks(2) {
        let (op, arg) = (pair[0], u64::from(*pair.get(1).unwrap_or(&0)));
        match op % 6 {
            // Advance the clock by up to about 18 hours (arg squared seconds).
            0 => now += Duration::from_secs(arg * arg),
            1 => match manager.poll(now) {
                Action::RequestToken => {
                    assert!(!in_flight, "second request while one is in flight");
                    in_flight = true;
                    request_forced = std::mem::take(&mut force_pending);
                }
                Action::WaitUntil(deadline) => {
                    assert!(deadline >= now, "deadline {deadline:?} before now {now:?}");
                }
                Action::AwaitResponse => assert!(in_flight, "waiting for no request"),
                Action::Idle => {}
            },
            // Answer the request in flight with a token living arg × 60 seconds.
            2 if in_flight => {
                in_flight = false;
                serial += 1;
                let token = Token::new(
                    format!("opaque-{serial}"),
                    now + Duration::from_secs(arg * 60),
                );
                manager.handle_response(now, Ok(token));
            }
            // Answer the request in flight with an error, transient when arg is even.
            3 if in_flight => {
                in_flight = false;
                let error = Error::IdentityEndpoint(EndpointError {
                    status: if arg % 2 == 0 { 503 } else { 401 },
                    error: None,
                    description: None,
                    codes: Vec::new(),
                    correlation_id: None,
                    retry_after: (arg % 3 == 0).then(|| Duration::from_secs(arg)),
                    transient: arg % 2 == 0,
                });
                manager.handle_response(now, Err(error));
            }
            // The manager ignores a force while a request is in flight.
            4 => {
                manager.force_refresh(now);
                force_pending |= !in_flight;
            }
            _ => {}
        }
        if let Ok(credentials) = manager.credentials(now) {
            assert!(
                !credentials.is_expired(now),
                "expired credentials handed out"
            );
        }
        while let Some(event) = manager.poll_event() {
            if let Event::CredentialsChanged(credentials) = event {
                if let Some(previous) = last_published {
                    let same_after_force = request_forced && credentials.expires_on() == previous;
                    assert!(
                        credentials.expires_on() > previous || same_after_force,
                        "published a token that expires no later"
                    );
                }
                last_published = Some(credentials.expires_on());
            }
        }
    }
}
