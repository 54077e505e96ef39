//! The Azure CLI credential through the blocking provider, with a fake `az` script in a
//! temporary directory in place of the real CLI.
#![cfg(unix)]

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::jwt::{OID, TENANT, jwt};
use common::temp_dir::TempDir;
use redis_entraid::blocking::EntraIdProvider;
use redis_entraid::{AzureCliCredential, ChainOptions, ChainedCredential, Error};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Writes an executable `az` script into `dir` that records its arguments, one a line,
/// in `dir/args` and then runs `body`.
fn fake_az(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("az");
    let script = format!("#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$(dirname \"$0\")/args\"\n{body}\n");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn recorded_args(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("args")).expect("the fake az ran")
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn cli_output_becomes_credentials() {
    let dir = TempDir::new("az-current");
    let expires_on = unix_now() + 3000;
    let token = jwt(OID, unix_now() + 3600, 1);
    let output = format!(
        r#"{{"accessToken": "{token}", "expiresOn": "2026-01-01 00:50:00.000000", "expires_on": {expires_on}, "subscription": "s", "tenant": "{TENANT}", "tokenType": "Bearer"}}"#
    );
    let az = fake_az(dir.path(), &format!("cat <<'EOF'\n{output}\nEOF"));
    let credential = AzureCliCredential::new()
        .with_program(az.to_string_lossy())
        .with_tenant(TENANT)
        .unwrap();
    let provider = EntraIdProvider::new(credential);
    let credentials = provider.get_credentials().expect("token from the fake az");
    assert_eq!(credentials.username(), OID);
    assert_eq!(credentials.password(), token);
    assert_eq!(unix_seconds(credentials.expires_on()), expires_on);
    assert_eq!(
        recorded_args(dir.path()),
        format!(
            "account\nget-access-token\n--output\njson\n--resource\nhttps://redis.azure.com\n\
             --tenant\n{TENANT}\n"
        )
    );
}

#[test]
fn older_cli_expiry_is_local_time() {
    let dir = TempDir::new("az-older");
    let expires_on = unix_now() + 3000;
    let token = jwt(OID, unix_now() + 3600, 1);
    // `date` prints the expiry in the zone this process runs in (TZ or /etc/localtime),
    // as the CLI does; GNU date takes `-d @seconds`, BSD date `-r seconds`.
    let body = format!(
        "local=$(date -d @{expires_on} '+%Y-%m-%d %H:%M:%S.000000' 2>/dev/null \
         || date -r {expires_on} '+%Y-%m-%d %H:%M:%S.000000')\n\
         printf '{{\"accessToken\": \"{token}\", \"expiresOn\": \"%s\", \"tokenType\": \"Bearer\"}}\\n' \"$local\""
    );
    let az = fake_az(dir.path(), &body);
    let credential = AzureCliCredential::new()
        .with_program(az.to_string_lossy())
        .with_system_time_zone();
    let provider = EntraIdProvider::new(credential);
    let credentials = provider.get_credentials().expect("token from the fake az");
    assert_eq!(unix_seconds(credentials.expires_on()), expires_on);
}

#[test]
fn missing_cli_is_unavailable() {
    let dir = TempDir::new("az-missing");
    let credential =
        AzureCliCredential::new().with_program(dir.path().join("bin/az").to_string_lossy());
    let provider = EntraIdProvider::new(credential);
    let started = Instant::now();
    let error = provider
        .get_credentials_timeout(Duration::from_secs(20))
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "{error}");
    assert!(
        matches!(&error, Error::CredentialUnavailable { credential, reason }
            if credential == "Azure CLI" && reason.starts_with("Azure CLI not installed:")),
        "{error}"
    );
}

#[test]
fn logged_out_cli_is_unavailable() {
    let dir = TempDir::new("az-logged-out");
    let az = fake_az(
        dir.path(),
        "echo \"ERROR: Please run 'az login' to setup account.\" >&2\nexit 1",
    );
    let provider =
        EntraIdProvider::new(AzureCliCredential::new().with_program(az.to_string_lossy()));
    let started = Instant::now();
    let error = provider
        .get_credentials_timeout(Duration::from_secs(20))
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "{error}");
    assert_eq!(
        error.to_string(),
        "Azure CLI credential unavailable: not logged in; run `az login` (ERROR: Please \
         run 'az login' to setup account.)"
    );
}

#[test]
fn hung_cli_is_killed_at_timeout() {
    let dir = TempDir::new("az-hung");
    // `exec` makes the shell become `sleep`, so killing the program stops the sleep.
    let az = fake_az(dir.path(), "exec sleep 10");
    let credential = AzureCliCredential::new()
        .with_program(az.to_string_lossy())
        .with_timeout(Duration::from_millis(300));
    let provider = EntraIdProvider::new(credential);
    let error = provider
        .get_credentials_timeout(Duration::from_secs(1))
        .unwrap_err();
    let Error::Timeout {
        last_error: Some(last_error),
        ..
    } = &error
    else {
        panic!("expected a timeout with the CLI's error, got {error}");
    };
    let message = last_error.to_string();
    assert!(
        message.contains("account get-access-token: no exit after 0.3 s; the CLI may be waiting"),
        "{message}"
    );
}

#[test]
fn dev_chain_runs_azure_cli() {
    let dir = TempDir::new("az-chain");
    let token = jwt(OID, unix_now() + 3600, 1);
    let az = fake_az(
        dir.path(),
        &format!(
            "echo '{{\"accessToken\": \"{token}\", \"expires_on\": {}}}'",
            unix_now() + 3600
        ),
    );
    // `dev` keeps only the Azure CLI, so no managed-identity endpoint is ever tried.
    let env: HashMap<&str, &str> = [
        ("AZURE_TOKEN_CREDENTIALS", "dev"),
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_ID", "99999999-8888-7777-6666-555555555555"),
        ("AZURE_CLIENT_SECRET", "unused-secret"),
    ]
    .into();
    let options = ChainOptions::default()
        .with_azure_cli(AzureCliCredential::new().with_program(az.to_string_lossy()));
    let chain =
        ChainedCredential::from_env_with(|name| env.get(name).map(|v| v.to_string()), options)
            .unwrap();
    let provider = EntraIdProvider::new(chain.clone());
    let credentials = provider.get_credentials().expect("token from the fake az");
    assert_eq!(credentials.username(), OID);
    assert_eq!(chain.selected(), Some("Azure CLI"));
    // The chain does not pass AZURE_TENANT_ID to the CLI, which keeps its own tenant.
    assert!(!recorded_args(dir.path()).contains("--tenant"));
}
