//! Fails when a token, a client secret, a managed-identity header value or an Azure Arc key
//! reaches a log line, an error message or a `Debug` string.
//!
//! A capturing logger records every log line at `trace` from every client-side crate,
//! because a user who turns logging up sees the lines of `redis`, `ureq` and `rustls` too. The scenarios cover
//! success with renewals, each kind of error body, expiry during an outage, `WRONGPASS`, and
//! the request and response values of each managed-identity environment. Every error's
//! `Display` and `Debug`, and the `Debug` of credentials, providers, tokens, requests and
//! responses, are collected and searched for every secret the scenarios used.

mod common;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use httpmock::prelude::*;
use log::{Level, LevelFilter, Log, Metadata, Record};

use common::azure_proxy::{AzureProxy, WRONGPASS};
use common::jwt::{OID, jwt, token_body};
use common::redis_server::RedisServer;
use common::token_endpoint::{CLIENT_SECRET, TokenEndpoint, mock_response};
use redis::Commands;
use redis_entraid::blocking::{EntraConnection, EntraIdProvider, EntraPubSub};
use redis_entraid::{
    ManagedIdentityCredential, Next, RefreshPolicy, Step, StepOutput, Token, TokenSource,
};

/// The value of `IDENTITY_HEADER` (App Service, Service Fabric) in these tests.
const IDENTITY_HEADER: &str = "identity-header-value-4d1c";
/// The value of `MSI_SECRET` (Azure ML) in these tests.
const MSI_SECRET: &str = "msi-secret-value-77a0";
/// The contents of the Azure Arc key file in these tests.
const ARC_KEY: &str = "arc-key-value-93be";

/// Every log line of every crate, as `LEVEL target: message`.
static LOG_LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct CapturingLogger;

impl Log for CapturingLogger {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        // The mock identity endpoint logs the requests it receives, secrets included, as
        // a server would; only the client side is under test.
        if record.target().starts_with("httpmock") {
            return;
        }
        let line = format!("{} {}: {}", record.level(), record.target(), record.args());
        LOG_LINES.lock().unwrap().push(line);
    }

    fn flush(&self) {}
}

static LOGGER: CapturingLogger = CapturingLogger;

/// The secrets used so far and every text that must not contain them.
#[derive(Default)]
struct Exposure {
    secrets: Vec<String>,
    texts: Vec<(String, String)>,
}

impl Exposure {
    fn secret(&mut self, secret: &str) {
        self.secrets.push(secret.to_owned());
    }

    /// Records a JWT and its payload segment, which alone identifies the token.
    fn token(&mut self, token: &str) {
        self.secret(token);
        if let Some(payload) = token.split('.').nth(1) {
            self.secret(payload);
        }
    }

    fn debug(&mut self, label: &str, value: &impl Debug) {
        self.texts
            .push((format!("{label} (Debug)"), format!("{value:?}")));
    }

    fn error<E: Debug + std::fmt::Display>(&mut self, label: &str, error: &E) {
        self.texts
            .push((format!("{label} (Display)"), error.to_string()));
        self.debug(label, error);
    }

    /// Fails with every place a secret appeared.
    fn check(&self) {
        let lines = LOG_LINES.lock().unwrap().clone();
        let logs = lines
            .iter()
            .map(|line| ("log line".to_owned(), line.clone()));
        let mut leaks = Vec::new();
        for (place, text) in self.texts.iter().cloned().chain(logs) {
            for secret in &self.secrets {
                if text.contains(secret.as_str()) {
                    leaks.push(format!(
                        "{place}: {}",
                        text.replace(secret.as_str(), "<SECRET>")
                    ));
                }
            }
        }
        assert!(
            leaks.is_empty(),
            "{} secrets leaked:\n{}",
            leaks.len(),
            leaks.join("\n")
        );
        assert!(
            lines.len() > 20,
            "the logger captured only {} lines",
            lines.len()
        );
        assert!(
            lines.iter().any(|l| l.contains("redis_entraid")),
            "no line from this crate"
        );
        assert!(
            self.texts.len() > 40,
            "only {} texts checked",
            self.texts.len()
        );
    }
}

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

fn short_policy() -> RefreshPolicy {
    RefreshPolicy::default()
        .with_margin(Duration::from_secs(2))
        .with_initial_backoff(Duration::from_millis(50))
        .with_max_backoff(Duration::from_millis(200))
}

#[test]
fn no_secret_in_logs_errors_or_debug() {
    log::set_logger(&LOGGER).expect("the only logger in this test binary");
    log::set_max_level(LevelFilter::Trace);
    log::trace!("capturing logger installed");
    let mut exposure = Exposure::default();
    exposure.secret(CLIENT_SECRET);
    exposure.secret(IDENTITY_HEADER);
    exposure.secret(MSI_SECRET);
    exposure.secret(ARC_KEY);

    renewals_wrongpass_and_expiry(&mut exposure);
    entra_error_bodies(&mut exposure);
    managed_identity_values(&mut exposure);
    arc_exchange_values(&mut exposure);
    exposure.check();
    assert!(log::max_level() >= Level::Trace);
}

/// Runs connections and a subscriber through renewals, `WRONGPASS`, and an outage past
/// expiry.
fn renewals_wrongpass_and_expiry(exposure: &mut Exposure) {
    let redis = RedisServer::start();
    let endpoint = TokenEndpoint::start(Duration::from_secs(4), Some(redis.url()));
    let proxy = AzureProxy::start(redis.port());
    let credential = endpoint.credential();
    exposure.debug("client secret credential", &credential);
    if let Next::Step(step) = credential.exchange().start(SystemTime::now()) {
        exposure.debug("client secret request", &step);
    }
    let provider = EntraIdProvider::builder(credential)
        .refresh_policy(short_policy())
        .first_token_timeout(Duration::from_secs(5))
        .start();
    let mut connection = EntraConnection::open(proxy.url(), &provider).unwrap();
    let mut pubsub = EntraPubSub::open(proxy.url(), &provider).unwrap();
    pubsub.subscribe("ch").unwrap();
    let target = provider.generation() + 1;
    let started = Instant::now();
    while provider.generation() < target {
        assert!(started.elapsed() < Duration::from_secs(10), "no renewal");
        let _: () = connection.publish("ch", "m").unwrap();
        let _ = pubsub
            .get_message_timeout(Duration::from_millis(50))
            .unwrap();
    }
    let _: () = connection.set("k", 1).unwrap();
    exposure.debug("provider", &provider);
    exposure.debug("credentials", &provider.get_credentials().unwrap());
    exposure.debug("subscriber", &pubsub);

    proxy.reject_next_command(WRONGPASS);
    proxy.reject_next_auth(WRONGPASS);
    let error = connection.set::<_, _, ()>("k", 2).unwrap_err();
    exposure.error("WRONGPASS with a fresh token", &error);
    proxy.reject_next_auth("ERR invalid username-password pair");
    proxy.reject_next_auth("ERR invalid username-password pair");
    match EntraConnection::open(proxy.url(), &provider) {
        Err(error) => exposure.error("rejected handshake", &error),
        Ok(_) => panic!("two rejected handshakes must fail"),
    }

    endpoint.set_down(true);
    let generation = provider.generation();
    let started = Instant::now();
    while provider.get_credentials().is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "token never expired"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let error = provider.get_credentials().unwrap_err();
    exposure.error("expired token", &error);
    let error = connection.set::<_, _, ()>("k", 3).unwrap_err();
    exposure.error("command after expiry", &error);
    let error = pubsub
        .get_message_timeout(Duration::from_millis(100))
        .unwrap_err();
    exposure.error("subscriber after expiry", &error);
    assert_eq!(provider.generation(), generation);

    for issued in endpoint.issued() {
        exposure.token(issued.token.expose_secret());
    }
}

/// Collects the errors for each kind of Entra error body, on the first request.
fn entra_error_bodies(exposure: &mut Exposure) {
    let token = jwt(OID, unix_now() + 3600, 900);
    exposure.token(&token);
    let cases = [
        (
            401,
            r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: t\r\nCorrelation ID: c","error_codes":[7000215],"correlation_id":"c"}"#.to_owned(),
        ),
        (400, r#"{"error":"invalid_request","error_description":"AADSTS90002: Tenant not found.","error_codes":[90002]}"#.to_owned()),
        (503, r#"{"error":"temporarily_unavailable"}"#.to_owned()),
        (429, "<html><body>Too many requests</body></html>".to_owned()),
        (500, r#"{"error":"server_error","#.to_owned()),
        (200, format!(r#"{{"access_token":"{token}","expires_in":"soon"}}"#)),
        (200, format!(r#"{{"access_token":"{token}"}}"#).replace(".c2ln", "")),
        (200, token_body(&token, 0)),
    ];
    for (status, body) in cases {
        let server = MockServer::start();
        mock_response(&server, status, &body);
        let credential = redis_entraid::ClientSecretCredential::new(
            common::jwt::TENANT,
            common::token_endpoint::CLIENT_ID,
            CLIENT_SECRET,
        )
        .unwrap()
        .with_authority_host(&server.base_url())
        .unwrap();
        let provider = EntraIdProvider::builder(credential)
            .refresh_policy(short_policy())
            .start();
        let error = provider
            .get_credentials_timeout(Duration::from_millis(300))
            .unwrap_err();
        exposure.error(&format!("HTTP {status} body"), &error);
        exposure.debug("provider after error", &provider);
    }
}

/// Collects the requests, responses, tokens and errors of the managed-identity environments
/// whose requests carry a secret header.
fn managed_identity_values(exposure: &mut Exposure) {
    let token = jwt(OID, unix_now() + 86_400, 901);
    exposure.token(&token);
    let server = MockServer::start();
    let endpoint = server.url("/msi/token");
    let environments = [
        vec![
            ("IDENTITY_ENDPOINT", endpoint.as_str()),
            ("IDENTITY_HEADER", IDENTITY_HEADER),
        ],
        vec![
            ("MSI_ENDPOINT", endpoint.as_str()),
            ("MSI_SECRET", MSI_SECRET),
        ],
        vec![
            (
                "IDENTITY_ENDPOINT",
                "https://localhost:2377/metadata/identity/oauth2/token",
            ),
            ("IDENTITY_HEADER", IDENTITY_HEADER),
            (
                "IDENTITY_SERVER_THUMBPRINT",
                "0123456789abcdef0123456789abcdef01234567",
            ),
        ],
    ];
    let success = format!(
        r#"{{"access_token":"{token}","expires_on":"{}","resource":"https://redis.azure.com","token_type":"Bearer"}}"#,
        unix_now() + 86_400
    );
    let responses = [
        (200, success),
        (500, r#"{"statusCode":500,"message":"An unexpected error occured while fetching the AAD Token."}"#.to_owned()),
        (400, r#"{"error":"invalid_request","error_description":"Identity not found"}"#.to_owned()),
        (401, r#"{"error":{"correlationId":"c","code":"SecretHeaderNotFound","message":"Secret is not found in the request headers."}}"#.to_owned()),
        (200, format!(r#"{{"access_token":"{token}","expires_on":"tomorrow"}}"#)),
    ];
    for pairs in environments {
        let credential = ManagedIdentityCredential::from_env(lookup(&pairs)).unwrap();
        exposure.debug("managed identity credential", &credential);
        for (status, body) in &responses {
            let mut exchange = credential.exchange();
            let Next::Step(step) = exchange.start(SystemTime::now()) else {
                panic!("a managed-identity exchange starts with a request");
            };
            exposure.debug("managed identity request", &step);
            let response = redis_entraid::HttpResponse {
                status: *status,
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: body.clone().into_bytes(),
            };
            exposure.debug("managed identity response", &response);
            match exchange.resume(SystemTime::now(), Ok(StepOutput::Http(response))) {
                Next::Done(Ok(token)) => exposure.debug("managed identity token", &token),
                Next::Done(Err(error)) => exposure.error("managed identity error", &error),
                Next::Step(step) => exposure.debug("unexpected step", &step),
            }
        }
    }
    let token = Token::new(token, SystemTime::now());
    exposure.debug("token", &token);
}

/// Drives the Azure Arc exchange, whose second request carries the key file's contents.
fn arc_exchange_values(exposure: &mut Exposure) {
    let keys = std::env::temp_dir().join(format!("redis-entraid-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&keys).unwrap();
    let key_path = keys.join("challenge.key");
    let credential = ManagedIdentityCredential::from_env(lookup(&[
        (
            "IDENTITY_ENDPOINT",
            "http://127.0.0.1:1/metadata/identity/oauth2/token",
        ),
        ("IMDS_ENDPOINT", "http://127.0.0.1:1"),
    ]))
    .unwrap()
    .with_arc_key_directory(&keys);
    let mut exchange = credential.exchange();
    let challenge = redis_entraid::HttpResponse {
        status: 401,
        headers: vec![(
            "WWW-Authenticate".into(),
            format!("Basic realm={}", key_path.display()),
        )],
        body: Vec::new(),
    };
    let _ = exchange.start(SystemTime::now());
    let read = exchange.resume(SystemTime::now(), Ok(StepOutput::Http(challenge)));
    assert!(
        matches!(read, Next::Step(Step::ReadFile { .. })),
        "{read:?}"
    );
    let request = exchange.resume(
        SystemTime::now(),
        Ok(StepOutput::File(ARC_KEY.as_bytes().to_vec())),
    );
    let Next::Step(Step::Http(request)) = request else {
        panic!("the key leads to the token request: {request:?}");
    };
    assert!(
        request
            .headers
            .iter()
            .any(|(_, value)| value.contains(ARC_KEY)),
        "the request carries the key"
    );
    exposure.debug("Azure Arc token request", &request);
    let failure = redis_entraid::HttpResponse {
        status: 401,
        headers: Vec::new(),
        body: br#"{"error":"unauthorized","error_description":"bad key"}"#.to_vec(),
    };
    if let Next::Done(Err(error)) =
        exchange.resume(SystemTime::now(), Ok(StepOutput::Http(failure)))
    {
        exposure.error("Azure Arc error", &error);
    }
    let _ = std::fs::remove_dir_all(&keys);
}
