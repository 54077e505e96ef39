//! Test certificates and keys, made with the `openssl` command-line tool once per test
//! binary, in Cargo's temporary directory for integration tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The password of the encrypted test files.
pub const PASSWORD: &str = "test-pässword";

/// The generated files; see [`fixtures`].
pub struct Fixtures {
    pub dir: PathBuf,
}

impl Fixtures {
    /// Returns the path of a generated file.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Reads a generated file.
    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    /// Concatenates generated files, as in a PEM bundle.
    pub fn concat(&self, names: &[&str]) -> Vec<u8> {
        names.iter().flat_map(|name| self.read(name)).collect()
    }

    /// Reads the DER of the leaf certificate.
    pub fn leaf_der(&self) -> Vec<u8> {
        self.read("leaf.der")
    }

    /// Reads the DER of the CA certificate that issued the leaf.
    pub fn ca_der(&self) -> Vec<u8> {
        self.read("ca.der")
    }
}

/// Runs `openssl` with `args` in `dir`.
///
/// # Panics
///
/// Panics with installation advice when `openssl` is not on `PATH`, and when it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run openssl ({error}); these tests make their certificates with it: \
                 install it with `apt-get install openssl` (Debian, Ubuntu) or \
                 `brew install openssl` (macOS)"
            )
        });
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Returns the fixtures, generating them on first use:
///
/// - `ca.pem`, `ca.der`, `ca.key`: a self-signed RSA CA;
/// - `leaf.pem`, `leaf.der`, `leaf.key` (PKCS#8): an RSA certificate issued by the CA;
/// - `leaf.pkcs1.key`, `leaf.enc.key` (PKCS#8 with PBES2 and [`PASSWORD`]),
///   `leaf.legacy-enc.key` (OpenSSL's legacy PEM encryption);
/// - `ec.pem`, `ec.key`: a self-signed P-256 certificate;
/// - `small.pem`, `small.key`: a self-signed 1024-bit RSA certificate;
/// - PKCS#12 files with the leaf, its key and the CA, protected by [`PASSWORD`]:
///   `modern.p12` (OpenSSL 3 defaults), `3des.p12` (SHA-1 3DES and a SHA-1 MAC),
///   `rc2.p12` (OpenSSL's `-legacy`, with RC2-40 certificates) and `aes128.p12`
///   (unencrypted certificates);
/// - PKCS#12 files without a password: `empty-password.p12` (the password `""`) and
///   `plain.p12` (no encryption, no MAC);
/// - `ec.p12`, with the EC key and [`PASSWORD`].
pub fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(generate)
}

fn generate() -> Fixtures {
    // Examples include these fixtures too, and Cargo sets CARGO_TARGET_TMPDIR only for
    // integration tests and benchmarks.
    let base = option_env!("CARGO_TARGET_TMPDIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = base.join(format!("redis-entraid-certificates-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // Each command is split at spaces, so no argument contains one.
    let run = |command: &str| {
        let command = command.replace("PASSWORD", PASSWORD);
        let args: Vec<&str> = command.split_whitespace().collect();
        openssl(&dir, &args);
    };
    run("req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -subj /CN=test-ca -days 2");
    run("req -new -newkey rsa:2048 -nodes -keyout leaf.key -out leaf.csr -subj /CN=test-client");
    // Extensions make the leaf an X.509 v3 certificate, which webpki requires.
    std::fs::write(dir.join("leaf.ext"), "basicConstraints=CA:FALSE\n").unwrap();
    run(
        "x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem -days 2 \
         -extfile leaf.ext",
    );

    run("x509 -in leaf.pem -outform DER -out leaf.der");
    run("x509 -in ca.pem -outform DER -out ca.der");
    run("rsa -in leaf.key -traditional -out leaf.pkcs1.key");

    run("pkcs8 -topk8 -v2 aes-256-cbc -in leaf.key -passout pass:PASSWORD -out leaf.enc.key");
    run("rsa -in leaf.key -traditional -aes256 -passout pass:PASSWORD -out leaf.legacy-enc.key");

    run(
        "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ec.key \
         -out ec.pem -subj /CN=ec -days 2",
    );
    run(
        "req -x509 -newkey rsa:1024 -nodes -keyout small.key -out small.pem -subj /CN=small \
         -days 2",
    );

    let export = "pkcs12 -export -inkey leaf.key -in leaf.pem -certfile ca.pem";
    run(&format!("{export} -passout pass:PASSWORD -out modern.p12"));
    run(&format!(
        "{export} -passout pass:PASSWORD -out 3des.p12 -keypbe PBE-SHA1-3DES \
         -certpbe PBE-SHA1-3DES -macalg sha1"
    ));
    run(&format!(
        "{export} -passout pass:PASSWORD -out rc2.p12 -legacy"
    ));
    run(&format!(
        "{export} -passout pass:PASSWORD -out aes128.p12 -keypbe AES-128-CBC -certpbe NONE"
    ));
    run(&format!("{export} -passout pass: -out empty-password.p12"));
    run(&format!(
        "{export} -passout pass: -out plain.p12 -keypbe NONE -certpbe NONE -nomac"
    ));

    run("pkcs12 -export -inkey ec.key -in ec.pem -passout pass:PASSWORD -out ec.p12");
    Fixtures { dir }
}
