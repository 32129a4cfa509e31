//! NVFP4 GEMMs on the GPU: W4A16 (NVFP4 weights, bf16/f16 activations) and W4A4 (both NVFP4), the twins
//! of [`crate::reference::gemm_w4a16`] and [`crate::reference::gemm_w4a4`].
//!
//! A [`GemmPlan`] validates a problem once, picks the kernel by compute capability and M (with the
//! reason, [`GemmPlan::explain`]), and owns the split-K workspace; launching it allocates nothing and
//! never synchronizes, so it can run in hot loops and under CUDA-graph capture.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};

use super::quantize::{DeviceNvfp4, GpuElement, Nvfp4View};
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
    /// Force this kernel instead of choosing by M.
    pub kernel: Option<GemmKernel>,
    /// Force this many K splits (1 turns split-K off) instead of choosing by occupancy.
    pub splits: Option<usize>,
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
        }
    }
}

/// A validated GEMM: kernel, grid, split-K workspace, and why they were chosen.
pub struct GemmPlan {
    spec: GemmSpec,
    geometry: GemmGeometry,
    reason: String,
    workspace: Option<(CudaSlice<f32>, CudaSlice<u32>)>,
}

impl std::fmt::Debug for GemmPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GemmPlan")
            .field("spec", &self.spec)
            .field("geometry", &self.geometry)
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

impl GemmPlan {
    /// Validates `spec` on `dev` and allocates the split-K workspace (zeroed, on `stream`).
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
        if info.compute_capability < (8, 0) {
            return Err(Error::UnsupportedArch {
                what: "the NVFP4 tensor-core GEMM (mma.sync bf16/f16)".into(),
                needed: "sm_80".into(),
                found: info.arch(),
            });
        }
        if let GemmOp::W4A16(Dtype::F32) = spec.op {
            return Err(Error::invalid(
                "A",
                "W4A16 activations must be bf16 or f16 (the tensor cores' 16-bit inputs), not f32",
            ));
        }
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
        let probe = GemmGeometry::new(spec.m, spec.n, spec.k, tile, 1)?;
        let (gx, gy, _) = probe.grid();
        let tiles = gx as usize * gy as usize;
        let steps = spec.k.div_ceil(STEP_K);
        let sms = info.sm_count.max(1) as usize;
        let (splits, why_split) = match spec.splits {
            Some(s) => (s.max(1), "forced by the caller".to_string()),
            None => {
                let per_sm = blocks_per_sm(spec.op, tile, info.compute_capability);
                // As many splits as keep every block resident at once (one wave), each of at least
                // MIN_STEPS_PER_SPLIT steps, with the partial sums at most a quarter of the weight
                // bytes: per output column they cost 8 bytes per split and row of M (written once,
                // read back once) against K * 9/16 bytes of weights, so splits <= K / (57 M).
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
        let geometry = GemmGeometry::new(spec.m, spec.n, spec.k, tile, splits)?;
        let workspace = if geometry.splits > 1 {
            Some((
                alloc_zeros::<f32>(stream, "split-K partial sums", geometry.workspace_len())?,
                alloc_zeros::<u32>(stream, "split-K tile counters", geometry.counters_len())?,
            ))
        } else {
            None
        };
        let kernel_name = match (spec.op, tile) {
            (GemmOp::W4A4, GemmTile::M16) => "nvfp4_gemv_w4a4",
            (GemmOp::W4A4, GemmTile::M64) => "nvfp4_gemm_w4a4",
            (GemmOp::W4A16(Dtype::F16), GemmTile::M16) => "nvfp4_gemv_w4a16_f16",
            (GemmOp::W4A16(Dtype::F16), GemmTile::M64) => "nvfp4_gemm_w4a16_f16",
            (_, GemmTile::M16) => "nvfp4_gemv_w4a16_bf16",
            (_, GemmTile::M64) => "nvfp4_gemm_w4a16_bf16",
        };
        let (x, y, z) = geometry.grid();
        let reason = format!(
            "{:?} -> {:?}{}, M={} N={} K={} on {} ({} SMs): kernel {kernel_name} ({why_tile}); \
             grid {x}x{y}x{z}, split-K {} of {} steps each ({why_split}); workspace {} bytes",
            spec.op,
            spec.out,
            if spec.bias { " + bias" } else { "" },
            spec.m,
            spec.n,
            spec.k,
            info.arch(),
            sms,
            geometry.splits,
            geometry.steps_per_split,
            geometry.workspace_len() * 4 + geometry.counters_len() * 4,
        );
        Ok(GemmPlan {
            spec: *spec,
            geometry,
            reason,
            workspace,
        })
    }

    /// Which kernel runs and why, in words.
    pub fn explain(&self) -> &str {
        &self.reason
    }

    /// The kernel (rows of M per block) the plan launches.
    pub fn kernel(&self) -> GemmKernel {
        self.geometry.tile
    }

    /// K splits (1: split-K off).
    pub fn splits(&self) -> usize {
        self.geometry.splits
    }

    /// Device bytes the plan holds for split-K.
    pub fn workspace_bytes(&self) -> usize {
        (self.geometry.workspace_len() + self.geometry.counters_len()) * 4
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
        if t.scale_layout() != ScaleLayout::Linear {
            return Err(Error::invalid(
                name,
                "the GEMM kernels read linear block scales; convert with DeviceNvfp4::set_scale_layout",
            ));
        }
        Ok(())
    }

    fn split_ws(&mut self) -> Option<SplitWorkspace<'_>> {
        self.workspace
            .as_mut()
            .map(|(partials, counters)| SplitWorkspace { partials, counters })
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
        let g = self.geometry;
        let wop = Fp4Operand {
            codes: w.codes.as_view(),
            scales: w.scales.as_view(),
            global_scale: w.global_scale.as_view(),
        };
        launch_gemm::w4a16(dev, stream, &g, a, wop, bias, out, self.split_ws())
    }

    /// Enqueues `out[M, N] = a[M, K] · w[N, K]ᵀ (· both global scales) + bias`, both operands NVFP4.
    ///
    /// ```no_run
    /// use nvfp4::cuda::{Device, alloc_zeros};
    /// use nvfp4::format::Dtype;
    /// use nvfp4::ops::{DeviceNvfp4, GemmOp, GemmPlan, GemmSpec};
    /// use nvfp4::quant::{quantize, QuantizeOptions};
    /// let dev = Device::new(0)?;
    /// let s = dev.stream();
    /// let o = QuantizeOptions::default();
    /// let a = DeviceNvfp4::upload(s, &quantize("a", &vec![1.0f32; 2 * 128], 2, 128, &o)?)?;
    /// let w = DeviceNvfp4::upload(s, &quantize("w", &vec![0.5f32; 64 * 128], 64, 128, &o)?)?;
    /// let mut out = alloc_zeros::<f32>(s, "out", 2 * 64)?;
    /// let spec = GemmSpec { op: GemmOp::W4A4, out: Dtype::F32, ..GemmSpec::w4a16(2, 64, 128) };
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
        let g = self.geometry;
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
        launch_gemm::w4a4(dev, stream, &g, aop, wop, bias, out, self.split_ws())
    }
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
        let g = self.geometry;
        let wop = Fp4Operand {
            codes: v.codes.slice(..),
            scales: v.scales.slice(..),
            global_scale: v.global_scale.slice(..),
        };
        launch_gemm::w4a16(dev, stream, &g, a, wop, bias, out, self.split_ws())
    }
}
