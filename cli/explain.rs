//! Plain explanations, with the fix, of the errors the crate and the `redis` crate
//! return.

use std::time::Duration;

use redis::RedisError;
use redis_entraid::{EndpointError, Error, TokenError};

use crate::failure::{Category, Failure};

/// The credentials a chain can use, for fixes that ask the user to configure one.
const CONFIGURE_ONE: &str = "configure one credential: a service principal \
    (AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET), workload identity on AKS \
    (AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_FEDERATED_TOKEN_FILE), a managed identity \
    on an Azure host, or an Azure CLI session (`az login`)";

/// Explains why no token could be obtained. `timeout` is how long the command waited.
pub fn token_error(error: &Error, timeout: Duration) -> Failure {
    match error {
        Error::ChainFailed {
            credential, error, ..
        } => explain_for(credential, error, timeout),
        Error::Timeout {
            last_error: Some(last),
            ..
        }
        | Error::NotAcquired {
            last_error: Some(last),
        } => {
            let failure = token_error(last, timeout);
            Failure {
                problem: format!(
                    "no token within {} s, because every attempt failed: {}",
                    timeout.as_secs_f64(),
                    failure.problem
                ),
                ..failure
            }
        }
        Error::Timeout {
            last_error: None, ..
        } => Failure::new(
            Category::Identity,
            format!(
                "the identity endpoint returned no token within {} s",
                timeout.as_secs_f64()
            ),
            "check that the identity endpoint is reachable from here, or wait longer with \
             --token-timeout",
        ),
        other => explain_for("", other, timeout),
    }
}

/// Explains `error` of the credential named `credential` (empty when unknown).
fn explain_for(credential: &str, error: &Error, timeout: Duration) -> Failure {
    let detail = error.to_string();
    let failure = match error {
        Error::ChainFailed { .. } | Error::Timeout { .. } | Error::NotAcquired { .. } => {
            return token_error(error, timeout);
        }
        Error::CredentialUnavailable { credential, reason } => unavailable(credential, reason),
        Error::Config { setting, reason } => config(setting, reason),
        Error::IdentityEndpoint(endpoint) => endpoint_error(credential, endpoint),
        Error::Transport { timed_out, .. } => transport(credential, *timed_out),
        Error::Io {
            operation, kind, ..
        } => io(operation, *kind),
        Error::InvalidResponse { status, .. } => Failure::new(
            Category::Identity,
            format!(
                "the identity endpoint returned HTTP {status} with a body that is not a token response"
            ),
            "check that AZURE_AUTHORITY_HOST (or the managed-identity endpoint variable) \
             points at a Microsoft Entra ID or Azure identity endpoint, not at a proxy or web \
             page",
        ),
        Error::InvalidToken(token_error) => invalid_token(token_error),
        Error::TokenExpired { .. } => Failure::new(
            Category::Identity,
            "the token expired and the identity endpoint has not issued a new one",
            "check that the identity endpoint is reachable; renewal retries continue",
        ),
        _ => Failure::new(
            Category::Identity,
            "no token could be obtained",
            "read the detail line; it names the failing value",
        ),
    };
    failure.with_detail(detail)
}

fn unavailable(credential: &str, reason: &str) -> Failure {
    // A chain of one managed-identity credential reports its reason inside its own.
    if credential == "managed identity"
        || (credential == "chained" && reason.contains("Identity not found"))
    {
        return managed_identity_unavailable(reason);
    }
    if credential == "chained" {
        let mut fix = CONFIGURE_ONE.to_owned();
        if reason.contains("no IMDS endpoint answered") {
            fix.push_str(
                ". Managed identity found no IMDS endpoint, so this machine is probably not an \
                 Azure VM, scale set or AKS node with a managed identity",
            );
        }
        return Failure::new(Category::Config, "no credential is available", fix);
    }
    Failure::new(
        Category::Config,
        format!("the {credential} credential is not available: {reason}"),
        format!("set what the message asks for, or {CONFIGURE_ONE}"),
    )
}

fn managed_identity_unavailable(reason: &str) -> Failure {
    if reason.contains("Identity not found") {
        return Failure::new(
            Category::Config,
            "the identity endpoint has no system-assigned managed identity for this resource",
            "enable the system-assigned identity on this Azure resource (its Identity page), \
             or set AZURE_CLIENT_ID to the client id of a user-assigned identity that is \
             assigned to it",
        );
    }
    Failure::new(
        Category::Config,
        "managed identity is not available here",
        format!(
            "run on an Azure resource with a managed identity enabled (VM, scale set, AKS \
             node, App Service, Functions, Container Apps), or {CONFIGURE_ONE}"
        ),
    )
}

fn config(setting: &str, reason: &str) -> Failure {
    let problem = format!("invalid {setting}: {reason}");
    let fix = match setting {
        "user-assigned managed identity" if reason.contains("Identity not found") => {
            "assign the user-assigned identity to this Azure resource (its Identity page, \
             User assigned tab), or set AZURE_CLIENT_ID to the client id of one that is \
             assigned"
        }
        "AZURE_TOKEN_CREDENTIALS" => {
            "set AZURE_TOKEN_CREDENTIALS to dev, prod, EnvironmentCredential, \
             WorkloadIdentityCredential, ManagedIdentityCredential or AzureCliCredential, \
             or unset it"
        }
        "AZURE_AUTHORITY_HOST" | "authority host" => {
            "set AZURE_AUTHORITY_HOST to your cloud's authority host, such as \
             https://login.microsoftonline.com, or unset it for the public cloud"
        }
        _ if reason.contains("not set") => {
            "set the variable named above; a service principal needs AZURE_TENANT_ID, \
             AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (or AZURE_CLIENT_CERTIFICATE_PATH)"
        }
        _ => "correct the value named above; the message says what it must look like",
    };
    Failure::new(Category::Config, problem, fix)
}

/// Explains an error response of Entra ID or of a managed-identity endpoint, by its first
/// AADSTS code that has a known fix.
fn endpoint_error(credential: &str, error: &EndpointError) -> Failure {
    if let Some(failure) = error.codes.iter().find_map(|code| aadsts(*code)) {
        return failure;
    }
    let from = if credential == "managed identity" {
        "the managed-identity endpoint"
    } else {
        "Microsoft Entra ID"
    };
    if error.transient {
        return Failure::new(
            Category::Identity,
            format!(
                "{from} failed with HTTP {}, which is usually temporary",
                error.status
            ),
            "try again later; renewal in a running program retries on its own",
        );
    }
    let code = error.error.as_deref().unwrap_or("an error");
    Failure::new(
        Category::Identity,
        format!(
            "{from} rejected the token request with HTTP {} {code}",
            error.status
        ),
        match code {
            "invalid_client" | "unauthorized_client" => {
                "check AZURE_CLIENT_ID and the client secret or certificate of the app \
                 registration"
            }
            _ => {
                "read the detail line; an AADSTS code can be looked up in Microsoft Entra \
                 ID's error code reference"
            }
        },
    )
}

/// Returns the explanation of a common AADSTS code, or `None` for other codes.
fn aadsts(code: u64) -> Option<Failure> {
    let (problem, fix) = match code {
        7000215 => (
            "Microsoft Entra ID rejected the client secret (AADSTS7000215: invalid client \
             secret)",
            "set AZURE_CLIENT_SECRET to the secret's Value, which the portal shows only when \
             the secret is created, not to its Secret ID; create a new secret if the value \
             is lost",
        ),
        7000222 => (
            "the client secret has expired (AADSTS7000222)",
            "create a new client secret for the app registration (Certificates & secrets) \
             and put its value in AZURE_CLIENT_SECRET",
        ),
        700016 => (
            "the application was not found in the tenant (AADSTS700016)",
            "check that AZURE_CLIENT_ID is the application (client) id, not an object id, \
             and that AZURE_TENANT_ID is the tenant where the app is registered",
        ),
        90002 => (
            "the tenant was not found (AADSTS90002), often because it is in another cloud",
            "check AZURE_TENANT_ID; for a sovereign cloud set AZURE_AUTHORITY_HOST to its \
             authority host: login.microsoftonline.us (Azure US Government) or \
             login.chinacloudapi.cn (Azure operated by 21Vianet)",
        ),
        70011 | 700022 | 700023 | 28002 => (
            "Microsoft Entra ID rejected the requested scope (invalid scope)",
            "request the scope https://redis.azure.com/.default, which this tool always \
             sends; if the error persists, check that AZURE_AUTHORITY_HOST points at a \
             Microsoft Entra ID authority host",
        ),
        700024 => (
            "the client assertion is outside its valid time range (AADSTS700024)",
            "check the system clock; for workload identity, check that the federated token \
             file in AZURE_FEDERATED_TOKEN_FILE is being renewed",
        ),
        50012 | 700027 | 50006 => (
            "Microsoft Entra ID rejected the client assertion's signature",
            "upload the certificate whose private key is in AZURE_CLIENT_CERTIFICATE_PATH to \
             the app registration (Certificates & secrets)",
        ),
        53003 => (
            "Conditional Access blocked the token request (AADSTS53003)",
            "ask a tenant administrator to allow this service principal in the Conditional \
             Access policy that blocked it",
        ),
        7000112 | 70001 => (
            "the application is disabled in the tenant",
            "enable the application's service principal (Enterprise applications, Properties)",
        ),
        _ => return None,
    };
    Some(Failure::new(Category::Identity, problem, fix))
}

fn transport(credential: &str, timed_out: bool) -> Failure {
    let what = if timed_out { "timed out" } else { "failed" };
    if credential == "managed identity" {
        return Failure::new(
            Category::Identity,
            format!("the request to the managed-identity endpoint {what}"),
            "run on an Azure resource with a managed identity enabled; outside Azure, \
             configure a service principal or run `az login` instead",
        );
    }
    Failure::new(
        Category::Identity,
        format!("the request to the identity endpoint {what}"),
        "check network access to the authority host (AZURE_AUTHORITY_HOST, by default \
         https://login.microsoftonline.com) and the proxy settings (HTTPS_PROXY)",
    )
}

fn io(operation: &str, kind: std::io::ErrorKind) -> Failure {
    use std::io::ErrorKind;
    let category = match kind {
        ErrorKind::NotFound | ErrorKind::PermissionDenied => Category::Config,
        _ => Category::Identity,
    };
    Failure::new(
        category,
        format!("the credential could not {operation}"),
        "check that the file exists and is readable by this user, or that the program is \
         installed and works when run by hand",
    )
}

fn invalid_token(error: &TokenError) -> Failure {
    match error {
        TokenError::MissingObjectId => missing_oid(),
        _ => Failure::new(
            Category::Identity,
            "the access token is not a JWT that can be decoded",
            "check that the credential talks to Microsoft Entra ID; Azure Redis accepts \
             only Entra ID access tokens",
        ),
    }
}

/// Explains a token without `oid`, which leaves the Redis username unknown.
pub fn missing_oid() -> Failure {
    Failure::new(
        Category::Identity,
        "the token has no `oid` claim, so the Redis username (the identity's object id) is \
         unknown",
        "use a credential whose tokens carry `oid` (service principals, managed identities \
         and users do), or configure the Redis username explicitly in your program \
         (Username::Fixed with the identity's object id)",
    )
}

/// Explains a token whose `aud` is not Azure Redis.
pub fn wrong_audience(audience: &[String]) -> Failure {
    let shown = if audience.is_empty() {
        "no audience".to_owned()
    } else {
        audience.join(", ")
    };
    Failure::new(
        Category::Identity,
        format!("the token is for {shown}, not for Azure Redis (https://redis.azure.com)"),
        "request the scope https://redis.azure.com/.default; if a managed-identity or \
         custom endpoint returned this token, check that it passes the requested resource \
         on",
    )
}

/// The audiences that identify Azure Redis: the resource URI, with or without a trailing
/// slash, and its application id, which v2 tokens carry.
pub const REDIS_AUDIENCES: &[&str] = &[
    "https://redis.azure.com",
    "https://redis.azure.com/",
    "acca5fbb-b7e4-4009-81f1-37e38fd66d78",
];

/// Returns true when `audience` names Azure Redis.
pub fn is_redis_audience(audience: &[String]) -> bool {
    audience
        .iter()
        .any(|aud| REDIS_AUDIENCES.contains(&aud.as_str()))
}

/// A Redis step, for explanations that depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisStep {
    /// Opening the connection: TCP, TLS and `AUTH` in the handshake.
    Open,
    /// A command after authentication.
    Command(&'static str),
}

/// Explains a failed Redis step. `username` is the `oid` the connection authenticated
/// as, and `tls` is true when it used TLS.
pub fn redis_error(step: RedisStep, error: &RedisError, username: &str, tls: bool) -> Failure {
    let detail = error.to_string();
    let upper = detail.to_ascii_uppercase();
    let failure = if error.code() == Some("WRONGPASS") || upper.contains("WRONGPASS") {
        wrongpass(username)
    } else if error.code() == Some("NOPERM") || upper.contains("NOPERM") {
        noperm(step, username)
    } else if tls && (looks_like_tls(&detail) || (step == RedisStep::Open && error.is_timeout())) {
        // A server without TLS on this port reads the ClientHello as the start of a
        // command and waits for the rest, so the handshake times out.
        tls_failure()
    } else if error.kind() == redis::ErrorKind::AuthenticationFailed && upper.contains("ENTRA") {
        Failure::new(
            Category::Identity,
            "the connection had no Entra ID credentials to authenticate with",
            "run `redis-entraid doctor` to see why the token request failed",
        )
    } else if error.kind() == redis::ErrorKind::AuthenticationFailed {
        // The `redis` crate reports a rejected handshake AUTH this way, without the
        // server's WRONGPASS text.
        wrongpass(username)
    } else if error.is_timeout() {
        Failure::new(
            Category::Redis,
            "Redis did not answer in time",
            "check that the port is the cache's port and that no firewall or private \
             endpoint rule drops the traffic; raise --connect-timeout on slow links",
        )
    } else if error.is_connection_dropped() || error.is_io_error() {
        Failure::new(
            Category::Redis,
            "the connection to Redis failed or was closed",
            if tls {
                "check the host and port; Azure Cache for Redis accepts TLS on port 6380 \
                 and Azure Managed Redis on port 10000"
            } else {
                "check that the server is running and accepts plain TCP on this port; \
                 Azure accepts only TLS, so leave out --no-tls for Azure caches"
            },
        )
    } else {
        Failure::new(
            Category::Redis,
            match step {
                RedisStep::Open => "Redis rejected the connection".to_owned(),
                RedisStep::Command(name) => format!("Redis returned an error for {name}"),
            },
            "read the detail line; it is the server's error message",
        )
    };
    failure.with_detail(detail)
}

fn wrongpass(username: &str) -> Failure {
    Failure::new(
        Category::Redis,
        format!(
            "Redis rejected the token for user {username} (WRONGPASS): this identity is \
             not a Redis user on this cache, or Microsoft Entra authentication is off"
        ),
        format!(
            "add an access policy assignment for this oid ({username}) on the cache \
             (Authentication or Data Access Configuration in the portal), and check that \
             Microsoft Entra authentication is enabled; new assignments can take a few \
             minutes to apply"
        ),
    )
}

fn noperm(step: RedisStep, username: &str) -> Failure {
    let command = match step {
        RedisStep::Command(name) => name,
        RedisStep::Open => "the handshake",
    };
    Failure::new(
        Category::Redis,
        format!(
            "user {username} is authenticated but has no permission to run {command} \
             (NOPERM)"
        ),
        format!(
            "give the access policy assignment of {username} a policy that allows \
             {command}, such as Data Contributor, or a custom access policy that includes it"
        ),
    )
}

fn tls_failure() -> Failure {
    Failure::new(
        Category::Redis,
        "the TLS handshake with Redis failed",
        "connect to the TLS port (6380 for Azure Cache for Redis, 10000 for Azure Managed \
         Redis) with the cache's own host name, which its certificate names; a port without \
         TLS does not answer the handshake; use --no-tls only for a local redis-server \
         without TLS",
    )
}

/// Returns true for the error messages of rustls and of a peer that does not speak TLS.
/// The `redis` crate wraps the rustls error so that only its message is reachable.
fn looks_like_tls(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    [
        "tls",
        "certificate",
        "handshake",
        "corrupt message",
        "alert",
        "peer",
    ]
    .iter()
    .any(|pattern| lower.contains(pattern))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_aadsts_codes_have_fixes() {
        for (code, needle) in [
            (7000215, "Value"),
            (7000222, "new client secret"),
            (700016, "AZURE_CLIENT_ID"),
            (90002, "AZURE_AUTHORITY_HOST"),
            (70011, "https://redis.azure.com/.default"),
        ] {
            let failure = aadsts(code).expect("a known code");
            assert!(failure.fix.contains(needle), "{code}: {}", failure.fix);
            assert_eq!(failure.category, Category::Identity);
        }
        assert!(aadsts(1).is_none());
    }

    #[test]
    fn redis_audiences_are_recognized() {
        assert!(is_redis_audience(&["https://redis.azure.com".to_owned()]));
        assert!(is_redis_audience(&[
            "acca5fbb-b7e4-4009-81f1-37e38fd66d78".to_owned()
        ]));
        assert!(!is_redis_audience(&[
            "https://management.azure.com".to_owned()
        ]));
        assert!(!is_redis_audience(&[]));
    }

    #[test]
    fn tls_messages_are_recognized() {
        assert!(looks_like_tls("invalid peer certificate: UnknownIssuer"));
        assert!(looks_like_tls(
            "received corrupt message of type InvalidContentType"
        ));
        assert!(!looks_like_tls("Connection refused (os error 111)"));
    }
}
