//! E2M1 (FP4): `S EE M`, exponent bias 1, no Inf, no NaN; values ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}.
//!
//! Encoding follows `cvt.rn.satfinite.e2m1x2.f32`: round to nearest, ties to even, saturate to ±6
//! (±Inf too), NaN to +6 (code 0x7). The only place the reference implementations differ on finite
//! input is the sign of zero, so that is the one mode ([`ZeroSign`]).

use half::{bf16, f16};

/// Largest E2M1 magnitude.
pub const MAX: f32 = 6.0;

/// Decoded value of every code, indexed by the 4-bit code.
pub const VALUES: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// What the encoder does with the sign of a value whose magnitude encodes as zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ZeroSign {
    /// The hardware (`cvt.rn.satfinite`, CUDA's `cuda_fp4.hpp`, ml_dtypes): the sign bit is kept,
    /// so `-0.0` and tiny negatives give code 0x8.
    #[default]
    Hardware,
    /// ModelOpt's `_cast_fp4`: the sign bit is `x < 0`, so `-0.0` gives code 0x0 while tiny
    /// negative values still give 0x8. This is what ModelOpt-exported checkpoints hold.
    ModelOpt,
}

/// Encodes an f32 as an E2M1 code (low 4 bits of the result).
#[inline]
pub const fn encode_f32(x: f32, zero_sign: ZeroSign) -> u8 {
    let a = x.abs();
    // Count the midpoints between neighbouring E2M1 values that `a` lies above. A value exactly on a
    // midpoint goes to the even code, hence `>` against midpoints below an odd code's neighbour and
    // `>=` against the others. NaN fails every comparison. Branch-free, so the quantizer vectorizes.
    let mag = (a > 0.25) as u8
        + (a >= 0.75) as u8
        + (a > 1.25) as u8
        + (a >= 1.75) as u8
        + (a > 2.5) as u8
        + (a >= 3.5) as u8
        + (a > 5.0) as u8;
    let negative = match zero_sign {
        ZeroSign::Hardware => (x.to_bits() >> 31) as u8,
        ZeroSign::ModelOpt => (x < 0.0) as u8,
    };
    // NaN gives +6 (the PTX ISA: "NaN results are converted to positive MAX_NORM").
    if x.is_nan() { 0x7 } else { mag | (negative << 3) }
}

/// Encodes an f16 as an E2M1 code. Exact: every f16 widens to f32 without rounding.
#[inline]
pub fn encode_f16(x: f16, zero_sign: ZeroSign) -> u8 {
    encode_f32(x.to_f32(), zero_sign)
}

/// Encodes a bf16 as an E2M1 code. Exact: every bf16 widens to f32 without rounding.
#[inline]
pub fn encode_bf16(x: bf16, zero_sign: ZeroSign) -> u8 {
    encode_f32(x.to_f32(), zero_sign)
}

/// Decodes the low 4 bits of `code` to f32 (code 0x8 is `-0.0`).
#[inline]
pub const fn decode_f32(code: u8) -> f32 {
    VALUES[(code & 0xF) as usize]
}

/// Decodes the low 4 bits of `code` to f16 (exact: every E2M1 value is an f16).
#[inline]
pub fn decode_f16(code: u8) -> f16 {
    f16::from_f32(decode_f32(code))
}

/// Decodes the low 4 bits of `code` to bf16 (exact: every E2M1 value is a bf16).
#[inline]
pub fn decode_bf16(code: u8) -> bf16 {
    bf16::from_f32(decode_f32(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_go_to_the_even_code() {
        let cases = [
            (0.25, 0),
            (0.75, 2),
            (1.25, 2),
            (1.75, 4),
            (2.5, 4),
            (3.5, 6),
            (5.0, 6),
            (5.5, 7),
        ];
        for (x, code) in cases {
            assert_eq!(encode_f32(x, ZeroSign::Hardware), code, "{x}");
        }
    }

    #[test]
    fn zero_sign_modes_differ_only_on_negative_zero() {
        assert_eq!(encode_f32(-0.0, ZeroSign::Hardware), 0x8);
        assert_eq!(encode_f32(-0.0, ZeroSign::ModelOpt), 0x0);
        assert_eq!(encode_f32(-0.1, ZeroSign::ModelOpt), 0x8);
        assert_eq!(encode_f32(f32::NAN, ZeroSign::ModelOpt), 0x7);
        assert_eq!(encode_f32(-f32::NAN, ZeroSign::Hardware), 0x7);
        assert_eq!(encode_f32(f32::NEG_INFINITY, ZeroSign::Hardware), 0xF);
    }
}
