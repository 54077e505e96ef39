//! Workload identity: a Kubernetes service-account token exchanged for an Entra token.
//!
//! In AKS the workload identity webhook projects a service-account token into the pod and
//! sets `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_FEDERATED_TOKEN_FILE` and
//! `AZURE_AUTHORITY_HOST`. The kubelet replaces the token before it expires by swapping a
//! symbolic link, so the file is read again at every exchange.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use log::debug;

use crate::entra::{
    AuthorityHost, DEFAULT_REQUEST_TIMEOUT, REDIS_SCOPE, authority_host_from_env,
    validate_client_id, validate_tenant,
};
use crate::error::Error;
use crate::http::{HttpRequest, HttpResponse};
use crate::response::{parse_error_response, parse_token_response};
use crate::secret::Secret;
use crate::source::{Exchange, Next, Step, StepOutput, TokenSource, unexpected_output};

/// The `client_assertion_type` of a JWT assertion (RFC 7523).
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The largest federated token file read. A service-account token is one or two
/// kilobytes; the bound keeps a wrong path (a log file, a device) from being read whole.
pub const MAX_ASSERTION_LEN: u64 = 64 * 1024;

/// AADSTS codes for an assertion outside its valid time range: 700024 is what Entra
/// returns for a stale federated token, 500133 is the documented name of the same fault.
const STALE_ASSERTION_CODES: &[u64] = &[700024, 500133];

const NAME: &str = "workload identity";

/// The environment variables that workload identity needs, as the AKS webhook sets them.
const REQUIRED_VARIABLES: [&str; 3] = [
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
];

/// A Kubernetes workload identity (AKS): exchanges the service-account token in a file
/// for an Entra token with the client-credentials grant.
///
/// Every exchange reads the file again, following symbolic links, so a token the kubelet
/// rotated is picked up at once. When Entra rejects the assertion as outside its valid
/// time range (AADSTS700024), the exchange reads the file once more and retries once. A
/// second rejection is returned as a permanent error.
#[derive(Clone)]
pub struct WorkloadIdentityCredential {
    authority: AuthorityHost,
    tenant_id: String,
    client_id: String,
    token_file: PathBuf,
    scope: String,
    timeout: Duration,
}

impl WorkloadIdentityCredential {
    /// Creates a credential for the public cloud and the Redis scope.
    pub fn new(
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        token_file: impl Into<PathBuf>,
    ) -> Result<Self, Error> {
        let tenant_id = tenant_id.into();
        let client_id = client_id.into();
        let token_file = token_file.into();
        validate_tenant(&tenant_id)?;
        validate_client_id(&client_id)?;
        if token_file.as_os_str().is_empty() {
            return Err(Error::config("federated token file", "the path is empty"));
        }
        Ok(WorkloadIdentityCredential {
            authority: AuthorityHost::default(),
            tenant_id,
            client_id,
            token_file,
            scope: REDIS_SCOPE.to_owned(),
            timeout: DEFAULT_REQUEST_TIMEOUT,
        })
    }

    /// Reads `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_FEDERATED_TOKEN_FILE` and the
    /// optional `AZURE_AUTHORITY_HOST` through `lookup` (pass
    /// `|name| std::env::var(name).ok()`).
    ///
    /// An empty variable counts as unset. Unset variables make the credential
    /// unavailable ([`Error::CredentialUnavailable`] naming them), so a chain moves on;
    /// invalid values are [`Error::Config`].
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let missing: Vec<&str> = REQUIRED_VARIABLES
            .into_iter()
            .filter(|name| get(name).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(Error::CredentialUnavailable {
                credential: NAME.to_owned(),
                reason: format!(
                    "{} not set; the AKS workload identity webhook sets AZURE_TENANT_ID, \
                     AZURE_CLIENT_ID and AZURE_FEDERATED_TOKEN_FILE in pods labelled \
                     azure.workload.identity/use=true",
                    list_unset(&missing)
                ),
            });
        }
        let value = |name: &str| get(name).unwrap_or_default();
        let credential = Self::new(
            value("AZURE_TENANT_ID"),
            value("AZURE_CLIENT_ID"),
            value("AZURE_FEDERATED_TOKEN_FILE"),
        )?;
        match authority_host_from_env(&lookup)? {
            Some(authority) => Ok(WorkloadIdentityCredential {
                authority,
                ..credential
            }),
            None => Ok(credential),
        }
    }

    /// Uses another authority host, for a sovereign cloud or a local mock.
    pub fn with_authority_host(mut self, host: &str) -> Result<Self, Error> {
        self.authority = AuthorityHost::parse(host)?;
        Ok(self)
    }

    /// Requests another scope than `https://redis.azure.com/.default`.
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = scope.into();
        self
    }

    /// Sets the time limit for one token request (default 10 s).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Returns the token endpoint: `{authority}/{tenant}/oauth2/v2.0/token`.
    pub fn token_url(&self) -> String {
        self.authority.token_url(&self.tenant_id)
    }

    /// Returns the federated token file, which every exchange reads.
    pub fn token_file(&self) -> &Path {
        &self.token_file
    }

    fn read_step(&self) -> Next {
        Next::Step(Step::ReadFile {
            path: self.token_file.clone(),
            max_len: MAX_ASSERTION_LEN,
        })
    }

    fn token_request(&self, assertion: &str) -> HttpRequest {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", &self.client_id)
            .append_pair("client_assertion_type", JWT_BEARER)
            .append_pair("client_assertion", assertion)
            .append_pair("scope", &self.scope)
            .append_pair("grant_type", "client_credentials")
            .finish();
        HttpRequest::post_form(self.token_url(), Secret::new(body), self.timeout)
    }

    /// Turns the file contents into an assertion: UTF-8, surrounding whitespace removed,
    /// not empty. Errors never include the contents.
    fn assertion(&self, contents: Vec<u8>) -> Result<Secret, Error> {
        let invalid = |reason: &str| Error::Io {
            operation: format!("read {}", self.token_file.display()),
            kind: std::io::ErrorKind::InvalidData,
            reason: reason.to_owned(),
        };
        let text = String::from_utf8(contents)
            .map_err(|_| invalid("the federated token file is not UTF-8 text"))?;
        let assertion = text.trim();
        if assertion.is_empty() {
            return Err(invalid("the federated token file is empty"));
        }
        Ok(Secret::new(assertion))
    }
}

/// Lists unset variables for a message: `A is`, `A and B are`, `A, B and C are`.
pub(crate) fn list_unset(names: &[&str]) -> String {
    match names {
        [one] => format!("{one} is"),
        [first @ .., last] => format!("{} and {last} are", first.join(", ")),
        [] => String::new(),
    }
}

impl fmt::Debug for WorkloadIdentityCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadIdentityCredential")
            .field("authority", &self.authority.as_str())
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("token_file", &self.token_file)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl TokenSource for WorkloadIdentityCredential {
    fn name(&self) -> &str {
        NAME
    }

    fn exchange(&self) -> Box<dyn Exchange> {
        Box::new(WorkloadExchange {
            credential: self.clone(),
            awaiting: Awaiting::File,
            retried: false,
        })
    }
}

/// The output a [`WorkloadExchange`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    File,
    Token,
}

/// Reads the assertion, posts it, and on a stale-assertion rejection reads and posts
/// once more.
struct WorkloadExchange {
    credential: WorkloadIdentityCredential,
    awaiting: Awaiting,
    /// Whether the file was already read again after a stale-assertion rejection.
    retried: bool,
}

impl WorkloadExchange {
    fn on_file(&mut self, contents: Vec<u8>) -> Next {
        match self.credential.assertion(contents) {
            Ok(assertion) => {
                self.awaiting = Awaiting::Token;
                let request = self.credential.token_request(assertion.expose_secret());
                Next::Step(Step::Http(request))
            }
            Err(error) => Next::Done(Err(error)),
        }
    }

    fn on_response(&mut self, response: &HttpResponse, now: SystemTime) -> Next {
        if (200..300).contains(&response.status) {
            return Next::Done(parse_token_response(response, now));
        }
        let error = parse_error_response(response);
        if !is_stale_assertion(&error) {
            return Next::Done(Err(error));
        }
        if self.retried {
            // The assertion was read from the file just before this request, so asking
            // again cannot help until the file or the clock is fixed.
            return Next::Done(Err(permanent(error)));
        }
        debug!(
            "workload identity assertion rejected as outside its valid time range; \
             reading {} again and retrying once",
            self.credential.token_file.display()
        );
        self.retried = true;
        self.awaiting = Awaiting::File;
        self.credential.read_step()
    }
}

impl Exchange for WorkloadExchange {
    fn start(&mut self, _now: SystemTime) -> Next {
        self.awaiting = Awaiting::File;
        self.credential.read_step()
    }

    fn resume(&mut self, now: SystemTime, output: Result<StepOutput, Error>) -> Next {
        match (self.awaiting, output) {
            (_, Err(error)) => Next::Done(Err(error)),
            (Awaiting::File, Ok(StepOutput::File(contents))) => self.on_file(contents),
            (Awaiting::Token, Ok(StepOutput::Http(response))) => self.on_response(&response, now),
            (_, Ok(other)) => Next::Done(Err(unexpected_output(&other))),
        }
    }
}

fn is_stale_assertion(error: &Error) -> bool {
    match error {
        Error::IdentityEndpoint(e) => e.codes.iter().any(|c| STALE_ASSERTION_CODES.contains(c)),
        _ => false,
    }
}

fn permanent(error: Error) -> Error {
    match error {
        Error::IdentityEndpoint(mut e) => {
            e.transient = false;
            Error::IdentityEndpoint(e)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Method;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use std::collections::HashMap;
    use std::io::ErrorKind;
    use std::time::UNIX_EPOCH;

    const T0: u64 = 1767225600;
    const TENANT: &str = "00000000-0000-0000-0000-0000000000aa";
    const CLIENT_ID: &str = "99999999-8888-7777-6666-555555555555";
    const TOKEN_FILE: &str = "/var/run/secrets/azure/tokens/azure-identity-token";
    const STALE_BODY: &str = r#"{"error":"invalid_client","error_description":"AADSTS700024: Client assertion is not within its valid time range. Current time: 2026-01-01T18:00:00Z.\r\nTrace ID: t","error_codes":[700024]}"#;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn full_env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_CLIENT_ID", CLIENT_ID),
            ("AZURE_FEDERATED_TOKEN_FILE", TOKEN_FILE),
        ]
    }

    fn credential() -> WorkloadIdentityCredential {
        WorkloadIdentityCredential::from_env(env(&full_env())).unwrap()
    }

    fn jwt(exp: u64) -> String {
        let payload = format!(r#"{{"oid":"o","exp":{exp}}}"#);
        format!("e30.{}.c2ln", URL_SAFE_NO_PAD.encode(payload))
    }

    fn response(status: u16, body: &str) -> Result<StepOutput, Error> {
        Ok(StepOutput::Http(HttpResponse {
            status,
            headers: vec![],
            body: body.as_bytes().to_vec(),
        }))
    }

    fn success() -> Result<StepOutput, Error> {
        let body = format!(
            r#"{{"token_type":"Bearer","expires_in":3599,"access_token":"{}"}}"#,
            jwt(T0 + 3599)
        );
        response(200, &body)
    }

    fn file(contents: &str) -> Result<StepOutput, Error> {
        Ok(StepOutput::File(contents.as_bytes().to_vec()))
    }

    fn expect_read(next: Next) {
        match next {
            Next::Step(Step::ReadFile { path, max_len }) => {
                assert_eq!(path, PathBuf::from(TOKEN_FILE));
                assert_eq!(max_len, MAX_ASSERTION_LEN);
            }
            other => panic!("expected a file read, got {other:?}"),
        }
    }

    fn expect_post(next: Next) -> HttpRequest {
        match next {
            Next::Step(Step::Http(request)) => request,
            other => panic!("expected an HTTP request, got {other:?}"),
        }
    }

    fn form_field(request: &HttpRequest, name: &str) -> Option<String> {
        form_urlencoded::parse(request.body.expose_secret().as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    }

    fn expect_error(next: Next) -> Error {
        match next {
            Next::Done(Err(error)) => error,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn from_env_names_every_missing_variable() {
        let err = WorkloadIdentityCredential::from_env(env(&[])).unwrap_err();
        let Error::CredentialUnavailable { credential, reason } = &err else {
            panic!("expected CredentialUnavailable, got {err}");
        };
        assert_eq!(credential, "workload identity");
        assert!(
            reason.starts_with(
                "AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_FEDERATED_TOKEN_FILE are not set;"
            ),
            "{reason}"
        );
        let only_file = env(&[("AZURE_TENANT_ID", TENANT), ("AZURE_CLIENT_ID", "c")]);
        let err = WorkloadIdentityCredential::from_env(only_file).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "workload identity credential unavailable: AZURE_FEDERATED_TOKEN_FILE is not set;"
            ),
            "{err}"
        );
        let mut empty = full_env();
        empty[1] = ("AZURE_CLIENT_ID", "");
        let err = WorkloadIdentityCredential::from_env(env(&empty)).unwrap_err();
        assert!(
            err.to_string().contains("AZURE_CLIENT_ID is not set"),
            "{err}"
        );
    }

    #[test]
    fn from_env_reads_authority_host() {
        let mut vars = full_env();
        vars.push(("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.us/"));
        let credential = WorkloadIdentityCredential::from_env(env(&vars)).unwrap();
        assert_eq!(
            credential.token_url(),
            format!("https://login.microsoftonline.us/{TENANT}/oauth2/v2.0/token")
        );
        vars.pop();
        vars.push(("AZURE_AUTHORITY_HOST", "http://login.microsoftonline.us"));
        let err = WorkloadIdentityCredential::from_env(env(&vars)).unwrap_err();
        assert!(
            err.to_string().starts_with("invalid AZURE_AUTHORITY_HOST:"),
            "{err}"
        );
    }

    #[test]
    fn from_env_rejects_invalid_tenant() {
        let mut vars = full_env();
        vars[0] = ("AZURE_TENANT_ID", "tenant/../x");
        let err = WorkloadIdentityCredential::from_env(env(&vars)).unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{err}");
    }

    #[test]
    fn exchange_posts_assertion_from_file() {
        let credential = credential().with_scope("api://custom/.default");
        let mut exchange = credential.exchange();
        expect_read(exchange.start(at(T0)));
        let request = expect_post(exchange.resume(at(T0), file("header.sa-one.sig\n")));
        assert_eq!(request.method, Method::Post);
        assert_eq!(
            request.url,
            format!("https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token")
        );
        assert_eq!(
            request.body.expose_secret(),
            format!(
                "client_id={CLIENT_ID}\
                 &client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer\
                 &client_assertion=header.sa-one.sig\
                 &scope=api%3A%2F%2Fcustom%2F.default\
                 &grant_type=client_credentials"
            )
        );
        assert!(!format!("{request:?}").contains("sa-one"));
        let token = match exchange.resume(at(T0), success()) {
            Next::Done(Ok(token)) => token,
            other => panic!("expected a token, got {other:?}"),
        };
        assert_eq!(token.expires_on(), at(T0 + 3599));
    }

    #[test]
    fn stale_assertion_is_read_again_once() {
        let mut exchange = credential().exchange();
        expect_read(exchange.start(at(T0)));
        let first = expect_post(exchange.resume(at(T0), file("sa-one")));
        assert_eq!(
            form_field(&first, "client_assertion").as_deref(),
            Some("sa-one")
        );
        expect_read(exchange.resume(at(T0), response(401, STALE_BODY)));
        let second = expect_post(exchange.resume(at(T0), file("sa-two")));
        assert_eq!(
            form_field(&second, "client_assertion").as_deref(),
            Some("sa-two")
        );
        assert!(matches!(
            exchange.resume(at(T0), success()),
            Next::Done(Ok(_))
        ));
    }

    #[test]
    fn repeated_stale_assertion_is_permanent() {
        for code in STALE_ASSERTION_CODES {
            let body = STALE_BODY.replace("700024", &code.to_string());
            let mut exchange = credential().exchange();
            expect_read(exchange.start(at(T0)));
            expect_post(exchange.resume(at(T0), file("sa-one")));
            expect_read(exchange.resume(at(T0), response(401, &body)));
            expect_post(exchange.resume(at(T0), file("sa-two")));
            // A 503 would be transient on its own; after a fresh read it is not.
            let error = expect_error(exchange.resume(at(T0), response(503, &body)));
            assert!(!error.is_transient(), "{error}");
            let Error::IdentityEndpoint(endpoint) = &error else {
                panic!("expected an endpoint error, got {error}");
            };
            assert_eq!(endpoint.codes, vec![*code]);
            assert!(!error.to_string().contains("sa-two"), "{error}");
        }
    }

    #[test]
    fn repeated_stale_assertion_has_hint() {
        let mut exchange = credential().exchange();
        expect_read(exchange.start(at(T0)));
        expect_post(exchange.resume(at(T0), file("sa-one")));
        expect_read(exchange.resume(at(T0), response(401, STALE_BODY)));
        expect_post(exchange.resume(at(T0), file("sa-one")));
        let error = expect_error(exchange.resume(at(T0), response(401, STALE_BODY)));
        assert!(
            error
                .to_string()
                .contains("that the federated token file is being renewed"),
            "{error}"
        );
    }

    #[test]
    fn other_endpoint_errors_are_not_retried() {
        let body = r#"{"error":"invalid_client","error_description":"AADSTS700016: Application not found.","error_codes":[700016]}"#;
        let mut exchange = credential().exchange();
        expect_read(exchange.start(at(T0)));
        expect_post(exchange.resume(at(T0), file("sa-one")));
        let error = expect_error(exchange.resume(at(T0), response(400, body)));
        let Error::IdentityEndpoint(endpoint) = &error else {
            panic!("expected an endpoint error, got {error}");
        };
        assert_eq!(endpoint.codes, vec![700016]);
        let transient = expect_error({
            let mut exchange = credential().exchange();
            expect_read(exchange.start(at(T0)));
            expect_post(exchange.resume(at(T0), file("sa-one")));
            exchange.resume(at(T0), response(503, ""))
        });
        assert!(transient.is_transient(), "{transient}");
    }

    #[test]
    fn unusable_file_contents_are_io_errors() {
        for (contents, reason) in [
            ("  \n", "the federated token file is empty"),
            ("", "the federated token file is empty"),
        ] {
            let mut exchange = credential().exchange();
            expect_read(exchange.start(at(T0)));
            let error = expect_error(exchange.resume(at(T0), file(contents)));
            assert_eq!(
                error,
                Error::Io {
                    operation: format!("read {TOKEN_FILE}"),
                    kind: ErrorKind::InvalidData,
                    reason: reason.to_owned(),
                }
            );
        }
        let mut exchange = credential().exchange();
        expect_read(exchange.start(at(T0)));
        let error = expect_error(exchange.resume(at(T0), Ok(StepOutput::File(vec![0xff, 0xfe]))));
        assert!(error.to_string().ends_with("is not UTF-8 text"), "{error}");
    }

    #[test]
    fn read_failure_ends_exchange() {
        let missing = Error::Io {
            operation: format!("read {TOKEN_FILE}"),
            kind: ErrorKind::NotFound,
            reason: "No such file or directory (os error 2)".to_owned(),
        };
        let mut exchange = credential().exchange();
        expect_read(exchange.start(at(T0)));
        assert_eq!(
            expect_error(exchange.resume(at(T0), Err(missing.clone()))),
            missing
        );
    }

    #[test]
    fn wrong_output_kind_is_an_error() {
        let mut exchange = credential().exchange();
        expect_read(exchange.start(at(T0)));
        let error = expect_error(exchange.resume(at(T0), success()));
        assert!(matches!(error, Error::Config { .. }), "{error}");
    }

    #[test]
    fn debug_shows_no_secret_fields() {
        let debug = format!("{:?}", credential());
        assert!(debug.contains(TOKEN_FILE), "{debug}");
        assert!(debug.contains(CLIENT_ID), "{debug}");
    }
}
