use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::http::HttpResponse;
use crate::source::{ProgramOutput, StaticToken, Step};
use crate::token::Token;

const T0: u64 = 1767225600;
const TENANT: &str = "00000000-0000-0000-0000-0000000000aa";
const CLIENT_ID: &str = "99999999-8888-7777-6666-555555555555";
const TOKEN_FILE: &str = "/var/run/secrets/azure/tokens/azure-identity-token";

const SECRET_VARS: &[(&str, &str)] = &[
    ("AZURE_TENANT_ID", TENANT),
    ("AZURE_CLIENT_ID", CLIENT_ID),
    ("AZURE_CLIENT_SECRET", "s3cret"),
];
const CERTIFICATE_PATH: &str = "/certs/sp.pem";
const CERTIFICATE_VARS: &[(&str, &str)] = &[
    ("AZURE_TENANT_ID", TENANT),
    ("AZURE_CLIENT_ID", CLIENT_ID),
    ("AZURE_CLIENT_CERTIFICATE_PATH", CERTIFICATE_PATH),
];
const WORKLOAD_VARS: &[(&str, &str)] = &[
    ("AZURE_TENANT_ID", TENANT),
    ("AZURE_CLIENT_ID", CLIENT_ID),
    ("AZURE_FEDERATED_TOKEN_FILE", TOKEN_FILE),
];

/// Returns the environment credential's reason when no service principal variable is set.
fn no_service_principal() -> &'static str {
    if cfg!(feature = "certificate") {
        "neither AZURE_CLIENT_SECRET nor AZURE_CLIENT_CERTIFICATE_PATH is set; a service \
         principal needs AZURE_TENANT_ID and AZURE_CLIENT_ID with AZURE_CLIENT_SECRET or \
         AZURE_CLIENT_CERTIFICATE_PATH"
    } else {
        "AZURE_CLIENT_SECRET is not set; a service principal needs AZURE_TENANT_ID, \
         AZURE_CLIENT_ID and AZURE_CLIENT_SECRET"
    }
}

/// Returns the first step of a chain with [`CERTIFICATE_VARS`]: the read of the
/// certificate, or the Azure CLI at the end of the chain without the `certificate` feature.
fn certificate_first() -> First {
    if cfg!(feature = "certificate") {
        First::Read(CERTIFICATE_PATH.into())
    } else {
        cli_args()
    }
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(T0)
}

fn chain_from(pairs: &[(&str, &str)]) -> Result<ChainedCredential, Error> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    ChainedCredential::from_env(move |name| map.get(name).cloned())
}

fn with(
    base: &[(&'static str, &'static str)],
    extra: &[(&'static str, &'static str)],
) -> Vec<(&'static str, &'static str)> {
    base.iter().chain(extra).copied().collect()
}

/// What the first step of an exchange shows about the credential that acts.
#[derive(Debug, PartialEq, Eq)]
enum First {
    Post(String),
    Read(PathBuf),
    Run(Vec<String>),
    Unavailable,
}

/// The IMDS token URL that a chain without managed-identity variables probes.
const IMDS_URL: &str = "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fredis.azure.com";

/// Answers a chain's IMDS probe as a host off Azure does: nothing listens. No request
/// is sent; the exchange only receives the transport error.
fn skip_imds_probe(exchange: &mut dyn Exchange, next: Next) -> Next {
    match next {
        Next::Step(Step::Http(request)) if request.url.starts_with(IMDS_URL) => {
            assert_eq!(request.timeout, IMDS_PROBE_TIMEOUT);
            let refused = Error::Transport {
                reason: "connection refused".to_owned(),
                timed_out: false,
            };
            exchange.resume(now(), Err(refused))
        }
        other => other,
    }
}

fn first_step(chain: &ChainedCredential) -> First {
    let mut exchange = chain.exchange();
    let mut next = exchange.start(now());
    if chain.names().len() > 1 {
        next = skip_imds_probe(exchange.as_mut(), next);
    }
    match next {
        Next::Step(Step::Http(request)) => First::Post(request.url),
        Next::Step(Step::ReadFile { path, .. }) => First::Read(path),
        Next::Step(Step::Run(program)) => First::Run(program.args),
        Next::Done(Err(Error::CredentialUnavailable { credential, .. })) if credential == NAME => {
            First::Unavailable
        }
        other => panic!("unexpected first step {other:?}"),
    }
}

fn entra_url(host: &str) -> First {
    First::Post(format!("{host}/{TENANT}/oauth2/v2.0/token"))
}

fn cli_args() -> First {
    First::Run(
        [
            "account",
            "get-access-token",
            "--output",
            "json",
            "--resource",
            "https://redis.azure.com",
        ]
        .map(str::to_owned)
        .into(),
    )
}

fn jwt(exp: u64) -> String {
    use base64::Engine;
    let payload = format!(r#"{{"oid":"o","exp":{exp}}}"#);
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload);
    format!("e30.{payload}.c2ln")
}

/// One environment setup and the chain it should produce.
struct Case {
    name: &'static str,
    env: Vec<(&'static str, &'static str)>,
    names: Vec<&'static str>,
    first: First,
}

impl Case {
    fn new(
        name: &'static str,
        env: Vec<(&'static str, &'static str)>,
        names: Vec<&'static str>,
        first: First,
    ) -> Self {
        Case {
            name,
            env,
            names,
            first,
        }
    }
}

#[test]
fn environment_selects_credential() {
    let public = "https://login.microsoftonline.com";
    let cases: Vec<Case> = vec![
        Case::new(
            "nothing set",
            vec![],
            vec![
                "environment",
                "workload identity",
                "managed identity",
                "Azure CLI",
            ],
            cli_args(),
        ),
        Case::new(
            "client secret",
            SECRET_VARS.to_vec(),
            vec![
                "environment",
                "workload identity",
                "managed identity",
                "Azure CLI",
            ],
            entra_url(public),
        ),
        Case::new(
            "client secret in US Government",
            with(
                SECRET_VARS,
                &[("AZURE_AUTHORITY_HOST", "login.microsoftonline.us")],
            ),
            vec![
                "environment",
                "workload identity",
                "managed identity",
                "Azure CLI",
            ],
            entra_url("https://login.microsoftonline.us"),
        ),
        Case::new(
            "workload identity",
            WORKLOAD_VARS.to_vec(),
            vec![
                "environment",
                "workload identity",
                "managed identity",
                "Azure CLI",
            ],
            First::Read(TOKEN_FILE.into()),
        ),
        Case::new(
            "secret wins over workload identity",
            with(SECRET_VARS, &[("AZURE_FEDERATED_TOKEN_FILE", TOKEN_FILE)]),
            vec![
                "environment",
                "workload identity",
                "managed identity",
                "Azure CLI",
            ],
            entra_url(public),
        ),
        Case::new(
            "dev keeps only the Azure CLI",
            with(SECRET_VARS, &[("AZURE_TOKEN_CREDENTIALS", "dev")]),
            vec!["Azure CLI"],
            cli_args(),
        ),
        Case::new(
            "prod without configuration",
            vec![("AZURE_TOKEN_CREDENTIALS", "prod")],
            vec!["environment", "workload identity", "managed identity"],
            First::Unavailable,
        ),
        Case::new(
            "prod with workload identity",
            with(WORKLOAD_VARS, &[("AZURE_TOKEN_CREDENTIALS", " Prod ")]),
            vec!["environment", "workload identity", "managed identity"],
            First::Read(TOKEN_FILE.into()),
        ),
        Case::new(
            "one name selects one credential",
            with(
                &with(SECRET_VARS, WORKLOAD_VARS),
                &[("AZURE_TOKEN_CREDENTIALS", "WorkloadIdentityCredential")],
            ),
            vec!["workload identity"],
            First::Read(TOKEN_FILE.into()),
        ),
        Case::new(
            "names ignore case",
            vec![("AZURE_TOKEN_CREDENTIALS", "AzureCLICredential")],
            vec!["Azure CLI"],
            cli_args(),
        ),
        Case::new(
            "environment credential alone",
            with(
                SECRET_VARS,
                &[("AZURE_TOKEN_CREDENTIALS", "environmentcredential")],
            ),
            vec!["environment"],
            entra_url(public),
        ),
        Case::new(
            "managed identity alone is not probed",
            vec![("AZURE_TOKEN_CREDENTIALS", "ManagedIdentityCredential")],
            vec!["managed identity"],
            First::Post(IMDS_URL.to_owned()),
        ),
        Case::new(
            "empty selection is the default",
            vec![("AZURE_TOKEN_CREDENTIALS", "")],
            vec![
                "environment",
                "workload identity",
                "managed identity",
                "Azure CLI",
            ],
            cli_args(),
        ),
        Case::new(
            "client certificate",
            CERTIFICATE_VARS.to_vec(),
            vec![
                "environment",
                "workload identity",
                "managed identity",
                "Azure CLI",
            ],
            certificate_first(),
        ),
        Case::new(
            "secret wins over certificate",
            with(SECRET_VARS, CERTIFICATE_VARS),
            vec![
                "environment",
                "workload identity",
                "managed identity",
                "Azure CLI",
            ],
            entra_url(public),
        ),
        Case::new(
            "certificate wins over workload identity",
            with(
                CERTIFICATE_VARS,
                &[("AZURE_FEDERATED_TOKEN_FILE", TOKEN_FILE)],
            ),
            vec![
                "environment",
                "workload identity",
                "managed identity",
                "Azure CLI",
            ],
            if cfg!(feature = "certificate") {
                First::Read(CERTIFICATE_PATH.into())
            } else {
                First::Read(TOKEN_FILE.into())
            },
        ),
        Case::new(
            "certificate for environment credential alone",
            with(
                CERTIFICATE_VARS,
                &[("AZURE_TOKEN_CREDENTIALS", "EnvironmentCredential")],
            ),
            vec!["environment"],
            if cfg!(feature = "certificate") {
                First::Read(CERTIFICATE_PATH.into())
            } else {
                First::Unavailable
            },
        ),
        Case::new(
            "certificate path without ids falls through",
            vec![("AZURE_CLIENT_CERTIFICATE_PATH", CERTIFICATE_PATH)],
            vec![
                "environment",
                "workload identity",
                "managed identity",
                "Azure CLI",
            ],
            cli_args(),
        ),
    ];
    for case in cases {
        let name = case.name;
        let chain = chain_from(&case.env).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(chain.names(), case.names, "{name}");
        assert_eq!(first_step(&chain), case.first, "{name}");
    }
}

#[test]
fn unknown_selection_is_config_error() {
    for value in ["bogus", "AzureDeveloperCliCredential", "dev,prod"] {
        let error = chain_from(&[("AZURE_TOKEN_CREDENTIALS", value)]).unwrap_err();
        assert!(
            error.to_string().starts_with(&format!(
                "invalid AZURE_TOKEN_CREDENTIALS: `{value}` is not supported;"
            )),
            "{error}"
        );
    }
}

#[test]
fn all_unavailable_lists_each_reason() {
    let chain = chain_from(&[("AZURE_TOKEN_CREDENTIALS", "prod")]).unwrap();
    let mut exchange = chain.exchange();
    let next = exchange.start(now());
    let Next::Done(Err(error)) = skip_imds_probe(exchange.as_mut(), next) else {
        panic!("expected the exchange to end");
    };
    assert!(!error.is_transient());
    let message = error.to_string();
    assert!(
        message.starts_with(&format!(
            "chained credential unavailable: no credential in the chain is available \
             (environment credential unavailable: {};",
            no_service_principal()
        )),
        "{message}"
    );
    assert!(
        message.contains("; workload identity credential unavailable: AZURE_TENANT_ID,"),
        "{message}"
    );
    assert!(
        message.ends_with(
            "; managed identity credential unavailable: no IMDS endpoint answered \
             (connection refused))"
        ),
        "{message}"
    );
}

#[test]
fn real_failure_stops_chain() {
    let chain = chain_from(WORKLOAD_VARS).unwrap();
    let mut exchange = chain.exchange();
    assert!(matches!(
        exchange.start(now()),
        Next::Step(Step::ReadFile { .. })
    ));
    let missing = Error::Io {
        operation: format!("read {TOKEN_FILE}"),
        kind: std::io::ErrorKind::NotFound,
        reason: "No such file or directory (os error 2)".to_owned(),
    };
    let Next::Done(Err(error)) = exchange.resume(now(), Err(missing.clone())) else {
        panic!("expected the chain to stop instead of running the Azure CLI");
    };
    let Error::ChainFailed {
        credential,
        error: cause,
        unavailable,
    } = &error
    else {
        panic!("expected ChainFailed, got {error}");
    };
    assert_eq!(credential, "workload identity");
    assert_eq!(**cause, missing);
    assert_eq!(unavailable.len(), 1);
    assert!(error.is_transient(), "an I/O error may pass");
    assert!(chain.selected().is_none());
    assert_eq!(
        error.to_string(),
        format!(
            "workload identity credential failed: cannot read {TOKEN_FILE}: No such file or \
             directory (os error 2) (tried before: environment credential unavailable: {})",
            no_service_principal()
        )
    );
}

#[cfg(feature = "certificate")]
#[test]
fn unreadable_certificate_stops_chain() {
    let chain = chain_from(CERTIFICATE_VARS).unwrap();
    let mut exchange = chain.exchange();
    let Next::Step(Step::ReadFile { path, max_len }) = exchange.start(now()) else {
        panic!("expected the read of the certificate");
    };
    assert_eq!(path, PathBuf::from(CERTIFICATE_PATH));
    assert_eq!(max_len, crate::certificate::MAX_CERTIFICATE_FILE_LEN);

    let missing = Error::Io {
        operation: format!("read {CERTIFICATE_PATH}"),
        kind: std::io::ErrorKind::NotFound,
        reason: "No such file or directory (os error 2)".to_owned(),
    };
    let Next::Done(Err(error)) = exchange.resume(now(), Err(missing)) else {
        panic!("expected the chain to stop instead of trying workload identity");
    };

    let Error::ChainFailed {
        credential,
        error: cause,
        unavailable,
    } = &error
    else {
        panic!("expected ChainFailed, got {error}");
    };
    assert_eq!(credential, "environment");
    assert!(unavailable.is_empty());
    assert!(!error.is_transient(), "a missing certificate needs a fix");
    assert!(chain.selected().is_none());
    assert_eq!(
        cause.to_string(),
        format!(
            "invalid AZURE_CLIENT_CERTIFICATE_PATH: `{CERTIFICATE_PATH}` does not exist; use \
             the path of a PEM or PKCS#12 file that contains the certificate and its private \
             key"
        )
    );
}

#[test]
fn endpoint_rejection_stops_chain() {
    let chain = chain_from(SECRET_VARS).unwrap();
    let mut exchange = chain.exchange();
    assert!(matches!(exchange.start(now()), Next::Step(Step::Http(_))));
    let mut response = HttpResponse {
        status: 401,
        headers: vec![],
        body: br#"{"error":"invalid_client","error_codes":[7000215]}"#.to_vec(),
    };
    let Next::Done(Err(error)) = exchange.resume(now(), Ok(StepOutput::Http(response.clone())))
    else {
        panic!("expected the chain to stop");
    };
    assert!(
        matches!(&error, Error::ChainFailed { credential, unavailable, .. }
        if credential == "environment" && unavailable.is_empty())
    );
    assert!(!error.is_transient());
    assert!(error.to_string().contains("AADSTS7000215"), "{error}");

    response.status = 429;
    response.headers.push(("Retry-After".into(), "7".into()));
    let mut exchange = chain.exchange();
    let _ = exchange.start(now());
    let Next::Done(Err(error)) = exchange.resume(now(), Ok(StepOutput::Http(response))) else {
        panic!("expected the chain to stop");
    };
    assert!(error.is_transient());
    assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
}

#[test]
fn invalid_variables_stop_chain_when_reached() {
    let chain = chain_from(&with(
        SECRET_VARS,
        &[("AZURE_AUTHORITY_HOST", "http://example.com")],
    ))
    .unwrap();
    let Next::Done(Err(error)) = chain.exchange().start(now()) else {
        panic!("expected the chain to stop");
    };
    assert!(
        error
            .to_string()
            .starts_with("environment credential failed: invalid AZURE_AUTHORITY_HOST:"),
        "{error}"
    );
}

#[test]
fn azure_cli_success_is_selected() {
    let chain = chain_from(&[]).unwrap();
    let mut exchange = chain.exchange();
    let next = exchange.start(now());
    assert_eq!(
        match skip_imds_probe(exchange.as_mut(), next) {
            Next::Step(Step::Run(program)) => First::Run(program.args),
            other => panic!("expected the Azure CLI, got {other:?}"),
        },
        cli_args()
    );
    let stdout = format!(
        r#"{{"accessToken":"{}","expires_on":{}}}"#,
        jwt(T0 + 3600),
        T0 + 3600
    );
    let output = ProgramOutput {
        exit_code: Some(0),
        stdout: stdout.into_bytes(),
        stderr: vec![],
    };
    let Next::Done(Ok(token)) = exchange.resume(now(), Ok(StepOutput::Program(output))) else {
        panic!("expected a token");
    };
    assert_eq!(token.expires_on(), now() + Duration::from_secs(3600));
    assert_eq!(chain.selected(), Some("Azure CLI"));
}

#[test]
fn options_scope_reaches_every_credential() {
    let map: HashMap<&str, &str> = SECRET_VARS.iter().copied().collect();
    let options = ChainOptions::default()
        .with_scope("api://my-app/.default")
        .unwrap()
        .with_azure_cli(AzureCliCredential::new().with_program("/opt/az/bin/az"));
    let chain =
        ChainedCredential::from_env_with(|n| map.get(n).map(|v| v.to_string()), options).unwrap();
    let Next::Step(Step::Http(request)) = chain.exchange().start(now()) else {
        panic!("expected the environment credential's request");
    };
    assert!(
        request
            .body
            .expose_secret()
            .contains("scope=api%3A%2F%2Fmy-app%2F.default")
    );
    let map: HashMap<&str, &str> = [("AZURE_TOKEN_CREDENTIALS", "dev")].into();
    let options = ChainOptions::default()
        .with_azure_cli(AzureCliCredential::new().with_program("/opt/az/bin/az"))
        .with_scope("api://my-app/.default")
        .unwrap();
    let chain =
        ChainedCredential::from_env_with(|n| map.get(n).map(|v| v.to_string()), options).unwrap();
    let Next::Step(Step::Run(program)) = chain.exchange().start(now()) else {
        panic!("expected the Azure CLI");
    };
    assert_eq!(program.program, "/opt/az/bin/az");
    assert_eq!(program.args[4..], ["--resource", "api://my-app"]);
    assert!(ChainOptions::default().with_scope("-x").is_err());
}

/// A source that is unavailable until `available` is set, and counts its exchanges.
struct Switchable {
    available: Arc<AtomicBool>,
    exchanges: Arc<AtomicUsize>,
    token: Token,
}

impl TokenSource for Switchable {
    fn name(&self) -> &str {
        "switchable"
    }

    fn exchange(&self) -> Box<dyn Exchange> {
        self.exchanges.fetch_add(1, Ordering::SeqCst);
        if self.available.load(Ordering::SeqCst) {
            StaticToken::new(self.token.clone()).exchange()
        } else {
            Box::new(Failing(Some(Error::CredentialUnavailable {
                credential: "switchable".to_owned(),
                reason: "switched off".to_owned(),
            })))
        }
    }
}

#[test]
fn chain_sticks_to_first_success() {
    let available = Arc::new(AtomicBool::new(false));
    let exchanges = Arc::new(AtomicUsize::new(0));
    let first = Switchable {
        available: Arc::clone(&available),
        exchanges: Arc::clone(&exchanges),
        token: Token::new("first", now() + Duration::from_secs(60)),
    };
    let second = StaticToken::new(Token::new("second", now() + Duration::from_secs(60)));
    let chain = ChainedCredential::new(vec![Box::new(first), Box::new(second)]);
    assert_eq!(chain.selected(), None);

    let Next::Done(Ok(token)) = chain.exchange().start(now()) else {
        panic!("expected the second source's token");
    };
    assert_eq!(token.access_token().expose_secret(), "second");
    assert_eq!(chain.selected(), Some("static token"));
    assert_eq!(exchanges.load(Ordering::SeqCst), 1);

    available.store(true, Ordering::SeqCst);
    let Next::Done(Ok(token)) = chain.exchange().start(now()) else {
        panic!("expected a token");
    };
    assert_eq!(token.access_token().expose_secret(), "second");
    assert_eq!(
        exchanges.load(Ordering::SeqCst),
        1,
        "first source tried again"
    );
}

#[test]
fn selected_credential_errors_are_returned() {
    let available = Arc::new(AtomicBool::new(true));
    let switchable = Switchable {
        available: Arc::clone(&available),
        exchanges: Arc::new(AtomicUsize::new(0)),
        token: Token::new("first", now() + Duration::from_secs(60)),
    };
    let fallback = StaticToken::new(Token::new("second", now() + Duration::from_secs(60)));
    let chain = ChainedCredential::new(vec![Box::new(switchable), Box::new(fallback)]);
    assert!(matches!(chain.exchange().start(now()), Next::Done(Ok(_))));
    assert_eq!(chain.selected(), Some("switchable"));

    available.store(false, Ordering::SeqCst);
    let Next::Done(Err(error)) = chain.exchange().start(now()) else {
        panic!("expected the selected source's error, not the fallback's token");
    };
    assert_eq!(
        error.to_string(),
        "switchable credential failed: switchable credential unavailable: switched off"
    );
}

#[test]
fn empty_chain_is_unavailable() {
    let chain = ChainedCredential::new(Vec::new());
    let Next::Done(Err(error)) = chain.exchange().start(now()) else {
        panic!("expected an error");
    };
    assert_eq!(
        error.to_string(),
        "chained credential unavailable: the chain has no credentials"
    );
}

#[test]
fn debug_lists_credentials() {
    let chain = chain_from(SECRET_VARS).unwrap();
    let debug = format!("{chain:?}");
    assert_eq!(
        debug,
        "ChainedCredential { credentials: [\"environment\", \"workload identity\", \
         \"managed identity\", \"Azure CLI\"], selected: None }"
    );
}

#[test]
fn imds_probe_ends_after_first_answer() {
    let chain = chain_from(&[("AZURE_TOKEN_CREDENTIALS", "prod")]).unwrap();
    let mut exchange = chain.exchange();
    let Next::Step(Step::Http(probe)) = exchange.start(now()) else {
        panic!("expected the IMDS probe");
    };
    assert_eq!(probe.timeout, IMDS_PROBE_TIMEOUT);
    let body = format!(
        r#"{{"access_token":"{}","expires_in":"86399"}}"#,
        jwt(T0 + 86399)
    );
    let response = HttpResponse {
        status: 200,
        headers: vec![],
        body: body.into_bytes(),
    };
    let Next::Done(Ok(_)) = exchange.resume(now(), Ok(StepOutput::Http(response))) else {
        panic!("expected a token from IMDS");
    };
    assert_eq!(chain.selected(), Some("managed identity"));
    let Next::Step(Step::Http(request)) = chain.exchange().start(now()) else {
        panic!("expected a managed-identity request");
    };
    assert!(request.url.starts_with(IMDS_URL), "{}", request.url);
    assert!(
        request.timeout > IMDS_PROBE_TIMEOUT,
        "{:?}",
        request.timeout
    );
}
