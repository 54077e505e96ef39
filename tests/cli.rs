//! The `redis-entraid` binary, run with a controlled environment against mock identity
//! endpoints and a `redis-server` on loopback.
//!
//! Each run clears the environment and sets only `PATH` and the variables the test
//! names. `PATH` contains only a fake `az` that reports "not logged in", so the chain's
//! Azure CLI step never reaches Azure. `AZURE_AUTHORITY_HOST` and
//! `AZURE_POD_IDENTITY_AUTHORITY_HOST` always point at loopback (a mock, or port 1 where
//! nothing listens), so no run reaches a non-loopback address.
#![cfg(unix)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use httpmock::prelude::*;
use serde_json::Value;

use common::jwt::{OID, TENANT, token_body};
use common::redis_server::{RedisServer, free_port};
use common::temp_dir::TempDir;
use common::token_endpoint::{CLIENT_ID, CLIENT_SECRET, TokenEndpoint, mock_response};

/// A loopback address where nothing listens: connections to it are refused at once.
const UNREACHABLE: &str = "http://127.0.0.1:1";
/// The `IDENTITY_HEADER` value given to the App Service mock; a secret.
const IDENTITY_HEADER: &str = "mock-identity-header";
const IMDS_PATH: &str = "/metadata/identity/oauth2/token";
const HOUR: Duration = Duration::from_secs(3600);

/// The environment of one run of the binary.
struct Env {
    vars: BTreeMap<String, String>,
    /// Holds the fake `az`; removed when the test ends.
    _bin: TempDir,
}

impl Env {
    /// An environment with no credential configured.
    fn empty() -> Self {
        let bin = TempDir::new("cli-path");
        let az = bin.path().join("az");
        std::fs::write(
            &az,
            "#!/bin/sh\necho \"ERROR: Please run 'az login' to setup account.\" >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&az, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut vars = BTreeMap::new();
        vars.insert("PATH".to_owned(), bin.path().display().to_string());
        vars.insert("AZURE_AUTHORITY_HOST".to_owned(), UNREACHABLE.to_owned());
        vars.insert(
            "AZURE_POD_IDENTITY_AUTHORITY_HOST".to_owned(),
            UNREACHABLE.to_owned(),
        );
        Env { vars, _bin: bin }
    }

    /// A service principal whose token endpoint is the mock at `authority`.
    fn service_principal(authority: &str) -> Self {
        Env::empty()
            .set("AZURE_TENANT_ID", TENANT)
            .set("AZURE_CLIENT_ID", CLIENT_ID)
            .set("AZURE_CLIENT_SECRET", CLIENT_SECRET)
            .set("AZURE_AUTHORITY_HOST", authority)
    }

    fn set(mut self, name: &str, value: &str) -> Self {
        self.vars.insert(name.to_owned(), value.to_owned());
        self
    }

    fn unset(mut self, name: &str) -> Self {
        self.vars.remove(name);
        self
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_redis-entraid"));
        command.env_clear().envs(&self.vars).args(args);
        command
    }

    /// Runs the binary to its end and checks that it printed no secret.
    fn run(&self, args: &[&str]) -> Run {
        let output = self.command(args).output().expect("run redis-entraid");
        let run = Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        for secret in [CLIENT_SECRET, IDENTITY_HEADER] {
            assert!(!run.stdout.contains(secret), "secret in stdout:\n{run}");
            assert!(!run.stderr.contains(secret), "secret in stderr:\n{run}");
        }
        run
    }
}

/// The result of one run.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Run {
    fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "{self}");
        self
    }

    fn assert_stdout(&self, needle: &str) -> &Self {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}:\n{self}"
        );
        self
    }

    fn assert_stderr(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{self}"
        );
        self
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Builds an unsigned JWT with `payload` as its claims.
fn jwt_with(payload: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#);
    format!("{header}.{}.c2ln", URL_SAFE_NO_PAD.encode(payload))
}

/// Starts a token endpoint that always returns `jwt`, valid for an hour.
fn fixed_token_endpoint(jwt: &str) -> MockServer {
    let server = MockServer::start();
    mock_response(&server, 200, &token_body(jwt, HOUR.as_secs()));
    server
}

/// Starts a token endpoint that rejects every request with `code`, as Entra ID does.
fn aadsts_endpoint(status: u16, error: &str, code: u64) -> MockServer {
    let server = MockServer::start();
    let body = format!(
        r#"{{"error":"{error}","error_description":"AADSTS{code}: mock failure.\r\nTrace ID: t\r\nCorrelation ID: c","error_codes":[{code}],"correlation_id":"c"}}"#
    );
    mock_response(&server, status, &body);
    server
}

/// Starts an IMDS mock that returns `status` and `body` on the token path.
fn imds_endpoint(status: u16, body: &str) -> MockServer {
    let server = MockServer::start();
    server.mock(|when, then| {
        when.method(GET).path(IMDS_PATH).header("Metadata", "true");
        then.status(status)
            .header("content-type", "application/json")
            .body(body);
    });
    server
}

/// A redis-server and a token endpoint whose tokens the server accepts for `OID`.
fn redis_with_endpoint(lifetime: Duration) -> (RedisServer, TokenEndpoint) {
    let redis = RedisServer::start();
    let endpoint = TokenEndpoint::start(lifetime, Some(redis.url()));
    (redis, endpoint)
}

fn redis_args(redis: &RedisServer) -> Vec<String> {
    vec![
        "--host".to_owned(),
        "127.0.0.1".to_owned(),
        "--port".to_owned(),
        redis.port().to_string(),
        "--no-tls".to_owned(),
    ]
}

fn with<'a>(first: &[&'a str], rest: &'a [String]) -> Vec<&'a str> {
    first
        .iter()
        .copied()
        .chain(rest.iter().map(String::as_str))
        .collect()
}

// ---------------------------------------------------------------- help and usage

#[test]
fn help_lists_commands_and_exit_statuses() {
    let env = Env::empty();
    let run = env.run(&["--help"]);
    run.assert_code(0).assert_stdout("Exit status:");
    for command in ["token", "ping", "watch", "doctor"] {
        run.assert_stdout(command);
        let help = env.run(&[command, "--help"]);
        help.assert_code(0)
            .assert_stdout("Exit status:")
            .assert_stdout("3  configuration")
            .assert_stdout("4  identity endpoint")
            .assert_stdout("5  Redis");
    }
}

#[test]
fn missing_host_is_usage_error() {
    let run = Env::empty().run(&["ping"]);
    run.assert_code(2).assert_stderr("--host");
    assert!(run.stdout.is_empty(), "{run}");
}

// ---------------------------------------------------------------- token

#[test]
fn token_text_shows_claims_without_token() {
    let endpoint = TokenEndpoint::start(HOUR, None);
    let run = Env::service_principal(&endpoint.server.base_url()).run(&["token"]);
    run.assert_code(0)
        .assert_stdout("credential   environment (chain: environment, workload identity")
        .assert_stdout(&format!("oid          {OID}"))
        .assert_stdout(&format!("tid          {TENANT}"))
        .assert_stdout("aud          https://redis.azure.com")
        .assert_stdout("refresh      ");
    let token = endpoint.issued()[0].token.expose_secret().to_owned();
    assert!(!run.stdout.contains(&token), "token printed:\n{run}");
}

#[test]
fn token_json_has_required_fields() {
    let endpoint = TokenEndpoint::start(HOUR, None);
    let env = Env::service_principal(&endpoint.server.base_url());
    let run = env.run(&["token", "--format", "json"]);
    run.assert_code(0);
    let json: Value = serde_json::from_str(&run.stdout).expect("one JSON object");
    assert_eq!(json["credential"], "environment");
    assert_eq!(json["oid"], OID);
    assert_eq!(json["tid"], TENANT);
    assert_eq!(json["aud"], "https://redis.azure.com");
    let expires_on = json["expires_on"]
        .as_u64()
        .expect("expires_on in Unix seconds");
    let refresh_on = json["refresh_on"]
        .as_u64()
        .expect("refresh_on in Unix seconds");
    let now = unix_now();
    assert!(
        expires_on > now + 3500 && expires_on <= now + 3600,
        "{expires_on}"
    );
    // 70 % of the hour is sooner than 3 minutes before expiry.
    assert!(
        refresh_on >= now + 2400 && refresh_on <= now + 2600,
        "{refresh_on}"
    );
    assert!(json.get("access_token").is_none(), "{run}");
    let token = endpoint.issued()[0].token.expose_secret().to_owned();
    assert!(!run.stdout.contains(&token), "token printed:\n{run}");
}

#[test]
fn token_shown_only_with_show_token() {
    let endpoint = TokenEndpoint::start(HOUR, None);
    let env = Env::service_principal(&endpoint.server.base_url());
    let text = env.run(&["token", "--show-token"]);
    text.assert_code(0);
    let first = endpoint.issued()[0].token.expose_secret().to_owned();
    text.assert_stdout(&format!("token        {first}"));
    let json = env.run(&["token", "--format", "json", "--show-token"]);
    json.assert_code(0);
    let value: Value = serde_json::from_str(&json.stdout).unwrap();
    let second = endpoint.issued()[1].token.expose_secret().to_owned();
    assert_eq!(value["access_token"], second.as_str());
}

#[test]
fn token_chain_uses_app_service_identity() {
    let jwt = jwt_with(&format!(
        r#"{{"aud":"https://redis.azure.com","oid":"{OID}","tid":"{TENANT}","exp":{}}}"#,
        unix_now() + 3600
    ));
    let server = MockServer::start();
    let mock = server.mock(|when, then| {
        when.method(GET)
            .path("/msi/token")
            .query_param("resource", "https://redis.azure.com")
            .header("X-IDENTITY-HEADER", IDENTITY_HEADER);
        then.status(200).body(format!(
            r#"{{"access_token":"{jwt}","expires_on":"{}","resource":"https://redis.azure.com","token_type":"Bearer"}}"#,
            unix_now() + 3600
        ));
    });
    let env = Env::empty()
        .set("IDENTITY_ENDPOINT", &server.url("/msi/token"))
        .set("IDENTITY_HEADER", IDENTITY_HEADER);
    let run = env.run(&["token", "--format", "json"]);
    run.assert_code(0);
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["credential"], "managed identity");
    assert_eq!(json["oid"], OID);
    mock.assert_calls(1);
}

#[test]
fn credential_flag_bypasses_chain() {
    // The chain would stop at the environment credential, whose secret is rejected.
    let rejecting = aadsts_endpoint(401, "invalid_client", 7000215);
    let endpoint = TokenEndpoint::start(HOUR, None);
    let imds = imds_endpoint(
        200,
        &format!(
            r#"{{"access_token":"{}","expires_in":"3600","expires_on":"{}","resource":"https://redis.azure.com","token_type":"Bearer"}}"#,
            jwt_with(&format!(
                r#"{{"aud":"https://redis.azure.com","oid":"{OID}","exp":{}}}"#,
                unix_now() + 3600
            )),
            unix_now() + 3600
        ),
    );
    let env = Env::service_principal(&rejecting.base_url())
        .set("AZURE_POD_IDENTITY_AUTHORITY_HOST", &imds.base_url());
    env.run(&["token"]).assert_code(4);

    let run = env.run(&[
        "token",
        "--credential",
        "managed-identity",
        "--format",
        "json",
    ]);
    run.assert_code(0);
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["credential"], "managed identity");

    let client_secret = Env::service_principal(&endpoint.server.base_url());
    let run = client_secret.run(&["token", "--credential", "client-secret", "--format", "json"]);
    run.assert_code(0);
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["credential"], "client secret");
}

#[test]
fn token_error_goes_to_stderr_with_fix() {
    let server = aadsts_endpoint(401, "invalid_client", 7000215);
    let run = Env::service_principal(&server.base_url()).run(&["token"]);
    run.assert_code(4)
        .assert_stderr("error: Microsoft Entra ID rejected the client secret")
        .assert_stderr("fix: set AZURE_CLIENT_SECRET to the secret's Value");
    assert!(run.stdout.is_empty(), "{run}");
}

// ---------------------------------------------------------------- ping

#[test]
fn ping_reports_each_step() {
    let (redis, endpoint) = redis_with_endpoint(HOUR);
    let args = redis_args(&redis);
    let run = Env::service_principal(&endpoint.server.base_url()).run(&with(&["ping"], &args));
    run.assert_code(0);
    let steps: Vec<&str> = run
        .stdout
        .lines()
        .map(|line| line.split_whitespace().next().unwrap_or(""))
        .collect();
    assert_eq!(
        steps,
        ["token", "resolve", "tcp", "auth", "PING", "DBSIZE"],
        "{run}"
    );
    run.assert_stdout(&format!("oid {OID}"))
        .assert_stdout(&format!("authenticated as {OID}"))
        .assert_stdout("PONG")
        .assert_stdout("0 keys");
    assert!(run.stdout.contains(" ms  "), "no timings:\n{run}");
}

#[test]
fn ping_wrongpass_exits_5_with_fix() {
    let redis = RedisServer::start();
    // The endpoint does not add its tokens to the server's ACL.
    let endpoint = TokenEndpoint::start(HOUR, None);
    let args = redis_args(&redis);
    let run = Env::service_principal(&endpoint.server.base_url()).run(&with(&["ping"], &args));
    run.assert_code(5)
        .assert_stderr("WRONGPASS")
        .assert_stderr(&format!(
            "add an access policy assignment for this oid ({OID})"
        ));
}

// ---------------------------------------------------------------- watch

/// Collects a child's standard output lines as they arrive. The thread ends when the
/// child closes its standard output, which it does at exit.
fn collect_lines(child: &mut Child) -> (Arc<Mutex<Vec<String>>>, JoinHandle<()>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(line) => sink.lock().unwrap().push(line),
                Err(_) => break,
            }
        }
    });
    (lines, reader)
}

/// Waits up to `limit` until `predicate` holds for the lines so far.
fn wait_for_lines(
    lines: &Mutex<Vec<String>>,
    limit: Duration,
    predicate: impl Fn(&[String]) -> bool,
) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if predicate(&lines.lock().unwrap()) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn count(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|line| line.contains(needle)).count()
}

#[test]
fn watch_shows_renewals_until_ctrl_c() {
    // 3-second tokens are renewed after the minimum delay of 1 s.
    let (redis, endpoint) = redis_with_endpoint(Duration::from_secs(3));
    let args = redis_args(&redis);
    let env = Env::service_principal(&endpoint.server.base_url());
    let mut child = env
        .command(&with(&["watch", "--interval", "0.2"], &args))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, reader) = collect_lines(&mut child);
    let renewed = wait_for_lines(&lines, Duration::from_secs(10), |lines| {
        count(lines, "token renewed") >= 2 && count(lines, "re-authenticated") >= 2
    });

    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    reader.join().unwrap();

    let lines = lines.lock().unwrap().join("\n");
    assert!(renewed, "no renewals within 10 s:\n{lines}");
    assert_eq!(exit.code(), Some(0), "{lines}");
    let watching = format!("watching 127.0.0.1:{} without TLS as {OID}", redis.port());
    assert!(lines.contains(&watching), "{lines}");
    assert!(lines.contains("stopped by Ctrl-C"), "{lines}");
    assert!(lines.contains("summary: "), "{lines}");
    assert!(lines.contains(" ok and 0 failed"), "{lines}");
    assert!(
        lines.contains("token expires in"),
        "no status line:\n{lines}"
    );
}

#[test]
fn watch_duration_ends_with_summary() {
    let (redis, endpoint) = redis_with_endpoint(HOUR);
    let args = redis_args(&redis);
    let env = Env::service_principal(&endpoint.server.base_url());
    let started = Instant::now();
    let run = env.run(&with(
        &["watch", "--interval", "0.2", "--duration", "1"],
        &args,
    ));
    run.assert_code(0)
        .assert_stdout("summary: ")
        .assert_stdout(" ok and 0 failed")
        .assert_stdout("renewals 0");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(!run.stdout.contains("stopped by Ctrl-C"), "{run}");
}

#[test]
fn watch_failures_exit_5() {
    let (redis, endpoint) = redis_with_endpoint(HOUR);
    let args = redis_args(&redis);
    let env = Env::service_principal(&endpoint.server.base_url());
    let mut child = env
        .command(&with(
            &["watch", "--interval", "0.1", "--duration", "2"],
            &args,
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, reader) = collect_lines(&mut child);
    // Without a terminal, watch prints its status after every command.
    let first_ok = wait_for_lines(&lines, Duration::from_secs(5), |lines| {
        count(lines, "| ok 1, failed 0") > 0
    });
    assert!(first_ok, "{}", lines.lock().unwrap().join("\n"));

    drop(redis);
    let output = child.wait_with_output().unwrap();
    reader.join().unwrap();

    let lines = lines.lock().unwrap().join("\n");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(5), "{lines}\n{stderr}");
    assert!(lines.contains("PING failed"), "{lines}");
    assert!(stderr.contains("commands failed"), "{stderr}");
}

#[test]
fn watch_recovers_from_silent_server() {
    let (redis, endpoint) = redis_with_endpoint(HOUR);
    let args = redis_args(&redis);
    let env = Env::service_principal(&endpoint.server.base_url());
    let mut child = env
        .command(&with(
            &[
                "watch",
                "--interval",
                "0.2",
                "--duration",
                "5",
                "--connect-timeout",
                "0.5",
            ],
            &args,
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, reader) = collect_lines(&mut child);
    let first_ok = wait_for_lines(&lines, Duration::from_secs(5), |lines| {
        count(lines, "| ok 1, failed 0") > 0
    });
    assert!(first_ok, "{}", lines.lock().unwrap().join("\n"));

    // The server pauses every client command for 2 s and then replies again.
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(2000)
        .arg("ALL")
        .query::<()>(&mut redis.admin().unwrap())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    reader.join().unwrap();

    let lines = lines.lock().unwrap().join("\n");
    assert_eq!(output.status.code(), Some(5), "{lines}");
    assert!(lines.contains("PING failed"), "{lines}");
    assert!(lines.contains("PING succeeded again"), "{lines}");
}

// ---------------------------------------------------------------- doctor

#[test]
fn doctor_passes_healthy_setup() {
    let (redis, endpoint) = redis_with_endpoint(HOUR);
    let args = redis_args(&redis);
    let run = Env::service_principal(&endpoint.server.base_url()).run(&with(&["doctor"], &args));
    run.assert_code(0)
        .assert_stdout(&format!("service principal {CLIENT_ID} in tenant {TENANT}"))
        .assert_stdout("the environment credential returned a token")
        .assert_stdout(&format!("oid {OID}: the Redis username"))
        .assert_stdout(&format!("AUTH as {OID}"))
        .assert_stdout("PING: PONG")
        .assert_stdout("DBSIZE: 0")
        .assert_stdout("no problems found");
    assert!(!run.stdout.contains("FAIL"), "{run}");
}

#[test]
fn doctor_without_host_skips_redis() {
    let endpoint = TokenEndpoint::start(HOUR, None);
    let run = Env::service_principal(&endpoint.server.base_url()).run(&["doctor"]);
    run.assert_code(0).assert_stdout("skip  no --host given");
}

#[test]
fn doctor_explains_missing_variable() {
    let endpoint = TokenEndpoint::start(HOUR, None);
    let env = Env::service_principal(&endpoint.server.base_url()).unset("AZURE_TENANT_ID");
    let run = env.run(&["doctor"]);
    run.assert_code(3)
        .assert_stdout("FAIL  AZURE_CLIENT_SECRET is set, but AZURE_TENANT_ID not")
        .assert_stdout("fix: set AZURE_TENANT_ID")
        .assert_stdout("no credential is available")
        .assert_stderr("error: doctor found 2 problems");
}

#[test]
fn doctor_warns_about_conflicting_variables() {
    let endpoint = TokenEndpoint::start(HOUR, None);
    let certificate = TempDir::new("cli-certificate");
    let path = certificate.path().join("client.pem");
    std::fs::write(&path, "not read: the secret wins").unwrap();
    let env = Env::service_principal(&endpoint.server.base_url())
        .set("AZURE_CLIENT_CERTIFICATE_PATH", &path.display().to_string());
    let run = env.run(&["doctor"]);
    run.assert_code(0)
        .assert_stdout("warn  AZURE_CLIENT_SECRET and AZURE_CLIENT_CERTIFICATE_PATH are both set")
        .assert_stdout("fix: unset the one this program should not use")
        .assert_stdout("no problems found, 1 warnings");
}

#[test]
fn doctor_explains_incomplete_identity_variables() {
    let env = Env::empty().set("IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi/token");
    let run = env.run(&["doctor"]);
    run.assert_code(3)
        .assert_stdout("FAIL  IDENTITY_ENDPOINT is set without IDENTITY_HEADER")
        .assert_stdout("fix: the Azure host sets these variables together");
}

#[test]
fn doctor_explains_invalid_token_selection() {
    let env = Env::empty().set("AZURE_TOKEN_CREDENTIALS", "everything");
    let run = env.run(&["doctor"]);
    run.assert_code(3)
        .assert_stdout("invalid AZURE_TOKEN_CREDENTIALS")
        .assert_stdout("fix: set AZURE_TOKEN_CREDENTIALS to dev, prod");
}

#[test]
fn doctor_explains_common_aadsts_codes() {
    let cases = [
        (
            401,
            "invalid_client",
            7000215,
            "fix: set AZURE_CLIENT_SECRET to the secret's Value",
        ),
        (
            401,
            "invalid_client",
            7000222,
            "fix: create a new client secret",
        ),
        (
            400,
            "unauthorized_client",
            700016,
            "fix: check that AZURE_CLIENT_ID is the application (client) id",
        ),
        (
            400,
            "invalid_request",
            90002,
            "for a sovereign cloud set AZURE_AUTHORITY_HOST",
        ),
        (
            400,
            "invalid_scope",
            70011,
            "fix: request the scope https://redis.azure.com/.default",
        ),
    ];
    for (status, error, code, fix) in cases {
        let server = aadsts_endpoint(status, error, code);
        let run = Env::service_principal(&server.base_url()).run(&["doctor"]);
        assert_eq!(run.code, Some(4), "AADSTS{code}:\n{run}");
        assert!(
            run.stdout.contains(&format!("AADSTS{code}")),
            "AADSTS{code}:\n{run}"
        );
        assert!(
            run.stdout.contains(fix),
            "AADSTS{code} lacks {fix:?}:\n{run}"
        );
    }
}

#[test]
fn doctor_explains_unreachable_authority() {
    let run = Env::service_principal(UNREACHABLE).run(&["doctor", "--token-timeout", "1"]);
    run.assert_code(4)
        .assert_stdout("the request to the identity endpoint failed")
        .assert_stdout("fix: check network access to the authority host");
}

#[test]
fn doctor_explains_missing_managed_identity() {
    // The chain's IMDS probe finds nothing on port 1, and the fake `az` is not logged in.
    let run = Env::empty().run(&["doctor"]);
    run.assert_code(3)
        .assert_stdout("no IMDS endpoint answered")
        .assert_stdout("this machine is probably not an Azure VM, scale set or AKS node");

    let run = Env::empty().run(&[
        "doctor",
        "--credential",
        "managed-identity",
        "--token-timeout",
        "1",
    ]);
    run.assert_code(4)
        .assert_stdout("the request to the managed-identity endpoint failed")
        .assert_stdout("fix: run on an Azure resource with a managed identity enabled");
}

#[test]
fn doctor_explains_identity_not_found() {
    let not_found = r#"{"error":"invalid_request","error_description":"Identity not found"}"#;
    let imds = imds_endpoint(400, not_found);
    let user_assigned = Env::empty()
        .set("AZURE_POD_IDENTITY_AUTHORITY_HOST", &imds.base_url())
        .set("AZURE_CLIENT_ID", CLIENT_ID);
    let run = user_assigned.run(&["doctor"]);
    run.assert_code(3)
        .assert_stdout("Identity not found")
        .assert_stdout("fix: assign the user-assigned identity to this Azure resource");

    let system_assigned = Env::empty().set("AZURE_POD_IDENTITY_AUTHORITY_HOST", &imds.base_url());
    let run = system_assigned.run(&["doctor", "--credential", "managed-identity"]);
    run.assert_code(3)
        .assert_stdout("no system-assigned managed identity")
        .assert_stdout("fix: enable the system-assigned identity on this Azure resource");
}

#[test]
fn doctor_explains_token_without_oid() {
    let jwt = jwt_with(&format!(
        r#"{{"aud":"https://redis.azure.com","tid":"{TENANT}","exp":{}}}"#,
        unix_now() + 3600
    ));
    let server = fixed_token_endpoint(&jwt);
    let redis = RedisServer::start();
    let args = redis_args(&redis);
    let run = Env::service_principal(&server.base_url()).run(&with(&["doctor"], &args));
    run.assert_code(4)
        .assert_stdout("FAIL  the token has no `oid` claim")
        .assert_stdout("configure the Redis username explicitly")
        .assert_stdout(&format!("tid {TENANT}"))
        .assert_stdout("skip  needs a token that Redis can accept");
}

#[test]
fn doctor_explains_wrong_audience() {
    let jwt = jwt_with(&format!(
        r#"{{"aud":"https://management.azure.com","oid":"{OID}","exp":{}}}"#,
        unix_now() + 3600
    ));
    let server = fixed_token_endpoint(&jwt);
    let run = Env::service_principal(&server.base_url()).run(&["doctor"]);
    run.assert_code(4)
        .assert_stdout("the token is for https://management.azure.com, not for Azure Redis")
        .assert_stdout("fix: request the scope https://redis.azure.com/.default");
}

#[test]
fn doctor_explains_wrongpass() {
    let redis = RedisServer::start();
    let endpoint = TokenEndpoint::start(HOUR, None);
    let args = redis_args(&redis);
    let run = Env::service_principal(&endpoint.server.base_url()).run(&with(&["doctor"], &args));
    run.assert_code(5)
        .assert_stdout("(WRONGPASS)")
        .assert_stdout(&format!(
            "fix: add an access policy assignment for this oid ({OID}) on the cache"
        ))
        .assert_stdout("skip  PING and DBSIZE");
}

#[test]
fn doctor_explains_noperm() {
    let jwt = jwt_with(&format!(
        r#"{{"aud":"https://redis.azure.com","oid":"{OID}","exp":{}}}"#,
        unix_now() + 3600
    ));
    let server = fixed_token_endpoint(&jwt);
    let redis = RedisServer::start();
    let mut admin = redis.admin().unwrap();
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(OID)
        .arg("on")
        .arg(format!(">{jwt}"))
        .arg("~*")
        .arg("+@all")
        .arg("-dbsize")
        .query::<()>(&mut admin)
        .unwrap();
    let args = redis_args(&redis);
    let run = Env::service_principal(&server.base_url()).run(&with(&["doctor"], &args));
    run.assert_code(5)
        .assert_stdout("ok    PING: PONG")
        .assert_stdout("no permission to run DBSIZE (NOPERM)")
        .assert_stdout(&format!(
            "fix: give the access policy assignment of {OID} a policy"
        ));
}

/// A `redis-server` that accepts only TLS, with a self-signed certificate that no client
/// trusts; killed when dropped.
struct TlsRedis {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl TlsRedis {
    fn start() -> Self {
        let dir = TempDir::new("cli-tls");
        common::certs::openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
            ],
        );
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--tls-cert-file")
            .arg(dir.path().join("cert.pem"))
            .arg("--tls-key-file")
            .arg(dir.path().join("key.pem"))
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server; install it with `apt-get install redis-server`");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "TLS redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsRedis {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn doctor_explains_untrusted_certificate() {
    let endpoint = TokenEndpoint::start(HOUR, None);
    let redis = TlsRedis::start();
    let port = redis.port.to_string();
    let env = Env::service_principal(&endpoint.server.base_url());
    let run = env.run(&["doctor", "--host", "127.0.0.1", "--port", &port]);
    run.assert_code(5)
        .assert_stdout("FAIL  the TLS handshake with Redis failed")
        .assert_stdout("invalid peer certificate")
        .assert_stdout("with the cache's own host name, which its certificate names");
}

#[test]
fn doctor_explains_tls_to_plain_port() {
    let (redis, endpoint) = redis_with_endpoint(HOUR);
    let port = redis.port().to_string();
    let env = Env::service_principal(&endpoint.server.base_url());
    // TLS, the default, against a server without TLS, which never completes the handshake.
    let run = env.run(&[
        "doctor",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--connect-timeout",
        "0.5",
    ]);
    run.assert_code(5)
        .assert_stdout("FAIL  the TLS handshake with Redis failed")
        .assert_stdout("use --no-tls only for a local redis-server without TLS");
}

#[test]
fn doctor_explains_dns_failure() {
    let endpoint = TokenEndpoint::start(HOUR, None);
    let env = Env::service_principal(&endpoint.server.base_url());
    // An empty label makes the name invalid, so the resolver rejects it without sending a
    // query (glibc checks names before building the DNS message).
    let run = env.run(&["doctor", "--host", "no-such-host..invalid", "--no-tls"]);
    run.assert_code(5)
        .assert_stdout("FAIL  the host name `no-such-host..invalid` could not be resolved")
        .assert_stdout("fix: check the spelling of --host");
}

#[test]
fn doctor_explains_refused_connection() {
    let endpoint = TokenEndpoint::start(HOUR, None);
    let env = Env::service_principal(&endpoint.server.base_url());
    let port = free_port().to_string();
    let run = env.run(&["doctor", "--host", "127.0.0.1", "--port", &port, "--no-tls"]);
    run.assert_code(5)
        .assert_stdout("FAIL  no TCP connection to 127.0.0.1")
        .assert_stdout("fix: check that redis-server is running");
}
