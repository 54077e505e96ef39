//! Sends the core's token requests with ureq.

use std::time::Duration;

use ureq::config::ConfigBuilder;
use ureq::typestate::AgentScope;

use super::pinned_tls;
use crate::{Error, HttpRequest, HttpResponse, Method, ServerCertificate};

/// The limit for establishing TCP and TLS with an identity endpoint. A healthy endpoint
/// connects in well under a second, so this only cuts off unreachable ones early.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest response body read. Token responses are a few kilobytes.
const MAX_BODY: u64 = 1024 * 1024;

/// Builds the agent for token requests: non-2xx statuses come back as responses, and
/// redirects are not followed, because a token request must not be re-sent elsewhere.
pub(crate) fn agent() -> ureq::Agent {
    agent_config().build().into()
}

fn agent_config() -> ConfigBuilder<AgentScope> {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_connect(Some(CONNECT_TIMEOUT))
}

/// Sends `request` and returns the response, whatever its status.
pub(crate) fn send(agent: &ureq::Agent, request: &HttpRequest) -> Result<HttpResponse, Error> {
    let pinned_agent;
    let agent = match &request.server_certificate {
        ServerCertificate::WebPki => agent,
        ServerCertificate::PinnedSha1(thumbprint) => {
            // Pinned requests go to Service Fabric's local endpoint, never through a proxy.
            pinned_agent = pinned_tls::agent(agent_config().proxy(None).build(), thumbprint)?;
            &pinned_agent
        }
    };
    // A proxy from the environment must not see requests to a loopback mock.
    let bypass_proxy = !request.allow_proxy || is_loopback_url(&request.url);
    let result = match request.method {
        Method::Get => {
            let mut builder = agent.get(&request.url);
            for (name, value) in &request.headers {
                builder = builder.header(name, value);
            }
            let mut config = builder.config().timeout_global(Some(request.timeout));
            if bypass_proxy {
                config = config.proxy(None);
            }
            config.build().call()
        }
        Method::Post => {
            let mut builder = agent.post(&request.url);
            for (name, value) in &request.headers {
                builder = builder.header(name, value);
            }
            let mut config = builder.config().timeout_global(Some(request.timeout));
            if bypass_proxy {
                config = config.proxy(None);
            }
            config.build().send(request.body.expose_secret())
        }
    };
    let mut response = result.map_err(|e| transport_error(&request.url, e))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
        .collect();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_vec()
        .map_err(|e| transport_error(&request.url, e))?;
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn transport_error(url: &str, error: ureq::Error) -> Error {
    let timed_out = matches!(error, ureq::Error::Timeout(_));
    // The URL carries no secret: secrets travel in the body and headers only.
    Error::Transport {
        reason: format!("{url}: {error}"),
        timed_out,
    }
}

fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or("");
    crate::entra::is_loopback(authority)
}
