// cp_async.cuh: the sm_80+ asynchronous global -> shared copies (cp.async) with zero fill, shared by the
// pipelined GEMMs (gemm_fp4_sm120.cu, gemm_w4a16_sm90.cu).
#ifndef NVFP4_COMMON_CP_ASYNC_CUH
#define NVFP4_COMMON_CP_ASYNC_CUH

#include <stdint.h>

__device__ __forceinline__ uint32_t smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

// cp.async of BYTES (4, 8 or 16) with zero fill: copies all of them when `valid`, else none and zeroes
// the destination (the source is then not read). 16-byte copies bypass L1 (.cg); L2_128 asks L2 to
// fetch the whole 128-byte line, for streams whose neighbouring 16-byte pieces the same block reads
// a few steps later.
template <int BYTES, bool L2_128 = false>
__device__ __forceinline__ void cp_async(void *dst, const void *src, bool valid) {
    const int src_bytes = valid ? BYTES : 0;
    if constexpr (BYTES == 16 && L2_128) {
        asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                     "r"(src_bytes)
                     : "memory");
    } else if constexpr (BYTES == 16) {
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                     "r"(src_bytes)
                     : "memory");
    } else {
        asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(smem_addr(dst)), "l"(src),
                     "n"(BYTES), "r"(src_bytes)
                     : "memory");
    }
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most N of this thread's most recent groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

#endif  // NVFP4_COMMON_CP_ASYNC_CUH
