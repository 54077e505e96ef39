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

/// The members of an error body that `parse_error_response` reads: Entra's and IMDS's
/// fields, App Service's `message`, and Service Fabric's object nested in `error`.
const ERROR_FIELDS: [&str; 5] = [
    "error",
    "error_description",
    "error_codes",
    "correlation_id",
    "message",
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
    fields_only(body, &ERROR_FIELDS)
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

/// The environments of [`check_managed_identity_response`], chosen by the input's first
/// byte minus `b'0'`, modulo the length: `0` IMDS, `1` App Service, `2` Azure Arc, `3`
/// Cloud Shell, `4` Service Fabric, `5` Azure ML.
const MANAGED_IDENTITY_ENVIRONMENTS: [&[(&str, &str)]; 6] = [
    &[(
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        "http://127.0.0.1:40342",
    )],
    &[
        ("IDENTITY_ENDPOINT", "http://127.0.0.1:41000/msi/token"),
        ("IDENTITY_HEADER", "fuzz-identity-header"),
    ],
    &[
        (
            "IDENTITY_ENDPOINT",
            "http://127.0.0.1:40342/metadata/identity/oauth2/token",
        ),
        ("IMDS_ENDPOINT", "http://127.0.0.1:40342"),
    ],
    &[("MSI_ENDPOINT", "http://127.0.0.1:50342/oauth2/token")],
    &[
        (
            "IDENTITY_ENDPOINT",
            "https://127.0.0.1:2377/metadata/identity/oauth2/token",
        ),
        ("IDENTITY_HEADER", "fuzz-identity-header"),
        (
            "IDENTITY_SERVER_THUMBPRINT",
            "0123456789abcdef0123456789abcdef01234567",
        ),
    ],
    &[
        ("MSI_ENDPOINT", "http://127.0.0.1:41001/msi/token"),
        ("MSI_SECRET", "fuzz-msi-secret"),
    ],
];

/// The statuses of [`check_managed_identity_response`], chosen by the input's second byte
/// minus `b'0'`, modulo the length, so `0` to `?` choose them in order.
pub const MANAGED_IDENTITY_STATUSES: [u16; 16] = [
    200, 400, 401, 403, 404, 408, 410, 429, 500, 502, 503, 504, 201, 302, 0, 999,
];

/// The directory the Azure Arc key file must be in.
const ARC_KEY_DIRECTORY: &str = "/fuzz/azcmagent/tokens";

/// Feeds one response from `input` to the first request of a managed-identity exchange
/// and checks the outcome.
///
/// The first byte chooses the hosting environment and the second the status (see
/// [`MANAGED_IDENTITY_ENVIRONMENTS`] and [`MANAGED_IDENTITY_STATUSES`]). The rest, up to
/// the first newline, is a header value: `WWW-Authenticate` for Azure Arc and
/// `Retry-After` for the others. Everything after that newline is the body.
///
/// Panics when a 2xx response gives another result than `parse_token_response` (Azure
/// Arc: anything but a configuration error, because its first response must be a
/// challenge), when an error response is classified contrary to the environment's retry
/// rules or depends on body text outside the fields the parsers read, or when an Azure
/// Arc challenge leads to a key file outside the key directory or to a token request
/// without the key.
pub fn check_managed_identity_response(input: &[u8]) {
    use redis_entraid::{ManagedIdentityCredential, Next, Step, StepOutput, TokenSource};

    let byte = |at: usize| input.get(at).copied().unwrap_or(b'0');
    let environment = usize::from(byte(0).wrapping_sub(b'0')) % MANAGED_IDENTITY_ENVIRONMENTS.len();
    let status_index = usize::from(byte(1).wrapping_sub(b'0')) % MANAGED_IDENTITY_STATUSES.len();
    let status = MANAGED_IDENTITY_STATUSES[status_index];
    let rest = input.get(2..).unwrap_or_default();
    let (header, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(at) => (
            Some(String::from_utf8_lossy(&rest[..at]).into_owned()),
            &rest[at + 1..],
        ),
        None => (None, rest),
    };
    let arc = environment == 2;
    let header_name = if arc {
        "WWW-Authenticate"
    } else {
        "Retry-After"
    };
    let response = HttpResponse {
        status,
        headers: header
            .map(|v| (header_name.to_owned(), v))
            .into_iter()
            .collect(),
        body: body.to_vec(),
    };

    let variables = MANAGED_IDENTITY_ENVIRONMENTS[environment];
    let lookup = |name: &str| {
        variables
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| (*value).to_owned())
    };
    let credential = ManagedIdentityCredential::from_env(lookup)
        .expect("the fuzz environments are valid")
        .with_arc_key_directory(ARC_KEY_DIRECTORY);
    let now = UNIX_EPOCH + Duration::from_secs(NOW_UNIX_SECONDS);
    let mut exchange = credential.exchange();
    assert!(
        matches!(exchange.start(now), Next::Step(Step::Http(_))),
        "a managed-identity exchange starts with a request"
    );
    let next = exchange.resume(now, Ok(StepOutput::Http(response.clone())));

    if arc && status == 401 {
        check_arc_challenge(&mut *exchange, next, now);
        return;
    }
    let outcome = match next {
        Next::Done(outcome) => outcome,
        Next::Step(step) => panic!("HTTP {status} led to another step: {step:?}"),
    };
    if (200..300).contains(&status) {
        if arc {
            assert!(
                matches!(outcome, Err(Error::Config { .. })),
                "Azure Arc accepted a token without a challenge: {outcome:?}"
            );
        } else {
            assert_eq!(
                token_parts(outcome),
                token_parts(parse_token_response(&response, now)),
                "the environment changed a 2xx result"
            );
        }
        return;
    }
    let error = outcome.expect_err("a non-2xx response gave a token");
    check_managed_identity_error(environment, &response, &error);
}

/// Returns the comparable parts of a parse result: the token's value and times, or the
/// error.
fn token_parts(
    outcome: Result<Token, Error>,
) -> Result<(String, SystemTime, Option<SystemTime>), Error> {
    outcome.map(|token| {
        let value = token.access_token().expose_secret().to_owned();
        (value, token.expires_on(), token.refresh_on())
    })
}

/// Checks the error for a non-2xx managed-identity response.
fn check_managed_identity_error(environment: usize, response: &HttpResponse, error: &Error) {
    let status = response.status;
    let Error::IdentityEndpoint(endpoint) = error else {
        // IMDS and Azure Arc report a missing identity (400) and a proxy that intercepted
        // the IMDS address (403) as configuration or availability errors.
        assert!(
            matches!(environment, 0 | 2) && matches!(status, 400 | 403),
            "HTTP {status} in environment {environment} gave {error:?}"
        );
        assert!(
            matches!(
                error,
                Error::Config { .. } | Error::CredentialUnavailable { .. }
            ),
            "unexpected error kind {error:?}"
        );
        return;
    };
    assert_eq!(endpoint.status, status, "the error reports another status");
    assert_eq!(endpoint.retry_after, response.retry_after());
    let expected_transient = match environment {
        0 | 2 => matches!(status, 404 | 410 | 429 | 500..=599),
        4 => matches!(status, 429 | 500..=599),
        _ => parse_error_response(response).is_transient(),
    };
    assert_eq!(
        endpoint.transient, expected_transient,
        "HTTP {status} in environment {environment} classified wrongly"
    );

    let mut reduced = response.clone();
    reduced.body = fields_only(&response.body, &ERROR_FIELDS);
    let reduced_error = parse_error_response(&reduced);
    let Error::IdentityEndpoint(reduced_endpoint) = reduced_error else {
        unreachable!("parse_error_response always returns an identity endpoint error");
    };
    assert_eq!(
        (&endpoint.error, &endpoint.description, &endpoint.codes),
        (
            &reduced_endpoint.error,
            &reduced_endpoint.description,
            &reduced_endpoint.codes
        ),
        "the error depends on body text outside {ERROR_FIELDS:?}"
    );
    assert_eq!(endpoint.correlation_id, reduced_endpoint.correlation_id);
}

/// Checks what follows an Azure Arc challenge: a key file read inside the key directory,
/// then a token request that carries the key, or an error.
fn check_arc_challenge(
    exchange: &mut dyn redis_entraid::Exchange,
    next: redis_entraid::Next,
    now: SystemTime,
) {
    use redis_entraid::{Next, Step, StepOutput};

    let (path, max_len) = match next {
        Next::Step(Step::ReadFile { path, max_len }) => (path, max_len),
        Next::Done(Err(Error::InvalidResponse { status: 401, .. } | Error::Config { .. })) => {
            return;
        }
        other => panic!("unexpected outcome of an Azure Arc challenge: {other:?}"),
    };
    assert_eq!(
        path.parent(),
        Some(std::path::Path::new(ARC_KEY_DIRECTORY)),
        "key file outside the key directory: {path:?}"
    );
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    assert!(
        name.len() > ".key".len() && name.ends_with(".key"),
        "not a key file: {path:?}"
    );
    assert_eq!(max_len, 4096);
    let next = exchange.resume(now, Ok(StepOutput::File(b"fuzz-arc-key".to_vec())));
    let Next::Step(Step::Http(request)) = next else {
        panic!("a key did not lead to the token request: {next:?}");
    };
    assert!(
        request
            .headers
            .iter()
            .any(|(name, value)| name == "Authorization" && value == "Basic fuzz-arc-key"),
        "the token request does not carry the key"
    );
}

/// Returns `body` with only the members in `fields`, or an empty body when `body` is not
/// a JSON object.
fn fields_only(body: &[u8], fields: &[&str]) -> Vec<u8> {
    let Ok(Value::Object(members)) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    let kept: Map<String, Value> = members
        .into_iter()
        .filter(|(name, _)| fields.contains(&name.as_str()))
        .collect();
    serde_json::to_vec(&kept).expect("a JSON object always serializes")
}

/// The receive time for [`check_expires_on_date`]: 9999-12-31T23:59:59Z, so no date with
/// a four-digit year is capped to `now + MAX_LIFETIME`.
const DATE_NOW_UNIX_SECONDS: u64 = 253_402_300_799;

/// Parses `input`, read as lossy UTF-8, as the `expires_on` date string of a token response
/// and checks the result.
///
/// Panics when parsing panics, when a failure is anything but an invalid-response error,
/// or when a parsed time from 1970 to 9999 does not come back unchanged from its RFC 3339
/// form and from App Service's Windows form (`1/16/2020 5:24:12 AM +00:00`).
pub fn check_expires_on_date(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let Some(seconds) = parse_expires_on(&text) else {
        return;
    };
    let digits_only = text.trim().bytes().all(|b| b.is_ascii_digit());
    if digits_only || seconds == 0 || seconds > DATE_NOW_UNIX_SECONDS {
        // Whole seconds, a date before 1970 that was clamped to the epoch, or a time in the
        // year 10000 (reached by a leap second or an offset), which has no four-digit form.
        return;
    }
    for form in [rfc3339(seconds), windows_form(seconds)] {
        assert_eq!(
            parse_expires_on(&form),
            Some(seconds),
            "{text:?} parsed to {seconds}, but {form:?} did not"
        );
    }
}

/// Returns the expiry that `parse_token_response` reads from `expires_on: text`, in Unix
/// seconds, or `None` when it rejects the value.
fn parse_expires_on(text: &str) -> Option<u64> {
    let body = serde_json::json!({ "access_token": "opaque", "expires_on": text });
    let response = response(200, body.to_string().as_bytes());
    let now = UNIX_EPOCH + Duration::from_secs(DATE_NOW_UNIX_SECONDS);
    match parse_token_response(&response, now) {
        Ok(token) => {
            let expiry = token.expires_on().duration_since(UNIX_EPOCH).unwrap();
            Some(expiry.as_secs())
        }
        Err(error) => {
            assert!(
                matches!(error, Error::InvalidResponse { status: 200, .. }),
                "expected an invalid-response error, got {error:?}"
            );
            None
        }
    }
}

/// Splits Unix seconds into a civil date and time of day (UTC), with Howard Hinnant's
/// `civil_from_days` algorithm.
fn civil(seconds: u64) -> (u64, u64, u64, u64, u64, u64) {
    let days = (seconds / 86_400) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let time = seconds % 86_400;
    (
        year as u64,
        month as u64,
        day as u64,
        time / 3600,
        time / 60 % 60,
        time % 60,
    )
}

fn rfc3339(seconds: u64) -> String {
    let (year, month, day, hour, minute, second) = civil(seconds);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
}

fn windows_form(seconds: u64) -> String {
    let (year, month, day, hour, minute, second) = civil(seconds);
    let meridiem = if hour < 12 { "AM" } else { "PM" };
    let hour = if hour % 12 == 0 { 12 } else { hour % 12 };
    format!("{month}/{day}/{year} {hour}:{minute:02}:{second:02} {meridiem} +00:00")
}
