//! The dequantize + cuBLAS route of [`super::GemmPlan`] (feature `cublas`): the NVFP4 operands are
//! dequantized into 16-bit workspaces the plan owns, then one cuBLAS GEMM multiplies them.
//!
//! Numerics are those of the mma.sync kernels (csrc/common/w4_gemm.cuh, `store_out`): the workspaces
//! hold `e2m1 · e4m3` exactly (dequantized with a global scale of 1.0: at most 6 significant bits, in
//! [2^-10, 2688], so bf16 and f16 both hold every value), cuBLAS accumulates in f32 and computes
//! `v = alpha · acc` with alpha the weight's global scale (W4A16) or `a_gs · w_gs` (W4A4, formed on the
//! device by `nvfp4_blas_alpha`), then `nvfp4_blas_epilogue` adds the bias as its own f32 rounding and
//! narrows to the output type once. Where neither a bias nor a type cuBLAS cannot write is involved,
//! cuBLAS writes the output itself and no epilogue runs.
//!
//! No FFI here: the handle, the GEMM call and the two kernels are `crate::cuda`'s.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, CudaView, DevicePtr};
use half::{bf16, f16};

use super::quantize::{GpuElement, Nvfp4View};
use crate::cuda::launch;
use crate::cuda::{BlasGemm, Device, alloc_zeros, blas_alpha, blas_epilogue, upload};
use crate::error::{Error, Result};
use crate::format::Dtype;

/// f32 elements of the buffer that holds cuBLAS's output before the epilogue (64 MiB), when the
/// result needs one and the output is 16-bit: the GEMM then runs in slices of M so the buffer does not
/// grow with M. At least [`MIN_STAGE_ROWS`] rows per slice, so each cuBLAS call stays large enough to
/// run at its full rate (M = 256 on 8192² is within 10% of M = 4096's per-row time, BENCHMARKS.md).
const STAGE_ELEMS: usize = 16 << 20;
const MIN_STAGE_ROWS: usize = 256;

/// How cuBLAS's f32 `alpha · acc` becomes the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Finish {
    /// cuBLAS writes the output (no bias; the output is f32 or the workspace type).
    Direct,
    /// cuBLAS writes the f32 output, the epilogue adds the bias in place.
    InPlace,
    /// cuBLAS writes `rows` rows at a time into an f32 buffer, the epilogue adds the bias (if any) and
    /// narrows into the output.
    Staged { rows: usize },
}

impl Finish {
    pub(super) fn for_problem(m: usize, n: usize, out: Dtype, half: Dtype, bias: bool) -> Finish {
        match (out, bias) {
            (Dtype::F32, false) => Finish::Direct,
            (Dtype::F32, true) => Finish::InPlace,
            (o, false) if o == half => Finish::Direct,
            _ => Finish::Staged {
                rows: (STAGE_ELEMS / n.max(1)).max(MIN_STAGE_ROWS).min(m.max(1)),
            },
        }
    }

    fn describe(self, n: usize, out: Dtype, half: Dtype) -> String {
        match self {
            Finish::Direct if out == Dtype::F32 => "cuBLAS writes the f32 output".to_string(),
            Finish::Direct => format!("cuBLAS writes the {half:?} output (one rounding from f32)"),
            Finish::InPlace => {
                "cuBLAS writes the f32 output, nvfp4_blas_epilogue adds the bias in place (its own f32 \
                 rounding, as the mma.sync kernels do)"
                    .to_string()
            }
            Finish::Staged { rows } => format!(
                "cuBLAS writes f32 slices of {rows} rows into a {} byte buffer, nvfp4_blas_epilogue adds the \
                 bias (if any) and rounds to {out:?} once",
                rows * n * 4
            ),
        }
    }
}

/// A 16-bit workspace of the type cuBLAS multiplies.
enum Half16 {
    Bf16(CudaSlice<bf16>),
    F16(CudaSlice<f16>),
}

impl Half16 {
    fn alloc(stream: &Arc<CudaStream>, name: &str, dtype: Dtype, len: usize) -> Result<Self> {
        Ok(match dtype {
            Dtype::F16 => Half16::F16(alloc_zeros(stream, name, len)?),
            _ => Half16::Bf16(alloc_zeros(stream, name, len)?),
        })
    }

    fn bytes(&self) -> usize {
        match self {
            Half16::Bf16(s) => s.len() * 2,
            Half16::F16(s) => s.len() * 2,
        }
    }

    /// Dequantizes `t` into the workspace with `one` (a device 1.0) as its global scale.
    fn dequantize(
        &mut self,
        dev: &Device,
        stream: &Arc<CudaStream>,
        t: &Nvfp4View<'_>,
        one: &CudaView<'_, f32>,
    ) -> Result<()> {
        let (rows, cols, layout) = (t.rows, t.cols, t.scale_layout);
        match self {
            Half16::Bf16(out) => {
                launch::dequantize(dev, stream, rows, cols, &t.codes, &t.scales, layout, one, out)
            }
            Half16::F16(out) => {
                launch::dequantize(dev, stream, rows, cols, &t.codes, &t.scales, layout, one, out)
            }
        }
    }
}

/// What a plan on the dequantize + cuBLAS route launches with: the handle and every buffer, sized once.
pub(super) struct CublasExec {
    blas: BlasGemm,
    m: usize,
    n: usize,
    k: usize,
    half: Dtype,
    finish: Finish,
    /// W dequantized, `[N, K]`.
    w16: Half16,
    /// A dequantized, `[M, K]` (W4A4 only).
    a16: Option<Half16>,
    /// cuBLAS's f32 output before the epilogue ([`Finish::Staged`] only).
    stage: Option<CudaSlice<f32>>,
    /// `[1.0, 0.0, alpha]`: the dequantize's global scale, cuBLAS's beta, and the W4A4 alpha.
    scalars: CudaSlice<f32>,
}

impl CublasExec {
    /// Creates the handle and allocates every buffer on `stream`. `w4a4` adds the activations'
    /// workspace; `half` is the workspaces' type.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        dev: &Device,
        stream: &Arc<CudaStream>,
        (m, n, k): (usize, usize, usize),
        w4a4: bool,
        half: Dtype,
        out: Dtype,
        bias: bool,
    ) -> Result<Self> {
        let blas = BlasGemm::new(dev, stream)?;
        let finish = Finish::for_problem(m, n, out, half, bias);
        let w16 = Half16::alloc(stream, "W dequantized (dequantize + cuBLAS route)", half, n * k)?;
        let a16 = if w4a4 {
            Some(Half16::alloc(
                stream,
                "A dequantized (dequantize + cuBLAS route)",
                half,
                m * k,
            )?)
        } else {
            None
        };
        let stage = match finish {
            Finish::Staged { rows } => Some(alloc_zeros::<f32>(
                stream,
                "f32 GEMM result before the epilogue",
                rows * n,
            )?),
            _ => None,
        };
        let scalars = upload(stream, "dequantize scale, beta, alpha", &[1.0f32, 0.0, 0.0])?;
        Ok(CublasExec {
            blas,
            m,
            n,
            k,
            half,
            finish,
            w16,
            a16,
            stage,
            scalars,
        })
    }

    /// Device bytes held: the workspaces, the staging buffer, cuBLAS's own workspace, the scalars.
    pub(super) fn workspace_bytes(&self) -> usize {
        self.w16.bytes()
            + self.a16.as_ref().map_or(0, Half16::bytes)
            + self.stage.as_ref().map_or(0, |s| s.len() * 4)
            + self.blas.workspace_bytes()
            + self.scalars.len() * 4
    }

    /// The launch sequence and buffers, in words (part of the plan's explanation).
    pub(super) fn describe(&self, out: Dtype) -> String {
        let (m, n, k, h) = (self.m, self.n, self.k, self.half);
        let a = match &self.a16 {
            Some(a) => format!(
                ", A to a {h:?} [{m}, {k}] workspace ({} bytes) the same way, alpha = a_gs * w_gs formed \
                 on the device (nvfp4_blas_alpha)",
                a.bytes()
            ),
            None => ", alpha = W's global scale read on the device".to_string(),
        };
        format!(
            "nvfp4_dequantize of W with global scale 1.0 (exact in {h:?}) to a [{n}, {k}] workspace ({} \
             bytes){a}; cublasGemmEx {h:?} x {h:?}, f32 accumulation, no reduced-precision reductions, \
             its own {} byte workspace; {}",
            self.w16.bytes(),
            self.blas.workspace_bytes(),
            self.finish.describe(n, out, h),
        )
    }

    /// Checks `bias`, `out` and `stream` for one product; `false` when it is empty (M or N zero), which
    /// cuBLAS refuses and which writes nothing.
    fn ready<O: GpuElement>(
        &self,
        dev: &Device,
        stream: &Arc<CudaStream>,
        bias: Option<&CudaSlice<O>>,
        out: &CudaSlice<O>,
    ) -> Result<bool> {
        let (m, n) = (self.m, self.n);
        if out.len() != m * n {
            return Err(Error::length("out", &[m, n], m * n, out.len()));
        }
        if let Some(b) = bias {
            if b.len() != n {
                return Err(Error::length("bias", &[n], n, b.len()));
            }
        }
        dev.check_stream(stream)?;
        Ok(m > 0 && n > 0)
    }

    /// `out = a · wᵀ · w_gs (+ bias)`; `w` must hold `[N, K]` (the plan checked its shape).
    pub(super) fn w4a16<A: GpuElement, O: GpuElement>(
        &mut self,
        dev: &Device,
        stream: &Arc<CudaStream>,
        a: &CudaSlice<A>,
        w: &Nvfp4View<'_>,
        bias: Option<&CudaSlice<O>>,
        out: &mut CudaSlice<O>,
    ) -> Result<()> {
        let (m, n, k) = (self.m, self.n, self.k);
        if A::DTYPE != self.half {
            return Err(Error::invalid(
                "A",
                format!(
                    "the plan multiplies {:?}, the activations are {:?}",
                    self.half,
                    A::DTYPE
                ),
            ));
        }
        if a.len() != m * k {
            return Err(Error::length("A", &[m, k], m * k, a.len()));
        }
        if !self.ready(dev, stream, bias, out)? {
            return Ok(());
        }
        let CublasExec {
            blas,
            finish,
            w16,
            stage,
            scalars,
            ..
        } = self;
        w16.dequantize(dev, stream, w, &scalars.slice(0..1))?;
        let beta = scalars.slice(1..2);
        let g = Gemm {
            dev,
            stream,
            m,
            n,
            k,
            finish: *finish,
        };
        match w16 {
            Half16::Bf16(w16) => g.run(blas, stage.as_mut(), a, &*w16, &w.global_scale, &beta, bias, out),
            Half16::F16(w16) => g.run(blas, stage.as_mut(), a, &*w16, &w.global_scale, &beta, bias, out),
        }
    }

    /// `out = a · wᵀ · a_gs · w_gs (+ bias)`; `a` and `w` must hold `[M, K]` and `[N, K]`.
    pub(super) fn w4a4<O: GpuElement>(
        &mut self,
        dev: &Device,
        stream: &Arc<CudaStream>,
        a: &Nvfp4View<'_>,
        w: &Nvfp4View<'_>,
        bias: Option<&CudaSlice<O>>,
        out: &mut CudaSlice<O>,
    ) -> Result<()> {
        let (m, n, k) = (self.m, self.n, self.k);
        if !self.ready(dev, stream, bias, out)? {
            return Ok(());
        }
        let CublasExec {
            blas,
            finish,
            w16,
            a16,
            stage,
            scalars,
            ..
        } = self;
        let Some(a16) = a16.as_mut() else {
            return Err(Error::invalid(
                "GEMM plan",
                "this dequantize + cuBLAS plan is W4A16: it has no activation workspace",
            ));
        };
        a16.dequantize(dev, stream, a, &scalars.slice(0..1))?;
        w16.dequantize(dev, stream, w, &scalars.slice(0..1))?;
        blas_alpha(
            dev,
            stream,
            &a.global_scale,
            &w.global_scale,
            &mut scalars.slice_mut(2..3),
        )?;
        let (alpha, beta) = (scalars.slice(2..3), scalars.slice(1..2));
        let g = Gemm {
            dev,
            stream,
            m,
            n,
            k,
            finish: *finish,
        };
        match (a16, w16) {
            (Half16::Bf16(a16), Half16::Bf16(w16)) => {
                g.run(blas, stage.as_mut(), &*a16, &*w16, &alpha, &beta, bias, out)
            }
            (Half16::F16(a16), Half16::F16(w16)) => {
                g.run(blas, stage.as_mut(), &*a16, &*w16, &alpha, &beta, bias, out)
            }
            _ => Err(Error::invalid(
                "GEMM plan",
                "the activation and weight workspaces differ in type",
            )),
        }
    }
}

/// One launch's GEMM and epilogue.
struct Gemm<'a> {
    dev: &'a Device,
    stream: &'a Arc<CudaStream>,
    m: usize,
    n: usize,
    k: usize,
    finish: Finish,
}

impl Gemm<'_> {
    #[allow(clippy::too_many_arguments)]
    /// `a` and `w` share one 16-bit type (the plan checked it; cuBLAS's wrapper checks again).
    fn run<HA: GpuElement, HW: GpuElement, O: GpuElement>(
        &self,
        blas: &mut BlasGemm,
        stage: Option<&mut CudaSlice<f32>>,
        a: &CudaSlice<HA>,
        w: &CudaSlice<HW>,
        alpha: &impl DevicePtr<f32>,
        beta: &CudaView<'_, f32>,
        bias: Option<&CudaSlice<O>>,
        out: &mut CudaSlice<O>,
    ) -> Result<()> {
        let (dev, stream, m, n, k) = (self.dev, self.stream, self.m, self.n, self.k);
        match (self.finish, stage) {
            (Finish::Direct, _) => blas.gemm(stream, m, n, k, a, w, alpha, beta, out),
            (Finish::InPlace, _) => {
                blas.gemm(stream, m, n, k, a, w, alpha, beta, out)?;
                blas_epilogue(dev, stream, m, n, None, bias, out)
            }
            (Finish::Staged { rows }, Some(stage)) => {
                let mut r0 = 0;
                while r0 < m {
                    let r = rows.min(m - r0);
                    let a_rows = a.slice(r0 * k..(r0 + r) * k);
                    blas.gemm(
                        stream,
                        r,
                        n,
                        k,
                        &a_rows,
                        w,
                        alpha,
                        beta,
                        &mut stage.slice_mut(0..r * n),
                    )?;
                    let src = stage.slice(0..r * n);
                    let mut o = out.slice_mut(r0 * n..(r0 + r) * n);
                    blas_epilogue(dev, stream, r, n, Some(&src), bias, &mut o)?;
                    r0 += r;
                }
                Ok(())
            }
            (Finish::Staged { .. }, None) => Err(Error::invalid(
                "GEMM plan",
                "the staged epilogue has no f32 buffer",
            )),
        }
    }
}
