// gemv_w4a16.cu: NVFP4-weight GEMV / small-M GEMM (M <= 16 per block row): W4A16 with bf16 or f16
// activations, and W4A4 (NVFP4 activations decoded like the weights). The CPU twins are
// reference::gemm_w4a16 and reference::gemm_w4a4; launch contract in nvfp4.h (nvfp4_gemm_params), kernel
// body and its design in common/w4_gemm.cuh, decode tricks in common/dequant.cuh.
//
// At M <= 16 the layer is bound by the weight bytes (4.5 bits a weight): one 16-row MMA tile carries all
// of M, so every weight is decoded once and meets every activation row in one MMA. Padding rows of the
// tile cost tensor-core time only, which is idle here anyway.
//
// The W4A16 kernels run their own main loop (w4v::gemv_loop below: row pointers once, full steps
// unrolled by three over three rotating weight buffers, weights two steps ahead, rows g + 8 only when
// present); W4A4 still runs w4::gemm_body<1>. Both share gemm_body's fragment order and epilogue, so
// results are unchanged.
//
// Registers (ptxas, CUDA 13.0; sm_80 / sm_90a / sm_100a / sm_120f), no spills: w4a16_bf16 and w4a16_f16
// 162 / 128 / 128 / 126-128 (capped by __launch_bounds__: 4 blocks per SM, 3 on sm_80), w4a4 72 / 64 /
// 65 / 70. SASS (sm_90a, bf16, rows g only): about 288 instructions per 128-element step and lane,
// down from about 400 with the two-buffer loop (a quarter of which were register moves and reloaded
// parameters). The host's split-K choice (ops::gemm) still assumes 8 blocks per SM for this tile.
// Measured (BENCHMARKS.md, H200, the two-buffer loop): 0.30-0.36 of copy bandwidth at M <= 4.
#include "common/w4_gemm.cuh"

namespace w4v {

using namespace w4;

// One step's weights of a lane's kNT rows: 16 code bytes and 2 scale bytes each.
struct WStep {
    uint4 q[kNT];
    uint32_t s[kNT];
};

// The hot-loop load: the whole 32-element chunk is inside K and K % 32 == 0, so no bounds checks
// (rows past N were clamped to row 0 by the caller and their results are never stored).
__device__ __forceinline__ void load_w_full(const uint8_t *const pc[kNT], const uint8_t *const ps[kNT], uint32_t step,
                                            WStep &w) {
#pragma unroll
    for (int j = 0; j < kNT; ++j) {
        w.q[j] = w4_load_stream16(pc[j] + (uint64_t)step * (kStepK / 2));
        w.s[j] = __ldg(reinterpret_cast<const unsigned short *>(ps[j] + step * (kStepK / 16)));
    }
}

// 4 chunks of 8 activations (rows g and, if HI, g + 8) of the step; zero for rows past M.
template <bool HI, bool FULL>
__device__ __forceinline__ void load_a(const uint16_t *a0, const uint16_t *a1, bool ok0, bool ok1, uint32_t k0,
                                       uint32_t K, uint4 x[2][4]) {
#pragma unroll
    for (int c = 0; c < 4; ++c) {
        const uint32_t k = k0 + 8 * c;
        x[0][c] = (ok0 && (FULL || k < K)) ? __ldg(reinterpret_cast<const uint4 *>(a0 + k)) : make_uint4(0, 0, 0, 0);
        if (HI)
            x[1][c] =
                (ok1 && (FULL || k < K)) ? __ldg(reinterpret_cast<const uint4 *>(a1 + k)) : make_uint4(0, 0, 0, 0);
        else
            x[1][c] = make_uint4(0, 0, 0, 0);
    }
}

// One step's decode and MMAs: the same fragments, in the same MMA order, as gemm_body<1>, so the
// results are bit-identical to it.
template <bool BF16, bool HI>
__device__ __forceinline__ void step_mma(float acc[kNT][4], const WStep &w, const uint4 x[2][4]) {
    uint32_t sc[kNT][2];
#pragma unroll
    for (int j = 0; j < kNT; ++j) {
        sc[j][0] = w4_scale_pair<BF16>(w.s[j] & 0xFFu);
        sc[j][1] = w4_scale_pair<BF16>(w.s[j] >> 8);
    }
#pragma unroll
    for (int c = 0; c < 4; ++c) {
        uint32_t af[2][4];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            uint32_t pr[4] = {0, 0, 0, 0};
            if (r == 0 || HI) w4_act_pairs(x[r][c], pr);
            af[0][r] = pr[0];
            af[0][2 + r] = pr[1];
            af[1][r] = pr[2];
            af[1][2 + r] = pr[3];
        }
#pragma unroll
        for (int j = 0; j < kNT; ++j) {
            const uint32_t wd = word(w.q[j], c);
            uint32_t b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) b[i] = w4_mul2<BF16>(w4_decode_pair<BF16>(wd, i), sc[j][c >> 1]);
#pragma unroll
            for (int h = 0; h < 2; ++h) w4_mma<BF16>(acc[j], af[h], b[2 * h], b[2 * h + 1]);
        }
    }
}

// One full step: optionally prefetch the weights of step + 2 into `slot` (the buffer the previous step
// freed), load this step's activations (L1/L2 hits: every warp of the grid reads the same few rows), then
// decode and multiply `cur`.
template <bool BF16, bool HI>
__device__ __forceinline__ void gemv_step(float acc[kNT][4], const WStep &cur, WStep &slot, bool prefetch,
                                          const uint8_t *const pc[kNT], const uint8_t *const ps[kNT],
                                          const uint16_t *a0, const uint16_t *a1, bool ok0, bool ok1, uint32_t step,
                                          uint32_t K) {
    if (prefetch) load_w_full(pc, ps, step + 2, slot);
    uint4 x[2][4];
    load_a<HI, true>(a0, a1, ok0, ok1, step * kStepK, K, x);
    step_mma<BF16, HI>(acc, cur, x);
}

// The main loop of the 16-row W4A16 GEMV. Compared with gemm_body<1> (BENCHMARKS.md, "Why"): row
// pointers are computed once, and the full steps (the whole 128-element step inside K, K % 32 == 0) run
// unrolled by three with three weight buffers that rotate by name, so the weights two steps ahead are
// in flight with no register copies and no bounds checks in the loop (the first SASS of this loop spent
// about a quarter of its ~400 instructions per step on buffer moves and reloaded parameters, and the
// kernel is issue-bound near bandwidth: ~28 weights per clock per SM at HBM3e speed). The last two to
// four full steps run the same body with run-time prefetch flags; the ragged last step goes through the
// bounds-checked loads of gemm_body.
template <bool BF16, bool HI>
__device__ __forceinline__ void gemv_loop(const nvfp4_gemm_params &p, float acc[kNT][4], uint32_t n_base,
                                          uint32_t m_base, uint32_t s_begin, uint32_t s_end) {
    const uint32_t lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const uint32_t M = p.m, N = p.n, K = p.k;
    const bool vec = K % 32 == 0;
    const uint32_t full_end = vec ? min(s_end, K / kStepK) : s_begin;  // steps [s_begin, full_end) are full

    const uint8_t *pc[kNT];
    const uint8_t *ps[kNT];
    uint32_t wrow[kNT];
    bool wok[kNT];
#pragma unroll
    for (int j = 0; j < kNT; ++j) {
        wrow[j] = n_base + 8 * j + g;
        wok[j] = wrow[j] < N;
        const uint64_t row = wok[j] ? wrow[j] : 0;  // a valid row to read; its results are dropped
        pc[j] = p.w_codes + row * (K / 2) + 16 * t;
        ps[j] = p.w_scales + row * (K / 16) + 2 * t;
    }
    const uint32_t r0 = m_base + g, r1 = m_base + g + 8;
    const bool ok0 = r0 < M, ok1 = r1 < M;
    const uint16_t *a0 = reinterpret_cast<const uint16_t *>(p.a) + (uint64_t)(ok0 ? r0 : 0) * K + 32 * t;
    const uint16_t *a1 = reinterpret_cast<const uint16_t *>(p.a) + (uint64_t)(ok1 ? r1 : 0) * K + 32 * t;

    uint32_t step = s_begin;
    if (step + 2 <= full_end) {
        WStep w0, w1, w2;
        load_w_full(pc, ps, step, w0);
        load_w_full(pc, ps, step + 1, w1);
        // Steady state: steps step..step+2 with step + 4 < full_end, so every prefetch is a full step.
        for (; step + 5 <= full_end; step += 3) {
            gemv_step<BF16, HI>(acc, w0, w2, true, pc, ps, a0, a1, ok0, ok1, step, K);
            gemv_step<BF16, HI>(acc, w1, w0, true, pc, ps, a0, a1, ok0, ok1, step + 1, K);
            gemv_step<BF16, HI>(acc, w2, w1, true, pc, ps, a0, a1, ok0, ok1, step + 2, K);
        }
        // 2 to 4 full steps left, w0 and w1 holding the first two.
        const uint32_t left = full_end - step;
        gemv_step<BF16, HI>(acc, w0, w2, left >= 3, pc, ps, a0, a1, ok0, ok1, step, K);
        gemv_step<BF16, HI>(acc, w1, w0, left >= 4, pc, ps, a0, a1, ok0, ok1, step + 1, K);
        if (left >= 3) gemv_step<BF16, HI>(acc, w2, w1, false, pc, ps, a0, a1, ok0, ok1, step + 2, K);
        if (left >= 4) gemv_step<BF16, HI>(acc, w0, w1, false, pc, ps, a0, a1, ok0, ok1, step + 3, K);
        step = full_end;
    }
    for (; step < s_end; ++step) {  // a lone full step, the ragged tail, or every step when K % 32 != 0
        const uint32_t k0 = step * kStepK + 32 * t;
        WStep w;
#pragma unroll
        for (int j = 0; j < kNT; ++j) load_fp4<true>(p.w_codes, p.w_scales, wrow[j], wok[j], k0, K, vec, w.q[j], w.s[j]);
        uint4 x[2][4];
        load_a<HI, false>(a0 - 32 * t, a1 - 32 * t, ok0, ok1, k0, K, x);
        step_mma<BF16, HI>(acc, w, x);
    }
}

template <int AK>
__device__ __forceinline__ void gemv_body(const nvfp4_gemm_params &p) {
    constexpr bool BF16 = AK != kActF16;
    const uint32_t warp = threadIdx.x >> 5;
    const uint32_t n_base = blockIdx.x * kBlockN + warp * (kNT * 8);
    const uint32_t m_base = blockIdx.y * 16;
    const uint32_t steps = (p.k + kStepK - 1) / kStepK;
    const uint32_t s_begin = blockIdx.z * p.steps_per_split;
    const uint32_t s_end = min(steps, s_begin + p.steps_per_split);
    float acc[1][kNT][4];
#pragma unroll
    for (int j = 0; j < kNT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[0][j][e] = 0.0f;
    // Rows g + 8 of the tile exist only when M > m_base + 8 (block-uniform): at M <= 8 their loads,
    // permutes and zero fragments are left out of the loop.
    if (p.m > m_base + 8)
        gemv_loop<BF16, true>(p, acc[0], n_base, m_base, s_begin, s_end);
    else
        gemv_loop<BF16, false>(p, acc[0], n_base, m_base, s_begin, s_end);
    gemm_epilogue<1, AK>(p, acc, n_base, m_base);
}

}  // namespace w4v

// Four blocks per SM cap the W4A16 GEMV at 128 registers. sm_80 has no bf16 multiply, and the FMA that
// replaces it (dequant.cuh) needs one more live register, which spilled at that cap: it gets three.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define W4V_MIN_BLOCKS 3
#else
#define W4V_MIN_BLOCKS 4
#endif


extern "C" __global__ void __launch_bounds__(w4::kThreads, W4V_MIN_BLOCKS) nvfp4_gemv_w4a16_bf16(nvfp4_gemm_params p) {
    w4v::gemv_body<w4::kActBf16>(p);
}

extern "C" __global__ void __launch_bounds__(w4::kThreads, W4V_MIN_BLOCKS) nvfp4_gemv_w4a16_f16(nvfp4_gemm_params p) {
    w4v::gemv_body<w4::kActF16>(p);
}

extern "C" __global__ void __launch_bounds__(w4::kThreads) nvfp4_gemv_w4a4(nvfp4_gemm_params p) {
    w4::gemm_body<1, w4::kActFp4>(p);
}
