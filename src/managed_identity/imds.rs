//! The Instance Metadata Service of VMs, scale sets and AKS nodes.

use std::time::Duration;

use super::{UserAssigned, get_request, with_api_version};
use crate::error::Error;
use crate::http::{HttpRequest, HttpResponse};
use crate::response::parse_error_response;

/// The IMDS address, which is link-local: only the VM itself reaches it.
const DEFAULT_HOST: &str = "http://169.254.169.254";

/// The token path below the host.
const TOKEN_PATH: &str = "/metadata/identity/oauth2/token";

/// IMDS accepts 2018-02-01 or greater; 2018-02-01 is the version of Microsoft's own
/// examples and of the Python SDK and MSAL.
const API_VERSION: &str = "2018-02-01";

#[derive(Clone)]
pub(super) struct Imds {
    /// `{host}/metadata/identity/oauth2/token`.
    endpoint: String,
}

impl Imds {
    /// Uses `host` in place of `http://169.254.169.254` when set: the value of
    /// `AZURE_POD_IDENTITY_AUTHORITY_HOST`, which AAD Pod Identity sets.
    pub(super) fn new(host: Option<String>) -> Result<Self, Error> {
        let host = match host {
            Some(host) => {
                let url = super::endpoint_url("AZURE_POD_IDENTITY_AUTHORITY_HOST", &host)?;
                url.trim_end_matches('/').to_owned()
            }
            None => DEFAULT_HOST.to_owned(),
        };
        Ok(Imds {
            endpoint: format!("{host}{TOKEN_PATH}"),
        })
    }

    pub(super) fn request(
        &self,
        query: &[(&'static str, String)],
        timeout: Duration,
    ) -> HttpRequest {
        // IMDS rejects a request without `Metadata: true`, which a server-side request
        // forgery through another service cannot add.
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

/// Returns true for the statuses that Microsoft's IMDS guidance retries: 404 (IMDS is
/// updating), 410 (IMDS is available again within 70 s), 429 and 5xx.
pub(super) fn is_transient_status(status: u16) -> bool {
    matches!(status, 404 | 410 | 429 | 500..=599)
}

/// Classifies an error response of IMDS or of the Azure Arc agent, which follows the
/// same rules.
///
/// An identity that does not exist is a configuration error naming it, or
/// [`Error::CredentialUnavailable`] for a missing system-assigned identity, as in the Go
/// SDK. A 403 that mentions `unreachable` comes from a proxy that intercepts the IMDS
/// address (Docker Desktop runs one), so managed identity is unavailable.
pub(super) fn error(response: &HttpResponse, identity: Option<&UserAssigned>) -> Error {
    let error = parse_error_response(response);
    let Error::IdentityEndpoint(mut endpoint_error) = error else {
        return error;
    };
    let mentions = |text: &str| {
        let text = text.to_ascii_lowercase();
        endpoint_error
            .description
            .as_deref()
            .is_some_and(|d| d.to_ascii_lowercase().contains(&text))
    };
    if response.status == 400 && mentions("identity not found") {
        return identity_not_found(identity);
    }
    if response.status == 403 && String::from_utf8_lossy(&response.body).contains("unreachable") {
        return Error::CredentialUnavailable {
            credential: "managed identity".to_owned(),
            reason: "a proxy intercepted the request to the IMDS address and reported it \
                     unreachable, so this is not an Azure VM"
                .to_owned(),
        };
    }
    endpoint_error.transient = is_transient_status(response.status);
    Error::IdentityEndpoint(endpoint_error)
}

fn identity_not_found(identity: Option<&UserAssigned>) -> Error {
    match identity {
        Some(identity) => Error::config(
            "user-assigned managed identity",
            format!(
                "the identity endpoint returned \"Identity not found\" for {identity}; assign \
                 that identity to this resource, or correct the id"
            ),
        ),
        None => Error::CredentialUnavailable {
            credential: "managed identity".to_owned(),
            reason: "the identity endpoint returned \"Identity not found\" for the \
                     system-assigned identity; enable it on this resource, or select a \
                     user-assigned identity"
                .to_owned(),
        },
    }
}
