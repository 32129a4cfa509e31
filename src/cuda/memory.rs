//! Device memory: allocation with typed out-of-memory errors, uploads and downloads.

use std::sync::Arc;

use cudarc::driver::{
    CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtrMut, DeviceRepr, DriverError, ValidAsZeroBits, sys,
};

use crate::error::{Error, Result};

// SAFETY: these are plain-old-data structs of fixed-width fields and raw pointers, `#[repr(C)]`, and
// exactly what the kernels take by value; cudarc copies them into the launch's argument buffer.
unsafe impl DeviceRepr for super::abi::nvfp4_amax_params {}
// SAFETY: as above.
unsafe impl DeviceRepr for super::abi::nvfp4_global_scale_params {}
// SAFETY: as above.
unsafe impl DeviceRepr for super::abi::nvfp4_quantize_params {}
// SAFETY: as above.
unsafe impl DeviceRepr for super::abi::nvfp4_dequantize_params {}
// SAFETY: as above.
unsafe impl DeviceRepr for super::abi::nvfp4_scale_layout_params {}
// SAFETY: as above.
unsafe impl DeviceRepr for super::abi::nvfp4_quant_error_params {}
// SAFETY: as above.
unsafe impl DeviceRepr for super::abi::nvfp4_quant_error_reduce_params {}
// SAFETY: as above.
unsafe impl DeviceRepr for super::abi::nvfp4_gemm_params {}
// SAFETY: as above.
unsafe impl DeviceRepr for super::abi::nvfp4_gemm_fp4_params {}
// SAFETY: as above.
unsafe impl DeviceRepr for super::abi::nvfp4_mma_probe_params {}
// SAFETY: as above.
unsafe impl DeviceRepr for super::abi::nvfp4_blas_alpha_params {}
// SAFETY: as above.
unsafe impl DeviceRepr for super::abi::nvfp4_blas_epilogue_params {}

/// Maps a driver error to [`Error::Cuda`] with what was being done.
pub(crate) fn cuda(context: impl Into<String>) -> impl FnOnce(DriverError) -> Error {
    let context = context.into();
    move |source| Error::Cuda { context, source }
}

/// Allocates `n` zeroed elements on `stream`'s device; running out of memory is
/// [`Error::OutOfMemory`] naming `name`.
pub fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    name: &str,
    n: usize,
) -> Result<CudaSlice<T>> {
    let bytes = n.saturating_mul(std::mem::size_of::<T>());
    stream.alloc_zeros::<T>(n).map_err(|e| {
        if e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY {
            Error::OutOfMemory {
                name: name.to_string(),
                bytes,
            }
        } else {
            Error::Cuda {
                context: format!("allocating {bytes} bytes for `{name}`"),
                source: e,
            }
        }
    })
}

/// Copies host data to a new device buffer (ordered on `stream`).
pub fn upload<T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    name: &str,
    data: &[T],
) -> Result<CudaSlice<T>> {
    let mut d = alloc_zeros::<T>(stream, name, data.len())?;
    if !data.is_empty() {
        stream
            .memcpy_htod(data, &mut d)
            .map_err(cuda(format!("upload of `{name}`")))?;
    }
    Ok(d)
}

/// Sets every byte of `d` to `byte`, ordered on `stream` (a memset: no host buffer, no host wait, unlike
/// an upload of the pattern from pageable memory).
pub(crate) fn fill_bytes<T: DeviceRepr>(
    stream: &Arc<CudaStream>,
    d: &mut CudaSlice<T>,
    byte: u8,
    what: &str,
) -> Result<()> {
    let bytes = d.len() * std::mem::size_of::<T>();
    if bytes == 0 {
        return Ok(());
    }
    let (ptr, _guard) = d.device_ptr_mut(stream);
    // SAFETY: `ptr` is the start of `d`'s live allocation of `bytes` bytes, on `stream`'s context, and
    // the guard keeps it alive and ordered on `stream` until the memset is enqueued; the byte pattern is
    // valid for the plain integer types this is used with.
    unsafe { cudarc::driver::result::memset_d8_async(ptr, byte, bytes, stream.cu_stream()) }
        .map_err(cuda(format!("setting {what}")))
}

/// Copies a device buffer to the host, waiting for `stream`.
pub fn download<T: DeviceRepr + Clone + Default>(
    stream: &Arc<CudaStream>,
    name: &str,
    d: &CudaSlice<T>,
) -> Result<Vec<T>> {
    let mut out = vec![T::default(); d.len()];
    if !out.is_empty() {
        stream
            .memcpy_dtoh(d, &mut out)
            .map_err(cuda(format!("download of `{name}`")))?;
    }
    stream
        .synchronize()
        .map_err(cuda(format!("download of `{name}`")))?;
    Ok(out)
}

/// Reads a byte view of device memory as elements of `T` (a tensor stored at an aligned offset of a
/// byte slot). The byte length must be a whole number of elements.
///
/// ```no_run
/// use nvfp4::cuda::{Device, alloc_zeros, cast_view};
/// let dev = Device::new(0)?;
/// let slot = alloc_zeros::<u8>(dev.stream(), "slot", 1024)?;
/// let w = cast_view::<half::bf16>(&slot.slice(256..1024))?;
/// assert_eq!(w.len(), 384);
/// # Ok::<(), nvfp4::Error>(())
/// ```
pub fn cast_view<'a, T: DeviceRepr + bytemuck::Pod>(bytes: &CudaView<'a, u8>) -> Result<CudaView<'a, T>> {
    let size = std::mem::size_of::<T>().max(1);
    if bytes.len() % size != 0 {
        return Err(Error::length(
            "byte view",
            &[bytes.len()],
            bytes.len().next_multiple_of(size),
            bytes.len(),
        ));
    }
    // SAFETY: `T: Pod`, so every bit pattern is a valid `T`; and `len * size_of::<T>()` equals the view's bytes, which
    // cudarc checks again; alignment is the caller's layout's (offsets are multiples of 256).
    unsafe { bytes.transmute::<T>(bytes.len() / size) }
        .ok_or_else(|| Error::invalid("byte view", "too short"))
}

/// [`cast_view`] for writing: a mutable byte view of device memory as elements of `T` (a small result
/// kept at an aligned offset of a byte buffer, so one copy brings several back). The byte length must
/// be a whole number of elements.
///
/// ```no_run
/// use nvfp4::cuda::{Device, alloc_zeros, cast_view_mut};
/// let dev = Device::new(0)?;
/// let mut bytes = alloc_zeros::<u8>(dev.stream(), "results", 64)?;
/// let mut tail = bytes.slice_mut(16..40);
/// let mut sums = cast_view_mut::<f64>(&mut tail)?;
/// dev.stream().memset_zeros(&mut sums).unwrap();
/// # Ok::<(), nvfp4::Error>(())
/// ```
pub fn cast_view_mut<'b, T: DeviceRepr + bytemuck::Pod>(
    bytes: &'b mut CudaViewMut<'_, u8>,
) -> Result<CudaViewMut<'b, T>> {
    let size = std::mem::size_of::<T>().max(1);
    let len = bytes.len();
    if len % size != 0 {
        return Err(Error::length(
            "byte view",
            &[len],
            len.next_multiple_of(size),
            len,
        ));
    }
    // SAFETY: as for `cast_view`: `T: Pod`, so any bits the device holds are a valid `T` and any `T`
    // written is valid bytes; the element count covers exactly the view's bytes (cudarc checks the
    // length again); alignment is the caller's layout's (offsets are multiples of the element size from
    // a 256-byte aligned allocation).
    let v = unsafe { bytes.transmute_mut::<T>(len / size) };
    v.ok_or_else(|| Error::invalid("byte view", "too short"))
}
