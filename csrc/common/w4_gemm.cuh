// w4_gemm.cuh: the one kernel body of the NVFP4-weight tensor-core GEMMs (W4A16 and W4A4), instantiated
// by gemv_w4a16.cu (one 16-row M tile per block: decode, M <= 16) and gemm_w4a16.cu (four M tiles per
// block: larger M). Launch contract and ABI: nvfp4_gemm_params in nvfp4.h.
//
// Shape of the work. A block is 4 warps; warp w owns 16 output columns (two n8 MMA tiles, rows
// n_base + 8j + g of W) and all 16*MT rows of the block's M tile. The K loop walks steps of 128: in a
// step, lane (g, t) (g = lane / 4, t = lane % 4) reads W elements [k0, k0 + 32) of its rows with one
// 16-byte load per row, k0 = step * 128 + 32t, and the two E4M3 scales of those 32 elements. So a warp
// reads 8 rows x 64 contiguous bytes per tile and step, and every byte of W is read exactly once per M
// tile (once in all for decode). The 16-byte word is 4 words of 8 elements; word c, pair i (elements
// i and i + 4, dequant.cuh) goes to MMA (c, i / 2) as B register i % 2. The activation rows are read in
// the same order (16 bytes per row and word, permuted with PRMT), so lane t's A and B fragments cover the
// same K elements, and every K element of the step lands in exactly one MMA slot.
//
// Weights stream with no L1 allocation and the next step's 16-byte words are loaded before the current
// step is decoded (double-buffered registers), so each thread keeps 32 bytes (gemv) in flight on top of
// what the other resident blocks have; the host splits K (grid.z) until the grid has a few blocks per SM.
//
// Register budgets (ptxas reports per target) are quoted in gemv_w4a16.cu and gemm_w4a16.cu.
#ifndef NVFP4_COMMON_W4_GEMM_CUH
#define NVFP4_COMMON_W4_GEMM_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "common/dequant.cuh"
#include "nvfp4.h"

static_assert(sizeof(nvfp4_gemm_params) == 112, "ABI");

namespace w4 {

constexpr int kThreads = 128;  // 4 warps
constexpr int kNT = 2;         // n8 tiles per warp
constexpr int kBlockN = 4 * kNT * 8;
constexpr uint32_t kStepK = 128;

enum AKind { kActBf16 = 0, kActF16 = 1, kActFp4 = 2 };

// 32 codes (16 bytes) and their 2 scale bytes (block 0 in bits 0..7, block 1 in bits 8..15) of one row
// starting at element k0 (a multiple of 32); zeros past K or outside the tensor, which add nothing.
template <bool STREAM>
__device__ __forceinline__ void load_fp4(const uint8_t *codes, const uint8_t *scales, uint32_t row, bool row_ok,
                                         uint32_t k0, uint32_t K, bool vec, uint4 &q, uint32_t &s) {
    q = make_uint4(0, 0, 0, 0);
    s = 0;
    if (!row_ok || k0 >= K) return;
    const uint8_t *pc = codes + (uint64_t)row * (K / 2) + k0 / 2;
    const uint8_t *ps = scales + (uint64_t)row * (K / 16) + k0 / 16;
    if (vec && k0 + 32 <= K) {
        // K % 32 == 0: the row starts (K/2 bytes apart) and k0/2 are multiples of 16, the scale offset even.
        q = STREAM ? w4_load_stream16(pc) : __ldg(reinterpret_cast<const uint4 *>(pc));
        s = __ldg(reinterpret_cast<const unsigned short *>(ps));
    } else {
        // K % 16 == 0 only, or the last step: 4-byte words (rows are 8-byte aligned), each word 8 elements;
        // K is a multiple of 8, so a word is either wholly inside K or wholly past it.
        const uint32_t *p32 = reinterpret_cast<const uint32_t *>(pc);
        q.x = __ldg(p32);
        if (k0 + 8 < K) q.y = __ldg(p32 + 1);
        if (k0 + 16 < K) q.z = __ldg(p32 + 2);
        if (k0 + 24 < K) q.w = __ldg(p32 + 3);
        s = __ldg(ps);
        if (k0 + 16 < K) s |= (uint32_t)__ldg(ps + 1) << 8;
    }
}

// 8 activations (16 bytes) of row `row` from element k (a multiple of 8); zeros outside.
__device__ __forceinline__ uint4 load_act16(const uint16_t *a, uint32_t row, bool row_ok, uint32_t k, uint32_t K) {
    if (!row_ok || k >= K) return make_uint4(0, 0, 0, 0);
    return __ldg(reinterpret_cast<const uint4 *>(a + (uint64_t)row * K + k));
}

__device__ __forceinline__ uint32_t word(const uint4 &q, int c) {
    return c == 0 ? q.x : c == 1 ? q.y : c == 2 ? q.z : q.w;
}

__device__ __forceinline__ float load_as_f32(const void *p, uint64_t i, uint32_t dtype) {
    if (dtype == NVFP4_DTYPE_F32) return reinterpret_cast<const float *>(p)[i];
    const unsigned short v = reinterpret_cast<const unsigned short *>(p)[i];
    if (dtype == NVFP4_DTYPE_F16) return __half2float(__ushort_as_half(v));
    return __uint_as_float((uint32_t)v << 16);
}

// out[m, n] = v * alpha (+ bias[n]), each step one f32 rounding, then one rounding to the output type.
__device__ __forceinline__ void store_out(const nvfp4_gemm_params &p, uint32_t m, uint32_t n, float v, float alpha) {
    v = __fmul_rn(v, alpha);
    if (p.bias != nullptr) v = __fadd_rn(v, load_as_f32(p.bias, n, p.bias_dtype));
    const uint64_t i = (uint64_t)m * p.n + n;
    if (p.out_dtype == NVFP4_DTYPE_F32) {
        reinterpret_cast<float *>(p.out)[i] = v;
    } else if (p.out_dtype == NVFP4_DTYPE_F16) {
        reinterpret_cast<__half *>(p.out)[i] = __float2half_rn(v);
    } else {
        reinterpret_cast<__nv_bfloat16 *>(p.out)[i] = __float2bfloat16_rn(v);
    }
}

template <int MT, int AK>
__device__ __forceinline__ void gemm_epilogue(const nvfp4_gemm_params &p, float (&acc)[MT][kNT][4],
                                              uint32_t n_base, uint32_t m_base);

template <int MT, int AK>
__device__ __forceinline__ void gemm_body(const nvfp4_gemm_params &p) {
    constexpr bool BF16 = AK != kActF16;
    const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const uint32_t M = p.m, N = p.n, K = p.k;
    const uint32_t n_base = blockIdx.x * kBlockN + warp * (kNT * 8);
    const uint32_t m_base = blockIdx.y * (16 * MT);
    const uint32_t steps = (K + kStepK - 1) / kStepK;
    const uint32_t s_begin = blockIdx.z * p.steps_per_split;
    const uint32_t s_end = min(steps, s_begin + p.steps_per_split);
    const bool vec = K % 32 == 0;

    float acc[MT][kNT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int j = 0; j < kNT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mt][j][e] = 0.0f;

    uint32_t wrow[kNT];
    bool wok[kNT];
    uint4 q[kNT];
    uint32_t s[kNT];
#pragma unroll
    for (int j = 0; j < kNT; ++j) {
        wrow[j] = n_base + 8 * j + g;
        wok[j] = wrow[j] < N;
        load_fp4<true>(p.w_codes, p.w_scales, wrow[j], wok[j], s_begin * kStepK + 32 * t, K, vec, q[j], s[j]);
    }

    for (uint32_t step = s_begin; step < s_end; ++step) {
        const uint32_t k0 = step * kStepK + 32 * t;
        // Next step's weights first: their latency hides under this step's decode and MMAs.
        uint4 qn[kNT];
        uint32_t sn[kNT];
#pragma unroll
        for (int j = 0; j < kNT; ++j) {
            if (step + 1 < s_end) {
                load_fp4<true>(p.w_codes, p.w_scales, wrow[j], wok[j], k0 + kStepK, K, vec, qn[j], sn[j]);
            } else {
                qn[j] = make_uint4(0, 0, 0, 0);
                sn[j] = 0;
            }
        }
        // NVFP4 activations: this step's 32 codes per row (rows g and g + 8 of each M tile).
        uint4 aq[AK == kActFp4 ? MT : 1][2];
        uint32_t asc[AK == kActFp4 ? MT : 1][2][2];
        if constexpr (AK == kActFp4) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const uint32_t row = m_base + 16 * mt + g + 8 * r;
                    uint32_t sb;
                    load_fp4<false>(reinterpret_cast<const uint8_t *>(p.a), p.a_scales, row, row < M, k0, K, vec,
                                    aq[mt][r], sb);
                    asc[mt][r][0] = w4_scale_pair<true>(sb & 0xFFu);
                    asc[mt][r][1] = w4_scale_pair<true>(sb >> 8);
                }
        }
        uint32_t sc[kNT][2];
#pragma unroll
        for (int j = 0; j < kNT; ++j) {
            sc[j][0] = w4_scale_pair<BF16>(s[j] & 0xFFu);
            sc[j][1] = w4_scale_pair<BF16>(s[j] >> 8);
        }
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            // af[mt][h]: the A fragment of MMA (c, h) for M tile mt.
            uint32_t af[MT][2][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    uint32_t pr[4];
                    if constexpr (AK == kActFp4) {
                        const uint32_t w = word(aq[mt][r], c);
#pragma unroll
                        for (int i = 0; i < 4; ++i) pr[i] = w4_mul2<true>(w4_decode_pair<true>(w, i), asc[mt][r][c >> 1]);
                    } else {
                        const uint32_t row = m_base + 16 * mt + g + 8 * r;
                        const uint4 x = load_act16(reinterpret_cast<const uint16_t *>(p.a), row, row < M, k0 + 8 * c, K);
                        w4_act_pairs(x, pr);
                    }
                    af[mt][0][r] = pr[0];
                    af[mt][0][2 + r] = pr[1];
                    af[mt][1][r] = pr[2];
                    af[mt][1][2 + r] = pr[3];
                }
#pragma unroll
            for (int j = 0; j < kNT; ++j) {
                const uint32_t w = word(q[j], c);
                uint32_t b[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) b[i] = w4_mul2<BF16>(w4_decode_pair<BF16>(w, i), sc[j][c >> 1]);
#pragma unroll
                for (int h = 0; h < 2; ++h)
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) w4_mma<BF16>(acc[mt][j], af[mt][h], b[2 * h], b[2 * h + 1]);
            }
        }
#pragma unroll
        for (int j = 0; j < kNT; ++j) {
            q[j] = qn[j];
            s[j] = sn[j];
        }
    }

    gemm_epilogue<MT, AK>(p, acc, n_base, m_base);
}

// The epilogue of gemm_body (and of the GEMV's own main loop, gemv_w4a16.cu): alpha, bias, split-K.
template <int MT, int AK>
__device__ __forceinline__ void gemm_epilogue(const nvfp4_gemm_params &p, float (&acc)[MT][kNT][4], uint32_t n_base,
                                              uint32_t m_base) {
    constexpr bool BF16 = AK != kActF16;
    const uint32_t lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const uint32_t M = p.m, N = p.n;
    // Decoded operands carry 2^-8 (bf16) or 2^-7 (f16) each (dequant.cuh); alpha restores it.
    float alpha = __fmul_rn(*p.w_global_scale, W4Shift<BF16>::factor);
    if constexpr (AK == kActFp4) alpha = __fmul_rn(__fmul_rn(*p.a_global_scale, 256.0f), alpha);

    if (p.splits > 1) {
        float *ws = p.workspace + (uint64_t)blockIdx.z * M * N;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int j = 0; j < kNT; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const uint32_t m = m_base + 16 * mt + g + 8 * (e >> 1), n = n_base + 8 * j + 2 * t + (e & 1);
                    if (m < M && n < N) ws[(uint64_t)m * N + n] = acc[mt][j][e];
                }
        // The last block of this tile to arrive sums every split in order (threadFenceReduction pattern):
        // its fence makes the partials visible device-wide before the counter says they are there.
        __threadfence();
        __syncthreads();
        __shared__ uint32_t is_last;
        if (threadIdx.x == 0) {
            uint32_t *ctr = p.counters + blockIdx.y * gridDim.x + blockIdx.x;
            const uint32_t prev = atomicAdd(ctr, 1u);
            is_last = prev == p.splits - 1;
            if (is_last) *ctr = 0;  // every split has counted: ready for the next launch
        }
        __syncthreads();
        if (!is_last) return;
        __threadfence();
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int j = 0; j < kNT; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const uint32_t m = m_base + 16 * mt + g + 8 * (e >> 1), n = n_base + 8 * j + 2 * t + (e & 1);
                    if (m < M && n < N) {
                        float v = 0.0f;
                        for (uint32_t z = 0; z < p.splits; ++z)
                            v = __fadd_rn(v, __ldcg(p.workspace + ((uint64_t)z * M + m) * N + n));
                        store_out(p, m, n, v, alpha);
                    }
                }
        return;
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int j = 0; j < kNT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const uint32_t m = m_base + 16 * mt + g + 8 * (e >> 1), n = n_base + 8 * j + 2 * t + (e & 1);
                if (m < M && n < N) store_out(p, m, n, acc[mt][j][e], alpha);
            }
}

}  // namespace w4

#endif  // NVFP4_COMMON_W4_GEMM_CUH
