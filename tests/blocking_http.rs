//! The blocking provider against a mock Entra token endpoint: the exact request, each
//! kind of error body, and the renewal thread's lifetime.

mod common;

use std::net::TcpListener;
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
