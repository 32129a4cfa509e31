//! E4M3 (`float8_e4m3fn`): `S EEEE MMM`, bias 7, no Inf, NaN = 0x7F/0xFF, largest 448 (0x7E); and
//! UE4M3, the unsigned 7-bit reading of the same byte used for NVFP4 block scales.
//!
//! Rounding is always to nearest, ties to even. Out-of-range input is where implementations differ,
//! hence [`Overflow`].

use half::{bf16, f16};

/// Largest finite E4M3 magnitude.
pub const MAX: f32 = 448.0;
/// Smallest positive E4M3 value (subnormal 0x01).
pub const MIN_SUBNORMAL: f32 = 1.0 / 512.0;

/// What the encoder does with magnitudes above 448, infinities and NaN.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Overflow {
    /// `cvt.rn.satfinite.e4m3x2.f32` and `cuda_fp8.hpp`: |x| > 448 and ±Inf give ±448 (0x7E/0xFE);
    /// NaN of either sign gives 0x7F.
    #[default]
    SatFinite,
    /// PyTorch's `.to(float8_e4m3fn)` and ml_dtypes: |x| > 464 (the midpoint above 448) and ±Inf give
    /// NaN with the sign kept (0x7F/0xFF); NaN keeps its sign.
    NonSaturating,
}

/// Decoded value of every byte (0x7F and 0xFF are NaN).
pub const VALUES: [f32; 256] = {
    let mut t = [0.0f32; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = decode_slow(b as u8);
        b += 1;
    }
    t
};

const fn decode_slow(b: u8) -> f32 {
    let e = ((b >> 3) & 0xF) as i32;
    let m = (b & 0x7) as f32;
    let mag = if e == 0xF && (b & 7) == 7 {
        f32::NAN
    } else if e == 0 {
        m * MIN_SUBNORMAL
    } else {
        // (1 + m/8) * 2^(e-7), with 2^(e-7) built from its f32 exponent bits (exact).
        (1.0 + m / 8.0) * f32::from_bits(((e - 7 + 127) as u32) << 23)
    };
    if b & 0x80 != 0 { -mag } else { mag }
}

/// Encodes an f32 as E4M3, rounding to nearest even, with the given overflow rule.
#[inline]
pub const fn encode_f32(x: f32, overflow: Overflow) -> u8 {
    let sign: u8 = if x.is_sign_negative() { 0x80 } else { 0 };
    if x.is_nan() {
        return match overflow {
            Overflow::SatFinite => 0x7F,
            Overflow::NonSaturating => 0x7F | sign,
        };
    }
    let a = x.abs();
    match overflow {
        Overflow::SatFinite if a > MAX => return 0x7E | sign,
        // 464 is the midpoint between 448 and the would-be 480: it rounds to the even 448.
        Overflow::NonSaturating if a > 464.0 => return 0x7F | sign,
        _ => {}
    }
    if a < 1.0 / 64.0 {
        // Subnormal range: the value in units of 2^-9 is below 8, and adding 2^23 makes the f32 adder
        // round it to an integer with ties to even (both steps exact except that rounding).
        let units = (a * 512.0 + 8_388_608.0) - 8_388_608.0;
        return units as u8 | sign;
    }
    // Normal: keep 3 of the 23 mantissa bits, rounding to nearest even by adding just under half an
    // output ulp plus the output's lowest bit; a carry moves into the exponent, as it should.
    let bits = a.to_bits();
    let rounded = (bits + 0x7_FFFF + ((bits >> 20) & 1)) >> 20;
    // Rebias the exponent from 127 to 7: subtract (127 - 7) << 3 in the 8-bit result.
    (rounded - ((127 - 7) << 3)) as u8 | sign
}

/// Encodes an f16 as E4M3 (the f16 widens exactly; one rounding).
#[inline]
pub fn encode_f16(x: f16, overflow: Overflow) -> u8 {
    encode_f32(x.to_f32(), overflow)
}

/// Encodes a bf16 as E4M3 (the bf16 widens exactly; one rounding).
#[inline]
pub fn encode_bf16(x: bf16, overflow: Overflow) -> u8 {
    encode_f32(x.to_f32(), overflow)
}

/// Decodes an E4M3 byte to f32 (exact; 0x7F/0xFF give NaN).
#[inline]
pub const fn decode_f32(b: u8) -> f32 {
    VALUES[b as usize]
}

/// Decodes an E4M3 byte to f16 (exact: every E4M3 value is an f16).
#[inline]
pub fn decode_f16(b: u8) -> f16 {
    f16::from_f32(decode_f32(b))
}

/// Decodes an E4M3 byte to bf16 (exact: every E4M3 value is a bf16).
#[inline]
pub fn decode_bf16(b: u8) -> bf16 {
    bf16::from_f32(decode_f32(b))
}

/// Encodes a block scale as UE4M3: satfinite, and the sign bit is always 0 (negative input and -0.0
/// give 0x00; NaN gives 0x7F), as every NVFP4 producer writes them.
#[inline]
pub const fn encode_ue4m3(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7F;
    }
    if x <= 0.0 {
        return 0;
    }
    encode_f32(x, Overflow::SatFinite)
}

/// Decodes a UE4M3 block-scale byte. The PTX ISA defines UE4M3 as 7 bits with the top bit padded
/// with zero; the top bit is ignored here, as llama.cpp's importer does (`& 0x7F`). What the tensor
/// core does with a set top bit is unconfirmed (nvfp4-format.md §7).
#[inline]
pub const fn decode_ue4m3(b: u8) -> f32 {
    VALUES[(b & 0x7F) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardware_special_values() {
        let sat = Overflow::SatFinite;
        for (x, b) in [
            (448.0, 0x7E),
            (449.0, 0x7E),
            (464.0, 0x7E),
            (480.0, 0x7E),
            (1e4, 0x7E),
        ] {
            assert_eq!(encode_f32(x, sat), b, "{x}");
        }
        assert_eq!(encode_f32(-1e4, sat), 0xFE);
        assert_eq!(encode_f32(f32::INFINITY, sat), 0x7E);
        assert_eq!(encode_f32(f32::NEG_INFINITY, sat), 0xFE);
        assert_eq!(encode_f32(-f32::NAN, sat), 0x7F);
        assert_eq!(encode_f32(1.0 / 1024.0, sat), 0x00);
        assert_eq!(encode_f32(3.0 / 1024.0, sat), 0x02);
        assert_eq!(encode_f32(-0.0, sat), 0x80);
    }

    #[test]
    fn torch_special_values() {
        let ns = Overflow::NonSaturating;
        assert_eq!(encode_f32(464.0, ns), 0x7E);
        assert_eq!(encode_f32(464.01, ns), 0x7F);
        assert_eq!(encode_f32(-1e4, ns), 0xFF);
        assert_eq!(encode_f32(f32::NEG_INFINITY, ns), 0xFF);
        assert_eq!(encode_f32(-f32::NAN, ns), 0xFF);
    }

    #[test]
    fn decode_limits() {
        assert_eq!(decode_f32(0x7E), 448.0);
        assert_eq!(decode_f32(0x01), MIN_SUBNORMAL);
        assert_eq!(decode_f32(0x08), 1.0 / 64.0);
        assert_eq!(decode_f32(0x38), 1.0);
        assert!(decode_f32(0xFF).is_nan());
        assert_eq!(decode_ue4m3(0xB8), 1.0);
    }
}
