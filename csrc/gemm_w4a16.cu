// gemm_w4a16.cu: NVFP4-weight GEMM for larger M (64 rows of M per block): W4A16 with bf16 or f16
// activations, and W4A4. Same kernel body as gemv_w4a16.cu (common/w4_gemm.cuh) with four 16-row M tiles
// per warp, so each decoded weight pair feeds four MMAs; activations come through L1 (the four warps of a
// block read the same rows). mma.sync on every target, sm_80 up; no shared-memory pipeline or wgmma yet,
// which is why it trails cuBLAS at large M (BENCHMARKS.md: ~110 TFLOPS, 0.13x cuBLAS bf16 at M = 4096).
//
// Registers (ptxas, CUDA 13.0; sm_80 / sm_90a / sm_100a / sm_120f), no spills: w4a16 150 / 156 / 144 /
// 144-150, w4a4 166 / 168 / 151 / 128: 3 blocks of 128 threads per SM.
#include "common/w4_gemm.cuh"

extern "C" __global__ void __launch_bounds__(w4::kThreads) nvfp4_gemm_w4a16_bf16(nvfp4_gemm_params p) {
    w4::gemm_body<4, w4::kActBf16>(p);
}

extern "C" __global__ void __launch_bounds__(w4::kThreads) nvfp4_gemm_w4a16_f16(nvfp4_gemm_params p) {
    w4::gemm_body<4, w4::kActF16>(p);
}

extern "C" __global__ void __launch_bounds__(w4::kThreads) nvfp4_gemm_w4a4(nvfp4_gemm_params p) {
    w4::gemm_body<4, w4::kActFp4>(p);
}
