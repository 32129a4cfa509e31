//! Typed, validated launches of `csrc/gemm_fp4_sm120.cu`: the W4A4 NVFP4 GEMM on the sm_120
//! block-scaled FP4 tensor cores, and the probe that runs the bare instruction on test tiles.
//!
//! Which GPUs run them: sm_12x natively; sm_90 only through the emulated instruction (the sm_90a cubin
//! is built with `NVFP4_MMA_EMULATION`), and only when the caller asks for it; everything else gets
//! [`Error::UnsupportedArch`] (their images are a trap). Every buffer length is checked against the shape
//! before the parameter struct is built: that check is what makes these functions safe. They enqueue
//! work on the caller's stream and never synchronize.

use std::sync::Arc;

use cudarc::driver::{
    CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
};

use super::abi;
use super::device::Device;
use super::kernels::KernelId;
use super::launch::{dtype_code, need};
use super::memory::cuda;
use crate::error::{Error, Result};
use crate::format::ScaleLayout;
use crate::format::scale_layout::{padded_cols, padded_rows};

/// Threads per block of both GEMM kernels (their tilings assume exactly 4 warps).
const GEMM_THREADS: u32 = 128;
/// Rows of W per block, in both tile variants.
const GEMM_TILE_N: usize = 64;
/// The largest M that [`Fp4Tile::for_m`] gives the small tile: one 16-row tile covers all of M, so the
/// weight is streamed once, while the 64-row tile would spend 3/4 of its instructions and A copies on
/// rows past M at the same grid size.
pub const SMALL_TILE_MAX_M: usize = 16;
/// Largest grid.y the driver accepts.
const MAX_GRID_Y: usize = 65_535;

/// How the block-scaled FP4 instruction is executed on this device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fp4Mma {
    /// The tensor-core instruction (sm_12x).
    Native,
    /// The warp-shuffle integer emulation of the sm_90a build (an H100 verifying the sm_120 kernel).
    Emulated,
}

/// How `dev` runs the FP4 instruction, or [`Error::UnsupportedArch`]. `allow_emulation` admits sm_90,
/// where the result is the same bits at a small fraction of the speed.
pub fn fp4_mma_on(dev: &Device, allow_emulation: bool) -> Result<Fp4Mma> {
    fp4_mma_for(dev.info().compute_capability, allow_emulation)
}

/// [`fp4_mma_on`] for a compute capability `(major, minor)`: the pure decision, for planning without a
/// device.
///
/// ```
/// use nvfp4::cuda::gemm_fp4::{Fp4Mma, fp4_mma_for};
/// assert_eq!(fp4_mma_for((12, 0), false).unwrap(), Fp4Mma::Native);
/// assert_eq!(fp4_mma_for((9, 0), true).unwrap(), Fp4Mma::Emulated);
/// assert!(fp4_mma_for((9, 0), false).is_err());
/// assert!(fp4_mma_for((10, 0), true).is_err());
/// ```
pub fn fp4_mma_for(cc: (u32, u32), allow_emulation: bool) -> Result<Fp4Mma> {
    match cc {
        (12, _) => Ok(Fp4Mma::Native),
        (9, 0) if allow_emulation => Ok(Fp4Mma::Emulated),
        _ => Err(Error::UnsupportedArch {
            what: "the block-scaled FP4 tensor-core GEMM (nvfp4_gemm_fp4_sm120)".into(),
            needed: if allow_emulation {
                "sm_120 (or sm_90 for the emulation)".into()
            } else {
                "sm_120 (sm_90 only with the explicit Sm120Emulated backend)".into()
            },
            found: format!("sm_{}{}", cc.0, cc.1),
        }),
    }
}

/// One GEMM's operands: NVFP4 A `[m, k]` and W `[n, k]` with 128x4 swizzled scales, their global
/// scales (one f32 each), an optional bias `[n]` of f32, f16 or bf16 (`B`; widened exactly to f32 in the
/// epilogue).
pub struct GemmFp4Operands<'a, B = f32> {
    /// Rows of A and of the output.
    pub m: usize,
    /// Rows of W, columns of the output.
    pub n: usize,
    /// The reduction length, a multiple of 16 (the stored, padded K).
    pub k: usize,
    /// A's codes, `[m, k/2]`.
    pub a_codes: &'a CudaSlice<u8>,
    /// A's swizzled scales.
    pub a_scales: &'a CudaSlice<u8>,
    /// A's global scale.
    pub a_global_scale: &'a CudaSlice<f32>,
    /// W's codes, `[n, k/2]`.
    pub w_codes: &'a CudaSlice<u8>,
    /// W's swizzled scales.
    pub w_scales: &'a CudaSlice<u8>,
    /// W's global scale.
    pub w_global_scale: &'a CudaSlice<f32>,
    /// Added to every output row, `[n]`.
    pub bias: Option<&'a CudaSlice<B>>,
}

/// The CTA tile of the FP4 GEMM: which of the two kernels of csrc/gemm_fp4_sm120.cu runs. Both give the
/// same bits (one instruction per 64-wide K step in increasing K, no split of K); they differ in the
/// work per block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fp4Tile {
    /// `nvfp4_gemm_fp4_sm120`: 64x64 tiles, 2x2 warps of 32x32, 4 cp.async stages.
    Large,
    /// `nvfp4_gemm_fp4_small_sm120`: 16x64 tiles, 4 warps of 16x16 side by side in N, 8 cp.async
    /// stages: for M <= 16, where the K loop streams the weight.
    Small,
}

impl Fp4Tile {
    /// The tile for `m` rows: [`Fp4Tile::Small`] up to [`SMALL_TILE_MAX_M`], else [`Fp4Tile::Large`].
    ///
    /// ```
    /// use nvfp4::cuda::gemm_fp4::Fp4Tile;
    /// assert_eq!(Fp4Tile::for_m(16), Fp4Tile::Small);
    /// assert_eq!(Fp4Tile::for_m(17), Fp4Tile::Large);
    /// ```
    pub fn for_m(m: usize) -> Self {
        if m <= SMALL_TILE_MAX_M {
            Fp4Tile::Small
        } else {
            Fp4Tile::Large
        }
    }

    /// Rows of A (and of the output) per block.
    pub const fn rows_m(self) -> usize {
        match self {
            Fp4Tile::Large => 64,
            Fp4Tile::Small => 16,
        }
    }

    /// Rows of W (output columns) per block.
    pub const fn rows_n(self) -> usize {
        GEMM_TILE_N
    }

    /// cp.async pipeline depth (K steps of shared memory).
    pub const fn stages(self) -> usize {
        match self {
            Fp4Tile::Large => 4,
            Fp4Tile::Small => 8,
        }
    }

    /// The kernel that runs this tile.
    pub const fn kernel(self) -> KernelId {
        match self {
            Fp4Tile::Large => KernelId::GemmFp4Sm120,
            Fp4Tile::Small => KernelId::GemmFp4SmallSm120,
        }
    }
}

/// The grid `(x, y)` of the `tile` kernel for an `[m, k] x [n, k]^T` problem, or the typed error that
/// makes it impossible: K not a multiple of 16, or more rows than the grid can cover. Plans call this
/// once; [`gemm_fp4`] calls it again (it cannot fail there for a planned shape).
///
/// ```
/// use nvfp4::cuda::gemm_fp4::{Fp4Tile, gemm_fp4_grid};
/// assert_eq!(gemm_fp4_grid(1000, 70, 208, Fp4Tile::Large).unwrap(), (16, 2));
/// assert_eq!(gemm_fp4_grid(7, 70, 208, Fp4Tile::Small).unwrap(), (1, 2));
/// assert_eq!(gemm_fp4_grid(17, 70, 208, Fp4Tile::Small).unwrap(), (2, 2));
/// assert!(gemm_fp4_grid(4, 8, 40, Fp4Tile::Small).is_err());
/// ```
pub fn gemm_fp4_grid(m: usize, n: usize, k: usize, tile: Fp4Tile) -> Result<(u32, u32)> {
    if k % 16 != 0 {
        return Err(Error::shape("A", &[m, k], "K must be a multiple of 16"));
    }
    let grid_y = n.div_ceil(tile.rows_n());
    if grid_y > MAX_GRID_Y {
        return Err(Error::shape(
            "W",
            &[n, k],
            format!("at most {} rows", MAX_GRID_Y * tile.rows_n()),
        ));
    }
    let grid_x = u32::try_from(m.div_ceil(tile.rows_m()))
        .map_err(|_| Error::shape("A", &[m, k], "fewer than 2^32 row tiles"))?;
    Ok((grid_x, grid_y as u32))
}

/// `out[m, n] = a_gs · w_gs · A · W^T (+ bias)` (see `nvfp4_gemm_fp4_params` in csrc/nvfp4.h), on a
/// device that [`fp4_mma_on`] accepted with `allow_emulation`, by the kernel of `tile` (any tile is
/// correct for any shape; [`Fp4Tile::for_m`] is the fast one).
pub fn gemm_fp4<T: crate::format::Element + DeviceRepr, B: crate::format::Element + DeviceRepr>(
    dev: &Device,
    stream: &Arc<CudaStream>,
    ops: &GemmFp4Operands<'_, B>,
    out: &mut CudaSlice<T>,
    tile: Fp4Tile,
    allow_emulation: bool,
) -> Result<()> {
    dev.check_stream(stream)?;
    fp4_mma_on(dev, allow_emulation)?;
    let (m, n, k) = (ops.m, ops.n, ops.k);
    if k % 16 != 0 {
        return Err(Error::shape("A", &[m, k], "K must be a multiple of 16"));
    }
    let scales = |rows| padded_rows(rows) * padded_cols(k / 16);
    need("A.codes", &[m, k], m * k / 2, ops.a_codes.len())?;
    need("A.scales (swizzled)", &[m, k], scales(m), ops.a_scales.len())?;
    need("W.codes", &[n, k], n * k / 2, ops.w_codes.len())?;
    need("W.scales (swizzled)", &[n, k], scales(n), ops.w_scales.len())?;
    need("A.global_scale", &[1], 1, ops.a_global_scale.len())?;
    need("W.global_scale", &[1], 1, ops.w_global_scale.len())?;
    if let Some(b) = ops.bias {
        need("bias", &[n], n, b.len())?;
    }
    need("out", &[m, n], m * n, out.len())?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let (grid_x, grid_y) = gemm_fp4_grid(m, n, k, tile)?;
    let (ac, _g0) = ops.a_codes.device_ptr(stream);
    let (asf, _g1) = ops.a_scales.device_ptr(stream);
    let (ags, _g2) = ops.a_global_scale.device_ptr(stream);
    let (wc, _g3) = ops.w_codes.device_ptr(stream);
    let (wsf, _g4) = ops.w_scales.device_ptr(stream);
    let (wgs, _g5) = ops.w_global_scale.device_ptr(stream);
    let bias = ops.bias.map(|b| b.device_ptr(stream));
    let (op, _g6) = out.device_ptr_mut(stream);
    let p = abi::nvfp4_gemm_fp4_params {
        a_codes: ac as *const u8,
        a_scales: asf as *const u8,
        w_codes: wc as *const u8,
        w_scales: wsf as *const u8,
        a_global_scale: ags as *const f32,
        w_global_scale: wgs as *const f32,
        bias: bias.as_ref().map_or(std::ptr::null(), |(b, _)| *b as *const _),
        out: op as *mut _,
        m: m as u64,
        n: n as u64,
        k: k as u64,
        out_dtype: dtype_code(T::DTYPE),
        bias_dtype: dtype_code(B::DTYPE),
    };
    let cfg = LaunchConfig {
        grid_dim: (grid_x, grid_y, 1),
        block_dim: (GEMM_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let k_id = tile.kernel();
    let mut b = stream.launch_builder(dev.function(k_id)?);
    b.arg(&p);
    // SAFETY: `p` is the kernel's single by-value parameter (the struct of csrc/nvfp4.h, bindgen-checked);
    // every pointer comes from a live buffer whose length was checked above against the shape in `p`
    // (swizzled scales padded to 128 rows and 4 block-columns, which is what the kernel reads without
    // bounds); the grid is exactly the documented one of `tile`'s kernel (csrc/nvfp4.h), and the device
    // runs the instruction (checked by fp4_mma_on), so the trap body of other targets is never launched.
    unsafe { b.launch(cfg) }.map_err(cuda(format!("launching `{}`", k_id.symbol())))?;
    Ok(())
}

/// Test tiles for [`mma_probe`]: `cases` independent m16n8k64 instructions in the layout of
/// `nvfp4_mma_probe_params` (csrc/nvfp4.h).
pub struct MmaProbeTiles<'a> {
    /// Rows of A, 16 x 32 packed bytes per case.
    pub a: &'a CudaSlice<u8>,
    /// Columns of B, 8 x 32 packed bytes per case.
    pub b: &'a CudaSlice<u8>,
    /// Scale words of A's rows (byte q = K group q), 16 per case.
    pub sfa: &'a CudaSlice<u32>,
    /// Scale words of B's columns, 8 per case.
    pub sfb: &'a CudaSlice<u32>,
    /// C, 16 x 8 f32 per case, row-major.
    pub c: &'a CudaSlice<f32>,
}

/// Runs the instruction (or, on sm_90, its emulation) on every tile, D into `d` (16 x 8 f32 per case),
/// with thread-id selectors `tid_a` (0..2) and `tid_b` (0..4).
pub fn mma_probe(
    dev: &Device,
    stream: &Arc<CudaStream>,
    tiles: &MmaProbeTiles,
    d: &mut CudaSlice<f32>,
    tid_a: u32,
    tid_b: u32,
) -> Result<()> {
    dev.check_stream(stream)?;
    fp4_mma_on(dev, true)?;
    if tid_a > 1 || tid_b > 3 {
        return Err(Error::invalid(
            "MMA selectors",
            format!("thread-id-a {tid_a} must be 0..=1 and thread-id-b {tid_b} 0..=3"),
        ));
    }
    let cases = d.len() / 128;
    need("d", &[cases, 16, 8], cases * 128, d.len())?;
    need("a", &[cases, 16, 32], cases * 512, tiles.a.len())?;
    need("b", &[cases, 8, 32], cases * 256, tiles.b.len())?;
    need("sfa", &[cases, 16], cases * 16, tiles.sfa.len())?;
    need("sfb", &[cases, 8], cases * 8, tiles.sfb.len())?;
    need("c", &[cases, 16, 8], cases * 128, tiles.c.len())?;
    if cases == 0 {
        return Ok(());
    }
    let (a, _g0) = tiles.a.device_ptr(stream);
    let (b, _g1) = tiles.b.device_ptr(stream);
    let (sfa, _g2) = tiles.sfa.device_ptr(stream);
    let (sfb, _g3) = tiles.sfb.device_ptr(stream);
    let (c, _g4) = tiles.c.device_ptr(stream);
    let (dp, _g5) = d.device_ptr_mut(stream);
    let p = abi::nvfp4_mma_probe_params {
        a: a as *const u8,
        b: b as *const u8,
        sfa: sfa as *const u32,
        sfb: sfb as *const u32,
        c: c as *const f32,
        d: dp as *mut f32,
        cases: cases as u64,
        tid_a,
        tid_b,
    };
    // One warp per case, 4 warps per block; the kernel strides over cases, so the grid may be capped.
    let cfg = LaunchConfig {
        grid_dim: (cases.div_ceil(4).min(65_535) as u32, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    let k_id = KernelId::MmaProbeSm120;
    let mut lb = stream.launch_builder(dev.function(k_id)?);
    lb.arg(&p);
    // SAFETY: `p` is the kernel's by-value parameter; every buffer holds `cases` tiles (checked above) and
    // the kernel reads and writes only those; blockDim is a multiple of 32 as it requires; the device
    // runs the instruction (fp4_mma_on).
    unsafe { lb.launch(cfg) }.map_err(cuda(format!("launching `{}`", k_id.symbol())))?;
    Ok(())
}

/// The scale layout the GEMM reads.
pub const GEMM_SCALE_LAYOUT: ScaleLayout = ScaleLayout::Swizzled128x4;
