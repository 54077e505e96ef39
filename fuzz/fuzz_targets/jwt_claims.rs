//! Fuzzes `Claims::from_jwt` with the checks in `redis_entraid_fuzz::check_jwt_claims`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| redis_entraid_fuzz::check_jwt_claims(input));
