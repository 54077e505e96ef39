//! The Microsoft Entra token endpoint: authority hosts and the client-secret credential.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::error::Error;
use crate::http::{HttpRequest, HttpResponse};
use crate::response::parse_token_response;
use crate::secret::Secret;
use crate::source::HttpTokenSource;
use crate::token::Token;

/// The scope that Azure Cache for Redis and Azure Managed Redis accept, in every cloud.
pub const REDIS_SCOPE: &str = "https://redis.azure.com/.default";

/// The default time limit for one token request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The host that issues tokens: the public cloud by default, or a sovereign cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorityHost(String);

impl AuthorityHost {
    /// The public cloud's host.
    pub const PUBLIC_CLOUD: &'static str = "https://login.microsoftonline.com";
    /// Azure US Government's host.
    pub const US_GOVERNMENT: &'static str = "https://login.microsoftonline.us";
    /// Azure operated by 21Vianet (China).
    pub const CHINA: &'static str = "https://login.chinacloudapi.cn";

    /// Parses a host such as `login.microsoftonline.us` or `https://login.microsoftonline.us/`.
    ///
    /// A bare host gets `https://`. The scheme must be `https`, except `http` for loopback
    /// hosts (`localhost`, `127.0.0.0/8`, `[::1]`), which tests and emulators use.
    pub fn parse(value: &str) -> Result<Self, Error> {
        let setting = "authority host";
        let trimmed = value.trim();
        let with_scheme = if trimmed.contains("://") {
            trimmed.trim_end_matches('/').to_owned()
        } else {
            format!("https://{}", trimmed.trim_end_matches('/'))
        };
        let (scheme, rest) = with_scheme.split_once("://").unwrap_or_default();
        let authority = rest.split('/').next().unwrap_or("");
        if authority.is_empty() || authority.contains('@') || rest.contains(['?', '#']) {
            return Err(Error::config(
                setting,
                format!(
                    "`{value}` is not a host URL; use for example {}",
                    Self::PUBLIC_CLOUD
                ),
            ));
        }
        let scheme = scheme.to_ascii_lowercase();
        match scheme.as_str() {
            "https" => {}
            "http" if is_loopback(authority) => {}
            _ => {
                return Err(Error::config(
                    setting,
                    format!("`{value}` must use https (http is allowed only for loopback hosts)"),
                ));
            }
        }
        Ok(AuthorityHost(format!("{scheme}://{rest}")))
    }

    /// Returns the host URL without a trailing slash.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Returns the token endpoint of `tenant_id`: `{host}/{tenant}/oauth2/v2.0/token`.
    pub(crate) fn token_url(&self, tenant_id: &str) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.0, tenant_id)
    }
}

impl Default for AuthorityHost {
    fn default() -> Self {
        AuthorityHost(Self::PUBLIC_CLOUD.to_owned())
    }
}

/// Returns true for `localhost`, `127.0.0.0/8` and `[::1]`, with or without a port.
pub(crate) fn is_loopback(authority: &str) -> bool {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    if host.eq_ignore_ascii_case("localhost") || host == "::1" {
        return true;
    }
    host.parse::<std::net::Ipv4Addr>()
        .is_ok_and(|ip| ip.is_loopback())
}

pub(crate) fn validate_tenant(tenant_id: &str) -> Result<(), Error> {
    // At least one letter or digit, so `.` and `..` cannot turn into URL path segments.
    let valid = tenant_id.chars().any(|c| c.is_ascii_alphanumeric())
        && tenant_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if valid {
        Ok(())
    } else {
        Err(Error::config(
            "tenant id",
            format!(
                "`{tenant_id}` may contain only letters, digits, `.` and `-`; use the directory (tenant) id GUID or a domain"
            ),
        ))
    }
}

pub(crate) fn validate_client_id(client_id: &str) -> Result<(), Error> {
    if client_id.is_empty() || client_id.chars().any(char::is_whitespace) {
        return Err(Error::config(
            "client id",
            format!("`{client_id}` must be the application (client) id, without spaces"),
        ));
    }
    Ok(())
}

/// Reads the environment variable `name` through `lookup`; an empty value counts as
/// missing.
pub(crate) fn required_env(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &str,
) -> Result<String, Error> {
    lookup(name)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Error::config(name, "the environment variable is not set"))
}

/// Reads the optional `AZURE_AUTHORITY_HOST` through `lookup`, naming the variable in
/// errors.
pub(crate) fn authority_host_from_env(
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<Option<AuthorityHost>, Error> {
    let name = "AZURE_AUTHORITY_HOST";
    match lookup(name).filter(|v| !v.is_empty()) {
        Some(host) => AuthorityHost::parse(&host).map(Some).map_err(|e| match e {
            Error::Config { reason, .. } => Error::config(name, reason),
            other => other,
        }),
        None => Ok(None),
    }
}

/// A service principal that authenticates with a client secret.
#[derive(Clone)]
pub struct ClientSecretCredential {
    authority: AuthorityHost,
    tenant_id: String,
    client_id: String,
    secret: Secret,
    scope: String,
    timeout: Duration,
}

impl ClientSecretCredential {
    /// Creates a credential for the public cloud and the Redis scope.
    pub fn new(
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        secret: impl Into<Secret>,
    ) -> Result<Self, Error> {
        let tenant_id = tenant_id.into();
        let client_id = client_id.into();
        let secret = secret.into();
        validate_tenant(&tenant_id)?;
        validate_client_id(&client_id)?;
        if secret.expose_secret().trim().is_empty() {
            return Err(Error::config("client secret", "the secret is empty"));
        }
        Ok(ClientSecretCredential {
            authority: AuthorityHost::default(),
            tenant_id,
            client_id,
            secret,
            scope: REDIS_SCOPE.to_owned(),
            timeout: DEFAULT_REQUEST_TIMEOUT,
        })
    }

    /// Reads `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET` and the optional
    /// `AZURE_AUTHORITY_HOST` through `lookup` (pass `|name| std::env::var(name).ok()`).
    ///
    /// An empty variable counts as missing.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let mut credential = Self::new(
            required_env(&lookup, "AZURE_TENANT_ID")?,
            required_env(&lookup, "AZURE_CLIENT_ID")?,
            required_env(&lookup, "AZURE_CLIENT_SECRET")?,
        )?;
        if let Some(host) = authority_host_from_env(&lookup)? {
            credential.authority = host;
        }
        Ok(credential)
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
}

impl fmt::Debug for ClientSecretCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSecretCredential")
            .field("authority", &self.authority.as_str())
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl HttpTokenSource for ClientSecretCredential {
    fn name(&self) -> &str {
        "client secret"
    }

    fn token_request(&self, _now: SystemTime) -> Result<HttpRequest, Error> {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", &self.client_id)
            .append_pair("client_secret", self.secret.expose_secret())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Method;
    use std::collections::HashMap;

    #[test]
    fn authority_host_forms() {
        let cases = [
            (
                "login.microsoftonline.us",
                "https://login.microsoftonline.us",
            ),
            (
                "https://login.chinacloudapi.cn/",
                "https://login.chinacloudapi.cn",
            ),
            (
                " https://login.microsoftonline.com ",
                "https://login.microsoftonline.com",
            ),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("http://localhost:1", "http://localhost:1"),
            ("http://[::1]:9", "http://[::1]:9"),
            (
                "HTTPS://login.microsoftonline.com",
                "https://login.microsoftonline.com",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                AuthorityHost::parse(input).unwrap().as_str(),
                expected,
                "{input}"
            );
        }
    }

    #[test]
    fn authority_host_rejects_plain_http_and_junk() {
        for input in [
            "http://login.microsoftonline.com",
            "ftp://x",
            "https://",
            "https://u:p@host",
            "https://h/?q",
        ] {
            let err = AuthorityHost::parse(input).unwrap_err();
            assert!(matches!(err, Error::Config { .. }), "{input}: {err}");
        }
        assert_eq!(
            AuthorityHost::parse("http://example.com")
                .unwrap_err()
                .to_string(),
            "invalid authority host: `http://example.com` must use https (http is allowed only \
             for loopback hosts)"
        );
    }

    #[test]
    fn request_has_form_fields_and_no_secret_in_debug() {
        let credential = ClientSecretCredential::new("tenant-1", "client-1", "s3cr&t=").unwrap();
        let request = credential.token_request(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(request.method, Method::Post);
        assert_eq!(
            request.url,
            "https://login.microsoftonline.com/tenant-1/oauth2/v2.0/token"
        );
        assert_eq!(
            request.body.expose_secret(),
            "client_id=client-1&client_secret=s3cr%26t%3D&scope=https%3A%2F%2Fredis.azure.com%2F.default&grant_type=client_credentials"
        );
        assert!(!format!("{request:?}").contains("s3cr"));
        assert!(!format!("{credential:?}").contains("s3cr"));
    }

    #[test]
    fn from_env_names_missing_variable() {
        let env: HashMap<&str, &str> = [
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_CLIENT_SECRET", ""),
        ]
        .into();
        let err =
            ClientSecretCredential::from_env(|n| env.get(n).map(|v| v.to_string())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid AZURE_CLIENT_SECRET: the environment variable is not set"
        );
    }

    #[test]
    fn from_env_reads_authority_host() {
        let env: HashMap<&str, &str> = [
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_CLIENT_SECRET", "s"),
            ("AZURE_AUTHORITY_HOST", "login.microsoftonline.us"),
        ]
        .into();
        let credential =
            ClientSecretCredential::from_env(|n| env.get(n).map(|v| v.to_string())).unwrap();
        assert_eq!(
            credential.token_url(),
            "https://login.microsoftonline.us/t/oauth2/v2.0/token"
        );
        let bad: HashMap<&str, &str> = [
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_CLIENT_SECRET", "s"),
            ("AZURE_AUTHORITY_HOST", "http://login.microsoftonline.us"),
        ]
        .into();
        let err =
            ClientSecretCredential::from_env(|n| bad.get(n).map(|v| v.to_string())).unwrap_err();
        assert!(
            err.to_string().starts_with("invalid AZURE_AUTHORITY_HOST:"),
            "{err}"
        );
    }

    #[test]
    fn tenant_and_client_id_are_validated() {
        let err = ClientSecretCredential::new("bad/tenant", "c", "s").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid tenant id: `bad/tenant`"),
            "{err}"
        );
        for tenant in [".", "..", "-"] {
            let err = ClientSecretCredential::new(tenant, "c", "s").unwrap_err();
            assert!(err.to_string().starts_with("invalid tenant id"), "{err}");
        }
        let err = ClientSecretCredential::new("t", "c", "  ").unwrap_err();
        assert!(
            err.to_string().starts_with("invalid client secret"),
            "{err}"
        );
        let err = ClientSecretCredential::new("t", "", "s").unwrap_err();
        assert!(err.to_string().starts_with("invalid client id"), "{err}");
    }
}
