//! Typed, validated launches of the kernels of `csrc/quantize.cu` and `csrc/quant_error.cu`.
//!
//! Buffers are anything cudarc can give a device pointer for (whole `CudaSlice`s or views into a
//! larger buffer, as the checkpoint quantizer's reused buffers are).
//!
//! Each function checks every buffer length against the shape before it builds the parameter struct,
//! so a launch can never index outside its buffers: that check is what makes these functions safe.
//! They enqueue work on the caller's stream and never synchronize.

use std::sync::Arc;

use cudarc::driver::{
    CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
};

use super::abi;
use super::device::Device;
use super::kernels::KernelId;
use super::memory::cuda;
use crate::error::{Error, Result};
use crate::format::{Dtype, Element, ScaleLayout, ZeroSign};
use crate::quant::{GlobalScaleRule, QuantizeOptions};

/// Threads per block of every kernel in quantize.cu (the header allows any size; 256 keeps eight
/// warps per block for latency hiding without limiting occupancy at these register counts).
const BLOCK_THREADS: u32 = 256;
/// Largest grid.x the driver accepts.
const MAX_GRID: u64 = (1 << 31) - 1;

pub(crate) fn dtype_code(d: Dtype) -> u32 {
    match d {
        Dtype::F32 => abi::nvfp4_dtype_NVFP4_DTYPE_F32,
        Dtype::F16 => abi::nvfp4_dtype_NVFP4_DTYPE_F16,
        Dtype::Bf16 => abi::nvfp4_dtype_NVFP4_DTYPE_BF16,
    }
}

fn layout_code(l: ScaleLayout) -> u32 {
    match l {
        ScaleLayout::Linear => abi::nvfp4_scale_layout_NVFP4_SCALE_LINEAR,
        ScaleLayout::Swizzled128x4 => abi::nvfp4_scale_layout_NVFP4_SCALE_SWIZZLED_128X4,
    }
}

/// `cols_padded` must be K rounded up to a multiple of 16.
fn check_padded(shape: &[usize; 2], cols_padded: usize) -> Result<()> {
    let cols = shape[1];
    if cols_padded % 16 != 0 || cols_padded < cols || cols_padded - cols >= 16 {
        return Err(Error::shape(
            "x",
            shape,
            format!("padded K {cols_padded} must be K rounded up to 16"),
        ));
    }
    Ok(())
}

pub(crate) fn need(name: &str, shape: &[usize], expected: usize, actual: usize) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(Error::length(name, shape, expected, actual))
    }
}

/// Launches `k` over `grid` blocks with `params` as its only argument.
fn launch<P: DeviceRepr>(
    dev: &Device,
    stream: &Arc<CudaStream>,
    k: KernelId,
    grid: u64,
    params: &P,
) -> Result<()> {
    dev.check_stream(stream)?;
    let f = dev.function(k)?;
    let cfg = LaunchConfig {
        grid_dim: (grid.clamp(1, MAX_GRID) as u32, 1, 1),
        block_dim: (BLOCK_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = stream.launch_builder(f);
    b.arg(params);
    // SAFETY: `params` matches the kernel's single by-value parameter (the struct of csrc/nvfp4.h, the
    // layout test holds the two equal); every pointer in it was taken from a live buffer whose length
    // the caller checked against the shape in the same struct, and the kernels walk their work with
    // grid-stride loops, so any grid size is in bounds.
    unsafe { b.launch(cfg) }.map_err(cuda(format!("launching `{}`", k.symbol())))?;
    Ok(())
}

/// Blocks for a grid-stride walk over `units` (one thread each): at most 16 blocks per SM, so a thread
/// walks several units on large tensors and its setup (the walk's divisions, the parameter loads) is
/// paid once per several units rather than once per unit; 16 resident-or-queued blocks of 256 threads
/// still keep every SM at its occupancy limit.
fn units_grid(dev: &Device, units: u64) -> u64 {
    units
        .div_ceil(BLOCK_THREADS as u64)
        .min(16 * dev.info().sm_count as u64)
}

/// Raises `amax_bits[0]` to the f32 bits of the largest finite `|x|` and lowers `first_nonfinite[0]` to
/// the index of the first NaN/Inf. The caller initializes both (0 and `u64::MAX`).
pub fn amax<T: Element + DeviceRepr>(
    dev: &Device,
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<T>,
    amax_bits: &mut impl DevicePtrMut<u32>,
    first_nonfinite: &mut impl DevicePtrMut<u64>,
) -> Result<()> {
    need("amax", &[1], 1, amax_bits.len())?;
    need("first_nonfinite", &[1], 1, first_nonfinite.len())?;
    let (xp, _gx) = x.device_ptr(stream);
    let (ap, _ga) = amax_bits.device_ptr_mut(stream);
    let (fp, _gf) = first_nonfinite.device_ptr_mut(stream);
    let p = abi::nvfp4_amax_params {
        x: xp as *const _,
        amax_bits: ap as *mut u32,
        first_nonfinite: fp as *mut _,
        n: x.len() as u64,
        dtype: dtype_code(T::DTYPE),
        _pad: 0,
    };
    // Each thread reads 16 bytes per step, so 2048 elements per block-step at most; a few blocks per
    // SM saturate bandwidth, and fewer blocks mean fewer atomics.
    let grid = (x.len() as u64)
        .div_ceil(2048)
        .min(4 * dev.info().sm_count as u64);
    launch(dev, stream, KernelId::Amax, grid, &p)
}

/// Writes the global scale computed from `amax_bits` by `rule` into `global_scale[0]`.
pub fn global_scale(
    dev: &Device,
    stream: &Arc<CudaStream>,
    amax_bits: &impl DevicePtr<u32>,
    global_scale: &mut impl DevicePtrMut<f32>,
    rule: GlobalScaleRule,
) -> Result<()> {
    need("amax", &[1], 1, amax_bits.len())?;
    need("global_scale", &[1], 1, global_scale.len())?;
    let (ap, _ga) = amax_bits.device_ptr(stream);
    let (gp, _gg) = global_scale.device_ptr_mut(stream);
    let p = abi::nvfp4_global_scale_params {
        amax_bits: ap as *const u32,
        global_scale: gp as *mut f32,
        rule: rule_code(rule),
        _pad: 0,
    };
    launch(dev, stream, KernelId::GlobalScale, 1, &p)
}

fn rule_code(rule: GlobalScaleRule) -> u32 {
    match rule {
        GlobalScaleRule::Divide => abi::nvfp4_global_rule_NVFP4_GLOBAL_DIVIDE,
        GlobalScaleRule::Reciprocal => abi::nvfp4_global_rule_NVFP4_GLOBAL_RECIPROCAL,
    }
}

/// Shape and modes of one quantize launch.
#[derive(Clone, Copy, Debug)]
pub struct QuantizeShape {
    /// Rows.
    pub rows: usize,
    /// Logical columns (K).
    pub cols: usize,
    /// Columns as stored, a multiple of 16 and at least `cols`.
    pub cols_padded: usize,
    /// Layout of the scales written.
    pub scale_layout: ScaleLayout,
    /// Sign rule of zero codes.
    pub zero_sign: ZeroSign,
    /// Clamp block scales to [2^-9, 448].
    pub clamp_scale: bool,
}

impl QuantizeShape {
    /// The launch `opts` asks for on a `[rows, cols]` tensor stored `cols_padded` wide.
    pub(crate) fn new(rows: usize, cols: usize, cols_padded: usize, opts: &QuantizeOptions) -> Self {
        QuantizeShape {
            rows,
            cols,
            cols_padded,
            scale_layout: opts.scale_layout,
            zero_sign: opts.zero_sign,
            clamp_scale: opts.clamp_scale,
        }
    }

    /// The tensor's shape without the quantize modes: what its buffers are checked against, and
    /// what its error-statistics launch takes.
    pub(crate) fn tensor(&self) -> ErrorStatsShape {
        ErrorStatsShape {
            rows: self.rows,
            cols: self.cols,
            cols_padded: self.cols_padded,
            scale_layout: self.scale_layout,
        }
    }
}

/// Checks the buffer lengths of one quantized tensor (its input `x`, `codes`, `scales` and
/// `global_scale`) against `s`; returns `[rows, cols]` for the caller's own checks.
fn check_tensor(
    s: &ErrorStatsShape,
    x: usize,
    codes: usize,
    scales: usize,
    global_scale: usize,
) -> Result<[usize; 2]> {
    let shape = [s.rows, s.cols];
    check_padded(&shape, s.cols_padded)?;
    need("x", &shape, s.rows * s.cols, x)?;
    need("codes", &shape, s.rows * s.cols_padded / 2, codes)?;
    need(
        "scales",
        &shape,
        s.scale_layout.len(s.rows, s.cols_padded / 16),
        scales,
    )?;
    need("global_scale", &[1], 1, global_scale)?;
    Ok(shape)
}

/// Quantizes `x` (`[rows, cols]`) into `codes` and `scales`. With `derive` `None` the global scale is
/// read from `global_scale[0]`; with `Some((amax_bits, rule))` the kernel derives it from the amax (as
/// [`global_scale`] would) and stores it in `global_scale[0]`, saving that launch.
/// A swizzled `scales` buffer must be zero-filled beforehand (the kernel writes only real entries).
#[allow(clippy::too_many_arguments)]
pub fn quantize<T: Element + DeviceRepr>(
    dev: &Device,
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<T>,
    s: QuantizeShape,
    global_scale: &mut impl DevicePtrMut<f32>,
    derive: Option<(&CudaView<'_, u32>, GlobalScaleRule)>,
    codes: &mut impl DevicePtrMut<u8>,
    scales: &mut impl DevicePtrMut<u8>,
) -> Result<()> {
    check_tensor(
        &s.tensor(),
        x.len(),
        codes.len(),
        scales.len(),
        global_scale.len(),
    )?;
    if let Some((a, _)) = derive {
        need("amax", &[1], 1, a.len())?;
    }
    let (xp, _gx) = x.device_ptr(stream);
    let (gp, _gg) = global_scale.device_ptr_mut(stream);
    let amax = derive.map(|(a, rule)| (a.device_ptr(stream), rule));
    let (cp, _gc) = codes.device_ptr_mut(stream);
    let (sp, _gs) = scales.device_ptr_mut(stream);
    let p = abi::nvfp4_quantize_params {
        x: xp as *const _,
        codes: cp as *mut u8,
        scales: sp as *mut u8,
        global_scale: gp as *mut f32,
        amax_bits: amax
            .as_ref()
            .map_or(std::ptr::null(), |((ap, _), _)| *ap as *const u32),
        rows: s.rows as u64,
        cols: s.cols as u64,
        cols_padded: s.cols_padded as u64,
        dtype: dtype_code(T::DTYPE),
        scale_layout: layout_code(s.scale_layout),
        zero_sign: match s.zero_sign {
            ZeroSign::ModelOpt => abi::nvfp4_zero_sign_NVFP4_ZERO_SIGN_MODELOPT,
            ZeroSign::Hardware => abi::nvfp4_zero_sign_NVFP4_ZERO_SIGN_HARDWARE,
        },
        clamp_scale: s.clamp_scale as u32,
        rule: amax.as_ref().map_or(0, |(_, r)| rule_code(*r)),
        _pad: 0,
    };
    let units = (s.rows * s.cols_padded / 16) as u64;
    launch(dev, stream, KernelId::Quantize, units_grid(dev, units), &p)
}

/// Dequantizes `[rows, cols]` (cols a multiple of 16) into `out`.
#[allow(clippy::too_many_arguments)]
/// The inputs may be whole buffers or views (a tensor inside a streamed weight slot).
pub fn dequantize<T: Element + DeviceRepr>(
    dev: &Device,
    stream: &Arc<CudaStream>,
    rows: usize,
    cols: usize,
    codes: &impl DevicePtr<u8>,
    scales: &impl DevicePtr<u8>,
    scale_layout: ScaleLayout,
    global_scale: &impl DevicePtr<f32>,
    out: &mut CudaSlice<T>,
) -> Result<()> {
    let shape = [rows, cols];
    if cols % 16 != 0 {
        return Err(Error::shape("codes", &shape, "K must be a multiple of 16"));
    }
    need("codes", &shape, rows * cols / 2, codes.len())?;
    need("scales", &shape, scale_layout.len(rows, cols / 16), scales.len())?;
    need("global_scale", &[1], 1, global_scale.len())?;
    need("out", &shape, rows * cols, out.len())?;
    let (cp, _gc) = codes.device_ptr(stream);
    let (sp, _gs) = scales.device_ptr(stream);
    let (gp, _gg) = global_scale.device_ptr(stream);
    let (op, _go) = out.device_ptr_mut(stream);
    let p = abi::nvfp4_dequantize_params {
        codes: cp as *const u8,
        scales: sp as *const u8,
        global_scale: gp as *const f32,
        out: op as *mut _,
        rows: rows as u64,
        cols: cols as u64,
        out_dtype: dtype_code(T::DTYPE),
        scale_layout: layout_code(scale_layout),
    };
    launch(
        dev,
        stream,
        KernelId::Dequantize,
        units_grid(dev, (rows * cols / 16) as u64),
        &p,
    )
}

/// Converts `rows x block_cols` scales from `from` into `dst` in the other layout. A swizzled `dst`
/// must be zero-filled beforehand.
pub fn convert_scales(
    dev: &Device,
    stream: &Arc<CudaStream>,
    rows: usize,
    block_cols: usize,
    src: &CudaSlice<u8>,
    from: ScaleLayout,
    dst: &mut CudaSlice<u8>,
) -> Result<()> {
    let shape = [rows, block_cols];
    let to = match from {
        ScaleLayout::Linear => ScaleLayout::Swizzled128x4,
        ScaleLayout::Swizzled128x4 => ScaleLayout::Linear,
    };
    need("scales", &shape, from.len(rows, block_cols), src.len())?;
    need("converted scales", &shape, to.len(rows, block_cols), dst.len())?;
    let (sp, _gs) = src.device_ptr(stream);
    let (dp, _gd) = dst.device_ptr_mut(stream);
    let p = abi::nvfp4_scale_layout_params {
        src: sp as *const u8,
        dst: dp as *mut u8,
        rows: rows as u64,
        block_cols: block_cols as u64,
        to_swizzled: (to == ScaleLayout::Swizzled128x4) as u32,
        _pad: 0,
    };
    launch(
        dev,
        stream,
        KernelId::ScaleLayout,
        units_grid(dev, (rows * block_cols) as u64),
        &p,
    )
}

/// Shape of one error-statistics launch: the quantized tensor's, K padding included.
#[derive(Clone, Copy, Debug)]
pub struct ErrorStatsShape {
    /// Rows.
    pub rows: usize,
    /// Logical columns (K).
    pub cols: usize,
    /// Columns as stored, K rounded up to 16.
    pub cols_padded: usize,
    /// Layout of the scales.
    pub scale_layout: ScaleLayout,
}

/// Blocks of one `nvfp4_quant_error` launch over `s`: one thread per 4 lanes of a group of 16 blocks
/// (nvfp4.h), at most 8 blocks per SM so each thread walks several groups of a large tensor and the
/// partials stay few.
fn error_stats_grid(dev: &Device, s: &ErrorStatsShape) -> u64 {
    let groups = (s.cols / 16).div_ceil(16) + usize::from(s.cols % 16 != 0);
    (4 * s.rows as u64 * groups as u64)
        .div_ceil(BLOCK_THREADS as u64)
        .clamp(1, 8 * dev.info().sm_count.max(1) as u64)
}

/// The f64s of partial sums [`error_stats`] needs on `dev` for any shape: 3 per block of the largest grid.
pub fn error_stats_partials(dev: &Device) -> usize {
    3 * 8 * dev.info().sm_count.max(1) as usize
}

/// Enqueues the error sums of the quantized tensor (`codes`, `scales`, `global_scale[0]`) against `x`
/// (`[rows, cols]`): `out[0..3]` becomes Σx², Σ(x̂ - x)² and max |x̂ - x| (`quant::error_stats`'s
/// arithmetic). `partials` is scratch of at least [`error_stats_partials`] f64s; two kernels run, the
/// second reducing the first's per-block sums in a fixed order, so the result is deterministic.
#[allow(clippy::too_many_arguments)]
pub fn error_stats<T: Element + DeviceRepr>(
    dev: &Device,
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<T>,
    codes: &impl DevicePtr<u8>,
    scales: &impl DevicePtr<u8>,
    global_scale: &impl DevicePtr<f32>,
    s: ErrorStatsShape,
    partials: &mut impl DevicePtrMut<f64>,
    out: &mut impl DevicePtrMut<f64>,
) -> Result<()> {
    let shape = check_tensor(&s, x.len(), codes.len(), scales.len(), global_scale.len())?;
    need("error sums", &[3], 3, out.len())?;
    let grid = error_stats_grid(dev, &s);
    if partials.len() < 3 * grid as usize {
        return Err(Error::length(
            "error partials",
            &shape,
            3 * grid as usize,
            partials.len(),
        ));
    }
    {
        let (xp, _gx) = x.device_ptr(stream);
        let (cp, _gc) = codes.device_ptr(stream);
        let (sp, _gs) = scales.device_ptr(stream);
        let (gp, _gg) = global_scale.device_ptr(stream);
        let (pp, _gp) = partials.device_ptr_mut(stream);
        let p = abi::nvfp4_quant_error_params {
            x: xp as *const _,
            codes: cp as *const u8,
            scales: sp as *const u8,
            global_scale: gp as *const f32,
            partials: pp as *mut f64,
            rows: s.rows as u64,
            cols: s.cols as u64,
            cols_padded: s.cols_padded as u64,
            dtype: dtype_code(T::DTYPE),
            scale_layout: layout_code(s.scale_layout),
        };
        launch(dev, stream, KernelId::QuantError, grid, &p)?;
    }
    let (pp, _gp) = partials.device_ptr_mut(stream);
    let (op, _go) = out.device_ptr_mut(stream);
    let p = abi::nvfp4_quant_error_reduce_params {
        partials: pp as *const f64,
        out: op as *mut f64,
        blocks: grid,
    };
    launch(dev, stream, KernelId::QuantErrorReduce, 1, &p)
}
