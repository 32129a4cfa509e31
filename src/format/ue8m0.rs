//! UE8M0: the MXFP4 block scale, an unsigned power of two `2^(b - 127)`; 0xFF is NaN.
//!
//! NVFP4 does not use it; it is here because the same kernels' scale path reads MXFP4 checkpoints.

/// How an f32 that is not a power of two becomes one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Rounding {
    /// Toward zero (`cvt.rz.satfinite.ue8m0x2.f32`): the largest power of two not above x.
    #[default]
    Down,
    /// Toward +Inf (`cvt.rp.satfinite.ue8m0x2.f32`): the smallest power of two not below x.
    Up,
}

/// Encodes a non-negative f32 as UE8M0, saturating: values at or below 2^-127 (zero and negatives
/// too) give 0x00, values above 2^127 and +Inf give 0xFE, NaN gives 0xFF.
#[inline]
pub const fn encode_f32(x: f32, rounding: Rounding) -> u8 {
    if x.is_nan() {
        return 0xFF;
    }
    if x <= 0.0 {
        return 0;
    }
    if x.is_infinite() {
        return 0xFE;
    }
    let bits = x.to_bits();
    let exp = bits >> 23;
    let mant = bits & 0x7F_FFFF;
    let e = if exp == 0 {
        // f32 subnormal: below 2^-126. 2^-127 itself is mantissa 0x400000.
        match rounding {
            Rounding::Down => 0,
            Rounding::Up => {
                if mant <= 0x40_0000 {
                    0
                } else {
                    1
                }
            }
        }
    } else {
        match rounding {
            Rounding::Down => exp,
            Rounding::Up => exp + (mant != 0) as u32,
        }
    };
    if e > 0xFE { 0xFE } else { e as u8 }
}

/// Decodes a UE8M0 byte: `2^(b - 127)`, NaN for 0xFF (exact; 0x00 is the f32 subnormal 2^-127).
#[inline]
pub const fn decode_f32(b: u8) -> f32 {
    match b {
        0xFF => f32::NAN,
        0 => f32::from_bits(0x40_0000),
        _ => f32::from_bits((b as u32) << 23),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips() {
        for b in 0..=0xFEu8 {
            let x = decode_f32(b);
            assert_eq!(encode_f32(x, Rounding::Down), b);
            assert_eq!(encode_f32(x, Rounding::Up), b);
        }
        assert!(decode_f32(0xFF).is_nan());
    }

    #[test]
    fn rounding_directions() {
        assert_eq!(encode_f32(3.0, Rounding::Down), 128);
        assert_eq!(encode_f32(3.0, Rounding::Up), 129);
        assert_eq!(encode_f32(f32::MAX, Rounding::Up), 0xFE);
        assert_eq!(encode_f32(f32::INFINITY, Rounding::Down), 0xFE);
    }
}
