//! The client-certificate credential: loading PEM and PKCS#12 files made by `openssl`,
//! the client assertion checked claim by claim against the test certificate, and the
//! token request against a mock Entra token endpoint. Also the environment credential
//! and the chain, which read the certificate file at each token request.
#![cfg(all(feature = "blocking", feature = "certificate"))]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use httpmock::prelude::*;
use httpmock::{HttpMockRequest, HttpMockResponse};
use ring::digest;
use rustls_pki_types::CertificateDer;
use serde_json::Value;

use common::certs::{PASSWORD, fixtures};
use common::jwt::{OID, TENANT, jwt, token_body};
use common::temp_dir::TempDir;
use common::token_endpoint::{CLIENT_ID, token_path};
use redis_entraid::blocking::EntraIdProvider;
use redis_entraid::{
    ASSERTION_LIFETIME, ChainedCredential, ClientCertificate, ClientCertificateCredential,
    EnvironmentCredential, Error, Exchange, HttpResponse, HttpTokenSource, Next, Step, StepOutput,
    TokenSource,
};

const TOKEN_URL: &str =
    "https://login.microsoftonline.com/00000000-0000-0000-0000-0000000000aa/oauth2/v2.0/token";

fn leaf_pem() -> Vec<u8> {
    fixtures().concat(&["leaf.pem", "ca.pem", "leaf.key"])
}

fn credential(certificate: ClientCertificate) -> ClientCertificateCredential {
    ClientCertificateCredential::new(TENANT, CLIENT_ID, certificate).unwrap()
}

/// Asserts that `certificate` has the test leaf first, then the CA.
fn assert_leaf_then_ca(certificate: &ClientCertificate, case: &str) {
    let fixtures = fixtures();
    assert_eq!(certificate.chain().len(), 2, "{case}");
    assert!(
        certificate.chain()[0] == fixtures.leaf_der(),
        "{case}: leaf"
    );
    assert!(certificate.chain()[1] == fixtures.ca_der(), "{case}: CA");
    let thumbprint = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, &fixtures.leaf_der()));
    assert_eq!(certificate.thumbprint_sha256(), thumbprint, "{case}");
}

fn config_error(error: Error) -> (String, String) {
    match error {
        Error::Config { setting, reason } => (setting, reason),
        other => panic!("expected a configuration error, got {other}"),
    }
}

#[test]
fn pem_loads_pkcs8_pkcs1_and_encrypted_keys() {
    let fixtures = fixtures();
    let cases = [
        ("PKCS#8 key last", leaf_pem(), None),
        (
            "CA first, PKCS#1 key first",
            fixtures.concat(&["leaf.pkcs1.key", "ca.pem", "leaf.pem"]),
            None,
        ),
        (
            "encrypted PKCS#8 key",
            fixtures.concat(&["leaf.pem", "leaf.enc.key", "ca.pem"]),
            Some(PASSWORD),
        ),
        (
            "password ignored for a plain key",
            leaf_pem(),
            Some("unused"),
        ),
    ];
    for (case, pem, password) in cases {
        let certificate =
            ClientCertificate::from_pem(&pem, password).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_leaf_then_ca(&certificate, case);
        let detected = ClientCertificate::from_bytes(&pem, password).unwrap();
        assert_eq!(detected.chain(), certificate.chain(), "{case}");
    }
}

#[test]
fn pkcs12_loads_each_encryption() {
    for name in ["modern.p12", "3des.p12", "rc2.p12", "aes128.p12"] {
        let der = fixtures().read(name);
        let certificate = ClientCertificate::from_pkcs12(&der, Some(PASSWORD))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_leaf_then_ca(&certificate, name);
        let detected = ClientCertificate::from_bytes(&der, Some(PASSWORD)).unwrap();
        assert_eq!(detected.chain(), certificate.chain(), "{name}");
    }
}

#[test]
fn pkcs12_loads_without_password() {
    for name in ["empty-password.p12", "plain.p12"] {
        let der = fixtures().read(name);
        for password in [None, Some("")] {
            let certificate = ClientCertificate::from_pkcs12(&der, password)
                .unwrap_or_else(|e| panic!("{name}, {password:?}: {e}"));
            assert_leaf_then_ca(&certificate, name);
        }
    }
}

#[test]
fn wrong_or_missing_password_is_named() {
    let fixtures = fixtures();
    let wrong = "invalid client certificate password: the password does not decrypt the \
                 file; check the password";
    let missing = "invalid client certificate password: the file is encrypted with a \
                   password, but no password was given; set the password";
    let encrypted_pem = fixtures.concat(&["leaf.pem", "leaf.enc.key"]);
    for (case, bytes) in [
        ("modern.p12", fixtures.read("modern.p12")),
        ("3des.p12", fixtures.read("3des.p12")),
        ("encrypted PEM", encrypted_pem),
    ] {
        let error = ClientCertificate::from_bytes(&bytes, Some("wrong")).unwrap_err();
        assert_eq!(error.to_string(), wrong, "{case}");
        let error = ClientCertificate::from_bytes(&bytes, None).unwrap_err();
        assert_eq!(error.to_string(), missing, "{case}");
    }
}

#[test]
fn non_rsa_keys_are_rejected() {
    let fixtures = fixtures();
    let expected = "invalid client certificate: the private key is an EC key, but only RSA \
                    keys are supported; create the certificate with an RSA key of 2048 bits \
                    or more";
    let pem = fixtures.concat(&["ec.pem", "ec.key"]);
    let error = ClientCertificate::from_pem(&pem, None).unwrap_err();
    assert_eq!(error.to_string(), expected);
    let error = ClientCertificate::from_pkcs12(&fixtures.read("ec.p12"), Some(PASSWORD));
    assert_eq!(error.unwrap_err().to_string(), expected);
}

#[test]
fn missing_or_mismatched_parts_are_named() {
    let fixtures = fixtures();
    let cases = [
        (
            fixtures.concat(&["leaf.pem", "ca.pem"]),
            "no private key found; the file must contain the certificate's private key as \
             well (in PEM, a PRIVATE KEY or RSA PRIVATE KEY block)",
        ),
        (
            fixtures.read("leaf.key"),
            "no certificate found; add the certificate (in PEM, a CERTIFICATE block) to the \
             file with its private key",
        ),
        (
            fixtures.concat(&["ca.pem", "leaf.key"]),
            "the certificate does not match the private key; put the key and its own \
             certificate in the file",
        ),
        (
            fixtures.concat(&["ca.pem", "small.pem", "leaf.key"]),
            "none of the 2 certificates matches the private key; put the key and its own \
             certificate in the file",
        ),
        (
            fixtures.concat(&["leaf.pem", "leaf.key", "ca.key"]),
            "found 2 private keys; keep only the certificate's key in the file",
        ),
        (
            fixtures.concat(&["small.pem", "small.key"]),
            "the RSA key is shorter than 2048 bits; create a key of 2048 bits or more",
        ),
        (
            fixtures.concat(&["leaf.pem", "leaf.legacy-enc.key"]),
            "the private key uses OpenSSL's legacy PEM encryption (a Proc-Type header), which \
             is not supported; convert it with `openssl pkcs8 -topk8 -v2 aes-256-cbc`, or \
             export a PKCS#12 file",
        ),
        (
            b"not a certificate".to_vec(),
            "the data is neither PEM nor PKCS#12; use a PEM file with the certificate and its \
             private key, or a PKCS#12 (.pfx, .p12) file",
        ),
    ];
    for (bytes, expected) in cases {
        let (setting, reason) =
            config_error(ClientCertificate::from_bytes(&bytes, None).unwrap_err());
        assert_eq!(setting, "client certificate");
        assert_eq!(reason, expected);
    }
}

#[test]
fn truncated_pkcs12_is_an_error_not_a_panic() {
    let der = fixtures().read("3des.p12");
    for len in (0..der.len()).step_by(7) {
        let error = ClientCertificate::from_pkcs12(&der[..len], Some(PASSWORD)).unwrap_err();
        assert!(matches!(error, Error::Config { .. }), "{len}: {error}");
    }
}

/// Splits a JWT into its decoded header and claims, the signing input and the signature.
fn decode(assertion: &str) -> (Value, Value, String, Vec<u8>) {
    let parts: Vec<&str> = assertion.split('.').collect();
    assert_eq!(parts.len(), 3, "{assertion}");
    let json = |part: &str| -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    };
    let signing_input = format!("{}.{}", parts[0], parts[1]);
    let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    (json(parts[0]), json(parts[1]), signing_input, signature)
}

/// Checks the PS256 signature with ring through the leaf certificate's public key.
fn verify_signature(signing_input: &str, signature: &[u8]) {
    let leaf = CertificateDer::from(fixtures().leaf_der());
    let certificate = webpki::EndEntityCert::try_from(&leaf).unwrap();
    certificate
        .verify_signature(
            webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
            signing_input.as_bytes(),
            signature,
        )
        .expect("the assertion's PS256 signature verifies with the leaf's public key");
}

/// Checks every header field and claim of an assertion issued at `now` for the test
/// client, and returns the claims.
fn check_assertion(assertion: &str, now: u64, aud: &str, x5c: Option<&[Vec<u8>]>) -> Value {
    let (header, claims, signing_input, signature) = decode(assertion);
    let thumbprint =
        URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, &fixtures().leaf_der()));
    let mut expected_header = serde_json::json!({
        "alg": "PS256",
        "typ": "JWT",
        "x5t#S256": thumbprint,
    });
    if let Some(chain) = x5c {
        let encoded: Vec<String> = chain.iter().map(|der| STANDARD.encode(der)).collect();
        expected_header["x5c"] = serde_json::json!(encoded);
    }
    assert_eq!(header, expected_header);
    let object = claims.as_object().unwrap();
    let mut names: Vec<&str> = object.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["aud", "exp", "iat", "iss", "jti", "nbf", "sub"]);
    assert_eq!(claims["aud"], aud);
    assert_eq!(claims["iss"], CLIENT_ID);
    assert_eq!(claims["sub"], CLIENT_ID);
    assert_eq!(claims["nbf"], now);
    assert_eq!(claims["iat"], now);
    assert_eq!(claims["exp"], now + ASSERTION_LIFETIME.as_secs());
    assert_eq!(ASSERTION_LIFETIME, Duration::from_secs(600));
    let jti = claims["jti"].as_str().unwrap();
    assert_eq!(jti.len(), 36, "{jti}");
    assert_eq!(jti.matches('-').count(), 4, "{jti}");
    verify_signature(&signing_input, &signature);
    claims
}

#[test]
fn assertion_claims_and_signature() {
    let certificate = ClientCertificate::from_pem(&leaf_pem(), None).unwrap();
    let credential = credential(certificate);
    let now = 1_767_225_600;
    let at = UNIX_EPOCH + Duration::from_secs(now);
    let assertion = credential.client_assertion(at).unwrap();
    assert_eq!(credential.token_url(), TOKEN_URL);
    check_assertion(assertion.expose_secret(), now, TOKEN_URL, None);
}

#[test]
fn assertion_carries_chain_on_request() {
    let certificate =
        ClientCertificate::from_pkcs12(&fixtures().read("modern.p12"), Some(PASSWORD));
    let credential = credential(certificate.unwrap())
        .with_send_certificate_chain(true)
        .with_authority_host("login.microsoftonline.us")
        .unwrap();
    let now = 1_767_225_600;
    let assertion = credential
        .client_assertion(UNIX_EPOCH + Duration::from_secs(now))
        .unwrap();
    let chain = [fixtures().leaf_der(), fixtures().ca_der()];
    let aud =
        "https://login.microsoftonline.us/00000000-0000-0000-0000-0000000000aa/oauth2/v2.0/token";
    check_assertion(assertion.expose_secret(), now, aud, Some(&chain));
}

#[test]
fn assertions_differ_in_jti() {
    let credential = credential(ClientCertificate::from_pem(&leaf_pem(), None).unwrap());
    let now = SystemTime::now();
    let first = credential.client_assertion(now).unwrap();
    let second = credential.client_assertion(now).unwrap();
    let (_, first_claims, _, _) = decode(first.expose_secret());
    let (_, second_claims, _, _) = decode(second.expose_secret());
    assert_ne!(first_claims["jti"], second_claims["jti"]);
    assert_eq!(first_claims["iat"], second_claims["iat"]);
}

#[test]
fn debug_shows_no_key_or_assertion() {
    let fixtures = fixtures();
    let credential = credential(ClientCertificate::from_pem(&leaf_pem(), None).unwrap());
    let assertion = credential.client_assertion(SystemTime::now()).unwrap();
    let request = credential.token_request(SystemTime::now()).unwrap();
    let key = String::from_utf8(fixtures.read("leaf.key")).unwrap();
    // A line from the middle of the key's base64 body.
    let key_line = key.lines().nth(5).unwrap();
    let signature = assertion.expose_secret().rsplit('.').next().unwrap();
    for debug in [
        format!("{credential:?}"),
        format!("{:?}", credential.certificate()),
        format!("{request:?}"),
        format!("{assertion:?}"),
    ] {
        assert!(!debug.contains(key_line), "{debug}");
        assert!(!debug.contains(signature), "{debug}");
        assert!(!debug.contains("client_assertion="), "{debug}");
    }
    let debug = format!("{credential:?}");
    assert!(
        debug.contains(credential.certificate().thumbprint_sha256()),
        "{debug}"
    );
}

/// Returns the leaf's PKCS#1 key as PEM, with one byte changed in the middle of `dP`, the
/// first CRT exponent. ring 0.17 loads such a key and fails only when it signs.
fn damaged_crt_key_pem() -> Vec<u8> {
    use rustls_pki_types::PrivatePkcs1KeyDer;
    use rustls_pki_types::pem::PemObject;

    let key = PrivatePkcs1KeyDer::from_pem_slice(&fixtures().read("leaf.pkcs1.key")).unwrap();
    let mut der = key.secret_pkcs1_der().to_vec();
    // RSAPrivateKey is a SEQUENCE of INTEGERs: version, n, e, d, p, q, dP, dQ, qInv.
    let mut offset = 4; // `30 82 xx xx`, the SEQUENCE header of a 2048-bit key.
    assert_eq!(der[..2], [0x30, 0x82]);
    for index in 0..=6 {
        assert_eq!(der[offset], 0x02, "INTEGER {index}");
        let (header, len) = match der[offset + 1] {
            short @ 0..=0x7f => (2, usize::from(short)),
            0x81 => (3, usize::from(der[offset + 2])),
            0x82 => (
                4,
                usize::from(der[offset + 2]) << 8 | usize::from(der[offset + 3]),
            ),
            other => panic!("unexpected length octet {other:#x}"),
        };
        if index == 6 {
            der[offset + header + len / 2] ^= 0x01;
            break;
        }
        offset += header + len;
    }
    let body = STANDARD.encode(&der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).unwrap())
        .collect();
    format!(
        "-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----\n",
        lines.join("\n")
    )
    .into_bytes()
}

#[test]
fn damaged_key_fails_signing_as_config() {
    let mut pem = fixtures().read("leaf.pem");
    pem.extend(damaged_crt_key_pem());
    let certificate = ClientCertificate::from_pem(&pem, None).expect("ring loads the key");
    let error = credential(certificate)
        .client_assertion(SystemTime::now())
        .unwrap_err();
    assert!(!error.is_transient(), "{error}");
    assert_eq!(
        config_error(error),
        (
            "client certificate".to_owned(),
            "the private key is damaged: a signature made with it does not verify with its \
             public key; export the certificate and its key again"
                .to_owned()
        )
    );
}

/// Builds a token response whose token is valid for an hour from now.
fn fresh_token_body() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    token_body(&jwt(OID, now + 3600, 1), 3600)
}

#[test]
fn token_request_has_exact_form() {
    let server = MockServer::start();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&bodies);
    let mock = server.mock(|when, then| {
        when.method(POST)
            .path(token_path())
            .header("content-type", "application/x-www-form-urlencoded")
            .form_urlencoded_tuple("client_id", CLIENT_ID)
            .form_urlencoded_tuple(
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            )
            .form_urlencoded_tuple_exists("client_assertion")
            .form_urlencoded_tuple("scope", "https://redis.azure.com/.default")
            .form_urlencoded_tuple("grant_type", "client_credentials")
            .form_urlencoded_tuple_missing("client_secret")
            .is_true(move |request| {
                seen.lock().unwrap().push(request.body().to_vec());
                true
            });
        then.status(200).body(fresh_token_body());
    });
    let credential = credential(ClientCertificate::from_pem(&leaf_pem(), None).unwrap())
        .with_authority_host(&server.base_url())
        .unwrap();
    let token_url = credential.token_url();
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let provider = EntraIdProvider::new(credential);
    let credentials = provider.get_credentials().expect("token from the mock");
    assert_eq!(credentials.username(), OID);
    mock.assert_calls(1);

    let bodies = bodies.lock().unwrap();
    let body = bodies.last().expect("the mock saw the request body");
    let fields: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    let names: Vec<&str> = fields.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "client_id",
            "client_assertion_type",
            "client_assertion",
            "scope",
            "grant_type"
        ]
    );
    let form: HashMap<_, _> = fields.iter().cloned().collect();
    let (_, claims, _, _) = decode(&form["client_assertion"]);
    let issued = claims["iat"].as_u64().unwrap();
    assert!(
        issued >= started && issued <= started + 5,
        "iat {issued}, started {started}"
    );
    check_assertion(&form["client_assertion"], issued, &token_url, None);
}

#[test]
fn from_env_reads_file_password_and_chain_flag() {
    let server = MockServer::start();
    let path = fixtures().path("modern.p12");
    let env: HashMap<&str, String> = [
        ("AZURE_TENANT_ID", TENANT.to_owned()),
        ("AZURE_CLIENT_ID", CLIENT_ID.to_owned()),
        ("AZURE_CLIENT_CERTIFICATE_PATH", path.display().to_string()),
        ("AZURE_CLIENT_CERTIFICATE_PASSWORD", PASSWORD.to_owned()),
        ("AZURE_CLIENT_SEND_CERTIFICATE_CHAIN", "TRUE".to_owned()),
        ("AZURE_AUTHORITY_HOST", server.base_url()),
    ]
    .into();
    let credential = ClientCertificateCredential::from_env(|name| env.get(name).cloned()).unwrap();
    let aud = format!("{}{}", server.base_url(), token_path());
    assert_eq!(credential.token_url(), aud);
    assert_leaf_then_ca(credential.certificate(), "from_env");
    let assertion = credential.client_assertion(UNIX_EPOCH).unwrap();
    let chain = [fixtures().leaf_der(), fixtures().ca_der()];
    check_assertion(assertion.expose_secret(), 0, &aud, Some(&chain));

    let mut wrong = env.clone();
    wrong.insert("AZURE_CLIENT_CERTIFICATE_PASSWORD", "wrong".to_owned());
    let error = ClientCertificateCredential::from_env(|name| wrong.get(name).cloned());
    let (setting, _) = config_error(error.unwrap_err());
    assert_eq!(setting, "AZURE_CLIENT_CERTIFICATE_PASSWORD");

    let mut missing = env.clone();
    missing.insert(
        "AZURE_CLIENT_CERTIFICATE_PATH",
        "/no/such/cert.pfx".to_owned(),
    );
    let error = ClientCertificateCredential::from_env(|name| missing.get(name).cloned());
    assert_eq!(
        error.unwrap_err().to_string(),
        "invalid AZURE_CLIENT_CERTIFICATE_PATH: `/no/such/cert.pfx` does not exist; use the \
         path of a PEM or PKCS#12 file that contains the certificate and its private key"
    );
}

#[test]
fn from_file_names_the_file() {
    let credential = ClientCertificateCredential::from_file(
        TENANT,
        CLIENT_ID,
        fixtures().path("3des.p12"),
        Some(PASSWORD),
    )
    .unwrap();
    assert_leaf_then_ca(credential.certificate(), "from_file");

    let error =
        ClientCertificateCredential::from_file(TENANT, CLIENT_ID, "/no/such/cert.pem", None);
    assert_eq!(
        error.unwrap_err().to_string(),
        "invalid client certificate file: `/no/such/cert.pem` does not exist; use the path \
         of a PEM or PKCS#12 file that contains the certificate and its private key"
    );
    let path = fixtures().path("ca.pem");
    let error = ClientCertificateCredential::from_file(TENANT, CLIENT_ID, &path, None);
    let (setting, reason) = config_error(error.unwrap_err());
    assert_eq!(
        setting,
        format!("client certificate file `{}`", path.display())
    );
    assert!(reason.starts_with("no private key found"), "{reason}");
}

/// Returns the value of form field `name` in a URL-encoded body.
fn form_field(body: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(body.as_bytes())
        .find(|(field, _)| field == name)
        .map(|(_, value)| value.into_owned())
}

/// Returns the `x5t#S256` header of an assertion.
fn assertion_thumbprint(assertion: &str) -> String {
    let (header, _, _, _) = decode(assertion);
    header["x5t#S256"].as_str().unwrap().to_owned()
}

fn sha256_thumbprint(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, der))
}

/// Builds a lookup over `pairs`, as `std::env::var` would return them.
fn lookup(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.clone()))
        .collect();
    move |name| map.get(name).cloned()
}

/// Starts an exchange and checks that its first step reads `path`.
fn start_with_read(source: &dyn TokenSource, path: &str, now: SystemTime) -> Box<dyn Exchange> {
    let mut exchange = source.exchange();
    match exchange.start(now) {
        Next::Step(Step::ReadFile { path: read, .. }) => assert_eq!(read.to_str(), Some(path)),
        other => panic!("expected the read of the certificate, got {other:?}"),
    }
    exchange
}

/// Passes `contents` as the certificate file and returns the token request.
fn request_after_file(exchange: &mut dyn Exchange, contents: Vec<u8>, now: SystemTime) -> String {
    match exchange.resume(now, Ok(StepOutput::File(contents))) {
        Next::Step(Step::Http(request)) => {
            assert_eq!(request.url, TOKEN_URL);
            request.body.expose_secret().to_owned()
        }
        other => panic!("expected the token request, got {other:?}"),
    }
}

#[test]
fn environment_exchange_reads_then_signs() {
    let path = "/etc/ssl/private/client.pem";
    let env = lookup(&[
        ("AZURE_TENANT_ID", TENANT.to_owned()),
        ("AZURE_CLIENT_ID", CLIENT_ID.to_owned()),
        ("AZURE_CLIENT_CERTIFICATE_PATH", path.to_owned()),
    ]);
    let credential = EnvironmentCredential::from_env(env).unwrap();
    assert_eq!(credential.selected(), "client certificate");
    let now = 1_767_225_600;
    let at = UNIX_EPOCH + Duration::from_secs(now);

    let mut exchange = start_with_read(&credential, path, at);
    let body = request_after_file(exchange.as_mut(), leaf_pem(), at);
    assert_eq!(
        form_field(&body, "client_assertion_type").as_deref(),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    );
    assert_eq!(form_field(&body, "client_secret"), None);
    let assertion = form_field(&body, "client_assertion").expect("client_assertion field");
    check_assertion(&assertion, now, TOKEN_URL, None);

    let response = HttpResponse {
        status: 200,
        headers: vec![],
        body: token_body(&jwt(OID, now + 3600, 1), 3600).into_bytes(),
    };
    let Next::Done(Ok(token)) = exchange.resume(at, Ok(StepOutput::Http(response))) else {
        panic!("expected a token");
    };
    assert_eq!(token.expires_on(), at + Duration::from_secs(3600));
}

#[test]
fn environment_exchange_uses_password_and_chain() {
    let path = "/etc/ssl/private/client.p12";
    let mut pairs = vec![
        ("AZURE_TENANT_ID", TENANT.to_owned()),
        ("AZURE_CLIENT_ID", CLIENT_ID.to_owned()),
        ("AZURE_CLIENT_CERTIFICATE_PATH", path.to_owned()),
        ("AZURE_CLIENT_CERTIFICATE_PASSWORD", PASSWORD.to_owned()),
        ("AZURE_CLIENT_SEND_CERTIFICATE_CHAIN", "1".to_owned()),
    ];
    let credential = EnvironmentCredential::from_env(lookup(&pairs)).unwrap();
    let at = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
    let mut exchange = start_with_read(&credential, path, at);
    let body = request_after_file(exchange.as_mut(), fixtures().read("modern.p12"), at);
    let assertion = form_field(&body, "client_assertion").expect("client_assertion field");
    let chain = [fixtures().leaf_der(), fixtures().ca_der()];
    check_assertion(&assertion, 1_767_225_600, TOKEN_URL, Some(&chain));

    pairs[3].1 = "wrong".to_owned();
    let credential = EnvironmentCredential::from_env(lookup(&pairs)).unwrap();
    let mut exchange = start_with_read(&credential, path, at);
    let contents = Ok(StepOutput::File(fixtures().read("modern.p12")));
    let Next::Done(Err(error)) = exchange.resume(at, contents) else {
        panic!("expected the wrong password to end the exchange");
    };
    assert_eq!(
        config_error(error),
        (
            "AZURE_CLIENT_CERTIFICATE_PASSWORD".to_owned(),
            "the password does not decrypt the file; check the password".to_owned()
        )
    );
}

#[test]
fn environment_exchange_rereads_replaced_certificate() {
    let path = "/etc/ssl/private/client.pem";
    let env = lookup(&[
        ("AZURE_TENANT_ID", TENANT.to_owned()),
        ("AZURE_CLIENT_ID", CLIENT_ID.to_owned()),
        ("AZURE_CLIENT_CERTIFICATE_PATH", path.to_owned()),
    ]);
    let credential = EnvironmentCredential::from_env(env).unwrap();
    let at = SystemTime::now();
    // The CA's certificate and key stand in for a renewed certificate.
    let generations = [
        (leaf_pem(), fixtures().leaf_der()),
        (
            fixtures().concat(&["ca.pem", "ca.key"]),
            fixtures().ca_der(),
        ),
    ];
    for (contents, der) in generations {
        let mut exchange = start_with_read(&credential, path, at);
        let body = request_after_file(exchange.as_mut(), contents, at);
        let assertion = form_field(&body, "client_assertion").expect("client_assertion field");
        assert_eq!(assertion_thumbprint(&assertion), sha256_thumbprint(&der));
    }
}

#[test]
fn environment_exchange_names_variable_for_damaged_key() {
    let path = "/etc/ssl/private/client.pem";
    let env = lookup(&[
        ("AZURE_TENANT_ID", TENANT.to_owned()),
        ("AZURE_CLIENT_ID", CLIENT_ID.to_owned()),
        ("AZURE_CLIENT_CERTIFICATE_PATH", path.to_owned()),
    ]);
    let credential = EnvironmentCredential::from_env(env).unwrap();
    let at = SystemTime::now();
    let mut exchange = start_with_read(&credential, path, at);
    let mut contents = fixtures().read("leaf.pem");
    contents.extend(damaged_crt_key_pem());
    let Next::Done(Err(error)) = exchange.resume(at, Ok(StepOutput::File(contents))) else {
        panic!("expected the damaged key to end the exchange");
    };
    let (setting, reason) = config_error(error);
    assert_eq!(setting, "AZURE_CLIENT_CERTIFICATE_PATH");
    assert!(
        reason.starts_with("the private key is damaged:"),
        "{reason}"
    );
}

/// Replaces `path` with `contents` by writing a new file and renaming it over the old one.
fn replace_file(path: &std::path::Path, contents: &[u8]) {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, contents).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

#[test]
fn chain_from_env_selects_certificate() {
    let dir = TempDir::new("certificate-env");
    let path = dir.path().join("client.pem");
    replace_file(&path, &leaf_pem());

    let server = MockServer::start();
    let assertions = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&assertions);
    let serial = Arc::new(Mutex::new(0));
    let endpoint = server.mock(|when, then| {
        when.method(POST)
            .path(token_path())
            .form_urlencoded_tuple("client_id", CLIENT_ID)
            .form_urlencoded_tuple(
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            )
            .form_urlencoded_tuple_exists("client_assertion")
            .form_urlencoded_tuple_missing("client_secret");
        then.respond_with(move |request: &HttpMockRequest| {
            let body = String::from_utf8_lossy(request.body_ref()).into_owned();
            seen.lock()
                .unwrap()
                .push(form_field(&body, "client_assertion"));
            let mut serial = serial.lock().unwrap();
            *serial += 1;
            // Each token expires later than the one before, so the provider takes it.
            let lifetime = 3600 + *serial;
            let expires_on = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + lifetime;
            HttpMockResponse::builder()
                .status(200)
                .body(token_body(&jwt(OID, expires_on, *serial), lifetime))
                .build()
        });
    });
    let env = lookup(&[
        ("AZURE_TENANT_ID", TENANT.to_owned()),
        ("AZURE_CLIENT_ID", CLIENT_ID.to_owned()),
        ("AZURE_CLIENT_CERTIFICATE_PATH", path.display().to_string()),
        ("AZURE_AUTHORITY_HOST", server.base_url()),
        // Managed identity follows the environment credential; should the chain ever
        // reach it, IMDS is a closed loopback port, never the real metadata address.
        (
            "AZURE_POD_IDENTITY_AUTHORITY_HOST",
            "http://127.0.0.1:1".to_owned(),
        ),
        // `prod` leaves out the Azure CLI, which could reach Azure with a real login.
        ("AZURE_TOKEN_CREDENTIALS", "prod".to_owned()),
    ]);
    let chain = ChainedCredential::from_env(env).unwrap();
    let provider = EntraIdProvider::new(chain.clone());
    let credentials = provider.get_credentials().expect("token from the chain");
    assert_eq!(credentials.username(), OID);
    assert_eq!(chain.selected(), Some("environment"));
    endpoint.assert_calls(1);
    let first = assertions.lock().unwrap()[0]
        .clone()
        .expect("client_assertion field");
    let token_url = format!("{}{}", server.base_url(), token_path());
    let (_, claims, _, _) = decode(&first);
    check_assertion(&first, claims["iat"].as_u64().unwrap(), &token_url, None);

    // A renewed certificate replaces the file, so the next token request signs with it.
    replace_file(&path, &fixtures().concat(&["ca.pem", "ca.key"]));
    let mut changes = provider.subscribe();
    provider.force_refresh();
    changes
        .next_timeout(Duration::from_secs(10))
        .expect("token after the certificate was replaced");
    endpoint.assert_calls(2);
    let second = assertions.lock().unwrap()[1]
        .clone()
        .expect("client_assertion field");
    assert_eq!(
        assertion_thumbprint(&second),
        sha256_thumbprint(&fixtures().ca_der())
    );
}
