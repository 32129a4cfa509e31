//! The GPU runtime layer: the device and its embedded kernels, typed kernel launches, device memory,
//! timing events and page-locked host memory.
//!
//! All FFI and every `unsafe` block of the crate live in this module; the rest of the crate calls the
//! safe functions here. Built on cudarc (no second driver layer): the driver is loaded at run time, so
//! a machine without CUDA builds and runs the CPU path, and [`Device::new`] returns an error there.

#[rustfmt::skip] // bindgen output, compared byte for byte by tests/abi_bindgen.rs
pub mod abi;
mod device;
pub mod gemm_fp4;
mod kernels;
pub mod launch;
mod memory;
mod pinned;
mod stream;

pub use device::{Device, DeviceInfo};
pub use kernels::{KernelId, NVCC_VERSION, TARGETS, fatbin_sizes};
pub(crate) use memory::cuda as cuda_err;
pub use memory::{alloc_zeros, download, upload};
pub use pinned::{PinnedBuffer, PinnedFlags};
pub use stream::GpuTimer;
