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
//   pair of bytes); activations 4 LDG.128 (LDS.128 when staged) + 16 PRMT; weights 2 LDG.128 + 2
//   LDG.U16; HMMA 8 (was 16).
// That is 9.8 weights per warp instruction: at HBM3 speed ~52% of the 4 schedulers' issue slots.
// Rows g + 8 of M add 4 LDG (or LDS), 16 PRMT and 8 HMMA (about 240 instructions per step).
//
// Pipeline. Weights stream through registers with no L1 allocation, two steps ahead at M <= 8 (three
// rotating 10-register buffers, renamed by unrolling by three, so no register moves) and one step ahead
// with rows g + 8 (two buffers: their 20 more registers would not fit otherwise). Bytes in flight:
// ~2 steps x 16 rows x 72 bytes = 2.3 KB per warp, x 20 warps = ~46 KB per SM, twice what Little's law
// asks of HBM3 (~3.35 TB/s x ~0.8 us / 132 SMs = ~20 KB).
//
// Activations (2026-12-07, H100, ncu, 8192^2, M = 1, split-K 5, grid 128x1x5, 5 blocks per SM): read
// through L1 at the top of each step and used at once, they put every L1 miss (hit rate 38%; an L2
// round trip, ~300+ cycles) on the critical path: DRAM at 50% (1.66 TB/s), 0.50 instructions issued
// per scheduler cycle, 1.03 eligible of 4.28 active warps, long scoreboard on L1TEX the top stall (3.4
// of 8.5 cycles between instructions); at M = 16, L1 throughput bound (70% busy, DRAM 29%). So a block
// whose slice of A (rows m_base..M - 1, its K steps) fits 16 KiB copies it to shared memory once, after
// issuing its first weight loads, and the loop reads LDS.128 with immediate offsets, bank-conflict
// free (stage_x). 8192 columns over 5 splits is 13 steps, 3.3 KB a row: M <= 4 fits, M = 8 and M = 16
// fall back to the global reads (per block, block-uniform). The MMA inputs are the same values in the
// same order, zeros past K as load_x_tail's, so results are bit-identical either way.
// sm_90a SASS per step, steady state, staged / global (was, before this change): bf16 207.7 / 208
// (209.3), with rows g + 8 235 / 240.5 (241.5); f16 198 / 200 (200.3), 227.5 / 231 (234). LDS takes
// LDG's place one for one; the copy costs ~130 to 145 instructions a thread per 512 chunks, once.
//
// Registers (ptxas, CUDA 13.0; sm_80 / sm_90a / sm_100a / sm_120f), no spills: w4a16_bf16 123 / 95 /
// 96 / 96, w4a16_f16 123 / 96 / 96 / 96 (115 on sm_80 before the staging), capped by __launch_bounds__
// at 5 blocks per SM (20 warps; the old kernel ran 4) and at 4 on sm_80 (no bf16 multiply nor E4M3
// converter there: the longer scale decode spilled at 96); w4a4 72 / 64 / 65 / 70. Static shared
// memory 16392 bytes: 5 x (16392 + 1024 reserved) = 85 KiB per SM, within sm_120's 100 KiB (4 blocks on
// sm_80 / sm_86). ops::gemm's split-K choice assumes these block counts and keeps the grid within one
// wave (the old grid ran 1.94 waves at 8192^2, M = 1).
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

// Staged activations (SMEM). The block's slice of A (its batch rows m_base..M - 1, at most 16, and its
// K steps [s_begin, s_end), zeros past K) is copied to shared memory once, so the loop's activation
// reads are LDS (~30 cycles) instead of L1 hits or, on a miss, L2 round trips on the critical path.
// Layout of a row: step after step, 256 bytes each; within a step, lane t's chunk c (its elements
// 8c..8c+7 of 32t..32t+31) at 16 (4c + t), so the lane reads [base + 64c] with base = row + 16t and
// every offset is an immediate. An LDS.128 goes in phases of 8 lanes (g = 2i, 2i + 1; t = 0..3): at
// one c, a row's 4 lanes take 4 consecutive 16-byte bank groups, and the row stride (256 per step + 64,
// = 64 mod 128) puts the other row on the other 4, so no phase has a bank conflict (rows clamped to
// the same row read the same addresses: a broadcast).
constexpr uint32_t kXsStep = kStepK * 2;  // bytes of a step's 128 activations
constexpr uint32_t kXsLane = 16;
constexpr uint32_t kXsChunk = 64;
// A fixed budget, so five blocks still fit an SM everywhere (5 x (16 KiB + 1 KiB reserved) = 85 KiB,
// within sm_120's 100 KiB; 228 KiB on sm_90 / sm_100), and the carveout leaves L1 room for blocks
// that fall back to the global reads (their slice does not fit: long splits, many rows).
constexpr uint32_t kXsBytes = 16384;

__device__ __forceinline__ uint32_t xs_row_stride(uint32_t steps) { return steps * kXsStep + 64; }

// The copy: 16-byte chunks of 8 activations in row order, by all threads, zeros past K (K % 16 == 0, so
// a chunk is wholly inside or past K, as load_x_tail decides it). Four loads in flight per thread.
__device__ __forceinline__ void stage_x(const nvfp4_gemm_params &p, uint32_t m_base, uint32_t s_begin,
                                        uint32_t s_end, uint8_t *xs, uint32_t rows, uint32_t stride) {
    const uint32_t K = p.k;
    const uint32_t row_chunks = (s_end - s_begin) * (kStepK / 8);
    const uint32_t total = rows * row_chunks;
    const uint16_t *a = reinterpret_cast<const uint16_t *>(p.a) + (uint64_t)m_base * K + (uint64_t)s_begin * kStepK;
    // i / row_chunks as a multiply-high by ceil(2^32 / row_chunks): exact while i * row_chunks < 2^32,
    // and here i < total + 3 * kThreads < 2^11, row_chunks <= total <= kXsBytes / 16 = 2^10.
    const uint32_t inv = 0xFFFFFFFFu / row_chunks + 1;
    for (uint32_t i0 = threadIdx.x; i0 < total; i0 += 4 * kThreads) {
        uint4 v[4];
        uint32_t off[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const uint32_t i = i0 + u * kThreads;
            const uint32_t r = __umulhi(i, inv), q = i - r * row_chunks;  // row, chunk in the row
            const uint32_t k = s_begin * kStepK + 8 * q;
            v[u] = make_uint4(0, 0, 0, 0);
            if (i < total && k < K) v[u] = __ldg(reinterpret_cast<const uint4 *>(a + (uint64_t)r * K + 8 * q));
            const uint32_t w = q % 16;  // chunk w of its step: lane t = w / 4, chunk c = w % 4
            off[u] = r * stride + (q / 16) * kXsStep + (w % 4) * kXsChunk + (w / 4) * kXsLane;
        }
#pragma unroll
        for (int u = 0; u < 4; ++u)
            if (i0 + u * kThreads < total) *reinterpret_cast<uint4 *>(xs + off[u]) = v[u];
    }
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
// With the activations staged (SMEM), xs[j] is the lane's place in the block's shared copy instead.
struct Ptrs {
    const uint8_t *c[2];
    const uint8_t *s[2];
    const uint16_t *a[2];
    const uint8_t *xs[2];
};

template <bool SMEM>
__device__ __forceinline__ void advance(Ptrs &p, uint32_t steps) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        p.c[j] += steps * (kStepK / 2);
        p.s[j] += steps * (kStepK / 16);
        if (SMEM)
            p.xs[j] += steps * kXsStep;
        else
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
template <bool HI, bool SMEM>
__device__ __forceinline__ void load_x(const Ptrs &p, int ahead, uint4 x[2][4]) {
#pragma unroll
    for (int r = 0; r < (HI ? 2 : 1); ++r)
#pragma unroll
        for (int c = 0; c < 4; ++c)
            x[r][c] = SMEM ? *reinterpret_cast<const uint4 *>(p.xs[r] + ahead * kXsStep + kXsChunk * c)
                           : __ldg(reinterpret_cast<const uint4 *>(p.a[r] + ahead * kStepK + 8 * c));
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

// The staged copy already holds these zeros past K (stage_x), so SMEM reads it unchecked.
template <bool HI, bool SMEM>
__device__ __forceinline__ void load_x_tail(const Ptrs &p, uint32_t k0, uint32_t K, uint4 x[2][4]) {
#pragma unroll
    for (int r = 0; r < (HI ? 2 : 1); ++r)
#pragma unroll
        for (int c = 0; c < 4; ++c)
            x[r][c] = SMEM ? *reinterpret_cast<const uint4 *>(p.xs[r] + kXsChunk * c)
                      : k0 + 8 * c < K ? __ldg(reinterpret_cast<const uint4 *>(p.a[r] + 8 * c))
                                       : make_uint4(0, 0, 0, 0);
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
// buffer the previous step freed) when asked, load this step's activations (shared memory when
// staged, else global through L1), then decode and multiply `cur`.
template <bool BF16, bool HI, bool SMEM>
__device__ __forceinline__ void gemv_step(float acc[2][4], const WStep &cur, WStep &slot, bool prefetch,
                                          const Ptrs &p, int at, int dist) {
    if (prefetch) load_w(p, at + dist, slot);
    uint4 x[2][4];
    load_x<HI, SMEM>(p, at, x);
    step_mma<BF16, HI>(acc, cur, x);
}

// The main loop. Full steps (the whole 128-element step inside K, K % 32 == 0) run unrolled by D + 1
// over D + 1 weight buffers that rotate by name, so the weights D steps ahead are in flight with no
// register copies; the pointers move once per unrolled iteration and every load has a constant offset.
// The last full steps run the same body with run-time prefetch flags; the ragged last step (or every
// step when K % 32 != 0) goes through bounds-checked loads.
template <bool BF16, bool HI, int D, bool SMEM>
__device__ __forceinline__ void gemv_loop(const nvfp4_gemm_params &p, float acc[2][4], uint32_t n_base,
                                          uint32_t m_base, uint32_t s_begin, uint32_t s_end, uint8_t *xs,
                                          uint32_t xs_rows) {
    const uint32_t lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const uint32_t M = p.m, N = p.n, K = p.k;
    const bool vec = K % 32 == 0;
    const uint32_t full_end = vec ? min(s_end, K / kStepK) : s_begin;  // steps [s_begin, full_end) are full
    const uint32_t xs_stride = xs_row_stride(s_end - s_begin);

    // Rows past N read row N - 1 and rows past M read row M - 1: real memory, and finite or not, they
    // only reach MMA rows (W) or columns (A) whose results are never stored. The staged copy holds rows
    // m_base..M - 1 only, so its row index clamps the same way.
    Ptrs ptr;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        const uint32_t n = min(n_base + 8 * j + g, N - 1);
        const uint32_t m = min(m_base + 8 * j + g, M - 1);
        ptr.c[j] = p.w_codes + (uint64_t)n * (K / 2) + 16 * t + (uint64_t)s_begin * (kStepK / 2);
        ptr.s[j] = p.w_scales + (uint64_t)n * (K / 16) + 2 * t + (uint64_t)s_begin * (kStepK / 16);
        ptr.a[j] = reinterpret_cast<const uint16_t *>(p.a) + (uint64_t)m * K + 32 * t + (uint64_t)s_begin * kStepK;
        ptr.xs[j] = xs + min(8 * j + g, xs_rows - 1) * xs_stride + kXsLane * t;
    }

    // The first weights go out before the staging, so their latency overlaps the activations' copy.
    uint32_t step = s_begin;
    const bool piped = step + D <= full_end;
    WStep w0, w1, w2;
    if (piped) {
        load_w(ptr, 0, w0);
        if (D == 2) load_w(ptr, 1, w1);
    }
    if (SMEM) {
        stage_x(p, m_base, s_begin, s_end, xs, xs_rows, xs_stride);
        __syncthreads();
    }

    if (D == 2 && piped) {
        // Steady state: steps step..step+2 with step + 4 < full_end, so every prefetch is a full step.
        for (; step + 5 <= full_end; step += 3) {
            gemv_step<BF16, HI, SMEM>(acc, w0, w2, true, ptr, 0, 2);
            gemv_step<BF16, HI, SMEM>(acc, w1, w0, true, ptr, 1, 2);
            gemv_step<BF16, HI, SMEM>(acc, w2, w1, true, ptr, 2, 2);
            advance<SMEM>(ptr, 3);
        }
        // 2 to 4 full steps left, w0 and w1 holding the first two.
        const uint32_t left = full_end - step;
        gemv_step<BF16, HI, SMEM>(acc, w0, w2, left >= 3, ptr, 0, 2);
        gemv_step<BF16, HI, SMEM>(acc, w1, w0, left >= 4, ptr, 1, 2);
        if (left >= 3) gemv_step<BF16, HI, SMEM>(acc, w2, w1, false, ptr, 2, 2);
        if (left >= 4) gemv_step<BF16, HI, SMEM>(acc, w0, w1, false, ptr, 3, 2);
        advance<SMEM>(ptr, left);
        step = full_end;
    } else if (D == 1 && piped) {
        // Steady state: steps step, step+1 with step + 2 < full_end.
        for (; step + 3 <= full_end; step += 2) {
            gemv_step<BF16, HI, SMEM>(acc, w0, w1, true, ptr, 0, 1);
            gemv_step<BF16, HI, SMEM>(acc, w1, w0, true, ptr, 1, 1);
            advance<SMEM>(ptr, 2);
        }
        // 1 or 2 full steps left, w0 holding the first.
        const uint32_t left = full_end - step;
        gemv_step<BF16, HI, SMEM>(acc, w0, w1, left >= 2, ptr, 0, 1);
        if (left >= 2) gemv_step<BF16, HI, SMEM>(acc, w1, w0, false, ptr, 1, 1);
        advance<SMEM>(ptr, left);
        step = full_end;
    }
    // The ragged last step, or every step when K % 32 != 0: the bounds-checked loads, zeros past K.
    for (; step < s_end; ++step) {
        WStep w;
        uint4 x[2][4];
        load_w_tail(ptr, step * kStepK + 32 * t, K, vec, w);
        load_x_tail<HI, SMEM>(ptr, step * kStepK + 32 * t, K, x);
        step_mma<BF16, HI>(acc, w, x);
        advance<SMEM>(ptr, 1);
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
    // permutes and MMAs are left out of the loop. The activations are staged when the block's slice
    // fits the budget (block-uniform too), else read from global memory as before.
    __shared__ __align__(16) uint8_t xs[kXsBytes];
    const uint32_t rows = min(p.m - m_base, 16u);
    const uint32_t nsteps = s_end - s_begin;
    const bool staged = nsteps <= kXsBytes / kXsStep && rows * xs_row_stride(nsteps) <= kXsBytes;  // no overflow
    if (p.m > m_base + 8) {
        if (staged)
            gemv_loop<BF16, true, kDistHi, true>(p, acc, n_base, m_base, s_begin, s_end, xs, rows);
        else
            gemv_loop<BF16, true, kDistHi, false>(p, acc, n_base, m_base, s_begin, s_end, xs, rows);
        gemv_epilogue<AK, 2>(p, acc, n_base, m_base);
    } else {
        if (staged)
            gemv_loop<BF16, false, kDistLo, true>(p, acc, n_base, m_base, s_begin, s_end, xs, rows);
        else
            gemv_loop<BF16, false, kDistLo, false>(p, acc, n_base, m_base, s_begin, s_end, xs, rows);
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
