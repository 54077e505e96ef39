//! Azure Machine Learning compute, and App Service's 2017-09-01 API (Linux Consumption
//! plans), which share the `MSI_ENDPOINT` and `MSI_SECRET` protocol.

use std::time::Duration;

use super::{UserAssigned, endpoint_url, get_request, with_api_version};
use crate::error::Error;
use crate::http::HttpRequest;
use crate::secret::Secret;

const API_VERSION: &str = "2017-09-01";

#[derive(Clone)]
pub(super) struct AzureMl {
    /// `MSI_ENDPOINT`.
    endpoint: String,
    /// `MSI_SECRET`, sent in the `secret` header.
    secret: Secret,
    /// `DEFAULT_IDENTITY_CLIENT_ID`: the compute's identity, used when none is selected.
    default_client_id: Option<String>,
}

impl AzureMl {
    pub(super) fn new(
        endpoint: &str,
        secret: String,
        default_client_id: Option<String>,
    ) -> Result<Self, Error> {
        Ok(AzureMl {
            endpoint: endpoint_url("MSI_ENDPOINT", endpoint)?,
            secret: Secret::new(secret),
            default_client_id,
        })
    }

    pub(super) fn request(
        &self,
        query: &[(&'static str, String)],
        timeout: Duration,
    ) -> HttpRequest {
        let mut pairs = with_api_version(API_VERSION, query);
        if !pairs.iter().any(|(name, _)| *name == "clientid")
            && let Some(id) = &self.default_client_id
        {
            pairs.push(("clientid", id));
        }
        get_request(&self.endpoint, &pairs, timeout)
            .with_header("secret", self.secret.expose_secret())
    }
}

/// Returns the parameter for `identity`: the 2017-09-01 API selects an identity only by
/// client id, in `clientid` (no underscore).
pub(super) fn identity_parameter(identity: &UserAssigned) -> Option<&'static str> {
    match identity {
        UserAssigned::ClientId(_) => Some("clientid"),
        UserAssigned::ObjectId(_) | UserAssigned::ResourceId(_) => None,
    }
}
