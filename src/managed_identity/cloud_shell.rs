//! Azure Cloud Shell, whose tokens belong to the signed-in portal user.

use std::time::Duration;

use super::endpoint_url;
use crate::error::Error;
use crate::http::HttpRequest;
use crate::secret::Secret;

#[derive(Clone)]
pub(super) struct CloudShell {
    /// `MSI_ENDPOINT`.
    endpoint: String,
}

impl CloudShell {
    pub(super) fn new(endpoint: &str) -> Result<Self, Error> {
        Ok(CloudShell {
            endpoint: endpoint_url("MSI_ENDPOINT", endpoint)?,
        })
    }

    /// Cloud Shell takes the resource as a form field of a POST, not in the query.
    pub(super) fn request(&self, resource: &str, timeout: Duration) -> HttpRequest {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("resource", resource)
            .finish();
        let mut request = HttpRequest::post_form(self.endpoint.clone(), Secret::new(body), timeout)
            .with_header("Metadata", "true");
        request.allow_proxy = false;
        request
    }
}
