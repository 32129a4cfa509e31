//! Every GPU op against its CPU twin, on the device. Without a GPU each test prints that it skipped;
//! with `NVFP4_REQUIRE_GPU=1` (set by `.gpu/run.sh`) a missing GPU is a failure.
//!
//! One binary holds every GPU test so the staged folder stays small (tools/stage-gpu.sh keeps only
//! it); every test has `gpu` in its name so `compute-sanitizer ... gpu` runs exactly these. One module
//! per kernel family under tests/gpu/.

#[path = "gpu/blas_fp8.rs"]
mod blas_fp8;
#[path = "gpu/checkpoint.rs"]
mod checkpoint;
#[path = "checkpoint_common/mod.rs"]
mod checkpoint_common;
#[path = "gpu/common.rs"]
mod common;
#[path = "gpu/diag.rs"]
mod diag;
#[path = "gpu/gemm.rs"]
mod gemm;
#[path = "gpu/gemm_fp4.rs"]
mod gemm_fp4;
#[path = "gpu/offload.rs"]
mod offload;
#[path = "gpu/quant_error.rs"]
mod quant_error;
#[path = "gpu/quantize.rs"]
mod quantize;
#[path = "gpu/slot_gemm.rs"]
mod slot_gemm;
