//! Fuzzes `ClientCertificate::from_bytes` (PEM, PKCS#12 and the DER reader behind both)
//! with the checks in `redis_entraid_fuzz::check_certificate_bytes`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| redis_entraid_fuzz::check_certificate_bytes(input));
