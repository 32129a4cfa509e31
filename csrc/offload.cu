// offload.cu: the checksum kernel the weight-streaming tests use as their "compute": it reads every
// byte of a device slot, so a block whose upload was stale, half done or landed in the wrong slot gives
// a different sum than offload::checksum computes on the host (launch contract in nvfp4.h).
//
// It is a test instrument, not a hot path: each thread sums bytes with a grid-stride loop over 16-byte
// chunks (one uint4 load when the pointer is 16-byte aligned, byte loads otherwise), then a warp shuffle
// reduction and one atomicAdd per warp. No shared memory; ptxas (CUDA 13.0) reports 32 / 37 / 39 / 40
// registers on sm_80 / sm_90a / sm_100a / sm_120f, 0 bytes spilled; about 1.3 s of nvcc per target.

#include <stdint.h>

#include "nvfp4.h"

static_assert(sizeof(nvfp4_checksum_params) == 24, "ABI");

// The weight of byte i: (i + 1) * golden-ratio constant, wrapping. Odd, so distinct positions give
// distinct weights mod 2^64 for any realistic length.
__device__ __forceinline__ unsigned long long weight(uint64_t i) {
    return (i + 1ull) * 0x9E3779B97F4A7C15ull;
}

extern "C" __global__ void nvfp4_checksum(nvfp4_checksum_params p) {
    const uint64_t chunks = (p.n + 15) / 16;
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    const bool aligned = ((uintptr_t)p.data & 15) == 0;
    unsigned long long acc = 0;
    for (uint64_t c = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; c < chunks; c += stride) {
        const uint64_t base = c * 16;
        uint8_t b[16];
        if (aligned && base + 16 <= p.n) {
            const uint4 v = *reinterpret_cast<const uint4 *>(p.data + base);
            const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int k = 0; k < 16; ++k) b[k] = (uint8_t)(w[k / 4] >> (8 * (k % 4)));
        } else {
#pragma unroll
            for (int k = 0; k < 16; ++k) b[k] = base + k < p.n ? p.data[base + k] : 0;
        }
#pragma unroll
        for (int k = 0; k < 16; ++k) {
            if (base + k < p.n) acc += (unsigned long long)(b[k] + 1u) * weight(base + k);
        }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if ((threadIdx.x & 31) == 0 && acc != 0) atomicAdd(p.out, acc);
}
