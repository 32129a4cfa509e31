//! quantize on arbitrary shapes, options and values: never panics; when it succeeds the tensor is
//! valid, dequantizes to the right length, and every finite input within the grid's range comes back
//! with the right sign or as zero.
//!
//! Shared by the libFuzzer target (fuzz/fuzz_targets/) and the stable replay test
//! (tests/fuzz_replay.rs), so a crash found once stays a regression test.

use nvfp4::format::{ScaleLayout, ZeroSign};
use nvfp4::quant::{self, GlobalScale, GlobalScaleRule, NonFinite, QuantizeOptions};

/// Runs one input; panics on a property violation.
pub fn run(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let (head, body) = data.split_at(8);
    let rows = (head[0] % 9) as usize;
    let cols = head[1] as usize % 80;
    let flags = head[2];
    let opts = QuantizeOptions {
        global_scale: match flags & 3 {
            0 => GlobalScale::FromAmax(GlobalScaleRule::Divide),
            1 => GlobalScale::FromAmax(GlobalScaleRule::Reciprocal),
            _ => GlobalScale::Given(f32::from_le_bytes([head[3], head[4], head[5], head[6]])),
        },
        zero_sign: if flags & 4 != 0 {
            ZeroSign::Hardware
        } else {
            ZeroSign::ModelOpt
        },
        scale_layout: if flags & 8 != 0 {
            ScaleLayout::Swizzled128x4
        } else {
            ScaleLayout::Linear
        },
        non_finite: if flags & 16 != 0 {
            NonFinite::Saturate
        } else {
            NonFinite::Error
        },
        pad_k: flags & 32 != 0,
        clamp_scale: flags & 64 != 0,
    };
    let x: Vec<f32> = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let Ok(q) = quant::quantize("fuzz", &x, rows, cols, &opts) else {
        return;
    };
    assert_eq!(q.shape(), [rows, cols]);
    let back: Vec<f32> = quant::dequantize(&q);
    assert_eq!(back.len(), x.len());
    for (a, b) in x.iter().zip(&back) {
        assert!(!b.is_nan(), "dequantized NaN from {a}");
        assert!(
            *b == 0.0 || a.is_nan() || (a.is_sign_negative() == b.is_sign_negative()),
            "{a} -> {b}"
        );
    }
}
