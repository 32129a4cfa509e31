// gemm_w4a16_sm90.cu: W4A16 NVFP4 GEMM on the Hopper warpgroup tensor cores (wgmma, sm_90a), for M from
// a few dozen rows up:  out[M, N] = alpha * A[M, K] * W[N, K]^T (+ bias[N]), alpha = W's global scale.
//
// The product is computed transposed, D[N, M] = W * A^T, so the weights are wgmma's A operand (64 rows
// of N per warpgroup, the instruction's fixed M) and the activations its B operand, whose width BM (64,
// 128 or 256 rows of M per block) is the instruction's N: a small M wastes no tensor-core rows.
//
// A block is two warpgroups (256 threads) and owns 128 rows of W and BM rows of A; K is walked in tiles
// of 64 (one 128-byte swizzle atom of 16-bit elements). Per tile:
//   * cp.async brings W's codes (128 rows x 32 bytes, with L2 fetching whole 128-byte lines, so the next
//     three tiles' codes of a row come from L2) and scales (128 x 4 bytes) KW = 7 tiles ahead through an
//     8-slot ring, and A's tile (BM rows x 128 bytes, swizzled) KA = 2 tiles ahead through a 4-slot ring:
//     the weights are the DRAM stream and get the deep pipeline; A mostly hits L2 (every column block
//     reads it).
//   * Each warpgroup decodes its own 64 rows into a bf16/f16 tile in shared memory (double-buffered),
//     two threads per row, 32 weights each: the exact register decode of dequant.cuh (E2M1 and E4M3 to a
//     16-bit float times a power of two that alpha takes back), the pairs put back in K order with PRMT,
//     written with the 128-byte swizzle.
//   * The warpgroup issues 4 wgmma m64nBMk16 on that tile and A's, and leaves them in flight while the
//     next tile is decoded: it waits for the previous tile's group only (wait_group 1).
// Ordering: a tile's decode writes the weight buffer the tile-before-last's wgmmas read, and its copies
// overwrite the slots that wgmma and the decode before it read; the wait_group(1) at the end of each
// tile and the block barrier at the top of the next make both safe. Writes by st.shared and cp.async
// reach wgmma (the async proxy) through fence.proxy.async before the barrier that publishes them.
//
// Numerics: the decoded weights and the activations are exact 16-bit values, their products exact in
// f32; the sum runs in the tensor core's f32 accumulation, then alpha and bias are one f32 rounding each
// and the output one rounding (w4_gemm.cuh's store_out), as in the other W4A16 kernels: bit for bit
// equal to them on exact-sum inputs, within the f32 bound otherwise.
//
// Contract (checked by the host, src/cuda/launch_gemm.rs): K a multiple of 64 (each 64-wide tile is
// whole, and the 4 scale bytes of a row and tile one aligned word); grid (ceil(N / 128), ceil(M / BM),
// splits), split z owning K steps [z * steps_per_split, ...) of 128 (two tiles); 256 threads; the
// dynamic shared memory of SmemLayout<BM>. Only the sm_90a cubin has the kernels; elsewhere they trap
// and the host never launches them.
//
// Registers (ptxas, CUDA 13.0, sm_90a): see the kernels below.
#include "common/cp_async.cuh"
#include "common/w4_gemm.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define NVFP4_WGMMA 1
#include "common/wgmma.cuh"
#else
#define NVFP4_WGMMA 0
#endif

namespace sm90 {

constexpr int kThreads = 256;
constexpr int kBlockN = 128;     // rows of W per block: 64 per warpgroup
constexpr int kTileK = 64;       // K elements per tile: one 128-byte row of 16-bit values
constexpr int kRowBytes = 128;   // a decoded or activation row of one tile
constexpr int kCodeBytes = 32;   // a row's codes for one tile
constexpr int kWSlots = 8, kWAhead = kWSlots - 1;
constexpr int kASlots = 4, kAAhead = kASlots - 2;

// Byte offsets in the (1024-aligned) dynamic shared memory.
template <int BM>
struct SmemLayout {
    static constexpr int kDecoded = 0;                                // 2 x [128 rows][128 B]
    static constexpr int kAct = kDecoded + 2 * kBlockN * kRowBytes;   // kASlots x [BM rows][128 B]
    static constexpr int kCodes = kAct + kASlots * BM * kRowBytes;    // kWSlots x [128 rows][32 B]
    static constexpr int kScales = kCodes + kWSlots * kBlockN * kCodeBytes;  // kWSlots x [128 rows][4 B]
    static constexpr int kBytes = kScales + kWSlots * kBlockN * 4;
    static constexpr int kAlloc = kBytes + 1024;  // room to align the base
};

#if NVFP4_WGMMA

// Offset of 16-byte chunk c of row r in a 128-byte-swizzled tile.
__device__ __forceinline__ uint32_t swz(uint32_t r, uint32_t c) { return r * kRowBytes + ((c ^ (r & 7)) << 4); }

// Issues tile `kt`'s copies of W (codes and scales) into slot kt % kWSlots.
__device__ __forceinline__ void load_w(const nvfp4_gemm_params &p, uint8_t *smem, uint32_t n_base, uint32_t kt,
                                       int codes_off, int scales_off) {
    const uint32_t tid = threadIdx.x;
    const uint32_t slot = kt % kWSlots;
    const uint32_t row = tid >> 1, half = tid & 1;
    const bool ok = n_base + row < p.n;
    const uint64_t grow = ok ? n_base + row : 0;  // a valid address even when nothing is read
    cp_async<16, true>(smem + codes_off + slot * (kBlockN * kCodeBytes) + row * kCodeBytes + 16 * half,
                       p.w_codes + grow * (p.k / 2) + kt * (kTileK / 2) + 16 * half, ok);
    if (tid < kBlockN) {
        const bool rok = n_base + tid < p.n;
        const uint64_t r = rok ? n_base + tid : 0;
        cp_async<4>(smem + scales_off + slot * (kBlockN * 4) + tid * 4, p.w_scales + r * (p.k / 16) + kt * 4, rok);
    }
}

// Issues tile `kt`'s copy of A (BM rows, swizzled) into slot kt % kASlots.
template <int BM>
__device__ __forceinline__ void load_a(const nvfp4_gemm_params &p, uint8_t *act, uint32_t m_base, uint32_t kt) {
    const uint16_t *a = reinterpret_cast<const uint16_t *>(p.a);
    uint8_t *slot = act + (kt % kASlots) * (BM * kRowBytes);
#pragma unroll
    for (int it = 0; it < BM * 8 / kThreads; ++it) {
        const uint32_t idx = threadIdx.x + kThreads * it, m = idx >> 3, c = idx & 7;
        const bool ok = m_base + m < p.m;
        const uint64_t row = ok ? m_base + m : 0;
        cp_async<16>(slot + swz(m, c), a + row * p.k + kt * kTileK + 8 * c, ok);
    }
}

// This thread's share of the decode of tile `kt`: row r of its warpgroup's 64, elements 32h..32h+31.
template <bool BF16>
__device__ __forceinline__ void decode(const uint8_t *codes, const uint8_t *scales, uint8_t *decoded,
                                       uint32_t wg, uint32_t i) {
    const uint32_t r = i >> 1, h = i & 1, row = wg * 64 + r;
    const uint4 q = *reinterpret_cast<const uint4 *>(codes + row * kCodeBytes + 16 * h);
    const uint32_t sb = *reinterpret_cast<const unsigned short *>(scales + row * 4 + 2 * h);
    const uint32_t sc[2] = {w4_scale_pair<BF16>(sb & 0xFFu), w4_scale_pair<BF16>(sb >> 8)};
    uint8_t *dst = decoded + wg * (64 * kRowBytes);
#pragma unroll
    for (int c = 0; c < 4; ++c) {
        const uint32_t w = w4::word(q, c);
        uint32_t pr[4];  // pairs (j, j + 4) of the word's 8 elements
#pragma unroll
        for (int j = 0; j < 4; ++j) pr[j] = w4_mul2<BF16>(w4_decode_pair<BF16>(w, j), sc[c >> 1]);
        uint4 o;  // back in K order: (0, 1), (2, 3), (4, 5), (6, 7)
        o.x = __byte_perm(pr[0], pr[1], 0x5410);
        o.y = __byte_perm(pr[2], pr[3], 0x5410);
        o.z = __byte_perm(pr[0], pr[1], 0x7632);
        o.w = __byte_perm(pr[2], pr[3], 0x7632);
        *reinterpret_cast<uint4 *>(dst + swz(r, 4 * h + c)) = o;
    }
}

// Accumulator element e (0..3) of n8 block j: its row of W (within the block) and column of M.
__device__ __forceinline__ uint32_t acc_n(uint32_t wg, uint32_t lane_warp, int e) {
    return wg * 64 + 16 * lane_warp + ((threadIdx.x & 31) >> 2) + 8 * (e >> 1);
}
__device__ __forceinline__ uint32_t acc_m(int j, int e) { return 8 * j + 2 * (threadIdx.x & 3) + (e & 1); }

template <int BM, bool BF16>
__device__ __forceinline__ void epilogue(const nvfp4_gemm_params &p, const float (&acc)[BM / 2], uint32_t n_base,
                                         uint32_t m_base) {
    const uint32_t wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3;
    const uint32_t M = p.m, N = p.n;
    const float alpha = __fmul_rn(*p.w_global_scale, W4Shift<BF16>::factor);
    if (p.splits > 1) {
        float *ws = p.workspace + (uint64_t)blockIdx.z * M * N;
#pragma unroll
        for (int j = 0; j < BM / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const uint32_t n = n_base + acc_n(wg, warp, e), m = m_base + acc_m(j, e);
                if (m < M && n < N) ws[(uint64_t)m * N + n] = acc[4 * j + e];
            }
        // The last block of the tile to arrive sums the splits in order (w4_gemm.cuh's epilogue).
        __threadfence();
        __syncthreads();
        __shared__ uint32_t is_last;
        if (threadIdx.x == 0) {
            uint32_t *ctr = p.counters + blockIdx.y * gridDim.x + blockIdx.x;
            const uint32_t prev = atomicAdd(ctr, 1u);
            is_last = prev == p.splits - 1;
            if (is_last) *ctr = 0;
        }
        __syncthreads();
        if (!is_last) return;
        __threadfence();
#pragma unroll
        for (int j = 0; j < BM / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const uint32_t n = n_base + acc_n(wg, warp, e), m = m_base + acc_m(j, e);
                if (m < M && n < N) {
                    float v = 0.0f;
                    for (uint32_t z = 0; z < p.splits; ++z)
                        v = __fadd_rn(v, __ldcg(p.workspace + ((uint64_t)z * M + m) * N + n));
                    w4::store_out(p, m, n, v, alpha);
                }
            }
        return;
    }
#pragma unroll
    for (int j = 0; j < BM / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const uint32_t n = n_base + acc_n(wg, warp, e), m = m_base + acc_m(j, e);
            if (m < M && n < N) w4::store_out(p, m, n, acc[4 * j + e], alpha);
        }
}

template <int BM, bool BF16>
__device__ __forceinline__ void gemm(const nvfp4_gemm_params &p) {
    using L = SmemLayout<BM>;
    extern __shared__ uint8_t smem_raw[];
    uint8_t *smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
    uint8_t *act = smem + L::kAct;

    const uint32_t wg = threadIdx.x >> 7, i = threadIdx.x & 127;
    const uint32_t n_base = blockIdx.x * kBlockN, m_base = blockIdx.y * BM;
    const uint32_t tiles = p.k / kTileK;
    const uint32_t t_begin = blockIdx.z * p.steps_per_split * 2;
    const uint32_t t_end = min(tiles, t_begin + p.steps_per_split * 2);

    float acc[BM / 2];
#pragma unroll
    for (int x = 0; x < BM / 2; ++x) acc[x] = 0.0f;

    // Prologue: group g (g < kWAhead) holds W's tile t_begin + g and, for g < kAAhead, A's.
#pragma unroll
    for (int g = 0; g < kWAhead; ++g) {
        if (t_begin + g < t_end) {
            load_w(p, smem, n_base, t_begin + g, L::kCodes, L::kScales);
            if (g < kAAhead) load_a<BM>(p, act, m_base, t_begin + g);
        }
        cp_async_commit();
    }

    for (uint32_t kt = t_begin; kt < t_end; ++kt) {
        // A's tile kt was issued kAAhead - 1 groups before the newest (W's earlier still).
        cp_async_wait<kAAhead - 1>();
        wg::fence_proxy_async();
        __syncthreads();  // tile kt is in shared memory; every wgmma of tile kt - 2 has completed
        if (kt + kWAhead < t_end) load_w(p, smem, n_base, kt + kWAhead, L::kCodes, L::kScales);
        if (kt + kAAhead < t_end) load_a<BM>(p, act, m_base, kt + kAAhead);
        cp_async_commit();

        const uint32_t wslot = kt % kWSlots;
        uint8_t *decoded = smem + L::kDecoded + (kt & 1) * (kBlockN * kRowBytes);
        decode<BF16>(smem + L::kCodes + wslot * (kBlockN * kCodeBytes), smem + L::kScales + wslot * (kBlockN * 4),
                     decoded, wg, i);
        wg::fence_proxy_async();
        asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");  // this warpgroup's 64 rows written

        const uint32_t a_base = smem_addr(decoded + wg * (64 * kRowBytes));
        const uint32_t b_base = smem_addr(act + (kt % kASlots) * (BM * kRowBytes));
        wg::fence();
#pragma unroll
        for (int kk = 0; kk < kTileK / 16; ++kk)
            wg::wgmma_ss<BM, BF16>(acc, wg::smem_desc(a_base + 32 * kk), wg::smem_desc(b_base + 32 * kk), 1);
        wg::commit();
        wg::wait<1>();
    }
    wg::wait<0>();
    cp_async_wait<0>();

    epilogue<BM, BF16>(p, acc, n_base, m_base);
}

#endif  // NVFP4_WGMMA

}  // namespace sm90

#if NVFP4_WGMMA
#define NVFP4_SM90_BODY(BM, BF16) sm90::gemm<BM, BF16>(p)
#else
#define NVFP4_SM90_BODY(BM, BF16) __trap()
#endif

// One kernel per activation type and BM. __launch_bounds__(256, 1): the large tiles hold BM / 2 f32
// accumulators per thread.
#define NVFP4_SM90_KERNEL(NAME, BM, BF16)                                                               \
    extern "C" __global__ void __launch_bounds__(sm90::kThreads, 1) NAME(nvfp4_gemm_params p) {         \
        NVFP4_SM90_BODY(BM, BF16);                                                                      \
    }

NVFP4_SM90_KERNEL(nvfp4_gemm_w4a16_sm90_bf16_m64, 64, true)
NVFP4_SM90_KERNEL(nvfp4_gemm_w4a16_sm90_bf16_m128, 128, true)
NVFP4_SM90_KERNEL(nvfp4_gemm_w4a16_sm90_bf16_m256, 256, true)
NVFP4_SM90_KERNEL(nvfp4_gemm_w4a16_sm90_f16_m64, 64, false)
NVFP4_SM90_KERNEL(nvfp4_gemm_w4a16_sm90_f16_m128, 128, false)
NVFP4_SM90_KERNEL(nvfp4_gemm_w4a16_sm90_f16_m256, 256, false)
