//! The blocking provider against a mock Entra token endpoint: the exact request, each
//! kind of error body, and the renewal thread's lifetime.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use httpmock::prelude::*;

use common::jwt::{OID, TENANT, jwt, token_body};
use common::token_endpoint::{CLIENT_ID, CLIENT_SECRET, TokenEndpoint, mock_response, token_path};
use redis_entraid::blocking::EntraIdProvider;
use redis_entraid::{ClientSecretCredential, Error};

fn credential(server: &MockServer) -> ClientSecretCredential {
    ClientSecretCredential::new(TENANT, CLIENT_ID, CLIENT_SECRET)
        .unwrap()
        .with_authority_host(&server.base_url())
        .unwrap()
}

/// A token that is valid for an hour from now.
fn fresh_token_body() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    token_body(&jwt(OID, now + 3600, 1), 3600)
}

#[test]
fn token_request_has_exact_form() {
    let server = MockServer::start();
    let mock = server.mock(|when, then| {
        when.method(POST)
            .path(token_path())
            .header("content-type", "application/x-www-form-urlencoded")
            .form_urlencoded_tuple("client_id", CLIENT_ID)
            .form_urlencoded_tuple("client_secret", CLIENT_SECRET)
            .form_urlencoded_tuple("scope", "https://redis.azure.com/.default")
            .form_urlencoded_tuple("grant_type", "client_credentials");
        then.status(200).body(fresh_token_body());
    });
    let provider = EntraIdProvider::new(credential(&server));
    let credentials = provider.get_credentials().expect("token from the mock");
    assert_eq!(credentials.username(), OID);
    mock.assert_calls(1);
}

/// Starts a provider against a mock answering `status` and `body`, and returns what
/// `get_credentials` reports within `wait`, with the time it took.
fn first_result(status: u16, body: &str, wait: Duration) -> (Result<(), Error>, Duration) {
    let server = MockServer::start();
    mock_response(&server, status, body);
    let provider = EntraIdProvider::new(credential(&server));
    let started = Instant::now();
    let result = provider.get_credentials_timeout(wait).map(|_| ());
    (result, started.elapsed())
}

#[test]
fn wrong_secret_fails_fast_with_fix() {
    let body = r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value.\r\nTrace ID: t\r\nCorrelation ID: c\r\nTimestamp: 2026-01-01 00:00:00Z","error_codes":[7000215],"correlation_id":"c-1"}"#;
    for status in [400, 401] {
        let (result, elapsed) = first_result(status, body, Duration::from_secs(20));
        let error = result.unwrap_err();
        assert!(!error.is_transient(), "{error}");
        assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
        let message = error.to_string();
        assert!(message.contains("AADSTS7000215"), "{message}");
        assert!(message.contains("check AZURE_CLIENT_SECRET"), "{message}");
        assert!(message.contains("correlation id c-1"), "{message}");
        assert!(!message.contains(CLIENT_SECRET), "{message}");
    }
}

#[test]
fn tenant_not_found_names_the_cloud() {
    let body = r#"{"error":"invalid_request","error_description":"AADSTS90002: Tenant not found.","error_codes":[90002]}"#;
    let (result, _) = first_result(400, body, Duration::from_secs(20));
    let message = result.unwrap_err().to_string();
    assert!(
        message.contains("check AZURE_TENANT_ID and AZURE_AUTHORITY_HOST"),
        "{message}"
    );
}

/// Unwraps the endpoint error behind a timeout.
fn last_error(error: Error) -> Error {
    match error {
        Error::Timeout {
            last_error: Some(last),
            ..
        } => *last,
        other => panic!("expected a timeout with a last error, got {other}"),
    }
}

#[test]
fn throttling_and_server_errors_are_retried() {
    for (status, body) in [
        (429, r#"{"error":"throttled"}"#),
        (500, ""),
        (503, "<html>down</html>"),
    ] {
        let (result, _) = first_result(status, body, Duration::from_millis(1500));
        let error = last_error(result.unwrap_err());
        assert!(error.is_transient(), "{status}: {error}");
        match error {
            Error::IdentityEndpoint(e) => assert_eq!(e.status, status),
            other => panic!("{status}: {other}"),
        }
    }
}

#[test]
fn retry_after_is_read_from_throttling_response() {
    let server = MockServer::start();
    server.mock(|when, then| {
        when.method(POST).path(token_path());
        then.status(429).header("Retry-After", "30").body("{}");
    });
    let provider = EntraIdProvider::new(credential(&server));
    let error = last_error(
        provider
            .get_credentials_timeout(Duration::from_millis(800))
            .unwrap_err(),
    );
    assert_eq!(error.retry_after(), Some(Duration::from_secs(30)));
}

#[test]
fn unreadable_success_bodies_are_invalid_responses() {
    let cases = [
        ("{\"access_token\": ", "body is not JSON"),
        ("<html>maintenance</html>", "body is not JSON"),
        (r#"{"token_type":"Bearer"}"#, "`access_token` is missing"),
    ];
    for (body, reason) in cases {
        let (result, _) = first_result(200, body, Duration::from_millis(800));
        let error = last_error(result.unwrap_err());
        assert_eq!(
            error,
            Error::InvalidResponse {
                status: 200,
                reason: reason.to_owned()
            },
            "{body}"
        );
    }
}

#[test]
fn unreachable_endpoint_is_a_transport_error() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let credential = ClientSecretCredential::new(TENANT, CLIENT_ID, CLIENT_SECRET)
        .unwrap()
        .with_authority_host(&format!("http://127.0.0.1:{port}"))
        .unwrap();
    let provider = EntraIdProvider::new(credential);
    let error = last_error(
        provider
            .get_credentials_timeout(Duration::from_millis(800))
            .unwrap_err(),
    );
    assert!(
        matches!(
            error,
            Error::Transport {
                timed_out: false,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn silent_endpoint_times_out_and_callers_are_answered() {
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let credential = ClientSecretCredential::new(TENANT, CLIENT_ID, CLIENT_SECRET)
        .unwrap()
        .with_authority_host(&format!("http://127.0.0.1:{port}"))
        .unwrap()
        .with_request_timeout(Duration::from_secs(1));
    let provider = EntraIdProvider::new(credential);
    std::thread::sleep(Duration::from_millis(200));
    // A request is in flight: asking without waiting is answered at once.
    let started = Instant::now();
    let error = provider
        .get_credentials_timeout(Duration::ZERO)
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(100));
    assert!(matches!(error, Error::Timeout { .. }), "{error}");
    let error = last_error(
        provider
            .get_credentials_timeout(Duration::from_secs(3))
            .unwrap_err(),
    );
    assert!(
        matches!(
            error,
            Error::Transport {
                timed_out: true,
                ..
            }
        ),
        "{error}"
    );
    drop(listener);
}

#[test]
fn stalled_body_times_out_within_bound() {
    // Sends headers announcing 900 bytes and 100 of them, then stalls each connection.
    // The thread stays blocked in accept when the test ends, which ends with the process.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                        Content-Length: 900\r\n\r\n";
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&[b' '; 100]);
            held.push(stream);
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let credential = ClientSecretCredential::new(TENANT, CLIENT_ID, CLIENT_SECRET)
        .unwrap()
        .with_authority_host(&format!("http://127.0.0.1:{port}"))
        .unwrap()
        .with_request_timeout(Duration::from_secs(1));
    let policy = redis_entraid::RefreshPolicy::default()
        .with_initial_backoff(Duration::from_millis(100))
        .with_max_backoff(Duration::from_millis(200));
    let provider = EntraIdProvider::builder(credential)
        .refresh_policy(policy)
        .start();
    let started = Instant::now();
    // Three attempts of 1 s each and two short backoffs end within this wait.
    let error = provider
        .get_credentials_timeout(Duration::from_millis(3500))
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(4));
    let error = last_error(error);
    assert!(
        matches!(
            error,
            Error::Transport {
                timed_out: true,
                ..
            }
        ),
        "{error}"
    );
    assert!(accepted.load(Ordering::SeqCst) >= 3, "three attempts");
}

#[test]
fn renewal_continues_while_any_clone_lives() {
    let endpoint = TokenEndpoint::start(Duration::from_secs(2), None);
    let first = EntraIdProvider::new(endpoint.credential());
    let second = first.clone();
    second.get_credentials().unwrap();
    drop(first);
    // Tokens of 2 s are refreshed after the 1 s minimum delay.
    let mut changes = second.subscribe();
    assert!(
        changes.next_timeout(Duration::from_secs(5)).is_some(),
        "no renewal after drop"
    );
    assert!(endpoint.requests() >= 2);
}

#[test]
fn dropping_last_clone_stops_renewal() {
    let endpoint = TokenEndpoint::start(Duration::from_secs(2), None);
    let first = EntraIdProvider::new(endpoint.credential());
    let second = first.clone();
    first.get_credentials().unwrap();
    drop(second);
    drop(first);
    let requests = endpoint.requests();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        endpoint.requests(),
        requests,
        "requests after the last handle was dropped"
    );
}

#[test]
fn credentials_come_from_oid_claim() {
    let server = MockServer::start();
    let body = fresh_token_body();
    mock_response(&server, 200, &body);
    let token = body.split('"').nth(11).unwrap().to_owned();
    assert!(token.starts_with("ey"), "{token}");
    let provider = EntraIdProvider::new(credential(&server));
    let credentials = provider.get_credentials().unwrap();
    assert_eq!(credentials.username(), OID);
    assert_eq!(credentials.password(), token);
    assert!(!format!("{credentials:?}").contains(&token));
}

/// Panics in its first exchange, as a parser bug would, then serves a valid token.
struct PanicsOnce {
    exchanges: AtomicUsize,
    token: redis_entraid::Token,
}

struct Panicking;

impl redis_entraid::Exchange for Panicking {
    fn start(&mut self, _now: std::time::SystemTime) -> redis_entraid::Next {
        panic!("deliberate panic in a token source");
    }

    fn resume(
        &mut self,
        now: std::time::SystemTime,
        _output: Result<redis_entraid::StepOutput, Error>,
    ) -> redis_entraid::Next {
        self.start(now)
    }
}

impl redis_entraid::TokenSource for PanicsOnce {
    fn name(&self) -> &str {
        "panics once"
    }

    fn exchange(&self) -> Box<dyn redis_entraid::Exchange> {
        if self.exchanges.fetch_add(1, Ordering::SeqCst) == 0 {
            return Box::new(Panicking);
        }
        redis_entraid::StaticToken::new(self.token.clone()).exchange()
    }
}

#[test]
fn panicking_token_source_is_retried() {
    let expires = std::time::SystemTime::now() + Duration::from_secs(3600);
    let exp = expires
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let source = PanicsOnce {
        exchanges: AtomicUsize::new(0),
        token: redis_entraid::Token::new(jwt(OID, exp, 1), expires),
    };
    let policy = redis_entraid::RefreshPolicy::default()
        .with_initial_backoff(Duration::from_millis(50))
        .with_max_backoff(Duration::from_millis(100));
    let provider = EntraIdProvider::builder(source)
        .refresh_policy(policy)
        .start();
    let credentials = provider
        .get_credentials_timeout(Duration::from_secs(5))
        .expect("renewal survives the panic");
    assert_eq!(credentials.username(), OID);
}

#[test]
fn repeated_reads_follow_renewals() {
    let endpoint = TokenEndpoint::start(Duration::from_secs(3600), None);
    let provider = EntraIdProvider::new(endpoint.credential());
    let first = provider.get_credentials().unwrap();
    // A second read of the same generation comes from this thread's cache.
    assert_eq!(provider.get_credentials().unwrap(), first);

    let mut changes = provider.subscribe();
    // The mock's `exp` has one-second resolution, and a token that does not expire later
    // than the current one is ignored.
    std::thread::sleep(Duration::from_millis(1100));
    provider.force_refresh();
    let renewed = changes
        .next_timeout(Duration::from_secs(5))
        .expect("no renewal after force_refresh");
    assert_ne!(renewed.password(), first.password());
    assert_eq!(provider.get_credentials().unwrap(), renewed);
    assert_eq!(provider.get_credentials().unwrap(), renewed);
}

#[test]
fn two_providers_on_one_thread_keep_their_tokens() {
    // Different lifetimes give the two endpoints' tokens different `exp` claims.
    let first_endpoint = TokenEndpoint::start(Duration::from_secs(3600), None);
    let second_endpoint = TokenEndpoint::start(Duration::from_secs(1800), None);
    let first = EntraIdProvider::new(first_endpoint.credential());
    let second = EntraIdProvider::new(second_endpoint.credential());
    let first_token = first.get_credentials().unwrap().password().to_owned();
    let second_token = second.get_credentials().unwrap().password().to_owned();
    assert_ne!(first_token, second_token);
    // Alternating reads replace one provider's cached copy with the other's.
    for _ in 0..3 {
        assert_eq!(first.get_credentials().unwrap().password(), first_token);
        assert_eq!(second.get_credentials().unwrap().password(), second_token);
    }
}
