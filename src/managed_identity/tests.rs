//! Unit tests on values: detection, the request of each environment and selector, error
//! classification and the Azure Arc exchange.

use std::collections::HashMap;
use std::time::UNIX_EPOCH;

use super::*;
use crate::http::{Method, ServerCertificate};
use crate::source::{Next, Step, StepOutput};

const T0: u64 = 1767225600;
const THUMBPRINT: &str = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01";
const REDIS: &str = "resource=https%3A%2F%2Fredis.azure.com";

fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let env: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| env.get(name).cloned()
}

fn credential(pairs: &[(&str, &str)]) -> ManagedIdentityCredential {
    ManagedIdentityCredential::from_env(lookup(pairs)).unwrap()
}

fn header<'a>(request: &'a HttpRequest, name: &str) -> Option<&'a str> {
    request
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn response(status: u16, body: &str) -> HttpResponse {
    HttpResponse {
        status,
        headers: vec![],
        body: body.as_bytes().to_vec(),
    }
}

fn client(id: &str) -> UserAssigned {
    UserAssigned::ClientId(id.to_owned())
}

fn object(id: &str) -> UserAssigned {
    UserAssigned::ObjectId(id.to_owned())
}

fn resource(id: &str) -> UserAssigned {
    UserAssigned::ResourceId(id.to_owned())
}

const APP_SERVICE: &[(&str, &str)] = &[
    ("IDENTITY_ENDPOINT", "http://localhost:8081/msi/token"),
    ("IDENTITY_HEADER", "app-header-secret"),
];
const ARC: &[(&str, &str)] = &[
    (
        "IDENTITY_ENDPOINT",
        "http://localhost:40342/metadata/identity/oauth2/token",
    ),
    ("IMDS_ENDPOINT", "http://localhost:40342"),
];
const SERVICE_FABRIC: &[(&str, &str)] = &[
    (
        "IDENTITY_ENDPOINT",
        "https://localhost:2377/metadata/identity/oauth2/token",
    ),
    ("IDENTITY_HEADER", "fabric-header-secret"),
    ("IDENTITY_SERVER_THUMBPRINT", THUMBPRINT),
];
const AZURE_ML: &[(&str, &str)] = &[
    ("MSI_ENDPOINT", "http://127.0.0.1:46808/MSI/auth"),
    ("MSI_SECRET", "ml-secret"),
];
const CLOUD_SHELL: &[(&str, &str)] = &[("MSI_ENDPOINT", "http://localhost:50342/oauth2/token")];

/// Environment variables as name and value.
type Variables = &'static [(&'static str, &'static str)];

#[test]
fn detection_follows_documented_order() {
    let everything: Vec<(&str, &str)> = [SERVICE_FABRIC, ARC, AZURE_ML]
        .concat()
        .into_iter()
        .filter(|(name, _)| *name != "IDENTITY_ENDPOINT")
        .chain([("IDENTITY_ENDPOINT", "https://localhost:2377/token")])
        .collect();
    let cases: Vec<(Vec<(&str, &str)>, HostingEnvironment)> = vec![
        (everything, HostingEnvironment::ServiceFabric),
        (SERVICE_FABRIC.to_vec(), HostingEnvironment::ServiceFabric),
        (
            [APP_SERVICE, &[("IMDS_ENDPOINT", "http://localhost:40342")]].concat(),
            HostingEnvironment::AppService,
        ),
        (
            [APP_SERVICE, AZURE_ML].concat(),
            HostingEnvironment::AppService,
        ),
        ([ARC, AZURE_ML].concat(), HostingEnvironment::AzureArc),
        (AZURE_ML.to_vec(), HostingEnvironment::AzureMl),
        (CLOUD_SHELL.to_vec(), HostingEnvironment::CloudShell),
        (
            vec![("IDENTITY_ENDPOINT", "http://localhost:1/token")],
            HostingEnvironment::Imds,
        ),
        (
            vec![("IMDS_ENDPOINT", "http://localhost:1")],
            HostingEnvironment::Imds,
        ),
        (vec![], HostingEnvironment::Imds),
    ];
    for (pairs, expected) in cases {
        assert_eq!(
            credential(&pairs).hosting_environment(),
            expected,
            "{pairs:?}"
        );
    }
}

#[test]
fn empty_variables_count_as_missing() {
    let pairs = [
        ("IDENTITY_ENDPOINT", "http://localhost:8081/msi/token"),
        ("IDENTITY_HEADER", " "),
        ("MSI_ENDPOINT", ""),
    ];
    assert_eq!(
        credential(&pairs).hosting_environment(),
        HostingEnvironment::Imds
    );
}

#[cfg(target_os = "linux")]
#[test]
fn arc_agent_found_by_its_program() {
    let found = ManagedIdentityCredential::from_env_with_file_check(lookup(&[]), |path| {
        path == Path::new("/opt/azcmagent/bin/himds")
    })
    .unwrap();
    assert_eq!(found.hosting_environment(), HostingEnvironment::AzureArc);
    assert_eq!(
        found.token_request().url,
        format!(
            "http://localhost:40342/metadata/identity/oauth2/token?api-version=2020-06-01&{REDIS}"
        )
    );
    let absent = ManagedIdentityCredential::from_env_with_file_check(lookup(&[]), |_| false);
    assert_eq!(
        absent.unwrap().hosting_environment(),
        HostingEnvironment::Imds
    );
}

#[test]
fn imds_requests_for_each_selector() {
    let base = "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01";
    let cases = [
        (None, format!("{base}&{REDIS}")),
        (Some(client("c-1")), format!("{base}&{REDIS}&client_id=c-1")),
        (Some(object("o-1")), format!("{base}&{REDIS}&object_id=o-1")),
        (
            Some(resource("/subscriptions/s/rg/x")),
            format!("{base}&{REDIS}&msi_res_id=%2Fsubscriptions%2Fs%2Frg%2Fx"),
        ),
    ];
    for (identity, url) in cases {
        let mut credential = credential(&[]);
        if let Some(identity) = identity {
            credential = credential.with_user_assigned(identity).unwrap();
        }
        let request = credential.token_request();
        assert_eq!(request.method, Method::Get);
        assert_eq!(request.url, url);
        assert_eq!(header(&request, "Metadata"), Some("true"));
        assert_eq!(request.headers.len(), 1);
        assert!(!request.allow_proxy);
        assert_eq!(request.server_certificate, ServerCertificate::WebPki);
    }
}

#[test]
fn pod_identity_host_replaces_imds_address() {
    for host in ["http://127.0.0.1:2579", "http://127.0.0.1:2579/"] {
        let request = credential(&[("AZURE_POD_IDENTITY_AUTHORITY_HOST", host)]).token_request();
        assert_eq!(
            request.url,
            format!(
                "http://127.0.0.1:2579/metadata/identity/oauth2/token?api-version=2018-02-01&{REDIS}"
            )
        );
    }
    let err = ManagedIdentityCredential::from_env(lookup(&[(
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        "127.0.0.1:2579",
    )]))
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid AZURE_POD_IDENTITY_AUTHORITY_HOST: `127.0.0.1:2579` is not an http or https URL \
         with a host"
    );
}

#[test]
fn app_service_requests_for_each_selector() {
    let base = "http://localhost:8081/msi/token?api-version=2019-08-01";
    let cases = [
        (None, format!("{base}&{REDIS}")),
        (Some(client("c-1")), format!("{base}&{REDIS}&client_id=c-1")),
        (
            Some(object("o-1")),
            format!("{base}&{REDIS}&principal_id=o-1"),
        ),
        (
            Some(resource("r-1")),
            format!("{base}&{REDIS}&mi_res_id=r-1"),
        ),
    ];
    for (identity, url) in cases {
        let mut credential = credential(APP_SERVICE);
        if let Some(identity) = identity {
            credential = credential.with_user_assigned(identity).unwrap();
        }
        let request = credential.token_request();
        assert_eq!(request.method, Method::Get);
        assert_eq!(request.url, url);
        assert_eq!(
            header(&request, "X-IDENTITY-HEADER"),
            Some("app-header-secret")
        );
        assert_eq!(header(&request, "Metadata"), Some("true"));
        assert!(!request.allow_proxy);
    }
}

#[test]
fn arc_challenge_requests_for_each_selector() {
    let base = "http://localhost:40342/metadata/identity/oauth2/token?api-version=2020-06-01";
    let cases = [
        (None, format!("{base}&{REDIS}")),
        (Some(client("c-1")), format!("{base}&{REDIS}&client_id=c-1")),
        (Some(object("o-1")), format!("{base}&{REDIS}&object_id=o-1")),
        (
            Some(resource("r-1")),
            format!("{base}&{REDIS}&msi_res_id=r-1"),
        ),
    ];
    for (identity, url) in cases {
        let mut credential = credential(ARC);
        if let Some(identity) = identity {
            credential = credential.with_user_assigned(identity).unwrap();
        }
        let Next::Step(Step::Http(request)) = credential.exchange().start(at(T0)) else {
            panic!("expected the challenge request");
        };
        assert_eq!(request.url, url);
        assert_eq!(header(&request, "Metadata"), Some("true"));
        assert_eq!(header(&request, "Authorization"), None);
        assert!(!request.allow_proxy);
    }
}

#[test]
fn service_fabric_request_pins_thumbprint() {
    let request = credential(SERVICE_FABRIC).token_request();
    assert_eq!(
        request.url,
        format!(
            "https://localhost:2377/metadata/identity/oauth2/token?api-version=2019-07-01-preview&{REDIS}"
        )
    );
    assert_eq!(header(&request, "Secret"), Some("fabric-header-secret"));
    assert_eq!(
        request.server_certificate,
        ServerCertificate::PinnedSha1("abcdef0123456789abcdef0123456789abcdef01".to_owned())
    );
    assert!(!request.allow_proxy);
}

#[test]
fn service_fabric_rejects_bad_thumbprint_and_plain_http() {
    let mut pairs = SERVICE_FABRIC.to_vec();
    pairs[2] = ("IDENTITY_SERVER_THUMBPRINT", "abc");
    let err = ManagedIdentityCredential::from_env(lookup(&pairs)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid IDENTITY_SERVER_THUMBPRINT: `abc` is not a SHA-1 thumbprint of 40 hex digits"
    );
    let mut pairs = SERVICE_FABRIC.to_vec();
    pairs[0] = ("IDENTITY_ENDPOINT", "http://localhost:2377/token");
    let err = ManagedIdentityCredential::from_env(lookup(&pairs)).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid IDENTITY_ENDPOINT: `http://localhost:2377/token` must use https"),
        "{err}"
    );
}

#[test]
fn azure_ml_requests_use_clientid() {
    let base = "http://127.0.0.1:46808/MSI/auth?api-version=2017-09-01";
    let request = credential(AZURE_ML).token_request();
    assert_eq!(request.url, format!("{base}&{REDIS}"));
    assert_eq!(header(&request, "secret"), Some("ml-secret"));
    assert!(!request.allow_proxy);

    let with_default = [AZURE_ML, &[("DEFAULT_IDENTITY_CLIENT_ID", "d-1")]].concat();
    let request = credential(&with_default).token_request();
    assert_eq!(request.url, format!("{base}&{REDIS}&clientid=d-1"));

    let selected = credential(&with_default)
        .with_user_assigned(client("c-1"))
        .unwrap();
    assert_eq!(
        selected.token_request().url,
        format!("{base}&{REDIS}&clientid=c-1")
    );
}

#[test]
fn cloud_shell_posts_resource_form() {
    let request = credential(CLOUD_SHELL).token_request();
    assert_eq!(request.method, Method::Post);
    assert_eq!(request.url, "http://localhost:50342/oauth2/token");
    assert_eq!(request.body.expose_secret(), REDIS);
    assert_eq!(header(&request, "Metadata"), Some("true"));
    assert_eq!(
        header(&request, "Content-Type"),
        Some("application/x-www-form-urlencoded")
    );
    assert!(!request.allow_proxy);
}

#[test]
fn unsupported_selectors_are_config_errors() {
    let cases: [(Variables, UserAssigned, &str); 6] = [
        (
            CLOUD_SHELL,
            client("c-1"),
            "Cloud Shell issues tokens only for the signed-in user",
        ),
        (
            CLOUD_SHELL,
            resource("r-1"),
            "Cloud Shell issues tokens only for the signed-in user",
        ),
        (
            SERVICE_FABRIC,
            client("c-1"),
            "Service Fabric selects the identity in the application manifest",
        ),
        (
            SERVICE_FABRIC,
            object("o-1"),
            "Service Fabric selects the identity in the application manifest",
        ),
        (
            AZURE_ML,
            object("o-1"),
            "Azure ML selects a user-assigned identity only by client id",
        ),
        (
            AZURE_ML,
            resource("r-1"),
            "Azure ML selects a user-assigned identity only by client id",
        ),
    ];
    for (pairs, identity, reason) in cases {
        let err = credential(pairs)
            .with_user_assigned(identity.clone())
            .unwrap_err();
        assert_eq!(
            err,
            Error::config(
                "user-assigned managed identity",
                format!(
                    "cannot select the identity with {identity}: {reason}; remove the selector"
                )
            )
        );
    }
    let err = credential(&[]).with_user_assigned(client("")).unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
}

#[test]
fn scope_becomes_resource() {
    let cases = [
        (
            "https://redis.azure.com/.default",
            "https://redis.azure.com",
        ),
        (
            "acca5fbb-b7e4-4009-81f1-37e38fd66d78/.default",
            "acca5fbb-b7e4-4009-81f1-37e38fd66d78",
        ),
        ("https://redis.azure.com", "https://redis.azure.com"),
        // Only a literal `/.default` suffix is removed.
        (
            "https://example.com/.defaults",
            "https://example.com/.defaults",
        ),
    ];
    for (scope, expected) in cases {
        let credential = credential(&[]).with_scope(scope).unwrap();
        assert_eq!(credential.resource(), expected, "{scope}");
    }
    for scope in ["", "/.default", "a/.default b/.default"] {
        let err = credential(&[]).with_scope(scope).unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{scope}: {err}");
    }
}

#[test]
fn invalid_endpoints_are_rejected() {
    for (pairs, variable) in [
        (
            vec![
                ("IDENTITY_ENDPOINT", "localhost:8081"),
                ("IDENTITY_HEADER", "h"),
            ],
            "IDENTITY_ENDPOINT",
        ),
        (vec![("MSI_ENDPOINT", "ftp://x/y")], "MSI_ENDPOINT"),
        (
            vec![("MSI_ENDPOINT", "http://user@host/"), ("MSI_SECRET", "s")],
            "MSI_ENDPOINT",
        ),
    ] {
        let err = ManagedIdentityCredential::from_env(lookup(&pairs)).unwrap_err();
        let Error::Config { setting, .. } = &err else {
            panic!("expected a config error, got {err}");
        };
        assert_eq!(setting, variable);
    }
}

#[test]
fn debug_shows_no_secret() {
    for pairs in [APP_SERVICE, SERVICE_FABRIC, AZURE_ML] {
        let credential = credential(pairs);
        let debug = format!("{credential:?} {:?}", credential.token_request());
        for secret in ["app-header-secret", "fabric-header-secret", "ml-secret"] {
            assert!(!debug.contains(secret), "{debug}");
        }
    }
}

fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

fn endpoint_error(error: Error) -> crate::error::EndpointError {
    match error {
        Error::IdentityEndpoint(e) => e,
        other => panic!("expected an endpoint error, got {other}"),
    }
}

#[test]
fn imds_retry_classification() {
    for status in [404, 410, 429, 500, 502, 503, 504, 511] {
        let error = credential(&[]).parse_response(&response(status, ""), at(T0));
        assert!(error.unwrap_err().is_transient(), "{status}");
    }
    for status in [400, 401, 403, 405] {
        let body = r#"{"error":"invalid_request","error_description":"Bad request"}"#;
        let error = credential(&[]).parse_response(&response(status, body), at(T0));
        assert!(!error.unwrap_err().is_transient(), "{status}");
    }
    let mut throttled = response(429, "");
    throttled.headers.push(("Retry-After".into(), "5".into()));
    let error = credential(&[])
        .parse_response(&throttled, at(T0))
        .unwrap_err();
    assert_eq!(error.retry_after(), Some(Duration::from_secs(5)));
}

#[test]
fn imds_error_body_is_kept() {
    let body = r#"{"error":"invalid_resource","error_description":"AADSTS50001: The application named https://x was not found in the tenant."}"#;
    let error = credential(&[]).parse_response(&response(400, body), at(T0));
    let error = endpoint_error(error.unwrap_err());
    assert_eq!(error.error.as_deref(), Some("invalid_resource"));
    assert!(!error.transient);
}

#[test]
fn identity_not_found_names_the_identity() {
    let body = r#"{"error":"invalid_request","error_description":"Identity not found"}"#;
    let user_assigned = credential(&[]).with_user_assigned(client("c-1")).unwrap();
    let error = user_assigned.parse_response(&response(400, body), at(T0));
    assert_eq!(
        error.unwrap_err().to_string(),
        "invalid user-assigned managed identity: the identity endpoint returned \"Identity not \
         found\" for client id `c-1`; assign that identity to this resource, or correct the id"
    );
    let error = credential(&[]).parse_response(&response(400, body), at(T0));
    let error = error.unwrap_err();
    assert!(
        matches!(error, Error::CredentialUnavailable { .. }),
        "{error}"
    );
    assert!(!error.is_transient());
}

#[test]
fn docker_desktop_proxy_means_unavailable() {
    let body = "connecting to 169.254.169.254:80: dial tcp 169.254.169.254:80: connectex: A \
                socket operation was attempted to an unreachable network.";
    let error = credential(&[]).parse_response(&response(403, body), at(T0));
    let error = error.unwrap_err();
    assert!(
        matches!(error, Error::CredentialUnavailable { .. }),
        "{error}"
    );
}

#[test]
fn service_fabric_retry_classification() {
    let body = r#"{"error":{"correlationId":"cid-1","code":"ManagedIdentityNotFound","message":"No managed identity is configured."}}"#;
    let fabric = credential(SERVICE_FABRIC);
    let error = endpoint_error(
        fabric
            .parse_response(&response(404, body), at(T0))
            .unwrap_err(),
    );
    assert!(!error.transient);
    assert_eq!(error.error.as_deref(), Some("ManagedIdentityNotFound"));
    assert_eq!(
        error.description.as_deref(),
        Some("No managed identity is configured.")
    );
    assert_eq!(error.correlation_id.as_deref(), Some("cid-1"));
    for status in [429, 500, 503] {
        let error = fabric.parse_response(&response(status, body), at(T0));
        assert!(error.unwrap_err().is_transient(), "{status}");
    }
    for status in [400, 401, 410] {
        let error = fabric.parse_response(&response(status, body), at(T0));
        assert!(!error.unwrap_err().is_transient(), "{status}");
    }
}

#[test]
fn app_service_and_azure_ml_use_generic_classification() {
    for pairs in [APP_SERVICE, AZURE_ML, CLOUD_SHELL] {
        let credential = credential(pairs);
        for (status, transient) in [
            (400, false),
            (404, false),
            (408, true),
            (429, true),
            (500, true),
        ] {
            let error = credential.parse_response(&response(status, "{}"), at(T0));
            assert_eq!(error.unwrap_err().is_transient(), transient, "{status}");
        }
    }
}

#[test]
fn responses_of_each_environment_parse() {
    let jwt = "h.eyJvaWQiOiJvIn0.s";
    let cases = [
        // IMDS and Azure Arc: every value a string.
        (
            format!(
                r#"{{"access_token":"{jwt}","expires_in":"86399","expires_on":"{}","resource":"https://redis.azure.com","token_type":"Bearer"}}"#,
                T0 + 86399
            ),
            T0 + 86399,
        ),
        // App Service 2019-08-01: `expires_on` only, as a string.
        (
            format!(r#"{{"access_token":"{jwt}","expires_on":"{}"}}"#, T0 + 3600),
            T0 + 3600,
        ),
        // Service Fabric: `expires_on` as a number.
        (
            format!(r#"{{"access_token":"{jwt}","expires_on":{}}}"#, T0 + 3600),
            T0 + 3600,
        ),
        // App Service 2017-09-01 on Windows.
        (
            format!(r#"{{"access_token":"{jwt}","expires_on":"1/1/2026 1:00:00 AM +00:00"}}"#),
            T0 + 3600,
        ),
        // App Service 2017-09-01 on Linux, and `expires_in` as a number.
        (
            format!(
                r#"{{"access_token":"{jwt}","expires_in":7200,"expires_on":"01/01/2026 01:00:00 +00:00"}}"#
            ),
            T0 + 3600,
        ),
    ];
    for (pairs, (body, expires_on)) in [APP_SERVICE, AZURE_ML, SERVICE_FABRIC, &[], CLOUD_SHELL]
        .into_iter()
        .zip(cases)
    {
        let token = credential(pairs)
            .parse_response(&response(200, &body), at(T0))
            .unwrap();
        assert_eq!(token.expires_on(), at(expires_on), "{body}");
    }
}

// The Azure Arc exchange, step by step.

fn arc_credential(identity: Option<UserAssigned>) -> ManagedIdentityCredential {
    let mut credential = credential(ARC).with_arc_key_directory("/keys");
    if let Some(identity) = identity {
        credential = credential.with_user_assigned(identity).unwrap();
    }
    credential
}

fn challenge(realm: &str) -> Result<StepOutput, Error> {
    let mut response = response(401, "");
    response
        .headers
        .push(("WWW-Authenticate".into(), format!("Basic realm={realm}")));
    Ok(StepOutput::Http(response))
}

fn token_response(extra: &str) -> Result<StepOutput, Error> {
    let body = format!(
        r#"{{"access_token":"h.eyJvaWQiOiJvIn0.s","expires_in":"86399","expires_on":"{}"{extra}}}"#,
        T0 + 86399
    );
    Ok(StepOutput::Http(response(200, &body)))
}

#[test]
fn arc_exchange_reads_key_and_retries_with_it() {
    let credential = arc_credential(None);
    let mut exchange = credential.exchange();
    let Next::Step(Step::Http(_)) = exchange.start(at(T0)) else {
        panic!("expected the challenge request");
    };
    let Next::Step(Step::ReadFile { path, max_len }) =
        exchange.resume(at(T0), challenge("/keys/abc.key"))
    else {
        panic!("expected the key file read");
    };
    assert_eq!(path, Path::new("/keys/abc.key"));
    assert_eq!(max_len, 4096);
    let Next::Step(Step::Http(request)) =
        exchange.resume(at(T0), Ok(StepOutput::File(b"key-123\n".to_vec())))
    else {
        panic!("expected the token request");
    };
    assert_eq!(header(&request, "Authorization"), Some("Basic key-123"));
    assert_eq!(header(&request, "Metadata"), Some("true"));
    assert_eq!(request.url, credential.token_request().url);
    assert!(!request.allow_proxy);
    let Next::Done(Ok(token)) = exchange.resume(at(T0), token_response("")) else {
        panic!("expected a token");
    };
    assert_eq!(token.expires_on(), at(T0 + 86399));
}

#[test]
fn arc_realm_forms() {
    for realm in ["/keys/abc.key", "\"/keys/abc.key\"", "/keys//abc.key"] {
        let mut exchange = arc_credential(None).exchange();
        let _ = exchange.start(at(T0));
        let next = exchange.resume(at(T0), challenge(realm));
        let Next::Step(Step::ReadFile { path, .. }) = next else {
            panic!("{realm}: expected a read, got {next:?}");
        };
        assert_eq!(path, Path::new("/keys/abc.key"), "{realm}");
    }
}

#[test]
fn arc_key_path_outside_directory_rejected() {
    for realm in [
        "/etc/shadow",
        "/keys/abc.txt",
        "/keys/.key",
        "/other/abc.key",
        "/keys/sub/abc.key",
        "/keys/../etc/abc.key",
        "abc.key",
        "/keys/",
    ] {
        let mut exchange = arc_credential(None).exchange();
        let _ = exchange.start(at(T0));
        let next = exchange.resume(at(T0), challenge(realm));
        let Next::Done(Err(Error::Config { setting, .. })) = next else {
            panic!("{realm}: expected a config error, got {next:?}");
        };
        assert_eq!(setting, "Azure Arc key file", "{realm}");
    }
}

#[test]
fn arc_challenge_must_be_401_with_realm() {
    let mut exchange = arc_credential(None).exchange();
    let _ = exchange.start(at(T0));
    let next = exchange.resume(at(T0), Ok(StepOutput::Http(response(401, ""))));
    let Next::Done(Err(Error::InvalidResponse { status: 401, .. })) = next else {
        panic!("expected an invalid response, got {next:?}");
    };

    let mut exchange = arc_credential(None).exchange();
    let _ = exchange.start(at(T0));
    let next = exchange.resume(at(T0), token_response(""));
    let Next::Done(Err(Error::Config { setting, .. })) = next else {
        panic!("expected a config error, got {next:?}");
    };
    assert_eq!(setting, "IDENTITY_ENDPOINT");

    let mut exchange = arc_credential(None).exchange();
    let _ = exchange.start(at(T0));
    let next = exchange.resume(at(T0), Ok(StepOutput::Http(response(410, ""))));
    let Next::Done(Err(error)) = next else {
        panic!("expected an error, got {next:?}");
    };
    assert!(error.is_transient(), "{error}");
}

#[test]
fn arc_key_read_errors_name_the_fix() {
    let io = |kind| Error::Io {
        operation: "read /keys/abc.key".into(),
        kind,
        reason: "r".into(),
    };
    let cases = [
        (std::io::ErrorKind::PermissionDenied, false, "`himds` group"),
        (
            std::io::ErrorKind::InvalidData,
            false,
            "larger than 4096 bytes",
        ),
        (std::io::ErrorKind::NotFound, true, "cannot read"),
    ];
    for (kind, transient, text) in cases {
        let mut exchange = arc_credential(None).exchange();
        let _ = exchange.start(at(T0));
        let _ = exchange.resume(at(T0), challenge("/keys/abc.key"));
        let Next::Done(Err(error)) = exchange.resume(at(T0), Err(io(kind))) else {
            panic!("expected an error");
        };
        assert_eq!(error.is_transient(), transient, "{kind:?}");
        assert!(error.to_string().contains(text), "{error}");
    }
    let mut exchange = arc_credential(None).exchange();
    let _ = exchange.start(at(T0));
    let _ = exchange.resume(at(T0), challenge("/keys/abc.key"));
    let next = exchange.resume(at(T0), Ok(StepOutput::File(b"  \n".to_vec())));
    assert!(
        matches!(next, Next::Done(Err(Error::Config { .. }))),
        "{next:?}"
    );
}

#[test]
fn arc_requires_echo_of_user_assigned_identity() {
    let cases = [
        (client("C-1"), r#","client_id":"c-1""#, true),
        (client("c-1"), r#","client_id":"c-2""#, false),
        (client("c-1"), "", false),
        (object("o-1"), r#","object_id":"o-1""#, true),
        (resource("r-1"), r#","msi_res_id":"r-1""#, true),
        (resource("r-1"), r#","mi_res_id":"R-1""#, true),
        (resource("r-1"), r#","client_id":"r-1""#, false),
    ];
    for (identity, extra, accepted) in cases {
        let mut exchange = arc_credential(Some(identity.clone())).exchange();
        let _ = exchange.start(at(T0));
        let _ = exchange.resume(at(T0), challenge("/keys/abc.key"));
        let _ = exchange.resume(at(T0), Ok(StepOutput::File(b"k".to_vec())));
        let next = exchange.resume(at(T0), token_response(extra));
        match next {
            Next::Done(Ok(_)) => assert!(accepted, "{identity} {extra}"),
            Next::Done(Err(Error::Config { .. })) => assert!(!accepted, "{identity} {extra}"),
            other => panic!("{identity} {extra}: {other:?}"),
        }
    }
}
