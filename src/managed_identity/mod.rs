//! Managed identity: tokens from the identity endpoint of the Azure host the program runs
//! on.
//!
//! [`ManagedIdentityCredential::from_env`] detects the hosting environment from its
//! variables, in the order the Azure SDKs use:
//!
//! | variables (non-empty) | environment |
//! |---|---|
//! | `IDENTITY_ENDPOINT`, `IDENTITY_HEADER`, `IDENTITY_SERVER_THUMBPRINT` | Service Fabric |
//! | `IDENTITY_ENDPOINT`, `IDENTITY_HEADER` | App Service, Functions, Container Apps |
//! | `IDENTITY_ENDPOINT`, `IMDS_ENDPOINT` | Azure Arc |
//! | `MSI_ENDPOINT`, `MSI_SECRET` | Azure ML, App Service 2017-09-01 API |
//! | `MSI_ENDPOINT` | Cloud Shell |
//! | none of these, but the Arc agent's `himds` is installed | Azure Arc |
//! | none of these | IMDS (VMs, scale sets, AKS nodes) |
//!
//! Each submodule builds one environment's request and classifies its errors.

mod app_service;
mod arc;
mod azure_ml;
mod cloud_shell;
mod imds;
mod service_fabric;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::entra::{DEFAULT_REQUEST_TIMEOUT, REDIS_SCOPE};
use crate::error::Error;
use crate::http::{HttpRequest, HttpResponse};
use crate::response::{parse_error_response, parse_token_response};
use crate::source::{Exchange, HttpTokenSource, TokenSource};
use crate::token::Token;

/// A user-assigned managed identity, selected by one of its ids.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UserAssigned {
    /// The identity's client (application) id.
    ClientId(String),
    /// The identity's object (principal) id.
    ObjectId(String),
    /// The identity's Azure resource id,
    /// `/subscriptions/…/resourceGroups/…/providers/Microsoft.ManagedIdentity/userAssignedIdentities/…`.
    ResourceId(String),
}

impl UserAssigned {
    /// Returns the kind of id as messages name it: `client id`, `object id` or `resource id`.
    pub fn kind(&self) -> &'static str {
        match self {
            UserAssigned::ClientId(_) => "client id",
            UserAssigned::ObjectId(_) => "object id",
            UserAssigned::ResourceId(_) => "resource id",
        }
    }

    /// Returns the id itself.
    pub fn id(&self) -> &str {
        match self {
            UserAssigned::ClientId(id)
            | UserAssigned::ObjectId(id)
            | UserAssigned::ResourceId(id) => id,
        }
    }
}

impl fmt::Display for UserAssigned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} `{}`", self.kind(), self.id())
    }
}

/// The hosting environment whose identity endpoint a [`ManagedIdentityCredential`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostingEnvironment {
    /// The Instance Metadata Service of VMs, scale sets and AKS nodes.
    Imds,
    /// App Service, Azure Functions, Container Apps and Azure Automation.
    AppService,
    /// An Azure Arc-enabled server, through its Connected Machine agent.
    AzureArc,
    /// Azure Cloud Shell, whose token belongs to the signed-in user.
    CloudShell,
    /// A Service Fabric application.
    ServiceFabric,
    /// Azure Machine Learning compute, and App Service's 2017-09-01 API.
    AzureMl,
}

impl fmt::Display for HostingEnvironment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostingEnvironment::Imds => "IMDS",
            HostingEnvironment::AppService => "App Service",
            HostingEnvironment::AzureArc => "Azure Arc",
            HostingEnvironment::CloudShell => "Cloud Shell",
            HostingEnvironment::ServiceFabric => "Service Fabric",
            HostingEnvironment::AzureMl => "Azure ML",
        })
    }
}

/// The detected endpoint with the values its requests need.
#[derive(Clone)]
enum Endpoint {
    Imds(imds::Imds),
    AppService(app_service::AppService),
    AzureArc(arc::AzureArc),
    CloudShell(cloud_shell::CloudShell),
    ServiceFabric(service_fabric::ServiceFabric),
    AzureMl(azure_ml::AzureMl),
}

/// A managed identity, system-assigned or user-assigned, on any Azure hosting environment.
///
/// Every request goes directly to the endpoint, never through a proxy, as Microsoft
/// requires for IMDS. The environment's variables are read once, at construction: the
/// platform sets them when it starts the process and cannot change them afterwards.
#[derive(Clone)]
pub struct ManagedIdentityCredential {
    endpoint: Endpoint,
    identity: Option<UserAssigned>,
    resource: String,
    timeout: Duration,
}

impl ManagedIdentityCredential {
    /// Detects the hosting environment from the variables read through `lookup` (pass
    /// `|name| std::env::var(name).ok()`), for the system-assigned identity and the Redis
    /// resource. An empty variable counts as missing.
    ///
    /// An Arc-enabled server whose `IDENTITY_ENDPOINT` and `IMDS_ENDPOINT` are not set is
    /// detected only by [`ManagedIdentityCredential::from_env_with_file_check`]; here it is
    /// taken for IMDS.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        Self::from_env_with_file_check(lookup, |_| false)
    }

    /// Detects the hosting environment like [`ManagedIdentityCredential::from_env`], and
    /// also looks for the Azure Arc agent's `himds` program with `file_exists` (pass
    /// `|path| path.exists()`): `/opt/azcmagent/bin/himds` on Linux, and
    /// `AzureConnectedMachineAgent\himds.exe` under `%ProgramFiles%` or `%ProgramData%` on
    /// Windows.
    pub fn from_env_with_file_check(
        lookup: impl Fn(&str) -> Option<String>,
        file_exists: impl Fn(&Path) -> bool,
    ) -> Result<Self, Error> {
        let get = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        let endpoint =
            match (
                get("IDENTITY_ENDPOINT"),
                get("IDENTITY_HEADER"),
                get("MSI_ENDPOINT"),
            ) {
                (Some(url), Some(header), _) => match get("IDENTITY_SERVER_THUMBPRINT") {
                    Some(thumbprint) => Endpoint::ServiceFabric(
                        service_fabric::ServiceFabric::new(&url, header, &thumbprint)?,
                    ),
                    None => Endpoint::AppService(app_service::AppService::new(&url, header)?),
                },
                (Some(url), None, _) if get("IMDS_ENDPOINT").is_some() => {
                    Endpoint::AzureArc(arc::AzureArc::new(&url, &lookup)?)
                }
                (_, _, Some(url)) => match get("MSI_SECRET") {
                    Some(secret) => Endpoint::AzureMl(azure_ml::AzureMl::new(
                        &url,
                        secret,
                        get("DEFAULT_IDENTITY_CLIENT_ID"),
                    )?),
                    None => Endpoint::CloudShell(cloud_shell::CloudShell::new(&url)?),
                },
                _ if arc::agent_installed(&lookup, &file_exists) => {
                    Endpoint::AzureArc(arc::AzureArc::new(arc::DEFAULT_ENDPOINT, &lookup)?)
                }
                _ => Endpoint::Imds(imds::Imds::new(get("AZURE_POD_IDENTITY_AUTHORITY_HOST"))?),
            };
        Ok(ManagedIdentityCredential {
            endpoint,
            identity: None,
            resource: resource_from_scope(REDIS_SCOPE)?,
            timeout: DEFAULT_REQUEST_TIMEOUT,
        })
    }

    /// Uses a user-assigned identity instead of the system-assigned one.
    ///
    /// Fails with [`Error::Config`] when the hosting environment cannot select an identity
    /// by that kind of id: Cloud Shell and Service Fabric select none, and Azure ML only
    /// by client id.
    pub fn with_user_assigned(mut self, identity: UserAssigned) -> Result<Self, Error> {
        let id = identity.id();
        if id.is_empty() || id.chars().any(char::is_whitespace) {
            return Err(Error::config(
                "user-assigned managed identity",
                format!("{identity} must be non-empty and contain no spaces"),
            ));
        }
        if self.identity_parameter(&identity).is_none() {
            return Err(unsupported_identity(self.hosting_environment(), &identity));
        }
        self.identity = Some(identity);
        Ok(self)
    }

    /// Requests a token for another scope than `https://redis.azure.com/.default`.
    /// Managed-identity endpoints take a resource, so a trailing `/.default` is removed.
    pub fn with_scope(mut self, scope: &str) -> Result<Self, Error> {
        self.resource = resource_from_scope(scope)?;
        Ok(self)
    }

    /// Sets the time limit for one request (default 10 s).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the directory where the Azure Arc agent must have put the key file named by
    /// its challenge (default `/var/opt/azcmagent/tokens` on Linux,
    /// `%ProgramData%\AzureConnectedMachineAgent\Tokens` on Windows). Other environments
    /// ignore it. Tests use it to point at a temporary directory.
    pub fn with_arc_key_directory(mut self, directory: impl Into<PathBuf>) -> Self {
        if let Endpoint::AzureArc(arc) = &mut self.endpoint {
            arc.key_directory = Some(directory.into());
        }
        self
    }

    /// Returns the detected hosting environment.
    pub fn hosting_environment(&self) -> HostingEnvironment {
        match self.endpoint {
            Endpoint::Imds(_) => HostingEnvironment::Imds,
            Endpoint::AppService(_) => HostingEnvironment::AppService,
            Endpoint::AzureArc(_) => HostingEnvironment::AzureArc,
            Endpoint::CloudShell(_) => HostingEnvironment::CloudShell,
            Endpoint::ServiceFabric(_) => HostingEnvironment::ServiceFabric,
            Endpoint::AzureMl(_) => HostingEnvironment::AzureMl,
        }
    }

    /// Returns the selected user-assigned identity, or `None` for the system-assigned one.
    pub fn user_assigned(&self) -> Option<&UserAssigned> {
        self.identity.as_ref()
    }

    /// Returns the resource the token is requested for, such as `https://redis.azure.com`.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// Returns the query parameter that carries `identity` here, or `None` when this
    /// environment cannot select it.
    fn identity_parameter(&self, identity: &UserAssigned) -> Option<&'static str> {
        match &self.endpoint {
            Endpoint::Imds(_) => Some(imds::identity_parameter(identity)),
            Endpoint::AppService(_) => Some(app_service::identity_parameter(identity)),
            Endpoint::AzureArc(_) => Some(arc::identity_parameter(identity)),
            Endpoint::AzureMl(_) => azure_ml::identity_parameter(identity),
            Endpoint::CloudShell(_) | Endpoint::ServiceFabric(_) => None,
        }
    }

    /// Lists the resource and identity query parameters, which every environment except
    /// Cloud Shell sends after its `api-version`.
    fn query_parameters(&self) -> Vec<(&'static str, String)> {
        let mut query = vec![("resource", self.resource.clone())];
        if let Some(identity) = &self.identity
            && let Some(name) = self.identity_parameter(identity)
        {
            query.push((name, identity.id().to_owned()));
        }
        query
    }

    /// Builds the token request of every environment but Azure Arc, whose exchange starts
    /// with a challenge.
    fn token_request(&self) -> HttpRequest {
        let query = self.query_parameters();
        match &self.endpoint {
            Endpoint::Imds(imds) => imds.request(&query, self.timeout),
            Endpoint::AppService(app) => app.request(&query, self.timeout),
            Endpoint::AzureArc(arc) => arc.challenge_request(&query, self.timeout),
            Endpoint::CloudShell(shell) => shell.request(&self.resource, self.timeout),
            Endpoint::ServiceFabric(fabric) => fabric.request(&query, self.timeout),
            Endpoint::AzureMl(ml) => ml.request(&query, self.timeout),
        }
    }

    /// Turns a response into a token, or into an error classified by the environment's
    /// retry rules.
    fn parse_response(&self, response: &HttpResponse, now: SystemTime) -> Result<Token, Error> {
        if (200..300).contains(&response.status) {
            return parse_token_response(response, now);
        }
        let identity = self.identity.as_ref();
        Err(match &self.endpoint {
            Endpoint::Imds(_) | Endpoint::AzureArc(_) => imds::error(response, identity),
            Endpoint::ServiceFabric(_) => service_fabric::error(response),
            Endpoint::AppService(_) | Endpoint::CloudShell(_) | Endpoint::AzureMl(_) => {
                parse_error_response(response)
            }
        })
    }
}

impl fmt::Debug for ManagedIdentityCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagedIdentityCredential")
            .field("environment", &self.hosting_environment())
            .field("identity", &self.identity)
            .field("resource", &self.resource)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl TokenSource for ManagedIdentityCredential {
    fn name(&self) -> &str {
        "managed identity"
    }

    fn exchange(&self) -> Box<dyn Exchange> {
        match &self.endpoint {
            Endpoint::AzureArc(_) => Box::new(arc::ArcExchange::new(self.clone())),
            _ => OneRequest(self.clone()).exchange(),
        }
    }
}

/// The exchange of every environment but Azure Arc: one request, one response.
#[derive(Clone)]
struct OneRequest(ManagedIdentityCredential);

impl HttpTokenSource for OneRequest {
    fn name(&self) -> &str {
        "managed identity"
    }

    fn token_request(&self, _now: SystemTime) -> Result<HttpRequest, Error> {
        Ok(self.0.token_request())
    }

    fn parse_response(&self, response: &HttpResponse, now: SystemTime) -> Result<Token, Error> {
        self.0.parse_response(response, now)
    }
}

/// Converts a scope to the resource that managed-identity endpoints take, by removing a
/// trailing `/.default`, as the Azure SDKs for Python, Go and Rust do.
fn resource_from_scope(scope: &str) -> Result<String, Error> {
    let scope = scope.trim();
    let resource = scope.strip_suffix("/.default").unwrap_or(scope);
    if resource.is_empty() || resource.chars().any(char::is_whitespace) {
        return Err(Error::config(
            "scope",
            format!(
                "`{scope}` must be exactly one scope, such as {REDIS_SCOPE}: managed-identity \
                 endpoints issue a token for one resource per request"
            ),
        ));
    }
    Ok(resource.to_owned())
}

/// Builds a GET request to `endpoint` with `query` appended. It bypasses proxies, because
/// managed-identity endpoints are local to the host.
fn get_request(endpoint: &str, query: &[(&str, &str)], timeout: Duration) -> HttpRequest {
    let mut url = endpoint.to_owned();
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (name, value) in query {
        serializer.append_pair(name, value);
    }
    url.push(if endpoint.contains('?') { '&' } else { '?' });
    url.push_str(&serializer.finish());
    let mut request = HttpRequest::get(url, timeout);
    request.allow_proxy = false;
    request
}

/// Joins an `api-version` and the shared query parameters in the order they are sent.
fn with_api_version<'a>(
    api_version: &'a str,
    query: &'a [(&'static str, String)],
) -> Vec<(&'a str, &'a str)> {
    let mut pairs = vec![("api-version", api_version)];
    pairs.extend(query.iter().map(|(name, value)| (*name, value.as_str())));
    pairs
}

/// Checks that an endpoint variable contains an `http` or `https` URL with a host.
fn endpoint_url(variable: &str, value: &str) -> Result<String, Error> {
    let value = value.trim();
    let rest = value
        .strip_prefix("http://")
        .or_else(|| value.strip_prefix("https://"));
    let authority = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
    match authority {
        Some(authority) if !authority.is_empty() && !authority.contains('@') => {
            Ok(value.to_owned())
        }
        _ => Err(Error::config(
            variable,
            format!("`{value}` is not an http or https URL with a host"),
        )),
    }
}

/// Builds the error for an identity selector that `environment` cannot honour.
fn unsupported_identity(environment: HostingEnvironment, identity: &UserAssigned) -> Error {
    let reason = match environment {
        HostingEnvironment::CloudShell => {
            "Cloud Shell issues tokens only for the signed-in user".to_owned()
        }
        HostingEnvironment::ServiceFabric => {
            "Service Fabric selects the identity in the application manifest".to_owned()
        }
        _ => format!("{environment} selects a user-assigned identity only by client id"),
    };
    Error::config(
        "user-assigned managed identity",
        format!("cannot select the identity with {identity}: {reason}; remove the selector"),
    )
}

#[cfg(test)]
mod tests;
