//! The Azure CLI credential: tokens from `az account get-access-token` on a developer
//! machine where someone ran `az login`.

mod output;

use std::fmt;
use std::io::ErrorKind;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::entra::REDIS_SCOPE;
use crate::error::Error;
use crate::source::{
    Exchange, Next, ProgramOutput, ProgramRequest, Step, StepOutput, TokenSource, unexpected_output,
};

use output::LocalOffset;

/// The default time limit for one run of the Azure CLI, the same as in the Python and Go
/// Azure SDKs.
pub const DEFAULT_CLI_TIMEOUT: Duration = Duration::from_secs(10);

const NAME: &str = "Azure CLI";

/// The maximum number of characters of the CLI's standard error kept in an error message.
const MAX_STDERR_SUMMARY: usize = 300;

/// The user signed in with `az login`, as the Azure CLI reports it.
///
/// Each exchange runs `az account get-access-token --output json --resource <resource>`
/// (plus `--tenant <tenant>` when configured) directly, without a shell, and kills it
/// after a timeout (10 s by default).
///
/// The scope `https://redis.azure.com/.default` is passed as the v1 resource
/// `https://redis.azure.com` (the scope without `/.default`), as the Python and Go Azure
/// SDKs do, because older CLI versions accept only `--resource`. A scope that does not
/// end in `/.default` has no resource form and is passed with `--scope`.
///
/// The CLI prints the expiry as `expires_on` (Unix seconds, since Azure CLI 2.54.0) and
/// as `expiresOn` (local time without a zone). `expires_on` is used when present.
/// Reading `expiresOn` needs the local time zone, which this I/O-free core cannot look
/// up. The caller supplies it with [`with_local_offset`](Self::with_local_offset), and
/// the blocking adapter's `with_system_time_zone` passes the operating system's zone.
/// Without a local offset, `expiresOn` is ignored and the expiry comes from the token's
/// `exp` claim. When both are known, the earlier wins.
///
/// Errors: a missing `az` program and a CLI that is not logged in make the credential
/// unavailable ([`Error::CredentialUnavailable`]), so a chain moves on. Other failures
/// are [`Error::Io`] with the first error line of standard error. Standard output holds
/// the token and never appears in an error.
#[derive(Clone)]
pub struct AzureCliCredential {
    program: String,
    tenant_id: Option<String>,
    scope: String,
    timeout: Duration,
    local_offset: Option<Arc<LocalOffset>>,
}

impl Default for AzureCliCredential {
    fn default() -> Self {
        Self::new()
    }
}

impl AzureCliCredential {
    /// Creates a credential that runs `az` from `PATH` (`az.cmd` on Windows) for the
    /// Redis scope in the CLI's default tenant.
    pub fn new() -> Self {
        AzureCliCredential {
            program: default_program().to_owned(),
            tenant_id: None,
            scope: REDIS_SCOPE.to_owned(),
            timeout: DEFAULT_CLI_TIMEOUT,
            local_offset: None,
        }
    }

    /// Runs another program instead of `az` from `PATH`: a name looked up on `PATH`, or
    /// a path to the program.
    pub fn with_program(mut self, program: impl Into<String>) -> Self {
        self.program = program.into();
        self
    }

    /// Requests the token from this tenant instead of the CLI's default one.
    ///
    /// The tenant may contain only ASCII letters, digits, `.` and `-`, and must not
    /// start with `-`, so it cannot be read as a CLI option.
    pub fn with_tenant(mut self, tenant_id: &str) -> Result<Self, Error> {
        check_argument("Azure CLI tenant", tenant_id, ".-")?;
        self.tenant_id = Some(tenant_id.to_owned());
        Ok(self)
    }

    /// Requests another scope than `https://redis.azure.com/.default`.
    ///
    /// The scope may contain only ASCII letters, digits and `.-_:/`, and must not start
    /// with `-`, so it cannot be read as a CLI option.
    pub fn with_scope(mut self, scope: &str) -> Result<Self, Error> {
        check_argument("Azure CLI scope", scope, ".-_:/")?;
        self.scope = scope.to_owned();
        Ok(self)
    }

    /// Sets the time after which the CLI is killed (default 10 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Supplies the local time zone for reading `expiresOn`, which older CLIs print as
    /// local time without a zone: `offset` returns the zone's offset from UTC in seconds
    /// east (3600 for UTC+1) at an instant, or `None` when it is unknown.
    pub fn with_local_offset(
        mut self,
        offset: impl Fn(SystemTime) -> Option<i32> + Send + Sync + 'static,
    ) -> Self {
        self.local_offset = Some(Arc::new(offset));
        self
    }

    /// Returns the program and arguments that each exchange runs.
    pub fn program_request(&self) -> ProgramRequest {
        let mut args: Vec<String> = ["account", "get-access-token", "--output", "json"]
            .map(str::to_owned)
            .into();
        match self.scope.strip_suffix("/.default") {
            Some(resource) => args.extend(["--resource".to_owned(), resource.to_owned()]),
            None => args.extend(["--scope".to_owned(), self.scope.clone()]),
        }
        if let Some(tenant_id) = &self.tenant_id {
            args.extend(["--tenant".to_owned(), tenant_id.clone()]);
        }
        ProgramRequest {
            program: self.program.clone(),
            args,
            timeout: self.timeout,
        }
    }

    /// Returns the command for messages, such as `az account get-access-token`.
    fn command(&self) -> String {
        format!("{} account get-access-token", self.program)
    }

    fn unavailable(&self, reason: String) -> Error {
        Error::CredentialUnavailable {
            credential: NAME.to_owned(),
            reason,
        }
    }

    fn not_installed(&self) -> Error {
        self.unavailable(format!(
            "Azure CLI not installed: `{}` was not found; install the Azure CLI and run \
             `az login`, or put its directory on PATH",
            self.program
        ))
    }

    /// Classifies a failed start or a timeout of the program.
    fn on_step_error(&self, error: Error) -> Error {
        match error {
            Error::Io {
                kind: ErrorKind::NotFound,
                ..
            } => self.not_installed(),
            Error::Io {
                kind: ErrorKind::TimedOut,
                reason,
                ..
            } => Error::Io {
                operation: format!("run {}", self.command()),
                kind: ErrorKind::TimedOut,
                reason: format!(
                    "{reason}; the CLI may be waiting for input: run `az login` in a \
                     terminal, or raise the timeout"
                ),
            },
            other => other,
        }
    }

    /// Classifies what the finished program printed.
    fn on_output(&self, output: &ProgramOutput, now: SystemTime) -> Result<crate::Token, Error> {
        let stderr = String::from_utf8_lossy(&output.stderr);
        match output.exit_code {
            Some(0) => output::parse_output(&output.stdout, now, self.local_offset.as_deref())
                .map_err(|reason| Error::Io {
                    operation: format!("read the output of {}", self.command()),
                    kind: ErrorKind::InvalidData,
                    reason,
                }),
            // 127 is a shell's "command not found", as from an `env` or a wrapper script;
            // cmd.exe reports a missing `az` on standard error instead.
            Some(127) => Err(self.not_installed()),
            _ if stderr.trim_start().starts_with("'az' is not recognized") => {
                Err(self.not_installed())
            }
            _ if is_not_logged_in(&stderr) => Err(self.unavailable(format!(
                "not logged in; run `az login` ({})",
                summarize_stderr(&stderr)
            ))),
            exit_code => {
                let status = match exit_code {
                    Some(code) => format!("exited with status {code}"),
                    None => "was ended by a signal".to_owned(),
                };
                Err(Error::Io {
                    operation: format!("run {}", self.command()),
                    kind: ErrorKind::Other,
                    reason: format!("the CLI {status}: {}", summarize_stderr(&stderr)),
                })
            }
        }
    }
}

fn default_program() -> &'static str {
    // `Command` looks only for `.exe` files on Windows, and the CLI installs `az.cmd`.
    // NOTE: the Windows name follows the Azure SDKs; it is not tested here.
    if cfg!(windows) { "az.cmd" } else { "az" }
}

/// Checks a value that becomes a CLI argument: ASCII letters, digits and `extra` only,
/// and no leading `-`, so it can neither inject an option nor reach a shell.
fn check_argument(setting: &str, value: &str, extra: &str) -> Result<(), Error> {
    let valid_chars = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || extra.contains(c));
    if !value.is_empty() && valid_chars && !value.starts_with('-') {
        return Ok(());
    }
    let extra: Vec<String> = extra.chars().map(|c| format!("`{c}`")).collect();
    Err(Error::config(
        setting,
        format!(
            "`{value}` must be non-empty, contain only ASCII letters, digits and {}, and \
             not start with `-`",
            extra.join(" ")
        ),
    ))
}

/// Returns true when the CLI printed its advice to run `az login` (or `az account set`)
/// because no account is signed in. Entra errors such as an expired refresh token end
/// with the same advice, but carry an AADSTS code and are real failures.
fn is_not_logged_in(stderr: &str) -> bool {
    (stderr.contains("az login") || stderr.contains("az account set")) && !stderr.contains("AADSTS")
}

/// Keeps the CLI's `ERROR:` line (else the first line) of standard error, without any
/// line that may contain a token, and at most 300 characters of it.
fn summarize_stderr(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .filter(|line| !line.contains("accessToken") && !line.contains("eyJ"))
        .collect();
    let line = lines
        .iter()
        .find(|line| line.starts_with("ERROR:"))
        .or(lines.first());
    match line {
        Some(line) => line.chars().take(MAX_STDERR_SUMMARY).collect(),
        None => "no error output".to_owned(),
    }
}

impl fmt::Debug for AzureCliCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureCliCredential")
            .field("program", &self.program)
            .field("tenant_id", &self.tenant_id)
            .field("scope", &self.scope)
            .field("timeout", &self.timeout)
            .field("local_offset", &self.local_offset.is_some())
            .finish()
    }
}

impl TokenSource for AzureCliCredential {
    fn name(&self) -> &str {
        NAME
    }

    fn exchange(&self) -> Box<dyn Exchange> {
        Box::new(CliExchange(self.clone()))
    }
}

/// Runs the CLI once and reads its output.
struct CliExchange(AzureCliCredential);

impl Exchange for CliExchange {
    fn start(&mut self, _now: SystemTime) -> Next {
        Next::Step(Step::Run(self.0.program_request()))
    }

    fn resume(&mut self, now: SystemTime, output: Result<StepOutput, Error>) -> Next {
        Next::Done(match output {
            Ok(StepOutput::Program(output)) => self.0.on_output(&output, now),
            Ok(other) => Err(unexpected_output(&other)),
            Err(error) => Err(self.0.on_step_error(error)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use std::time::UNIX_EPOCH;

    const T0: u64 = 1767225600;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn jwt(exp: u64) -> String {
        let payload = format!(r#"{{"oid":"o","exp":{exp}}}"#);
        format!("e30.{}.c2ln", URL_SAFE_NO_PAD.encode(payload))
    }

    fn program_output(exit_code: Option<i32>, stdout: &str, stderr: &str) -> StepOutput {
        StepOutput::Program(ProgramOutput {
            exit_code,
            stdout: stdout.as_bytes().to_vec(),
            stderr: stderr.as_bytes().to_vec(),
        })
    }

    /// Runs one exchange of `credential` with `output` as the program's result.
    fn run(
        credential: &AzureCliCredential,
        output: Result<StepOutput, Error>,
    ) -> Result<crate::Token, Error> {
        let mut exchange = credential.exchange();
        match exchange.start(at(T0)) {
            Next::Step(Step::Run(request)) => assert_eq!(request, credential.program_request()),
            other => panic!("expected a program to run, got {other:?}"),
        }
        match exchange.resume(at(T0), output) {
            Next::Done(outcome) => outcome,
            other => panic!("expected the outcome, got {other:?}"),
        }
    }

    fn args(credential: &AzureCliCredential) -> Vec<String> {
        credential.program_request().args
    }

    #[test]
    fn default_command_uses_resource() {
        let request = AzureCliCredential::new().program_request();
        assert_eq!(request.program, default_program());
        assert_eq!(
            request.args,
            [
                "account",
                "get-access-token",
                "--output",
                "json",
                "--resource",
                "https://redis.azure.com"
            ]
        );
        assert_eq!(request.timeout, Duration::from_secs(10));
    }

    #[test]
    fn tenant_scope_and_timeout_are_passed() {
        let credential = AzureCliCredential::new()
            .with_program("/opt/az/bin/az")
            .with_tenant("contoso.onmicrosoft.com")
            .unwrap()
            .with_scope("acca5fbb-b7e4-4009-81f1-37e38fd66d78/.default")
            .unwrap()
            .with_timeout(Duration::from_secs(3));
        let request = credential.program_request();
        assert_eq!(request.program, "/opt/az/bin/az");
        assert_eq!(
            request.args[4..],
            [
                "--resource",
                "acca5fbb-b7e4-4009-81f1-37e38fd66d78",
                "--tenant",
                "contoso.onmicrosoft.com"
            ]
        );
        assert_eq!(request.timeout, Duration::from_secs(3));
        let credential = AzureCliCredential::new()
            .with_scope("api://my-app/Redis.Access")
            .unwrap();
        assert_eq!(
            args(&credential)[4..],
            ["--scope", "api://my-app/Redis.Access"]
        );
    }

    #[test]
    fn arguments_that_could_inject_are_rejected() {
        for tenant in [
            "", "-t", "--debug", "a b", "a;b", "t/../x", "t\n", "tenant'",
        ] {
            let error = AzureCliCredential::new().with_tenant(tenant).unwrap_err();
            assert!(
                error.to_string().starts_with("invalid Azure CLI tenant:"),
                "{tenant:?}: {error}"
            );
        }
        for scope in [
            "",
            "-x",
            "--query=accessToken",
            "https://redis.azure.com/.default --debug",
            "https://redis.azure.com/.default;rm",
            "https://redis.azure.com/$(id)",
            "https://redis.azure.com/?x=1",
        ] {
            let error = AzureCliCredential::new().with_scope(scope).unwrap_err();
            assert!(
                error.to_string().starts_with("invalid Azure CLI scope:"),
                "{scope:?}: {error}"
            );
        }
        assert_eq!(
            AzureCliCredential::new()
                .with_tenant("-x")
                .unwrap_err()
                .to_string(),
            "invalid Azure CLI tenant: `-x` must be non-empty, contain only ASCII letters, \
             digits and `.` `-`, and not start with `-`"
        );
    }

    #[test]
    fn current_cli_output_uses_expires_on() {
        let token = jwt(T0 + 7200);
        let stdout = format!(
            r#"{{
  "accessToken": "{token}",
  "expiresOn": "2026-01-01 02:00:00.000000",
  "expires_on": {},
  "subscription": "00000000-0000-0000-0000-00000000000b",
  "tenant": "00000000-0000-0000-0000-0000000000aa",
  "tokenType": "Bearer"
}}"#,
            T0 + 3600
        );
        let credential = AzureCliCredential::new().with_local_offset(|_| Some(-7200));
        let token = run(&credential, Ok(program_output(Some(0), &stdout, ""))).unwrap();
        assert_eq!(token.expires_on(), at(T0 + 3600));
        assert_eq!(token.claims().unwrap().oid.as_deref(), Some("o"));
    }

    #[test]
    fn older_cli_output_is_read_as_local_time() {
        let stdout = format!(
            r#"{{"accessToken": "{}", "expiresOn": "2026-01-01 02:00:00.000000", "subscription": "s", "tenant": "t", "tokenType": "Bearer"}}"#,
            jwt(T0 + 7200)
        );
        let output = || Ok(program_output(Some(0), &stdout, ""));
        // UTC+1: 02:00 local is 01:00 UTC, earlier than the token's `exp`.
        let credential = AzureCliCredential::new().with_local_offset(|_| Some(3600));
        assert_eq!(
            run(&credential, output()).unwrap().expires_on(),
            at(T0 + 3600)
        );
        // Without a local zone the token's `exp` is used.
        let credential = AzureCliCredential::new();
        assert_eq!(
            run(&credential, output()).unwrap().expires_on(),
            at(T0 + 7200)
        );
    }

    #[test]
    fn missing_program_is_not_installed() {
        let credential = AzureCliCredential::new();
        let spawn_failed = Error::Io {
            operation: "run az".to_owned(),
            kind: ErrorKind::NotFound,
            reason: "No such file or directory (os error 2)".to_owned(),
        };
        let expected = "Azure CLI credential unavailable: Azure CLI not installed: `az` was \
                        not found; install the Azure CLI and run `az login`, or put its \
                        directory on PATH";
        let error = run(&credential, Err(spawn_failed)).unwrap_err();
        assert!(matches!(error, Error::CredentialUnavailable { .. }));
        assert_eq!(error.to_string(), expected);
        let error = run(
            &credential,
            Ok(program_output(Some(127), "", "env: 'az': No such file")),
        );
        assert_eq!(error.unwrap_err().to_string(), expected);
        let windows = "'az' is not recognized as an internal or external command,\r\noperable program or batch file.";
        let error = run(&credential, Ok(program_output(Some(1), "", windows)));
        assert_eq!(error.unwrap_err().to_string(), expected);
    }

    #[test]
    fn not_logged_in_is_unavailable() {
        let credential = AzureCliCredential::new();
        for stderr in [
            "ERROR: Please run 'az login' to setup account.\n",
            "WARNING: a warning\nERROR: Please run 'az login' to setup account.",
            "ERROR: No subscription found. Run 'az account set' to select a subscription.",
        ] {
            let error = run(&credential, Ok(program_output(Some(1), "", stderr))).unwrap_err();
            let Error::CredentialUnavailable { credential, reason } = &error else {
                panic!("expected CredentialUnavailable, got {error}");
            };
            assert_eq!(credential, "Azure CLI");
            assert!(
                reason.starts_with("not logged in; run `az login` (ERROR: "),
                "{reason}"
            );
            assert!(!error.is_transient());
        }
    }

    #[test]
    fn entra_error_with_login_advice_is_a_failure() {
        let stderr = "ERROR: AADSTS700082: The refresh token has expired due to inactivity.\n\
                      To re-authenticate, please run:\naz login --scope https://redis.azure.com/.default";
        let error = run(
            &AzureCliCredential::new(),
            Ok(program_output(Some(1), "", stderr)),
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "cannot run az account get-access-token: the CLI exited with status 1: ERROR: \
             AADSTS700082: The refresh token has expired due to inactivity."
        );
    }

    #[test]
    fn failure_message_never_contains_the_token() {
        let token = jwt(T0 + 3600);
        let stdout = format!(r#"{{"accessToken": "{token}", "#);
        let stderr = format!("{{\"accessToken\": \"{token}\"}}\nERROR: something broke");
        let credential = AzureCliCredential::new();
        let cases = [
            program_output(Some(0), &stdout, ""),
            program_output(Some(2), &stdout, &stderr),
            program_output(None, &stdout, &format!("{token}\n")),
        ];
        for output in cases {
            let error = run(&credential, Ok(output)).unwrap_err();
            let message = error.to_string();
            assert!(!message.contains(&token), "{message}");
            assert!(!format!("{error:?}").contains(&token), "{message}");
        }
        let error = run(&credential, Ok(program_output(Some(2), &stdout, &stderr))).unwrap_err();
        assert_eq!(
            error.to_string(),
            "cannot run az account get-access-token: the CLI exited with status 2: ERROR: \
             something broke"
        );
        let error = run(&credential, Ok(program_output(None, "", ""))).unwrap_err();
        assert_eq!(
            error.to_string(),
            "cannot run az account get-access-token: the CLI was ended by a signal: no \
             error output"
        );
    }

    #[test]
    fn invalid_output_is_invalid_data() {
        let error = run(
            &AzureCliCredential::new(),
            Ok(program_output(Some(0), "Welcome to Azure CLI", "")),
        )
        .unwrap_err();
        assert_eq!(
            error,
            Error::Io {
                operation: "read the output of az account get-access-token".to_owned(),
                kind: ErrorKind::InvalidData,
                reason: "the output is not JSON".to_owned(),
            }
        );
    }

    #[test]
    fn timeout_suggests_login_and_stays_transient() {
        let timed_out = Error::Io {
            operation: "run az".to_owned(),
            kind: ErrorKind::TimedOut,
            reason: "no exit after 10.0 s".to_owned(),
        };
        let error = run(&AzureCliCredential::new(), Err(timed_out)).unwrap_err();
        assert!(error.is_transient());
        assert_eq!(
            error.to_string(),
            "cannot run az account get-access-token: no exit after 10.0 s; the CLI may be \
             waiting for input: run `az login` in a terminal, or raise the timeout"
        );
    }

    #[test]
    fn stderr_summary_is_bounded() {
        let long = format!("ERROR: {}", "x".repeat(1000));
        assert_eq!(summarize_stderr(&long).chars().count(), MAX_STDERR_SUMMARY);
        assert_eq!(summarize_stderr("\n  \n"), "no error output");
        assert_eq!(summarize_stderr("first\nsecond"), "first");
    }

    #[test]
    fn debug_lists_settings() {
        let debug = format!(
            "{:?}",
            AzureCliCredential::new().with_local_offset(|_| Some(0))
        );
        assert!(debug.contains("local_offset: true"), "{debug}");
        assert!(
            debug.contains("https://redis.azure.com/.default"),
            "{debug}"
        );
    }
}
