//! The environment credential: a service principal configured through the variables the
//! Azure SDKs read.

use std::fmt;

#[cfg(feature = "certificate")]
use crate::certificate::CertificateFileSource;
use crate::entra::ClientSecretCredential;
use crate::error::Error;
use crate::source::{Exchange, TokenSource};
use crate::workload::list_unset;

const NAME: &str = "environment";

/// A service principal configured by environment variables, with a client secret or a
/// certificate.
///
/// - Client secret: `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET`.
/// - Certificate (with the `certificate` feature): `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`
///   and `AZURE_CLIENT_CERTIFICATE_PATH`, the path of a PEM or PKCS#12 file with the
///   certificate and its RSA key. The optional `AZURE_CLIENT_CERTIFICATE_PASSWORD`
///   decrypts the file, and `AZURE_CLIENT_SEND_CERTIFICATE_CHAIN` set to `1` or `true`
///   sends the chain (`0`, `false` or unset does not, and other values are errors).
///
/// Both take the optional `AZURE_AUTHORITY_HOST`. When the secret is set it wins over a
/// certificate, as in the Azure SDKs.
///
/// The certificate file is not read when the credential is built. Each token request
/// starts with a [`Step::ReadFile`](crate::Step::ReadFile) of it (at most 1 MiB), so a
/// certificate replaced on disk is used from the next token request on. A file that
/// cannot be read or parsed is an [`Error::Config`] naming
/// `AZURE_CLIENT_CERTIFICATE_PATH`, or `AZURE_CLIENT_CERTIFICATE_PASSWORD` when the
/// password does not decrypt it.
#[derive(Clone)]
pub struct EnvironmentCredential {
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    ClientSecret(ClientSecretCredential),
    #[cfg(feature = "certificate")]
    ClientCertificate(CertificateFileSource),
}

impl EnvironmentCredential {
    /// Reads the service principal's variables through `lookup` (pass
    /// `|name| std::env::var(name).ok()`). An empty variable counts as unset. No file is
    /// read.
    ///
    /// Unset variables make the credential unavailable ([`Error::CredentialUnavailable`]
    /// naming them), so a chain moves on; invalid values are [`Error::Config`].
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let is_set = |name: &str| lookup(name).is_some_and(|v| !v.is_empty());
        let missing_ids = || -> Vec<&str> {
            ["AZURE_TENANT_ID", "AZURE_CLIENT_ID"]
                .into_iter()
                .filter(|name| !is_set(name))
                .collect()
        };
        if is_set("AZURE_CLIENT_SECRET") {
            let missing = missing_ids();
            if !missing.is_empty() {
                return Err(unavailable(format!(
                    "AZURE_CLIENT_SECRET is set, but {} not; a service principal needs \
                     AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET",
                    list_unset(&missing)
                )));
            }
            let credential = ClientSecretCredential::from_env(&lookup)?;
            return Ok(EnvironmentCredential {
                kind: Kind::ClientSecret(credential),
            });
        }
        if is_set("AZURE_CLIENT_CERTIFICATE_PATH") {
            let missing = missing_ids();
            if !missing.is_empty() {
                return Err(unavailable(format!(
                    "AZURE_CLIENT_CERTIFICATE_PATH is set, but {} not; a service principal \
                     with a certificate needs AZURE_TENANT_ID, AZURE_CLIENT_ID and \
                     AZURE_CLIENT_CERTIFICATE_PATH",
                    list_unset(&missing)
                )));
            }
            return build_certificate(&lookup);
        }
        Err(unavailable(no_credential_reason().to_owned()))
    }

    /// Requests another scope than `https://redis.azure.com/.default`.
    pub fn with_scope(self, scope: impl Into<String>) -> Self {
        let kind = match self.kind {
            Kind::ClientSecret(credential) => Kind::ClientSecret(credential.with_scope(scope)),
            #[cfg(feature = "certificate")]
            Kind::ClientCertificate(source) => Kind::ClientCertificate(source.with_scope(scope)),
        };
        EnvironmentCredential { kind }
    }

    /// Returns the name of the credential the variables selected: `client secret` or
    /// `client certificate`.
    pub fn selected(&self) -> &str {
        match &self.kind {
            Kind::ClientSecret(credential) => credential.name(),
            #[cfg(feature = "certificate")]
            Kind::ClientCertificate(source) => source.name(),
        }
    }
}

#[cfg(feature = "certificate")]
fn build_certificate(
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<EnvironmentCredential, Error> {
    let source = CertificateFileSource::from_env(lookup)?;
    Ok(EnvironmentCredential {
        kind: Kind::ClientCertificate(source),
    })
}

#[cfg(not(feature = "certificate"))]
fn build_certificate(
    _lookup: &impl Fn(&str) -> Option<String>,
) -> Result<EnvironmentCredential, Error> {
    Err(unavailable(
        "AZURE_CLIENT_CERTIFICATE_PATH is set, but redis-entraid was built without its \
         `certificate` feature, which certificate credentials need; enable the feature or \
         set AZURE_CLIENT_SECRET instead"
            .to_owned(),
    ))
}

/// Returns why the credential is unavailable when neither a secret nor a certificate is
/// set.
fn no_credential_reason() -> &'static str {
    if cfg!(feature = "certificate") {
        "neither AZURE_CLIENT_SECRET nor AZURE_CLIENT_CERTIFICATE_PATH is set; a service \
         principal needs AZURE_TENANT_ID and AZURE_CLIENT_ID with AZURE_CLIENT_SECRET or \
         AZURE_CLIENT_CERTIFICATE_PATH"
    } else {
        "AZURE_CLIENT_SECRET is not set; a service principal needs AZURE_TENANT_ID, \
         AZURE_CLIENT_ID and AZURE_CLIENT_SECRET"
    }
}

fn unavailable(reason: String) -> Error {
    Error::CredentialUnavailable {
        credential: NAME.to_owned(),
        reason,
    }
}

impl fmt::Debug for EnvironmentCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut tuple = f.debug_tuple("EnvironmentCredential");
        match &self.kind {
            Kind::ClientSecret(credential) => tuple.field(credential),
            #[cfg(feature = "certificate")]
            Kind::ClientCertificate(source) => tuple.field(source),
        };
        tuple.finish()
    }
}

impl TokenSource for EnvironmentCredential {
    fn name(&self) -> &str {
        NAME
    }

    fn exchange(&self) -> Box<dyn Exchange> {
        match &self.kind {
            Kind::ClientSecret(credential) => credential.exchange(),
            #[cfg(feature = "certificate")]
            Kind::ClientCertificate(source) => source.exchange(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{Next, Step};
    use std::collections::HashMap;
    use std::time::SystemTime;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn reason(error: Error) -> String {
        match error {
            Error::CredentialUnavailable { credential, reason } => {
                assert_eq!(credential, "environment");
                reason
            }
            other => panic!("expected CredentialUnavailable, got {other}"),
        }
    }

    #[test]
    fn client_secret_is_selected() {
        let credential = EnvironmentCredential::from_env(env(&[
            ("AZURE_TENANT_ID", "tenant-1"),
            ("AZURE_CLIENT_ID", "client-1"),
            ("AZURE_CLIENT_SECRET", "s3cret"),
            ("AZURE_CLIENT_CERTIFICATE_PATH", "/certs/sp.pem"),
            ("AZURE_AUTHORITY_HOST", "login.chinacloudapi.cn"),
        ]))
        .unwrap()
        .with_scope("api://other/.default");
        assert_eq!(credential.selected(), "client secret");
        assert!(!format!("{credential:?}").contains("s3cret"));
        let request = match credential.exchange().start(SystemTime::UNIX_EPOCH) {
            Next::Step(Step::Http(request)) => request,
            other => panic!("expected an HTTP request, got {other:?}"),
        };
        assert_eq!(
            request.url,
            "https://login.chinacloudapi.cn/tenant-1/oauth2/v2.0/token"
        );
        assert!(
            request
                .body
                .expose_secret()
                .contains("scope=api%3A%2F%2Fother%2F.default")
        );
    }

    #[test]
    fn incomplete_variables_are_unavailable() {
        let error = EnvironmentCredential::from_env(env(&[])).unwrap_err();
        assert_eq!(reason(error), no_credential_reason());
        let error = EnvironmentCredential::from_env(env(&[("AZURE_CLIENT_SECRET", "s")]));
        assert_eq!(
            reason(error.unwrap_err()),
            "AZURE_CLIENT_SECRET is set, but AZURE_TENANT_ID and AZURE_CLIENT_ID are not; a \
             service principal needs AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET"
        );
        let error = EnvironmentCredential::from_env(env(&[
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", ""),
            ("AZURE_CLIENT_SECRET", "s"),
        ]));
        assert!(reason(error.unwrap_err()).contains("but AZURE_CLIENT_ID is not;"));
    }

    #[test]
    fn certificate_path_without_ids_is_unavailable() {
        let error = EnvironmentCredential::from_env(env(&[(
            "AZURE_CLIENT_CERTIFICATE_PATH",
            "/certs/sp.pem",
        )]));
        assert_eq!(
            reason(error.unwrap_err()),
            "AZURE_CLIENT_CERTIFICATE_PATH is set, but AZURE_TENANT_ID and AZURE_CLIENT_ID are \
             not; a service principal with a certificate needs AZURE_TENANT_ID, \
             AZURE_CLIENT_ID and AZURE_CLIENT_CERTIFICATE_PATH"
        );
        let error = EnvironmentCredential::from_env(env(&[
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_CLIENT_CERTIFICATE_PATH", "/certs/sp.pem"),
        ]));
        assert!(reason(error.unwrap_err()).contains("but AZURE_TENANT_ID is not;"));
    }

    #[test]
    fn secret_with_missing_ids_wins_over_certificate() {
        let error = EnvironmentCredential::from_env(env(&[
            ("AZURE_CLIENT_SECRET", "s"),
            ("AZURE_CLIENT_CERTIFICATE_PATH", "/certs/sp.pem"),
        ]));
        assert!(reason(error.unwrap_err()).starts_with("AZURE_CLIENT_SECRET is set, but"));
    }

    #[cfg(not(feature = "certificate"))]
    #[test]
    fn certificate_needs_feature() {
        let error = EnvironmentCredential::from_env(env(&[
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_CLIENT_CERTIFICATE_PATH", "/certs/sp.pem"),
        ]));
        assert!(reason(error.unwrap_err()).contains("without its `certificate` feature"));
    }

    #[test]
    fn invalid_values_are_config_errors() {
        let error = EnvironmentCredential::from_env(env(&[
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_CLIENT_SECRET", "s"),
            ("AZURE_AUTHORITY_HOST", "ftp://login.microsoftonline.com"),
        ]))
        .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("invalid AZURE_AUTHORITY_HOST:"),
            "{error}"
        );
    }

    #[cfg(feature = "certificate")]
    mod certificate {
        use super::*;
        use crate::certificate::MAX_CERTIFICATE_FILE_LEN;
        use crate::http::HttpResponse;
        use crate::source::StepOutput;
        use std::io::ErrorKind;
        use std::path::PathBuf;

        const PATH: &str = "/certs/sp.pem";

        fn certificate_env(extra: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
            let mut pairs = vec![
                ("AZURE_TENANT_ID", "tenant-1"),
                ("AZURE_CLIENT_ID", "client-1"),
                ("AZURE_CLIENT_CERTIFICATE_PATH", PATH),
            ];
            pairs.extend_from_slice(extra);
            env(&pairs)
        }

        /// Starts an exchange of the certificate credential and checks that its first
        /// step reads the certificate file.
        fn started_exchange(credential: &EnvironmentCredential) -> Box<dyn Exchange> {
            let mut exchange = credential.exchange();
            match exchange.start(SystemTime::UNIX_EPOCH) {
                Next::Step(Step::ReadFile { path, max_len }) => {
                    assert_eq!(path, PathBuf::from(PATH));
                    assert_eq!(max_len, MAX_CERTIFICATE_FILE_LEN);
                }
                other => panic!("expected a file read, got {other:?}"),
            }
            exchange
        }

        fn config_error(next: Next) -> (String, String) {
            match next {
                Next::Done(Err(Error::Config { setting, reason })) => (setting, reason),
                other => panic!("expected a configuration error, got {other:?}"),
            }
        }

        #[test]
        fn certificate_is_selected_without_reading() {
            let credential = EnvironmentCredential::from_env(certificate_env(&[(
                "AZURE_CLIENT_CERTIFICATE_PASSWORD",
                "pa55word",
            )]))
            .unwrap()
            .with_scope("api://other/.default");
            assert_eq!(credential.selected(), "client certificate");
            assert_eq!(credential.name(), "environment");
            let debug = format!("{credential:?}");
            assert!(debug.contains(PATH), "{debug}");
            assert!(!debug.contains("pa55word"), "{debug}");
            started_exchange(&credential);
        }

        #[test]
        fn unreadable_file_names_variable() {
            let credential = EnvironmentCredential::from_env(certificate_env(&[])).unwrap();
            let fix = "use the path of a PEM or PKCS#12 file that contains the certificate and \
                       its private key";
            let cases = [
                (
                    ErrorKind::NotFound,
                    "No such file or directory (os error 2)",
                    format!("`{PATH}` does not exist; {fix}"),
                ),
                (
                    ErrorKind::PermissionDenied,
                    "Permission denied (os error 13)",
                    format!("cannot read `{PATH}`: Permission denied (os error 13); {fix}"),
                ),
                (
                    ErrorKind::InvalidData,
                    "the file is larger than 1048576 bytes",
                    format!("cannot read `{PATH}`: the file is larger than 1048576 bytes; {fix}"),
                ),
            ];
            for (kind, message, expected) in cases {
                let mut exchange = started_exchange(&credential);
                let failure = Error::Io {
                    operation: format!("read {PATH}"),
                    kind,
                    reason: message.to_owned(),
                };
                let (setting, reason) =
                    config_error(exchange.resume(SystemTime::UNIX_EPOCH, Err(failure)));
                assert_eq!(setting, "AZURE_CLIENT_CERTIFICATE_PATH", "{kind:?}");
                assert_eq!(reason, expected, "{kind:?}");
            }
        }

        #[test]
        fn unparsable_file_names_variable() {
            let credential = EnvironmentCredential::from_env(certificate_env(&[])).unwrap();
            let cases: [(&[u8], &str); 2] = [
                (b"hello", "the data is neither PEM nor PKCS#12;"),
                (
                    b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                    "no private key found;",
                ),
            ];
            for (contents, expected) in cases {
                let mut exchange = started_exchange(&credential);
                let output = Ok(StepOutput::File(contents.to_vec()));
                let (setting, reason) =
                    config_error(exchange.resume(SystemTime::UNIX_EPOCH, output));
                assert_eq!(setting, "AZURE_CLIENT_CERTIFICATE_PATH");
                assert!(reason.starts_with(expected), "{reason}");
            }
        }

        #[test]
        fn other_step_output_is_an_error() {
            let credential = EnvironmentCredential::from_env(certificate_env(&[])).unwrap();
            let mut exchange = started_exchange(&credential);
            let response = HttpResponse {
                status: 200,
                headers: vec![],
                body: Vec::new(),
            };
            let next = exchange.resume(SystemTime::UNIX_EPOCH, Ok(StepOutput::Http(response)));
            let (setting, reason) = config_error(next);
            assert_eq!(setting, "token source driver");
            assert_eq!(reason, "returned an HTTP response for another kind of step");
        }

        #[test]
        fn invalid_certificate_variables_are_config_errors() {
            let cases = [
                (
                    ("AZURE_CLIENT_SEND_CERTIFICATE_CHAIN", "yes"),
                    "invalid AZURE_CLIENT_SEND_CERTIFICATE_CHAIN: `yes` is not a boolean;",
                ),
                (
                    ("AZURE_AUTHORITY_HOST", "http://login.microsoftonline.com"),
                    "invalid AZURE_AUTHORITY_HOST:",
                ),
                (("AZURE_TENANT_ID", "bad/tenant"), "invalid tenant id:"),
                (("AZURE_CLIENT_ID", "bad client"), "invalid client id:"),
            ];
            for (variable, expected) in cases {
                let error = EnvironmentCredential::from_env(certificate_env(&[variable]));
                let message = error.unwrap_err().to_string();
                assert!(message.starts_with(expected), "{variable:?}: {message}");
            }
        }
    }
}
