//! Typed, validated launches of the NVFP4 GEMM kernels (`csrc/gemv_w4a16.cu`, `csrc/gemm_w4a16.cu`;
//! launch contract: `nvfp4_gemm_params` in `csrc/nvfp4.h`).
//!
//! [`GemmGeometry::new`] checks the shape and fixes the grid once; [`w4a16`] and [`w4a4`] check every
//! buffer length against that geometry before building the parameter struct, so a launch can never index
//! outside its buffers: that check is what makes these functions safe. They enqueue work on the caller's
//! stream, never synchronize and never allocate.

use std::sync::Arc;

use cudarc::driver::{
    CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
};

use super::abi;
use super::device::Device;
use super::kernels::KernelId;
use super::memory::cuda;
use crate::error::{Error, Result};
use crate::format::{Dtype, Element};

/// Threads per block of the mma.sync GEMM kernels (4 warps of 16 output columns: 64 columns per block).
const THREADS: u32 = 128;
/// Output columns (rows of W) per block of the mma.sync kernels.
const BLOCK_N: usize = 64;
/// Output columns per block of the sm_90a wgmma kernels.
const WG_BLOCK_N: usize = 128;
/// K elements per step of the kernels' main loop; K is split in whole steps.
pub const STEP_K: usize = 128;
/// K multiple the sm_90a wgmma kernels need: whole 64-wide tiles (csrc/gemm_w4a16_sm90.cu).
pub const WGMMA_K: usize = 64;

/// Rows of M a block computes: which kernel body runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmTile {
    /// One 16-row MMA tile (`nvfp4_gemv_*`): each weight is decoded once per 16 rows of M.
    M16,
    /// Four 16-row MMA tiles (`nvfp4_gemm_*`): each decoded weight feeds four MMAs.
    M64,
    /// sm_90a only, W4A16 only, K a multiple of 64: the Hopper warpgroup-MMA kernel
    /// (`nvfp4_gemm_w4a16_sm90_*_m64`, csrc/gemm_w4a16_sm90.cu) with 64 rows of M and 128 of W per
    /// block: the weights decoded once per block into shared memory, multiplied by `wgmma`.
    Wg64,
    /// The same kernel with 128 rows of M per block.
    Wg128,
    /// The same kernel with 256 rows of M per block.
    Wg256,
}

impl GemmTile {
    /// Rows of M per block.
    pub const fn rows(self) -> usize {
        match self {
            GemmTile::M16 => 16,
            GemmTile::M64 | GemmTile::Wg64 => 64,
            GemmTile::Wg128 => 128,
            GemmTile::Wg256 => 256,
        }
    }

    /// Rows of W (output columns) per block.
    pub const fn cols(self) -> usize {
        if self.is_wgmma() { WG_BLOCK_N } else { BLOCK_N }
    }

    /// Whether this is one of the sm_90a wgmma kernels.
    pub const fn is_wgmma(self) -> bool {
        matches!(self, GemmTile::Wg64 | GemmTile::Wg128 | GemmTile::Wg256)
    }

    /// The smallest wgmma tile that covers `m` rows of M in one block row, or 256 rows beyond.
    ///
    /// ```
    /// use nvfp4::cuda::launch_gemm::GemmTile;
    /// assert_eq!(GemmTile::wgmma_for(33), GemmTile::Wg64);
    /// assert_eq!(GemmTile::wgmma_for(4096), GemmTile::Wg256);
    /// ```
    pub const fn wgmma_for(m: usize) -> GemmTile {
        if m <= 64 {
            GemmTile::Wg64
        } else if m <= 128 {
            GemmTile::Wg128
        } else {
            GemmTile::Wg256
        }
    }

    /// Threads per block (the wgmma kernels': nvfp4.h's `nvfp4_sm90_launch`, which the kernel checks).
    const fn threads(self) -> u32 {
        match self {
            GemmTile::M16 | GemmTile::M64 => THREADS,
            GemmTile::Wg64 => abi::nvfp4_sm90_launch_NVFP4_SM90_THREADS_M64,
            GemmTile::Wg128 => abi::nvfp4_sm90_launch_NVFP4_SM90_THREADS_M128,
            GemmTile::Wg256 => abi::nvfp4_sm90_launch_NVFP4_SM90_THREADS_M256,
        }
    }

    /// Dynamic shared memory per block, bytes: the wgmma kernels' (nvfp4.h's `nvfp4_sm90_launch`,
    /// which `SmemLayout` in csrc/gemm_w4a16_sm90.cu is checked against at compile time: two decoded
    /// 128x64 weight tiles, a ring of slots each holding one tile of A, W's codes and W's scales, two
    /// mbarriers per slot, 1 KiB to align the base); the others use none.
    pub const fn shared_bytes(self) -> u32 {
        match self {
            GemmTile::M16 | GemmTile::M64 => 0,
            GemmTile::Wg64 => abi::nvfp4_sm90_launch_NVFP4_SM90_SMEM_M64,
            GemmTile::Wg128 => abi::nvfp4_sm90_launch_NVFP4_SM90_SMEM_M128,
            GemmTile::Wg256 => abi::nvfp4_sm90_launch_NVFP4_SM90_SMEM_M256,
        }
    }
}

/// The shape of one GEMM and how it is cut into blocks: validated once, reused by every launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmGeometry {
    /// Rows of A and of the output.
    pub m: usize,
    /// Rows of W, columns of the output.
    pub n: usize,
    /// The reduction length, a multiple of 16.
    pub k: usize,
    /// Rows of M per block.
    pub tile: GemmTile,
    /// Slices of K computed by separate blocks (1: no split-K).
    pub splits: usize,
    /// Steps of [`STEP_K`] per split.
    pub steps_per_split: usize,
}

impl GemmGeometry {
    /// Checks `m`, `n`, `k` (K a positive multiple of 16, all within the kernels' 32-bit indices) and
    /// splits K into at most `splits` non-empty slices of whole steps (fewer when K is short).
    ///
    /// ```
    /// use nvfp4::cuda::launch_gemm::{GemmGeometry, GemmTile};
    /// let g = GemmGeometry::new(1, 8192, 8192, GemmTile::M16, 4).unwrap();
    /// assert_eq!((g.splits, g.steps_per_split), (4, 16));
    /// assert!(GemmGeometry::new(1, 8, 20, GemmTile::M16, 1).is_err());
    /// ```
    pub fn new(m: usize, n: usize, k: usize, tile: GemmTile, splits: usize) -> Result<Self> {
        let shape = [m, n, k];
        if k == 0 || k % 16 != 0 {
            return Err(Error::shape(
                "GEMM [M, N, K]",
                &shape,
                "K must be a positive multiple of 16 (the NVFP4 block)",
            ));
        }
        let limit = u32::MAX as usize;
        if m > limit || n > limit || k > limit || m.checked_mul(n).is_none_or(|mn| mn > (1usize << 40)) {
            return Err(Error::shape(
                "GEMM [M, N, K]",
                &shape,
                "each dimension must fit in 32 bits and M * N in 2^40",
            ));
        }
        if m.div_ceil(tile.rows()) > 65535 {
            return Err(Error::shape(
                "GEMM [M, N, K]",
                &shape,
                format!("M must be at most {} for this kernel", 65535 * tile.rows()),
            ));
        }
        if tile.is_wgmma() && k % WGMMA_K != 0 {
            return Err(Error::shape(
                "GEMM [M, N, K]",
                &shape,
                format!("K must be a multiple of {WGMMA_K} for the sm_90a wgmma kernel {tile:?}"),
            ));
        }
        let steps = k.div_ceil(STEP_K);
        let wanted = splits.clamp(1, steps);
        let steps_per_split = steps.div_ceil(wanted);
        Ok(GemmGeometry {
            m,
            n,
            k,
            tile,
            splits: steps.div_ceil(steps_per_split),
            steps_per_split,
        })
    }

    /// The launch grid: (column blocks, row blocks, splits).
    pub fn grid(&self) -> (u32, u32, u32) {
        (
            self.n.div_ceil(self.tile.cols()) as u32,
            self.m.div_ceil(self.tile.rows()) as u32,
            self.splits as u32,
        )
    }

    /// f32 elements of split-K partial sums the launch needs (0 without split-K).
    pub fn workspace_len(&self) -> usize {
        if self.splits > 1 {
            self.splits * self.m * self.n
        } else {
            0
        }
    }

    /// Tile counters the launch needs (0 without split-K); they must be zero before the first launch,
    /// and each launch leaves them zero.
    pub fn counters_len(&self) -> usize {
        if self.splits > 1 {
            let (x, y, _) = self.grid();
            x as usize * y as usize
        } else {
            0
        }
    }
}

/// An NVFP4 operand on the device in the kernels' layout: codes `[rows, K/2]`, linear E4M3 scales
/// `[rows, K/16]`, one f32 global scale.
///
/// Views, so that an operand may live in an owned tensor (`CudaSlice::as_view`) or in a part of a larger
/// buffer (a prefetcher slot); the lengths are checked against the geometry at launch.
pub struct Fp4Operand<'a> {
    /// Packed codes, element `2i` in the low nibble.
    pub codes: CudaView<'a, u8>,
    /// Linear block scales.
    pub scales: CudaView<'a, u8>,
    /// The global scale (decode convention).
    pub global_scale: CudaView<'a, f32>,
}

/// Split-K scratch: partial sums and tile counters of [`GemmGeometry::workspace_len`] and
/// [`GemmGeometry::counters_len`] elements. Launches sharing one must be ordered (one stream).
pub struct SplitWorkspace<'a> {
    /// `[splits, M, N]` f32 partial sums.
    pub partials: &'a mut CudaSlice<f32>,
    /// One counter per output tile, zero between launches.
    pub counters: &'a mut CudaSlice<u32>,
}

fn need(name: &str, shape: &[usize], expected: usize, actual: usize) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(Error::length(name, shape, expected, actual))
    }
}

fn check_fp4(name: &str, rows: usize, k: usize, op: &Fp4Operand<'_>) -> Result<()> {
    let shape = [rows, k];
    need(&format!("{name}.codes"), &shape, rows * k / 2, op.codes.len())?;
    need(&format!("{name}.scales"), &shape, rows * k / 16, op.scales.len())?;
    need(&format!("{name}.global_scale"), &[1], 1, op.global_scale.len())
}

fn dtype_code(d: Dtype) -> u32 {
    match d {
        Dtype::F32 => abi::nvfp4_dtype_NVFP4_DTYPE_F32,
        Dtype::F16 => abi::nvfp4_dtype_NVFP4_DTYPE_F16,
        Dtype::Bf16 => abi::nvfp4_dtype_NVFP4_DTYPE_BF16,
    }
}

/// Activations of a launch, as the kernel sees them.
enum Act<'a, A> {
    Dense(&'a CudaSlice<A>),
    Fp4(Fp4Operand<'a>),
}

/// `out[M, N] = (A · Wᵀ) · alpha + bias` with A bf16/f16 `[M, K]` and W NVFP4 `[N, K]`; alpha is W's
/// global scale. `bias` (`[N]`) has the output's type. Enqueues one kernel.
#[allow(clippy::too_many_arguments)]
pub fn w4a16<A: Element + DeviceRepr, O: Element + DeviceRepr>(
    dev: &Device,
    stream: &Arc<CudaStream>,
    g: &GemmGeometry,
    a: &CudaSlice<A>,
    w: Fp4Operand<'_>,
    bias: Option<&CudaSlice<O>>,
    out: &mut CudaSlice<O>,
    ws: Option<SplitWorkspace<'_>>,
) -> Result<()> {
    let kernel = w4a16_kernel(A::DTYPE, g.tile)?;
    need("A", &[g.m, g.k], g.m * g.k, a.len())?;
    run(dev, stream, kernel, g, Act::Dense(a), w, bias, out, ws)
}

/// The W4A16 kernel for `act` activations and `tile`; f32 activations are refused (the tensor cores'
/// inputs are 16-bit).
pub fn w4a16_kernel(act: Dtype, tile: GemmTile) -> Result<KernelId> {
    Ok(match (act, tile) {
        (Dtype::Bf16, GemmTile::M16) => KernelId::GemvW4a16Bf16,
        (Dtype::F16, GemmTile::M16) => KernelId::GemvW4a16F16,
        (Dtype::Bf16, GemmTile::M64) => KernelId::GemmW4a16Bf16,
        (Dtype::F16, GemmTile::M64) => KernelId::GemmW4a16F16,
        (Dtype::Bf16, GemmTile::Wg64) => KernelId::GemmW4a16Sm90Bf16M64,
        (Dtype::Bf16, GemmTile::Wg128) => KernelId::GemmW4a16Sm90Bf16M128,
        (Dtype::Bf16, GemmTile::Wg256) => KernelId::GemmW4a16Sm90Bf16M256,
        (Dtype::F16, GemmTile::Wg64) => KernelId::GemmW4a16Sm90F16M64,
        (Dtype::F16, GemmTile::Wg128) => KernelId::GemmW4a16Sm90F16M128,
        (Dtype::F16, GemmTile::Wg256) => KernelId::GemmW4a16Sm90F16M256,
        (Dtype::F32, _) => {
            return Err(Error::invalid(
                "A",
                "W4A16 activations must be bf16 or f16 (the tensor cores' 16-bit inputs), not f32",
            ));
        }
    })
}

/// The W4A4 dequantize kernel for `tile`; the wgmma tiles are W4A16 only.
pub fn w4a4_kernel(tile: GemmTile) -> Result<KernelId> {
    match tile {
        GemmTile::M16 => Ok(KernelId::GemvW4a4),
        GemmTile::M64 => Ok(KernelId::GemmW4a4),
        GemmTile::Wg64 | GemmTile::Wg128 | GemmTile::Wg256 => Err(Error::invalid(
            "kernel",
            format!("{tile:?} is the sm_90a W4A16 wgmma kernel; W4A4 has no such kernel"),
        )),
    }
}

/// Whether the device of compute capability `cc` can run the sm_90a wgmma kernels: an sm_90 GPU and a
/// build whose fatbins hold sm_90a code (elsewhere the kernels are a trap).
pub fn wgmma_for(cc: (u32, u32)) -> Result<()> {
    if cc != (9, 0) {
        return Err(Error::UnsupportedArch {
            what: "the W4A16 wgmma GEMM (nvfp4_gemm_w4a16_sm90_*)".into(),
            needed: "sm_90 (Hopper)".into(),
            found: format!("sm_{}{}", cc.0, cc.1),
        });
    }
    if !super::TARGETS.contains(&"sm_90a") {
        return Err(Error::UnsupportedArch {
            what: format!(
                "the W4A16 wgmma GEMM (this build's targets are {:?}; build with sm_90a in NVFP4_CUDA_ARCHS)",
                super::TARGETS
            ),
            needed: "sm_90a code in the fatbin".into(),
            found: format!("sm_{}{}", cc.0, cc.1),
        });
    }
    Ok(())
}

/// `out[M, N] = (A · Wᵀ) · alpha + bias` with both operands NVFP4 (`[M, K]` and `[N, K]`); alpha is the
/// product of the two global scales. Enqueues one kernel.
#[allow(clippy::too_many_arguments)]
pub fn w4a4<O: Element + DeviceRepr>(
    dev: &Device,
    stream: &Arc<CudaStream>,
    g: &GemmGeometry,
    a: Fp4Operand<'_>,
    w: Fp4Operand<'_>,
    bias: Option<&CudaSlice<O>>,
    out: &mut CudaSlice<O>,
    ws: Option<SplitWorkspace<'_>>,
) -> Result<()> {
    let kernel = w4a4_kernel(g.tile)?;
    check_fp4("A", g.m, g.k, &a)?;
    run::<u8, O>(dev, stream, kernel, g, Act::Fp4(a), w, bias, out, ws)
}

#[allow(clippy::too_many_arguments)]
fn run<A: DeviceRepr, O: Element + DeviceRepr>(
    dev: &Device,
    stream: &Arc<CudaStream>,
    kernel: KernelId,
    g: &GemmGeometry,
    a: Act<'_, A>,
    w: Fp4Operand<'_>,
    bias: Option<&CudaSlice<O>>,
    out: &mut CudaSlice<O>,
    ws: Option<SplitWorkspace<'_>>,
) -> Result<()> {
    dev.check_stream(stream)?;
    // The geometry's own invariants, in case it was built by hand rather than by `new`.
    let checked = GemmGeometry::new(g.m, g.n, g.k, g.tile, g.splits)?;
    if checked != *g {
        return Err(Error::invalid(
            "GEMM geometry",
            format!("{g:?} is not what GemmGeometry::new gives ({checked:?})"),
        ));
    }
    check_fp4("W", g.n, g.k, &w)?;
    need("out", &[g.m, g.n], g.m * g.n, out.len())?;
    if let Some(b) = bias {
        need("bias", &[g.n], g.n, b.len())?;
    }
    if g.m == 0 || g.n == 0 {
        return Ok(());
    }
    let f = dev.function(kernel)?;
    if g.tile.is_wgmma() {
        wgmma_for(dev.info().compute_capability)?;
        f.set_attribute(
            cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            g.tile.shared_bytes() as i32,
        )
        .map_err(cuda(format!(
            "raising the shared-memory limit of `{}`",
            kernel.symbol()
        )))?;
    }
    let (wc, _g1) = w.codes.device_ptr(stream);
    let (wsc, _g2) = w.scales.device_ptr(stream);
    let (wgs, _g3) = w.global_scale.device_ptr(stream);
    let (ap, asp, ags, _ga) = match &a {
        Act::Dense(x) => {
            let (p, guard) = x.device_ptr(stream);
            (p, 0, 0, (Some(guard), None, None, None))
        }
        Act::Fp4(op) => {
            let (p, g1) = op.codes.device_ptr(stream);
            let (s, g2) = op.scales.device_ptr(stream);
            let (gs, g3) = op.global_scale.device_ptr(stream);
            (p, s, gs, (None, Some(g1), Some(g2), Some(g3)))
        }
    };
    let (bp, _gb) = match bias {
        Some(b) => {
            let (p, guard) = b.device_ptr(stream);
            (p, Some(guard))
        }
        None => (0, None),
    };
    let (op, _go) = out.device_ptr_mut(stream);
    let (wsp, cp, _gw) = if g.splits > 1 {
        let Some(ws) = ws else {
            return Err(Error::invalid(
                "split-K workspace",
                format!("{} splits need a workspace; none was given", g.splits),
            ));
        };
        need(
            "workspace",
            &[g.splits, g.m, g.n],
            g.workspace_len(),
            ws.partials.len(),
        )?;
        need(
            "counters",
            &[g.counters_len()],
            g.counters_len(),
            ws.counters.len(),
        )?;
        let (p, g1) = ws.partials.device_ptr_mut(stream);
        let (c, g2) = ws.counters.device_ptr_mut(stream);
        (p, c, Some((g1, g2)))
    } else {
        (0, 0, None)
    };
    let p = abi::nvfp4_gemm_params {
        a: ap as *const _,
        a_scales: asp as *const u8,
        a_global_scale: ags as *const f32,
        w_codes: wc as *const u8,
        w_scales: wsc as *const u8,
        w_global_scale: wgs as *const f32,
        bias: bp as *const _,
        out: op as *mut _,
        workspace: wsp as *mut f32,
        counters: cp as *mut u32,
        m: g.m as u32,
        n: g.n as u32,
        k: g.k as u32,
        splits: g.splits as u32,
        steps_per_split: g.steps_per_split as u32,
        out_dtype: dtype_code(O::DTYPE),
        bias_dtype: dtype_code(O::DTYPE),
        _pad: 0,
    };
    let (x, y, z) = g.grid();
    let cfg = LaunchConfig {
        grid_dim: (x, y, z),
        block_dim: (g.tile.threads(), 1, 1),
        shared_mem_bytes: g.tile.shared_bytes(),
    };
    let mut b = stream.launch_builder(f);
    b.arg(&p);
    // SAFETY: `p` is the kernel's single by-value parameter (the struct of csrc/nvfp4.h; the bindgen test
    // holds the layouts equal). Every pointer comes from a live buffer whose length was checked above
    // against the geometry, itself re-derived by GemmGeometry::new, and the grid is the geometry's, which
    // is what the kernel's index math assumes (nvfp4.h); the guards keep the buffers' stream order.
    unsafe { b.launch(cfg) }.map_err(cuda(format!("launching `{}`", kernel.symbol())))?;
    Ok(())
}
