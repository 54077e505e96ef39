//! Reads the private keys and certificates of a PKCS#12 (PFX) file, RFC 7292.
//!
//! Only the password integrity and password privacy modes are supported, the modes that
//! OpenSSL and Windows export with.

use zeroize::Zeroizing;

use super::der::{self, CONTEXT_0, CONTEXT_0_PRIMITIVE, Malformed, OCTET_STRING, SEQUENCE};
use super::pbe::{self, Password, PbeError};

const DATA: &str = "1.2.840.113549.1.7.1";
const SIGNED_DATA: &str = "1.2.840.113549.1.7.2";
const ENVELOPED_DATA: &str = "1.2.840.113549.1.7.3";
const ENCRYPTED_DATA: &str = "1.2.840.113549.1.7.6";
const KEY_BAG: &str = "1.2.840.113549.1.12.10.1.1";
const SHROUDED_KEY_BAG: &str = "1.2.840.113549.1.12.10.1.2";
const CERT_BAG: &str = "1.2.840.113549.1.12.10.1.3";
const SAFE_CONTENTS_BAG: &str = "1.2.840.113549.1.12.10.1.6";
const X509_CERTIFICATE: &str = "1.2.840.113549.1.9.22.1";

/// Nesting limit for safe-contents bags inside each other.
const MAX_BAG_DEPTH: usize = 4;

/// The keys and certificates of a PKCS#12 file, in file order.
#[derive(Default)]
pub(crate) struct Contents {
    /// PKCS#8 `PrivateKeyInfo` encodings, decrypted.
    pub(crate) keys: Vec<Zeroizing<Vec<u8>>>,
    /// DER certificates.
    pub(crate) certificates: Vec<Vec<u8>>,
}

/// The reason a PKCS#12 file could not be read.
#[derive(Debug)]
pub(crate) enum Pkcs12Error {
    Malformed(Malformed),
    Unsupported(String),
    /// The given password does not match the file's MAC or decrypt its contents.
    WrongPassword,
    /// The file needs a password and none was given.
    PasswordRequired,
}

impl From<Malformed> for Pkcs12Error {
    fn from(e: Malformed) -> Self {
        Pkcs12Error::Malformed(e)
    }
}

type Result<T> = std::result::Result<T, Pkcs12Error>;

/// Reads `der` with `password`. No password and an empty one are the same: both the
/// empty password and the absent one that OpenSSL writes with `-passout pass:` are
/// tried.
pub(crate) fn parse(der: &[u8], password: Option<&str>) -> Result<Contents> {
    let mut reader = der::Reader::new(der);
    let pfx = reader.expect(SEQUENCE)?;
    reader.finish()?;
    let mut fields = pfx.children();
    if fields.u32()? != 3 {
        return Err(Malformed::new("the PFX version is not 3").into());
    }
    let auth_safe = auth_safe_octets(fields.expect(SEQUENCE)?)?;
    let mac_data = fields.optional(SEQUENCE)?;

    let given_password = password.filter(|p| !p.is_empty());
    let candidates = match given_password {
        Some(password) => vec![Password::new(password)],
        None => vec![Password::new(""), Password::absent()],
    };
    let password_error = || match given_password {
        Some(_) => Pkcs12Error::WrongPassword,
        None => Pkcs12Error::PasswordRequired,
    };
    if let Some(mac_data) = mac_data {
        for candidate in &candidates {
            if pbe::verify_mac(mac_data, &auth_safe, candidate).map_err(pbe_error)? {
                return read_auth_safe(&auth_safe, candidate).map_err(|e| match e {
                    // The MAC proved the password, so a padding error is damage.
                    Pkcs12Error::WrongPassword => {
                        Malformed::new("encrypted contents do not decrypt").into()
                    }
                    other => other,
                });
            }
        }
        return Err(password_error());
    }
    // Without a MAC, the first password that decrypts everything is the right one.
    for candidate in &candidates {
        match read_auth_safe(&auth_safe, candidate) {
            Err(Pkcs12Error::WrongPassword) => continue,
            other => return other,
        }
    }
    Err(password_error())
}

/// Returns the bytes of the `authSafe` ContentInfo, which the MAC covers.
fn auth_safe_octets(content_info: der::Element<'_>) -> Result<Vec<u8>> {
    let mut fields = content_info.children();
    let content_type = fields.oid()?;
    match content_type.as_str() {
        DATA => Ok(explicit_content(&mut fields)?.octets(OCTET_STRING)?),
        SIGNED_DATA => Err(Pkcs12Error::Unsupported(
            "public-key integrity mode (a signed PFX)".to_owned(),
        )),
        other => Err(Malformed::new(format!("the PFX content type {other} is not data")).into()),
    }
}

/// Reads the `[0] EXPLICIT` content of a ContentInfo.
fn explicit_content<'a>(fields: &mut der::Reader<'a>) -> Result<der::Element<'a>> {
    let mut wrapper = fields.expect(CONTEXT_0)?.children();
    let content = wrapper
        .next()?
        .ok_or_else(|| Malformed::new("a ContentInfo has empty content"))?;
    Ok(content)
}

/// Reads the AuthenticatedSafe: a sequence of plain or encrypted SafeContents.
fn read_auth_safe(auth_safe: &[u8], password: &Password) -> Result<Contents> {
    let mut reader = der::Reader::new(auth_safe);
    let sequence = reader.expect(SEQUENCE)?;
    reader.finish()?;
    let mut contents = Contents::default();
    let mut infos = sequence.children();
    while let Some(info) = infos.next()? {
        let mut fields = info.children();
        let content_type = fields.oid()?;
        match content_type.as_str() {
            DATA => {
                let safe_contents = explicit_content(&mut fields)?.octets(OCTET_STRING)?;
                read_safe_contents(&safe_contents, password, &mut contents, 0)?;
            }
            ENCRYPTED_DATA => {
                let encrypted_data = explicit_content(&mut fields)?;
                let safe_contents = decrypt_encrypted_data(encrypted_data, password)?;
                read_safe_contents(&safe_contents, password, &mut contents, 0)?;
            }
            ENVELOPED_DATA => {
                return Err(Pkcs12Error::Unsupported(
                    "public-key privacy mode (enveloped data)".to_owned(),
                ));
            }
            other => {
                return Err(Malformed::new(format!("unknown content type {other}")).into());
            }
        }
    }
    Ok(contents)
}

/// Decrypts an EncryptedData structure (RFC 5652 section 8).
fn decrypt_encrypted_data(
    encrypted_data: der::Element<'_>,
    password: &Password,
) -> Result<Zeroizing<Vec<u8>>> {
    let mut fields = encrypted_data.children();
    fields.u32()?;
    let mut info = fields.expect(SEQUENCE)?.children();
    info.oid()?;
    let algorithm = info.expect(SEQUENCE)?;
    let ciphertext = match info.next()? {
        Some(element) => element.octets(CONTEXT_0_PRIMITIVE)?,
        None => return Err(Malformed::new("encrypted data has no ciphertext").into()),
    };
    pbe::decrypt(algorithm, &ciphertext, password).map_err(pbe_error)
}

fn read_safe_contents(
    der: &[u8],
    password: &Password,
    contents: &mut Contents,
    depth: usize,
) -> Result<()> {
    let mut reader = der::Reader::new(der);
    let sequence = reader.expect(SEQUENCE)?;
    let mut bags = sequence.children();
    while let Some(bag) = bags.next()? {
        read_bag(bag, password, contents, depth)?;
    }
    Ok(())
}

/// Reads one SafeBag. Bags of other kinds (CRLs, secrets) are skipped.
fn read_bag(
    bag: der::Element<'_>,
    password: &Password,
    contents: &mut Contents,
    depth: usize,
) -> Result<()> {
    let mut fields = bag.children();
    let bag_id = fields.oid()?;
    let value = explicit_content(&mut fields)?;
    match bag_id.as_str() {
        KEY_BAG => contents.keys.push(Zeroizing::new(value.encoded.to_vec())),
        SHROUDED_KEY_BAG => {
            let mut info = value.children();
            let algorithm = info.expect(SEQUENCE)?;
            let ciphertext = info
                .next()?
                .ok_or_else(|| Malformed::new("an encrypted private key has no ciphertext"))?;
            let ciphertext = ciphertext.octets(OCTET_STRING)?;
            let key = pbe::decrypt(algorithm, &ciphertext, password).map_err(pbe_error)?;
            contents.keys.push(key);
        }
        CERT_BAG => {
            let mut cert_bag = value.children();
            if cert_bag.oid()? == X509_CERTIFICATE {
                let certificate = explicit_content(&mut cert_bag)?.octets(OCTET_STRING)?;
                contents.certificates.push(certificate);
            }
        }
        SAFE_CONTENTS_BAG => {
            if depth >= MAX_BAG_DEPTH {
                return Err(Malformed::new("safe-contents bags nest too deeply").into());
            }
            read_safe_contents(value.encoded, password, contents, depth + 1)?;
        }
        _ => {}
    }
    Ok(())
}

fn pbe_error(error: PbeError) -> Pkcs12Error {
    match error {
        PbeError::Malformed(e) => Pkcs12Error::Malformed(e),
        PbeError::Unsupported(what) => Pkcs12Error::Unsupported(what),
        PbeError::Decrypt => Pkcs12Error::WrongPassword,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_malformed() {
        for input in [&b""[..], b"\x30\x03\x02\x01\x03", b"\x30\x80", b"not der"] {
            assert!(
                matches!(parse(input, None), Err(Pkcs12Error::Malformed(_))),
                "{input:?}"
            );
        }
    }
}
