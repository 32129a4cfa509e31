//! The reference every GPU GEMM is tested against: GEMMs accumulated in f64 from exactly decoded
//! operands, the f32 accumulation bound a kernel must stay within, seeded synthetic data, and a CPU
//! model of the sm_120 block-scaled FP4 MMA instruction with the GEMM that chains it ([`mma`]).
//!
//! Depends on [`crate::format`] and [`crate::quant`]; no FFI, no GPU.

pub mod gemm;
pub mod mma;
pub mod synthetic;

pub use gemm::{GemmReference, gamma, gemm_f32, gemm_w4a4, gemm_w4a16};
pub use mma::{MmaGemmEpilogue, mma_gemm};
