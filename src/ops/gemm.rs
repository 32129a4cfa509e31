//! NVFP4 GEMMs on the GPU: W4A16 (NVFP4 weights, bf16/f16 activations) and W4A4 (both NVFP4), the twins
//! of [`crate::reference::gemm_w4a16`] and [`crate::reference::gemm_w4a4`].
//!
//! A [`GemmPlan`] validates a problem once, picks the kernel by compute capability and M (with the
//! reason, [`GemmPlan::explain`]; the decision itself is the pure [`choose_kernel`]), and owns its
//! workspace; launching it allocates nothing and never synchronizes, so it can run in hot loops and
//! under CUDA-graph capture.
//!
//! Two kernel families ([`GemmRoute`]): the mma.sync kernels that decode NVFP4 to bf16/f16 in registers
//! (every GPU from sm_80, and W4A16 everywhere), and, for W4A4 on sm_12x, the sm_120 block-scaled FP4
//! tensor-core kernel of [`super::gemm_fp4`] (csrc/gemm_fp4_sm120.cu).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};

use super::gemm_fp4::{Fp4Backend, fp4_tile_for};
use super::quantize::{DeviceNvfp4, GpuElement, Nvfp4View};
use crate::cuda::gemm_fp4::{self as fp4, Fp4Tile, GEMM_SCALE_LAYOUT, GemmFp4Operands};
use crate::cuda::launch::convert_scales;
use crate::cuda::launch_gemm::{self, Fp4Operand, GemmGeometry, GemmTile, STEP_K, SplitWorkspace};
use crate::cuda::{Device, alloc_zeros};
use crate::error::{Error, Result};
use crate::format::{Dtype, ScaleLayout};

/// Which operation a plan computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmOp {
    /// NVFP4 weights times 16-bit activations of the given type (bf16 or f16).
    W4A16(Dtype),
    /// NVFP4 weights times NVFP4 activations.
    W4A4,
}

/// A kernel choice, for [`GemmSpec::kernel`] to override the plan's own.
pub use crate::cuda::launch_gemm::GemmTile as GemmKernel;

/// What to plan: the problem, the types, and optional overrides (for tests and benchmarks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmSpec {
    /// Rows of A and of the output.
    pub m: usize,
    /// Rows of W (output features).
    pub n: usize,
    /// The reduction length, a multiple of 16.
    pub k: usize,
    /// The operation and activation type.
    pub op: GemmOp,
    /// Output type (f32, f16 or bf16); a bias has the same type.
    pub out: Dtype,
    /// Whether launches add a bias `[N]`.
    pub bias: bool,
    /// Force this dequantize (mma.sync) kernel instead of choosing by M; for W4A4 on sm_12x this also
    /// forces the dequantize route instead of the FP4 tensor cores. Exclusive with `fp4_backend`.
    pub kernel: Option<GemmKernel>,
    /// Force this many K splits (1 turns split-K off) instead of choosing by occupancy (dequantize
    /// route only; the FP4 kernel never splits K).
    pub splits: Option<usize>,
    /// W4A4 only: force the sm_120 FP4 tensor-core route on this backend instead of choosing by compute
    /// capability. `Some(Fp4Backend::Sm120Emulated)` runs the sm_120 kernel on an H100 (the instruction
    /// emulated, for verification); `None` takes [`Fp4Backend::Native`] on sm_12x and the dequantize
    /// kernels elsewhere. Exclusive with `kernel`.
    pub fp4_backend: Option<Fp4Backend>,
}

impl GemmSpec {
    /// A W4A16 problem with bf16 activations and output, no bias, no overrides.
    pub fn w4a16(m: usize, n: usize, k: usize) -> Self {
        GemmSpec {
            m,
            n,
            k,
            op: GemmOp::W4A16(Dtype::Bf16),
            out: Dtype::Bf16,
            bias: false,
            kernel: None,
            splits: None,
            fp4_backend: None,
        }
    }

    /// A W4A4 problem (both operands NVFP4) with bf16 output, no bias, no overrides.
    ///
    /// ```
    /// use nvfp4::ops::{GemmOp, GemmSpec};
    /// assert_eq!(GemmSpec::w4a4(1, 64, 128).op, GemmOp::W4A4);
    /// ```
    pub fn w4a4(m: usize, n: usize, k: usize) -> Self {
        GemmSpec {
            op: GemmOp::W4A4,
            ..GemmSpec::w4a16(m, n, k)
        }
    }
}

/// The kernel family (and kernel) a plan launches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmRoute {
    /// The mma.sync kernels (sm_80+) that decode both NVFP4 operands exactly to bf16/f16 in registers:
    /// `nvfp4_gemv_*` ([`GemmKernel::M16`]) or `nvfp4_gemm_*` ([`GemmKernel::M64`]), split-K by occupancy.
    /// Linear block scales; results within the f32 bound of the f64 reference.
    Dequantize(GemmKernel),
    /// W4A4 on the sm_120 block-scaled FP4 tensor cores (`nvfp4_gemm_fp4_sm120`, or
    /// `nvfp4_gemm_fp4_small_sm120` for the small tile): the bits of [`crate::reference::mma::mma_gemm`].
    Fp4TensorCore {
        /// Native (sm_12x) or the sm_90 emulation.
        backend: Fp4Backend,
        /// The CTA tile, chosen by M ([`Fp4Tile::for_m`]).
        tile: Fp4Tile,
    },
}

/// The device-independent part of a plan: which kernel runs, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GemmChoice {
    /// The kernel family and kernel.
    pub route: GemmRoute,
    /// Why, in words (part of [`GemmPlan::explain`]).
    pub reason: String,
}

impl std::fmt::Debug for GemmPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GemmPlan")
            .field("spec", &self.spec)
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

/// Plans a GEMM: the same as [`GemmPlan::new`].
pub fn plan(dev: &Device, stream: &Arc<CudaStream>, spec: &GemmSpec) -> Result<GemmPlan> {
    GemmPlan::new(dev, stream, spec)
}

/// Blocks per SM the split-K choice fills, as the kernels are built (their `__launch_bounds__`): the
/// W4A16 GEMV (`csrc/gemv_w4a16.cu`, 96 registers x 128 threads) fits 5 per SM from sm_90 on, and 4 on
/// sm_8x, which runs the sm_80 image (115 registers); the W4A4 GEMV (64 registers) 8; the 64-row
/// kernel (~160 registers) 3. The split count keeps the grid within one wave of these (see
/// [`GemmPlan::new`]): a second, partial wave would leave most SMs idle at the end while its few
/// blocks stream their weights.
fn blocks_per_sm(op: GemmOp, tile: GemmTile, cc: (u32, u32)) -> usize {
    match (op, tile) {
        (GemmOp::W4A16(_), GemmTile::M16) if cc.0 < 9 => 4,
        (GemmOp::W4A16(_), GemmTile::M16) => 5,
        (GemmOp::W4A4, GemmTile::M16) => 8,
        (_, GemmTile::M64) => 3,
    }
}
/// Largest M the 16-row kernel takes by default: up to two 16-row blocks re-reading the weights beat
/// the 64-row kernel on the H100 (BENCHMARKS.md: M = 32 took 88 us with it at 8192², twice M = 16's 40).
const SMALL_M: usize = 32;
/// The fewest K steps a split gets, so that the partial-sum round trip stays small against its loads.
const MIN_STEPS_PER_SPLIT: usize = 4;

/// Which kernel a plan for `spec` runs on a GPU of compute capability `cc`, and why: the whole dispatch
/// decision of [`GemmPlan::new`] but the split-K count (which needs the SM count), as a pure function,
/// so it can be checked without a GPU.
///
/// - W4A4 on sm_12x: the sm_120 FP4 tensor-core kernel ([`Fp4Backend::Native`]), both operands fed to
///   the tensor cores as E2M1 with their UE4M3 block scales, nothing decoded to 16 bits.
/// - W4A4 elsewhere (sm_80, sm_90, sm_100), and W4A16 everywhere: the mma.sync dequantize kernels, the
///   16-row one up to M = 32, the 64-row one above.
/// - Overrides: [`GemmSpec::fp4_backend`] forces the FP4 route (on sm_90 only with
///   [`Fp4Backend::Sm120Emulated`]), [`GemmSpec::kernel`] a dequantize kernel.
///
/// Errors: GPUs below sm_80 and a forced FP4 route the GPU cannot run ([`Error::UnsupportedArch`]);
/// f32 W4A16 activations, an FP4 backend for W4A16, or both overrides ([`Error::InvalidValue`]); K not a
/// positive multiple of 16 or a grid beyond the driver's limits ([`Error::Shape`]).
///
/// ```
/// use nvfp4::ops::{choose_kernel, Fp4Backend, Fp4Tile, GemmKernel, GemmRoute, GemmSpec};
/// let spec = GemmSpec::w4a4(1, 4096, 4096);
/// let blackwell = choose_kernel((12, 0), &spec)?;
/// assert_eq!(blackwell.route, GemmRoute::Fp4TensorCore { backend: Fp4Backend::Native, tile: Fp4Tile::Small });
/// assert_eq!(choose_kernel((9, 0), &spec)?.route, GemmRoute::Dequantize(GemmKernel::M16));
/// # Ok::<(), nvfp4::Error>(())
/// ```
pub fn choose_kernel(cc: (u32, u32), spec: &GemmSpec) -> Result<GemmChoice> {
    let arch = format!("sm_{}{}", cc.0, cc.1);
    if cc < (8, 0) {
        return Err(Error::UnsupportedArch {
            what: "the NVFP4 tensor-core GEMM (mma.sync bf16/f16)".into(),
            needed: "sm_80".into(),
            found: arch,
        });
    }
    if let GemmOp::W4A16(act) = spec.op {
        launch_gemm::w4a16_kernel(act, GemmTile::M16)?; // f32 activations are refused before anything else
    }
    if spec.k == 0 || spec.k % 16 != 0 {
        return Err(Error::shape(
            "GEMM [M, N, K]",
            &[spec.m, spec.n, spec.k],
            "K must be a positive multiple of 16 (the NVFP4 block)",
        ));
    }
    let fp4 = match (spec.op, spec.fp4_backend, spec.kernel) {
        (GemmOp::W4A16(_), Some(b), _) => {
            return Err(Error::invalid(
                "fp4_backend",
                format!(
                    "{b:?} asks for the FP4 tensor-core kernel, which is W4A4 only (this plan is {:?})",
                    spec.op
                ),
            ));
        }
        (GemmOp::W4A4, Some(b), Some(k)) => {
            return Err(Error::invalid(
                "kernel",
                format!("both the FP4 backend {b:?} and the dequantize kernel {k:?} are forced; force one"),
            ));
        }
        (GemmOp::W4A4, Some(b), None) => Some((b, "forced by the caller".to_string())),
        (GemmOp::W4A4, None, None) if cc.0 == 12 => Some((
            Fp4Backend::Native,
            format!(
                "{arch} has the block-scaled FP4 tensor cores (mma kind::mxf4nvf4): both operands go in as \
                 E2M1 with their UE4M3 scales, nothing is decoded to 16 bits"
            ),
        )),
        _ => None,
    };
    if let Some((backend, why)) = fp4 {
        fp4::fp4_mma_for(cc, backend == Fp4Backend::Sm120Emulated)?;
        if spec.splits.is_some_and(|s| s > 1) {
            return Err(Error::invalid(
                "splits",
                "the FP4 tensor-core kernel never splits K (that would change the order of \
                 accumulation, and so the bits)",
            ));
        }
        let (tile, tile_why) = fp4_tile_for(spec.m, None);
        fp4::gemm_fp4_grid(spec.m, spec.n, spec.k, tile)?;
        return Ok(GemmChoice {
            route: GemmRoute::Fp4TensorCore { backend, tile },
            reason: format!(
                "sm_120 FP4 tensor-core kernel {}, {backend:?} backend ({why}); {tile:?} tile {}x{} \
                 ({tile_why})",
                tile.kernel().symbol(),
                tile.rows_m(),
                tile.rows_n(),
            ),
        });
    }
    let family = match (spec.op, spec.kernel, cc.0) {
        (GemmOp::W4A4, Some(_), 12) => "the dequantize route forced by the caller".to_string(),
        (GemmOp::W4A4, _, 10) => format!(
            "{arch}: its FP4 MMA (tcgen05) has no kernel here, the sm_120 one is sm_12x only; both operands \
             decoded to bf16 in registers for mma.sync"
        ),
        (GemmOp::W4A4, _, _) => format!(
            "{arch} has no block-scaled FP4 tensor cores (the sm_120 kernel runs there only emulated, when \
             asked); both operands decoded to bf16 in registers for mma.sync"
        ),
        (GemmOp::W4A16(_), _, _) => {
            "NVFP4 weights decoded in registers for mma.sync with the 16-bit activations".to_string()
        }
    };
    let (tile, why_tile) = match spec.kernel {
        Some(t) => (t, "forced by the caller".to_string()),
        None if spec.m <= SMALL_M => (
            GemmTile::M16,
            format!(
                "M <= {SMALL_M}: 16-row MMA tiles, so each weight is decoded once per 16 rows and the \
                 layer runs near weight bandwidth"
            ),
        ),
        None => (
            GemmTile::M64,
            format!("M > {SMALL_M}: 64 rows of M per block, each decoded weight pair feeds four MMAs"),
        ),
    };
    let kernel = match spec.op {
        GemmOp::W4A16(act) => launch_gemm::w4a16_kernel(act, tile)?,
        GemmOp::W4A4 => launch_gemm::w4a4_kernel(tile),
    };
    Ok(GemmChoice {
        route: GemmRoute::Dequantize(tile),
        reason: format!("dequantize kernel {} ({family}; {why_tile})", kernel.symbol()),
    })
}

/// What a plan launches with: the dequantize kernels' geometry and split-K scratch, or the FP4 kernel's
/// swizzled-scale scratch.
enum Exec {
    Dequantize {
        geometry: GemmGeometry,
        workspace: Option<(CudaSlice<f32>, CudaSlice<u32>)>,
    },
    Fp4 {
        backend: Fp4Backend,
        tile: Fp4Tile,
        /// 128x4 swizzled copies of A's and W's scales, for operands that come with linear ones.
        a_scales: CudaSlice<u8>,
        w_scales: CudaSlice<u8>,
    },
}

/// A validated GEMM: kernel, grid, workspace, and why they were chosen.
pub struct GemmPlan {
    spec: GemmSpec,
    route: GemmRoute,
    exec: Exec,
    reason: String,
}

impl GemmPlan {
    /// Validates `spec` on `dev` ([`choose_kernel`] of its compute capability) and allocates the
    /// workspace (zeroed, on `stream`): split-K scratch on the dequantize route, room for 128x4 swizzled
    /// copies of both operands' scales on the FP4 route.
    ///
    /// ```no_run
    /// use nvfp4::cuda::Device;
    /// use nvfp4::ops::{GemmPlan, GemmSpec};
    /// let dev = Device::new(0)?;
    /// let plan = GemmPlan::new(&dev, dev.stream(), &GemmSpec::w4a16(1, 8192, 8192))?;
    /// println!("{}", plan.explain());
    /// # Ok::<(), nvfp4::Error>(())
    /// ```
    pub fn new(dev: &Device, stream: &Arc<CudaStream>, spec: &GemmSpec) -> Result<Self> {
        let info = dev.info();
        let choice = choose_kernel(info.compute_capability, spec)?;
        let sms = info.sm_count.max(1) as usize;
        let head = format!(
            "{:?} -> {:?}{}, M={} N={} K={} on {} ({} SMs)",
            spec.op,
            spec.out,
            if spec.bias { " + bias" } else { "" },
            spec.m,
            spec.n,
            spec.k,
            info.arch(),
            sms,
        );
        let (exec, reason) = match choice.route {
            GemmRoute::Dequantize(tile) => {
                let (geometry, why_split) = split_k(spec, tile, sms, info.compute_capability)?;
                let workspace = if geometry.splits > 1 {
                    Some((
                        alloc_zeros::<f32>(stream, "split-K partial sums", geometry.workspace_len())?,
                        alloc_zeros::<u32>(stream, "split-K tile counters", geometry.counters_len())?,
                    ))
                } else {
                    None
                };
                let (x, y, z) = geometry.grid();
                let reason = format!(
                    "{head}: {}; grid {x}x{y}x{z}, split-K {} of {} steps each ({why_split}); \
                     workspace {} bytes",
                    choice.reason,
                    geometry.splits,
                    geometry.steps_per_split,
                    geometry.workspace_len() * 4 + geometry.counters_len() * 4,
                );
                let exec = Exec::Dequantize { geometry, workspace };
                (exec, reason)
            }
            GemmRoute::Fp4TensorCore { backend, tile } => {
                let (gx, gy) = fp4::gemm_fp4_grid(spec.m, spec.n, spec.k, tile)?;
                // Linear operands (ModelOpt checkpoints, a linear quantize) are converted into these
                // buffers at launch, one small kernel each; swizzled operands are read in place. Sized
                // and zeroed here, so a launch allocates nothing; the conversion rewrites every real
                // entry each time and never touches the padding, which stays 0x00 as the kernel needs.
                // This is cheaper than refusing linear scales (every caller would keep a second,
                // swizzled copy) and than converting in the kernel (the swizzle is what lets one
                // 32-bit load fetch a row's four scales of a K step).
                let bc = spec.k / 16;
                let a_len = GEMM_SCALE_LAYOUT.len(spec.m, bc);
                let w_len = GEMM_SCALE_LAYOUT.len(spec.n, bc);
                let a_scales = alloc_zeros::<u8>(stream, "A scales, 128x4 swizzled", a_len)?;
                let w_scales = alloc_zeros::<u8>(stream, "W scales, 128x4 swizzled", w_len)?;
                let reason = format!(
                    "{head}: {}; grid {gx}x{gy}x1, {}-stage cp.async, no split-K (the bits are those of \
                     reference::mma::mma_gemm, K in increasing order; the bias widened to f32, alpha = \
                     a_gs * w_gs, one rounding to {:?}); linear scales converted to 128x4 swizzled per \
                     launch into the plan's workspace, swizzled ones read in place; workspace {} bytes",
                    choice.reason,
                    tile.stages(),
                    spec.out,
                    a_len + w_len,
                );
                let exec = Exec::Fp4 {
                    backend,
                    tile,
                    a_scales,
                    w_scales,
                };
                (exec, reason)
            }
        };
        Ok(GemmPlan {
            spec: *spec,
            route: choice.route,
            exec,
            reason,
        })
    }

    /// Which kernel runs and why, in words.
    pub fn explain(&self) -> &str {
        &self.reason
    }

    /// The kernel family and kernel the plan launches.
    pub fn route(&self) -> GemmRoute {
        self.route
    }

    /// The rows of M per block of the kernel the plan launches: the dequantize kernel; on the FP4 route
    /// ([`GemmPlan::route`]) the tile of as many rows ([`GemmKernel::M16`] for [`Fp4Tile::Small`],
    /// [`GemmKernel::M64`] for [`Fp4Tile::Large`]).
    pub fn kernel(&self) -> GemmKernel {
        match &self.exec {
            Exec::Dequantize { geometry, .. } => geometry.tile,
            Exec::Fp4 {
                tile: Fp4Tile::Small, ..
            } => GemmKernel::M16,
            Exec::Fp4 {
                tile: Fp4Tile::Large, ..
            } => GemmKernel::M64,
        }
    }

    /// K splits (1: split-K off; always 1 on the FP4 route).
    pub fn splits(&self) -> usize {
        match &self.exec {
            Exec::Dequantize { geometry, .. } => geometry.splits,
            Exec::Fp4 { .. } => 1,
        }
    }

    /// Device bytes the plan holds: split-K scratch, or the FP4 route's swizzled-scale scratch.
    pub fn workspace_bytes(&self) -> usize {
        match &self.exec {
            Exec::Dequantize { geometry, .. } => (geometry.workspace_len() + geometry.counters_len()) * 4,
            Exec::Fp4 {
                a_scales, w_scales, ..
            } => a_scales.len() + w_scales.len(),
        }
    }

    /// The block-scale layouts launches take: linear only on the dequantize route; either on the FP4
    /// route, where [`ScaleLayout::Swizzled128x4`] (listed first) is read in place and linear scales are
    /// converted per launch. A caller that keeps a weight for many launches converts it once to the
    /// first layout.
    pub fn scale_layouts(&self) -> &'static [ScaleLayout] {
        match self.route {
            GemmRoute::Dequantize(_) => &[ScaleLayout::Linear],
            GemmRoute::Fp4TensorCore { .. } => &[ScaleLayout::Swizzled128x4, ScaleLayout::Linear],
        }
    }

    /// The planned problem.
    pub fn spec(&self) -> &GemmSpec {
        &self.spec
    }

    fn check_w4a16_act<A: GpuElement>(&self) -> Result<()> {
        if self.spec.op != GemmOp::W4A16(A::DTYPE) {
            return Err(Error::invalid(
                "A",
                format!(
                    "the plan is {:?}, the activations are {:?}",
                    self.spec.op,
                    A::DTYPE
                ),
            ));
        }
        Ok(())
    }

    fn check_out<O: GpuElement>(&self, bias: Option<&CudaSlice<O>>) -> Result<()> {
        if O::DTYPE != self.spec.out {
            return Err(Error::invalid(
                "out",
                format!(
                    "the plan writes {:?}, the buffer holds {:?}",
                    self.spec.out,
                    O::DTYPE
                ),
            ));
        }
        if bias.is_some() != self.spec.bias {
            return Err(Error::invalid(
                "bias",
                format!(
                    "the plan was made {} a bias",
                    if self.spec.bias { "with" } else { "without" }
                ),
            ));
        }
        Ok(())
    }

    fn check_weight(&self, name: &str, t: &DeviceNvfp4, rows: usize) -> Result<()> {
        let want = [rows, self.spec.k];
        if t.shape() != want || t.cols_padded() != self.spec.k {
            return Err(Error::shape(
                name,
                &t.shape(),
                format!("the plan's {want:?} (K unpadded, a multiple of 16)"),
            ));
        }
        if !self.scale_layouts().contains(&t.scale_layout()) {
            return Err(Error::invalid(
                name,
                "the dequantize GEMM kernels read linear block scales; convert with \
                 DeviceNvfp4::set_scale_layout",
            ));
        }
        Ok(())
    }

    /// The dequantize route's geometry and split-K scratch (W4A16 plans are always on that route).
    fn dequantize(&mut self) -> Result<(GemmGeometry, Option<SplitWorkspace<'_>>)> {
        match &mut self.exec {
            Exec::Dequantize { geometry, workspace } => Ok((
                *geometry,
                workspace
                    .as_mut()
                    .map(|(partials, counters)| SplitWorkspace { partials, counters }),
            )),
            Exec::Fp4 { .. } => Err(Error::invalid(
                "GEMM plan",
                "this plan runs the FP4 tensor-core kernel, which only takes W4A4",
            )),
        }
    }

    /// Enqueues `out[M, N] = a[M, K] · w[N, K]ᵀ (· w's global scale) + bias` on `stream`.
    ///
    /// Launches of one plan must be ordered on one stream (they share the split-K workspace).
    ///
    /// ```no_run
    /// use half::bf16;
    /// use nvfp4::cuda::{Device, alloc_zeros, upload};
    /// use nvfp4::ops::{DeviceNvfp4, GemmPlan, GemmSpec};
    /// use nvfp4::quant::{quantize, QuantizeOptions};
    /// let dev = Device::new(0)?;
    /// let s = dev.stream();
    /// let w = quantize("w", &vec![0.5f32; 64 * 128], 64, 128, &QuantizeOptions::default())?;
    /// let w = DeviceNvfp4::upload(s, &w)?;
    /// let a = upload(s, "a", &vec![bf16::ONE; 2 * 128])?;
    /// let mut out = alloc_zeros::<bf16>(s, "out", 2 * 64)?;
    /// let mut plan = GemmPlan::new(&dev, s, &GemmSpec::w4a16(2, 64, 128))?;
    /// plan.w4a16(&dev, s, &a, &w, None, &mut out)?;
    /// # Ok::<(), nvfp4::Error>(())
    /// ```
    pub fn w4a16<A: GpuElement, O: GpuElement>(
        &mut self,
        dev: &Device,
        stream: &Arc<CudaStream>,
        a: &CudaSlice<A>,
        w: &DeviceNvfp4,
        bias: Option<&CudaSlice<O>>,
        out: &mut CudaSlice<O>,
    ) -> Result<()> {
        self.check_w4a16_act::<A>()?;
        self.check_out(bias)?;
        self.check_weight("W", w, self.spec.n)?;
        let wop = Fp4Operand {
            codes: w.codes.as_view(),
            scales: w.scales.as_view(),
            global_scale: w.global_scale.as_view(),
        };
        let (g, ws) = self.dequantize()?;
        launch_gemm::w4a16(dev, stream, &g, a, wop, bias, out, ws)
    }

    /// Enqueues `out[M, N] = a[M, K] · w[N, K]ᵀ (· both global scales) + bias`, both operands NVFP4, by
    /// the plan's route ([`GemmPlan::route`]).
    ///
    /// - Dequantize route: linear scales only; within the f32 accumulation bound of
    ///   [`crate::reference::gemm_w4a4`], bit for bit on exact-sum inputs.
    /// - FP4 tensor-core route (sm_12x by default): linear or 128x4 swizzled scales, per operand (linear
    ///   ones are converted into the plan's workspace first); the bits of
    ///   [`crate::reference::mma::mma_gemm`] with the bias widened to f32 (exact for f16 and bf16).
    ///
    /// Launches of one plan must be ordered on one stream (they share the plan's workspace).
    ///
    /// ```no_run
    /// use nvfp4::cuda::{Device, alloc_zeros};
    /// use nvfp4::format::Dtype;
    /// use nvfp4::ops::{DeviceNvfp4, GemmPlan, GemmSpec};
    /// use nvfp4::quant::{quantize, QuantizeOptions};
    /// let dev = Device::new(0)?;
    /// let s = dev.stream();
    /// let o = QuantizeOptions::default();
    /// let a = DeviceNvfp4::upload(s, &quantize("a", &vec![1.0f32; 2 * 128], 2, 128, &o)?)?;
    /// let w = DeviceNvfp4::upload(s, &quantize("w", &vec![0.5f32; 64 * 128], 64, 128, &o)?)?;
    /// let mut out = alloc_zeros::<f32>(s, "out", 2 * 64)?;
    /// let spec = GemmSpec { out: Dtype::F32, ..GemmSpec::w4a4(2, 64, 128) };
    /// GemmPlan::new(&dev, s, &spec)?.w4a4(&dev, s, &a, &w, None, &mut out)?;
    /// # Ok::<(), nvfp4::Error>(())
    /// ```
    pub fn w4a4<O: GpuElement>(
        &mut self,
        dev: &Device,
        stream: &Arc<CudaStream>,
        a: &DeviceNvfp4,
        w: &DeviceNvfp4,
        bias: Option<&CudaSlice<O>>,
        out: &mut CudaSlice<O>,
    ) -> Result<()> {
        if self.spec.op != GemmOp::W4A4 {
            return Err(Error::invalid(
                "A",
                format!("the plan is {:?}, the activations are NVFP4", self.spec.op),
            ));
        }
        self.check_out(bias)?;
        self.check_weight("A", a, self.spec.m)?;
        self.check_weight("W", w, self.spec.n)?;
        let (m, n, k) = (self.spec.m, self.spec.n, self.spec.k);
        if let Exec::Fp4 {
            backend,
            tile,
            a_scales,
            w_scales,
        } = &mut self.exec
        {
            let a_sf = swizzled(dev, stream, a, a_scales)?;
            let w_sf = swizzled(dev, stream, w, w_scales)?;
            let ops = GemmFp4Operands {
                m,
                n,
                k,
                a_codes: &a.codes,
                a_scales: a_sf,
                a_global_scale: &a.global_scale,
                w_codes: &w.codes,
                w_scales: w_sf,
                w_global_scale: &w.global_scale,
                bias,
            };
            let emulate = *backend == Fp4Backend::Sm120Emulated;
            return fp4::gemm_fp4(dev, stream, &ops, out, *tile, emulate);
        }
        let aop = Fp4Operand {
            codes: a.codes.as_view(),
            scales: a.scales.as_view(),
            global_scale: a.global_scale.as_view(),
        };
        let wop = Fp4Operand {
            codes: w.codes.as_view(),
            scales: w.scales.as_view(),
            global_scale: w.global_scale.as_view(),
        };
        let (g, ws) = self.dequantize()?;
        launch_gemm::w4a4(dev, stream, &g, aop, wop, bias, out, ws)
    }
}

/// `t`'s scales in the 128x4 swizzled layout: its own buffer when they already are, else `scratch`
/// after converting them there (`scratch` is zeroed once by the plan; the conversion writes only the
/// real entries, so the padding stays 0x00).
fn swizzled<'a>(
    dev: &Device,
    stream: &Arc<CudaStream>,
    t: &'a DeviceNvfp4,
    scratch: &'a mut CudaSlice<u8>,
) -> Result<&'a CudaSlice<u8>> {
    match t.scale_layout() {
        ScaleLayout::Swizzled128x4 => Ok(&t.scales),
        ScaleLayout::Linear => {
            let rows = t.shape()[0];
            let bc = t.cols_padded() / 16;
            convert_scales(dev, stream, rows, bc, &t.scales, ScaleLayout::Linear, scratch)?;
            Ok(scratch)
        }
    }
}

/// The dequantize route's split-K choice for `tile` on `sms` SMs, and its geometry.
fn split_k(spec: &GemmSpec, tile: GemmTile, sms: usize, cc: (u32, u32)) -> Result<(GemmGeometry, String)> {
    let probe = GemmGeometry::new(spec.m, spec.n, spec.k, tile, 1)?;
    let (gx, gy, _) = probe.grid();
    let tiles = gx as usize * gy as usize;
    let steps = spec.k.div_ceil(STEP_K);
    let (splits, why_split) = match spec.splits {
        Some(s) => (s.max(1), "forced by the caller".to_string()),
        None => {
            let per_sm = blocks_per_sm(spec.op, tile, cc);
            // As many splits as keep every block resident at once (one wave), each of at least
            // MIN_STEPS_PER_SPLIT steps, with the partial sums at most a quarter of the weight bytes:
            // per output column they cost 8 bytes per split and row of M (written once, read back
            // once) against K * 9/16 bytes of weights, so splits <= K / (57 M).
            let fit = (per_sm * sms) / tiles.max(1);
            let cap = (steps / MIN_STEPS_PER_SPLIT).min(spec.k / (57 * spec.m.max(1)));
            let s = fit.min(cap).max(1);
            let why = if s > 1 {
                format!(
                    "{tiles} output tiles x {s} K slices fit one wave of {per_sm} blocks x {sms} SMs \
                     (at least {MIN_STEPS_PER_SPLIT} steps of {STEP_K} each)"
                )
            } else {
                format!("{tiles} output tiles fill {sms} SMs (or K is too short to split)")
            };
            (s, why)
        }
    };
    Ok((
        GemmGeometry::new(spec.m, spec.n, spec.k, tile, splits)?,
        why_split,
    ))
}

/// An NVFP4 weight read in place from a layer prefetcher's device slot (or a resident block), for
/// [`GemmPlan::w4a16_slot`].
///
/// It borrows the slot for `'a`, the lifetime of the [`crate::offload::DeviceBlock`] it came from, which
/// itself borrows the prefetcher mutably: the block's `done(i)`, which lets the upload of a later block
/// reuse the slot, cannot be called while a `SlotWeight` is alive. It also names the prefetcher's compute
/// stream, and [`GemmPlan::w4a16_slot`] launches only on that stream, so every GEMM reading the slot is
/// enqueued before the slot's "free" event that `done(i)` records there; the next upload into the slot
/// waits for that event on the device. Only the offload module makes one
/// ([`crate::offload::DeviceTensor::slot_weight`]).
///
/// ```no_run
/// # use nvfp4::offload::DeviceBlock;
/// # fn f(block: &DeviceBlock<'_>) -> nvfp4::Result<()> {
/// let w = block.get("mlp.up")?.slot_weight()?;
/// println!("{} x {} NVFP4 weight in a slot", w.view().rows, w.view().cols);
/// # Ok(()) }
/// ```
pub struct SlotWeight<'a> {
    view: Nvfp4View<'a>,
    stream: &'a Arc<CudaStream>,
}

impl<'a> SlotWeight<'a> {
    pub(crate) fn new(view: Nvfp4View<'a>, stream: &'a Arc<CudaStream>) -> Self {
        SlotWeight { view, stream }
    }

    /// The NVFP4 views into the slot (codes, scales, global scale).
    ///
    /// ```no_run
    /// # fn f(w: &nvfp4::ops::SlotWeight<'_>) {
    /// assert_eq!(w.view().codes.len(), w.view().rows * w.view().cols / 2);
    /// # }
    /// ```
    pub fn view(&self) -> &Nvfp4View<'a> {
        &self.view
    }

    /// The stream the slot is ordered on (the prefetcher's compute stream): launches reading it go here.
    ///
    /// ```no_run
    /// # fn f(w: &nvfp4::ops::SlotWeight<'_>) {
    /// let compute = w.stream().clone();
    /// # }
    /// ```
    pub fn stream(&self) -> &'a Arc<CudaStream> {
        self.stream
    }
}

impl GemmPlan {
    /// [`GemmPlan::w4a16`] with the weight read in place from a prefetcher slot: same kernel, same
    /// bytes, same result. `stream` must be the slot's stream ([`SlotWeight::stream`], the prefetcher's
    /// `streams().compute`), else an error: a launch on another stream would not be covered by the
    /// event the slot's next upload waits for.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use half::bf16;
    /// use nvfp4::cuda::{Device, PinnedPool, StreamSet, alloc_zeros, upload};
    /// use nvfp4::format::Dtype;
    /// use nvfp4::offload::{HostBlock, HostTensor, LayerPrefetcher, PrefetchConfig, Weight};
    /// use nvfp4::ops::{GemmPlan, GemmSpec};
    /// use nvfp4::quant::{quantize, QuantizeOptions};
    /// let dev = Device::new(0)?;
    /// let w = quantize("up", &vec![0.5f32; 64 * 128], 64, 128, &QuantizeOptions::default())?;
    /// let blocks = vec![HostBlock { tensors: vec![HostTensor::new(0, "up", Weight::Nvfp4(w))?] }];
    /// let cfg = PrefetchConfig { blocks_to_swap: 1, depth: 1, ..Default::default() };
    /// let mut pf = LayerPrefetcher::new(&dev, StreamSet::new(&dev)?, Arc::new(PinnedPool::new(&dev)), blocks, cfg)?;
    /// let s = pf.streams().compute.clone();
    /// let a = upload(&s, "a", &vec![bf16::ONE; 2 * 128])?;
    /// let mut out = alloc_zeros::<f32>(&s, "out", 2 * 64)?;
    /// let mut plan = GemmPlan::new(&dev, &s, &GemmSpec { out: Dtype::F32, ..GemmSpec::w4a16(2, 64, 128) })?;
    /// pf.begin_pass()?;
    /// {
    ///     let block = pf.block(0)?;
    ///     let w = block.get("up")?.slot_weight()?;
    ///     plan.w4a16_slot(&dev, &s, &a, &w, None, &mut out)?;
    /// } // the slot views end here; `done` may now let the slot be reused
    /// pf.done(0)?;
    /// pf.end_pass()?;
    /// # Ok::<(), nvfp4::Error>(())
    /// ```
    pub fn w4a16_slot<A: GpuElement, O: GpuElement>(
        &mut self,
        dev: &Device,
        stream: &Arc<CudaStream>,
        a: &CudaSlice<A>,
        w: &SlotWeight<'_>,
        bias: Option<&CudaSlice<O>>,
        out: &mut CudaSlice<O>,
    ) -> Result<()> {
        if stream.cu_stream() != w.stream.cu_stream() {
            return Err(Error::invalid(
                "stream",
                "a slot's weight must be read on the prefetcher's compute stream (SlotWeight::stream), \
                 which the slot's next upload waits for",
            ));
        }
        self.check_w4a16_act::<A>()?;
        self.check_out(bias)?;
        let v = &w.view;
        let want = [self.spec.n, self.spec.k];
        if [v.rows, v.cols] != want {
            return Err(Error::shape(
                "W",
                &[v.rows, v.cols],
                format!("the plan's {want:?} (K unpadded, a multiple of 16)"),
            ));
        }
        if v.scale_layout != ScaleLayout::Linear {
            return Err(Error::invalid(
                "W",
                "the GEMM kernels read linear block scales; quantize the slot's weight with a linear layout",
            ));
        }
        let wop = Fp4Operand {
            codes: v.codes.slice(..),
            scales: v.scales.slice(..),
            global_scale: v.global_scale.slice(..),
        };
        let (g, ws) = self.dequantize()?;
        launch_gemm::w4a16(dev, stream, &g, a, wop, bias, out, ws)
    }
}
