//! Password-based decryption and MACs for PKCS#12 files and encrypted PKCS#8 keys.
//!
//! Two families are supported. PBES2 (RFC 8018) derives the key with PBKDF2 over
//! HMAC-SHA-1 or SHA-2 and decrypts with AES-CBC or 3DES-CBC, as OpenSSL 3 writes by
//! default. The PKCS#12 algorithms of RFC 7292 appendix C derive keys with SHA-1 and
//! decrypt with 3DES or RC2, as Windows and OpenSSL 1.x write.

use std::num::NonZeroU32;

use aes::{Aes128, Aes192, Aes256};
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockCipherDecrypt, BlockModeDecrypt, InnerIvInit, KeyInit, KeyIvInit};
use des::{TdesEde2, TdesEde3};
use rc2::Rc2;
use ring::{digest, hmac, pbkdf2};
use zeroize::Zeroizing;

use super::der::{self, Malformed, OCTET_STRING, SEQUENCE};

const PBES2: &str = "1.2.840.113549.1.5.13";
const PBKDF2: &str = "1.2.840.113549.1.5.12";
const PBMAC1: &str = "1.2.840.113549.1.5.14";
const PBE_SHA1_3DES: &str = "1.2.840.113549.1.12.1.3";
const PBE_SHA1_2DES: &str = "1.2.840.113549.1.12.1.4";
const PBE_SHA1_RC2_128: &str = "1.2.840.113549.1.12.1.5";
const PBE_SHA1_RC2_40: &str = "1.2.840.113549.1.12.1.6";
const HMAC_SHA1: &str = "1.2.840.113549.2.7";
const HMAC_SHA256: &str = "1.2.840.113549.2.9";
const HMAC_SHA384: &str = "1.2.840.113549.2.10";
const HMAC_SHA512: &str = "1.2.840.113549.2.11";
const AES128_CBC: &str = "2.16.840.1.101.3.4.1.2";
const AES192_CBC: &str = "2.16.840.1.101.3.4.1.22";
const AES256_CBC: &str = "2.16.840.1.101.3.4.1.42";
const DES_EDE3_CBC: &str = "1.2.840.113549.3.7";
const SHA1: &str = "1.3.14.3.2.26";
const SHA256: &str = "2.16.840.1.101.3.4.2.1";
const SHA384: &str = "2.16.840.1.101.3.4.2.2";
const SHA512: &str = "2.16.840.1.101.3.4.2.3";

/// The largest accepted iteration count. OpenSSL writes 2,048 by default, and the limit
/// stops a damaged count (up to 2^32 - 1) from hanging the caller for minutes.
const MAX_ITERATIONS: u32 = 10_000_000;

/// A password in the two encodings PKCS#12 uses.
pub(crate) struct Password {
    /// UTF-8 bytes, the input to PBKDF2.
    utf8: Zeroizing<Vec<u8>>,
    /// UTF-16BE with a two-byte terminator, the input to the PKCS#12 key derivation.
    /// It is empty for the absent password.
    bmp: Zeroizing<Vec<u8>>,
}

impl Password {
    pub(crate) fn new(password: &str) -> Self {
        let mut bmp = Zeroizing::new(Vec::with_capacity(password.len() * 2 + 2));
        for unit in password.encode_utf16() {
            bmp.extend_from_slice(&unit.to_be_bytes());
        }
        bmp.extend_from_slice(&[0, 0]);
        Password {
            utf8: Zeroizing::new(password.as_bytes().to_vec()),
            bmp,
        }
    }

    /// Returns the absent password: zero bytes, where `""` is the terminator alone.
    /// A file without a password may use either form for its MAC and keys.
    ///
    /// NOTE: the tests cover only the terminator form, the one that the openssl tool
    /// writes for `-passout pass:`.
    pub(crate) fn absent() -> Self {
        Password {
            utf8: Zeroizing::new(Vec::new()),
            bmp: Zeroizing::new(Vec::new()),
        }
    }
}

/// A failure to decrypt data or to verify a MAC.
#[derive(Debug)]
pub(crate) enum PbeError {
    /// The data is not what the algorithm identifiers describe.
    Malformed(Malformed),
    /// An algorithm this crate does not implement.
    Unsupported(String),
    /// The padding is wrong after decryption, which almost always means a wrong
    /// password.
    Decrypt,
}

impl From<Malformed> for PbeError {
    fn from(e: Malformed) -> Self {
        PbeError::Malformed(e)
    }
}

type Result<T> = std::result::Result<T, PbeError>;

/// Decrypts `ciphertext` with the algorithm that the AlgorithmIdentifier `algorithm`
/// names (its OID and parameters).
pub(crate) fn decrypt(
    algorithm: der::Element<'_>,
    ciphertext: &[u8],
    password: &Password,
) -> Result<Zeroizing<Vec<u8>>> {
    let mut fields = algorithm.children();
    let oid = fields.oid()?;
    let params = fields.next()?;
    match (oid.as_str(), params) {
        (PBES2, Some(params)) => decrypt_pbes2(params, ciphertext, password),
        (PBE_SHA1_3DES | PBE_SHA1_2DES | PBE_SHA1_RC2_128 | PBE_SHA1_RC2_40, Some(params)) => {
            decrypt_pkcs12_pbe(&oid, params, ciphertext, password)
        }
        (PBES2 | PBE_SHA1_3DES | PBE_SHA1_2DES | PBE_SHA1_RC2_128 | PBE_SHA1_RC2_40, None) => {
            Err(Malformed::new("the encryption algorithm has no parameters").into())
        }
        (other, _) => Err(PbeError::Unsupported(format!(
            "encryption algorithm {other}"
        ))),
    }
}

/// Decrypts with one of RFC 7292 appendix C's algorithms: keys and IVs from the PKCS#12
/// derivation over SHA-1.
fn decrypt_pkcs12_pbe(
    oid: &str,
    params: der::Element<'_>,
    ciphertext: &[u8],
    password: &Password,
) -> Result<Zeroizing<Vec<u8>>> {
    let mut fields = params.children();
    let salt = fields.expect(OCTET_STRING)?.contents;
    let iterations = iterations(fields.u32()?)?;
    let sha1 = &digest::SHA1_FOR_LEGACY_USE_ONLY;
    let derive = |id, len| pkcs12_kdf(sha1, &password.bmp, salt, id, iterations, len);
    let iv = derive(KDF_IV, 8);
    match oid {
        PBE_SHA1_3DES => cbc_decrypt::<TdesEde3>(&derive(KDF_KEY, 24), &iv, ciphertext),
        PBE_SHA1_2DES => cbc_decrypt::<TdesEde2>(&derive(KDF_KEY, 16), &iv, ciphertext),
        PBE_SHA1_RC2_128 => rc2_decrypt(&derive(KDF_KEY, 16), 128, &iv, ciphertext),
        _ => rc2_decrypt(&derive(KDF_KEY, 5), 40, &iv, ciphertext),
    }
}

/// Decrypts with PBES2 (RFC 8018 section 6.2): PBKDF2, then a CBC cipher.
fn decrypt_pbes2(
    params: der::Element<'_>,
    ciphertext: &[u8],
    password: &Password,
) -> Result<Zeroizing<Vec<u8>>> {
    let mut fields = params.children();
    let kdf = fields.expect(SEQUENCE)?;
    let scheme = fields.expect(SEQUENCE)?;
    let mut scheme_fields = scheme.children();
    let cipher = scheme_fields.oid()?;
    let iv = scheme_fields.expect(OCTET_STRING)?.contents;
    let key_len = match cipher.as_str() {
        AES128_CBC => 16,
        AES192_CBC => 24,
        AES256_CBC => 32,
        DES_EDE3_CBC => 24,
        other => return Err(PbeError::Unsupported(format!("PBES2 cipher {other}"))),
    };
    let key = pbkdf2_key(kdf, &password.utf8, key_len)?;
    match cipher.as_str() {
        AES128_CBC => cbc_decrypt::<Aes128>(&key, iv, ciphertext),
        AES192_CBC => cbc_decrypt::<Aes192>(&key, iv, ciphertext),
        AES256_CBC => cbc_decrypt::<Aes256>(&key, iv, ciphertext),
        _ => cbc_decrypt::<TdesEde3>(&key, iv, ciphertext),
    }
}

/// Derives a key of `len` bytes with PBKDF2 from its AlgorithmIdentifier.
fn pbkdf2_key(kdf: der::Element<'_>, secret: &[u8], len: usize) -> Result<Zeroizing<Vec<u8>>> {
    let mut fields = kdf.children();
    let oid = fields.oid()?;
    if oid != PBKDF2 {
        return Err(PbeError::Unsupported(format!("key derivation {oid}")));
    }
    let mut params = fields.expect(SEQUENCE)?.children();
    let salt = params.expect(OCTET_STRING)?.contents;
    let iterations = iterations(params.u32()?)?;
    if let Some(key_len) = params.optional(der::INTEGER)?
        && key_len.u32()? as usize != len
    {
        let reason = "the PBKDF2 key length does not match the cipher";
        return Err(Malformed::new(reason).into());
    }
    let prf = match params.optional(SEQUENCE)? {
        Some(prf) => prf.children().oid()?,
        None => HMAC_SHA1.to_owned(),
    };
    let algorithm = match prf.as_str() {
        HMAC_SHA1 => pbkdf2::PBKDF2_HMAC_SHA1,
        HMAC_SHA256 => pbkdf2::PBKDF2_HMAC_SHA256,
        HMAC_SHA384 => pbkdf2::PBKDF2_HMAC_SHA384,
        HMAC_SHA512 => pbkdf2::PBKDF2_HMAC_SHA512,
        other => return Err(PbeError::Unsupported(format!("PBKDF2 function {other}"))),
    };
    let mut key = Zeroizing::new(vec![0; len]);
    pbkdf2::derive(algorithm, iterations, salt, secret, &mut key);
    Ok(key)
}

fn iterations(count: u32) -> Result<NonZeroU32> {
    match NonZeroU32::new(count) {
        Some(n) if count <= MAX_ITERATIONS => Ok(n),
        _ => Err(Malformed::new(format!(
            "the iteration count {count} is outside 1 to {MAX_ITERATIONS}"
        ))
        .into()),
    }
}

fn cbc_decrypt<C>(key: &[u8], iv: &[u8], ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>>
where
    C: BlockCipherDecrypt + KeyInit,
{
    let decryptor = cbc::Decryptor::<C>::new_from_slices(key, iv)
        .map_err(|_| Malformed::new("the cipher's IV has the wrong length"))?;
    unpad(decryptor, ciphertext)
}

fn rc2_decrypt(
    key: &[u8],
    effective_bits: usize,
    iv: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let cipher = Rc2::new_with_eff_key_len(key, effective_bits);
    let decryptor = cbc::Decryptor::inner_iv_slice_init(cipher, iv)
        .map_err(|_| Malformed::new("the cipher's IV has the wrong length"))?;
    unpad(decryptor, ciphertext)
}

fn unpad<C: BlockCipherDecrypt>(
    decryptor: cbc::Decryptor<C>,
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let mut buffer = Zeroizing::new(ciphertext.to_vec());
    let len = decryptor
        .decrypt_padded::<Pkcs7>(&mut buffer)
        .map_err(|_| PbeError::Decrypt)?
        .len();
    buffer.truncate(len);
    Ok(buffer)
}

/// Checks the MAC of a PKCS#12 file (RFC 7292 section 5.1 and appendix B.4): an HMAC
/// over `content` with a key from the PKCS#12 derivation. Returns `Ok(false)` for a
/// wrong password.
pub(crate) fn verify_mac(
    mac_data: der::Element<'_>,
    content: &[u8],
    password: &Password,
) -> Result<bool> {
    let mut fields = mac_data.children();
    let mut digest_info = fields.expect(SEQUENCE)?.children();
    let mut algorithm = digest_info.expect(SEQUENCE)?.children();
    let oid = algorithm.oid()?;
    let expected = digest_info.expect(OCTET_STRING)?.contents;
    let salt = fields.expect(OCTET_STRING)?.contents;
    let iterations = if fields.is_empty() {
        NonZeroU32::MIN
    } else {
        iterations(fields.u32()?)?
    };
    let (digest, hmac) = match oid.as_str() {
        SHA1 => (
            &digest::SHA1_FOR_LEGACY_USE_ONLY,
            hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        ),
        SHA256 => (&digest::SHA256, hmac::HMAC_SHA256),
        SHA384 => (&digest::SHA384, hmac::HMAC_SHA384),
        SHA512 => (&digest::SHA512, hmac::HMAC_SHA512),
        PBMAC1 => {
            return Err(PbeError::Unsupported(
                "MAC algorithm PBMAC1 (RFC 9579)".to_owned(),
            ));
        }
        other => return Err(PbeError::Unsupported(format!("MAC digest {other}"))),
    };
    let key_bytes = pkcs12_kdf(
        digest,
        &password.bmp,
        salt,
        KDF_MAC,
        iterations,
        digest.output_len(),
    );
    let key = hmac::Key::new(hmac, &key_bytes);
    Ok(hmac::verify(&key, content, expected).is_ok())
}

/// The purpose byte of the PKCS#12 derivation: key, IV or MAC key.
const KDF_KEY: u8 = 1;
const KDF_IV: u8 = 2;
const KDF_MAC: u8 = 3;

/// Derives `len` bytes with the PKCS#12 key derivation (RFC 7292 appendix B.2).
fn pkcs12_kdf(
    algorithm: &'static digest::Algorithm,
    password_bmp: &[u8],
    salt: &[u8],
    id: u8,
    iterations: NonZeroU32,
    len: usize,
) -> Zeroizing<Vec<u8>> {
    let block_len = algorithm.block_len();
    // Each input is repeated to fill whole blocks; an empty input stays empty.
    let fill = |input: &[u8]| -> Vec<u8> {
        let total = block_len * input.len().div_ceil(block_len);
        input.iter().copied().cycle().take(total).collect()
    };
    let diversifier = vec![id; block_len];
    let mut state = Zeroizing::new(fill(salt));
    state.extend(fill(password_bmp));
    let mut out = Zeroizing::new(Vec::with_capacity(len));
    loop {
        let mut context = digest::Context::new(algorithm);
        context.update(&diversifier);
        context.update(&state);
        let mut hash = context.finish();
        for _ in 1..iterations.get() {
            hash = digest::digest(algorithm, hash.as_ref());
        }
        let hash = hash.as_ref();
        let take = hash.len().min(len - out.len());
        out.extend_from_slice(&hash[..take]);
        if out.len() == len {
            return out;
        }
        // Each block of the state becomes (block + B + 1) mod 2^(8 * block_len), where
        // B is the hash repeated to one block.
        let b: Vec<u8> = hash.iter().copied().cycle().take(block_len).collect();
        for block in state.chunks_mut(block_len) {
            let mut carry = 1u16;
            for (byte, add) in block.iter_mut().zip(&b).rev() {
                let sum = u16::from(*byte) + u16::from(*add) + carry;
                *byte = sum as u8;
                carry = sum >> 8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Set 1 of Stephen Henson's PKCS#12 derivation test vectors, which BouncyCastle's
    /// PKCS#12 tests also use: password "smeg", salt 0a58cf64530d823f, one iteration.
    #[test]
    fn pkcs12_kdf_matches_known_vectors() {
        let password = Password::new("smeg");
        let salt = [0x0a, 0x58, 0xcf, 0x64, 0x53, 0x0d, 0x82, 0x3f];
        let sha1 = &digest::SHA1_FOR_LEGACY_USE_ONLY;
        let key = pkcs12_kdf(sha1, &password.bmp, &salt, KDF_KEY, NonZeroU32::MIN, 24);
        assert_eq!(
            hex(&key),
            "8aaae6297b6cb04642ab5b077851284eb7128f1a2a7fbca3"
        );
        let iv = pkcs12_kdf(sha1, &password.bmp, &salt, KDF_IV, NonZeroU32::MIN, 8);
        assert_eq!(hex(&iv), "79993dfe048d3b76");
    }

    #[test]
    fn password_encodings() {
        let password = Password::new("aé");
        assert_eq!(password.bmp.as_slice(), [0, b'a', 0, 0xe9, 0, 0]);
        assert_eq!(password.utf8.as_slice(), "aé".as_bytes());
        assert!(Password::absent().bmp.is_empty());
        assert_eq!(Password::new("").bmp.as_slice(), [0, 0]);
    }

    #[test]
    fn iteration_counts_are_bounded() {
        assert!(iterations(0).is_err());
        assert!(iterations(MAX_ITERATIONS + 1).is_err());
        assert_eq!(iterations(2048).unwrap().get(), 2048);
    }
}
