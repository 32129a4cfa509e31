//! NVFP4 GEMMs on the GPU: W4A16 (NVFP4 weights, bf16/f16 activations) and W4A4 (both NVFP4), the twins
//! of [`crate::reference::gemm_w4a16`] and [`crate::reference::gemm_w4a4`].
//!
//! A [`GemmPlan`] validates a problem once, picks the kernel by compute capability and M (with the
//! reason, [`GemmPlan::explain`]; the decision itself is the pure [`choose_kernel`]), and owns its
//! workspace; launching it allocates nothing and never synchronizes, so it can run in hot loops and
//! under CUDA-graph capture.
//!
//! Three routes ([`GemmRoute`]): the mma.sync kernels that decode NVFP4 to bf16/f16 in registers
//! (every GPU from sm_80, and W4A16 everywhere), for W4A4 on sm_12x the sm_120 block-scaled FP4
//! tensor-core kernel of [`super::gemm_fp4`] (csrc/gemm_fp4_sm120.cu), and for large M (feature
//! `cublas`, libcublas loaded at run time) the operands dequantized into a 16-bit workspace and
//! multiplied by cuBLAS ([`GemmRoute::DequantizeCublas`]).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};

#[cfg(feature = "cublas")]
use super::gemm_blas::CublasExec;
use super::gemm_fp4::{Fp4Backend, fp4_tile_for};
use super::quantize::{DeviceNvfp4, GpuElement, Nvfp4View};
use crate::cuda::gemm_fp4::{self as fp4, Fp4Tile, GEMM_SCALE_LAYOUT, GemmFp4Operands};
use crate::cuda::launch::convert_scales;
use crate::cuda::launch_gemm::{self, Fp4Operand, GemmGeometry, GemmTile, STEP_K, SplitWorkspace, WGMMA_K};
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
    /// Force this many K splits (1 turns split-K off) instead of choosing by occupancy (mma.sync
    /// route only, so it also keeps an unforced plan off the cuBLAS route; the FP4 kernel never splits
    /// K).
    pub splits: Option<usize>,
    /// W4A4 only: force the sm_120 FP4 tensor-core route on this backend instead of choosing by compute
    /// capability. `Some(Fp4Backend::Sm120Emulated)` runs the sm_120 kernel on an H100 (the instruction
    /// emulated, for verification); `None` takes [`Fp4Backend::Native`] on sm_12x and the dequantize
    /// kernels elsewhere. Exclusive with `kernel`.
    pub fp4_backend: Option<Fp4Backend>,
    /// The dequantize + cuBLAS route ([`GemmRoute::DequantizeCublas`]): `Some(true)` forces it (an
    /// error where cuBLAS is unavailable; exclusive with `kernel`, `fp4_backend` and `splits` above 1),
    /// `Some(false)` forbids it, `None` lets the plan's cost model decide ([`choose_kernel`]).
    pub cublas: Option<bool>,
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
            cublas: None,
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
    /// `nvfp4_gemv_*` ([`GemmKernel::M16`]) or `nvfp4_gemm_*` ([`GemmKernel::M64`]), split-K by occupancy;
    /// on sm_90 also the W4A16 wgmma kernels `nvfp4_gemm_w4a16_sm90_*` ([`GemmKernel::Wg64`] and up),
    /// which decode into shared memory instead of registers.
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
    /// Large M (feature `cublas`, libcublas loaded at run time): the NVFP4 operands dequantized exactly
    /// (global scale 1.0) into 16-bit workspaces the plan owns, then one cuBLAS GEMM with f32
    /// accumulation and alpha = the global scale(s) read on the device, then the bias and the rounding to
    /// the output type as the mma.sync kernels apply them. Linear or swizzled block scales; results
    /// within the same f32 bound as [`GemmRoute::Dequantize`], bit for bit on exact-sum inputs. Each
    /// launch dequantizes the weights again (they may change between launches). Launches allocate
    /// nothing and never synchronize; capture one into a CUDA graph only after a first, uncaptured
    /// launch, since cuBLAS loads its kernels on first use.
    DequantizeCublas {
        /// The workspaces' type: the activations' for W4A16; for W4A4 f16 with an f16 output, else bf16.
        dtype: Dtype,
    },
}

/// Whether the dequantize + cuBLAS route can run: the input [`choose_kernel`] needs besides the GPU.
///
/// ```
/// use nvfp4::ops::CublasAvailability;
/// let here = CublasAvailability::probe();
/// println!("cuBLAS route: {here:?}");
/// assert!(!CublasAvailability::Unavailable("no libcublas".into()).is_available());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CublasAvailability {
    /// libcublas loads in this process.
    Available,
    /// Why not: a build without the `cublas` feature, libcublas not found, a handle that could not be
    /// created.
    Unavailable(String),
}

impl CublasAvailability {
    /// This build and process: [`CublasAvailability::Available`] when the crate has the `cublas`
    /// feature and libcublas can be loaded (probed once per process, no handle created).
    ///
    /// ```
    /// use nvfp4::ops::CublasAvailability;
    /// if let CublasAvailability::Unavailable(why) = CublasAvailability::probe() {
    ///     println!("large-M GEMMs stay on the mma.sync kernels: {why}");
    /// }
    /// ```
    pub fn probe() -> Self {
        #[cfg(feature = "cublas")]
        {
            match crate::cuda::cublas_loadable() {
                Ok(()) => CublasAvailability::Available,
                Err(why) => CublasAvailability::Unavailable(why),
            }
        }
        #[cfg(not(feature = "cublas"))]
        {
            CublasAvailability::Unavailable("this build of nvfp4 has no `cublas` feature".into())
        }
    }

    /// Whether the route can run.
    ///
    /// ```
    /// assert!(nvfp4::ops::CublasAvailability::Available.is_available());
    /// ```
    pub fn is_available(&self) -> bool {
        matches!(self, CublasAvailability::Available)
    }
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
        // Shared memory (nvfp4.h's nvfp4_sm90_launch): 111 KiB for Wg64, two fit the SM's 228 KiB;
        // 201 and 218 KiB for Wg128 and Wg256.
        (_, GemmTile::Wg64) => 2,
        (_, GemmTile::Wg128 | GemmTile::Wg256) => 1,
    }
}
/// Largest M the 16-row kernel takes by default: up to two 16-row blocks re-reading the weights beat
/// the 64-row kernel on the H100 (BENCHMARKS.md: M = 32 took 88 us with it at 8192², twice M = 16's 40).
const SMALL_M: usize = 32;
/// The fewest K steps a split gets, so that the partial-sum round trip stays small against its loads.
const MIN_STEPS_PER_SPLIT: usize = 4;

/// The cost model [`choose_kernel`] compares the mma.sync route with the dequantize + cuBLAS route by,
/// for M above [`SMALL_M`] (below it the 16-row kernels stream 4.5-bit weights, and the cuBLAS route
/// would write and read them at 16 bits). Estimates in microseconds from the H100 sweep of 2026-12-07
/// (BENCHMARKS.md, `benchmarks/gemm-h100-2026-12-07.json`, issue #5); other GPUs scale both routes
/// roughly alike, so the comparison, not the absolute figure, is what the plan uses.
mod cost {
    /// `ops::dequantize` to 16 bits: 68 us for 8192² on the H100, 1.0 ps per element.
    pub const DEQUANT_PS: f64 = 1.0;
    /// cuBLAS bf16 where it is bandwidth-bound: 58 us at M <= 128 on 8192² (134 MB of weights).
    pub const BLAS_BYTES_PER_US: f64 = 2.3e6;
    /// cuBLAS bf16 where it is compute-bound: 660 us at M = 4096 on 8192² (833 TFLOPS).
    pub const BLAS_FLOP_PER_US: f64 = 8.3e8;
    /// The route's extra launches (dequantize, alpha, epilogue) beyond cuBLAS's own.
    pub const BLAS_FIXED_US: f64 = 5.0;
    /// The 64-row mma.sync kernel's floor: 50.6 us at M = 64 on 2560² (6.5 M weights), 60 us on 3072².
    pub const MMA_FIXED_US: f64 = 40.0;
    /// The 64-row kernel's ps per weight for the first 64-row tile of M (W4A16: 116 us at M = 64 on
    /// 8192², 316 us on 8192x28672; W4A4: 187 us on 8192²) and for each further tile (W4A16: 4987 us at
    /// M = 4096 and 1380 at M = 1024 on 8192²; W4A4: 5574 and 1587).
    pub const MMA_FIRST_TILE_PS: [f64; 2] = [1.2, 2.2];
    pub const MMA_TILE_PS: [f64; 2] = [1.15, 1.24];
    /// The sm_90a wgmma kernel: a floor, the weight stream, and the tensor-core rate it reaches
    /// (estimates before its first H100 sweep; BENCHMARKS.md has the measured figures).
    pub const WG_FIXED_US: f64 = 6.0;
    pub const WG_BYTES_PER_US: f64 = 2.4e6;
    pub const WG_FLOP_PER_US: f64 = 4.5e8;
}

/// (the in-register decode kernel `tile`, dequantize + cuBLAS) estimated microseconds for `spec` with M
/// above [`SMALL_M`].
fn route_costs(spec: &GemmSpec, tile: GemmTile) -> (f64, f64) {
    let (m, n, k) = (spec.m as f64, spec.n as f64, spec.k as f64);
    let w4a4 = spec.op == GemmOp::W4A4;
    let op = usize::from(w4a4);
    let tiles = spec.m.div_ceil(64).max(1) as f64;
    let mma = if tile.is_wgmma() {
        let bytes = n * k * 9.0 / 16.0 + 2.0 * m * k + spec.out.size() as f64 * m * n;
        cost::WG_FIXED_US + (bytes / cost::WG_BYTES_PER_US).max(2.0 * m * n * k / cost::WG_FLOP_PER_US)
    } else {
        cost::MMA_FIXED_US
            + n * k * (cost::MMA_FIRST_TILE_PS[op] + cost::MMA_TILE_PS[op] * (tiles - 1.0)) / 1e6
    };
    let dequant = cost::DEQUANT_PS * (n * k + if w4a4 { m * k } else { 0.0 }) / 1e6;
    let half = cublas_dtype(spec);
    let staged = spec.bias || (spec.out != Dtype::F32 && spec.out != half);
    let c_bytes = if staged { 4.0 } else { spec.out.size() as f64 };
    let gemm_bytes = 2.0 * (n * k + m * k) + c_bytes * m * n;
    let gemm = (gemm_bytes / cost::BLAS_BYTES_PER_US).max(2.0 * m * n * k / cost::BLAS_FLOP_PER_US);
    // The epilogue reads cuBLAS's f32 and writes the output.
    let epilogue = if staged {
        (4.0 + spec.out.size() as f64) * m * n / cost::BLAS_BYTES_PER_US
    } else {
        0.0
    };
    (mma, cost::BLAS_FIXED_US + dequant + gemm + epilogue)
}

/// The workspaces' type on the dequantize + cuBLAS route: W4A16 multiplies in the activations' type;
/// W4A4 in f16 when the output is f16 (cuBLAS then writes it directly), else in bf16.
fn cublas_dtype(spec: &GemmSpec) -> Dtype {
    match spec.op {
        GemmOp::W4A16(act) => act,
        GemmOp::W4A4 if spec.out == Dtype::F16 => Dtype::F16,
        GemmOp::W4A4 => Dtype::Bf16,
    }
}

/// Whether cuBLAS (32-bit dimensions) and the workspaces (element counts) can hold `spec`.
fn cublas_fits(spec: &GemmSpec) -> Result<()> {
    let (m, n, k) = (spec.m, spec.n, spec.k);
    let limit = i32::MAX as usize;
    let counts = [m.checked_mul(k), n.checked_mul(k), m.checked_mul(n)];
    if m > limit || n > limit || k > limit || counts.iter().any(Option::is_none) {
        return Err(Error::shape(
            "GEMM [M, N, K]",
            &[m, n, k],
            "the dequantize + cuBLAS route needs each dimension within 2^31 - 1 (cuBLAS's int) and \
             every operand's element count within usize",
        ));
    }
    Ok(())
}

/// The dequantize + cuBLAS choice, with `why`.
fn cublas_choice(spec: &GemmSpec, why: &str) -> GemmChoice {
    let dtype = cublas_dtype(spec);
    let (what, alpha) = match spec.op {
        GemmOp::W4A16(_) => ("NVFP4 weights", "W's global scale"),
        GemmOp::W4A4 => ("both NVFP4 operands", "a_gs * w_gs"),
    };
    GemmChoice {
        route: GemmRoute::DequantizeCublas { dtype },
        reason: format!(
            "dequantize + cuBLAS ({what} dequantized exactly to {dtype:?} with global scale 1.0 into the \
             plan's workspace, then cublasGemmEx with f32 accumulation, alpha = {alpha} on the device, \
             bias and rounding as the mma.sync kernels; {why})"
        ),
    }
}

/// The automatic dequantize + cuBLAS decision for a spec that forces nothing else: `Ok(why)` takes the
/// route, `Err(note)` stays on mma.sync with `note` for the reason (empty where the route was never in
/// question).
fn cublas_auto(
    spec: &GemmSpec,
    tile: GemmTile,
    cublas: &CublasAvailability,
) -> std::result::Result<String, String> {
    if spec.m <= SMALL_M && spec.cublas.is_none() {
        return Err(String::new());
    }
    if spec.cublas == Some(false) {
        return Err("; dequantize + cuBLAS forbidden by the caller (GemmSpec::cublas)".into());
    }
    if spec.kernel.is_some() || spec.splits.is_some() {
        return Err(
            "; dequantize + cuBLAS not considered: a mma.sync kernel or split count is forced".into(),
        );
    }
    if spec.m <= SMALL_M {
        return Err(String::new());
    }
    if let Err(e) = cublas_fits(spec) {
        return Err(format!("; dequantize + cuBLAS not possible: {e}"));
    }
    let (mma, blas) = route_costs(spec, tile);
    let what = if tile.is_wgmma() {
        "the wgmma kernel"
    } else {
        "the 64-row mma.sync kernel"
    };
    let estimate = format!("estimated {blas:.0} us against {mma:.0} us on {what}, H100 figures");
    if blas >= mma {
        return Err(format!("; dequantize + cuBLAS not taken ({estimate})"));
    }
    match cublas {
        CublasAvailability::Available => Ok(format!("M = {} > {SMALL_M}, {estimate}", spec.m)),
        CublasAvailability::Unavailable(why) => Err(format!(
            "; dequantize + cuBLAS would be faster here ({estimate}) but is unavailable: {why}"
        )),
    }
}

/// Which kernel a plan for `spec` runs on a GPU of compute capability `cc` with cuBLAS `cublas`, and
/// why: the whole dispatch decision of [`GemmPlan::new`] but the split-K count (which needs the SM
/// count), as a pure function, so it can be checked without a GPU.
///
/// - W4A4 on sm_12x: the sm_120 FP4 tensor-core kernel ([`Fp4Backend::Native`]), both operands fed to
///   the tensor cores as E2M1 with their UE4M3 block scales, nothing decoded to 16 bits.
/// - Otherwise (W4A4 on sm_80, sm_90, sm_100, and W4A16 everywhere) up to M = 32: the 16-row mma.sync
///   kernels, which stream the 4.5-bit weights.
/// - Above M = 32: dequantize + cuBLAS ([`GemmRoute::DequantizeCublas`]) where cuBLAS is available and
///   its estimate (dequantizing N·K weights, then cuBLAS bandwidth- or compute-bound) beats the 64-row
///   mma.sync kernel's (a floor plus a cost per weight per 64 rows of M), both from the H100 sweep in
///   BENCHMARKS.md; else the 64-row mma.sync kernel, with the reason cuBLAS was not taken. Both grow
///   with N·K, so in effect this is a threshold on M: cuBLAS from M = 65 on every shape of the sweep,
///   from M = 33 on all but W4A16 on the three largest layers (8192², 8192x28672, 28672x8192), which
///   keep the mma.sync kernel up to M = 64 (measured 116, 316 and 498 us there, against an estimated
///   131, 446 and 446 us for dequantize + cuBLAS: the last is the model's one wrong pick in the sweep).
///   That is the rule on sm_80, sm_100 and sm_12x, and for W4A4 on sm_90.
/// - On sm_90 (a build with sm_90a code), W4A16 above M = 32 with K a multiple of 64: the in-register
///   kernel compared with cuBLAS is the wgmma kernel ([`GemmKernel::Wg64`], [`GemmKernel::Wg128`],
///   [`GemmKernel::Wg256`], the smallest that covers M), estimated from its weight stream and its
///   tensor-core rate (`cost::WG_*`); K not a multiple of 64 keeps the 64-row kernel, and says so.
/// - Overrides: [`GemmSpec::fp4_backend`] forces the FP4 route (on sm_90 only with
///   [`Fp4Backend::Sm120Emulated`]), [`GemmSpec::kernel`] a mma.sync or wgmma kernel (a wgmma tile
///   anywhere but sm_90 with sm_90a code is [`Error::UnsupportedArch`]), [`GemmSpec::cublas`] the
///   dequantize + cuBLAS route (or forbids it).
///
/// Errors: GPUs below sm_80 and a forced FP4 route the GPU cannot run ([`Error::UnsupportedArch`]);
/// f32 W4A16 activations, an FP4 backend for W4A16, or conflicting overrides ([`Error::InvalidValue`]);
/// a forced cuBLAS route without cuBLAS ([`Error::Cublas`]); K not a positive multiple of 16 or a grid
/// beyond the driver's limits ([`Error::Shape`]).
///
/// ```
/// use nvfp4::format::Dtype;
/// use nvfp4::ops::{choose_kernel, CublasAvailability, Fp4Backend, Fp4Tile, GemmKernel, GemmRoute, GemmSpec};
/// let blas = CublasAvailability::Available;
/// let spec = GemmSpec::w4a4(1, 4096, 4096);
/// let blackwell = choose_kernel((12, 0), &spec, &blas)?;
/// assert_eq!(blackwell.route, GemmRoute::Fp4TensorCore { backend: Fp4Backend::Native, tile: Fp4Tile::Small });
/// assert_eq!(choose_kernel((9, 0), &spec, &blas)?.route, GemmRoute::Dequantize(GemmKernel::M16));
/// let prefill = GemmSpec::w4a16(4096, 8192, 8192);
/// assert_eq!(choose_kernel((9, 0), &prefill, &blas)?.route, GemmRoute::DequantizeCublas { dtype: Dtype::Bf16 });
/// let none = CublasAvailability::Unavailable("no libcublas".into());
/// let c = choose_kernel((8, 0), &prefill, &none)?;
/// assert_eq!(c.route, GemmRoute::Dequantize(GemmKernel::M64));
/// assert!(c.reason.contains("no libcublas"));
/// # Ok::<(), nvfp4::Error>(())
/// ```
pub fn choose_kernel(cc: (u32, u32), spec: &GemmSpec, cublas: &CublasAvailability) -> Result<GemmChoice> {
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
    if spec.cublas == Some(true) {
        let other = match (spec.kernel, spec.fp4_backend) {
            (Some(k), _) => Some(format!("the mma.sync kernel {k:?}")),
            (None, Some(b)) => Some(format!("the FP4 backend {b:?}")),
            (None, None) => None,
        };
        if let Some(other) = other {
            return Err(Error::invalid(
                "cublas",
                format!("both the dequantize + cuBLAS route and {other} are forced; force one"),
            ));
        }
        if spec.splits.is_some_and(|s| s > 1) {
            return Err(Error::invalid(
                "splits",
                "the dequantize + cuBLAS route takes no split count (cuBLAS chooses its own reduction)",
            ));
        }
        if let CublasAvailability::Unavailable(why) = cublas {
            return Err(Error::Cublas {
                context: "the dequantize + cuBLAS route forced by GemmSpec::cublas".into(),
                message: why.clone(),
            });
        }
        cublas_fits(spec)?;
        return Ok(cublas_choice(spec, "forced by the caller (GemmSpec::cublas)"));
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
    let large = large_m_tile(cc, spec);
    let blas_note = match cublas_auto(spec, large.0, cublas) {
        Ok(why) => return Ok(cublas_choice(spec, &why)),
        Err(note) => note,
    };
    let (tile, why_tile) = match spec.kernel {
        Some(t) => {
            if t.is_wgmma() {
                launch_gemm::wgmma_for(cc)?;
            }
            (t, "forced by the caller".to_string())
        }
        None if spec.m <= SMALL_M => (
            GemmTile::M16,
            format!(
                "M <= {SMALL_M}: 16-row MMA tiles, so each weight is decoded once per 16 rows and the \
                 layer runs near weight bandwidth"
            ),
        ),
        None => large,
    };
    let kernel = match spec.op {
        GemmOp::W4A16(act) => launch_gemm::w4a16_kernel(act, tile)?,
        GemmOp::W4A4 => launch_gemm::w4a4_kernel(tile)?,
    };
    Ok(GemmChoice {
        route: GemmRoute::Dequantize(tile),
        reason: format!(
            "dequantize kernel {} ({family}; {why_tile}{blas_note})",
            kernel.symbol()
        ),
    })
}

/// Whether plans pick the sm_90a wgmma kernel by themselves. Off: its current version (a producer warp
/// and mbarriers) has not yet run on a device, and its first version, which did, was slower than the
/// routes it would replace (BENCHMARKS.md); until it is measured it runs only when forced
/// ([`GemmSpec::kernel`]).
pub const WGMMA_BY_DEFAULT: bool = false;

/// The in-register decode kernel for M above [`SMALL_M`], with why: on sm_90 (a build with sm_90a code)
/// W4A16 with K a multiple of 64 takes the wgmma kernel with the smallest M tile that covers M (256
/// rows beyond); everything else the 64-row mma.sync kernel.
fn large_m_tile(cc: (u32, u32), spec: &GemmSpec) -> (GemmTile, String) {
    let wgmma = WGMMA_BY_DEFAULT && launch_gemm::wgmma_for(cc).is_ok();
    if wgmma && matches!(spec.op, GemmOp::W4A16(_)) && spec.k % WGMMA_K == 0 {
        let t = GemmTile::wgmma_for(spec.m);
        return (
            t,
            format!(
                "M > {SMALL_M} on sm_90 with K a multiple of {WGMMA_K}: the wgmma kernel, {} rows of M and \
                 128 of W per block, each weight decoded once per block into shared memory",
                t.rows()
            ),
        );
    }
    let why = if wgmma && matches!(spec.op, GemmOp::W4A16(_)) {
        format!(" (K is not a multiple of {WGMMA_K}, which the sm_90 wgmma kernel needs)")
    } else {
        String::new()
    };
    (
        GemmTile::M64,
        format!("M > {SMALL_M}: 64 rows of M per block, each decoded weight pair feeds four MMAs{why}"),
    )
}

/// What a plan launches with: the dequantize kernels' geometry and split-K scratch, the FP4 kernel's
/// swizzled-scale scratch, or the cuBLAS route's handle and workspaces.
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
    #[cfg(feature = "cublas")]
    Cublas(Box<CublasExec>),
}

/// A validated GEMM: kernel, grid, workspace, and why they were chosen.
pub struct GemmPlan {
    spec: GemmSpec,
    route: GemmRoute,
    exec: Exec,
    reason: String,
}

impl GemmPlan {
    /// Validates `spec` on `dev` ([`choose_kernel`] of its compute capability and
    /// [`CublasAvailability::probe`]) and allocates the workspace (zeroed, on `stream`): split-K scratch
    /// on the mma.sync route, room for 128x4 swizzled copies of both operands' scales on the FP4 route,
    /// the 16-bit operand copies and a cuBLAS handle with its workspace on the dequantize + cuBLAS route.
    /// A cuBLAS handle that cannot be created sends an unforced plan back to the mma.sync route, with
    /// the reason in [`GemmPlan::explain`].
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
        let cc = info.compute_capability;
        #[allow(unused_mut)] // reassigned only by the cuBLAS fallback
        let mut choice = choose_kernel(cc, spec, &CublasAvailability::probe())?;
        #[cfg(feature = "cublas")]
        let mut blas = None;
        #[cfg(feature = "cublas")]
        if let GemmRoute::DequantizeCublas { dtype } = choice.route {
            let dims = (spec.m, spec.n, spec.k);
            let w4a4 = spec.op == GemmOp::W4A4;
            match CublasExec::new(dev, stream, dims, w4a4, dtype, spec.out, spec.bias) {
                Ok(x) => blas = Some(Box::new(x)),
                Err(e @ Error::Cublas { .. }) if spec.cublas.is_none() => {
                    let why = CublasAvailability::Unavailable(e.to_string());
                    choice = choose_kernel(cc, spec, &why)?;
                }
                Err(e) => return Err(e),
            }
        }
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
            #[cfg(feature = "cublas")]
            GemmRoute::DequantizeCublas { .. } => {
                let Some(x) = blas else {
                    return Err(Error::invalid(
                        "GEMM plan",
                        "the cuBLAS route has no cuBLAS handle",
                    ));
                };
                let reason = format!(
                    "{head}: {}; {}; workspace {} bytes",
                    choice.reason,
                    x.describe(spec.out),
                    x.workspace_bytes()
                );
                (Exec::Cublas(x), reason)
            }
            #[cfg(not(feature = "cublas"))]
            GemmRoute::DequantizeCublas { .. } => {
                return Err(Error::invalid(
                    "GEMM plan",
                    "the dequantize + cuBLAS route needs the `cublas` feature",
                ));
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
    /// [`GemmKernel::M64`] for [`Fp4Tile::Large`]); on the dequantize + cuBLAS route, whose tiles are
    /// cuBLAS's choice, [`GemmKernel::M64`] (the large-M tile).
    pub fn kernel(&self) -> GemmKernel {
        match &self.exec {
            #[cfg(feature = "cublas")]
            Exec::Cublas(_) => GemmKernel::M64,
            Exec::Dequantize { geometry, .. } => geometry.tile,
            Exec::Fp4 {
                tile: Fp4Tile::Small, ..
            } => GemmKernel::M16,
            Exec::Fp4 {
                tile: Fp4Tile::Large, ..
            } => GemmKernel::M64,
        }
    }

    /// K splits (1: split-K off; always 1 on the FP4 and cuBLAS routes, where none is chosen here).
    pub fn splits(&self) -> usize {
        match &self.exec {
            Exec::Dequantize { geometry, .. } => geometry.splits,
            Exec::Fp4 { .. } => 1,
            #[cfg(feature = "cublas")]
            Exec::Cublas(_) => 1,
        }
    }

    /// Device bytes the plan holds: split-K scratch, the FP4 route's swizzled-scale scratch, or on the
    /// dequantize + cuBLAS route the 16-bit copies of W (`N·K·2` bytes) and for W4A4 of A (`M·K·2`), an
    /// f32 staging buffer where a bias or an output type cuBLAS cannot write needs the epilogue (at most
    /// 64 MiB, or 256 rows of N), and cuBLAS's own workspace (32 MiB from sm_90 on, 4 MiB before).
    pub fn workspace_bytes(&self) -> usize {
        match &self.exec {
            #[cfg(feature = "cublas")]
            Exec::Cublas(x) => x.workspace_bytes(),
            Exec::Dequantize { geometry, .. } => (geometry.workspace_len() + geometry.counters_len()) * 4,
            Exec::Fp4 {
                a_scales, w_scales, ..
            } => a_scales.len() + w_scales.len(),
        }
    }

    /// The block-scale layouts launches take: linear only on the dequantize route; either on the FP4
    /// route, where [`ScaleLayout::Swizzled128x4`] (listed first) is read in place and linear scales are
    /// converted per launch; either on the dequantize + cuBLAS route, whose dequantize kernel reads both
    /// alike. A caller that keeps a weight for many launches converts it once to the first layout.
    pub fn scale_layouts(&self) -> &'static [ScaleLayout] {
        match self.route {
            GemmRoute::Dequantize(_) => &[ScaleLayout::Linear],
            GemmRoute::Fp4TensorCore { .. } => &[ScaleLayout::Swizzled128x4, ScaleLayout::Linear],
            GemmRoute::DequantizeCublas { .. } => &[ScaleLayout::Linear, ScaleLayout::Swizzled128x4],
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
            #[cfg(feature = "cublas")]
            Exec::Cublas(_) => Err(Error::invalid(
                "GEMM plan",
                "this plan runs dequantize + cuBLAS, not the mma.sync kernels",
            )),
        }
    }

    /// Enqueues `out[M, N] = a[M, K] · w[N, K]ᵀ (· w's global scale) + bias` on `stream`.
    ///
    /// Launches of one plan must be ordered on one stream (they share the plan's workspace).
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
        #[cfg(feature = "cublas")]
        if let Exec::Cublas(x) = &mut self.exec {
            return x.w4a16(dev, stream, a, &w.view(), bias, out);
        }
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
        #[cfg(feature = "cublas")]
        if let Exec::Cublas(x) = &mut self.exec {
            return x.w4a4(dev, stream, &a.view(), &w.view(), bias, out);
        }
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
            // The wgmma kernel has one or two blocks per SM and 128 columns per block, so few tiles:
            // it splits more (partials up to about 3.5x the weight bytes, mostly in L2) rather than
            // leave SMs idle.
            let per_col = if tile.is_wgmma() { 4 } else { 57 };
            let cap = (steps / MIN_STEPS_PER_SPLIT).min(spec.k / (per_col * spec.m.max(1)));
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
        if !self.scale_layouts().contains(&v.scale_layout) {
            return Err(Error::invalid(
                "W",
                "the GEMM kernels read linear block scales; quantize the slot's weight with a linear layout",
            ));
        }
        #[cfg(feature = "cublas")]
        if let Exec::Cublas(x) = &mut self.exec {
            return x.w4a16(dev, stream, a, v, bias, out);
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
