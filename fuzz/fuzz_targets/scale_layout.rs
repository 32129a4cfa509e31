//! libFuzzer entry for fuzz/bodies/scale_layout.rs.
#![no_main]

#[path = "../bodies/scale_layout.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
