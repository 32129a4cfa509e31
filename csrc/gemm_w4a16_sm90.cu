// gemm_w4a16_sm90.cu: W4A16 NVFP4 GEMM on the Hopper warpgroup tensor cores (wgmma, sm_90a), for M from
// a few dozen rows up:  out[M, N] = alpha * A[M, K] * W[N, K]^T (+ bias[N]), alpha = W's global scale.
//
// The product is computed transposed, D[N, M] = W * A^T, so the weights are wgmma's A operand (64 rows
// of N per warpgroup, the instruction's fixed M) and the activations its B operand, whose width BM (64,
// 128 or 256 rows of M per block) is the instruction's N: a small M wastes no tensor-core rows.
//
// A block is two consumer warpgroups (256 threads) and a producer warp (a whole producer warpgroup for
// BM = 256, see threads()); it owns 128 rows of W and BM rows of A, and walks K in tiles of 64 (one
// 128-byte swizzle atom of 16-bit elements) through a ring of slots (Ring<BM>: 6, 8 or 5, as deep as
// shared memory allows), each holding one tile of A (BM rows x 128 bytes, swizzled), W's codes (128 x
// 32 bytes) and W's scales (128 x 4 bytes).
//   * The producer warp issues every cp.async: tile t goes to slot t % S as soon as both warpgroups have
//     released that slot's previous tile (its "empty" mbarrier), and cp.async.mbarrier.arrive signals
//     the slot's "full" mbarrier when the copies land. W's codes ask L2 for whole 128-byte lines, so the
//     next three tiles' codes of a row come from L2. Only the producer has copies in flight: the
//     consumers' fence.proxy.async (a MEMBAR.ALL.CTA in SASS, which waits for the executing thread's
//     outstanding memory operations, cp.async included) then costs them nothing. (The first version
//     issued the copies from the consumers, and each fence drained the whole pipeline: 95 us at 8192²,
//     M = 64, on the H100.)
//   * Each warpgroup waits for the slot, decodes its own 64 rows into a bf16/f16 tile in shared memory
//     (double-buffered per warpgroup), two threads per row, 32 weights each: the exact register decode
//     of dequant.cuh (E2M1 and E4M3 to a 16-bit float times a power of two that alpha takes back), the
//     pairs put back in K order with PRMT, written with the 128-byte swizzle.
//   * It then issues 4 wgmma m64nBMk16 on that tile and the slot's A, leaves them in flight while the
//     next tile is decoded (wait_group 1), and releases the previous tile's slot.
// Ordering: the decoded buffer a tile writes was read by the same warpgroup's wgmmas two tiles before,
// complete after the previous tile's wait_group(1); a slot is refilled only after both warpgroups'
// wgmmas on it completed. The decoded rows (st.shared) and A's tile (cp.async) are generic-proxy writes
// that wgmma reads through the async proxy: each consumer thread fences (fence.proxy.async) after its
// writes and after the full barrier made A's visible, before the warpgroup barrier.
//
// Numerics: the decoded weights and the activations are exact 16-bit values, their products exact in
// f32; the sum runs in the tensor core's f32 accumulation, then alpha and bias are one f32 rounding each
// and the output one rounding (w4_gemm.cuh's store_out), as in the other W4A16 kernels: bit for bit
// equal to them on exact-sum inputs, within the f32 bound otherwise.
//
// Contract (checked by the host, src/cuda/launch_gemm.rs): K a multiple of 64 (each 64-wide tile is
// whole, and the 4 scale bytes of a row and tile one aligned word); grid (ceil(N / 128), ceil(M / BM),
// splits), split z owning K steps [z * steps_per_split, ...) of 128 (two tiles); threads<BM>() threads;
// the dynamic shared memory of SmemLayout<BM>. Only the sm_90a cubin has the kernels; elsewhere they trap
// and the host never launches them.
//
// Registers (ptxas, CUDA 13.0, sm_90a), no spills: 92 (BM = 64, 2 blocks per SM), 118 (128), 168 at
// entry (256; setmaxnreg then gives the consumers 224 and the producer warpgroup 64).
#include "common/cp_async.cuh"
#include "common/w4_gemm.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define NVFP4_WGMMA 1
#include "common/wgmma.cuh"
#else
#define NVFP4_WGMMA 0
#endif

namespace sm90 {

constexpr int kConsumers = 256;  // two warpgroups: decode and wgmma
// And one producer warp that makes every global -> shared copy. With BM = 256 (128 accumulators per
// consumer thread) the producer is a whole warpgroup, so that setmaxnreg can move registers from it to
// the consumers: 9 warps would cap every thread at 168 registers (a scheduler's 16K for 3 warps).
template <int BM>
constexpr int threads() {
    return BM == 256 ? kConsumers + 128 : kConsumers + 32;
}
constexpr int kBlockN = 128;                // rows of W per block: 64 per warpgroup
constexpr int kTileK = 64;                  // K elements per tile: one 128-byte row of 16-bit values
constexpr int kRowBytes = 128;              // a decoded or activation row of one tile
constexpr int kCodeBytes = 32;              // a row's codes for one tile
static_assert(kTileK * 2 == kRowBytes && kTileK / 2 == kCodeBytes, "a tile row: 64 16-bit values, 64 codes");

// The ring depth per M tile: as deep as 2 blocks per SM (BM = 64) or 1 (above) fit in 227 KiB.
template <int BM>
struct Ring {
    static constexpr int kSlots = BM == 64 ? 6 : BM == 128 ? 8 : 5;
};

// Byte offsets in the (1024-aligned) dynamic shared memory. A slot holds one tile: A's rows (swizzled),
// W's codes and W's scales.
template <int BM>
struct SmemLayout {
    static constexpr int kSlots = Ring<BM>::kSlots;
    static constexpr int kActBytes = BM * kRowBytes, kCodesBytes = kBlockN * kCodeBytes, kScaleBytes = kBlockN * 4;
    static constexpr int kSlotBytes = (kActBytes + kCodesBytes + kScaleBytes + 1023) / 1024 * 1024;
    static constexpr int kDecoded = 0;                               // 2 x [128 rows][128 B]
    static constexpr int kSlot0 = kDecoded + 2 * kBlockN * kRowBytes;  // kSlots x slot (each 1024-aligned)
    static constexpr int kBars = kSlot0 + kSlots * kSlotBytes;         // full[kSlots], empty[kSlots]
    static constexpr int kBytes = kBars + 2 * 8 * kSlots;
    static constexpr int kAlloc = kBytes + 1024;  // room to align the base
    static_assert(kSlotBytes % 1024 == 0, "slots keep the 1024-byte alignment of the swizzled tiles");
};

// The host launches with nvfp4.h's figures; a layout change that forgets them fails here.
static_assert(threads<64>() == NVFP4_SM90_THREADS_M64 && threads<128>() == NVFP4_SM90_THREADS_M128 &&
                  threads<256>() == NVFP4_SM90_THREADS_M256,
              "nvfp4.h's nvfp4_sm90_launch threads");
static_assert(SmemLayout<64>::kAlloc == NVFP4_SM90_SMEM_M64 && SmemLayout<128>::kAlloc == NVFP4_SM90_SMEM_M128 &&
                  SmemLayout<256>::kAlloc == NVFP4_SM90_SMEM_M256,
              "nvfp4.h's nvfp4_sm90_launch shared memory");

#if NVFP4_WGMMA

// Offset of 16-byte chunk c of row r in a 128-byte-swizzled tile.
__device__ __forceinline__ uint32_t swz(uint32_t r, uint32_t c) { return r * kRowBytes + ((c ^ (r & 7)) << 4); }

// The producer warp's copies of tile kt into `slot` (lane 0..31): W's codes (with L2 fetching whole
// 128-byte lines, so the next three tiles' codes of a row come from L2), W's scales, A's rows swizzled.
// Rows past N or M are zero-filled (nothing read).
template <int BM>
__device__ __forceinline__ void load_tile(const nvfp4_gemm_params &p, uint8_t *slot, uint32_t n_base,
                                          uint32_t m_base, uint32_t kt, uint32_t lane) {
    using L = SmemLayout<BM>;
    uint8_t *act = slot, *codes = slot + L::kActBytes, *scales = codes + L::kCodesBytes;
#pragma unroll
    for (int it = 0; it < kBlockN * 2 / 32; ++it) {
        const uint32_t idx = lane + 32 * it, row = idx >> 1, half = idx & 1;
        const bool ok = n_base + row < p.n;
        const uint64_t grow = ok ? n_base + row : 0;  // a valid address even when nothing is read
        cp_async<16, true>(codes + row * kCodeBytes + 16 * half,
                           p.w_codes + grow * (p.k / 2) + kt * (kTileK / 2) + 16 * half, ok);
    }
#pragma unroll
    for (int it = 0; it < kBlockN / 32; ++it) {
        const uint32_t row = lane + 32 * it;
        const bool ok = n_base + row < p.n;
        const uint64_t grow = ok ? n_base + row : 0;
        cp_async<4>(scales + row * 4, p.w_scales + grow * (p.k / 16) + kt * 4, ok);
    }
    const uint16_t *a = reinterpret_cast<const uint16_t *>(p.a);
#pragma unroll 4
    for (int it = 0; it < BM * 8 / 32; ++it) {
        const uint32_t idx = lane + 32 * it, m = idx >> 3, c = idx & 7;
        const bool ok = m_base + m < p.m;
        const uint64_t row = ok ? m_base + m : 0;
        cp_async<16>(act + swz(m, c), a + row * p.k + kt * kTileK + 8 * c, ok);
    }
}

// This thread's share of the decode of a tile: row r of its warpgroup's 64, elements 32h..32h+31.
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

// Accumulator element e (0..3) of n8 block j: its row of W within the block, and its row of M.
__device__ __forceinline__ uint32_t acc_n(uint32_t wg, uint32_t warp, int e) {
    return wg * 64 + 16 * warp + ((threadIdx.x & 31) >> 2) + 8 * (e >> 1);
}
__device__ __forceinline__ uint32_t acc_m(int j, int e) { return 8 * j + 2 * (threadIdx.x & 3) + (e & 1); }

// The consumers' epilogue (the producer warp has left): alpha, bias, split-K as in w4_gemm.cuh, with a
// named barrier over the 256 consumer threads in place of __syncthreads.
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
        // The last block of the tile to arrive sums the splits in order.
        __threadfence();
        asm volatile("bar.sync 3, %0;\n" ::"n"(kConsumers) : "memory");
        __shared__ uint32_t is_last;
        if (threadIdx.x == 0) {
            uint32_t *ctr = p.counters + blockIdx.y * gridDim.x + blockIdx.x;
            const uint32_t prev = atomicAdd(ctr, 1u);
            is_last = prev == p.splits - 1;
            if (is_last) *ctr = 0;
        }
        asm volatile("bar.sync 3, %0;\n" ::"n"(kConsumers) : "memory");
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
__device__ __forceinline__ void consume(const nvfp4_gemm_params &p, uint8_t *smem, uint32_t full, uint32_t empty,
                                        uint32_t n_base, uint32_t m_base, uint32_t t_begin, uint32_t t_end);

template <int BM, bool BF16>
__device__ __forceinline__ void gemm(const nvfp4_gemm_params &p) {
    using L = SmemLayout<BM>;
    constexpr int S = L::kSlots;
    extern __shared__ uint8_t smem_raw[];
    uint8_t *smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
    const uint32_t full = smem_addr(smem + L::kBars), empty = full + 8 * S;

    const uint32_t n_base = blockIdx.x * kBlockN, m_base = blockIdx.y * BM;
    const uint32_t tiles = p.k / kTileK;
    const uint32_t t_begin = blockIdx.z * p.steps_per_split * 2;
    const uint32_t t_end = min(tiles, t_begin + p.steps_per_split * 2);

    if (threadIdx.x == 0) {
        for (int s = 0; s < S; ++s) {
            wg::mbar_init(full + 8 * s, 32);  // the producer's 32 lanes, each once its copies land
            wg::mbar_init(empty + 8 * s, 2);  // one thread per warpgroup, once its wgmmas are done
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    if (threadIdx.x >= kConsumers) {
        // Producer: fill slot t % S with tile t once both warpgroups have released its last use. Its
        // copies never wait on anything but that barrier, so up to S tiles are in flight.
        if constexpr (BM == 256) asm volatile("setmaxnreg.dec.sync.aligned.u32 64;\n" ::: "memory");
        if (threadIdx.x < kConsumers + 32) {
            const uint32_t lane = threadIdx.x & 31;
            for (uint32_t kt = t_begin, it = 0; kt < t_end; ++kt, ++it) {
                const uint32_t s = it % S, round = it / S;
                if (round > 0) wg::mbar_wait(empty + 8 * s, (round - 1) & 1);
                load_tile<BM>(p, smem + L::kSlot0 + s * L::kSlotBytes, n_base, m_base, kt, lane);
                wg::mbar_arrive_cp_async(full + 8 * s);
            }
            cp_async_wait<0>();
        }
    } else {
        if constexpr (BM == 256) asm volatile("setmaxnreg.inc.sync.aligned.u32 224;\n" ::: "memory");
        consume<BM, BF16>(p, smem, full, empty, n_base, m_base, t_begin, t_end);
    }
}

// The two consumer warpgroups' main loop and epilogue.
template <int BM, bool BF16>
__device__ __forceinline__ void consume(const nvfp4_gemm_params &p, uint8_t *smem, uint32_t full, uint32_t empty,
                                        uint32_t n_base, uint32_t m_base, uint32_t t_begin, uint32_t t_end) {
    using L = SmemLayout<BM>;
    constexpr int S = L::kSlots;

    const uint32_t wg = threadIdx.x >> 7, i = threadIdx.x & 127;
    float acc[BM / 2];
#pragma unroll
    for (int x = 0; x < BM / 2; ++x) acc[x] = 0.0f;

    for (uint32_t kt = t_begin, it = 0; kt < t_end; ++kt, ++it) {
        const uint32_t s = it % S;
        uint8_t *slot = smem + L::kSlot0 + s * L::kSlotBytes;
        wg::mbar_wait(full + 8 * s, (it / S) & 1);
        // The decoded buffer it & 1 was last read by this warpgroup's wgmmas of tile it - 2, complete
        // since the wait_group(1) of tile it - 1.
        uint8_t *decoded = smem + L::kDecoded + (it & 1) * (kBlockN * kRowBytes);
        decode<BF16>(slot + L::kActBytes, slot + L::kActBytes + L::kCodesBytes, decoded, wg, i);
        // The decoded rows (st.shared) and A's tile (cp.async) are generic-proxy writes that wgmma
        // reads through the async proxy.
        wg::fence_proxy_async();
        asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");  // the warpgroup's 64 rows written

        const uint32_t a_base = smem_addr(decoded + wg * (64 * kRowBytes));
        const uint32_t b_base = smem_addr(slot);
        wg::fence();
#pragma unroll
        for (int kk = 0; kk < kTileK / 16; ++kk)
            wg::wgmma_ss<BM, BF16>(acc, wg::smem_desc(a_base + 32 * kk), wg::smem_desc(b_base + 32 * kk), 1);
        wg::commit();
        wg::wait<1>();
        // Tile it - 1's wgmmas are done: its slot can be refilled.
        if (it > 0 && i == 0) wg::mbar_arrive(empty + 8 * ((it - 1) % S));
    }
    wg::wait<0>();

    epilogue<BM, BF16>(p, acc, n_base, m_base);
}

#endif  // NVFP4_WGMMA

}  // namespace sm90

#if NVFP4_WGMMA
#define NVFP4_SM90_BODY(BM, BF16) sm90::gemm<BM, BF16>(p)
#else
#define NVFP4_SM90_BODY(BM, BF16) __trap()
#endif

// One kernel per activation type and BM. __launch_bounds__(288, 1): the large tiles hold BM / 2 f32
// accumulators per thread.
#define NVFP4_SM90_KERNEL(NAME, BM, BF16)                                                               \
    extern "C" __global__ void __launch_bounds__(sm90::threads<BM>(), 1) NAME(nvfp4_gemm_params p) {   \
        NVFP4_SM90_BODY(BM, BF16);                                                                      \
    }

NVFP4_SM90_KERNEL(nvfp4_gemm_w4a16_sm90_bf16_m64, 64, true)
NVFP4_SM90_KERNEL(nvfp4_gemm_w4a16_sm90_bf16_m128, 128, true)
NVFP4_SM90_KERNEL(nvfp4_gemm_w4a16_sm90_bf16_m256, 256, true)
NVFP4_SM90_KERNEL(nvfp4_gemm_w4a16_sm90_f16_m64, 64, false)
NVFP4_SM90_KERNEL(nvfp4_gemm_w4a16_sm90_f16_m128, 128, false)
NVFP4_SM90_KERNEL(nvfp4_gemm_w4a16_sm90_f16_m256, 256, false)
