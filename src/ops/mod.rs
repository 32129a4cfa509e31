//! Safe GPU operations, one function per kernel family, each the twin of a CPU function in
//! [`crate::quant`] or [`crate::reference`] with the same semantics and, where the math is exact (or,
//! for the FP4 GEMM, modelled bit for bit), the same bytes.
//!
//! Ops take the caller's `Arc<CudaStream>` and enqueue work on it; they synchronize only where the
//! documentation says so (reading a result back). [`GpuQuantizer`] is the one pipeline here: the
//! GPU twin of `checkpoint::cpu_quantizer` for whole checkpoints, on a stream of its own, waiting for
//! the device once per tensor.

mod checkpoint;
mod gemm;
#[cfg(feature = "cublas")]
mod gemm_blas;
mod gemm_fp4;
mod quantize;

pub use crate::cuda::gemm_fp4::Fp4Tile;
pub use checkpoint::{DEFAULT_CHUNK_BYTES, GpuQuantizer, QuantizeStages, StageTime};
pub use gemm::{
    CublasAvailability, GemmChoice, GemmKernel, GemmOp, GemmPlan, GemmRoute, GemmSpec, SlotWeight,
    WGMMA_BY_DEFAULT, choose_kernel, plan,
};
pub use gemm_fp4::{Fp4Backend, Fp4GemmPlan, Fp4GemmSpec, LinearNvfp4Options, gemm_fp4, linear_nvfp4};
pub use quantize::{
    DeviceErrorStats, DeviceNvfp4, GpuElement, Nvfp4View, dequantize, dequantize_view, error_stats,
    error_stats_into, quantize, quantize_into,
};
