//! The client-certificate credential: a signed client assertion in each token request.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::json;
use zeroize::Zeroizing;

use super::from_env::CertificateSettings;
use super::{CERTIFICATE_SETTING, ClientCertificate, PASSWORD_SETTING, random_error};
use crate::entra::{
    AuthorityHost, DEFAULT_REQUEST_TIMEOUT, REDIS_SCOPE, validate_client_id, validate_tenant,
};
use crate::error::Error;
use crate::http::{HttpRequest, HttpResponse};
use crate::response::parse_token_response;
use crate::secret::Secret;
use crate::source::HttpTokenSource;
use crate::token::Token;

/// How long a client assertion is valid after it is signed. Microsoft's
/// certificate-credentials documentation asks for 5 to 10 minutes at most and says that
/// Entra ID does not enforce a limit. MSAL for Go and Python use 10 minutes too, which
/// tolerates a local clock that runs a few minutes slow.
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(600);

const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The environment variable with the path of the certificate file.
pub(super) const PATH_VARIABLE: &str = "AZURE_CLIENT_CERTIFICATE_PATH";
pub(super) const PASSWORD_VARIABLE: &str = "AZURE_CLIENT_CERTIFICATE_PASSWORD";
pub(super) const SEND_CHAIN_VARIABLE: &str = "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN";

/// A service principal that authenticates with a certificate.
///
/// Each token request carries a fresh client assertion: a JWT signed with PS256
/// (RSASSA-PSS with SHA-256) whose header names the certificate by its SHA-256
/// thumbprint (`x5t#S256`) and, when enabled, carries the chain (`x5c`). Its claims are
/// `aud` (the token URL), `iss` and `sub` (the client id), a random `jti`, and `nbf`,
/// `iat` and `exp` ([`ASSERTION_LIFETIME`] later).
///
/// Signing reads the operating system's random number generator (through ring's
/// `SystemRandom`) for the `jti` and the PSS salt. That is the only I/O in the core, and
/// only with the `certificate` feature: ring accepts no other source of randomness for
/// RSA signatures.
#[derive(Clone)]
pub struct ClientCertificateCredential {
    authority: AuthorityHost,
    tenant_id: String,
    client_id: String,
    certificate: ClientCertificate,
    send_chain: bool,
    scope: String,
    timeout: Duration,
    random: SystemRandom,
}

impl ClientCertificateCredential {
    /// Creates a credential for the public cloud and the Redis scope, without the chain.
    pub fn new(
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        certificate: ClientCertificate,
    ) -> Result<Self, Error> {
        let tenant_id = tenant_id.into();
        let client_id = client_id.into();
        validate_tenant(&tenant_id)?;
        validate_client_id(&client_id)?;
        Ok(ClientCertificateCredential {
            authority: AuthorityHost::default(),
            tenant_id,
            client_id,
            certificate,
            send_chain: false,
            scope: REDIS_SCOPE.to_owned(),
            timeout: DEFAULT_REQUEST_TIMEOUT,
            random: SystemRandom::new(),
        })
    }

    /// Reads `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_CERTIFICATE_PATH` and the
    /// optional `AZURE_CLIENT_CERTIFICATE_PASSWORD`, `AZURE_CLIENT_SEND_CERTIFICATE_CHAIN`
    /// and `AZURE_AUTHORITY_HOST` through `lookup`, and the certificate file through
    /// `read_file` (for example `|path| std::fs::read(path)`).
    ///
    /// An empty variable counts as missing. `AZURE_CLIENT_SEND_CERTIFICATE_CHAIN` is
    /// true for `1` and `true`, false for `0`, `false` and empty (all case-insensitive),
    /// and an error otherwise. `AZURE_CLIENT_SECRET` is not read: choosing between a
    /// secret and a certificate is up to the caller.
    pub fn from_env_with(
        lookup: impl Fn(&str) -> Option<String>,
        read_file: impl FnOnce(&Path) -> std::io::Result<Vec<u8>>,
    ) -> Result<Self, Error> {
        let settings = CertificateSettings::from_env(&lookup)?;
        let bytes = read_file(settings.path())
            .map(Zeroizing::new)
            .map_err(|e| file_error(PATH_VARIABLE, settings.path(), &e))?;
        settings.load(&bytes)
    }

    /// Uses another authority host, for a sovereign cloud or a local mock.
    pub fn with_authority_host(mut self, host: &str) -> Result<Self, Error> {
        self.authority = AuthorityHost::parse(host)?;
        Ok(self)
    }

    /// Uses an authority host that is already parsed.
    pub(super) fn with_authority(mut self, authority: AuthorityHost) -> Self {
        self.authority = authority;
        self
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

    /// Sends the certificate chain in the assertion's `x5c` header (default: off).
    /// Entra ID needs it only for subject name and issuer authentication.
    pub fn with_send_certificate_chain(mut self, send: bool) -> Self {
        self.send_chain = send;
        self
    }

    /// Returns the token endpoint, `{authority}/{tenant}/oauth2/v2.0/token`, which is
    /// also the assertion's `aud`.
    pub fn token_url(&self) -> String {
        self.authority.token_url(&self.tenant_id)
    }

    /// Returns the certificate this credential signs with.
    pub fn certificate(&self) -> &ClientCertificate {
        &self.certificate
    }

    /// Builds and signs a client assertion issued at `now`.
    pub fn client_assertion(&self, now: SystemTime) -> Result<Secret, Error> {
        let issued_at = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut header = json!({
            "alg": "PS256",
            "typ": "JWT",
            "x5t#S256": self.certificate.thumbprint_sha256(),
        });
        if self.send_chain {
            header["x5c"] = json!(self.certificate.x5c());
        }
        let claims = json!({
            "aud": self.token_url(),
            "iss": self.client_id,
            "sub": self.client_id,
            "jti": random_uuid(&self.random)?,
            "nbf": issued_at,
            "iat": issued_at,
            "exp": issued_at + ASSERTION_LIFETIME.as_secs(),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .certificate
            .sign_ps256(&self.random, signing_input.as_bytes())?;
        Ok(Secret::new(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        )))
    }
}

impl fmt::Debug for ClientCertificateCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificateCredential")
            .field("authority", &self.authority.as_str())
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("certificate", &self.certificate)
            .field("send_chain", &self.send_chain)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl HttpTokenSource for ClientCertificateCredential {
    fn name(&self) -> &str {
        "client certificate"
    }

    fn token_request(&self, now: SystemTime) -> Result<HttpRequest, Error> {
        let assertion = self.client_assertion(now)?;
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", &self.client_id)
            .append_pair("client_assertion_type", CLIENT_ASSERTION_TYPE)
            .append_pair("client_assertion", assertion.expose_secret())
            .append_pair("scope", &self.scope)
            .append_pair("grant_type", "client_credentials")
            .finish();
        Ok(HttpRequest::post_form(
            self.token_url(),
            Secret::new(body),
            self.timeout,
        ))
    }

    fn parse_response(&self, response: &HttpResponse, now: SystemTime) -> Result<Token, Error> {
        parse_token_response(response, now)
    }
}

/// Returns a random version 4 UUID, the GUID form of `jti` that Microsoft's
/// certificate-credentials documentation asks for.
fn random_uuid(random: &dyn SecureRandom) -> Result<String, Error> {
    let mut bytes = [0u8; 16];
    random.fill(&mut bytes).map_err(|_| random_error())?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}

/// Reads `AZURE_CLIENT_SEND_CERTIFICATE_CHAIN`: `1` and `true` enable the chain, as in
/// the Azure SDKs for Go and Rust. The Python SDK treats any non-empty value as true, so
/// values other than `0` and `false` are rejected instead of guessed.
pub(super) fn parse_send_chain(value: Option<&str>) -> Result<bool, Error> {
    let value = value.unwrap_or("").trim();
    if value.is_empty() || value == "0" || value.eq_ignore_ascii_case("false") {
        Ok(false)
    } else if value == "1" || value.eq_ignore_ascii_case("true") {
        Ok(true)
    } else {
        Err(Error::config(
            SEND_CHAIN_VARIABLE,
            format!(
                "`{value}` is not a boolean; set `true` or `1` to send the certificate chain, \
                 `false` or `0` (or leave it unset) not to"
            ),
        ))
    }
}

/// Builds the error for a certificate file that cannot be read.
pub(crate) fn file_error(setting: &str, path: &Path, error: &std::io::Error) -> Error {
    let fix = "use the path of a PEM or PKCS#12 file that contains the certificate and its \
               private key";
    let reason = if error.kind() == std::io::ErrorKind::NotFound {
        format!("`{}` does not exist; {fix}", path.display())
    } else {
        format!("cannot read `{}`: {error}; {fix}", path.display())
    };
    Error::config(setting, reason)
}

/// Renames the settings in the errors of [`ClientCertificate::from_bytes`] to the names
/// the caller knows them by, such as environment variables.
pub(crate) fn rename_settings(error: Error, certificate: &str, password: &str) -> Error {
    match error {
        Error::Config { setting, reason } if setting == CERTIFICATE_SETTING => {
            Error::config(certificate, reason)
        }
        Error::Config { setting, reason } if setting == PASSWORD_SETTING => {
            Error::config(password, reason)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_chain_values() {
        for value in [None, Some(""), Some("0"), Some("false"), Some(" FALSE ")] {
            assert!(!parse_send_chain(value).unwrap(), "{value:?}");
        }
        for value in [Some("1"), Some("true"), Some("True")] {
            assert!(parse_send_chain(value).unwrap(), "{value:?}");
        }
        let error = parse_send_chain(Some("yes")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid AZURE_CLIENT_SEND_CERTIFICATE_CHAIN: `yes` is not a boolean; set `true` \
             or `1` to send the certificate chain, `false` or `0` (or leave it unset) not to"
        );
    }

    #[test]
    fn uuid_has_version_4_form() {
        let random = SystemRandom::new();
        let uuid = random_uuid(&random).unwrap();
        assert_eq!(uuid.len(), 36);
        let groups: Vec<&str> = uuid.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(groups[2].starts_with('4'), "{uuid}");
        assert!(matches!(&groups[3][..1], "8" | "9" | "a" | "b"), "{uuid}");
        assert_ne!(uuid, random_uuid(&random).unwrap());
    }

    #[test]
    fn missing_file_names_variable_and_path() {
        let env = |name: &str| match name {
            "AZURE_TENANT_ID" => Some("t".to_owned()),
            "AZURE_CLIENT_ID" => Some("c".to_owned()),
            "AZURE_CLIENT_CERTIFICATE_PATH" => Some("/no/such/cert.pem".to_owned()),
            _ => None,
        };
        let error = ClientCertificateCredential::from_env_with(env, |_| {
            Err(std::io::ErrorKind::NotFound.into())
        })
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid AZURE_CLIENT_CERTIFICATE_PATH: `/no/such/cert.pem` does not exist; use \
             the path of a PEM or PKCS#12 file that contains the certificate and its private \
             key"
        );
    }

    #[test]
    fn from_env_requires_path() {
        let env = |name: &str| match name {
            "AZURE_TENANT_ID" => Some("t".to_owned()),
            "AZURE_CLIENT_ID" => Some("c".to_owned()),
            _ => None,
        };
        let error =
            ClientCertificateCredential::from_env_with(env, |_| unreachable!()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid AZURE_CLIENT_CERTIFICATE_PATH: the environment variable is not set"
        );
    }

    #[test]
    fn unreadable_data_is_named() {
        let env = |name: &str| match name {
            "AZURE_TENANT_ID" => Some("t".to_owned()),
            "AZURE_CLIENT_ID" => Some("c".to_owned()),
            "AZURE_CLIENT_CERTIFICATE_PATH" => Some("cert.txt".to_owned()),
            _ => None,
        };
        let error =
            ClientCertificateCredential::from_env_with(env, |_| Ok(b"hello".to_vec())).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("invalid AZURE_CLIENT_CERTIFICATE_PATH: the data is neither PEM"),
            "{error}"
        );
    }
}
