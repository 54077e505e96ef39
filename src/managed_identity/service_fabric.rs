//! Service Fabric applications, whose identity endpoint has a self-signed certificate that
//! is checked by its SHA-1 thumbprint.

use std::time::Duration;

use super::{endpoint_url, get_request, with_api_version};
use crate::error::Error;
use crate::http::{HttpRequest, HttpResponse, ServerCertificate};
use crate::response::parse_error_response;
use crate::secret::Secret;

/// The only version the endpoint accepts, per Microsoft's Service Fabric documentation.
const API_VERSION: &str = "2019-07-01-preview";

#[derive(Clone)]
pub(super) struct ServiceFabric {
    /// `IDENTITY_ENDPOINT`, an https URL such as `https://localhost:2377/metadata/identity/oauth2/token`.
    endpoint: String,
    /// `IDENTITY_HEADER`, sent in the `Secret` header.
    header: Secret,
    /// `IDENTITY_SERVER_THUMBPRINT` as 40 lowercase hex digits.
    thumbprint: String,
}

impl ServiceFabric {
    pub(super) fn new(endpoint: &str, header: String, thumbprint: &str) -> Result<Self, Error> {
        let endpoint = endpoint_url("IDENTITY_ENDPOINT", endpoint)?;
        if !endpoint.to_ascii_lowercase().starts_with("https://") {
            return Err(Error::config(
                "IDENTITY_ENDPOINT",
                format!(
                    "`{endpoint}` must use https, because Service Fabric's identity endpoint \
                     is checked by its certificate thumbprint"
                ),
            ));
        }
        Ok(ServiceFabric {
            endpoint,
            header: Secret::new(header),
            thumbprint: normalize_thumbprint(thumbprint)?,
        })
    }

    pub(super) fn request(
        &self,
        query: &[(&'static str, String)],
        timeout: Duration,
    ) -> HttpRequest {
        let mut request = get_request(
            &self.endpoint,
            &with_api_version(API_VERSION, query),
            timeout,
        )
        .with_header("Secret", self.header.expose_secret());
        request.server_certificate = ServerCertificate::PinnedSha1(self.thumbprint.clone());
        request
    }
}

/// Removes `:` and whitespace and lowercases, then requires 40 hex digits.
fn normalize_thumbprint(value: &str) -> Result<String, Error> {
    let thumbprint: String = value
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if thumbprint.len() != 40 || !thumbprint.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::config(
            "IDENTITY_SERVER_THUMBPRINT",
            format!("`{value}` is not a SHA-1 thumbprint of 40 hex digits"),
        ));
    }
    Ok(thumbprint)
}

/// Classifies an error response: 429 and 5xx are retried, as Service Fabric's
/// documentation advises; 404 (unknown identity) and other 4xx are not.
pub(super) fn error(response: &HttpResponse) -> Error {
    let error = parse_error_response(response);
    let Error::IdentityEndpoint(mut endpoint_error) = error else {
        return error;
    };
    endpoint_error.transient = matches!(response.status, 429 | 500..=599);
    Error::IdentityEndpoint(endpoint_error)
}
