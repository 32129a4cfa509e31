//! # nvfp4
//!
//! NVIDIA's 4-bit floating-point format (NVFP4: E2M1 values, one E4M3 scale per 16 values, one f32
//! scale per tensor) for Rust inference engines.
//!
//! - [`format`]: the scalar codecs (E2M1, E4M3/UE4M3, UE8M0), nibble packing, block-scale layouts.
//! - [`quant`]: [`Nvfp4Tensor`] and the bit-exact CPU quantizer/dequantizer (ModelOpt's formula).
//! - [`reference`]: f64-accumulated GEMMs, the specification every GPU GEMM is tested against.
//! - [`cuda`] and [`ops`]: the GPU side (kernels embedded at build time, loaded through cudarc).
//! - [`diag`]: a self-test and measurements of this machine (`nvfp4 diag`).
//!
//! ```
//! use nvfp4::quant::{quantize, dequantize, QuantizeOptions};
//! let w: Vec<f32> = (0..64).map(|i| (i as f32 - 32.0) / 8.0).collect();
//! let q = quantize("w", &w, 2, 32, &QuantizeOptions::default()).unwrap();
//! let back: Vec<f32> = dequantize(&q);
//! assert_eq!(back.len(), 64);
//! ```

pub mod checkpoint;
pub mod cuda;
pub mod diag;
pub mod error;
pub mod format;
pub mod offload;
pub mod ops;
pub mod quant;
pub mod reference;

pub use cudarc;
pub use error::{Error, Result};
pub use quant::{Nvfp4Tensor, QuantizeOptions};
