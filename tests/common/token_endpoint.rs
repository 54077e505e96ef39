//! A mock Entra token endpoint on loopback that issues short-lived JWTs and, optionally,
//! lets a `redis-server` accept each token for its `oid` only until it expires.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use httpmock::prelude::*;
use httpmock::{HttpMockResponse, Mock};

use super::jwt::{OID, TENANT, jwt, token_body};
use redis_entraid::{ClientSecretCredential, Secret};

/// The client id the mock expects.
pub const CLIENT_ID: &str = "99999999-8888-7777-6666-555555555555";
/// The client secret the mock expects.
pub const CLIENT_SECRET: &str = "mock-client-secret";

/// One token the endpoint issued.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The JWT.
    pub token: Secret,
    /// Its expiry, Unix seconds.
    pub exp: u64,
}

struct State {
    issued: Mutex<Vec<Issued>>,
    serial: AtomicU64,
    /// When set, every request gets the most recently issued token again.
    repeat: AtomicBool,
    /// When set, every request fails with HTTP 503.
    down: AtomicBool,
    /// When above 0, every request whose number is a multiple of it fails with HTTP 503.
    fail_every: AtomicU64,
    /// Counts the requests answered with an error.
    failures: AtomicU64,
    /// When each request arrived.
    requested_at: Mutex<Vec<Instant>>,
    redis_url: Option<String>,
    lifetime: Duration,
}

/// The mock endpoint; the server stops when this is dropped.
pub struct TokenEndpoint {
    pub server: MockServer,
    issuer: Arc<Issuer>,
}

impl TokenEndpoint {
    /// Starts an endpoint that issues tokens valid for `lifetime`.
    ///
    /// With `redis_url`, each issued token becomes a password of the ACL user named after
    /// `OID`, and is removed again when it expires, as Azure accepts a token only until its
    /// `exp`.
    pub fn start(lifetime: Duration, redis_url: Option<String>) -> Self {
        let issuer = Issuer::start(lifetime, redis_url);
        let server = MockServer::start();
        let responder = Arc::clone(&issuer);
        server.mock(|when, then| {
            when.method(POST).path(token_path());
            then.respond_with(move |_| {
                let (status, body) = responder.issue();
                HttpMockResponse::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(body)
                    .build()
            });
        });
        TokenEndpoint { server, issuer }
    }

    /// A client-secret credential pointed at this mock.
    pub fn credential(&self) -> ClientSecretCredential {
        credential_for(&self.server.base_url())
    }

    /// All tokens issued so far, oldest first.
    pub fn issued(&self) -> Vec<Issued> {
        self.issuer.issued()
    }

    /// Makes the endpoint answer with the last issued token again (`true`), as a
    /// managed-identity cache does, or issue fresh ones (`false`).
    pub fn repeat_last_token(&self, repeat: bool) {
        self.issuer.repeat_last_token(repeat);
    }

    /// Counts the token requests served.
    pub fn requests(&self) -> u64 {
        self.issuer.requests()
    }

    /// See [`Issuer::set_down`].
    pub fn set_down(&self, down: bool) {
        self.issuer.set_down(down);
    }

    /// See [`Issuer::fail_every`].
    pub fn fail_every(&self, n: u64) {
        self.issuer.fail_every(n);
    }

    /// See [`Issuer::failures`].
    pub fn failures(&self) -> u64 {
        self.issuer.failures()
    }

    /// See [`Issuer::request_times`].
    pub fn request_times(&self) -> Vec<Instant> {
        self.issuer.request_times()
    }
}

/// A client-secret credential for the mock tenant at `base_url`.
pub fn credential_for(base_url: &str) -> ClientSecretCredential {
    ClientSecretCredential::new(TENANT, CLIENT_ID, CLIENT_SECRET)
        .unwrap()
        .with_authority_host(base_url)
        .unwrap()
}

/// Issues tokens and keeps the Redis ACL in step with them, for any HTTP front end.
pub struct Issuer {
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    reaper: Option<JoinHandle<()>>,
}

impl Issuer {
    /// Starts issuing tokens valid for `lifetime`; see [`TokenEndpoint::start`].
    pub fn start(lifetime: Duration, redis_url: Option<String>) -> Arc<Self> {
        let state = Arc::new(State {
            issued: Mutex::new(Vec::new()),
            serial: AtomicU64::new(0),
            repeat: AtomicBool::new(false),
            down: AtomicBool::new(false),
            fail_every: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            requested_at: Mutex::new(Vec::new()),
            redis_url,
            lifetime,
        });
        let stop = Arc::new(AtomicBool::new(false));
        let reaper = state.redis_url.as_ref().map(|_| {
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || reap_expired(&state, &stop))
        });
        Arc::new(Issuer {
            state,
            stop,
            reaper,
        })
    }

    /// Issues a token and returns the status and body of the token response: 200 with a
    /// token, or 503 while the endpoint is set to fail.
    pub fn issue(&self) -> (u16, String) {
        issue(&self.state)
    }

    /// All tokens issued so far, oldest first.
    pub fn issued(&self) -> Vec<Issued> {
        self.state.issued.lock().unwrap().clone()
    }

    /// See [`TokenEndpoint::repeat_last_token`].
    pub fn repeat_last_token(&self, repeat: bool) {
        self.state.repeat.store(repeat, Ordering::SeqCst);
    }

    /// Counts the token requests served, failed ones included.
    pub fn requests(&self) -> u64 {
        self.state.serial.load(Ordering::SeqCst)
    }

    /// Adds every issued token that is still valid for more than a second to the ACL
    /// again, after the server restarted with an empty one. A token that expires sooner
    /// stays rejected.
    pub fn restore_acl(&self) {
        let Some(url) = &self.state.redis_url else {
            return;
        };
        let valid: Vec<Issued> = {
            let issued = self.state.issued.lock().unwrap();
            let now = unix_now();
            issued.iter().filter(|i| i.exp > now + 1).cloned().collect()
        };
        for entry in valid {
            allow_token(url, entry.token.expose_secret());
        }
    }

    /// Makes every request fail with HTTP 503 (`true`), or succeed again (`false`).
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// Makes every `n`th request fail with HTTP 503; 0 turns this off.
    pub fn fail_every(&self, n: u64) {
        self.state.fail_every.store(n, Ordering::SeqCst);
    }

    /// Counts the requests answered with HTTP 503.
    pub fn failures(&self) -> u64 {
        self.state.failures.load(Ordering::SeqCst)
    }

    /// When each request arrived, oldest first.
    pub fn request_times(&self) -> Vec<Instant> {
        self.state.requested_at.lock().unwrap().clone()
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(reaper) = self.reaper.take() {
            let _ = reaper.join();
        }
    }
}

/// The token path for the test tenant.
pub fn token_path() -> String {
    format!("/{TENANT}/oauth2/v2.0/token")
}

/// Registers a mock that answers every token request with `status` and `body`.
pub fn mock_response<'a>(server: &'a MockServer, status: u16, body: &str) -> Mock<'a> {
    server.mock(|when, then| {
        when.method(POST).path(token_path());
        then.status(status)
            .header("content-type", "application/json")
            .body(body);
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn issue(state: &State) -> (u16, String) {
    let serial = state.serial.fetch_add(1, Ordering::SeqCst) + 1;
    state.requested_at.lock().unwrap().push(Instant::now());
    let every = state.fail_every.load(Ordering::SeqCst);
    if state.down.load(Ordering::SeqCst) || (every > 0 && serial.is_multiple_of(every)) {
        state.failures.fetch_add(1, Ordering::SeqCst);
        return (503, r#"{"error":"temporarily_unavailable"}"#.to_owned());
    }
    let mut issued = state.issued.lock().unwrap();
    let reuse = state.repeat.load(Ordering::SeqCst) && !issued.is_empty();
    let entry = if reuse {
        issued.last().unwrap().clone()
    } else {
        let exp = unix_now() + state.lifetime.as_secs();
        let entry = Issued {
            token: Secret::new(jwt(OID, exp, serial)),
            exp,
        };
        if let Some(url) = &state.redis_url {
            allow_token(url, entry.token.expose_secret());
        }
        issued.push(entry.clone());
        entry
    };
    let expires_in = entry.exp.saturating_sub(unix_now());
    (200, token_body(entry.token.expose_secret(), expires_in))
}

/// Changes the ACL user named after `OID`. While the server restarts (see
/// `RedisServer::restart`), connecting is retried for up to five seconds.
fn acl(url: &str, change: &str) -> redis::RedisResult<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut admin = loop {
        match redis::Client::open(url)?.get_connection() {
            Ok(admin) => break admin,
            Err(error) if error.is_io_error() && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error) => return Err(error),
        }
    };
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(OID)
        .arg("on")
        .arg(change)
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query::<()>(&mut admin)
}

/// Adds `token` to the ACL. A failure (Redis is gone) is reported without panicking, so
/// the demo and tests fail on the commands that follow, with the real cause on stderr.
/// Only the error kind is printed, because the message could echo the token.
fn allow_token(url: &str, token: &str) {
    if let Err(error) = acl(url, &format!(">{token}")) {
        eprintln!(
            "mock token endpoint: cannot add a token to the Redis ACL: {:?}",
            error.kind()
        );
    }
}

fn remove_token(url: &str, token: &str) {
    match acl(url, &format!("<{token}")) {
        Ok(()) => {}
        // A restarted server never had the password: it is rejected, as it should be.
        Err(error) if error.to_string().contains("does not exist") => {}
        Err(error) => eprintln!(
            "mock token endpoint: cannot remove an expired token from the Redis ACL: {:?}",
            error.kind()
        ),
    }
}

/// Removes the passwords of expired tokens every 100 ms.
fn reap_expired(state: &State, stop: &AtomicBool) {
    let url = state.redis_url.as_deref().unwrap();
    let mut removed = 0;
    while !stop.load(Ordering::SeqCst) {
        let expired: Vec<Issued> = {
            let issued = state.issued.lock().unwrap();
            issued
                .iter()
                .filter(|i| i.exp <= unix_now())
                .cloned()
                .collect()
        };
        for entry in expired.iter().skip(removed) {
            remove_token(url, entry.token.expose_secret());
        }
        removed = removed.max(expired.len());
        std::thread::sleep(Duration::from_millis(100));
    }
}
