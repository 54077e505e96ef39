//! Fuzzes the token lifecycle with the checks in `redis_entraid_fuzz::check_token_manager`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| redis_entraid_fuzz::check_token_manager(input));
