//! Linear <-> swizzled scale layouts on arbitrary shapes: the round trip is the identity, and the
//! swizzled padding is zero.
//!
//! Shared by the libFuzzer target (fuzz/fuzz_targets/) and the stable replay test
//! (tests/fuzz_replay.rs), so a crash found once stays a regression test.

use nvfp4::format::{ScaleLayout, scale_layout};

/// Runs one input; panics on a property violation.
pub fn run(data: &[u8]) {
    if data.len() < 3 {
        return;
    }
    let rows = data[0] as usize % 200 + 1;
    let block_cols = data[1] as usize % 20 + 1;
    let src: Vec<u8> = (0..rows * block_cols)
        .map(|i| data[2 + i % (data.len() - 2)].wrapping_add(1) | 1)
        .collect();
    let swz = scale_layout::convert(
        &src,
        rows,
        block_cols,
        ScaleLayout::Linear,
        ScaleLayout::Swizzled128x4,
    )
    .unwrap();
    let nonzero = swz.iter().filter(|&&b| b != 0).count();
    assert_eq!(
        nonzero,
        rows * block_cols,
        "padding must be zero, every real scale is odd"
    );
    let back = scale_layout::convert(
        &swz,
        rows,
        block_cols,
        ScaleLayout::Swizzled128x4,
        ScaleLayout::Linear,
    )
    .unwrap();
    assert_eq!(back, src);
    assert!(
        scale_layout::convert(
            &src[1..],
            rows,
            block_cols,
            ScaleLayout::Linear,
            ScaleLayout::Linear
        )
        .is_err()
    );
}
