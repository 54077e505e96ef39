//! Replays the fuzz seed corpora through the checks that the fuzz targets run, so
//! `cargo test` covers every seed without a nightly toolchain or libFuzzer.

#[path = "../fuzz/src/lib.rs"]
mod fuzz_checks;

use std::fs;
use std::panic;
use std::path::{Path, PathBuf};

/// Lists the files in `fuzz/corpus/<target>/`, failing when the folder is missing or
/// has no files.
fn seed_files(target: &str) -> Vec<PathBuf> {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let entries = fs::read_dir(&folder)
        .unwrap_or_else(|e| panic!("failed to read seed corpus {}: {e}", folder.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("failed to read a seed corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "seed corpus {} has no files",
        folder.display()
    );
    files
}

/// Runs `check` on every seed of `target` and fails with the names of the seeds whose
/// check panicked.
fn replay(target: &str, check: fn(&[u8])) {
    let mut failed = Vec::new();
    for path in seed_files(target) {
        let input = match fs::read(&path) {
            Ok(input) => input,
            // A running fuzzer removes the inputs it has reduced or merged.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("failed to read seed {}: {e}", path.display()),
        };
        if panic::catch_unwind(|| check(&input)).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(failed.is_empty(), "checks failed on seeds: {failed:#?}");
}

#[test]
fn jwt_claims_seeds_pass_checks() {
    replay("jwt_claims", fuzz_checks::check_jwt_claims);
}

#[test]
fn token_response_seeds_pass_checks() {
    replay("token_response", fuzz_checks::check_token_response);
}

#[test]
fn token_manager_seeds_pass_checks() {
    replay("token_manager", fuzz_checks::check_token_manager);
}

#[cfg(feature = "certificate")]
#[test]
fn certificate_bytes_seeds_pass_checks() {
    replay("certificate_bytes", fuzz_checks::check_certificate_bytes);
}

/// Checks that the valid seeds still load, so the fuzzer starts from inputs that reach
/// key parsing and signing rather than only from inputs that fail early.
#[cfg(feature = "certificate")]
#[test]
fn certificate_bytes_valid_seeds_load() {
    use redis_entraid::ClientCertificate;

    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/certificate_bytes");
    let password = Some(fuzz_checks::CERTIFICATE_PASSWORD);
    // The seed, the password it needs and its number of certificates.
    let cases = [
        ("pem_pkcs8_key_after_chain", None, 2),
        ("pem_pkcs1_key_before_chain", None, 2),
        ("pem_encrypted_pkcs8_key", password, 1),
        ("pkcs12_aes256_sha256_mac", password, 2),
        ("pkcs12_3des_sha1_mac", password, 2),
        ("pkcs12_legacy_rc2_certificates", password, 2),
        ("pkcs12_aes128_key_plain_certificates", password, 2),
        ("pkcs12_empty_password", None, 2),
        ("pkcs12_no_encryption_no_mac", None, 2),
    ];
    for (name, password, certificates) in cases {
        let bytes = fs::read(folder.join(name))
            .unwrap_or_else(|e| panic!("failed to read seed {name}: {e}"));
        let certificate = ClientCertificate::from_bytes(&bytes, password)
            .unwrap_or_else(|e| panic!("seed {name} does not load: {e}"));
        assert_eq!(certificate.chain().len(), certificates, "{name}");
    }
}

#[test]
fn managed_identity_response_seeds_pass_checks() {
    replay(
        "managed_identity_response",
        fuzz_checks::check_managed_identity_response,
    );
}

#[test]
fn expires_on_date_seeds_pass_checks() {
    replay("expires_on_date", fuzz_checks::check_expires_on_date);
}
