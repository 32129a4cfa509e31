//! The GPU runtime layer: the device and its embedded kernels, typed kernel launches, device memory,
//! timing events and page-locked host memory.
//!
//! All FFI and every `unsafe` block of the crate live in this module; the rest of the crate calls the
//! safe functions here. Built on cudarc (no second driver layer): the driver is loaded at run time, so
//! a machine without CUDA builds and runs the CPU path, and [`Device::new`] returns an error there.

#[rustfmt::skip] // bindgen output, compared byte for byte by tests/abi_bindgen.rs
pub mod abi;
#[cfg(feature = "cublas")]
mod blas;
#[cfg(feature = "cublas")]
mod blas_fp8;
mod checksum;
mod device;
pub mod gemm_fp4;
mod kernels;
pub mod launch;
pub mod launch_gemm;
mod memory;
mod pinned;
mod pinned_pool;
mod stream;

#[cfg(feature = "cublas")]
pub(crate) use blas::{BlasGemm, blas_alpha, blas_epilogue};
#[cfg(feature = "cublas")]
pub use blas::{CublasBf16, cublas_loadable};
#[cfg(feature = "cublas")]
pub use blas_fp8::{CublasFp8, cublaslt_loadable};
pub use checksum::checksum;
pub use device::{Device, DeviceInfo};
pub use kernels::{KernelId, NVCC_VERSION, TARGETS, fatbin_sizes};
pub(crate) use memory::cuda as cuda_err;
pub(crate) use memory::fill_bytes;
pub use memory::{alloc_zeros, cast_view, cast_view_mut, download, upload};
pub use pinned::{PinnedBuffer, PinnedFlags, copy_d2h_async, copy_h2d_async};
pub use pinned_pool::{
    PinnedAllocator, PinnedPool, Pool, PoolStats, Staged, StagingAllocator, StagingBuffer, TensorId,
    default_pool_cap,
};
pub(crate) use stream::new_event;
pub use stream::{GpuTimer, StreamSet};
