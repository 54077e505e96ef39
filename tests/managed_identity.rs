//! Managed identity through the blocking provider, against endpoints on loopback: the
//! exact request of each hosting environment, the IMDS retry sequences, the Azure Arc
//! challenge with a key file, and Service Fabric's thumbprint-pinned TLS.
//!
//! Every credential is built from an injected environment that points at a local mock,
//! so no test reaches 169.254.169.254 or any other non-loopback address.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use httpmock::prelude::*;
use httpmock::{HttpMockRequest, HttpMockResponse};

use common::jwt::{OID, jwt};
use redis_entraid::blocking::EntraIdProvider;
use redis_entraid::{
    Error, HostingEnvironment, ManagedIdentityCredential, RefreshPolicy, UserAssigned,
};

const TOKEN_PATH: &str = "/metadata/identity/oauth2/token";
const RESOURCE: &str = "https://redis.azure.com";
const CLIENT_ID: &str = "99999999-8888-7777-6666-555555555555";
/// How long a test waits for credentials that should arrive.
const WAIT: Duration = Duration::from_secs(10);

fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let env: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| env.get(name).cloned()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Builds an IMDS success body, with every value a string as IMDS sends them.
fn imds_body() -> String {
    let expires_on = unix_now() + 86399;
    format!(
        r#"{{"access_token":"{}","client_id":"{CLIENT_ID}","expires_in":"86399","expires_on":"{expires_on}","ext_expires_in":"86399","not_before":"{}","resource":"{RESOURCE}","token_type":"Bearer"}}"#,
        jwt(OID, expires_on, 1),
        unix_now()
    )
}

/// Retries after 50 ms, doubling to 200 ms, so retry sequences take well under a second.
fn fast_retries() -> RefreshPolicy {
    RefreshPolicy::default()
        .with_initial_backoff(Duration::from_millis(50))
        .with_max_backoff(Duration::from_millis(200))
}

fn start(credential: ManagedIdentityCredential) -> EntraIdProvider {
    EntraIdProvider::builder(credential)
        .refresh_policy(fast_retries())
        .start()
}

fn imds_credential(server: &MockServer) -> ManagedIdentityCredential {
    let credential = ManagedIdentityCredential::from_env(lookup(&[(
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        &server.base_url(),
    )]))
    .unwrap();
    assert_eq!(credential.hosting_environment(), HostingEnvironment::Imds);
    credential
}

/// One response of a scripted sequence.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, &'static str)>,
    body: String,
}

fn reply(status: u16, body: &str) -> Reply {
    Reply {
        status,
        headers: vec![],
        body: body.to_owned(),
    }
}

/// The requests a scripted IMDS mock received: when, and whether each carried `Metadata:
/// true`, the Redis resource and the expected `client_id`.
#[derive(Default)]
struct Seen {
    times: Vec<Instant>,
    well_formed: Vec<bool>,
}

/// Serves `replies` in order on the IMDS token path, repeating the last one, and records
/// every request.
fn scripted_imds(
    server: &MockServer,
    replies: Vec<Reply>,
    client_id: Option<&'static str>,
) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = Arc::clone(&seen);
    let served = AtomicUsize::new(0);
    server.mock(move |when, then| {
        when.path(TOKEN_PATH);
        then.respond_with(move |request: &HttpMockRequest| {
            let query: HashMap<String, String> = request.query_params().into_iter().collect();
            let metadata = request
                .headers_vec()
                .iter()
                .any(|(name, value)| name.eq_ignore_ascii_case("metadata") && value == "true");
            let well_formed = request.method_str() == "GET"
                && metadata
                && query.get("api-version").map(String::as_str) == Some("2018-02-01")
                && query.get("resource").map(String::as_str) == Some(RESOURCE)
                && query.get("client_id").map(String::as_str) == client_id;
            let mut seen = record.lock().unwrap();
            seen.times.push(Instant::now());
            seen.well_formed.push(well_formed);
            let index = served.fetch_add(1, Ordering::SeqCst).min(replies.len() - 1);
            let reply = &replies[index];
            let mut response = HttpMockResponse::builder()
                .status(reply.status)
                .header("content-type", "application/json");
            for (name, value) in &reply.headers {
                response = response.header(*name, *value);
            }
            response.body(reply.body.clone()).build()
        });
    });
    seen
}

fn assert_all_well_formed(seen: &Mutex<Seen>, expected_requests: usize) {
    let seen = seen.lock().unwrap();
    assert_eq!(seen.times.len(), expected_requests);
    for (index, ok) in seen.well_formed.iter().enumerate() {
        assert!(
            ok,
            "request {index} lacks Metadata: true or the expected query"
        );
    }
}

#[test]
fn imds_system_assigned_request() {
    let server = MockServer::start();
    let mock = server.mock(|when, then| {
        when.method(GET)
            .path(TOKEN_PATH)
            .header("metadata", "true")
            .query_param("api-version", "2018-02-01")
            .query_param("resource", RESOURCE)
            .query_param_missing("client_id")
            .query_param_missing("object_id")
            .query_param_missing("msi_res_id");
        then.status(200).body(imds_body());
    });
    let provider = start(imds_credential(&server));
    let credentials = provider.get_credentials_timeout(WAIT).unwrap();
    assert_eq!(credentials.username(), OID);
    mock.assert_calls(1);
}

#[test]
fn imds_user_assigned_selectors() {
    let selectors = [
        (UserAssigned::ClientId(CLIENT_ID.into()), "client_id"),
        (UserAssigned::ObjectId(OID.into()), "object_id"),
        (
            UserAssigned::ResourceId("/subscriptions/s/resourceGroups/g/x".into()),
            "msi_res_id",
        ),
    ];
    for (identity, parameter) in selectors {
        let server = MockServer::start();
        let mock = server.mock(|when, then| {
            when.method(GET)
                .path(TOKEN_PATH)
                .header("metadata", "true")
                .query_param("resource", RESOURCE)
                .query_param(parameter, identity.id());
            then.status(200).body(imds_body());
        });
        let credential = imds_credential(&server)
            .with_user_assigned(identity.clone())
            .unwrap();
        let provider = start(credential);
        assert!(provider.get_credentials_timeout(WAIT).is_ok(), "{identity}");
        mock.assert_calls(1);
    }
}

#[test]
fn imds_410_retried_until_success() {
    let server = MockServer::start();
    let upgrading = reply(410, "");
    let seen = scripted_imds(
        &server,
        vec![
            upgrading.clone(),
            upgrading.clone(),
            upgrading,
            reply(200, &imds_body()),
        ],
        None,
    );
    let provider = start(imds_credential(&server));
    assert!(provider.get_credentials_timeout(WAIT).is_ok());
    assert_all_well_formed(&seen, 4);
}

#[test]
fn imds_429_waits_for_retry_after() {
    let server = MockServer::start();
    let throttled = Reply {
        status: 429,
        headers: vec![("Retry-After", "5")],
        body: String::new(),
    };
    let seen = scripted_imds(&server, vec![throttled, reply(200, &imds_body())], None);
    let provider = start(imds_credential(&server));
    assert!(provider.get_credentials_timeout(WAIT).is_ok());
    assert_all_well_formed(&seen, 2);
    let times = &seen.lock().unwrap().times;
    let waited = times[1] - times[0];
    assert!(waited >= Duration::from_secs(5), "waited {waited:?}");
}

#[test]
fn imds_server_errors_back_off() {
    let server = MockServer::start();
    let seen = scripted_imds(
        &server,
        vec![reply(500, ""), reply(503, ""), reply(200, &imds_body())],
        None,
    );
    let provider = start(imds_credential(&server));
    assert!(provider.get_credentials_timeout(WAIT).is_ok());
    assert_all_well_formed(&seen, 3);
    // Jitter picks between half the base delay and the base: 25–50 ms, then 50–100 ms.
    let times = &seen.lock().unwrap().times;
    let first = times[1] - times[0];
    let second = times[2] - times[1];
    assert!(first >= Duration::from_millis(25), "first delay {first:?}");
    assert!(
        second >= Duration::from_millis(50),
        "second delay {second:?}"
    );
}

#[test]
fn identity_not_found_fails_fast() {
    let server = MockServer::start();
    let body = r#"{"error":"invalid_request","error_description":"Identity not found"}"#;
    let seen = scripted_imds(&server, vec![reply(400, body)], Some(CLIENT_ID));
    let credential = imds_credential(&server)
        .with_user_assigned(UserAssigned::ClientId(CLIENT_ID.into()))
        .unwrap();
    let provider = start(credential);
    let started = Instant::now();
    let error = provider.get_credentials_timeout(WAIT).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(error, Error::Config { .. }), "{error}");
    assert!(error.to_string().contains(CLIENT_ID), "{error}");
    // Not retried: give a retry time to happen, then count.
    std::thread::sleep(Duration::from_millis(300));
    assert_all_well_formed(&seen, 1);
}

#[test]
fn imds_404_retried() {
    let server = MockServer::start();
    let seen = scripted_imds(
        &server,
        vec![reply(404, ""), reply(200, &imds_body())],
        None,
    );
    let provider = start(imds_credential(&server));
    assert!(provider.get_credentials_timeout(WAIT).is_ok());
    assert_all_well_formed(&seen, 2);
}

/// Drives a token manager with default retry settings on a virtual clock against an IMDS
/// that returns 410 until `T0 + 75 s`, longer than the 70 s Microsoft gives an IMDS
/// upgrade. The manager retries transient errors without limit, 1 s doubling to 60 s,
/// so the outage costs a handful of attempts and never a permanent failure.
#[test]
fn imds_410_budget_exceeds_70_seconds() {
    use common::jwt::T0;
    use redis_entraid::{Action, Next, State, StepOutput, TokenManager, TokenSource, Username};

    let credential = ManagedIdentityCredential::from_env(lookup(&[])).unwrap();
    let mut manager = TokenManager::new(RefreshPolicy::default(), Username::ObjectId, 7);
    let start = UNIX_EPOCH + Duration::from_secs(T0);
    let recovery = start + Duration::from_secs(75);
    let mut now = start;
    let mut attempts = 0;
    while manager.credentials(now).is_err() {
        assert_ne!(manager.state(now), State::Failed);
        match manager.poll(now) {
            Action::RequestToken => {
                attempts += 1;
                let mut exchange = credential.exchange();
                let Next::Step(_) = exchange.start(now) else {
                    panic!("expected the IMDS request");
                };
                let response = if now < recovery {
                    redis_entraid::HttpResponse {
                        status: 410,
                        headers: vec![],
                        body: Vec::new(),
                    }
                } else {
                    let body = format!(
                        r#"{{"access_token":"{}","expires_in":"86399"}}"#,
                        jwt(OID, T0 + 86475, 1)
                    );
                    redis_entraid::HttpResponse {
                        status: 200,
                        headers: vec![],
                        body: body.into_bytes(),
                    }
                };
                let Next::Done(outcome) = exchange.resume(now, Ok(StepOutput::Http(response)))
                else {
                    panic!("expected the outcome");
                };
                manager.handle_response(now, outcome);
            }
            Action::WaitUntil(at) => now = at,
            other => panic!("unexpected action {other:?}"),
        }
    }
    assert!(now >= recovery);
    // Delays of 1, 2, 4, 8, 16, 32 and 60 s, each jittered down to half at most, put the
    // first attempt after 75 s at number 8 or 9.
    assert!((8..=9).contains(&attempts), "{attempts} attempts");
}

/// Reads one HTTP request head from `stream` and returns it.
fn read_head(stream: &mut impl Read) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

fn write_response(stream: &mut impl Write, body: &str) {
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.flush();
}

#[test]
fn connection_refused_retried() {
    // Reserve a free port, then close it so connections to it are refused.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = format!("http://127.0.0.1:{port}");
    let credential = ManagedIdentityCredential::from_env(lookup(&[(
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        &host,
    )]))
    .unwrap();
    let provider = start(credential);
    // 50 ms, 100 ms, then 200 ms between attempts at most: 600 ms leaves room for three.
    std::thread::sleep(Duration::from_millis(600));
    let error = provider
        .get_credentials_timeout(Duration::from_millis(10))
        .unwrap_err();
    let Error::Timeout {
        last_error: Some(last),
        ..
    } = error
    else {
        panic!("expected a timeout with the refused connection, got {error}");
    };
    assert!(
        matches!(
            *last,
            Error::Transport {
                timed_out: false,
                ..
            }
        ),
        "{last}"
    );
    assert!(last.is_transient());

    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let head = read_head(&mut stream);
        write_response(&mut stream, &imds_body());
        head
    });
    assert!(provider.get_credentials_timeout(WAIT).is_ok());
    let head = server.join().unwrap().to_ascii_lowercase();
    assert!(head.contains("\r\nmetadata: true\r\n"), "{head}");
    assert!(
        head.starts_with(
            "get /metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3a%2f%2fredis.azure.com "
        ),
        "{head}"
    );
}

#[test]
fn app_service_request() {
    let server = MockServer::start();
    let expires_on = unix_now() + 86399;
    let mock = server.mock(|when, then| {
        when.method(GET)
            .path("/msi/token")
            .header("x-identity-header", "app-header")
            .query_param("api-version", "2019-08-01")
            .query_param("resource", RESOURCE)
            .query_param("principal_id", OID);
        then.status(200).body(format!(
            r#"{{"access_token":"{}","expires_on":"{expires_on}","resource":"{RESOURCE}","token_type":"Bearer","client_id":"{CLIENT_ID}"}}"#,
            jwt(OID, expires_on, 1)
        ));
    });
    let endpoint = server.url("/msi/token");
    let credential = ManagedIdentityCredential::from_env(lookup(&[
        ("IDENTITY_ENDPOINT", &endpoint),
        ("IDENTITY_HEADER", "app-header"),
    ]))
    .unwrap()
    .with_user_assigned(UserAssigned::ObjectId(OID.into()))
    .unwrap();
    assert_eq!(
        credential.hosting_environment(),
        HostingEnvironment::AppService
    );
    let provider = start(credential);
    assert!(provider.get_credentials_timeout(WAIT).is_ok());
    mock.assert_calls(1);
}

/// Formats Unix seconds as the Windows form of the App Service 2017-09-01 API, such as
/// `1/16/2020 5:24:12 AM +00:00`.
fn windows_date(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let seconds = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let hour = seconds / 3600;
    let (hour12, meridiem) = match hour {
        0 => (12, "AM"),
        1..=11 => (hour, "AM"),
        12 => (12, "PM"),
        _ => (hour - 12, "PM"),
    };
    format!(
        "{month}/{day}/{year} {hour12}:{:02}:{:02} {meridiem} +00:00",
        seconds % 3600 / 60,
        seconds % 60
    )
}

#[test]
fn azure_ml_date_expiry_and_clientid() {
    let server = MockServer::start();
    let expires_on = unix_now() + 3600;
    let mock = server.mock(|when, then| {
        when.method(GET)
            .path("/MSI/auth")
            .header("secret", "ml-secret")
            .query_param("api-version", "2017-09-01")
            .query_param("resource", RESOURCE)
            .query_param("clientid", CLIENT_ID);
        then.status(200).body(format!(
            r#"{{"access_token":"{}","expires_on":"{}","resource":"{RESOURCE}","token_type":"Bearer"}}"#,
            jwt(OID, expires_on + 600, 1),
            windows_date(expires_on)
        ));
    });
    let endpoint = server.url("/MSI/auth");
    let credential = ManagedIdentityCredential::from_env(lookup(&[
        ("MSI_ENDPOINT", &endpoint),
        ("MSI_SECRET", "ml-secret"),
        ("DEFAULT_IDENTITY_CLIENT_ID", CLIENT_ID),
    ]))
    .unwrap();
    assert_eq!(
        credential.hosting_environment(),
        HostingEnvironment::AzureMl
    );
    let provider = start(credential);
    let credentials = provider.get_credentials_timeout(WAIT).unwrap();
    // The date in the body, earlier than the token's `exp`, is the expiry.
    assert_eq!(
        credentials.expires_on(),
        UNIX_EPOCH + Duration::from_secs(expires_on)
    );
    mock.assert_calls(1);
}

#[test]
fn cloud_shell_posts_resource() {
    let server = MockServer::start();
    let mock = server.mock(|when, then| {
        when.method(POST)
            .path("/oauth2/token")
            .header("metadata", "true")
            .header("content-type", "application/x-www-form-urlencoded")
            .form_urlencoded_tuple("resource", RESOURCE);
        then.status(200).body(imds_body());
    });
    let endpoint = server.url("/oauth2/token");
    let credential =
        ManagedIdentityCredential::from_env(lookup(&[("MSI_ENDPOINT", &endpoint)])).unwrap();
    assert_eq!(
        credential.hosting_environment(),
        HostingEnvironment::CloudShell
    );
    let provider = start(credential);
    assert!(provider.get_credentials_timeout(WAIT).is_ok());
    mock.assert_calls(1);
}

/// A directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "redis-entraid-{name}-{}-{}",
            std::process::id(),
            unix_now()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn arc_credential(server: &MockServer, keys: &TempDir) -> ManagedIdentityCredential {
    let endpoint = server.url(TOKEN_PATH);
    let credential = ManagedIdentityCredential::from_env(lookup(&[
        ("IDENTITY_ENDPOINT", &endpoint),
        ("IMDS_ENDPOINT", &server.base_url()),
    ]))
    .unwrap()
    .with_arc_key_directory(&keys.0);
    assert_eq!(
        credential.hosting_environment(),
        HostingEnvironment::AzureArc
    );
    credential
}

#[test]
fn arc_challenge_flow() {
    let keys = TempDir::new("arc-keys");
    let key_path = keys.0.join("challenge-1.key");
    std::fs::write(&key_path, "arc-key-secret").unwrap();
    let server = MockServer::start();
    let challenge = server.mock(|when, then| {
        when.method(GET)
            .path(TOKEN_PATH)
            .header("metadata", "true")
            .query_param("api-version", "2020-06-01")
            .query_param("resource", RESOURCE)
            .header_missing("authorization");
        then.status(401).header(
            "WWW-Authenticate",
            format!("Basic realm={}", key_path.display()),
        );
    });
    let token = server.mock(|when, then| {
        when.method(GET)
            .path(TOKEN_PATH)
            .header("metadata", "true")
            .query_param("api-version", "2020-06-01")
            .query_param("resource", RESOURCE)
            .header("authorization", "Basic arc-key-secret");
        then.status(200).body(imds_body());
    });
    let provider = start(arc_credential(&server, &keys));
    let credentials = provider.get_credentials_timeout(WAIT).unwrap();
    assert_eq!(credentials.username(), OID);
    challenge.assert_calls(1);
    token.assert_calls(1);
}

#[test]
fn arc_rejects_key_outside_directory() {
    let keys = TempDir::new("arc-keys-expected");
    let elsewhere = TempDir::new("arc-keys-elsewhere");
    let key_path = elsewhere.0.join("challenge-1.key");
    std::fs::write(&key_path, "arc-key-secret").unwrap();
    let server = MockServer::start();
    server.mock(|when, then| {
        when.path(TOKEN_PATH).header_missing("authorization");
        then.status(401).header(
            "WWW-Authenticate",
            format!("Basic realm={}", key_path.display()),
        );
    });
    let token = server.mock(|when, then| {
        when.path(TOKEN_PATH).header_exists("authorization");
        then.status(200).body(imds_body());
    });
    let provider = start(arc_credential(&server, &keys));
    let error = provider.get_credentials_timeout(WAIT).unwrap_err();
    assert!(
        matches!(&error, Error::Config { setting, .. } if setting == "Azure Arc key file"),
        "{error}"
    );
    token.assert_calls(0);
}

#[test]
fn arc_rejects_oversized_key_file() {
    let keys = TempDir::new("arc-keys-large");
    let key_path = keys.0.join("challenge-1.key");
    std::fs::write(&key_path, "k".repeat(4097)).unwrap();
    let server = MockServer::start();
    server.mock(|when, then| {
        when.path(TOKEN_PATH).header_missing("authorization");
        then.status(401).header(
            "WWW-Authenticate",
            format!("Basic realm={}", key_path.display()),
        );
    });
    let provider = start(arc_credential(&server, &keys));
    let error = provider.get_credentials_timeout(WAIT).unwrap_err();
    assert!(
        error.to_string().contains("larger than 4096 bytes"),
        "{error}"
    );
}

// Service Fabric, over TLS with a self-signed certificate made for these tests (see
// tests/fixtures/README.md).

const FABRIC_CERT: &[u8] = include_bytes!("fixtures/service_fabric_cert.der");
const FABRIC_KEY: &[u8] = include_bytes!("fixtures/service_fabric_key.der");

/// Starts a TLS server on loopback that responds to each request with a token and reports its
/// head. It stops after `connections` connections or [`WAIT`], whichever comes first.
fn fabric_server(connections: usize) -> (u16, std::sync::mpsc::Receiver<String>) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(FABRIC_CERT.to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(FABRIC_KEY.to_vec())),
        )
        .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (heads, received) = std::sync::mpsc::channel();
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + WAIT;
    std::thread::spawn(move || {
        let mut accepted = 0;
        while accepted < connections && Instant::now() < deadline {
            let stream: TcpStream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
            };
            accepted += 1;
            stream.set_nonblocking(false).unwrap();
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let connection = rustls::ServerConnection::new(Arc::clone(&config)).unwrap();
            let mut tls = rustls::StreamOwned::new(connection, stream);
            let head = read_head(&mut tls);
            if head.is_empty() {
                continue; // The client rejected the certificate.
            }
            let body = format!(
                r#"{{"token_type":"Bearer","access_token":"{}","expires_on":{},"resource":"{RESOURCE}"}}"#,
                jwt(OID, unix_now() + 86399, 1),
                unix_now() + 86399
            );
            write_response(&mut tls, &body);
            tls.conn.send_close_notify();
            let _ = tls.flush();
            let _ = heads.send(head);
        }
    });
    (port, received)
}

fn fabric_credential(port: u16, thumbprint: &str) -> ManagedIdentityCredential {
    let endpoint = format!("https://127.0.0.1:{port}{TOKEN_PATH}");
    let credential = ManagedIdentityCredential::from_env(lookup(&[
        ("IDENTITY_ENDPOINT", &endpoint),
        ("IDENTITY_HEADER", "fabric-header"),
        ("IDENTITY_SERVER_THUMBPRINT", thumbprint),
    ]))
    .unwrap();
    assert_eq!(
        credential.hosting_environment(),
        HostingEnvironment::ServiceFabric
    );
    credential
}

fn sha1_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02X}")).collect()
}

#[test]
fn service_fabric_pinned_certificate() {
    let (port, heads) = fabric_server(1);
    let provider = start(fabric_credential(port, &sha1_hex(FABRIC_CERT)));
    let credentials = provider.get_credentials_timeout(WAIT).unwrap();
    assert_eq!(credentials.username(), OID);
    let head = heads.recv_timeout(WAIT).unwrap().to_ascii_lowercase();
    assert!(
        head.starts_with(
            "get /metadata/identity/oauth2/token?api-version=2019-07-01-preview&resource=https%3a%2f%2fredis.azure.com "
        ),
        "{head}"
    );
    assert!(head.contains("\r\nsecret: fabric-header\r\n"), "{head}");
}

#[test]
fn service_fabric_other_certificate_rejected() {
    let (port, heads) = fabric_server(100);
    let wrong = "00".repeat(20);
    let provider = start(fabric_credential(port, &wrong));
    let error = provider
        .get_credentials_timeout(Duration::from_millis(500))
        .unwrap_err();
    let Error::Timeout {
        last_error: Some(last),
        ..
    } = error
    else {
        panic!("expected a timeout with the TLS failure, got {error}");
    };
    assert!(matches!(*last, Error::Transport { .. }), "{last}");
    assert!(last.to_string().contains("certificate"), "{last}");
    assert!(heads.try_recv().is_err(), "the request reached the server");
}
