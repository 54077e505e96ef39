//! Azure Arc-enabled servers, through the Connected Machine agent (`himds`).
//!
//! The agent rejects a first request with 401 and `WWW-Authenticate: Basic
//! realm=<path>`, naming a key file that only privileged local users can read. The second
//! request sends that file's contents as `Authorization: Basic <key>`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::{ManagedIdentityCredential, UserAssigned, endpoint_url, get_request, with_api_version};
use crate::error::Error;
use crate::http::{HttpRequest, HttpResponse};
use crate::source::{Exchange, Next, Step, StepOutput, unexpected_output};

/// The agent's endpoint when the variables are not set.
pub(super) const DEFAULT_ENDPOINT: &str = "http://localhost:40342/metadata/identity/oauth2/token";

/// The version of Microsoft's Arc PowerShell example, the Python SDK and both MSAL
/// libraries. The Rust SDK sends 2021-02-01.
const API_VERSION: &str = "2020-06-01";

/// The largest key file read. The agent writes short keys, and the Azure SDKs and MSAL
/// reject larger files too.
const MAX_KEY_LEN: u64 = 4096;

#[derive(Clone)]
pub(super) struct AzureArc {
    /// `IDENTITY_ENDPOINT`, or [`DEFAULT_ENDPOINT`].
    endpoint: String,
    /// The directory the key file must be in, or `None` on a platform the agent does not
    /// support.
    pub(super) key_directory: Option<PathBuf>,
}

impl AzureArc {
    pub(super) fn new(
        endpoint: &str,
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> Result<Self, Error> {
        Ok(AzureArc {
            endpoint: endpoint_url("IDENTITY_ENDPOINT", endpoint)?,
            key_directory: default_key_directory(lookup),
        })
    }

    /// Builds the first request, which the agent rejects with its challenge.
    pub(super) fn challenge_request(
        &self,
        query: &[(&'static str, String)],
        timeout: Duration,
    ) -> HttpRequest {
        get_request(
            &self.endpoint,
            &with_api_version(API_VERSION, query),
            timeout,
        )
        .with_header("Metadata", "true")
    }
}

pub(super) fn identity_parameter(identity: &UserAssigned) -> &'static str {
    match identity {
        UserAssigned::ClientId(_) => "client_id",
        UserAssigned::ObjectId(_) => "object_id",
        UserAssigned::ResourceId(_) => "msi_res_id",
    }
}

/// Returns the directory the agent writes key files to on this platform.
///
/// NOTE: the Windows paths here and in [`agent_installed`] follow the SDKs' sources but
/// have not been run on Windows; the tests run on Linux.
fn default_key_directory(lookup: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if cfg!(target_os = "linux") {
        Some(PathBuf::from("/var/opt/azcmagent/tokens"))
    } else if cfg!(windows) {
        let program_data = lookup("ProgramData").or_else(|| lookup("PROGRAMDATA"))?;
        Some(Path::new(&program_data).join(r"AzureConnectedMachineAgent\Tokens"))
    } else {
        None
    }
}

/// Returns true when the agent's `himds` program is installed. Windows installs put it
/// under `%ProgramFiles%`; MSAL for Go looks under `%ProgramData%`, so both are checked.
pub(super) fn agent_installed(
    lookup: &impl Fn(&str) -> Option<String>,
    file_exists: &impl Fn(&Path) -> bool,
) -> bool {
    if cfg!(target_os = "linux") {
        return file_exists(Path::new("/opt/azcmagent/bin/himds"));
    }
    if cfg!(windows) {
        return ["ProgramFiles", "ProgramData"]
            .into_iter()
            .filter_map(|name| lookup(name).or_else(|| lookup(&name.to_ascii_uppercase())))
            .any(|dir| {
                file_exists(&Path::new(&dir).join(r"AzureConnectedMachineAgent\himds.exe"))
            });
    }
    false
}

/// Reads the key file path from a `WWW-Authenticate: Basic realm=<path>` value.
fn realm_path(challenge: &str) -> Option<&str> {
    let (scheme, parameters) = challenge.trim().split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let (name, value) = parameters.trim().split_once('=')?;
    if !name.trim().eq_ignore_ascii_case("realm") {
        return None;
    }
    let value = value.trim();
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    (!value.is_empty()).then_some(value)
}

/// Checks the key file the agent named and returns the path to read: the expected
/// directory joined with the file name, so nothing but the name comes from the response.
fn key_path(realm: &str, key_directory: &Path) -> Result<PathBuf, Error> {
    let realm_path = Path::new(realm);
    let invalid = |why: &str| {
        Error::config(
            "Azure Arc key file",
            format!(
                "the agent's challenge named `{realm}`, which {why}; a key file must be a \
                 `.key` file in {}",
                key_directory.display()
            ),
        )
    };
    let file_name = realm_path
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| invalid("has no file name"))?;
    if file_name.len() <= ".key".len() || !file_name.ends_with(".key") {
        return Err(invalid("is not a `.key` file"));
    }
    let directory = realm_path.parent().unwrap_or(Path::new(""));
    let same_directory = if cfg!(windows) {
        directory.to_string_lossy().to_lowercase() == key_directory.to_string_lossy().to_lowercase()
    } else {
        directory == key_directory
    };
    if !same_directory {
        return Err(invalid("is in another directory"));
    }
    Ok(key_directory.join(file_name))
}

/// The Azure Arc exchange: challenge, key file, token.
pub(super) struct ArcExchange {
    credential: ManagedIdentityCredential,
    stage: Stage,
}

enum Stage {
    Challenge,
    ReadKey(PathBuf),
    Token,
}

impl ArcExchange {
    pub(super) fn new(credential: ManagedIdentityCredential) -> Self {
        ArcExchange {
            credential,
            stage: Stage::Challenge,
        }
    }

    fn arc(&self) -> &AzureArc {
        match &self.credential.endpoint {
            super::Endpoint::AzureArc(arc) => arc,
            // ArcExchange::new is called only for an Azure Arc endpoint.
            _ => unreachable!("an Azure Arc exchange for another environment"),
        }
    }

    /// Turns the challenge response into the step that reads the key file.
    fn on_challenge(&mut self, response: &HttpResponse) -> Result<Step, Error> {
        if response.status != 401 {
            if (200..300).contains(&response.status) {
                return Err(Error::config(
                    "IDENTITY_ENDPOINT",
                    "the endpoint returned a token without the Basic challenge of the Azure Arc \
                     agent; point IDENTITY_ENDPOINT at the agent, such as \
                     http://localhost:40342/metadata/identity/oauth2/token",
                ));
            }
            return Err(super::imds::error(
                response,
                self.credential.identity.as_ref(),
            ));
        }
        let realm = response
            .header("www-authenticate")
            .and_then(realm_path)
            .ok_or_else(|| Error::InvalidResponse {
                status: 401,
                reason:
                    "the Azure Arc challenge has no `WWW-Authenticate: Basic realm=<key file>` \
                         header"
                        .to_owned(),
            })?;
        let key_directory = self.arc().key_directory.clone().ok_or_else(|| {
            Error::config(
                "Azure Arc managed identity",
                "the Connected Machine agent runs only on Linux and Windows",
            )
        })?;
        let path = key_path(realm, &key_directory)?;
        self.stage = Stage::ReadKey(path.clone());
        Ok(Step::ReadFile {
            path,
            max_len: MAX_KEY_LEN,
        })
    }

    /// Turns the key into the token request.
    fn on_key(&mut self, path: &Path, key: Vec<u8>) -> Result<Step, Error> {
        let key = String::from_utf8(key)
            .ok()
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty() && !k.chars().any(char::is_control))
            .ok_or_else(|| {
                Error::config(
                    "Azure Arc key file",
                    format!("{} is empty or not text", path.display()),
                )
            })?;
        let query = self.credential.query_parameters();
        let request = self
            .arc()
            .challenge_request(&query, self.credential.timeout)
            .with_header("Authorization", format!("Basic {key}"));
        self.stage = Stage::Token;
        Ok(Step::Http(request))
    }

    /// Parses the token response and checks that the agent honoured the selector.
    fn on_token(&self, response: &HttpResponse, now: SystemTime) -> Result<crate::Token, Error> {
        let token = self.credential.parse_response(response, now)?;
        if let Some(identity) = &self.credential.identity {
            check_identity_echo(response, identity)?;
        }
        Ok(token)
    }
}

/// Fails unless the token response names the selected identity. An older agent ignores
/// the selector and returns the machine's system-assigned identity, so a response that
/// does not echo the id is rejected, as MSAL does.
fn check_identity_echo(response: &HttpResponse, identity: &UserAssigned) -> Result<(), Error> {
    let body: Option<Value> = serde_json::from_slice(&response.body).ok();
    let fields: &[&str] = match identity {
        UserAssigned::ClientId(_) => &["client_id"],
        UserAssigned::ObjectId(_) => &["object_id"],
        UserAssigned::ResourceId(_) => &["msi_res_id", "mi_res_id"],
    };
    let echoed = fields.iter().any(|field| {
        body.as_ref()
            .and_then(|b| b.get(field))
            .and_then(Value::as_str)
            .is_some_and(|value| value.eq_ignore_ascii_case(identity.id()))
    });
    if echoed {
        return Ok(());
    }
    Err(Error::config(
        "user-assigned managed identity",
        format!(
            "the Azure Arc agent did not confirm a token for {identity}, so it may have \
             returned the machine's system-assigned identity; update the Connected Machine \
             agent, or use the system-assigned identity"
        ),
    ))
}

/// Maps a failed key-file read to an error that names the fix.
fn key_read_error(path: &Path, error: Error) -> Error {
    let Error::Io { kind, .. } = &error else {
        return error;
    };
    match kind {
        std::io::ErrorKind::PermissionDenied => Error::config(
            "Azure Arc key file",
            format!(
                "permission denied reading {}; run as a member of the `himds` group (Linux) \
                 or of Administrators or Hybrid Agent Extension Applications (Windows)",
                path.display()
            ),
        ),
        std::io::ErrorKind::InvalidData => Error::config(
            "Azure Arc key file",
            format!("{} is larger than {MAX_KEY_LEN} bytes", path.display()),
        ),
        // A missing file is retried: the next challenge names a new one.
        _ => error,
    }
}

impl Exchange for ArcExchange {
    fn start(&mut self, _now: SystemTime) -> Next {
        self.stage = Stage::Challenge;
        let query = self.credential.query_parameters();
        Next::Step(Step::Http(
            self.arc()
                .challenge_request(&query, self.credential.timeout),
        ))
    }

    fn resume(&mut self, now: SystemTime, output: Result<StepOutput, Error>) -> Next {
        let stage = std::mem::replace(&mut self.stage, Stage::Token);
        let next = match (stage, output) {
            (Stage::Challenge, Ok(StepOutput::Http(response))) => self.on_challenge(&response),
            (Stage::ReadKey(path), Ok(StepOutput::File(key))) => self.on_key(&path, key),
            (Stage::ReadKey(path), Err(error)) => Err(key_read_error(&path, error)),
            (Stage::Token, Ok(StepOutput::Http(response))) => {
                return Next::Done(self.on_token(&response, now));
            }
            (_, Ok(other)) => Err(unexpected_output(&other)),
            (_, Err(error)) => Err(error),
        };
        match next {
            Ok(step) => Next::Step(step),
            Err(error) => Next::Done(Err(error)),
        }
    }
}
