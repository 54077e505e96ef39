//! Workload identity through the blocking provider: a federated token file laid out as a
//! Kubernetes projected volume, swapped atomically between refreshes, against a mock
//! Entra endpoint that accepts only the current assertion.
#![cfg(unix)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use httpmock::prelude::*;
use httpmock::{HttpMockRequest, HttpMockResponse};

use common::jwt::{OID, TENANT, jwt, token_body};
use common::temp_dir::TempDir;
use common::token_endpoint::{CLIENT_ID, token_path};
use redis_entraid::blocking::EntraIdProvider;
use redis_entraid::{ChainedCredential, Error, WorkloadIdentityCredential};

const STALE_BODY: &str = r#"{"error":"invalid_client","error_description":"AADSTS700024: Client assertion is not within its valid time range. Current time: 2026-01-01T18:00:00.0000000Z, assertion valid from 2026-01-01T16:00:00.0000000Z, expiry time of assertion 2026-01-01T17:00:00.0000000Z.\r\nTrace ID: t\r\nCorrelation ID: c","error_codes":[700024],"correlation_id":"c-700024"}"#;

/// A directory laid out as the kubelet writes a projected service-account token:
/// `azure-identity-token` → `..data/token`, where `..data` links to a directory holding
/// the current token. A rotation writes a new directory and renames a new link over
/// `..data`, so a reader sees either the old token or the new one, never a mix.
struct ProjectedVolume {
    dir: TempDir,
    generation: u32,
}

impl ProjectedVolume {
    fn new(assertion: &str) -> Self {
        let volume = ProjectedVolume {
            dir: TempDir::new("projected-volume"),
            generation: 0,
        };
        let data = volume.write_generation(assertion);
        std::os::unix::fs::symlink(&data, volume.dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/token", volume.token_file()).unwrap();
        volume
    }

    /// Returns the path that workload identity reads, as `AZURE_FEDERATED_TOKEN_FILE`
    /// names it.
    fn token_file(&self) -> PathBuf {
        self.dir.path().join("azure-identity-token")
    }

    fn write_generation(&self, assertion: &str) -> String {
        let name = format!("..2026_01_01_00_00_{:02}.000000001", self.generation);
        let dir = self.dir.path().join(&name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("token"), assertion).unwrap();
        name
    }

    /// Replaces the token with `assertion` by an atomic swap of the `..data` link, and
    /// removes the old directory.
    fn rotate(&mut self, assertion: &str) {
        let old = std::fs::read_link(self.dir.path().join("..data")).unwrap();
        self.generation += 1;
        let data = self.write_generation(assertion);
        let staged = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&data, &staged).unwrap();
        std::fs::rename(&staged, self.dir.path().join("..data")).unwrap();
        std::fs::remove_dir_all(self.dir.path().join(old)).unwrap();
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Builds a token response whose token expires `lifetime` seconds from now. `serial`
/// makes the token distinct.
fn fresh_token(lifetime: u64, serial: u64) -> String {
    token_body(&jwt(OID, unix_now() + lifetime, serial), lifetime)
}

fn credential(server: &MockServer, token_file: &Path) -> WorkloadIdentityCredential {
    WorkloadIdentityCredential::new(TENANT, CLIENT_ID, token_file)
        .unwrap()
        .with_authority_host(&server.base_url())
        .unwrap()
}

fn assertion_of(request: &HttpMockRequest) -> Option<String> {
    form_urlencoded::parse(request.body_ref())
        .find(|(name, _)| name == "client_assertion")
        .map(|(_, value)| value.into_owned())
}

#[test]
fn swapped_token_file_is_read_at_refresh() {
    let mut volume = ProjectedVolume::new("sa-one\n");
    let server = MockServer::start();
    let mut first = server.mock(|when, then| {
        when.method(POST)
            .path(token_path())
            .header("content-type", "application/x-www-form-urlencoded")
            .form_urlencoded_tuple("client_id", CLIENT_ID)
            .form_urlencoded_tuple(
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            )
            .form_urlencoded_tuple("client_assertion", "sa-one")
            .form_urlencoded_tuple("scope", "https://redis.azure.com/.default")
            .form_urlencoded_tuple("grant_type", "client_credentials");
        then.status(200).body(fresh_token(3600, 1));
    });
    let provider = EntraIdProvider::new(credential(&server, &volume.token_file()));
    let credentials = provider.get_credentials().expect("token for sa-one");
    assert_eq!(credentials.username(), OID);
    first.assert_calls(1);

    // The kubelet rotates the token; from now on the endpoint accepts only sa-two.
    volume.rotate("sa-two\n");
    first.delete();
    let stale = server.mock(|when, then| {
        when.method(POST)
            .form_urlencoded_tuple("client_assertion", "sa-one");
        then.status(401).body(STALE_BODY);
    });
    let second = server.mock(|when, then| {
        when.method(POST)
            .form_urlencoded_tuple("client_assertion", "sa-two");
        then.status(200).body(fresh_token(3700, 2));
    });
    let mut changes = provider.subscribe();
    provider.force_refresh();
    let renewed = changes
        .next_timeout(Duration::from_secs(10))
        .expect("token for sa-two");
    assert_ne!(renewed.password(), credentials.password());
    second.assert_calls(1);
    stale.assert_calls(0);
}

#[test]
fn stale_assertion_is_read_again_once() {
    let volume = Arc::new(Mutex::new(ProjectedVolume::new("sa-one")));
    let token_file = volume.lock().unwrap().token_file();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let server = MockServer::start();
    let (responder_volume, responder_seen) = (Arc::clone(&volume), Arc::clone(&seen));
    // The kubelet rotates the token just as Entra rejects the old one.
    server.mock(|when, then| {
        when.method(POST).path(token_path());
        then.respond_with(move |request: &HttpMockRequest| {
            let assertion = assertion_of(request).unwrap_or_default();
            responder_seen.lock().unwrap().push(assertion.clone());
            let (status, body) = if assertion == "sa-two" {
                (200, fresh_token(3600, 1))
            } else {
                responder_volume.lock().unwrap().rotate("sa-two");
                (401, STALE_BODY.to_owned())
            };
            HttpMockResponse::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(body)
                .build()
        });
    });
    let provider = EntraIdProvider::new(credential(&server, &token_file));
    let credentials = provider
        .get_credentials_timeout(Duration::from_secs(10))
        .expect("token after reading the file again");
    assert_eq!(credentials.username(), OID);
    assert_eq!(*seen.lock().unwrap(), ["sa-one", "sa-two"]);
}

#[test]
fn repeated_stale_assertion_fails_fast() {
    let volume = ProjectedVolume::new("sa-one");
    let server = MockServer::start();
    let stale = server.mock(|when, then| {
        when.method(POST).path(token_path());
        then.status(401).body(STALE_BODY);
    });
    let provider = EntraIdProvider::new(credential(&server, &volume.token_file()));
    let started = Instant::now();
    let error = provider
        .get_credentials_timeout(Duration::from_secs(20))
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "{error}");
    assert!(!error.is_transient(), "{error}");
    let message = error.to_string();
    assert!(message.contains("(AADSTS700024)"), "{message}");
    assert!(
        message.contains("the federated token file is being renewed"),
        "{message}"
    );
    assert!(message.contains("correlation id c-700024"), "{message}");
    assert!(!message.contains("sa-one"), "{message}");
    stale.assert_calls(2);
}

#[test]
fn missing_token_file_is_an_io_error() {
    let dir = TempDir::new("no-token");
    let server = MockServer::start();
    let endpoint = server.mock(|when, then| {
        when.method(POST);
        then.status(500);
    });
    let provider = EntraIdProvider::new(credential(&server, &dir.path().join("token")));
    let error = provider
        .get_credentials_timeout(Duration::from_millis(300))
        .unwrap_err();
    let Error::Timeout {
        last_error: Some(last_error),
        ..
    } = &error
    else {
        panic!("expected a timeout with the read error, got {error}");
    };
    assert!(
        matches!(
            **last_error,
            Error::Io {
                kind: std::io::ErrorKind::NotFound,
                ..
            }
        ),
        "{last_error}"
    );
    endpoint.assert_calls(0);
}

#[test]
fn chain_from_env_selects_workload_identity() {
    let volume = ProjectedVolume::new("sa-one");
    let server = MockServer::start();
    let endpoint = server.mock(|when, then| {
        when.method(POST)
            .path(token_path())
            .form_urlencoded_tuple("client_assertion", "sa-one");
        then.status(200).body(fresh_token(3600, 1));
    });
    let token_file = volume.token_file().to_string_lossy().into_owned();
    let env: HashMap<&str, String> = [
        ("AZURE_TENANT_ID", TENANT.to_owned()),
        ("AZURE_CLIENT_ID", CLIENT_ID.to_owned()),
        ("AZURE_FEDERATED_TOKEN_FILE", token_file),
        ("AZURE_AUTHORITY_HOST", server.base_url()),
        // Managed identity comes after workload identity; should the chain ever reach
        // it, IMDS is a closed loopback port, never the real metadata address.
        (
            "AZURE_POD_IDENTITY_AUTHORITY_HOST",
            "http://127.0.0.1:1".to_owned(),
        ),
    ]
    .into();
    let chain = ChainedCredential::from_env(|name| env.get(name).cloned()).unwrap();
    let provider = EntraIdProvider::new(chain.clone());
    let credentials = provider.get_credentials().expect("token from the chain");
    assert_eq!(credentials.username(), OID);
    assert_eq!(provider.source_name(), "chained");
    assert_eq!(chain.selected(), Some("workload identity"));
    endpoint.assert_calls(1);
}
