//! libFuzzer entry for fuzz/bodies/cli.rs.
#![no_main]

#[path = "../bodies/cli.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
