//! Fuzzes the managed-identity exchanges with the checks in
//! `redis_entraid_fuzz::check_managed_identity_response`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| redis_entraid_fuzz::check_managed_identity_response(input));
