//! HTTP requests and responses as plain values, so the core needs no HTTP client.

use std::fmt;
use std::time::Duration;

use crate::secret::Secret;

/// An HTTP method used by identity endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Method {
    /// `GET`, used by managed-identity endpoints.
    Get,
    /// `POST`, used by the Entra token endpoint.
    Post,
}

impl Method {
    /// The method name as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

/// A request for an adapter to send.
///
/// `Debug` shows the method, URL and header names only, because the body and some header
/// values carry secrets.
#[derive(Clone)]
pub struct HttpRequest {
    /// The method.
    pub method: Method,
    /// The full URL, query included.
    pub url: String,
    /// Header names and values.
    pub headers: Vec<(String, String)>,
    /// The body, which may contain a client secret or assertion.
    pub body: Secret,
    /// The time limit for the whole exchange, connecting included.
    pub timeout: Duration,
    /// Whether a proxy from the environment may carry the request. Managed-identity
    /// endpoints are local to the host and must be reached directly.
    pub allow_proxy: bool,
    /// How the server's TLS certificate is checked.
    pub server_certificate: ServerCertificate,
}

/// How an adapter checks the TLS certificate of an identity endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ServerCertificate {
    /// Verify the chain against the web PKI roots and the host name.
    #[default]
    WebPki,
    /// Accept exactly the certificate whose SHA-1 thumbprint is this hex string, as
    /// Service Fabric's managed-identity endpoint requires (`IDENTITY_SERVER_THUMBPRINT`).
    PinnedSha1(String),
}

impl HttpRequest {
    /// Creates a `GET` request with no headers, proxy allowed and web PKI verification.
    pub fn get(url: impl Into<String>, timeout: Duration) -> Self {
        HttpRequest {
            method: Method::Get,
            url: url.into(),
            headers: Vec::new(),
            body: Secret::new(""),
            timeout,
            allow_proxy: true,
            server_certificate: ServerCertificate::WebPki,
        }
    }

    /// Creates a `POST` request with a form body (`application/x-www-form-urlencoded`).
    pub fn post_form(url: impl Into<String>, body: Secret, timeout: Duration) -> Self {
        HttpRequest {
            method: Method::Post,
            headers: vec![(
                "Content-Type".to_owned(),
                "application/x-www-form-urlencoded".to_owned(),
            )],
            body,
            ..Self::get(url, timeout)
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

impl fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &names)
            .field("body_len", &self.body.expose_secret().len())
            .field("timeout", &self.timeout)
            .field("allow_proxy", &self.allow_proxy)
            .field("server_certificate", &self.server_certificate)
            .finish()
    }
}

/// A response as an adapter received it. Non-2xx statuses are responses too.
#[derive(Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Header names and values.
    pub headers: Vec<(String, String)>,
    /// The body, which contains the access token on success.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// Returns the first value of the header `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Reads `Retry-After` given in seconds. HTTP dates are ignored.
    pub fn retry_after(&self) -> Option<Duration> {
        let value = self.header("retry-after")?.trim();
        value.parse::<u64>().ok().map(Duration::from_secs)
    }
}

impl fmt::Debug for HttpResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpResponse")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}
