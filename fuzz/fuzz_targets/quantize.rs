//! libFuzzer entry for fuzz/bodies/quantize.rs.
#![no_main]

#[path = "../bodies/quantize.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
