//! libFuzzer entry for fuzz/bodies/codecs.rs.
#![no_main]

#[path = "../bodies/codecs.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
