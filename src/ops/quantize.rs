//! GPU quantize, dequantize and scale-layout conversion: byte-identical twins of
//! [`crate::quant::quantize`] and [`crate::quant::dequantize`]; and the error sums of a quantized
//! tensor, the twin of [`crate::quant::error_stats`].

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, CudaView, DeviceRepr, ValidAsZeroBits};

use crate::cuda::launch::{self, ErrorStatsShape, QuantizeShape};
use crate::cuda::{Device, alloc_zeros, download, upload};
use crate::error::{Error, Result, element_count};
use crate::format::{Element, ScaleLayout};
use crate::quant::{
    BLOCK, ErrorStats, GlobalScale, NonFinite, Nvfp4Tensor, QuantizeOptions, check_given_scale, padded_k,
};

/// An element type the GPU kernels read and write (f32, f16, bf16).
pub trait GpuElement: Element + DeviceRepr + ValidAsZeroBits + Default {}
impl<T: Element + DeviceRepr + ValidAsZeroBits + Default> GpuElement for T {}

/// An NVFP4 tensor in device memory: the device twin of [`Nvfp4Tensor`]. The global scale stays on
/// the device (a quantize computes it there), so using it never needs a host round trip.
pub struct DeviceNvfp4 {
    rows: usize,
    cols: usize,
    cols_padded: usize,
    scale_layout: ScaleLayout,
    /// Packed codes, `[rows, cols_padded / 2]`.
    pub codes: CudaSlice<u8>,
    /// Block scales in [`DeviceNvfp4::scale_layout`].
    pub scales: CudaSlice<u8>,
    /// One f32: the global scale, decode convention.
    pub global_scale: CudaSlice<f32>,
    amax_bits: CudaSlice<u32>,
    first_nonfinite: CudaSlice<u64>,
}

impl DeviceNvfp4 {
    /// Allocates the result of quantizing `[rows, cols]` with `opts` (scales zero-filled, so the
    /// padding of a swizzled layout is 0x00 as the format requires).
    pub fn alloc(
        stream: &Arc<CudaStream>,
        name: &str,
        rows: usize,
        cols: usize,
        opts: &QuantizeOptions,
    ) -> Result<Self> {
        let shape = [rows, cols];
        element_count(name, &shape)?;
        let cols_padded = padded_k(name, rows, cols, opts.pad_k)?;
        Ok(DeviceNvfp4 {
            rows,
            cols,
            cols_padded,
            scale_layout: opts.scale_layout,
            codes: alloc_zeros(stream, "codes", rows * cols_padded / 2)?,
            scales: alloc_zeros(stream, "scales", opts.scale_layout.len(rows, cols_padded / BLOCK))?,
            global_scale: alloc_zeros(stream, "global scale", 1)?,
            amax_bits: alloc_zeros(stream, "amax", 1)?,
            first_nonfinite: alloc_zeros(stream, "first non-finite index", 1)?,
        })
    }

    /// Copies a host tensor to the device (ordered on `stream`, no synchronization).
    pub fn upload(stream: &Arc<CudaStream>, t: &Nvfp4Tensor) -> Result<Self> {
        Ok(DeviceNvfp4 {
            rows: t.rows(),
            cols: t.cols(),
            cols_padded: t.cols_padded(),
            scale_layout: t.scale_layout(),
            codes: upload(stream, "codes", t.codes())?,
            scales: upload(stream, "scales", t.scales())?,
            global_scale: upload(stream, "global scale", &[t.global_scale()])?,
            amax_bits: alloc_zeros(stream, "amax", 1)?,
            first_nonfinite: alloc_zeros(stream, "first non-finite index", 1)?,
        })
    }

    /// Copies the tensor back to the host, waiting for `stream`.
    pub fn download(&self, stream: &Arc<CudaStream>) -> Result<Nvfp4Tensor> {
        let t = Nvfp4Tensor {
            rows: self.rows,
            cols: self.cols,
            cols_padded: self.cols_padded,
            codes: download(stream, "codes", &self.codes)?,
            scales: download(stream, "scales", &self.scales)?,
            scale_layout: self.scale_layout,
            global_scale: download(stream, "global scale", &self.global_scale)?[0],
        };
        Ok(t)
    }

    /// Views of the tensor's buffers (for ops that also take streamed weights).
    pub fn view(&self) -> Nvfp4View<'_> {
        Nvfp4View {
            rows: self.rows,
            cols: self.cols_padded,
            scale_layout: self.scale_layout,
            codes: self.codes.as_view(),
            scales: self.scales.as_view(),
            global_scale: self.global_scale.as_view(),
        }
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// Columns as stored (K rounded up to 16).
    pub fn cols_padded(&self) -> usize {
        self.cols_padded
    }

    /// Layout of the scales.
    pub fn scale_layout(&self) -> ScaleLayout {
        self.scale_layout
    }

    /// Converts the scales to `layout` on the device (a new scale buffer; nothing if already there).
    pub fn set_scale_layout(
        &mut self,
        dev: &Device,
        stream: &Arc<CudaStream>,
        layout: ScaleLayout,
    ) -> Result<()> {
        if layout == self.scale_layout {
            return Ok(());
        }
        let bc = self.cols_padded / BLOCK;
        let mut dst = alloc_zeros::<u8>(stream, "scales", layout.len(self.rows, bc))?;
        launch::convert_scales(
            dev,
            stream,
            self.rows,
            bc,
            &self.scales,
            self.scale_layout,
            &mut dst,
        )?;
        self.scales = dst;
        self.scale_layout = layout;
        Ok(())
    }
}

/// Quantizes a device tensor `[rows, cols]` exactly as [`crate::quant::quantize`] does on the CPU:
/// same options, same errors, same bytes. Allocates the result; [`quantize_into`] reuses one.
///
/// With `NonFinite::Error` (the default) this reads one flag back to report the first NaN/Inf, which
/// waits for `stream`; with `NonFinite::Saturate` it only enqueues work and never synchronizes.
///
/// ```no_run
/// use nvfp4::{cuda::{Device, upload}, ops, QuantizeOptions};
/// let dev = Device::new(0)?;
/// let x = upload(dev.stream(), "x", &vec![1.0f32; 4096])?;
/// let q = ops::quantize(&dev, dev.stream(), "x", &x, 64, 64, &QuantizeOptions::default())?;
/// let host = q.download(dev.stream())?;
/// # Ok::<(), nvfp4::Error>(())
/// ```
pub fn quantize<T: GpuElement>(
    dev: &Device,
    stream: &Arc<CudaStream>,
    name: &str,
    x: &CudaSlice<T>,
    rows: usize,
    cols: usize,
    opts: &QuantizeOptions,
) -> Result<DeviceNvfp4> {
    let mut out = DeviceNvfp4::alloc(stream, name, rows, cols, opts)?;
    quantize_into(dev, stream, name, x, opts, &mut out)?;
    Ok(out)
}

/// Quantizes `x` into `out`, whose shape and options fix the result's: allocates nothing, so it
/// can run in a loop or under CUDA-graph capture (with `NonFinite::Saturate`, which never syncs).
pub fn quantize_into<T: GpuElement>(
    dev: &Device,
    stream: &Arc<CudaStream>,
    name: &str,
    x: &CudaSlice<T>,
    opts: &QuantizeOptions,
    out: &mut DeviceNvfp4,
) -> Result<()> {
    let (rows, cols, cols_padded) = (out.rows, out.cols, out.cols_padded);
    let shape = [rows, cols];
    if x.len() != rows * cols {
        return Err(Error::length(name, &shape, rows * cols, x.len()));
    }
    if out.scale_layout != opts.scale_layout {
        return Err(Error::invalid(
            name,
            "the output's scale layout differs from the options'",
        ));
    }
    let n = rows * cols;
    let scan = matches!(opts.global_scale, GlobalScale::FromAmax(_)) || opts.non_finite == NonFinite::Error;
    if scan && n > 0 {
        stream
            .memset_zeros(&mut out.amax_bits)
            .map_err(crate::cuda::cuda_err("clearing the amax"))?;
        crate::cuda::fill_bytes(stream, &mut out.first_nonfinite, 0xFF, "the non-finite flag")?;
        launch::amax(dev, stream, x, &mut out.amax_bits, &mut out.first_nonfinite)?;
    }
    if opts.non_finite == NonFinite::Error && n > 0 {
        let index = download(stream, "first non-finite index", &out.first_nonfinite)?[0];
        if index != u64::MAX {
            let index = index as usize;
            // Only the offending element comes back, not the tensor.
            let value = if index < x.len() {
                let mut one = [T::default()];
                stream
                    .memcpy_dtoh(&x.slice(index..index + 1), &mut one)
                    .and_then(|_| stream.synchronize())
                    .map_err(crate::cuda::cuda_err(format!(
                        "reading element {index} of `{name}`"
                    )))?;
                one[0].to_f32()
            } else {
                f32::NAN
            };
            return Err(Error::non_finite(name, shape, index, value));
        }
    }
    let quantizes = rows * cols_padded > 0;
    // The quantize launch derives a global scale from the amax itself (one launch fewer); the scale
    // kernel runs only when nothing is quantized but the scale is still an output.
    let amax_bits = out.amax_bits.as_view();
    let derive = match opts.global_scale {
        GlobalScale::FromAmax(rule) if quantizes => Some((&amax_bits, rule)),
        GlobalScale::FromAmax(rule) => {
            launch::global_scale(dev, stream, &out.amax_bits, &mut out.global_scale, rule)?;
            None
        }
        GlobalScale::Given(s) => {
            check_given_scale(name, s)?;
            stream
                .memcpy_htod(&[s], &mut out.global_scale)
                .map_err(crate::cuda::cuda_err("setting the global scale"))?;
            None
        }
    };
    if quantizes {
        let s = QuantizeShape::new(rows, cols, cols_padded, opts);
        launch::quantize(
            dev,
            stream,
            x,
            s,
            &mut out.global_scale,
            derive,
            &mut out.codes,
            &mut out.scales,
        )?;
    }
    Ok(())
}

/// Dequantizes into `out` (`rows * cols` elements), as [`crate::quant::dequantize`] does: same bits.
/// Enqueues work only. A tensor quantized with K padding must be dequantized on the CPU (the kernel
/// writes whole rows of `cols_padded`).
pub fn dequantize<T: GpuElement>(
    dev: &Device,
    stream: &Arc<CudaStream>,
    t: &DeviceNvfp4,
    out: &mut CudaSlice<T>,
) -> Result<()> {
    if t.cols != t.cols_padded {
        return Err(Error::shape(
            "dequantize input",
            &t.shape(),
            "K must be a multiple of 16 on the GPU",
        ));
    }
    dequantize_view(dev, stream, &t.view(), out)
}

/// An NVFP4 tensor inside someone else's device memory (a streamed weight slot): views of its codes,
/// scales and global scale. K (`cols`) is the stored, padded K.
pub struct Nvfp4View<'a> {
    /// Rows.
    pub rows: usize,
    /// Columns as stored (a multiple of 16).
    pub cols: usize,
    /// Layout of `scales`.
    pub scale_layout: ScaleLayout,
    /// Packed codes, `rows * cols / 2` bytes.
    pub codes: CudaView<'a, u8>,
    /// Block scales.
    pub scales: CudaView<'a, u8>,
    /// One f32.
    pub global_scale: CudaView<'a, f32>,
}

/// [`dequantize`] of a tensor held in views (same kernel, same bits). Enqueues work only.
///
/// ```no_run
/// use nvfp4::{cuda::{Device, alloc_zeros}, ops::{self, DeviceNvfp4, Nvfp4View}, quant, QuantizeOptions};
/// let dev = Device::new(0)?;
/// let q = quant::quantize("w", &vec![1.0f32; 256], 16, 16, &QuantizeOptions::default())?;
/// let d = DeviceNvfp4::upload(dev.stream(), &q)?;
/// let v = Nvfp4View { rows: 16, cols: 16, scale_layout: q.scale_layout(),
///     codes: d.codes.as_view(), scales: d.scales.as_view(), global_scale: d.global_scale.as_view() };
/// let mut out = alloc_zeros::<f32>(dev.stream(), "out", 256)?;
/// ops::dequantize_view(&dev, dev.stream(), &v, &mut out)?;
/// # Ok::<(), nvfp4::Error>(())
/// ```
pub fn dequantize_view<T: GpuElement>(
    dev: &Device,
    stream: &Arc<CudaStream>,
    t: &Nvfp4View<'_>,
    out: &mut CudaSlice<T>,
) -> Result<()> {
    launch::dequantize(
        dev,
        stream,
        t.rows,
        t.cols,
        &t.codes,
        &t.scales,
        t.scale_layout,
        &t.global_scale,
        out,
    )
}

/// Device memory of [`error_stats_into`]: per-block partial sums and the three results (Σx², Σ(x̂ - x)²,
/// max |x̂ - x| as f64), reusable for any shape on its device.
pub struct DeviceErrorStats {
    partials: CudaSlice<f64>,
    /// `[Σx², Σ(x̂ - x)², max |x̂ - x|]` once the launch has run.
    pub sums: CudaSlice<f64>,
}

impl DeviceErrorStats {
    /// Allocates the buffers for `dev` (a few KiB).
    pub fn new(dev: &Device, stream: &Arc<CudaStream>) -> Result<Self> {
        Ok(DeviceErrorStats {
            partials: alloc_zeros(stream, "error partials", launch::error_stats_partials(dev))?,
            sums: alloc_zeros(stream, "error sums", 3)?,
        })
    }

    /// Reads the result back, waiting for `stream`.
    pub fn download(&self, stream: &Arc<CudaStream>) -> Result<ErrorStats> {
        let v = download(stream, "error sums", &self.sums)?;
        Ok(ErrorStats {
            signal: v[0],
            noise: v[1],
            max_abs: v[2],
        })
    }
}

/// Enqueues the error sums of `q` against the data `x` it was quantized from (`[rows, cols]` of `q`'s
/// shape) into `out`: [`crate::quant::error_stats`]'s f32 arithmetic on the device, so the sums agree
/// with the CPU's to f64 rounding and the maximum exactly. Deterministic (no atomics); never
/// synchronizes.
pub fn error_stats_into<T: GpuElement>(
    dev: &Device,
    stream: &Arc<CudaStream>,
    x: &CudaSlice<T>,
    q: &DeviceNvfp4,
    out: &mut DeviceErrorStats,
) -> Result<()> {
    let s = ErrorStatsShape {
        rows: q.rows,
        cols: q.cols,
        cols_padded: q.cols_padded,
        scale_layout: q.scale_layout,
    };
    launch::error_stats(
        dev,
        stream,
        x,
        &q.codes,
        &q.scales,
        &q.global_scale,
        s,
        &mut out.partials,
        &mut out.sums,
    )
}

/// [`error_stats_into`] with its own buffers, read back (waits for `stream`).
///
/// ```no_run
/// use nvfp4::{cuda::{Device, upload}, ops, QuantizeOptions};
/// let dev = Device::new(0)?;
/// let x = upload(dev.stream(), "x", &vec![0.3f32; 4096])?;
/// let q = ops::quantize(&dev, dev.stream(), "x", &x, 64, 64, &QuantizeOptions::default())?;
/// let e = ops::error_stats(&dev, dev.stream(), &x, &q)?;
/// println!("SNR {:.1} dB, max |err| {:.3e}", e.snr_db(), e.max_abs);
/// # Ok::<(), nvfp4::Error>(())
/// ```
pub fn error_stats<T: GpuElement>(
    dev: &Device,
    stream: &Arc<CudaStream>,
    x: &CudaSlice<T>,
    q: &DeviceNvfp4,
) -> Result<ErrorStats> {
    let mut out = DeviceErrorStats::new(dev, stream)?;
    error_stats_into(dev, stream, x, q, &mut out)?;
    out.download(stream)
}
