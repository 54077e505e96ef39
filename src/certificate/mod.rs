//! Service principals that authenticate with a certificate: loading the certificate and
//! its RSA key, and signing client assertions.
//!
//! Enabled by the `certificate` feature (on by default).

mod credential;
mod der;
mod from_env;
mod pbe;
mod pkcs12;

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::digest;
use ring::rand::SecureRandom;
use ring::signature::{RSA_PSS_SHA256, RsaKeyPair};
use rustls_pki_types::pem::{self, PemObject, SectionKind};
use zeroize::Zeroizing;

pub use credential::{ASSERTION_LIFETIME, ClientCertificateCredential};
#[cfg(feature = "blocking")]
pub(crate) use credential::{file_error, rename_settings};
pub(crate) use from_env::CertificateFileSource;
#[cfg(test)]
pub(crate) use from_env::MAX_CERTIFICATE_FILE_LEN;

use crate::error::Error;
use der::{BIT_STRING, Malformed, OCTET_STRING, SEQUENCE};
use pbe::{Password, PbeError};
use pkcs12::Pkcs12Error;

/// The setting named in errors about the certificate data.
pub(crate) const CERTIFICATE_SETTING: &str = "client certificate";
/// The setting named in errors about the password.
pub(crate) const PASSWORD_SETTING: &str = "client certificate password";

const RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";

/// A certificate with its RSA private key, and optionally the rest of its chain.
///
/// It is loaded from the bytes of a PEM or PKCS#12 file. The certificate whose public
/// key matches the private key becomes the leaf, whatever its position in the file.
/// `Debug` shows the thumbprint and the chain length, never the key.
#[derive(Clone)]
pub struct ClientCertificate {
    key: Arc<RsaKeyPair>,
    /// DER certificates, the leaf first and the others in file order.
    chain: Arc<[Vec<u8>]>,
    thumbprint: String,
}

impl ClientCertificate {
    /// Loads a PEM or PKCS#12 file's contents: data that contains `-----BEGIN` is read
    /// as PEM, anything else as PKCS#12.
    ///
    /// `password` decrypts a PKCS#12 file or an `ENCRYPTED PRIVATE KEY` PEM block; it is
    /// ignored for an unencrypted PEM key. `None` and `Some("")` are the same.
    pub fn from_bytes(bytes: &[u8], password: Option<&str>) -> Result<Self, Error> {
        if find(bytes, b"-----BEGIN").is_some() {
            Self::from_pem(bytes, password)
        } else if bytes.first() == Some(&der::SEQUENCE) {
            Self::from_pkcs12(bytes, password)
        } else {
            Err(certificate_error(
                "the data is neither PEM nor PKCS#12; use a PEM file with the certificate \
                 and its private key, or a PKCS#12 (.pfx, .p12) file",
            ))
        }
    }

    /// Loads PEM data: `CERTIFICATE` blocks and one private key, as `PRIVATE KEY`
    /// (PKCS#8), `RSA PRIVATE KEY` (PKCS#1) or `ENCRYPTED PRIVATE KEY` (PKCS#8 with
    /// PBES2, decrypted with `password`).
    pub fn from_pem(pem: &[u8], password: Option<&str>) -> Result<Self, Error> {
        if find(pem, b"Proc-Type: 4,ENCRYPTED").is_some() {
            return Err(certificate_error(
                "the private key uses OpenSSL's legacy PEM encryption (a Proc-Type header), \
                 which is not supported; convert it with `openssl pkcs8 -topk8 -v2 \
                 aes-256-cbc`, or export a PKCS#12 file",
            ));
        }
        let mut certificates = Vec::new();
        let mut keys = Vec::new();
        for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
            let (kind, der) = section.map_err(pem_error)?;
            match kind {
                SectionKind::Certificate => certificates.push(der),
                SectionKind::PrivateKey => keys.push(rsa_key_from_pkcs8(&Zeroizing::new(der))),
                SectionKind::RsaPrivateKey => keys.push(rsa_key_from_pkcs1(&Zeroizing::new(der))),
                SectionKind::EcPrivateKey => keys.push(Err(not_rsa("an EC key"))),
                _ => {}
            }
        }
        for encrypted in encrypted_pem_keys(pem)? {
            keys.push(decrypt_pkcs8(&encrypted, password));
        }
        Self::assemble(keys, certificates)
    }

    /// Loads a PKCS#12 (PFX) file, with or without a password.
    ///
    /// Supported: PBES2 with AES or 3DES, the legacy SHA-1 algorithms with 3DES or RC2,
    /// and SHA-1 or SHA-2 MACs. A wrong or missing password is reported as such.
    pub fn from_pkcs12(der: &[u8], password: Option<&str>) -> Result<Self, Error> {
        let contents = pkcs12::parse(der, password).map_err(pkcs12_error)?;
        let keys = contents
            .keys
            .iter()
            .map(|key| rsa_key_from_pkcs8(key))
            .collect();
        Self::assemble(keys, contents.certificates)
    }

    /// Picks the one key and the certificate that matches it.
    fn assemble(
        keys: Vec<Result<RsaKeyPair, Error>>,
        mut certificates: Vec<Vec<u8>>,
    ) -> Result<Self, Error> {
        let key = match <[_; 1]>::try_from(keys) {
            Ok([key]) => key?,
            Err(keys) if keys.is_empty() => {
                return Err(certificate_error(
                    "no private key found; the file must contain the certificate's private \
                     key as well (in PEM, a PRIVATE KEY or RSA PRIVATE KEY block)",
                ));
            }
            Err(keys) => {
                return Err(certificate_error(format!(
                    "found {} private keys; keep only the certificate's key in the file",
                    keys.len()
                )));
            }
        };
        if certificates.is_empty() {
            return Err(certificate_error(
                "no certificate found; add the certificate (in PEM, a CERTIFICATE block) to \
                 the file with its private key",
            ));
        }
        let public_key = key.public().as_ref();
        let leaf = certificates
            .iter()
            .position(|der| rsa_public_key(der).is_ok_and(|bits| bits == public_key))
            .ok_or_else(|| {
                let which = match certificates.len() {
                    1 => "the certificate does not match the private key".to_owned(),
                    n => format!("none of the {n} certificates matches the private key"),
                };
                certificate_error(format!(
                    "{which}; put the key and its own certificate in the file"
                ))
            })?;
        let leaf_der = certificates.remove(leaf);
        certificates.insert(0, leaf_der);
        let thumbprint = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, &certificates[0]));
        Ok(ClientCertificate {
            key: Arc::new(key),
            chain: certificates.into(),
            thumbprint,
        })
    }

    /// Returns the SHA-256 thumbprint of the leaf certificate in base64url without
    /// padding, as the assertion's `x5t#S256` header carries it.
    pub fn thumbprint_sha256(&self) -> &str {
        &self.thumbprint
    }

    /// Returns the DER certificates: the leaf first, then the others in file order.
    pub fn chain(&self) -> &[Vec<u8>] {
        &self.chain
    }

    /// Returns the chain as the `x5c` header carries it: standard base64 of each DER
    /// certificate, leaf first.
    pub(crate) fn x5c(&self) -> Vec<String> {
        self.chain.iter().map(|der| STANDARD.encode(der)).collect()
    }

    /// Signs `message` with RSASSA-PSS, SHA-256, MGF1 with SHA-256 and a 32-byte salt.
    ///
    /// Fails with [`Error::Config`] when the key is damaged, and with [`Error::Io`] when
    /// the random number generator fails.
    pub(crate) fn sign_ps256(
        &self,
        random: &dyn SecureRandom,
        message: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(&RSA_PSS_SHA256, random, message, &mut signature)
            .map_err(|_| {
                // ring 0.17 fails a signature when the generator fails, or when the result
                // does not verify with the public key. The second happens for a key whose
                // CRT exponents are wrong, which ring does not check when it loads a key.
                if random.fill(&mut [0; 1]).is_err() {
                    random_error()
                } else {
                    damaged_key_error()
                }
            })?;
        Ok(signature)
    }
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("thumbprint_sha256", &self.thumbprint)
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// The error for a failed read of the operating system's random number generator while
/// signing.
pub(crate) fn random_error() -> Error {
    Error::Io {
        operation: "sign the client assertion".to_owned(),
        kind: std::io::ErrorKind::Other,
        reason: "the operating system's random number generator failed".to_owned(),
    }
}

fn damaged_key_error() -> Error {
    certificate_error(
        "the private key is damaged: a signature made with it does not verify with its \
         public key; export the certificate and its key again",
    )
}

fn certificate_error(reason: impl Into<String>) -> Error {
    Error::config(CERTIFICATE_SETTING, reason)
}

fn not_rsa(kind: &str) -> Error {
    certificate_error(format!(
        "the private key is {kind}, but only RSA keys are supported; create the certificate \
         with an RSA key of 2048 bits or more"
    ))
}

/// Parses a PKCS#8 `PrivateKeyInfo` that must hold an RSA key.
fn rsa_key_from_pkcs8(der: &[u8]) -> Result<RsaKeyPair, Error> {
    let (algorithm, private_key) = private_key_info(der)
        .map_err(|e| certificate_error(format!("the private key is malformed: {}", e.0)))?;
    match algorithm.as_str() {
        RSA_ENCRYPTION => rsa_key_from_pkcs1(private_key),
        "1.2.840.10045.2.1" => Err(not_rsa("an EC key")),
        "1.3.101.112" => Err(not_rsa("an Ed25519 key")),
        "1.3.101.113" => Err(not_rsa("an Ed448 key")),
        "1.2.840.10040.4.1" => Err(not_rsa("a DSA key")),
        "1.2.840.113549.1.1.10" => Err(not_rsa("an RSASSA-PSS-only key")),
        other => Err(not_rsa(&format!("of algorithm {other}"))),
    }
}

/// Returns the algorithm OID and the `privateKey` contents of a `PrivateKeyInfo`.
fn private_key_info(der: &[u8]) -> Result<(String, &[u8]), Malformed> {
    let mut reader = der::Reader::new(der);
    let mut fields = reader.expect(SEQUENCE)?.children();
    reader.finish()?;
    fields.u32()?;
    let algorithm = fields.expect(SEQUENCE)?.children().oid()?;
    let private_key = fields.expect(OCTET_STRING)?;
    Ok((algorithm, private_key.contents))
}

/// Parses a PKCS#1 `RSAPrivateKey`.
fn rsa_key_from_pkcs1(der: &[u8]) -> Result<RsaKeyPair, Error> {
    RsaKeyPair::from_der(der).map_err(|rejected| {
        let reason = match rejected.to_string().as_str() {
            "TooSmall" => "the RSA key is shorter than 2048 bits; create a key of 2048 bits \
                           or more"
                .to_owned(),
            "TooLarge" => "the RSA key is longer than 8192 bits; create a key of 2048 to 8192 \
                           bits"
                .to_owned(),
            other => format!("the RSA private key is invalid ({other})"),
        };
        certificate_error(reason)
    })
}

/// Decrypts an `EncryptedPrivateKeyInfo` and parses the RSA key inside.
fn decrypt_pkcs8(der: &[u8], password: Option<&str>) -> Result<RsaKeyPair, Error> {
    let Some(password) = password.filter(|p| !p.is_empty()) else {
        return Err(password_required());
    };
    let malformed = |e: Malformed| {
        certificate_error(format!("the encrypted private key is malformed: {}", e.0))
    };
    let mut reader = der::Reader::new(der);
    let mut fields = reader.expect(SEQUENCE).map_err(malformed)?.children();
    let algorithm = fields.expect(SEQUENCE).map_err(malformed)?;
    let ciphertext = fields.expect(OCTET_STRING).map_err(malformed)?;
    let plaintext = match pbe::decrypt(algorithm, ciphertext.contents, &Password::new(password)) {
        Ok(plaintext) => plaintext,
        Err(PbeError::Decrypt) => return Err(wrong_password()),
        Err(PbeError::Malformed(e)) => return Err(malformed(e)),
        Err(PbeError::Unsupported(what)) => return Err(unsupported(&what)),
    };
    // A wrong password that happens to leave valid padding yields bytes that are not
    // a PrivateKeyInfo.
    if private_key_info(&plaintext).is_err() {
        return Err(wrong_password());
    }
    rsa_key_from_pkcs8(&plaintext)
}

/// Returns the base64-decoded bodies of the `ENCRYPTED PRIVATE KEY` blocks, which
/// rustls-pki-types skips.
fn encrypted_pem_keys(pem: &[u8]) -> Result<Vec<Zeroizing<Vec<u8>>>, Error> {
    const BEGIN: &[u8] = b"-----BEGIN ENCRYPTED PRIVATE KEY-----";
    const END: &[u8] = b"-----END ENCRYPTED PRIVATE KEY-----";
    let mut keys = Vec::new();
    let mut rest = pem;
    while let Some(start) = find(rest, BEGIN) {
        let body = &rest[start + BEGIN.len()..];
        let end = find(body, END)
            .ok_or_else(|| certificate_error("an ENCRYPTED PRIVATE KEY block has no END line"))?;
        let text: Zeroizing<Vec<u8>> = Zeroizing::new(
            body[..end]
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect(),
        );
        let der = STANDARD
            .decode(&*text)
            .map_err(|_| certificate_error("an ENCRYPTED PRIVATE KEY block is not valid base64"))?;
        keys.push(Zeroizing::new(der));
        rest = &body[end + END.len()..];
    }
    Ok(keys)
}

/// Returns the `subjectPublicKey` of an RSA certificate: the DER `RSAPublicKey`.
fn rsa_public_key(certificate: &[u8]) -> Result<&[u8], Malformed> {
    let mut reader = der::Reader::new(certificate);
    let mut tbs = reader
        .expect(SEQUENCE)?
        .children()
        .expect(SEQUENCE)?
        .children();
    tbs.optional(der::CONTEXT_0)?;
    // Skip serialNumber, signature, issuer, validity and subject.
    for _ in 0..5 {
        tbs.next()?;
    }
    let mut spki = tbs.expect(SEQUENCE)?.children();
    if spki.expect(SEQUENCE)?.children().oid()? != RSA_ENCRYPTION {
        return Err(Malformed::new("not an RSA certificate"));
    }
    match spki.expect(BIT_STRING)?.contents {
        [0, bits @ ..] => Ok(bits),
        _ => Err(Malformed::new("the public key has unused bits")),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn pem_error(error: pem::Error) -> Error {
    // The variants carry a line or a base64 error, which may be key material, so only
    // their kind is reported.
    let kind = match error {
        pem::Error::MissingSectionEnd { .. } => "a block has no END line",
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a block is not valid base64",
        _ => "it cannot be read",
    };
    certificate_error(format!("the PEM data is malformed: {kind}"))
}

fn pkcs12_error(error: Pkcs12Error) -> Error {
    match error {
        Pkcs12Error::Malformed(e) => certificate_error(format!(
            "the PKCS#12 data is malformed ({}); check that the path names the right file, \
             or export it again",
            e.0
        )),
        Pkcs12Error::Unsupported(what) => unsupported(&what),
        Pkcs12Error::WrongPassword => wrong_password(),
        Pkcs12Error::PasswordRequired => password_required(),
    }
}

fn unsupported(what: &str) -> Error {
    certificate_error(format!(
        "the file uses {what}, which is not supported; export it again with AES-256-CBC and \
         a SHA-256 MAC (the defaults of `openssl pkcs12 -export` in OpenSSL 3)"
    ))
}

fn wrong_password() -> Error {
    Error::config(
        PASSWORD_SETTING,
        "the password does not decrypt the file; check the password",
    )
}

fn password_required() -> Error {
    Error::config(
        PASSWORD_SETTING,
        "the file is encrypted with a password, but no password was given; set the password",
    )
}
