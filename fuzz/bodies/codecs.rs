//! Every encoder on arbitrary f32/f16/bf16 bit patterns: never panics, and each code decodes to a value
//! that is a nearest representable one (checked against the neighbours of the decoded value).
//!
//! Shared by the libFuzzer target (fuzz/fuzz_targets/) and the stable replay test
//! (tests/fuzz_replay.rs), so a crash found once stays a regression test.

use half::{bf16, f16};
use nvfp4::format::{ZeroSign, e2m1, e4m3};

fn check(x: f32) {
    for zs in [ZeroSign::Hardware, ZeroSign::ModelOpt] {
        let c = e2m1::encode_f32(x, zs);
        assert!(c < 16);
        let v = e2m1::decode_f32(c);
        if x.is_nan() {
            assert_eq!(c, 0x7);
            continue;
        }
        // No other E2M1 value is strictly closer (saturation aside).
        let a = x.abs().min(6.0) as f64;
        for other in e2m1::VALUES {
            assert!(
                (other.abs() as f64 - a).abs() >= (v.abs() as f64 - a).abs(),
                "{x} -> {c:#x}"
            );
        }
    }
    for ov in [e4m3::Overflow::SatFinite, e4m3::Overflow::NonSaturating] {
        let b = e4m3::encode_f32(x, ov);
        let v = e4m3::decode_f32(b);
        if x.is_finite() && x.abs() <= 448.0 {
            let a = x.abs() as f64;
            for o in 0..0x7Fu8 {
                let ov = e4m3::decode_f32(o) as f64;
                assert!((ov - a).abs() >= (v.abs() as f64 - a).abs(), "{x} -> {b:#x}");
            }
        }
    }
}

/// Runs one input; panics on a property violation.
pub fn run(data: &[u8]) {
    for c in data.chunks_exact(4) {
        let bits = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        check(f32::from_bits(bits));
        check(f16::from_bits(bits as u16).to_f32());
        check(bf16::from_bits((bits >> 16) as u16).to_f32());
    }
}
