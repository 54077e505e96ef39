//! The doctor's environment checks: missing, invalid and conflicting variables.

use std::path::Path;

use redis_entraid::{
    AuthorityHost, ChainedCredential, Error, HostingEnvironment, ManagedIdentityCredential,
};

use super::Check;
use crate::failure::{Category, Failure};
use crate::source::Kind;

const SECRET: &str = "AZURE_CLIENT_SECRET";
const CERTIFICATE: &str = "AZURE_CLIENT_CERTIFICATE_PATH";
const FEDERATED: &str = "AZURE_FEDERATED_TOKEN_FILE";
const TENANT: &str = "AZURE_TENANT_ID";
const CLIENT: &str = "AZURE_CLIENT_ID";

/// Checks the variables the credentials read, through `lookup`, and the files they
/// name, through `file_exists`. Values of secrets are never shown.
pub fn check(
    lookup: &dyn Fn(&str) -> Option<String>,
    file_exists: &dyn Fn(&Path) -> bool,
    kind: Kind,
) -> Vec<Check> {
    let get = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
    let mut checks = Vec::new();
    check_selection(&get, kind, &mut checks);
    check_service_principal(&get, file_exists, &mut checks);
    check_authority_host(&get, &mut checks);
    check_managed_identity(&get, &mut checks);
    checks
}

fn check_selection(get: &dyn Fn(&str) -> Option<String>, kind: Kind, checks: &mut Vec<Check>) {
    let Some(value) = get("AZURE_TOKEN_CREDENTIALS") else {
        return;
    };
    if kind != Kind::Chain {
        checks.push(Check::Warn(Failure::new(
            Category::Config,
            format!("AZURE_TOKEN_CREDENTIALS={value} is ignored, because --credential chose a credential"),
            "leave out --credential to check the chain as your program builds it",
        )));
        return;
    }
    match ChainedCredential::from_env(get) {
        Ok(chain) => checks.push(Check::Ok(format!(
            "AZURE_TOKEN_CREDENTIALS={value}: the chain tries {}",
            chain.names().join(", ")
        ))),
        Err(Error::Config { setting, reason }) => checks.push(Check::Fail(Failure::new(
            Category::Config,
            format!("invalid {setting}: {reason}"),
            "set AZURE_TOKEN_CREDENTIALS to dev, prod, EnvironmentCredential, \
             WorkloadIdentityCredential, ManagedIdentityCredential or AzureCliCredential, \
             or unset it",
        ))),
        Err(error) => checks.push(Check::Fail(Failure::new(
            Category::Config,
            format!("the credential chain cannot be built: {error}"),
            "correct the variable the message names",
        ))),
    }
}

fn check_service_principal(
    get: &dyn Fn(&str) -> Option<String>,
    file_exists: &dyn Fn(&Path) -> bool,
    checks: &mut Vec<Check>,
) {
    let is_set = |name: &str| get(name).is_some();
    let credentials: Vec<&str> = [SECRET, CERTIFICATE, FEDERATED]
        .into_iter()
        .filter(|name| is_set(name))
        .collect();
    let missing: Vec<&str> = [TENANT, CLIENT]
        .into_iter()
        .filter(|name| !is_set(name))
        .collect();

    if credentials.is_empty() {
        match get(CLIENT) {
            Some(client_id) => checks.push(Check::Ok(format!(
                "{CLIENT}={client_id} without a secret, certificate or federated token file: \
                 managed identity uses it as the client id of a user-assigned identity"
            ))),
            None => checks.push(Check::Ok(
                "no service principal or workload identity variables are set".to_owned(),
            )),
        }
        return;
    }
    if !missing.is_empty() {
        checks.push(Check::Fail(Failure::new(
            Category::Config,
            format!(
                "{} set, but {} not",
                join_names(&credentials, "is", "are"),
                join_names(&missing, "", "")
            ),
            format!(
                "set {}: the directory (tenant) id and the application (client) id of the \
                 app registration, or unset {} if this program should not use a service \
                 principal or workload identity",
                join_names(&missing, "", ""),
                join_names(&credentials, "", "")
            ),
        )));
    } else if let (Some(tenant), Some(client)) = (get(TENANT), get(CLIENT)) {
        let with = match credentials[0] {
            SECRET => "a client secret (environment credential)",
            CERTIFICATE => "a certificate",
            _ => "a federated token file (workload identity)",
        };
        checks.push(Check::Ok(format!(
            "service principal {client} in tenant {tenant} with {with}"
        )));
    }
    if credentials.contains(&SECRET) && credentials.contains(&CERTIFICATE) {
        checks.push(Check::Warn(Failure::new(
            Category::Config,
            format!(
                "{SECRET} and {CERTIFICATE} are both set; the environment credential uses \
                 the secret, as the Azure SDKs do, and ignores the certificate"
            ),
            "unset the one this program should not use",
        )));
    }
    if credentials.contains(&FEDERATED) && credentials.len() > 1 {
        checks.push(Check::Warn(Failure::new(
            Category::Config,
            format!(
                "{FEDERATED} is set together with a client secret or certificate; the chain \
                 tries the environment credential first, so workload identity is not used"
            ),
            format!(
                "for workload identity, unset {SECRET} and {CERTIFICATE}; otherwise unset \
                 {FEDERATED}"
            ),
        )));
    }
    for variable in [CERTIFICATE, FEDERATED] {
        if let Some(path) = get(variable)
            && !file_exists(Path::new(&path))
        {
            checks.push(Check::Fail(Failure::new(
                Category::Config,
                format!("{variable} names `{path}`, which does not exist"),
                format!("point {variable} at the file, or unset it"),
            )));
        }
    }
}

fn check_authority_host(get: &dyn Fn(&str) -> Option<String>, checks: &mut Vec<Check>) {
    let Some(value) = get("AZURE_AUTHORITY_HOST") else {
        return;
    };
    match AuthorityHost::parse(&value) {
        Ok(host) => checks.push(Check::Ok(format!(
            "AZURE_AUTHORITY_HOST: tokens come from {}",
            host.as_str()
        ))),
        Err(error) => checks.push(Check::Fail(Failure::new(
            Category::Config,
            format!("invalid AZURE_AUTHORITY_HOST: {error}"),
            "set it to your cloud's authority host, such as https://login.microsoftonline.us, \
             or unset it for the public cloud",
        ))),
    }
}

fn check_managed_identity(get: &dyn Fn(&str) -> Option<String>, checks: &mut Vec<Check>) {
    let is_set = |name: &str| get(name).is_some();
    let pairs = [
        (
            "IDENTITY_ENDPOINT",
            !is_set("IDENTITY_HEADER") && !is_set("IMDS_ENDPOINT"),
            "without IDENTITY_HEADER (App Service) or IMDS_ENDPOINT (Azure Arc)",
        ),
        (
            "IDENTITY_HEADER",
            !is_set("IDENTITY_ENDPOINT"),
            "without IDENTITY_ENDPOINT",
        ),
        (
            "MSI_SECRET",
            !is_set("MSI_ENDPOINT"),
            "without MSI_ENDPOINT",
        ),
    ];
    for (variable, incomplete, without) in pairs {
        if is_set(variable) && incomplete {
            checks.push(Check::Fail(Failure::new(
                Category::Config,
                format!(
                    "{variable} is set {without}, so managed identity ignores it and uses \
                     IMDS"
                ),
                format!(
                    "the Azure host sets these variables together; set the missing one as \
                     the host does, or unset {variable}"
                ),
            )));
        }
    }
    match ManagedIdentityCredential::from_env(get) {
        Ok(credential) => {
            let environment = credential.hosting_environment();
            let place = match (environment, get("AZURE_POD_IDENTITY_AUTHORITY_HOST")) {
                (HostingEnvironment::Imds, Some(host)) => format!(" at {host}"),
                (HostingEnvironment::Imds, None) => {
                    " at 169.254.169.254, which only Azure VMs, scale sets and AKS nodes reach"
                        .to_owned()
                }
                _ => String::new(),
            };
            checks.push(Check::Ok(format!(
                "managed identity would use the {environment} endpoint{place}"
            )));
        }
        Err(error) => checks.push(Check::Fail(Failure::new(
            Category::Config,
            format!("managed identity cannot be set up: {error}"),
            "correct the variable the message names; the Azure host normally sets it",
        ))),
    }
}

/// Joins variable names as `A`, `A and B` or `A, B and C`, followed by `singular` or
/// `plural` when that is not empty.
fn join_names(names: &[&str], singular: &str, plural: &str) -> String {
    let joined = match names {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    };
    let verb = if names.len() == 1 { singular } else { plural };
    if verb.is_empty() {
        joined
    } else {
        format!("{joined} {verb}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run(pairs: &[(&str, &str)], kind: Kind) -> Vec<Check> {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        check(&|name| env.get(name).cloned(), &|_| true, kind)
    }

    fn failures(checks: &[Check]) -> Vec<String> {
        checks
            .iter()
            .filter_map(|check| match check {
                Check::Fail(failure) => Some(failure.problem.clone()),
                _ => None,
            })
            .collect()
    }

    fn warnings(checks: &[Check]) -> Vec<String> {
        checks
            .iter()
            .filter_map(|check| match check {
                Check::Warn(failure) => Some(failure.problem.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn complete_service_principal_passes() {
        let checks = run(&[(TENANT, "t"), (CLIENT, "c"), (SECRET, "s")], Kind::Chain);
        assert!(failures(&checks).is_empty(), "{:?}", failures(&checks));
        assert!(warnings(&checks).is_empty(), "{:?}", warnings(&checks));
    }

    #[test]
    fn secret_without_tenant_fails() {
        let checks = run(&[(CLIENT, "c"), (SECRET, "s")], Kind::Chain);
        let failures = failures(&checks);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert_eq!(
            failures[0],
            "AZURE_CLIENT_SECRET is set, but AZURE_TENANT_ID not"
        );
    }

    #[test]
    fn secret_and_certificate_conflict() {
        let checks = run(
            &[
                (TENANT, "t"),
                (CLIENT, "c"),
                (SECRET, "s"),
                (CERTIFICATE, "/c.pem"),
            ],
            Kind::Chain,
        );
        let warnings = warnings(&checks);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("both set"), "{}", warnings[0]);
    }

    #[test]
    fn identity_endpoint_without_header_fails() {
        let checks = run(
            &[("IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi")],
            Kind::Chain,
        );
        let failures = failures(&checks);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(
            failures[0].starts_with("IDENTITY_ENDPOINT is set"),
            "{}",
            failures[0]
        );
    }

    #[test]
    fn invalid_selection_fails() {
        let checks = run(&[("AZURE_TOKEN_CREDENTIALS", "everything")], Kind::Chain);
        let failures = failures(&checks);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(
            failures[0].contains("AZURE_TOKEN_CREDENTIALS"),
            "{}",
            failures[0]
        );
    }

    #[test]
    fn names_join_in_english() {
        assert_eq!(join_names(&["A"], "is", "are"), "A is");
        assert_eq!(join_names(&["A", "B"], "is", "are"), "A and B are");
        assert_eq!(join_names(&["A", "B", "C"], "", ""), "A, B and C");
    }
}
