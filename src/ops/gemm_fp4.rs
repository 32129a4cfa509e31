//! W4A4 NVFP4 GEMM on the Blackwell sm_120 FP4 tensor cores: the GPU twin of
//! [`crate::reference::mma::mma_gemm`], with the same bits on any input.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;

use super::quantize::{DeviceNvfp4, GpuElement};
use crate::cuda::Device;
use crate::cuda::gemm_fp4::{self, Fp4Tile, GEMM_SCALE_LAYOUT, GemmFp4Operands, SMALL_TILE_MAX_M};
use crate::error::{Error, Result};
use crate::quant::{GlobalScale, GlobalScaleRule, NonFinite, QuantizeOptions};

/// Where the FP4 GEMM runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fp4Backend {
    /// The block-scaled FP4 tensor cores of sm_12x (RTX 50, RTX PRO 6000 Blackwell, DGX Spark); any other
    /// GPU is [`Error::UnsupportedArch`].
    #[default]
    Native,
    /// The same kernel on sm_90 (H100) with the instruction emulated in integer arithmetic: the sm_120
    /// kernel's bits, for verification without Blackwell hardware, far slower than any real GEMM.
    Sm120Emulated,
}

/// `out[M, N] = alpha · A[M, K] · W[N, K]^T (+ bias[N])` with `alpha = a.global_scale · w.global_scale`,
/// accumulated by the block-scaled FP4 instruction in increasing K and rounded once to `T`; the bits are
/// those of [`crate::reference::mma::mma_gemm`]. Enqueues work on `stream`, never synchronizes. The tile
/// is [`Fp4Tile::for_m`] of A's rows (force one through [`Fp4GemmSpec::tile`]).
///
/// Both operands need 128x4 swizzled scales (convert with [`DeviceNvfp4::set_scale_layout`]); K is the
/// stored K (a multiple of 16), equal for both.
///
/// ```no_run
/// use nvfp4::{cuda::{Device, alloc_zeros, upload}, ops, QuantizeOptions, format::ScaleLayout};
/// let dev = Device::new(0)?;
/// let opts = QuantizeOptions { scale_layout: ScaleLayout::Swizzled128x4, ..Default::default() };
/// let x = upload(dev.stream(), "x", &vec![1.0f32; 4 * 64])?;
/// let w = upload(dev.stream(), "w", &vec![0.5f32; 8 * 64])?;
/// let a = ops::quantize(&dev, dev.stream(), "x", &x, 4, 64, &opts)?;
/// let w = ops::quantize(&dev, dev.stream(), "w", &w, 8, 64, &opts)?;
/// let mut out = alloc_zeros::<f32>(dev.stream(), "out", 4 * 8)?;
/// ops::gemm_fp4(&dev, dev.stream(), &a, &w, None, &mut out, ops::Fp4Backend::Native)?;
/// # Ok::<(), nvfp4::Error>(())
/// ```
pub fn gemm_fp4<T: GpuElement>(
    dev: &Device,
    stream: &Arc<CudaStream>,
    a: &DeviceNvfp4,
    w: &DeviceNvfp4,
    bias: Option<&CudaSlice<f32>>,
    out: &mut CudaSlice<T>,
    backend: Fp4Backend,
) -> Result<()> {
    gemm_fp4_tiled(
        dev,
        stream,
        a,
        w,
        bias,
        out,
        backend,
        Fp4Tile::for_m(a.shape()[0]),
    )
}

#[allow(clippy::too_many_arguments)]
fn gemm_fp4_tiled<T: GpuElement>(
    dev: &Device,
    stream: &Arc<CudaStream>,
    a: &DeviceNvfp4,
    w: &DeviceNvfp4,
    bias: Option<&CudaSlice<f32>>,
    out: &mut CudaSlice<T>,
    backend: Fp4Backend,
    tile: Fp4Tile,
) -> Result<()> {
    for (name, t) in [("A", a), ("W", w)] {
        if t.scale_layout() != GEMM_SCALE_LAYOUT {
            return Err(Error::invalid(
                name,
                format!(
                    "the FP4 GEMM reads 128x4 swizzled scales, this tensor {:?} has {:?} ones \
                     (convert with DeviceNvfp4::set_scale_layout(ScaleLayout::Swizzled128x4))",
                    t.shape(),
                    t.scale_layout()
                ),
            ));
        }
    }
    if a.shape()[1] != w.shape()[1] || a.cols_padded() != w.cols_padded() {
        return Err(Error::shape(
            "A",
            &a.shape(),
            format!("K = {} to match the weight's shape {:?}", w.shape()[1], w.shape()),
        ));
    }
    let ops = GemmFp4Operands {
        m: a.shape()[0],
        n: w.shape()[0],
        k: a.cols_padded(),
        a_codes: &a.codes,
        a_scales: &a.scales,
        a_global_scale: &a.global_scale,
        w_codes: &w.codes,
        w_scales: &w.scales,
        w_global_scale: &w.global_scale,
        bias,
    };
    gemm_fp4::gemm_fp4(dev, stream, &ops, out, tile, backend == Fp4Backend::Sm120Emulated)
}

/// The tile for `m` rows (or the `forced` one) and why, as [`Fp4GemmPlan::explain`] and
/// [`super::GemmPlan::explain`] say it.
pub(crate) fn fp4_tile_for(m: usize, forced: Option<Fp4Tile>) -> (Fp4Tile, String) {
    match forced {
        Some(t) => (t, "forced by the caller".to_string()),
        None if m <= SMALL_TILE_MAX_M => (
            Fp4Tile::Small,
            format!(
                "M = {m} <= {SMALL_TILE_MAX_M}: one 16-row tile covers M, so the weight streams once and \
                 no instruction is spent on rows past M"
            ),
        ),
        None => (
            Fp4Tile::Large,
            format!("M = {m} > {SMALL_TILE_MAX_M}: 64-row tiles reuse each weight tile 64 times"),
        ),
    }
}

/// What to plan for the FP4 GEMM: `out[m, n] = A[m, k] · W[n, k]^T`, with `k` the stored K (a multiple
/// of 16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fp4GemmSpec {
    /// Rows of A and of the output.
    pub m: usize,
    /// Rows of W (output features).
    pub n: usize,
    /// The reduction length as stored, a multiple of 16.
    pub k: usize,
    /// Force a backend; `None` chooses by compute capability (sm_12x: [`Fp4Backend::Native`]; other GPUs
    /// are refused, since the emulation is for verification only and must be asked for).
    pub backend: Option<Fp4Backend>,
    /// Force a CTA tile (tests, benchmarks); `None` chooses by M ([`Fp4Tile::for_m`]). Every tile gives
    /// the same bits.
    pub tile: Option<Fp4Tile>,
}

impl Fp4GemmSpec {
    /// An `[m, k] x [n, k]^T` problem with the backend chosen by the device and the tile by M.
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        Fp4GemmSpec {
            m,
            n,
            k,
            backend: None,
            tile: None,
        }
    }
}

/// A validated FP4 GEMM: the backend, the tile, the grid and why, checked once by [`Fp4GemmPlan::new`]; a launch
/// only checks that the operands are the planned ones, so it cannot fail on the shape.
///
/// ```no_run
/// use nvfp4::cuda::Device;
/// use nvfp4::ops::{Fp4GemmPlan, Fp4GemmSpec};
/// let dev = Device::new(0)?;
/// let plan = Fp4GemmPlan::new(&dev, &Fp4GemmSpec::new(1, 8192, 8192))?;
/// println!("{}", plan.explain());
/// assert_eq!(plan.workspace_bytes(), 0);
/// # Ok::<(), nvfp4::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Fp4GemmPlan {
    spec: Fp4GemmSpec,
    backend: Fp4Backend,
    tile: Fp4Tile,
    reason: String,
}

impl Fp4GemmPlan {
    /// Validates `spec` on `dev`: K a multiple of 16, a grid the driver accepts, a device that runs the
    /// instruction (natively on sm_12x, or emulated on sm_90 when `spec.backend` asks for it).
    pub fn new(dev: &Device, spec: &Fp4GemmSpec) -> Result<Self> {
        let info = dev.info();
        let (backend, why) = match spec.backend {
            Some(b) => (b, "forced by the caller"),
            None => (
                Fp4Backend::Native,
                "sm_12x has the block-scaled FP4 tensor cores (mma kind::mxf4nvf4)",
            ),
        };
        gemm_fp4::fp4_mma_on(dev, backend == Fp4Backend::Sm120Emulated)?;
        let (tile, tile_why) = fp4_tile_for(spec.m, spec.tile);
        let (gx, gy) = gemm_fp4::gemm_fp4_grid(spec.m, spec.n, spec.k, tile)?;
        let reason = format!(
            "W4A4 FP4 GEMM M={} N={} K={} on {} ({} SMs): kernel {}, {:?} backend ({why}); \
             {:?} tile {}x{} ({tile_why}), {}-stage cp.async, grid {gx}x{gy}x1, 128 threads; \
             workspace 0 bytes",
            spec.m,
            spec.n,
            spec.k,
            info.arch(),
            info.sm_count,
            tile.kernel().symbol(),
            backend,
            tile,
            tile.rows_m(),
            tile.rows_n(),
            tile.stages(),
        );
        Ok(Fp4GemmPlan {
            spec: *spec,
            backend,
            tile,
            reason,
        })
    }

    /// Which kernel runs and why, in words.
    pub fn explain(&self) -> &str {
        &self.reason
    }

    /// The backend the plan launches.
    pub fn backend(&self) -> Fp4Backend {
        self.backend
    }

    /// The CTA tile (and so the kernel) the plan launches.
    pub fn tile(&self) -> Fp4Tile {
        self.tile
    }

    /// Device bytes the plan holds: none (the kernel needs no workspace).
    pub fn workspace_bytes(&self) -> usize {
        0
    }

    /// The planned problem.
    pub fn spec(&self) -> &Fp4GemmSpec {
        &self.spec
    }

    /// Enqueues [`gemm_fp4`] of the planned shape on `stream` (never synchronizes). `a` must be
    /// `[m, k]` and `w` `[n, k]` as planned (stored K), both with 128x4 swizzled scales; `out` is
    /// `m * n` elements of f32, f16 or bf16; `bias` is f32 `[n]`.
    pub fn launch<T: GpuElement>(
        &self,
        dev: &Device,
        stream: &Arc<CudaStream>,
        a: &DeviceNvfp4,
        w: &DeviceNvfp4,
        bias: Option<&CudaSlice<f32>>,
        out: &mut CudaSlice<T>,
    ) -> Result<()> {
        let s = &self.spec;
        for (name, t, rows) in [("A", a, s.m), ("W", w, s.n)] {
            if t.shape()[0] != rows || t.cols_padded() != s.k {
                return Err(Error::shape(
                    name,
                    &t.shape(),
                    format!(
                        "the plan's [{rows}, {}] (stored K {}, this tensor stores {})",
                        s.k,
                        s.k,
                        t.cols_padded()
                    ),
                ));
            }
        }
        gemm_fp4_tiled(dev, stream, a, w, bias, out, self.backend, self.tile)
    }
}

/// How [`linear_nvfp4`] quantizes its activations and which GEMM backend it uses.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinearNvfp4Options {
    /// The activations' global scale (decode convention): a checkpoint layer's `input_scale`. `None`
    /// computes it on the device from the activations' amax (ModelOpt's `amax / 2688`), per call.
    pub input_scale: Option<f32>,
    /// The GEMM backend; `None` chooses by device (see [`Fp4GemmSpec::backend`]).
    pub backend: Option<Fp4Backend>,
}

impl LinearNvfp4Options {
    /// The quantizer options of the activations: 128x4 swizzled scales (what the GEMM reads), the given
    /// or amax global scale, K padded like the weight's, and non-finite values saturated (so the
    /// quantize never reads a flag back: no host synchronization).
    pub fn quantize_options(&self) -> QuantizeOptions {
        QuantizeOptions {
            global_scale: self
                .input_scale
                .map_or(GlobalScale::FromAmax(GlobalScaleRule::Divide), GlobalScale::Given),
            scale_layout: GEMM_SCALE_LAYOUT,
            non_finite: NonFinite::Saturate,
            pad_k: true,
            ..QuantizeOptions::default()
        }
    }
}

/// `out[M, N] = x[M, K] · W[N, K]^T (+ bias)` for bf16 activations and an NVFP4 weight: quantizes `x` to
/// NVFP4 on the device (the GPU twin of [`crate::quant::quantize`] with
/// [`LinearNvfp4Options::quantize_options`]) and runs the FP4 GEMM on the same stream. Nothing comes back
/// to the host and nothing synchronizes; the activation buffer is allocated per call (stream-ordered).
/// The bits are those of CPU quantize followed by [`crate::reference::mma::mma_gemm`].
///
/// `weight` needs 128x4 swizzled scales; M is `x.len() / K` with K the weight's unpadded K.
///
/// ```no_run
/// use half::bf16;
/// use nvfp4::{cuda::{Device, alloc_zeros, upload}, ops, quant, QuantizeOptions, format::ScaleLayout};
/// let dev = Device::new(0)?;
/// let s = dev.stream();
/// let opts = QuantizeOptions { scale_layout: ScaleLayout::Swizzled128x4, ..Default::default() };
/// let w = quant::quantize("w", &vec![0.5f32; 8 * 64], 8, 64, &opts)?;
/// let w = ops::DeviceNvfp4::upload(s, &w)?;
/// let x = upload(s, "x", &vec![bf16::ONE; 4 * 64])?;
/// let mut out = alloc_zeros::<bf16>(s, "out", 4 * 8)?;
/// let o = ops::LinearNvfp4Options { input_scale: Some(1.0 / 2688.0), ..Default::default() };
/// ops::linear_nvfp4(&dev, s, &x, &w, None, &mut out, &o)?;
/// # Ok::<(), nvfp4::Error>(())
/// ```
pub fn linear_nvfp4<T: GpuElement>(
    dev: &Device,
    stream: &Arc<CudaStream>,
    x: &CudaSlice<bf16>,
    weight: &DeviceNvfp4,
    bias: Option<&CudaSlice<f32>>,
    out: &mut CudaSlice<T>,
    opts: &LinearNvfp4Options,
) -> Result<()> {
    let [n, k] = weight.shape();
    if k == 0 || x.len() % k != 0 {
        return Err(Error::shape(
            "x",
            &[x.len()],
            format!("[M, {k}] to match the weight's shape {:?}", weight.shape()),
        ));
    }
    let m = x.len() / k;
    let spec = Fp4GemmSpec {
        m,
        n,
        k: weight.cols_padded(),
        backend: opts.backend,
        tile: None,
    };
    let plan = Fp4GemmPlan::new(dev, &spec)?;
    let q = opts.quantize_options();
    let a = super::quantize::quantize(dev, stream, "x", x, m, k, &q)?;
    plan.launch(dev, stream, &a, weight, bias, out)
}
