//! The unquantized element types the crate reads and writes: f32, f16 and bf16.

use half::{bf16, f16};

/// An unquantized element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    Bf16,
}

impl Dtype {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }
}

/// An element type that widens exactly to f32 and narrows from it with round-to-nearest-even.
pub trait Element: Copy + Send + Sync + bytemuck::Pod + 'static {
    /// The runtime tag of this type.
    const DTYPE: Dtype;
    /// Exact widening.
    fn to_f32(self) -> f32;
    /// Rounding to nearest even (saturating to ±Inf like any IEEE narrowing).
    fn from_f32(x: f32) -> Self;
}

impl Element for f32 {
    const DTYPE: Dtype = Dtype::F32;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
}

impl Element for f16 {
    const DTYPE: Dtype = Dtype::F16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        // Move exponent and mantissa into f32 position and rebias by multiplying by 2^(127-15):
        // exact for normals and subnormals alike, and branch-free so loops over f16 vectorize
        // (`half` calls a runtime-detected F16C routine per element). Inf/NaN keep their payload.
        let h = self.to_bits() as u32;
        let sign = (h & 0x8000) << 16;
        let em = h & 0x7FFF;
        let finite = f32::from_bits(em << 13) * f32::from_bits((127 + 112) << 23);
        let bits = if em >= 0x7C00 {
            0x7F80_0000 | ((em & 0x3FF) << 13)
        } else {
            finite.to_bits()
        };
        f32::from_bits(bits | sign)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
}

impl Element for bf16 {
    const DTYPE: Dtype = Dtype::Bf16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        // A bf16 is the top half of an f32: widening is a shift, which vectorizes.
        f32::from_bits((self.to_bits() as u32) << 16)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
}
