//! Slow, obviously correct E2M1 and E4M3 codecs written from the definitions (nvfp4-format.md
//! §0.1-§0.3), never calling the crate's: the references that tests/format_exhaustive.rs checks the
//! crate against exhaustively and that tests/quant_props.rs re-implements §0.5 with.
#![allow(dead_code)]

use nvfp4::format::{Overflow, ZeroSign};

/// E2M1 (§0.1): `S EE M`, bias 1; exponent 0 is subnormal `M * 0.5`, otherwise `(1 + M/2) * 2^(E-1)`.
pub fn e2m1_def(code: u8) -> f64 {
    let (s, e, m) = ((code >> 3) & 1, (code >> 1) & 3, code & 1);
    let mag = if e == 0 {
        f64::from(m) * 0.5
    } else {
        (1.0 + f64::from(m) / 2.0) * 2f64.powi(i32::from(e) - 1)
    };
    if s == 1 { -mag } else { mag }
}

/// The eight E2M1 magnitudes, indexed by the 3-bit code.
pub const E2M1_MAGS: [f64; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];

/// E4M3 (§0.3): `S EEEE MMM`, bias 7, subnormals `M * 2^-9`, 0x7F/0xFF NaN, no Inf.
pub fn e4m3_def(b: u8) -> f64 {
    let (s, e, m) = (b >> 7, (b >> 3) & 0xF, b & 7);
    if e == 0xF && m == 7 {
        return if s == 1 { -f64::NAN } else { f64::NAN };
    }
    let mag = if e == 0 {
        f64::from(m) * 2f64.powi(-9)
    } else {
        (1.0 + f64::from(m) / 8.0) * 2f64.powi(i32::from(e) - 7)
    };
    if s == 1 { -mag } else { mag }
}

/// The 127 finite non-negative E4M3 values, indexed by their byte 0x00..=0x7E.
pub fn e4m3_mags() -> Vec<f64> {
    (0u8..=0x7E).map(e4m3_def).collect()
}

/// Index of the candidate nearest to `a`, ties to the even index (brute force over all candidates).
pub fn nearest_even(a: f64, candidates: &[f64]) -> usize {
    let (mut best, mut best_d) = (0, f64::INFINITY);
    for (i, &v) in candidates.iter().enumerate() {
        let d = (a - v).abs();
        if d < best_d || (d == best_d && i % 2 == 0) {
            best = i;
            best_d = d;
        }
    }
    best
}

/// E2M1 encode (§0.2): nearest, ties to even code, saturate above 6 (Inf too), NaN -> 0x7.
pub fn e2m1_ref(x: f64, zs: ZeroSign) -> u8 {
    if x.is_nan() {
        return 0x7;
    }
    let a = x.abs();
    let mag = if a > 6.0 {
        7
    } else {
        nearest_even(a, &E2M1_MAGS) as u8
    };
    let negative = match zs {
        ZeroSign::Hardware => x.is_sign_negative(),
        ZeroSign::ModelOpt => x < 0.0,
    };
    mag | if negative { 0x8 } else { 0 }
}

/// E4M3 encode (§0.3), round to nearest even with the two overflow rules.
pub fn e4m3_ref(x: f64, ov: Overflow, mags: &[f64]) -> u8 {
    let sign = if x.is_sign_negative() { 0x80 } else { 0 };
    let a = x.abs();
    match ov {
        Overflow::SatFinite if x.is_nan() => 0x7F,
        Overflow::SatFinite if a > 448.0 => 0x7E | sign,
        Overflow::NonSaturating if x.is_nan() || a > 464.0 => 0x7F | sign,
        Overflow::NonSaturating if a > 448.0 => 0x7E | sign,
        _ => nearest_even(a, mags) as u8 | sign,
    }
}
