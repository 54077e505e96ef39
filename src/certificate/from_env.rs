//! Certificate credentials configured by environment variables: the variables are read
//! when the credential is built, the certificate file by the driver at each exchange.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use log::debug;
use zeroize::Zeroizing;

use super::ClientCertificate;
use super::credential::{
    ClientCertificateCredential, PASSWORD_VARIABLE, PATH_VARIABLE, SEND_CHAIN_VARIABLE, file_error,
    parse_send_chain, rename_settings,
};
use crate::entra::{
    AuthorityHost, REDIS_SCOPE, authority_host_from_env, required_env, validate_client_id,
    validate_tenant,
};
use crate::error::Error;
use crate::http::HttpResponse;
use crate::response::parse_token_response;
use crate::source::{
    Exchange, HttpTokenSource, Next, Step, StepOutput, TokenSource, unexpected_output,
};

/// The largest certificate file read: 1 MiB. A PEM file with a 4096-bit RSA key and three
/// self-signed 4096-bit certificates made by `openssl req -x509` is about 9 KB. The bound
/// leaves room for long chains and large extensions, and keeps a wrong path (a log file,
/// a device) from being read whole.
pub(crate) const MAX_CERTIFICATE_FILE_LEN: u64 = 1024 * 1024;

/// The variables of a certificate credential, checked before the file is read.
#[derive(Clone)]
pub(crate) struct CertificateSettings {
    tenant_id: String,
    client_id: String,
    path: PathBuf,
    password: Option<Zeroizing<String>>,
    send_chain: bool,
    authority: Option<AuthorityHost>,
}

impl CertificateSettings {
    /// Reads `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_CERTIFICATE_PATH` and the
    /// optional `AZURE_CLIENT_CERTIFICATE_PASSWORD`, `AZURE_CLIENT_SEND_CERTIFICATE_CHAIN`
    /// and `AZURE_AUTHORITY_HOST` through `lookup`.
    ///
    /// A missing or invalid value is an [`Error::Config`] naming it.
    pub(crate) fn from_env(lookup: &impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let tenant_id = required_env(lookup, "AZURE_TENANT_ID")?;
        let client_id = required_env(lookup, "AZURE_CLIENT_ID")?;
        let path = required_env(lookup, PATH_VARIABLE)?;
        let password = lookup(PASSWORD_VARIABLE).map(Zeroizing::new);
        let send_chain = parse_send_chain(lookup(SEND_CHAIN_VARIABLE).as_deref())?;
        let authority = authority_host_from_env(lookup)?;
        validate_tenant(&tenant_id)?;
        validate_client_id(&client_id)?;
        Ok(CertificateSettings {
            tenant_id,
            client_id,
            path: PathBuf::from(path),
            password,
            send_chain,
            authority,
        })
    }

    /// Returns the path of the certificate file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Parses the contents of the certificate file and builds the credential.
    ///
    /// Errors about the contents name `AZURE_CLIENT_CERTIFICATE_PATH`, and errors about
    /// the password `AZURE_CLIENT_CERTIFICATE_PASSWORD`.
    pub(crate) fn load(&self, contents: &[u8]) -> Result<ClientCertificateCredential, Error> {
        let password = self.password.as_deref().map(String::as_str);
        let certificate = ClientCertificate::from_bytes(contents, password)
            .map_err(|e| rename_settings(e, PATH_VARIABLE, PASSWORD_VARIABLE))?;
        let credential = ClientCertificateCredential::new(
            self.tenant_id.clone(),
            self.client_id.clone(),
            certificate,
        )?
        .with_send_certificate_chain(self.send_chain);
        Ok(match &self.authority {
            Some(authority) => credential.with_authority(authority.clone()),
            None => credential,
        })
    }
}

impl fmt::Debug for CertificateSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let authority = self
            .authority
            .as_ref()
            .map_or(AuthorityHost::PUBLIC_CLOUD, AuthorityHost::as_str);
        f.debug_struct("CertificateSettings")
            .field("authority", &authority)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("path", &self.path)
            .field("send_chain", &self.send_chain)
            .finish_non_exhaustive()
    }
}

/// A certificate credential that reads its certificate file at each exchange.
///
/// The exchange requests a [`Step::ReadFile`] of the file from its driver, parses it, and
/// sends a token request with a client assertion signed by it. Reading at each exchange
/// keeps the core free of I/O, and a certificate file replaced on disk is used from the
/// next token request on.
///
/// A file that cannot be read or parsed is an [`Error::Config`] naming
/// `AZURE_CLIENT_CERTIFICATE_PATH` (or `AZURE_CLIENT_CERTIFICATE_PASSWORD` for a wrong
/// password). The token manager treats it as permanent before the first token, and
/// retries it with backoff once a token was issued.
#[derive(Clone, Debug)]
pub(crate) struct CertificateFileSource {
    settings: CertificateSettings,
    scope: String,
}

impl CertificateFileSource {
    /// Reads the variables as [`CertificateSettings::from_env`] does, and no file.
    pub(crate) fn from_env(lookup: &impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        Ok(CertificateFileSource {
            settings: CertificateSettings::from_env(lookup)?,
            scope: REDIS_SCOPE.to_owned(),
        })
    }

    /// Requests another scope than `https://redis.azure.com/.default`.
    pub(crate) fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = scope.into();
        self
    }
}

impl TokenSource for CertificateFileSource {
    fn name(&self) -> &str {
        "client certificate"
    }

    fn exchange(&self) -> Box<dyn Exchange> {
        Box::new(CertificateFileExchange {
            source: self.clone(),
            awaiting: Awaiting::File,
        })
    }
}

/// The output a [`CertificateFileExchange`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    File,
    Token,
}

/// Reads the certificate file, then sends one token request signed with it.
struct CertificateFileExchange {
    source: CertificateFileSource,
    awaiting: Awaiting,
}

impl CertificateFileExchange {
    fn on_file(&mut self, now: SystemTime, contents: Vec<u8>) -> Next {
        let contents = Zeroizing::new(contents);
        let credential = match self.source.settings.load(&contents) {
            Ok(credential) => credential.with_scope(self.source.scope.clone()),
            Err(error) => return Next::Done(Err(error)),
        };
        debug!(
            "read client certificate {} (SHA-256 thumbprint {})",
            self.source.settings.path.display(),
            credential.certificate().thumbprint_sha256()
        );
        match credential.token_request(now) {
            Ok(request) => {
                self.awaiting = Awaiting::Token;
                Next::Step(Step::Http(request))
            }
            Err(error) => Next::Done(Err(rename_settings(
                error,
                PATH_VARIABLE,
                PASSWORD_VARIABLE,
            ))),
        }
    }

    fn on_response(&self, response: &HttpResponse, now: SystemTime) -> Next {
        Next::Done(parse_token_response(response, now))
    }

    /// Turns a failed read into the error that
    /// [`ClientCertificateCredential::from_env_with`] returns for the same failure.
    fn read_error(&self, error: Error) -> Error {
        match error {
            Error::Io { kind, reason, .. } => {
                let io_error = std::io::Error::new(kind, reason);
                file_error(PATH_VARIABLE, self.source.settings.path(), &io_error)
            }
            other => other,
        }
    }
}

impl Exchange for CertificateFileExchange {
    fn start(&mut self, _now: SystemTime) -> Next {
        self.awaiting = Awaiting::File;
        Next::Step(Step::ReadFile {
            path: self.source.settings.path.clone(),
            max_len: MAX_CERTIFICATE_FILE_LEN,
        })
    }

    fn resume(&mut self, now: SystemTime, output: Result<StepOutput, Error>) -> Next {
        match (self.awaiting, output) {
            (Awaiting::File, Ok(StepOutput::File(contents))) => self.on_file(now, contents),
            (Awaiting::File, Err(error)) => Next::Done(Err(self.read_error(error))),
            (Awaiting::Token, Ok(StepOutput::Http(response))) => self.on_response(&response, now),
            (Awaiting::Token, Err(error)) => Next::Done(Err(error)),
            (_, Ok(other)) => Next::Done(Err(unexpected_output(&other))),
        }
    }
}
