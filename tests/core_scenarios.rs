//! Scenario tests of the token lifecycle on a virtual clock.
//!
//! A [`Driver`] owns a `TokenManager` and a simulated `now`. It takes the outcome of each token
//! request from a scripted endpoint and jumps straight to every deadline the manager returns, so a
//! day of refreshes runs in milliseconds and no test sleeps or reads the real clock. After
//! every step the driver checks the manager's invariants: at most one request in flight,
//! no deadline before `now`, no expired credentials handed out, and a state that agrees
//! with what `credentials` returns.

#[path = "common/jwt.rs"]
mod jwt;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use redis_entraid::{
    Action, Credentials, Error, Event, HttpResponse, State, Token, TokenError, TokenManager,
    Username, parse_token_response,
};

use jwt::{OID, T0, TENANT, jwt, token_body};

const HOUR: u64 = 3600;
const DAY: u64 = 86_400;

/// Maximum retry delay of the default policy.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Fixed jitter seed, so every run produces the same retry times.
const SEED: u64 = 0x5EED;

/// Upper bound on `poll` calls per driver; hitting it means the manager is spinning.
const MAX_POLLS: usize = 100_000;

fn at(unix_seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix_seconds)
}

/// Whole Unix seconds of `time`, rounded down.
fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Time from `earlier` to `later`; panics if `later` comes first.
fn elapsed(earlier: SystemTime, later: SystemTime) -> Duration {
    later
        .duration_since(earlier)
        .unwrap_or_else(|_| panic!("{later:?} is before {earlier:?}"))
}

type Outcome = Result<Token, Error>;

/// Parses a 200 response from Entra carrying `access_token`, received at `now`.
fn entra_response(access_token: &str, expires_in: u64, now: SystemTime) -> Outcome {
    let response = HttpResponse {
        status: 200,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: token_body(access_token, expires_in).into_bytes(),
    };
    parse_token_response(&response, now)
}

/// Issues a fresh JWT for [`OID`] that lives `lifetime` seconds from `now`, as Entra would.
fn entra_token(now: SystemTime, lifetime: u64, serial: u64) -> Outcome {
    let access_token = jwt(OID, unix_seconds(now) + lifetime, serial);
    entra_response(&access_token, lifetime, now)
}

/// Parses an error response of the token endpoint into the `Error` passed to the manager.
fn endpoint_error(status: u16, headers: &[(&str, &str)], body: &str) -> Error {
    let response = HttpResponse {
        status,
        headers: headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect(),
        body: body.as_bytes().to_vec(),
    };
    match parse_token_response(&response, at(T0)) {
        Ok(_) => panic!("HTTP {status} parsed as a token"),
        Err(error) => error,
    }
}

/// The body Entra sends when the client secret is wrong, for example its id instead of its
/// value.
const INVALID_SECRET_BODY: &str = concat!(
    r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret "#,
    r#"provided. Ensure the secret being sent in the request is the client secret value, "#,
    r#"not the client secret ID.\r\nTrace ID: 0d9e4a52-7c1b-4f0e-9a35-2f1c5e6d8b00\r\n"#,
    r#"Correlation ID: 6b3f2c1d-8e4a-4d5b-9c7f-1a2b3c4d5e6f","error_codes":[7000215],"#,
    r#""correlation_id":"6b3f2c1d-8e4a-4d5b-9c7f-1a2b3c4d5e6f"}"#
);

fn invalid_secret(status: u16) -> Error {
    endpoint_error(status, &[], INVALID_SECRET_BODY)
}

fn connection_refused() -> Error {
    Error::Transport {
        reason: "connection refused".into(),
        timed_out: false,
    }
}

/// Builds an unsigned JWT that has `sub` but no `oid`, like some non-Entra issuers send.
fn jwt_without_oid(exp: u64) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#);
    let payload = format!(
        r#"{{"aud":"https://redis.azure.com","exp":{exp},"sub":"app-subject","tid":"{TENANT}"}}"#
    );
    format!("{header}.{}.c2ln", URL_SAFE_NO_PAD.encode(payload))
}

/// Asserts that `delay` is a jittered backoff for failure number `failures` (1 for the
/// first) under the default policy: between half the base and the base, where the base
/// doubles from 1 s up to 60 s.
fn assert_backoff(delay: Duration, failures: u32) {
    let base = Duration::from_secs(1 << (failures - 1).min(6)).min(MAX_BACKOFF);
    assert!(
        delay >= base / 2,
        "retry delay {delay:?} after failure {failures} is below half the base {base:?}"
    );
    assert!(
        delay <= base,
        "retry delay {delay:?} after failure {failures} exceeds the base {base:?}"
    );
}

/// One entry of the driver's log, in the order it happened.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    /// A token request started.
    Request(SystemTime),
    /// The clock advanced to a deadline from `Action::WaitUntil`.
    Wake(SystemTime),
    /// `poll` returned `Action::Idle`.
    Idle(SystemTime),
}

/// A `RefreshFailed` event with the time the driver received it.
struct RefreshFailure {
    at: SystemTime,
    error: Error,
    retry_at: SystemTime,
    token_valid: bool,
}

/// Runs a `TokenManager` against a scripted endpoint on a virtual clock.
struct Driver {
    manager: TokenManager,
    now: SystemTime,
    /// The endpoint, called with the time its response arrives.
    endpoint: Box<dyn FnMut(SystemTime) -> Outcome>,
    /// How long each request takes. With zero, the response arrives when the request starts.
    latency: Duration,
    /// When the response to the request in flight arrives.
    response_due: Option<SystemTime>,
    requests: Vec<SystemTime>,
    steps: Vec<Step>,
    events: Vec<(SystemTime, Event)>,
    polls: usize,
}

impl Driver {
    fn new(
        start: SystemTime,
        username: Username,
        endpoint: impl FnMut(SystemTime) -> Outcome + 'static,
    ) -> Self {
        Driver {
            manager: TokenManager::new(Default::default(), username, SEED),
            now: start,
            endpoint: Box::new(endpoint),
            latency: Duration::ZERO,
            response_due: None,
            requests: Vec::new(),
            steps: Vec::new(),
            events: Vec::new(),
            polls: 0,
        }
    }

    /// Creates a driver whose endpoint issues a fresh token of `lifetime` seconds on every
    /// request, with username `oid`.
    fn issuing(start: SystemTime, lifetime: u64) -> Self {
        let mut serial = 0;
        Driver::new(start, Username::ObjectId, move |now| {
            serial += 1;
            entra_token(now, lifetime, serial)
        })
    }

    /// Replaces the manager with one whose jitter uses `seed`; call before running.
    fn with_seed(mut self, seed: u64) -> Self {
        self.manager = TokenManager::new(Default::default(), Username::ObjectId, seed);
        self
    }

    fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Steps the manager until `end`, leaving `now` at `end` or at the last request when
    /// `end` falls on it.
    fn run_until(&mut self, end: SystemTime) {
        assert!(
            end >= self.now,
            "cannot run back to {end:?} from {:?}",
            self.now
        );
        while self.step(end) {}
    }

    /// Steps the manager until `count` requests have started, failing if that takes past
    /// `limit`.
    fn run_until_requests(&mut self, count: usize, limit: SystemTime) {
        while self.requests.len() < count && self.step(limit) {}
        assert!(
            self.requests.len() >= count,
            "only {} of {count} requests by {limit:?}",
            self.requests.len()
        );
    }

    /// Polls once and carries out the action. Returns false when the next thing to do lies
    /// after `end` or the manager is idle, with `now` moved to `end`.
    fn step(&mut self, end: SystemTime) -> bool {
        self.polls += 1;
        assert!(
            self.polls <= MAX_POLLS,
            "more than {MAX_POLLS} polls: the manager is spinning at {:?}",
            self.now
        );
        let action = self.manager.poll(self.now);
        self.drain_events();
        let keep_going = match action {
            Action::RequestToken => {
                assert!(
                    self.response_due.is_none(),
                    "poll returned RequestToken at {:?} while a request was in flight",
                    self.now
                );
                self.requests.push(self.now);
                self.steps.push(Step::Request(self.now));
                self.response_due = Some(self.now + self.latency);
                if self.latency.is_zero() {
                    self.deliver_response();
                }
                true
            }
            Action::AwaitResponse => {
                let due = self
                    .response_due
                    .expect("poll returned AwaitResponse with no request in flight");
                if due > end {
                    self.now = end;
                    false
                } else {
                    self.now = due;
                    self.deliver_response();
                    true
                }
            }
            Action::WaitUntil(deadline) => {
                assert!(
                    self.response_due.is_none(),
                    "poll returned WaitUntil while a request was in flight"
                );
                // A deadline at `now` would make the driver poll again without time passing.
                assert!(
                    deadline > self.now,
                    "deadline {deadline:?} is not after now {:?}",
                    self.now
                );
                if deadline > end {
                    self.now = end;
                    false
                } else {
                    self.now = deadline;
                    self.steps.push(Step::Wake(deadline));
                    true
                }
            }
            Action::Idle => {
                assert!(
                    self.response_due.is_none(),
                    "poll returned Idle while a request was in flight"
                );
                self.steps.push(Step::Idle(self.now));
                self.now = end;
                false
            }
        };
        self.check_invariants();
        keep_going
    }

    fn deliver_response(&mut self) {
        self.response_due = None;
        let outcome = (self.endpoint)(self.now);
        self.manager.handle_response(self.now, outcome);
        self.drain_events();
    }

    fn drain_events(&mut self) {
        while let Some(event) = self.manager.poll_event() {
            match &event {
                Event::RefreshFailed { retry_at, .. } => assert!(
                    *retry_at >= self.now,
                    "retry_at {retry_at:?} is before now {:?}",
                    self.now
                ),
                Event::CredentialsChanged(credentials) => assert!(
                    !credentials.is_expired(self.now),
                    "published credentials that expired at {:?}",
                    credentials.expires_on()
                ),
                _ => {}
            }
            self.events.push((self.now, event));
        }
    }

    fn check_invariants(&self) {
        let now = self.now;
        let credentials = self.manager.credentials(now);
        if let Ok(credentials) = &credentials {
            assert!(
                !credentials.is_expired(now),
                "credentials() returned credentials that expired at {:?}, now {now:?}",
                credentials.expires_on()
            );
        }
        if let (Some(refresh_at), Ok(credentials)) = (self.manager.refresh_at(), &credentials) {
            assert!(
                refresh_at <= credentials.expires_on(),
                "refresh at {refresh_at:?} is after expiry {:?}",
                credentials.expires_on()
            );
        }
        let state = self.manager.state(now);
        match state {
            State::Valid | State::RefreshDue => assert!(
                credentials.is_ok(),
                "state {state:?} but credentials() failed: {credentials:?}"
            ),
            State::Expired => assert!(
                matches!(credentials, Err(Error::TokenExpired { .. })),
                "state Expired but credentials() returned {credentials:?}"
            ),
            State::Acquiring => assert!(
                matches!(credentials, Err(Error::NotAcquired { .. })),
                "state Acquiring but credentials() returned {credentials:?}"
            ),
            State::Failed => assert!(
                credentials.is_err(),
                "state Failed but credentials() returned {credentials:?}"
            ),
            _ => {}
        }
    }

    fn force_refresh(&mut self) {
        self.manager.force_refresh(self.now);
    }

    fn state(&self) -> State {
        self.manager.state(self.now)
    }

    fn credentials(&self) -> Result<Credentials, Error> {
        self.manager.credentials(self.now).cloned()
    }

    /// Times between consecutive request starts.
    fn gaps(&self) -> Vec<Duration> {
        self.requests
            .windows(2)
            .map(|pair| elapsed(pair[0], pair[1]))
            .collect()
    }

    /// Counts the wake-ups between request `first` and request `second`.
    fn wakeups_between(&self, first: usize, second: usize) -> usize {
        let position = |index: usize| {
            self.steps
                .iter()
                .position(|step| *step == Step::Request(self.requests[index]))
                .unwrap()
        };
        self.steps[position(first)..position(second)]
            .iter()
            .filter(|step| matches!(step, Step::Wake(_)))
            .count()
    }

    /// `CredentialsChanged` events with the time each was published.
    fn credential_changes(&self) -> Vec<(SystemTime, Credentials)> {
        self.events
            .iter()
            .filter_map(|(time, event)| match event {
                Event::CredentialsChanged(credentials) => Some((*time, credentials.clone())),
                _ => None,
            })
            .collect()
    }

    fn refresh_failures(&self) -> Vec<RefreshFailure> {
        self.events
            .iter()
            .filter_map(|(time, event)| match event {
                Event::RefreshFailed {
                    error,
                    retry_at,
                    token_valid,
                } => Some(RefreshFailure {
                    at: *time,
                    error: error.clone(),
                    retry_at: *retry_at,
                    token_valid: *token_valid,
                }),
                _ => None,
            })
            .collect()
    }

    /// Times of `Expired` events.
    fn expired_events(&self) -> Vec<SystemTime> {
        self.events
            .iter()
            .filter(|(_, event)| matches!(event, Event::Expired))
            .map(|(time, _)| *time)
            .collect()
    }

    /// `Failed` events with the time each was received.
    fn failed_events(&self) -> Vec<(SystemTime, Error)> {
        self.events
            .iter()
            .filter_map(|(time, event)| match event {
                Event::Failed(error) => Some((*time, error.clone())),
                _ => None,
            })
            .collect()
    }

    fn idle_polls(&self) -> usize {
        self.steps
            .iter()
            .filter(|step| matches!(step, Step::Idle(_)))
            .count()
    }
}

#[test]
fn hourly_token_refreshes_at_computed_time() {
    let mut driver = Driver::issuing(at(T0), HOUR);

    driver.run_until_requests(2, at(T0 + HOUR));

    assert_eq!(driver.requests[0], at(T0));
    // 0.7 × 3600 s = 2520 s, earlier than expiry minus the 3-minute margin (3420 s).
    assert_eq!(driver.requests[1], at(T0 + 2520));
    assert_eq!(driver.wakeups_between(0, 1), 1);
    let changes = driver.credential_changes();
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0].0, at(T0));
    assert_eq!(changes[0].1.username(), OID);
    assert_eq!(changes[0].1.expires_on(), at(T0 + HOUR));
    assert_eq!(changes[1].0, at(T0 + 2520));
    assert_eq!(changes[1].1.expires_on(), at(T0 + 2520 + HOUR));
    assert_eq!(driver.credentials().unwrap(), changes[1].1);
    assert_eq!(driver.state(), State::Valid);
}

#[test]
fn day_of_hourly_tokens_wakes_only_to_refresh() {
    let mut driver = Driver::issuing(at(T0), HOUR);

    driver.run_until(at(T0 + DAY));

    // Requests at T0, T0 + 2520, … up to the last multiple of 2520 s within the day.
    let expected: Vec<SystemTime> = (0..=DAY / 2520).map(|n| at(T0 + n * 2520)).collect();
    assert_eq!(driver.requests, expected);
    assert_eq!(driver.credential_changes().len(), expected.len());
    for index in 1..expected.len() {
        assert_eq!(
            driver.wakeups_between(index - 1, index),
            1,
            "before request {index}"
        );
    }
    assert!(driver.refresh_failures().is_empty());
    assert!(driver.expired_events().is_empty());
}

#[test]
fn refresh_offset_for_common_lifetimes() {
    // (lifetime, seconds from acquisition to the refresh request, Expired events before it)
    let cases = [
        // The one-second minimum delay puts the refresh at expiry, so the token has
        // expired by the time the request starts.
        (1, 1, 1),
        // 4 min: expiry minus the 3-minute margin (60 s) beats 0.7 × 240 s = 168 s.
        (240, 60, 0),
        // 1 h: 0.7 × 3600 s beats expiry minus the margin (3420 s).
        (3600, 2520, 0),
        // 24 h: 0.7 × 86400 s.
        (86_400, 60_480, 0),
    ];
    for (lifetime, offset, expired_events) in cases {
        let mut driver = Driver::issuing(at(T0), lifetime);

        driver.run_until_requests(2, at(T0 + lifetime));

        assert_eq!(
            elapsed(driver.requests[0], driver.requests[1]),
            Duration::from_secs(offset),
            "lifetime {lifetime} s"
        );
        assert_eq!(driver.wakeups_between(0, 1), 1, "lifetime {lifetime} s");
        assert_eq!(
            driver.expired_events().len(),
            expired_events,
            "lifetime {lifetime} s"
        );
        assert_eq!(
            driver.credential_changes().len(),
            2,
            "lifetime {lifetime} s"
        );
    }
}

#[test]
fn token_expired_on_arrival_is_retried() {
    // Requests 1–3 and 5 return a token that expires the moment it arrives.
    let mut requests = 0;
    let mut driver = Driver::new(at(T0), Username::ObjectId, move |now| {
        requests += 1;
        let lifetime = if matches!(requests, 1..=3 | 5) {
            0
        } else {
            HOUR
        };
        entra_token(now, lifetime, requests)
    });

    driver.run_until_requests(4, at(T0 + 60));

    for (index, gap) in driver.gaps().into_iter().enumerate() {
        assert_backoff(gap, index as u32 + 1);
    }
    let failures = driver.refresh_failures();
    assert_eq!(failures.len(), 3);
    for (index, failure) in failures.iter().enumerate() {
        assert!(!failure.token_valid, "failure {index}");
        assert_eq!(
            failure.retry_at,
            driver.requests[index + 1],
            "failure {index}"
        );
        let Error::InvalidResponse { status, reason } = &failure.error else {
            panic!("failure {index} is {:?}", failure.error);
        };
        assert_eq!(*status, 200);
        assert!(reason.contains("already expired"), "{reason}");
    }
    let changes = driver.credential_changes();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].0, driver.requests[3]);
    // The `exp` claim contains whole seconds and wins over the fractional `expires_in` time.
    let acquired = unix_seconds(driver.requests[3]);
    assert_eq!(changes[0].1.expires_on(), at(acquired + HOUR));

    // Expired on arrival during a refresh: reported, retried, and the current token stays.
    let hour_token = changes[0].1.clone();
    driver.run_until_requests(6, driver.requests[3] + Duration::from_secs(2600));

    let failures = driver.refresh_failures();
    assert_eq!(failures.len(), 4);
    assert!(failures[3].token_valid);
    assert_eq!(failures[3].at, driver.requests[4]);
    assert_backoff(elapsed(driver.requests[4], driver.requests[5]), 1);
    let changes = driver.credential_changes();
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[1].0, driver.requests[5]);
    assert_ne!(changes[1].1, hour_token);
}

#[test]
fn transient_failures_back_off_then_succeed() {
    let mut requests = 0;
    let mut driver = Driver::new(at(T0), Username::ObjectId, move |now| {
        requests += 1;
        match requests {
            1 => Err(endpoint_error(500, &[], "")),
            2 => Err(endpoint_error(503, &[], "")),
            3 => Err(endpoint_error(429, &[("Retry-After", "5")], "")),
            _ => entra_token(now, HOUR, requests),
        }
    });

    driver.run_until_requests(3, at(T0 + 60));
    assert_eq!(driver.state(), State::Acquiring);
    let Err(Error::NotAcquired { last_error }) = driver.credentials() else {
        panic!("expected NotAcquired, got {:?}", driver.credentials());
    };
    assert_eq!(
        last_error,
        Some(Box::new(endpoint_error(429, &[("Retry-After", "5")], "")))
    );
    driver.run_until_requests(4, at(T0 + 60));

    let gaps = driver.gaps();
    assert_backoff(gaps[0], 1);
    assert_backoff(gaps[1], 2);
    // The third base delay is at most 4 s, so the 5 s Retry-After decides.
    assert_eq!(gaps[2], Duration::from_secs(5));
    let failures = driver.refresh_failures();
    let statuses: Vec<u16> = failures
        .iter()
        .map(|failure| match &failure.error {
            Error::IdentityEndpoint(error) => error.status,
            other => panic!("unexpected error {other:?}"),
        })
        .collect();
    assert_eq!(statuses, [500, 503, 429]);
    for (index, failure) in failures.iter().enumerate() {
        assert!(failure.error.is_transient(), "failure {index}");
        assert!(!failure.token_valid, "failure {index}");
        assert_eq!(
            failure.retry_at,
            driver.requests[index + 1],
            "failure {index}"
        );
    }
    let changes = driver.credential_changes();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].0, driver.requests[3]);
    assert_eq!(driver.state(), State::Valid);
    assert_eq!(driver.manager.last_error(), None);
}

#[test]
fn backoff_doubles_to_cap_with_jitter() {
    let failing = |seed| {
        let mut requests = 0;
        let mut driver = Driver::new(at(T0), Username::ObjectId, move |now| {
            requests += 1;
            if requests <= 12 {
                Err(endpoint_error(503, &[], ""))
            } else {
                entra_token(now, HOUR, requests)
            }
        })
        .with_seed(seed);
        driver.run_until_requests(13, at(T0 + 600));
        driver
    };

    let driver = failing(SEED);
    let gaps = driver.gaps();
    for (index, gap) in gaps.iter().enumerate() {
        assert_backoff(*gap, index as u32 + 1);
    }
    // Failures 7 to 12 all have the 60 s base; jitter must spread them.
    let capped = &gaps[6..];
    assert!(
        capped.iter().any(|gap| *gap != capped[0]),
        "capped delays are all {:?}",
        capped[0]
    );
    assert_eq!(driver.credential_changes().len(), 1);

    let other_seed = failing(SEED + 1);
    assert_ne!(driver.requests, other_seed.requests);
}

#[test]
fn permanent_failure_before_first_token_fails_fast() {
    for status in [400, 401] {
        let expected = invalid_secret(status);
        let mut requests = 0;
        let mut driver = Driver::new(at(T0), Username::ObjectId, move |now| {
            requests += 1;
            if requests <= 2 {
                Err(invalid_secret(status))
            } else {
                entra_token(now, HOUR, requests)
            }
        });

        driver.run_until(at(T0 + HOUR));

        assert_eq!(driver.requests, [at(T0)], "HTTP {status}");
        let failures = driver.failed_events();
        assert_eq!(failures.len(), 1, "HTTP {status}");
        assert_eq!(failures[0], (at(T0), expected.clone()), "HTTP {status}");
        assert!(driver.refresh_failures().is_empty(), "HTTP {status}");
        assert_eq!(driver.state(), State::Failed, "HTTP {status}");
        assert_eq!(
            driver.manager.poll(driver.now),
            Action::Idle,
            "HTTP {status}"
        );
        assert_eq!(driver.credentials(), Err(expected.clone()), "HTTP {status}");
        let message = expected.to_string();
        assert!(message.contains("AADSTS7000215"), "{message}");
        assert!(message.contains("AZURE_CLIENT_SECRET"), "{message}");

        // Forcing starts exactly one request, however often it is called. The endpoint
        // still rejects the secret, so the manager is idle again.
        driver.force_refresh();
        driver.force_refresh();
        driver.force_refresh();
        driver.run_until(at(T0 + 2 * HOUR));

        assert_eq!(driver.requests, [at(T0), at(T0 + HOUR)], "HTTP {status}");
        assert_eq!(driver.failed_events().len(), 2, "HTTP {status}");
        assert_eq!(driver.state(), State::Failed, "HTTP {status}");
        assert_eq!(driver.credentials(), Err(expected), "HTTP {status}");

        // Once the secret is fixed, one more forced refresh recovers.
        driver.force_refresh();
        driver.run_until(at(T0 + 2 * HOUR + 60));

        assert_eq!(driver.requests.len(), 3, "HTTP {status}");
        assert_eq!(driver.credential_changes().len(), 1, "HTTP {status}");
        assert_eq!(driver.state(), State::Valid, "HTTP {status}");
        assert_eq!(driver.idle_polls(), 2, "HTTP {status}");
    }
}

#[test]
fn transient_error_after_forced_retry_keeps_retrying() {
    // After a permanent failure, the forced attempt meets a transient error. The manager
    // announces a retry in its RefreshFailed event, so that retry must happen.
    let mut requests = 0;
    let mut driver = Driver::new(at(T0), Username::ObjectId, move |now| {
        requests += 1;
        match requests {
            1 => Err(invalid_secret(401)),
            2 => Err(endpoint_error(503, &[], "")),
            _ => entra_token(now, HOUR, requests),
        }
    });
    driver.run_until(at(T0 + 60));
    assert_eq!(driver.state(), State::Failed);

    driver.force_refresh();
    driver.run_until_requests(2, at(T0 + 60));

    let failures = driver.refresh_failures();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].error, endpoint_error(503, &[], ""));
    assert_eq!(driver.state(), State::Acquiring);
    let Err(Error::NotAcquired { last_error }) = driver.credentials() else {
        panic!("expected NotAcquired, got {:?}", driver.credentials());
    };
    assert_eq!(last_error, Some(Box::new(endpoint_error(503, &[], ""))));

    driver.run_until(at(T0 + 120));

    assert_eq!(driver.requests.len(), 3);
    assert_eq!(driver.requests[2], failures[0].retry_at);
    assert_eq!(driver.credential_changes().len(), 1);
    assert_eq!(driver.state(), State::Valid);
}

#[test]
fn permanent_refresh_errors_keep_token_and_retry() {
    let mut requests = 0;
    let mut driver = Driver::new(at(T0), Username::ObjectId, move |now| {
        requests += 1;
        if requests == 1 || now >= at(T0 + 3000) {
            entra_token(now, HOUR, requests)
        } else {
            Err(invalid_secret(401))
        }
    });
    driver.run_until(at(T0 + 2520));
    let first = driver.credentials().unwrap();

    driver.run_until(at(T0 + 2999));

    assert_eq!(driver.state(), State::RefreshDue);
    assert_eq!(driver.credentials(), Ok(first.clone()));
    assert!(driver.failed_events().is_empty());
    let failures = driver.refresh_failures();
    assert_eq!(failures.len(), driver.requests.len() - 1);
    assert!(
        failures.len() >= 5,
        "only {} retries in 479 s",
        failures.len()
    );
    for failure in &failures {
        assert!(failure.token_valid);
        assert_eq!(failure.error, invalid_secret(401));
        assert!(!failure.error.is_transient());
    }
    for gap in &driver.gaps()[1..] {
        assert!(*gap <= MAX_BACKOFF, "gap {gap:?}");
    }

    driver.run_until(at(T0 + 3060));

    let changes = driver.credential_changes();
    assert_eq!(changes.len(), 2);
    assert!(changes[1].1.expires_on() > first.expires_on());
    assert_eq!(driver.state(), State::Valid);
}

/// Builds a driver for an identity endpoint outage: token A from T0 lives 24 h, and every
/// request from its refresh time until `outage_end` fails to connect. Later requests get B.
fn outage_driver(outage_end: SystemTime) -> Driver {
    let mut requests = 0;
    Driver::new(at(T0), Username::ObjectId, move |now| {
        requests += 1;
        if requests == 1 {
            entra_response(&jwt(OID, T0 + DAY, 1), DAY, now)
        } else if now < outage_end {
            Err(connection_refused())
        } else {
            entra_token(now, DAY, requests)
        }
    })
}

/// Asserts that requests from the refresh time on are at most the maximum backoff apart.
fn assert_retries_never_pause(driver: &Driver) {
    for (index, gap) in driver.gaps().iter().enumerate().skip(1) {
        assert!(
            *gap <= MAX_BACKOFF,
            "{gap:?} between requests {index} and {} at {:?}",
            index + 1,
            driver.requests[index]
        );
    }
}

#[test]
fn outage_before_expiry_keeps_serving_old_token() {
    let outage_end = at(T0 + 72_000);
    let token_a = jwt(OID, T0 + DAY, 1);
    let mut driver = outage_driver(outage_end);

    driver.run_until(at(T0 + 60_480));
    assert_eq!(driver.requests, [at(T0), at(T0 + 60_480)]);

    // A connection opened during the outage (T0 + 65000 among them) gets A at once.
    let checkpoints = (60_600..72_000)
        .step_by(300)
        .chain([65_000])
        .map(|offset| T0 + offset);
    let mut checkpoints: Vec<u64> = checkpoints.collect();
    checkpoints.sort_unstable();
    for checkpoint in checkpoints {
        driver.run_until(at(checkpoint));
        assert_eq!(
            driver.state(),
            State::RefreshDue,
            "at T0 + {}",
            checkpoint - T0
        );
        let credentials = driver.credentials().unwrap();
        assert_eq!(
            credentials.password(),
            token_a,
            "at T0 + {}",
            checkpoint - T0
        );
    }
    driver.run_until(at(T0 + 72_000 + 2 * 3600));

    assert_retries_never_pause(&driver);
    let outage_requests = driver
        .requests
        .iter()
        .filter(|time| **time >= at(T0 + 60_480) && **time < outage_end)
        .count();
    // 11 520 s of outage with at most 60 s between attempts.
    assert!(
        outage_requests >= 192,
        "only {outage_requests} attempts during the outage"
    );
    let failures = driver.refresh_failures();
    assert_eq!(failures.len(), outage_requests);
    for failure in &failures {
        assert!(failure.token_valid, "at {:?}", failure.at);
        assert_eq!(failure.error, connection_refused());
    }
    assert!(driver.expired_events().is_empty());
    let changes = driver.credential_changes();
    assert_eq!(changes.len(), 2);
    let (published_at, token_b) = &changes[1];
    assert!(
        *published_at >= outage_end,
        "B published at {published_at:?}"
    );
    assert!(elapsed(outage_end, *published_at) <= MAX_BACKOFF);
    assert_ne!(token_b.password(), token_a);
    assert_eq!(driver.credentials().as_ref(), Ok(token_b));
    assert_eq!(driver.state(), State::Valid);
}

#[test]
fn outage_past_expiry_reports_expired_once() {
    let outage_end = at(T0 + 90_000);
    let token_a = jwt(OID, T0 + DAY, 1);
    let mut driver = outage_driver(outage_end);

    driver.run_until(at(T0 + DAY - 1));
    assert_eq!(driver.state(), State::RefreshDue);
    assert_eq!(driver.credentials().unwrap().password(), token_a);
    assert!(driver.expired_events().is_empty());

    driver.run_until(at(T0 + DAY));

    assert_eq!(driver.expired_events(), [at(T0 + DAY)]);
    assert_eq!(driver.state(), State::Expired);
    let error = driver.credentials().unwrap_err();
    assert_eq!(
        error,
        Error::TokenExpired {
            expired_at: at(T0 + DAY),
            last_error: Some(Box::new(connection_refused())),
        }
    );
    let message = error.to_string();
    assert!(message.contains("token expired at 1767312000"), "{message}");
    assert!(
        message.contains("last error: token request failed: connection refused"),
        "{message}"
    );

    for checkpoint in (T0 + DAY + 300..T0 + 90_000).step_by(300) {
        driver.run_until(at(checkpoint));
        assert_eq!(
            driver.state(),
            State::Expired,
            "at T0 + {}",
            checkpoint - T0
        );
        assert!(
            matches!(driver.credentials(), Err(Error::TokenExpired { .. })),
            "at T0 + {}",
            checkpoint - T0
        );
    }
    driver.run_until(at(T0 + 90_000 + 3600));

    assert_retries_never_pause(&driver);
    assert_eq!(driver.expired_events(), [at(T0 + DAY)]);
    let after_expiry = driver
        .requests
        .iter()
        .filter(|time| **time >= at(T0 + DAY) && **time < outage_end)
        .count();
    // 3600 s between expiry and recovery with at most 60 s between attempts.
    assert!(
        after_expiry >= 60,
        "only {after_expiry} attempts after expiry"
    );
    for failure in driver.refresh_failures() {
        assert_eq!(
            failure.token_valid,
            failure.at < at(T0 + DAY),
            "at {:?}",
            failure.at
        );
    }
    let changes = driver.credential_changes();
    assert_eq!(changes.len(), 2);
    assert!(changes[1].0 >= outage_end);
    assert!(elapsed(outage_end, changes[1].0) <= MAX_BACKOFF);
    assert_eq!(driver.state(), State::Valid);
    assert_eq!(driver.credentials(), Ok(changes[1].1.clone()));
    assert_eq!(driver.manager.last_error(), None);
}

#[test]
fn unchanged_token_publishes_nothing_and_waits() {
    // A managed-identity endpoint serves its cached token A to requests 2 and 3.
    let token_a = jwt(OID, T0 + HOUR, 1);
    let mut requests = 0;
    let mut driver = Driver::new(at(T0), Username::ObjectId, move |now| {
        requests += 1;
        if requests <= 3 {
            let remaining = (T0 + HOUR).saturating_sub(unix_seconds(now));
            entra_response(&token_a, remaining, now)
        } else {
            entra_token(now, HOUR, requests)
        }
    });

    driver.run_until_requests(4, at(T0 + 2600));

    assert_eq!(driver.requests[1], at(T0 + 2520));
    let gaps = driver.gaps();
    assert_backoff(gaps[1], 1);
    assert_backoff(gaps[2], 2);
    assert_eq!(driver.wakeups_between(1, 2), 1);
    assert_eq!(driver.wakeups_between(2, 3), 1);
    assert!(driver.refresh_failures().is_empty());
    assert_eq!(driver.manager.last_error(), None);
    let changes = driver.credential_changes();
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0].0, at(T0));
    assert_eq!(changes[1].0, driver.requests[3]);
    assert!(changes[1].1.expires_on() > at(T0 + HOUR));
}

#[test]
fn forced_refreshes_coalesce_into_one_request() {
    let mut driver = Driver::issuing(at(T0), HOUR);
    driver.run_until(at(T0 + 600));
    assert_eq!(driver.requests.len(), 1);

    driver.force_refresh();
    driver.force_refresh();
    driver.force_refresh();
    assert_eq!(driver.state(), State::RefreshDue);
    driver.run_until(at(T0 + 600));

    assert_eq!(driver.requests, [at(T0), at(T0 + 600)]);
    assert_eq!(driver.credential_changes().len(), 2);
    assert_eq!(driver.state(), State::Valid);

    // The forced token schedules the next refresh from its own acquisition.
    driver.run_until(at(T0 + 600 + 2519));
    assert_eq!(driver.requests.len(), 2);
    driver.run_until(at(T0 + 600 + 2520));
    assert_eq!(driver.requests.len(), 3);
}

#[test]
fn forced_refresh_takes_other_token_with_same_expiry() {
    // Both tokens expire at T0 + HOUR: a forced refresh in the same second as the first
    // request, after Redis rejected token A, takes B; the cached A again changes nothing.
    let token_a = jwt(OID, T0 + HOUR, 1);
    let token_b = jwt(OID, T0 + HOUR, 2);
    let mut requests = 0;
    let mut driver = Driver::new(at(T0), Username::ObjectId, move |now| {
        requests += 1;
        let token = if requests == 2 { &token_b } else { &token_a };
        entra_response(token, T0 + HOUR - unix_seconds(now), now)
    });
    driver.run_until(at(T0));
    driver.force_refresh();
    driver.run_until(at(T0));
    assert_eq!(driver.requests.len(), 2);
    let changes = driver.credential_changes();
    assert_eq!(changes.len(), 2);
    assert_ne!(changes[0].1.password(), changes[1].1.password());

    // An unforced refresh that returns a token expiring no later changes nothing.
    driver.run_until(at(T0 + 2600));
    assert_eq!(driver.credential_changes().len(), 2);
}

#[test]
fn force_refresh_during_request_adds_none() {
    let mut driver = Driver::issuing(at(T0), HOUR).with_latency(Duration::from_secs(2));
    driver.run_until(at(T0 + 600));
    assert_eq!(driver.requests, [at(T0)]);
    // The first token arrived at T0 + 2, so it is refreshed at T0 + 2522 unless forced.

    driver.force_refresh();
    driver.run_until(at(T0 + 601));
    assert_eq!(driver.requests.len(), 2);
    assert_eq!(driver.manager.poll(driver.now), Action::AwaitResponse);
    driver.force_refresh();
    driver.force_refresh();
    driver.run_until(at(T0 + 602 + 2519));

    assert_eq!(driver.requests, [at(T0), at(T0 + 600)]);
    let changes = driver.credential_changes();
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[1].0, at(T0 + 602));
    driver.run_until(at(T0 + 602 + 2520));
    assert_eq!(driver.requests.len(), 3);
}

#[test]
fn slow_failing_requests_never_overlap() {
    // Each request times out after 10 s; the endpoint recovers at T0 + 120.
    let mut driver = Driver::new(at(T0), Username::ObjectId, |now| {
        if now < at(T0 + 120) {
            Err(Error::Transport {
                reason: "no response within 10 s".into(),
                timed_out: true,
            })
        } else {
            entra_token(now, HOUR, 2)
        }
    })
    .with_latency(Duration::from_secs(10));

    driver.run_until(at(T0 + 300));

    let failures = driver.refresh_failures();
    assert!(failures.len() >= 5, "only {} failures", failures.len());
    for (index, gap) in driver.gaps().iter().enumerate() {
        // The next request starts only after the 10 s response and the backoff.
        assert!(*gap >= Duration::from_secs(10), "gap {index} is {gap:?}");
        assert_backoff(*gap - Duration::from_secs(10), index as u32 + 1);
    }
    assert_eq!(driver.credential_changes().len(), 1);
    assert_eq!(driver.state(), State::Valid);
}

#[test]
fn retry_after_is_capped_at_five_minutes() {
    let mut requests = 0;
    let mut driver = Driver::new(at(T0), Username::ObjectId, move |now| {
        requests += 1;
        if requests == 2 {
            Err(endpoint_error(429, &[("Retry-After", "86400")], ""))
        } else {
            entra_token(now, HOUR, requests)
        }
    });

    driver.run_until_requests(3, at(T0 + HOUR));

    assert_eq!(driver.requests[1], at(T0 + 2520));
    assert_eq!(driver.requests[2], at(T0 + 2520 + 300));
    let failures = driver.refresh_failures();
    assert_eq!(failures.len(), 1);
    assert!(failures[0].token_valid);
    assert_eq!(driver.credential_changes().len(), 2);
}

#[test]
fn token_without_oid_needs_fixed_username() {
    let access_token = jwt_without_oid(T0 + HOUR);
    let issue = {
        let access_token = access_token.clone();
        move |_now: SystemTime| -> Outcome { Ok(Token::new(access_token.clone(), at(T0 + HOUR))) }
    };

    let mut driver = Driver::new(at(T0), Username::ObjectId, issue.clone());
    driver.run_until(at(T0 + 600));

    let expected = Error::InvalidToken(TokenError::MissingObjectId);
    assert_eq!(driver.requests, [at(T0)]);
    assert_eq!(driver.failed_events(), [(at(T0), expected.clone())]);
    assert_eq!(driver.state(), State::Failed);
    assert_eq!(driver.credentials(), Err(expected));
    assert!(driver.credential_changes().is_empty());

    let mut driver = Driver::new(at(T0), Username::Fixed("app".into()), issue);
    driver.run_until(at(T0 + 600));

    assert_eq!(driver.state(), State::Valid);
    let credentials = driver.credentials().unwrap();
    assert_eq!(credentials.username(), "app");
    assert_eq!(credentials.password(), access_token);
    assert_eq!(credentials.expires_on(), at(T0 + HOUR));
}
