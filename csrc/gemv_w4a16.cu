// gemv_w4a16.cu: NVFP4-weight GEMV / small-M GEMM (M <= 16 per block row): W4A16 with bf16 or f16
// activations, and W4A4 (NVFP4 activations decoded like the weights). The CPU twins are
// reference::gemm_w4a16 and reference::gemm_w4a4; launch contract in nvfp4.h (nvfp4_gemm_params), decode
// tricks in common/dequant.cuh. W4A4 runs w4::gemm_body<1> (common/w4_gemm.cuh); W4A16 its own body here.
//
// At M <= 16 the layer is bound by the weight bytes (4.5 bits a weight), and at HBM speed an H100 SM must
// take in ~20 weights per clock (3 TB/s / 132 SMs / 1.98 GHz / 0.5625 bytes): the kernel is built to
// spend as few instructions per weight as it can, and to keep enough warps resident to hide the memory.
//
// Shape. A block is 4 warps, each owning 16 rows of W (the block 64, as gemm_body's grid) and all of the
// block's 16 rows of M. The MMA is swapped against gemm_body's: W is the A operand (m16 = 16 weight
// rows x k16) and the activations are B (k16 x n8 = 8 rows of M), so one mma.m16n8k16 covers 16 weight
// rows where gemm_body needed two, and rows 8..15 of M, when present, are a second MMA on the same
// decoded A fragment. Lane (g, t) (g = lane / 4, t = lane % 4) loads rows g and g + 8 of its warp's 16
// exactly as gemm_body does (per 128-element step: one 16-byte code load and one 2-byte scale load per
// row, elements [32t, 32t + 32) of the step), so every byte of W is read once; its activation row is
// M row g (and g + 8). Rows past N or M are clamped to the last row: real memory, whose results land
// in MMA rows or columns that are never stored, so the loop has no predicates and no zero fill.
//
// Per step and lane (sm_90a SASS of the bf16 main loop, rows g only; 209 instructions, was 286):
//   decode 8 words x 15 (LOP3 64, left shifts as IMAD.SHL 40, SHF 16) + HMUL2 32 = 152, ~72%;
//   scales 2 x (1 F2FP.E4M3 convert + 4) = 10 (was 28: two f32 products per byte, now one convert per
//   pair of bytes); activations 4 LDG.128 + 16 PRMT; weights 2 LDG.128 + 2 LDG.U16; HMMA 8 (was 16).
// That is 9.8 weights per warp instruction: at HBM3 speed ~52% of the 4 schedulers' issue slots.
// Rows g + 8 of M add 4 LDG, 16 PRMT and 8 HMMA (about 240 instructions per step).
//
// Pipeline. Weights stream through registers with no L1 allocation, two steps ahead at M <= 8 (three
// rotating 10-register buffers, renamed by unrolling by three, so no register moves) and one step ahead
// with rows g + 8 (two buffers: their 20 more registers would not fit otherwise). Activations are read
// through L1 at the top of each step (every warp of the SM reads the same few rows). Bytes in flight:
// ~2 steps x 16 rows x 72 bytes = 2.3 KB per warp, x 20 warps = ~46 KB per SM, twice what Little's law
// asks of HBM3 (~3.35 TB/s x ~0.8 us / 132 SMs = ~20 KB).
//
// Registers (ptxas, CUDA 13.0; sm_80 / sm_90a / sm_100a / sm_120f), no spills: w4a16_bf16 115 / 95 /
// 96 / 96, w4a16_f16 115 / 96 / 96 / 96, capped by __launch_bounds__ at 5 blocks per SM (20 warps;
// the old kernel ran 4) and at 4 on sm_80 (no bf16 multiply nor E4M3 converter there: the longer scale
// decode spilled at 96); w4a4 72 / 64 / 65 / 70. ops::gemm's split-K choice assumes these block counts
// and keeps the grid within one wave (the old grid ran 1.94 waves at 8192^2, M = 1).
#include "common/w4_gemm.cuh"

namespace w4v {

using namespace w4;

// sm_89+ converts two E4M3 bytes to an f16 pair in one instruction (cvt.rn.f16x2.e4m3x2).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
#define W4V_CVT_E4M3 1
#else
#define W4V_CVT_E4M3 0
#endif

// A row's two block scales for one 32-element chunk (s16: block 0 in bits 0..7, block 1 in 8..15), each
// repeated in both halves of a 16-bit pair: sc[b] multiplies the pairs of block b.
template <bool BF16>
__device__ __forceinline__ void gemv_scales(uint32_t s16, uint32_t sc[2]) {
#if W4V_CVT_E4M3
    uint32_t h;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h) : "h"((unsigned short)s16));
    if (BF16) {
        // Every e4m3 value is a normal f16 or zero, with at most 3 mantissa bits: read with its 5-bit
        // exponent as bf16's 8-bit one, the pair is s * 2^-112 (normal, >= 2^-121) or zero, signs kept.
        // Two exact power-of-two products make it s * 2^118 (at most 448 * 2^118 < 2^127), as gemm_body's.
        uint32_t b = ((h >> 3) & 0x0FFF0FFFu) | (h & 0x80008000u);
        b = w4_mul2<true>(b, 0x7F007F00u);  // 2^127 in both halves
        h = w4_mul2<true>(b, 0x73007300u);  // 2^103
    } else {
        h = w4_mul2<false>(h, 0x58005800u);  // 2^7: e4m3 * 2^7 as gemm_body's (at most 57344, exact)
    }
    sc[0] = __byte_perm(h, h, 0x1010);
    sc[1] = __byte_perm(h, h, 0x3232);
#else
    sc[0] = w4_scale_pair<BF16>(s16 & 0xFFu);
    sc[1] = w4_scale_pair<BF16>((s16 >> 8) & 0xFFu);
#endif
}

// One step's weights of a lane's two rows (g and g + 8 of the warp's 16): 16 code bytes and 2 scale
// bytes each.
struct WStep {
    uint4 q[2];
    uint32_t s[2];
};

// The lane's running pointers, all at the same step: codes and scales of its two weight rows, and
// the activations of its batch rows g and g + 8 (clamped into the tensor; their extra columns of the
// MMA are dropped), each already offset to the lane's 32 elements.
struct Ptrs {
    const uint8_t *c[2];
    const uint8_t *s[2];
    const uint16_t *a[2];
};

__device__ __forceinline__ void advance(Ptrs &p, uint32_t steps) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        p.c[j] += steps * (kStepK / 2);
        p.s[j] += steps * (kStepK / 16);
        p.a[j] += steps * kStepK;
    }
}

// The weights `ahead` steps past the pointers' step; the whole chunk is inside K (K % 32 == 0).
__device__ __forceinline__ void load_w(const Ptrs &p, int ahead, WStep &w) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        w.q[j] = w4_load_stream16(p.c[j] + ahead * (kStepK / 2));
        w.s[j] = __ldg(reinterpret_cast<const unsigned short *>(p.s[j] + ahead * (kStepK / 16)));
    }
}

// The activations `ahead` steps past the pointers' step: 4 chunks of 8 (rows g and, if HI, g + 8).
template <bool HI>
__device__ __forceinline__ void load_x(const Ptrs &p, int ahead, uint4 x[2][4]) {
#pragma unroll
    for (int r = 0; r < (HI ? 2 : 1); ++r)
#pragma unroll
        for (int c = 0; c < 4; ++c) x[r][c] = __ldg(reinterpret_cast<const uint4 *>(p.a[r] + ahead * kStepK + 8 * c));
}

// The same loads for a step that may end past K (k0 = the lane's first element): 16 bytes when the whole
// chunk is inside K and K % 32 == 0, else 4-byte words (rows are 8-byte aligned), each word 8 elements
// wholly inside or wholly past K (K % 16 == 0); activations in 16-byte chunks of 8, zero past K.
__device__ __forceinline__ void load_w_tail(const Ptrs &p, uint32_t k0, uint32_t K, bool vec, WStep &w) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        uint4 q = make_uint4(0, 0, 0, 0);
        uint32_t s = 0;
        if (k0 < K) {
            if (vec && k0 + 32 <= K) {
                q = w4_load_stream16(p.c[j]);
                s = __ldg(reinterpret_cast<const unsigned short *>(p.s[j]));
            } else {
                const uint32_t *p32 = reinterpret_cast<const uint32_t *>(p.c[j]);
                q.x = __ldg(p32);
                if (k0 + 8 < K) q.y = __ldg(p32 + 1);
                if (k0 + 16 < K) q.z = __ldg(p32 + 2);
                if (k0 + 24 < K) q.w = __ldg(p32 + 3);
                s = __ldg(p.s[j]);
                if (k0 + 16 < K) s |= (uint32_t)__ldg(p.s[j] + 1) << 8;
            }
        }
        w.q[j] = q;
        w.s[j] = s;
    }
}

template <bool HI>
__device__ __forceinline__ void load_x_tail(const Ptrs &p, uint32_t k0, uint32_t K, uint4 x[2][4]) {
#pragma unroll
    for (int r = 0; r < (HI ? 2 : 1); ++r)
#pragma unroll
        for (int c = 0; c < 4; ++c)
            x[r][c] = k0 + 8 * c < K ? __ldg(reinterpret_cast<const uint4 *>(p.a[r] + 8 * c)) : make_uint4(0, 0, 0, 0);
}

// One step's decode and MMAs, weights as the A operand (16 rows of W x 16 of K) and activations as B
// (16 of K x 8 rows of M): lane (g, t) decodes rows g (a0, a2) and g + 8 (a1, a3) of the warp's 16.
// Word c of the lane's chunk, pair i (elements i and i + 4, dequant.cuh) goes to MMA (c, i / 2), as
// A register 2 * (i % 2) (row g) or 2 * (i % 2) + 1 (row g + 8), and the activations' same pair to
// B register i % 2: every K element of the step meets its activation in exactly one MMA slot.
// MMA h of each word accumulates into chain h, so two MMA chains run side by side.
template <bool BF16, bool HI>
__device__ __forceinline__ void step_mma(float acc[2][4], const WStep &w, const uint4 x[2][4]) {
    uint32_t sc[2][2];
#pragma unroll
    for (int j = 0; j < 2; ++j) gemv_scales<BF16>(w.s[j], sc[j]);
#pragma unroll
    for (int c = 0; c < 4; ++c) {
        uint32_t bx[2][4];
#pragma unroll
        for (int r = 0; r < (HI ? 2 : 1); ++r) w4_act_pairs(x[r][c], bx[r]);
        uint32_t pw[2][4];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const uint32_t wd = word(w.q[j], c);
#pragma unroll
            for (int i = 0; i < 4; ++i) pw[j][i] = w4_mul2<BF16>(w4_decode_pair<BF16>(wd, i), sc[j][c >> 1]);
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const uint32_t a[4] = {pw[0][2 * h], pw[1][2 * h], pw[0][2 * h + 1], pw[1][2 * h + 1]};
#pragma unroll
            for (int r = 0; r < (HI ? 2 : 1); ++r) w4_mma<BF16>(acc[r], a, bx[r][2 * h], bx[r][2 * h + 1]);
        }
    }
}

// One full step at the pointers' step + `at`: prefetch the weights of step + at + dist into `slot` (the
// buffer the previous step freed) when asked, load this step's activations (L1 hits: every warp of
// the SM reads the same few rows), then decode and multiply `cur`.
template <bool BF16, bool HI>
__device__ __forceinline__ void gemv_step(float acc[2][4], const WStep &cur, WStep &slot, bool prefetch,
                                          const Ptrs &p, int at, int dist) {
    if (prefetch) load_w(p, at + dist, slot);
    uint4 x[2][4];
    load_x<HI>(p, at, x);
    step_mma<BF16, HI>(acc, cur, x);
}

// The main loop. Full steps (the whole 128-element step inside K, K % 32 == 0) run unrolled by D + 1
// over D + 1 weight buffers that rotate by name, so the weights D steps ahead are in flight with no
// register copies; the pointers move once per unrolled iteration and every load has a constant offset.
// The last full steps run the same body with run-time prefetch flags; the ragged last step (or every
// step when K % 32 != 0) goes through bounds-checked loads.
template <bool BF16, bool HI, int D>
__device__ __forceinline__ void gemv_loop(const nvfp4_gemm_params &p, float acc[2][4], uint32_t n_base,
                                          uint32_t m_base, uint32_t s_begin, uint32_t s_end) {
    const uint32_t lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const uint32_t M = p.m, N = p.n, K = p.k;
    const bool vec = K % 32 == 0;
    const uint32_t full_end = vec ? min(s_end, K / kStepK) : s_begin;  // steps [s_begin, full_end) are full

    // Rows past N read row N - 1 and rows past M read row M - 1: real memory, and finite or not, they
    // only reach MMA rows (W) or columns (A) whose results are never stored.
    Ptrs ptr;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        const uint32_t n = min(n_base + 8 * j + g, N - 1);
        const uint32_t m = min(m_base + 8 * j + g, M - 1);
        ptr.c[j] = p.w_codes + (uint64_t)n * (K / 2) + 16 * t + (uint64_t)s_begin * (kStepK / 2);
        ptr.s[j] = p.w_scales + (uint64_t)n * (K / 16) + 2 * t + (uint64_t)s_begin * (kStepK / 16);
        ptr.a[j] = reinterpret_cast<const uint16_t *>(p.a) + (uint64_t)m * K + 32 * t + (uint64_t)s_begin * kStepK;
    }

    uint32_t step = s_begin;
    if (D == 2 && step + 2 <= full_end) {
        WStep w0, w1, w2;
        load_w(ptr, 0, w0);
        load_w(ptr, 1, w1);
        // Steady state: steps step..step+2 with step + 4 < full_end, so every prefetch is a full step.
        for (; step + 5 <= full_end; step += 3) {
            gemv_step<BF16, HI>(acc, w0, w2, true, ptr, 0, 2);
            gemv_step<BF16, HI>(acc, w1, w0, true, ptr, 1, 2);
            gemv_step<BF16, HI>(acc, w2, w1, true, ptr, 2, 2);
            advance(ptr, 3);
        }
        // 2 to 4 full steps left, w0 and w1 holding the first two.
        const uint32_t left = full_end - step;
        gemv_step<BF16, HI>(acc, w0, w2, left >= 3, ptr, 0, 2);
        gemv_step<BF16, HI>(acc, w1, w0, left >= 4, ptr, 1, 2);
        if (left >= 3) gemv_step<BF16, HI>(acc, w2, w1, false, ptr, 2, 2);
        if (left >= 4) gemv_step<BF16, HI>(acc, w0, w1, false, ptr, 3, 2);
        advance(ptr, left);
        step = full_end;
    } else if (D == 1 && step + 1 <= full_end) {
        WStep w0, w1;
        load_w(ptr, 0, w0);
        // Steady state: steps step, step+1 with step + 2 < full_end.
        for (; step + 3 <= full_end; step += 2) {
            gemv_step<BF16, HI>(acc, w0, w1, true, ptr, 0, 1);
            gemv_step<BF16, HI>(acc, w1, w0, true, ptr, 1, 1);
            advance(ptr, 2);
        }
        // 1 or 2 full steps left, w0 holding the first.
        const uint32_t left = full_end - step;
        gemv_step<BF16, HI>(acc, w0, w1, left >= 2, ptr, 0, 1);
        if (left >= 2) gemv_step<BF16, HI>(acc, w1, w0, false, ptr, 1, 1);
        advance(ptr, left);
        step = full_end;
    }
    // The ragged last step, or every step when K % 32 != 0: the bounds-checked loads, zeros past K.
    for (; step < s_end; ++step) {
        WStep w;
        uint4 x[2][4];
        load_w_tail(ptr, step * kStepK + 32 * t, K, vec, w);
        load_x_tail<HI>(ptr, step * kStepK + 32 * t, K, x);
        step_mma<BF16, HI>(acc, w, x);
        advance(ptr, 1);
    }
}

// Output (m, n) of accumulator register e of batch half r: D row g + 8 (e / 2) is weight row n, D
// column 2t + e % 2 is batch row m (mma.m16n8k16's D fragment, dequant.cuh). alpha, bias and split-K
// as gemm_epilogue; halves r >= R (no batch rows there) are left out.
template <int AK, int R>
__device__ __forceinline__ void gemv_epilogue(const nvfp4_gemm_params &p, const float (&acc)[2][4], uint32_t n_base,
                                              uint32_t m_base) {
    constexpr bool BF16 = AK != kActF16;
    const uint32_t lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const uint32_t M = p.m, N = p.n;
    const float alpha = __fmul_rn(*p.w_global_scale, W4Shift<BF16>::factor);
    auto out_m = [&](int r, int e) { return m_base + 8 * r + 2 * t + (e & 1); };
    auto out_n = [&](int e) { return n_base + g + 8 * (e >> 1); };

    if (p.splits > 1) {
        const uint64_t mn = (uint64_t)M * N;
        float *ws = p.workspace + blockIdx.z * mn;
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const uint32_t m = out_m(r, e), n = out_n(e);
                if (m < M && n < N) ws[(uint64_t)m * N + n] = acc[r][e];
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
        // The lane's outputs take their partials four splits at a time, every load of a round issued
        // before any add, so the reduction waits for splits / 4 L2 round trips rather than one per
        // split; the adds go in split order.
        float sum[R][4];
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
            for (int e = 0; e < 4; ++e) sum[r][e] = 0.0f;
        const float *lane_ws = p.workspace + (uint64_t)out_m(0, 0) * N + out_n(0);
        for (uint32_t z0 = 0; z0 < p.splits; z0 += 4) {
            float part[R][4][4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const float *q = lane_ws + (z0 + i) * mn;
#pragma unroll
                for (int r = 0; r < R; ++r)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const bool ok = out_m(r, e) < M && out_n(e) < N && z0 + i < p.splits;
                        part[r][e][i] = ok ? __ldcg(q + (uint64_t)(8 * r + (e & 1)) * N + 8 * (e >> 1)) : 0.0f;
                    }
            }
#pragma unroll
            for (int r = 0; r < R; ++r)
#pragma unroll
                for (int e = 0; e < 4; ++e)
#pragma unroll
                    for (int i = 0; i < 4; ++i)
                        if (z0 + i < p.splits) sum[r][e] = __fadd_rn(sum[r][e], part[r][e][i]);
        }
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const uint32_t m = out_m(r, e), n = out_n(e);
                if (m < M && n < N) store_out(p, m, n, sum[r][e], alpha);
            }
        return;
    }
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const uint32_t m = out_m(r, e), n = out_n(e);
            if (m < M && n < N) store_out(p, m, n, acc[r][e], alpha);
        }
}

// Weight prefetch distance in steps: two at M <= 8; one when rows g + 8 of the batch are present, whose
// 16 more activation registers and 4 more accumulators would not fit the register cap otherwise.
constexpr int kDistLo = 2;
constexpr int kDistHi = 1;

template <int AK>
__device__ __forceinline__ void gemv_body(const nvfp4_gemm_params &p) {
    constexpr bool BF16 = AK != kActF16;
    const uint32_t warp = threadIdx.x >> 5;
    const uint32_t n_base = blockIdx.x * kBlockN + warp * 16;
    const uint32_t m_base = blockIdx.y * 16;
    const uint32_t steps = (p.k + kStepK - 1) / kStepK;
    const uint32_t s_begin = blockIdx.z * p.steps_per_split;
    const uint32_t s_end = min(steps, s_begin + p.steps_per_split);
    float acc[2][4];
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[r][e] = 0.0f;
    // Batch rows m_base + 8.. exist only when M > m_base + 8 (block-uniform): at M <= 8 their loads,
    // permutes and MMAs are left out of the loop.
    if (p.m > m_base + 8) {
        gemv_loop<BF16, true, kDistHi>(p, acc, n_base, m_base, s_begin, s_end);
        gemv_epilogue<AK, 2>(p, acc, n_base, m_base);
    } else {
        gemv_loop<BF16, false, kDistLo>(p, acc, n_base, m_base, s_begin, s_end);
        gemv_epilogue<AK, 1>(p, acc, n_base, m_base);
    }
}

}  // namespace w4v

// Blocks per SM the W4A16 GEMV is built for (ops::gemm's split-K choice assumes the same): five caps
// it at 96 registers (65536 / (5 * 128), rounded down to a multiple of 8). sm_80 has no bf16 multiply
// nor E4M3 converter, and its longer scale decode spilled at that cap: four (128 registers) there.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 890
#define W4V_MIN_BLOCKS 4
#else
#define W4V_MIN_BLOCKS 5
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
