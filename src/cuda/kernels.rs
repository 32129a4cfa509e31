//! The kernels embedded at build time: one fatbin per `csrc/*.cu`, every kernel named once here.

mod generated {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

pub(crate) use generated::{FATBINS, NO_KERNELS_REASON};
pub use generated::{NVCC_VERSION, TARGETS};

/// Every kernel the crate launches. The name is the `extern "C"` symbol; the unit is the `.cu` file
/// (and so the fatbin) that holds it. A GPU test loads every one, so a renamed kernel fails in CI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelId {
    /// Absolute maximum of finite elements and the first non-finite index.
    Amax,
    /// Global scale from the amax, on the device.
    GlobalScale,
    /// NVFP4 quantize (codes and block scales).
    Quantize,
    /// NVFP4 dequantize.
    Dequantize,
    /// Block-scale layout conversion.
    ScaleLayout,
    /// Per-block error sums of a quantized tensor against its input.
    QuantError,
    /// The per-block error sums reduced to one result.
    QuantErrorReduce,
    /// W4A16 tensor-core GEMM, bf16 activations, 16 rows of M per block.
    GemvW4a16Bf16,
    /// W4A16 tensor-core GEMM, f16 activations, 16 rows of M per block.
    GemvW4a16F16,
    /// W4A4 tensor-core GEMM, 16 rows of M per block.
    GemvW4a4,
    /// W4A16 tensor-core GEMM, bf16 activations, 64 rows of M per block.
    GemmW4a16Bf16,
    /// W4A16 tensor-core GEMM, f16 activations, 64 rows of M per block.
    GemmW4a16F16,
    /// W4A4 tensor-core GEMM, 64 rows of M per block.
    GemmW4a4,
    /// W4A16 wgmma GEMM (sm_90a, a trap elsewhere), bf16 activations, 64 rows of M and 128 of W per block.
    GemmW4a16Sm90Bf16M64,
    /// W4A16 wgmma GEMM (sm_90a, a trap elsewhere), bf16 activations, 128 rows of M and 128 of W per block.
    GemmW4a16Sm90Bf16M128,
    /// W4A16 wgmma GEMM (sm_90a, a trap elsewhere), bf16 activations, 256 rows of M and 128 of W per block.
    GemmW4a16Sm90Bf16M256,
    /// W4A16 wgmma GEMM (sm_90a, a trap elsewhere), f16 activations, 64 rows of M and 128 of W per block.
    GemmW4a16Sm90F16M64,
    /// W4A16 wgmma GEMM (sm_90a, a trap elsewhere), f16 activations, 128 rows of M and 128 of W per block.
    GemmW4a16Sm90F16M128,
    /// W4A16 wgmma GEMM (sm_90a, a trap elsewhere), f16 activations, 256 rows of M and 128 of W per block.
    GemmW4a16Sm90F16M256,
    /// Position-weighted byte checksum (offload tests and benchmarks).
    Checksum,
    /// W4A4 NVFP4 GEMM on the sm_120 block-scaled FP4 tensor cores (emulated on sm_90a, a trap elsewhere).
    GemmFp4Sm120,
    /// The same GEMM with 16x64 tiles, for M <= 16 (emulated on sm_90a, a trap elsewhere).
    GemmFp4SmallSm120,
    /// The bare sm_120 FP4 MMA (or its emulation) on independent tiles, for tests.
    MmaProbeSm120,
    /// The dequantize + cuBLAS GEMM route's W4A4 alpha (product of the global scales, on the device).
    BlasAlpha,
    /// The dequantize + cuBLAS GEMM route's bias add and narrowing to the output type.
    BlasEpilogue,
}

impl KernelId {
    /// Every kernel.
    pub const ALL: [KernelId; 25] = [
        KernelId::Amax,
        KernelId::GlobalScale,
        KernelId::Quantize,
        KernelId::Dequantize,
        KernelId::ScaleLayout,
        KernelId::QuantError,
        KernelId::QuantErrorReduce,
        KernelId::GemvW4a16Bf16,
        KernelId::GemvW4a16F16,
        KernelId::GemvW4a4,
        KernelId::GemmW4a16Bf16,
        KernelId::GemmW4a16F16,
        KernelId::GemmW4a4,
        KernelId::GemmW4a16Sm90Bf16M64,
        KernelId::GemmW4a16Sm90Bf16M128,
        KernelId::GemmW4a16Sm90Bf16M256,
        KernelId::GemmW4a16Sm90F16M64,
        KernelId::GemmW4a16Sm90F16M128,
        KernelId::GemmW4a16Sm90F16M256,
        KernelId::Checksum,
        KernelId::GemmFp4Sm120,
        KernelId::GemmFp4SmallSm120,
        KernelId::MmaProbeSm120,
        KernelId::BlasAlpha,
        KernelId::BlasEpilogue,
    ];

    /// The `extern "C"` symbol.
    pub const fn symbol(self) -> &'static str {
        match self {
            KernelId::Amax => "nvfp4_amax",
            KernelId::GlobalScale => "nvfp4_global_scale",
            KernelId::Quantize => "nvfp4_quantize",
            KernelId::Dequantize => "nvfp4_dequantize",
            KernelId::ScaleLayout => "nvfp4_scale_layout",
            KernelId::QuantError => "nvfp4_quant_error",
            KernelId::QuantErrorReduce => "nvfp4_quant_error_reduce",
            KernelId::GemvW4a16Bf16 => "nvfp4_gemv_w4a16_bf16",
            KernelId::GemvW4a16F16 => "nvfp4_gemv_w4a16_f16",
            KernelId::GemvW4a4 => "nvfp4_gemv_w4a4",
            KernelId::GemmW4a16Bf16 => "nvfp4_gemm_w4a16_bf16",
            KernelId::GemmW4a16F16 => "nvfp4_gemm_w4a16_f16",
            KernelId::GemmW4a4 => "nvfp4_gemm_w4a4",
            KernelId::GemmW4a16Sm90Bf16M64 => "nvfp4_gemm_w4a16_sm90_bf16_m64",
            KernelId::GemmW4a16Sm90Bf16M128 => "nvfp4_gemm_w4a16_sm90_bf16_m128",
            KernelId::GemmW4a16Sm90Bf16M256 => "nvfp4_gemm_w4a16_sm90_bf16_m256",
            KernelId::GemmW4a16Sm90F16M64 => "nvfp4_gemm_w4a16_sm90_f16_m64",
            KernelId::GemmW4a16Sm90F16M128 => "nvfp4_gemm_w4a16_sm90_f16_m128",
            KernelId::GemmW4a16Sm90F16M256 => "nvfp4_gemm_w4a16_sm90_f16_m256",
            KernelId::Checksum => "nvfp4_checksum",
            KernelId::GemmFp4Sm120 => "nvfp4_gemm_fp4_sm120",
            KernelId::GemmFp4SmallSm120 => "nvfp4_gemm_fp4_small_sm120",
            KernelId::MmaProbeSm120 => "nvfp4_mma_probe_sm120",
            KernelId::BlasAlpha => "nvfp4_blas_alpha",
            KernelId::BlasEpilogue => "nvfp4_blas_epilogue",
        }
    }

    /// The translation unit (`csrc/<unit>.cu`) that defines it.
    pub const fn unit(self) -> &'static str {
        match self {
            KernelId::Amax
            | KernelId::GlobalScale
            | KernelId::Quantize
            | KernelId::Dequantize
            | KernelId::ScaleLayout => "quantize",
            KernelId::QuantError | KernelId::QuantErrorReduce => "quant_error",
            KernelId::GemvW4a16Bf16 | KernelId::GemvW4a16F16 | KernelId::GemvW4a4 => "gemv_w4a16",
            KernelId::GemmW4a16Bf16 | KernelId::GemmW4a16F16 | KernelId::GemmW4a4 => "gemm_w4a16",
            KernelId::GemmW4a16Sm90Bf16M64
            | KernelId::GemmW4a16Sm90Bf16M128
            | KernelId::GemmW4a16Sm90Bf16M256
            | KernelId::GemmW4a16Sm90F16M64
            | KernelId::GemmW4a16Sm90F16M128
            | KernelId::GemmW4a16Sm90F16M256 => "gemm_w4a16_sm90",
            KernelId::Checksum => "offload",
            KernelId::GemmFp4Sm120 | KernelId::GemmFp4SmallSm120 | KernelId::MmaProbeSm120 => {
                "gemm_fp4_sm120"
            }
            KernelId::BlasAlpha | KernelId::BlasEpilogue => "gemm_blas",
        }
    }
}

/// (unit, bytes) of every embedded fatbin.
pub fn fatbin_sizes() -> Vec<(&'static str, usize)> {
    FATBINS.iter().map(|(n, b)| (*n, b.len())).collect()
}
