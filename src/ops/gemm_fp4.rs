//! W4A4 NVFP4 GEMM on the Blackwell sm_120 FP4 tensor cores: the GPU twin of
//! [`crate::reference::mma::mma_gemm`], with the same bits on any input.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};

use super::quantize::{DeviceNvfp4, GpuElement};
use crate::cuda::Device;
use crate::cuda::gemm_fp4::{self, GEMM_SCALE_LAYOUT, GemmFp4Operands};
use crate::error::{Error, Result};

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
/// those of [`crate::reference::mma::mma_gemm`]. Enqueues work on `stream`, never synchronizes.
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
    gemm_fp4::gemm_fp4(dev, stream, &ops, out, backend == Fp4Backend::Sm120Emulated)
}
