//! Page-locked host memory, allocated with the flags this crate chose by measurement.
//!
//! cudarc's `alloc_pinned` uses write-combined memory: fast for the GPU to read over PCIe on some
//! systems, but host reads of it are uncached and slow, and on the H100 machine its H2D copies
//! measured 34 GB/s against 55 GB/s from PyTorch's (portable, cached) pinned memory. `nvfp4 bench
//! pinned` measures every flag set side by side; BENCHMARKS.md records the result.

use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::driver::{CudaContext, CudaEvent, CudaStream, DevicePtr, DevicePtrMut, result, sys};

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

/// A page-locked host buffer of bytes.
///
/// Asynchronous copies ([`copy_h2d_async`], [`copy_d2h_async`]) record an event in the buffer, so the
/// buffer itself knows which DMA is still touching it: dropping it waits for those copies, host writes
/// ([`PinnedBuffer::as_mut_slice`]) wait for every pending copy and host reads
/// ([`PinnedBuffer::as_slice`]) for pending device-to-host copies. That is what makes the copies safe
/// functions; the [`super::PinnedPool`] uses [`PinnedBuffer::is_in_flight`] to evict only idle buffers.
pub struct PinnedBuffer {
    ptr: *mut u8,
    len: usize,
    flags: PinnedFlags,
    ctx: Arc<CudaContext>,
    dma: Mutex<Dma>,
}

/// Copies in flight: events recorded after each one on its stream.
#[derive(Default)]
struct Dma {
    /// Host-to-device copies reading the buffer.
    reads: Vec<CudaEvent>,
    /// Device-to-host copies writing it.
    writes: Vec<CudaEvent>,
}

impl Dma {
    /// Forgets completed copies (an errored event counts as complete: its copy will never run).
    fn prune(&mut self) {
        self.reads.retain(|e| matches!(e.try_is_complete(), Ok(false)));
        self.writes.retain(|e| matches!(e.try_is_complete(), Ok(false)));
    }

    /// Blocks until the listed copies finish. A failed wait means the context is broken and no DMA
    /// of it still runs, so the events are dropped either way.
    fn wait(events: &mut Vec<CudaEvent>) {
        for e in events.drain(..) {
            let _ = e.synchronize();
        }
    }
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
            dma: Mutex::new(Dma::default()),
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

    /// The context the memory is pinned in.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The bytes. Waits for device-to-host copies into the buffer that are still in flight.
    pub fn as_slice(&self) -> &[u8] {
        Dma::wait(&mut self.lock_dma().writes);
        // SAFETY: `ptr` is valid for `len` bytes for the life of `self`, initialized at allocation;
        // no DMA writes them any more (waited above), and new writes need `&mut self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The bytes, mutably. Waits for every copy still reading or writing the buffer.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let dma = self.dma.get_mut().unwrap_or_else(|p| p.into_inner());
        Dma::wait(&mut dma.reads);
        Dma::wait(&mut dma.writes);
        // SAFETY: as above; `&mut self` makes this the only host access and no DMA is in flight.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// Whether a copy recorded by [`copy_h2d_async`] or [`copy_d2h_async`] may still be running.
    /// Never blocks.
    pub fn is_in_flight(&self) -> bool {
        let mut dma = self.lock_dma();
        dma.prune();
        !dma.reads.is_empty() || !dma.writes.is_empty()
    }

    /// Blocks until no copy touches the buffer.
    pub fn wait_idle(&self) {
        let mut dma = self.lock_dma();
        Dma::wait(&mut dma.reads);
        Dma::wait(&mut dma.writes);
    }

    fn lock_dma(&self) -> MutexGuard<'_, Dma> {
        // A panic while holding the lock leaves only a list of events: still consistent.
        self.dma.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Records an event on `stream` after the copy just enqueued there.
fn record_after(stream: &Arc<CudaStream>) -> Result<CudaEvent> {
    stream
        .record_event(Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING))
        .map_err(cuda("recording a copy event"))
}

/// Copies `dst.len()` bytes of `src` from `src_offset` into device memory `dst`, asynchronously on
/// `stream`: the host does not wait. The copy is recorded in `src` (see [`PinnedBuffer`]), so `src`
/// may be dropped or reused at once; the caller orders readers of `dst` after `stream` (an event).
///
/// ```no_run
/// use nvfp4::cuda::{Device, PinnedBuffer, PinnedFlags, alloc_zeros, copy_h2d_async};
/// let dev = Device::new(0)?;
/// let host = PinnedBuffer::new(dev.context(), 1 << 20, PinnedFlags::Portable)?;
/// let mut d = alloc_zeros::<u8>(dev.stream(), "slot", 1 << 20)?;
/// copy_h2d_async(dev.stream(), &host, 0, &mut d)?;
/// # Ok::<(), nvfp4::Error>(())
/// ```
pub fn copy_h2d_async<D: DevicePtrMut<u8>>(
    stream: &Arc<CudaStream>,
    src: &PinnedBuffer,
    src_offset: usize,
    dst: &mut D,
) -> Result<()> {
    let n = dst.len();
    let end = src_offset
        .checked_add(n)
        .filter(|&e| e <= src.len)
        .ok_or_else(|| Error::length("pinned source", &[src.len], src_offset.saturating_add(n), src.len))?;
    if n == 0 {
        return Ok(());
    }
    if !Arc::ptr_eq(&src.ctx, stream.context()) {
        return Err(Error::invalid(
            "pinned source",
            "pinned in another CUDA context than the stream's",
        ));
    }
    stream
        .context()
        .bind_to_thread()
        .map_err(cuda("binding the context"))?;
    let mut dma = src.lock_dma();
    // A device-to-host copy still writing these bytes must land first.
    for w in &dma.writes {
        stream.wait(w).map_err(cuda("ordering a copy after a download"))?;
    }
    {
        let (dptr, _record) = dst.device_ptr_mut(stream);
        // SAFETY: `src_offset..end` lies inside the buffer (checked above) and `dst` holds `n` bytes;
        // the source stays allocated until the copy finishes because the event recorded below is kept
        // in `src`, and Drop and host writes wait for it. `_record` tells cudarc's own tracking of `dst`
        // that `stream` wrote it.
        let bytes = unsafe { std::slice::from_raw_parts(src.ptr.add(src_offset), end - src_offset) };
        // SAFETY: as above; the pointer and stream belong to the bound context.
        unsafe { result::memcpy_htod_async(dptr, bytes, stream.cu_stream()) }
            .map_err(cuda(format!("copying {n} pinned bytes to the device")))?;
    }
    dma.prune();
    dma.reads.push(record_after(stream)?);
    Ok(())
}

/// Copies all of device memory `src` into `dst` from `dst_offset`, asynchronously on `stream`. Host
/// access to `dst` ([`PinnedBuffer::as_slice`]) waits for the copy.
///
/// ```no_run
/// use nvfp4::cuda::{Device, PinnedBuffer, PinnedFlags, alloc_zeros, copy_d2h_async};
/// let dev = Device::new(0)?;
/// let mut host = PinnedBuffer::new(dev.context(), 1024, PinnedFlags::Portable)?;
/// let d = alloc_zeros::<u8>(dev.stream(), "t", 1024)?;
/// copy_d2h_async(dev.stream(), &d, &mut host, 0)?;
/// assert_eq!(host.as_slice()[0], 0);
/// # Ok::<(), nvfp4::Error>(())
/// ```
pub fn copy_d2h_async<S: DevicePtr<u8>>(
    stream: &Arc<CudaStream>,
    src: &S,
    dst: &mut PinnedBuffer,
    dst_offset: usize,
) -> Result<()> {
    let n = src.len();
    let end = dst_offset
        .checked_add(n)
        .filter(|&e| e <= dst.len)
        .ok_or_else(|| {
            Error::length(
                "pinned destination",
                &[dst.len],
                dst_offset.saturating_add(n),
                dst.len,
            )
        })?;
    if n == 0 {
        return Ok(());
    }
    if !Arc::ptr_eq(&dst.ctx, stream.context()) {
        return Err(Error::invalid(
            "pinned destination",
            "pinned in another CUDA context than the stream's",
        ));
    }
    stream
        .context()
        .bind_to_thread()
        .map_err(cuda("binding the context"))?;
    let dma = dst.dma.get_mut().unwrap_or_else(|p| p.into_inner());
    // Earlier copies still reading or writing these bytes must finish first (stream order, no host wait).
    for e in dma.reads.iter().chain(&dma.writes) {
        stream
            .wait(e)
            .map_err(cuda("ordering a download after earlier copies"))?;
    }
    {
        let (sptr, _record) = src.device_ptr(stream);
        // SAFETY: `dst_offset..end` lies inside the buffer (checked above) and `src` holds `n` bytes;
        // `&mut dst` excludes host access now, and the event recorded below makes every later host
        // access and Drop wait for the copy.
        let bytes = unsafe { std::slice::from_raw_parts_mut(dst.ptr.add(dst_offset), end - dst_offset) };
        // SAFETY: as above.
        unsafe { result::memcpy_dtoh_async(bytes, sptr, stream.cu_stream()) }
            .map_err(cuda(format!("copying {n} device bytes to pinned memory")))?;
    }
    dma.prune();
    dma.writes.push(record_after(stream)?);
    Ok(())
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        self.wait_idle();
        let _ = self.ctx.bind_to_thread();
        // SAFETY: `ptr` came from cuMemHostAlloc and is freed exactly once, here.
        let _ = unsafe { result::free_host(self.ptr as *mut std::ffi::c_void) };
    }
}
