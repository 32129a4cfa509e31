// gemm_blas.cu: the two small kernels around cuBLAS in the dequantize + cuBLAS GEMM route (launch
// contracts in nvfp4.h; the route itself is ops::GemmPlan's, src/ops/gemm_blas.rs).
//
// The route dequantizes NVFP4 operands with a global scale of 1.0 into bf16/f16 workspaces (e2m1 x e4m3
// has at most 6 significant bits and lies in [2^-10, 2688], so the workspace holds the exact values),
// lets cuBLAS accumulate in f32 and scale by alpha (read on the device), and so reaches the same
// v = acc * alpha as the mma.sync kernels' epilogue (csrc/common/w4_gemm.cuh, store_out). What cuBLAS
// cannot do the same way is done here:
//   nvfp4_blas_alpha     alpha = a_gs * w_gs for W4A4, one f32 rounding, on the device, so the global
//                        scales never visit the host (no synchronization, graph capture works);
//   nvfp4_blas_epilogue  v + bias as a separate f32 rounding (cuBLAS's beta * C would fuse it into the
//                        alpha product's rounding), then one round-to-nearest-even to the output type;
//                        also the narrowing for type pairs cuBLAS has no kernel for (bf16 in, f16 out).
// Both are bandwidth-bound elementwise passes; the epilogue's 64-bit index math is per row, not per
// element, because columns run across x and rows across y.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "nvfp4.h"

static_assert(sizeof(nvfp4_blas_alpha_params) == 24, "ABI");
static_assert(sizeof(nvfp4_blas_epilogue_params) == 48, "ABI");

namespace {

__device__ __forceinline__ float bias_as_f32(const void *p, uint64_t i, uint32_t dtype) {
    if (dtype == NVFP4_DTYPE_F32) return reinterpret_cast<const float *>(p)[i];
    const unsigned short v = reinterpret_cast<const unsigned short *>(p)[i];
    if (dtype == NVFP4_DTYPE_F16) return __half2float(__ushort_as_half(v));
    return __uint_as_float((uint32_t)v << 16);
}

}  // namespace

extern "C" __global__ void nvfp4_blas_alpha(nvfp4_blas_alpha_params p) {
    if (blockIdx.x == 0 && threadIdx.x == 0) *p.alpha = __fmul_rn(*p.a_global_scale, *p.w_global_scale);
}

extern "C" __global__ void nvfp4_blas_epilogue(nvfp4_blas_epilogue_params p) {
    const uint64_t col_stride = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t r = blockIdx.y; r < p.rows; r += gridDim.y) {
        const uint64_t row = r * p.n;
        for (uint64_t c = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; c < p.n; c += col_stride) {
            float v = p.src[row + c];
            if (p.bias != nullptr) v = __fadd_rn(v, bias_as_f32(p.bias, c, p.bias_dtype));
            if (p.out_dtype == NVFP4_DTYPE_F32) {
                reinterpret_cast<float *>(p.out)[row + c] = v;
            } else if (p.out_dtype == NVFP4_DTYPE_F16) {
                reinterpret_cast<__half *>(p.out)[row + c] = __float2half_rn(v);
            } else {
                reinterpret_cast<__nv_bfloat16 *>(p.out)[row + c] = __float2bfloat16_rn(v);
            }
        }
    }
}
