//! The typed, validated launch of `csrc/offload.cu`'s checksum kernel (a test and benchmark
//! instrument of the offload layer: it reads every byte of a device slot).

use std::sync::Arc;

use cudarc::driver::{
    CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
};

use super::abi;
use super::device::Device;
use super::kernels::KernelId;
use super::memory::cuda;
use crate::error::{Error, Result};

// SAFETY: a `#[repr(C)]` struct of two raw pointers and a u64, exactly the kernel's by-value parameter.
unsafe impl DeviceRepr for abi::nvfp4_checksum_params {}

/// Threads per block (eight warps; the kernel needs a multiple of 32).
const BLOCK_THREADS: u32 = 256;

/// Adds the checksum of `data` (the CPU twin is [`crate::offload::checksum`]) to `sums[index]`, on
/// `stream`. The caller zeroes `sums[index]` first.
///
/// ```no_run
/// use nvfp4::cuda::{Device, alloc_zeros, checksum, download, upload};
/// let dev = Device::new(0)?;
/// let d = upload(dev.stream(), "w", &[1u8, 2, 3])?;
/// let mut sums = alloc_zeros::<u64>(dev.stream(), "sums", 1)?;
/// checksum(&dev, dev.stream(), &d, &mut sums, 0)?;
/// assert_eq!(download(dev.stream(), "sums", &sums)?[0], nvfp4::offload::checksum(&[1, 2, 3]));
/// # Ok::<(), nvfp4::Error>(())
/// ```
pub fn checksum<D: DevicePtr<u8>>(
    dev: &Device,
    stream: &Arc<CudaStream>,
    data: &D,
    sums: &mut CudaSlice<u64>,
    index: usize,
) -> Result<()> {
    if index >= sums.len() {
        return Err(Error::length(
            "checksum sums",
            &[sums.len()],
            index + 1,
            sums.len(),
        ));
    }
    dev.check_stream(stream)?;
    let f = dev.function(KernelId::Checksum)?;
    let n = data.len() as u64;
    let grid = n
        .div_ceil(16 * BLOCK_THREADS as u64)
        .clamp(1, 4 * dev.info().sm_count.max(1) as u64) as u32;
    let mut out = sums.slice_mut(index..index + 1);
    let (dp, _gd) = data.device_ptr(stream);
    let (op, _go) = out.device_ptr_mut(stream);
    let p = abi::nvfp4_checksum_params {
        data: dp as *const u8,
        out: op as *mut _,
        n,
    };
    let cfg = LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (BLOCK_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = stream.launch_builder(f);
    b.arg(&p);
    // SAFETY: `p` is the kernel's single by-value parameter (csrc/nvfp4.h, layout checked by bindgen's
    // test); `data` is valid for `n` bytes and `out` for one u64 (the slice of `sums` checked above);
    // the kernel walks `n` with a grid-stride loop, so any grid is in bounds.
    unsafe { b.launch(cfg) }.map_err(cuda("launching `nvfp4_checksum`"))?;
    Ok(())
}
