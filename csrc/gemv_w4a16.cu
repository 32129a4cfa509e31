// gemv_w4a16.cu: NVFP4-weight GEMV / small-M GEMM (M <= 16 per block row): W4A16 with bf16 or f16
// activations, and W4A4 (NVFP4 activations decoded like the weights). The CPU twins are
// reference::gemm_w4a16 and reference::gemm_w4a4; launch contract in nvfp4.h (nvfp4_gemm_params), kernel
// body and its design in common/w4_gemm.cuh, decode tricks in common/dequant.cuh.
//
// At M <= 16 the layer is bound by the weight bytes (4.5 bits a weight): one 16-row MMA tile carries all
// of M, so every weight is decoded once and meets every activation row in one MMA. Padding rows of the
// tile cost tensor-core time only, which is idle here anyway.
//
// Registers (ptxas, CUDA 13.0; sm_80 / sm_90a / sm_100a / sm_120f), no spills: w4a16_bf16 and w4a16_f16
// 64 / 64 / 64 / 64, w4a4 72 / 64 / 65 / 70. At 64, 8 blocks of 128 threads fit an SM, which the host's
// split-K choice aims for (ops::gemm). Measured on an H100 (BENCHMARKS.md): 1.4-1.8x cuBLAS bf16 at
// M <= 16 on the large shapes, but only 0.35-0.45 of copy bandwidth: the activation loads of each
// 8-element chunk sit between MMAs (see BENCHMARKS.md for the SASS evidence and the next steps).
#include "common/w4_gemm.cuh"

extern "C" __global__ void __launch_bounds__(w4::kThreads) nvfp4_gemv_w4a16_bf16(nvfp4_gemm_params p) {
    w4::gemm_body<1, w4::kActBf16>(p);
}

extern "C" __global__ void __launch_bounds__(w4::kThreads) nvfp4_gemv_w4a16_f16(nvfp4_gemm_params p) {
    w4::gemm_body<1, w4::kActF16>(p);
}

extern "C" __global__ void __launch_bounds__(w4::kThreads) nvfp4_gemv_w4a4(nvfp4_gemm_params p) {
    w4::gemm_body<1, w4::kActFp4>(p);
}
