//! Page-locked host memory, allocated with the flags this crate chose by measurement.
//!
//! cudarc's `alloc_pinned` uses write-combined memory: fast for the GPU to read over PCIe on some
//! systems, but host reads of it are uncached and slow, and on the H100 machine its H2D copies
//! measured 34 GB/s against 55 GB/s from PyTorch's (portable, cached) pinned memory. `nvfp4 bench
//! pinned` measures every flag set side by side; BENCHMARKS.md records the result.

use std::sync::Arc;

use cudarc::driver::{CudaContext, result, sys};

use super::memory::cuda;
use crate::error::{Error, Result};

/// Allocation flags of `cuMemHostAlloc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PinnedFlags {
    /// No flags: pinned for the allocating context only.
    Default,
    /// `CU_MEMHOSTALLOC_PORTABLE`: pinned for every context (the crate's default).
    Portable,
    /// `CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_WRITECOMBINED`: uncached on the host.
    WriteCombined,
}

impl PinnedFlags {
    fn bits(self) -> u32 {
        match self {
            PinnedFlags::Default => 0,
            PinnedFlags::Portable => sys::CU_MEMHOSTALLOC_PORTABLE,
            PinnedFlags::WriteCombined => sys::CU_MEMHOSTALLOC_PORTABLE | sys::CU_MEMHOSTALLOC_WRITECOMBINED,
        }
    }
}

/// A page-locked host buffer of bytes. Freed on drop; the owner must not drop it while a copy that
/// reads or writes it is still in flight (the offload layer tracks that with events).
pub struct PinnedBuffer {
    ptr: *mut u8,
    len: usize,
    flags: PinnedFlags,
    ctx: Arc<CudaContext>,
}

// SAFETY: the buffer is plain host memory owned by this value alone; the raw pointer is never shared
// outside of borrows of `self`, so moving or sharing it across threads is as safe as for a `Vec<u8>`.
unsafe impl Send for PinnedBuffer {}
// SAFETY: as above; `&PinnedBuffer` gives only `&[u8]` access.
unsafe impl Sync for PinnedBuffer {}

impl PinnedBuffer {
    /// Allocates `len` zeroed bytes of page-locked memory.
    pub fn new(ctx: &Arc<CudaContext>, len: usize, flags: PinnedFlags) -> Result<Self> {
        ctx.bind_to_thread().map_err(cuda("binding the context"))?;
        // SAFETY: cuMemHostAlloc with a valid size and flags; the pointer is owned by the returned
        // value and freed once in Drop.
        let ptr = unsafe { result::malloc_host(len.max(1), flags.bits()) }.map_err(|e| {
            if e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY {
                Error::OutOfMemory {
                    name: "pinned host buffer".into(),
                    bytes: len,
                }
            } else {
                Error::Cuda {
                    context: format!("pinning {len} host bytes"),
                    source: e,
                }
            }
        })? as *mut u8;
        // SAFETY: `ptr` points to at least `len` writable bytes just allocated.
        unsafe { std::ptr::write_bytes(ptr, 0, len) };
        Ok(PinnedBuffer {
            ptr,
            len,
            flags,
            ctx: ctx.clone(),
        })
    }

    /// Bytes in the buffer.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The flags it was allocated with.
    pub fn flags(&self) -> PinnedFlags {
        self.flags
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `len` bytes for the life of `self`, initialized at allocation.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: `ptr` came from cuMemHostAlloc and is freed exactly once, here.
        let _ = unsafe { result::free_host(self.ptr as *mut std::ffi::c_void) };
    }
}
