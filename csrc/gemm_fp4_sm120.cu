// gemm_fp4_sm120.cu: W4A4 NVFP4 GEMM on the Blackwell sm_120 block-scaled FP4 tensor cores
//
//   D[M, N] = alpha * A[M, K] * W[N, K]^T (+ bias[N]),   alpha = a_global_scale * w_global_scale
//
// A (activations) and W (weights) are NVFP4: packed E2M1 codes [rows, K/2] and UE4M3 block scales in the
// 128x4 swizzled layout (the layout cuBLASLt and CUTLASS read; format::scale_layout). The CPU twin is
// reference::mma::mma_gemm, which gives the same bits on any input: each output starts from +0.0 and
// takes one m16n8k64 instruction (csrc/common/mma_fp4.cuh) per 64-wide K step in increasing K, the
// accumulator passing through C; the epilogue is two f32 round-to-nearest operations and one rounding to
// the output type. Also built for sm_90a with the emulated instruction, so an H100 runs this whole kernel
// (tiling, loads, scale addressing, epilogue); for sm_80 and sm_100a it compiles to a trap and the host
// refuses to launch it.
//
// Two kernels of one template (struct Tile below), the same K loop and so the same bits:
//   nvfp4_gemm_fp4_sm120        64x64 tile of D, warps 2 (M) x 2 (N) of 32x32, 4 stages;
//   nvfp4_gemm_fp4_small_sm120  16x64 tile, warps 1 x 4 of 16x16, 8 stages, for M <= 16 (decode):
//     a 64-row tile there spends 3/4 of its instructions and A copies on rows past M. K is not split
//     (that would change the order of accumulation, and so the bits, and need a workspace), so the
//     small kernel gets its memory parallelism from a deeper pipeline instead.
//
// Tiling (one CTA = 4 warps = 128 threads; sizes below are the 64x64 tile's):
//   * K step = 64 = one instruction deep. Per stage, A and W are 64 rows x 32 bytes (2 KiB each) and
//     their scales 64 rows x 4 bytes (the 4 UE4M3 bytes of a row for one K step are one aligned word in
//     the swizzled layout: 512-byte tiles of [32 lines][4 row groups][4 K blocks]). 4.5 KiB per stage,
//     4 stages = 18 KiB of static shared memory: several CTAs per SM on a 100 KiB RTX 50 SM (the small
//     tile: 2.8 KiB per stage, 22.5 KiB).
//   * Stage pipeline: cp.async (sm_80+; sm_120 has no wgmma, and TMA would need a tensor map per
//     operand), STAGES - 1 steps in flight, zero fill for rows past M/N and K past k.
//   * Warps 2 (M) x 2 (N), each 32x32 = 2 m16 x 4 n8 instructions per K step (8 per step, 32 f32
//     accumulators per lane; the small tile: 1 x 2, 8 accumulators). A and W fragments come from shared memory with ldmatrix.x4 on the packed
//     bytes: an 8x8 b16 matrix of ldmatrix is 8 rows x 16 bytes, which is exactly the footprint of one
//     A/B register of the FP4 instruction (4 bytes = 8 codes per lane, lane (g, t) at row g, bytes 4t).
//     Rows are 32 bytes (two 16-byte chunks); chunk c of row r is stored at c ^ ((r >> 2) & 1), so the
//     8 rows one ldmatrix phase reads hit 8 distinct 4-bank groups.
//   * Scales: one 32-bit shared load per lane per K step covers all 8 instructions of the warp, through
//     the selectors: with thread-id-a = mt, lanes with t >> 1 == mt supply the rows of m-tile mt (row
//     g + 8 (t & 1)); with thread-id-b = nt, lane t == nt supplies column g of n-tile nt.
//     In the small tile one load covers its 2 instructions the same way.
//
// Budgets (ptxas -v, CUDA 13.0): see README; no spills allowed
// (tools/check-sass.sh).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "common/cp_async.cuh"
#include "common/mma_fp4.cuh"
#include "nvfp4.h"

// Everything but the kernels' entry points exists only where the instruction does: elsewhere the
// kernels are a trap, and unused helpers would only draw compiler warnings.
#if NVFP4_MMA_AVAILABLE
namespace {

constexpr int KSTEP = 64;  // K elements per stage = one instruction
constexpr int ROW_BYTES = KSTEP / 2;
constexpr int THREADS = 128;

// A CTA tile: BM x BN of D, 4 warps as WARPS_M x (4 / WARPS_M), STAGES K steps of shared memory. Both
// variants run the same K loop (one instruction per 64-wide K step, increasing K, no split), so their
// bits are identical; only the shape of the work per CTA differs.
template <int BM_, int BN_, int WARPS_M_, int STAGES_>
struct Tile {
    static constexpr int BM = BM_, BN = BN_, STAGES = STAGES_;
    static constexpr int WARPS_M = WARPS_M_, WARPS_N = 4 / WARPS_M_;
    static constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;  // one warp's tile
    static constexpr int MT = WM / 16, NT = WN / 8;              // instructions per warp per K step
    // The scale selectors are immediates 0..1 (A) and 0..3 (W): one m-tile per tid-a, one n-tile per
    // tid-b. W fragments come two n8 tiles per ldmatrix.x4, hence NT even.
    static_assert(WARPS_M * WARPS_N * 32 == THREADS, "4 warps");
    static_assert(MT >= 1 && MT <= 2 && MT * 16 == WM, "1 or 2 m16 tiles per warp");
    static_assert(NT >= 2 && NT <= 4 && NT % 2 == 0 && NT * 8 == WN, "2 or 4 n8 tiles per warp");
    // load_stage's scale copies give each row one thread.
    static_assert(BM + BN <= THREADS, "one scale word per thread");
};

// M >= 17: 64x64, 2x2 warps of 32x32, 4 stages (18 KiB).
using LargeTile = Tile<64, 64, 2, 4>;
// M <= 16 (decode, small batches): one m16 row of tiles, so no instruction or A copy is spent on rows
// past M and the grid is ceil(N / 64) CTAs of 16x64, 4 warps of 16x16 side by side in N. With 1/4 of
// the MMA work per K step, the K loop is bound by the weight stream, so the pipeline is deeper: 8
// stages of 2.8 KiB (22.5 KiB), 7 weight tiles in flight per CTA.
using SmallTile = Tile<16, 64, 1, 8>;

template <class C>
struct Stage {
    uint8_t a[C::BM * ROW_BYTES];
    uint8_t w[C::BN * ROW_BYTES];
    uint32_t sfa[C::BM];
    uint32_t sfw[C::BN];
};

// Byte offset of 16-byte chunk `c` (0..1) of tile row `r`: the XOR swizzle described above.
__device__ __forceinline__ int chunk_offset(int r, int c) { return r * ROW_BYTES + ((c ^ ((r >> 2) & 1)) << 4); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3,
                                            const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(smem_addr(p)));
}

// Byte offset of the scale word (4 K blocks of K step `s`) of row `r` in the 128x4 swizzled layout
// (format::scale_layout::swizzled_offset with c = 4s; k_tiles = roundup(K/16, 4) / 4).
__device__ __forceinline__ uint64_t swizzled_word(uint64_t r, uint64_t s, uint64_t k_tiles) {
    return (r / 128) * k_tiles * 512 + s * 512 + (r % 32) * 16 + ((r % 128) / 32) * 4;
}

// The code copies of K step `s` for ROWS tile rows (global rows row0.., `rows` of them exist) in pieces
// of PIECE bytes (16 or 8), 32 or 16 whole elements each, so a piece is entirely inside K or entirely
// past it. Consecutive threads take consecutive pieces, so a warp's copies are contiguous in each row.
template <int ROWS, int PIECE>
__device__ __forceinline__ void load_codes(uint8_t *tile, const uint8_t *src, uint64_t row0, uint64_t rows,
                                           uint64_t row_bytes, uint64_t s) {
    constexpr int PER_ROW = ROW_BYTES / PIECE;
    constexpr int PIECES = ROWS * PER_ROW;
#pragma unroll
    for (int i = 0; i < (PIECES + THREADS - 1) / THREADS; ++i) {
        const int piece = threadIdx.x + i * THREADS;
        if (PIECES % THREADS == 0 || piece < PIECES) {
            const int r = piece / PER_ROW, byte = (piece % PER_ROW) * PIECE;
            const uint64_t kb = s * ROW_BYTES + byte;  // byte offset inside a global row
            const bool ok = kb < row_bytes && row0 + r < rows;
            cp_async<PIECE>(tile + chunk_offset(r, byte >> 4) + (byte & 15),
                            ok ? src + (row0 + r) * row_bytes + kb : src, ok);
        }
    }
}

// Issues the copies of K step `s` into `st`. Code pieces are 16 bytes when every row start is 16-byte
// aligned (`wide`: k % 32 == 0), else 8 bytes (k % 16 == 0 makes rows 8-byte aligned).
template <class C>
__device__ __forceinline__ void load_stage(Stage<C> &st, const nvfp4_gemm_fp4_params &p, uint64_t m0,
                                           uint64_t n0, uint64_t s, uint64_t k_tiles, bool wide) {
    const uint64_t row_bytes = p.k / 2;
    if (wide) {
        load_codes<C::BM, 16>(st.a, p.a_codes, m0, p.m, row_bytes, s);
        load_codes<C::BN, 16>(st.w, p.w_codes, n0, p.n, row_bytes, s);
    } else {
        load_codes<C::BM, 8>(st.a, p.a_codes, m0, p.m, row_bytes, s);
        load_codes<C::BN, 8>(st.w, p.w_codes, n0, p.n, row_bytes, s);
    }
    // Scales: tiles start at multiples of their (power of two, <= 128) height, so rows up to a tile's
    // end are inside the 128-row padding of the swizzled layout, and K steps inside its 4-block column
    // padding: these copies need no bounds.
    const int tid = threadIdx.x;
    if (tid < C::BM) {
        cp_async<4>(&st.sfa[tid], p.a_scales + swizzled_word(m0 + tid, s, k_tiles), true);
    } else if (tid < C::BM + C::BN) {
        const int r = tid - C::BM;
        cp_async<4>(&st.sfw[r], p.w_scales + swizzled_word(n0 + r, s, k_tiles), true);
    }
}

template <typename T>
__device__ __forceinline__ void store(void *out, uint64_t i, float v);
template <>
__device__ __forceinline__ void store<float>(void *out, uint64_t i, float v) {
    static_cast<float *>(out)[i] = v;
}
template <>
__device__ __forceinline__ void store<__half>(void *out, uint64_t i, float v) {
    static_cast<__half *>(out)[i] = __float2half_rn(v);
}
template <>
__device__ __forceinline__ void store<__nv_bfloat16>(void *out, uint64_t i, float v) {
    static_cast<__nv_bfloat16 *>(out)[i] = __float2bfloat16_rn(v);
}

// bias[col] widened exactly to f32 (every f16 and bf16 value is an f32 value).
__device__ __forceinline__ float bias_at(const nvfp4_gemm_fp4_params &p, uint64_t col) {
    switch (p.bias_dtype) {
        case NVFP4_DTYPE_F16: return __half2float(static_cast<const __half *>(p.bias)[col]);
        case NVFP4_DTYPE_BF16: return __bfloat162float(static_cast<const __nv_bfloat16 *>(p.bias)[col]);
        default: return static_cast<const float *>(p.bias)[col];
    }
}

template <class C, typename T>
__device__ __forceinline__ void epilogue(const nvfp4_gemm_fp4_params &p, const nvfp4_mma_acc (&acc)[C::MT][C::NT],
                                         uint64_t row0, uint64_t col0) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const float alpha = __fmul_rn(*p.a_global_scale, *p.w_global_scale);
#pragma unroll
    for (int mt = 0; mt < C::MT; ++mt) {
#pragma unroll
        for (int nt = 0; nt < C::NT; ++nt) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const uint64_t row = row0 + mt * 16 + g + 8 * (i >> 1);
                const uint64_t col = col0 + nt * 8 + 2 * t + (i & 1);
                if (row < p.m && col < p.n) {
                    float v = __fmul_rn(acc[mt][nt].d[i], alpha);
                    if (p.bias) v = __fadd_rn(v, bias_at(p, col));
                    store<T>(p.out, row * p.n + col, v);
                }
            }
        }
    }
}

// The MT x NT instructions of one K step; the selectors must be immediates, hence the recursion
// instead of a loop. Independent accumulators: their order does not change any bit.
template <int MT, int NT, int I = 0>
__device__ __forceinline__ void mma_step(nvfp4_mma_acc (&acc)[MT][NT], const uint32_t (&a)[MT][4],
                                         const uint32_t (&b)[NT][2], uint32_t sfa, uint32_t sfw) {
    if constexpr (I < MT * NT) {
        constexpr int mt = I / NT, nt = I % NT;
        nvfp4_mma_m16n8k64<mt, nt>(acc[mt][nt], a[mt][0], a[mt][1], a[mt][2], a[mt][3], b[nt][0], b[nt][1], sfa,
                                   sfw);
        mma_step<MT, NT, I + 1>(acc, a, b, sfa, sfw);
    }
}

template <class C>
__device__ __forceinline__ void gemm_tile(const nvfp4_gemm_fp4_params &p, Stage<C> (&stages)[C::STAGES]) {
    constexpr int STAGES = C::STAGES, MT = C::MT, NT = C::NT;
    const bool wide = p.k % 32 == 0;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int wm = (warp % C::WARPS_M) * C::WM, wn = (warp / C::WARPS_M) * C::WN;
    const uint64_t m0 = (uint64_t)blockIdx.x * C::BM, n0 = (uint64_t)blockIdx.y * C::BN;
    const uint64_t steps = (p.k + KSTEP - 1) / KSTEP;  // = k_tiles of the swizzled layout
    nvfp4_mma_acc acc[MT][NT];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) acc[mt][nt] = nvfp4_mma_acc{{0.0f, 0.0f, 0.0f, 0.0f}};

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < steps) load_stage<C>(stages[s], p, m0, n0, s, steps, wide);
        cp_async_commit();
    }
    // ldmatrix addresses: lane l gives row l % 8 of matrix l / 8. A: matrices (rows 0-7, chunk 0),
    // (rows 8-15, chunk 0), (rows 0-7, chunk 1), (rows 8-15, chunk 1) = a0..a3. W: (n 0-7, chunk 0),
    // (n 0-7, chunk 1), (n 8-15, chunk 0), (n 8-15, chunk 1) = b0, b1 of two n8 tiles.
    const int a_row = (lane & 7) + 8 * ((lane >> 3) & 1), a_chunk = lane >> 4;
    const int w_row = (lane & 7) + 8 * (lane >> 4), w_chunk = (lane >> 3) & 1;
    // The scale word this lane supplies (see the header comment: selectors tidA = mt, tidB = nt). Lanes
    // whose selector value has no tile in this warp (MT = 1: t >> 1 == 1; NT = 2: t >= 2) are ignored by
    // the instruction; they read a row of their own warp's tile so every index stays inside the arrays.
    const int sfa_row = wm + 16 * ((t >> 1) % MT) + g + 8 * (t & 1);
    const int sfw_row = wn + 8 * (t % NT) + g;

#pragma unroll 1
    for (uint64_t s = 0; s < steps; ++s) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // step s is in; every warp is done with the slot refilled next
        const uint64_t next = s + STAGES - 1;
        if (next < steps) load_stage<C>(stages[next % STAGES], p, m0, n0, next, steps, wide);
        cp_async_commit();

        const Stage<C> &st = stages[s % STAGES];
        uint32_t a[MT][4], b[NT][2];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            const int r = wm + mt * 16 + a_row;
            ldmatrix_x4(a[mt][0], a[mt][1], a[mt][2], a[mt][3], st.a + chunk_offset(r, a_chunk));
        }
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
            const int r = wn + np * 16 + w_row;
            ldmatrix_x4(b[2 * np][0], b[2 * np][1], b[2 * np + 1][0], b[2 * np + 1][1],
                        st.w + chunk_offset(r, w_chunk));
        }
        mma_step<MT, NT>(acc, a, b, st.sfa[sfa_row], st.sfw[sfw_row]);
    }
    cp_async_wait<0>();

    switch (p.out_dtype) {
        case NVFP4_DTYPE_F32: epilogue<C, float>(p, acc, m0 + wm, n0 + wn); break;
        case NVFP4_DTYPE_F16: epilogue<C, __half>(p, acc, m0 + wm, n0 + wn); break;
        default: epilogue<C, __nv_bfloat16>(p, acc, m0 + wm, n0 + wn); break;
    }
}

// The probe's MMA with runtime selectors mapped onto the instruction's immediates.
__device__ __forceinline__ void probe_mma(int tid_a, int tid_b, nvfp4_mma_acc &acc, const uint32_t (&a)[4],
                                          const uint32_t (&b)[2], uint32_t sfa, uint32_t sfb) {
#define NVFP4_PROBE(ta, tb) \
    case ta * 4 + tb: nvfp4_mma_m16n8k64<ta, tb>(acc, a[0], a[1], a[2], a[3], b[0], b[1], sfa, sfb); break
    switch (tid_a * 4 + tid_b) {
        NVFP4_PROBE(0, 0); NVFP4_PROBE(0, 1); NVFP4_PROBE(0, 2); NVFP4_PROBE(0, 3);
        NVFP4_PROBE(1, 0); NVFP4_PROBE(1, 1); NVFP4_PROBE(1, 2); NVFP4_PROBE(1, 3);
    }
#undef NVFP4_PROBE
}

}  // namespace
#endif  // NVFP4_MMA_AVAILABLE

// 128 threads: both tilings assume exactly 4 warps.
#ifndef NVFP4_GEMM_FP4_THREADS
#define NVFP4_GEMM_FP4_THREADS 128
#endif

extern "C" __global__ void __launch_bounds__(NVFP4_GEMM_FP4_THREADS) nvfp4_gemm_fp4_sm120(nvfp4_gemm_fp4_params p) {
#if NVFP4_MMA_AVAILABLE
    __shared__ __align__(128) Stage<LargeTile> stages[LargeTile::STAGES];
    gemm_tile<LargeTile>(p, stages);
#else
    __trap();  // no FP4 MMA on this target; the host never launches it here
#endif
}

extern "C" __global__ void __launch_bounds__(NVFP4_GEMM_FP4_THREADS)
    nvfp4_gemm_fp4_small_sm120(nvfp4_gemm_fp4_params p) {
#if NVFP4_MMA_AVAILABLE
    __shared__ __align__(128) Stage<SmallTile> stages[SmallTile::STAGES];
    gemm_tile<SmallTile>(p, stages);
#else
    __trap();
#endif
}

extern "C" __global__ void nvfp4_mma_probe_sm120(nvfp4_mma_probe_params p) {
#if NVFP4_MMA_AVAILABLE
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const uint64_t warps = (uint64_t)gridDim.x * (blockDim.x >> 5);
    const int tid_a = (int)p.tid_a, tid_b = (int)p.tid_b;
    // Warp-uniform trip count: the instruction (and its shuffles) needs all 32 lanes.
    for (uint64_t i = (uint64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); i < p.cases; i += warps) {
        const uint8_t *a = p.a + i * 16 * 32, *b = p.b + i * 8 * 32;
        uint32_t ar[4], br[2];
        // Register r of A: row g + 8 (r & 1), codes k = 8t + 32 (r >> 1) .. +7 = bytes 4t + 16 (r >> 1).
#pragma unroll
        for (int r = 0; r < 4; ++r) ar[r] = *(const uint32_t *)(a + (g + 8 * (r & 1)) * 32 + 4 * t + 16 * (r >> 1));
#pragma unroll
        for (int r = 0; r < 2; ++r) br[r] = *(const uint32_t *)(b + g * 32 + 4 * t + 16 * r);
        // Lane 4 (m % 8) + 2 tid_a + m / 8 supplies row m; lane 4n + tid_b column n; the rest hold NaN.
        const uint32_t nan4 = 0x7F7F7F7Fu;
        const uint32_t sfa = (t >> 1) == tid_a ? p.sfa[i * 16 + g + 8 * (t & 1)] : nan4;
        const uint32_t sfb = t == tid_b ? p.sfb[i * 8 + g] : nan4;
        nvfp4_mma_acc acc;
#pragma unroll
        for (int r = 0; r < 4; ++r) acc.d[r] = p.c[i * 128 + (g + 8 * (r >> 1)) * 8 + 2 * t + (r & 1)];
        probe_mma(tid_a, tid_b, acc, ar, br, sfa, sfb);
#pragma unroll
        for (int r = 0; r < 4; ++r) p.d[i * 128 + (g + 8 * (r >> 1)) * 8 + 2 * t + (r & 1)] = acc.d[r];
    }
#else
    __trap();
#endif
}
