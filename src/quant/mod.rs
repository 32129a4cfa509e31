//! NVFP4 tensors on the host and the CPU quantizer and dequantizer: the specification the GPU kernels
//! must match byte for byte.
//!
//! Depends on [`crate::format`] only; no FFI, no GPU.

mod dequantize;
mod error;
mod quantize;
mod tensor;

pub use dequantize::{dequantize, dequantize_into};
pub use error::{ErrorStats, error_stats};

pub use quantize::{
    GlobalScale, GlobalScaleRule, NonFinite, QuantizeOptions, amax, global_scale_from_amax, quantize,
};
pub(crate) use quantize::{check_given_scale, padded_k};
pub use tensor::Nvfp4Tensor;

/// Elements per block scale.
pub const BLOCK: usize = 16;
/// `E2M1_MAX * E4M3_MAX`: the global scale is `amax / 2688` in the decode convention.
pub const GLOBAL_DIVISOR: f32 = 2688.0;
/// The lower clamp of a block scale (ModelOpt since 2026-05): the smallest E4M3 subnormal.
pub const SCALE_MIN: f32 = 1.0 / 512.0;
