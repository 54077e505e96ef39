//! App Service, Azure Functions, Container Apps and Azure Automation (API 2019-08-01).

use std::time::Duration;

use super::{UserAssigned, endpoint_url, get_request, with_api_version};
use crate::error::Error;
use crate::http::HttpRequest;
use crate::secret::Secret;

const API_VERSION: &str = "2019-08-01";

#[derive(Clone)]
pub(super) struct AppService {
    /// `IDENTITY_ENDPOINT`, such as `http://localhost:8081/msi/token`.
    endpoint: String,
    /// `IDENTITY_HEADER`, which proves the request comes from the app.
    header: Secret,
}

impl AppService {
    pub(super) fn new(endpoint: &str, header: String) -> Result<Self, Error> {
        Ok(AppService {
            endpoint: endpoint_url("IDENTITY_ENDPOINT", endpoint)?,
            header: Secret::new(header),
        })
    }

    pub(super) fn request(
        &self,
        query: &[(&'static str, String)],
        timeout: Duration,
    ) -> HttpRequest {
        // App Service ignores `Metadata: true`; Azure Automation, which is detected the
        // same way, needs it.
        get_request(
            &self.endpoint,
            &with_api_version(API_VERSION, query),
            timeout,
        )
        .with_header("X-IDENTITY-HEADER", self.header.expose_secret())
        .with_header("Metadata", "true")
    }
}

/// Returns the parameter for `identity`. The object id goes in `principal_id`, the name
/// App Service documents first. MSAL sends its documented alias `object_id` instead.
pub(super) fn identity_parameter(identity: &UserAssigned) -> &'static str {
    match identity {
        UserAssigned::ClientId(_) => "client_id",
        UserAssigned::ObjectId(_) => "principal_id",
        UserAssigned::ResourceId(_) => "mi_res_id",
    }
}
