//! The environment credential: a service principal configured through the variables the
//! Azure SDKs read.

use std::fmt;

use crate::entra::ClientSecretCredential;
use crate::error::Error;
use crate::source::{Exchange, TokenSource};
use crate::workload::list_unset;

const NAME: &str = "environment";

/// A service principal configured by environment variables: `AZURE_TENANT_ID`,
/// `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET`, with the optional `AZURE_AUTHORITY_HOST`.
///
/// Certificate credentials (`AZURE_CLIENT_CERTIFICATE_PATH`) are not supported yet;
/// when the secret is set it wins over a certificate, as in the Azure SDKs.
#[derive(Clone)]
pub struct EnvironmentCredential {
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    ClientSecret(ClientSecretCredential),
    // TODO: add `ClientCertificate(ClientCertificateCredential)` when the certificate
    // credential lands, and build it in `EnvironmentCredential::from_env`.
}

impl EnvironmentCredential {
    /// Reads the service principal's variables through `lookup` (pass
    /// `|name| std::env::var(name).ok()`). An empty variable counts as unset.
    ///
    /// Unset variables make the credential unavailable ([`Error::CredentialUnavailable`]
    /// naming them), so a chain moves on; invalid values are [`Error::Config`].
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let is_set = |name: &str| lookup(name).is_some_and(|v| !v.is_empty());
        if is_set("AZURE_CLIENT_SECRET") {
            let missing: Vec<&str> = ["AZURE_TENANT_ID", "AZURE_CLIENT_ID"]
                .into_iter()
                .filter(|name| !is_set(name))
                .collect();
            if !missing.is_empty() {
                return Err(unavailable(format!(
                    "AZURE_CLIENT_SECRET is set, but {} not; a service principal needs \
                     AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET",
                    list_unset(&missing)
                )));
            }
            let credential = ClientSecretCredential::from_env(&lookup)?;
            return Ok(EnvironmentCredential {
                kind: Kind::ClientSecret(credential),
            });
        }
        if is_set("AZURE_CLIENT_CERTIFICATE_PATH") {
            // TODO: build the certificate credential here (from AZURE_TENANT_ID,
            // AZURE_CLIENT_ID, AZURE_CLIENT_CERTIFICATE_PATH, the optional
            // AZURE_CLIENT_CERTIFICATE_PASSWORD and AZURE_CLIENT_SEND_CERTIFICATE_CHAIN)
            // once it lands.
            return Err(unavailable(
                "AZURE_CLIENT_CERTIFICATE_PATH is set, but this version of redis-entraid does \
                 not support certificate credentials yet; set AZURE_CLIENT_SECRET instead"
                    .to_owned(),
            ));
        }
        Err(unavailable(
            "AZURE_CLIENT_SECRET is not set; a service principal needs AZURE_TENANT_ID, \
             AZURE_CLIENT_ID and AZURE_CLIENT_SECRET"
                .to_owned(),
        ))
    }

    /// Requests another scope than `https://redis.azure.com/.default`.
    pub fn with_scope(self, scope: impl Into<String>) -> Self {
        let kind = match self.kind {
            Kind::ClientSecret(credential) => Kind::ClientSecret(credential.with_scope(scope)),
        };
        EnvironmentCredential { kind }
    }

    /// Returns the name of the credential the variables selected, such as `client secret`.
    pub fn selected(&self) -> &str {
        match &self.kind {
            Kind::ClientSecret(credential) => credential.name(),
        }
    }
}

fn unavailable(reason: String) -> Error {
    Error::CredentialUnavailable {
        credential: NAME.to_owned(),
        reason,
    }
}

impl fmt::Debug for EnvironmentCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::ClientSecret(credential) => f
                .debug_tuple("EnvironmentCredential")
                .field(credential)
                .finish(),
        }
    }
}

impl TokenSource for EnvironmentCredential {
    fn name(&self) -> &str {
        NAME
    }

    fn exchange(&self) -> Box<dyn Exchange> {
        match &self.kind {
            Kind::ClientSecret(credential) => credential.exchange(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{Next, Step};
    use std::collections::HashMap;
    use std::time::SystemTime;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn reason(error: Error) -> String {
        match error {
            Error::CredentialUnavailable { credential, reason } => {
                assert_eq!(credential, "environment");
                reason
            }
            other => panic!("expected CredentialUnavailable, got {other}"),
        }
    }

    #[test]
    fn client_secret_is_selected() {
        let credential = EnvironmentCredential::from_env(env(&[
            ("AZURE_TENANT_ID", "tenant-1"),
            ("AZURE_CLIENT_ID", "client-1"),
            ("AZURE_CLIENT_SECRET", "s3cret"),
            ("AZURE_CLIENT_CERTIFICATE_PATH", "/certs/sp.pem"),
            ("AZURE_AUTHORITY_HOST", "login.chinacloudapi.cn"),
        ]))
        .unwrap()
        .with_scope("api://other/.default");
        assert_eq!(credential.selected(), "client secret");
        assert!(!format!("{credential:?}").contains("s3cret"));
        let request = match credential.exchange().start(SystemTime::UNIX_EPOCH) {
            Next::Step(Step::Http(request)) => request,
            other => panic!("expected an HTTP request, got {other:?}"),
        };
        assert_eq!(
            request.url,
            "https://login.chinacloudapi.cn/tenant-1/oauth2/v2.0/token"
        );
        assert!(
            request
                .body
                .expose_secret()
                .contains("scope=api%3A%2F%2Fother%2F.default")
        );
    }

    #[test]
    fn incomplete_variables_are_unavailable() {
        let error = EnvironmentCredential::from_env(env(&[])).unwrap_err();
        assert!(reason(error).starts_with("AZURE_CLIENT_SECRET is not set;"));
        let error = EnvironmentCredential::from_env(env(&[("AZURE_CLIENT_SECRET", "s")]));
        assert_eq!(
            reason(error.unwrap_err()),
            "AZURE_CLIENT_SECRET is set, but AZURE_TENANT_ID and AZURE_CLIENT_ID are not; a \
             service principal needs AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET"
        );
        let error = EnvironmentCredential::from_env(env(&[
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", ""),
            ("AZURE_CLIENT_SECRET", "s"),
        ]));
        assert!(reason(error.unwrap_err()).contains("but AZURE_CLIENT_ID is not;"));
    }

    #[test]
    fn certificate_path_is_not_supported_yet() {
        let error = EnvironmentCredential::from_env(env(&[
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_CLIENT_CERTIFICATE_PATH", "/certs/sp.pem"),
        ]));
        assert!(reason(error.unwrap_err()).contains("does not support certificate credentials"));
    }

    #[test]
    fn invalid_values_are_config_errors() {
        let error = EnvironmentCredential::from_env(env(&[
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_CLIENT_SECRET", "s"),
            ("AZURE_AUTHORITY_HOST", "ftp://login.microsoftonline.com"),
        ]))
        .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("invalid AZURE_AUTHORITY_HOST:"),
            "{error}"
        );
    }
}
