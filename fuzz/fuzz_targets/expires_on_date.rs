//! Fuzzes the `expires_on` date parser with the checks in
//! `redis_entraid_fuzz::check_expires_on_date`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| redis_entraid_fuzz::check_expires_on_date(input));
