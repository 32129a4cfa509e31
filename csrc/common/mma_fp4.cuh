// mma_fp4.cuh: the one wrapper of the Blackwell sm_120 block-scaled FP4 tensor-core instruction
//
//   mma.sync.aligned.kind::mxf4nvf4.block_scale.scale_vec::4X.m16n8k64.row.col.f32.e2m1.e2m1.f32.ue4m3
//       {d0..d3}, {a0..a3}, {b0,b1}, {c0..c3}, sfa, {0, TID_A}, sfb, {0, TID_B}
//
// (PTX ISA 8.7+, §9.7.14 "mma", §9.7.14.3 "Block Scaling for mma.sync", §9.7.14.5.11 "Matrix Fragments
// for mma.m16n8k64"; shared/reference/sm120-mma.md), D = (A·SFA)(B·SFB) + C for a 16x64 A, a 64x8 B and
// one UE4M3 scale per 16 K-elements (NVFP4).
//
// Three builds of the same call:
//   * sm_120a / sm_120f / sm_121a (NVFP4_MMA_NATIVE): the instruction itself (SASS
//     OMMA.SF.16864.F32.E2M1.E2M1.UE4M3.4X; tools/check-sass.sh checks it is there);
//   * any other target compiled with -DNVFP4_MMA_EMULATION=1 (build.rs sets it for sm_90a):
//     nvfp4_mma_emulated, which returns in every lane's registers what the instruction is documented to
//     return, from the same fragments, with warp shuffles and integer fixed-point arithmetic;
//   * otherwise NVFP4_MMA_AVAILABLE is 0 and kernels that need the instruction compile to a trap (the
//     host refuses to launch them: Error::UnsupportedArch).
//
// Fragment layouts (the CPU twin is src/reference/mma.rs: a_element, b_element, c_element, sfa_lane,
// sfb_lane; tests/gpu/gemm_fp4.rs replays the recorded vectors through them). g = lane / 4, t = lane % 4;
// a register holds 8 E2M1 nibbles, nibble j at bits 4j..4j+3 (the packed NVFP4 byte order, element 2i in
// the low nibble):
//   A 16x64, a0..a3: row g + 8*(r & 1), k = 8t + j + 32*(r >> 1)
//   B 64x8,  b0..b1: k = 8t + j + 32*r, column g
//   C/D 16x8, c0..c3: row g + 8*(i >> 1), column 2t + (i & 1)
//   scales (4X): byte q of the register scales K group q (k in 16q..16q+15); row m of A reads the
//   register of lane 4*(m % 8) + 2*TID_A + m/8, column n of B the one of lane 4n + TID_B; other lanes'
//   scale registers are ignored. TID_A is 0..1, TID_B 0..3 (ptxas rejects others).
//
// Arithmetic (sm120-mma.md §6, MMA-Sim arXiv:2511.10909; src/reference/mma.rs says it in full): exact
// 16-element group sums times exact scale products and C, aligned to the largest exponent with truncation
// at 35 fractional bits, summed exactly, rounded toward zero to f32. The emulation uses the integer form
// of src/reference/mma.rs: E2M1 doubled (-12..12), P4 = Σ(2a)(2b) per group, G = P4·ma·mb (scales as
// ma/8 · 2^ea), terms in units of 2^(E-35) in an int64.
#ifndef NVFP4_COMMON_MMA_FP4_CUH
#define NVFP4_COMMON_MMA_FP4_CUH

#include <stdint.h>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FAMILY_SPECIFIC__) && \
    __CUDA_ARCH_FAMILY_SPECIFIC__ >= 1200 && __CUDA_ARCH_FAMILY_SPECIFIC__ < 1300
#define NVFP4_MMA_NATIVE 1
#define NVFP4_MMA_AVAILABLE 1
#elif defined(__CUDA_ARCH__) && defined(NVFP4_MMA_EMULATION) && __CUDA_ARCH__ >= 800
#define NVFP4_MMA_NATIVE 0
#define NVFP4_MMA_AVAILABLE 1
#else
#define NVFP4_MMA_NATIVE 0
#define NVFP4_MMA_AVAILABLE 0
#endif

// Accumulator fragment of one m16n8 tile: d[i] is (row g + 8*(i >> 1), column 2t + (i & 1)).
struct nvfp4_mma_acc {
    float d[4];
};

#if NVFP4_MMA_AVAILABLE && !NVFP4_MMA_NATIVE

// Eight E2M1 codes (one register) as doubled values in two int8x4 words: `lo` holds nibbles 0..3,
// `hi` nibbles 4..7, byte order kept. prmt (__byte_perm) is a 16-entry byte table lookup when its
// selector nibbles are the codes: the magnitude comes from the table {0,1,2,3,4,6,8,12} indexed by
// code & 7, the negated table gives the negative, and a third prmt picks per byte by the sign bit
// (code bit 3 moved to selector bit 2, which chooses the second operand).
__device__ __forceinline__ void nvfp4_e2m1x8_doubled(uint32_t x, uint32_t &lo, uint32_t &hi) {
    const uint32_t POS_LO = 0x03020100u, POS_HI = 0x0C080604u;  // 0 1 2 3 | 4 6 8 12
    const uint32_t NEG_LO = 0xFDFEFF00u, NEG_HI = 0xF4F8FAFCu;  // negated, as int8
    const uint32_t s0 = x & 0x7777u, s1 = (x >> 16) & 0x7777u;
    const uint32_t p0 = __byte_perm(POS_LO, POS_HI, s0), n0 = __byte_perm(NEG_LO, NEG_HI, s0);
    const uint32_t p1 = __byte_perm(POS_LO, POS_HI, s1), n1 = __byte_perm(NEG_LO, NEG_HI, s1);
    lo = __byte_perm(p0, n0, 0x3210u | ((x >> 1) & 0x4444u));
    hi = __byte_perm(p1, n1, 0x3210u | ((x >> 17) & 0x4444u));
}

// Σ (2a)(2b) over the 8 elements of one A register and one B register.
__device__ __forceinline__ int nvfp4_dot8_doubled(uint32_t a, uint32_t b, int acc) {
    uint32_t alo, ahi, blo, bhi;
    nvfp4_e2m1x8_doubled(a, alo, ahi);
    nvfp4_e2m1x8_doubled(b, blo, bhi);
    return __dp4a((int)ahi, (int)bhi, __dp4a((int)alo, (int)blo, acc));
}

// A UE4M3 byte as (significand in eighths, exponent): sign ignored, subnormal at -6, zero at -126.
// Returns false for NaN (0x7F after the sign is dropped). reference::mma::ue4m3_parts.
__device__ __forceinline__ bool nvfp4_ue4m3_parts(uint32_t byte, int &sig, int &exp) {
    const uint32_t b = byte & 0x7Fu, e = b >> 3, m = b & 7u;
    sig = e == 0 ? (int)m : (int)(8u + m);
    exp = b == 0 ? -126 : (e == 0 ? -6 : (int)e - 7);
    return b != 0x7Fu;
}

// x · 2^shift truncated toward zero (reference::mma::shift_trunc).
__device__ __forceinline__ long long nvfp4_shift_trunc(long long x, int shift) {
    if (shift >= 0) return x << shift;
    if (shift <= -63) return 0;
    const unsigned long long mag = (unsigned long long)(x < 0 ? -x : x) >> (-shift);
    return x < 0 ? -(long long)mag : (long long)mag;
}

// sum · 2^exp rounded toward zero to f32 bits; +0.0 for a zero (or vanishing) magnitude, ±Inf above
// f32's range (reference::mma::f32_rz_bits).
__device__ __forceinline__ uint32_t nvfp4_f32_rz_bits(long long sum, int exp) {
    if (sum == 0) return 0u;
    const uint32_t sign = sum < 0 ? 0x80000000u : 0u;
    const unsigned long long mag = (unsigned long long)(sum < 0 ? -sum : sum);
    const int p = 63 - __clzll((long long)mag);
    const int unbiased = p + exp;
    if (unbiased > 127) return sign | 0x7F800000u;
    if (unbiased >= -126) {
        const unsigned long long sig = p >= 23 ? mag >> (p - 23) : mag << (23 - p);
        return sign | ((uint32_t)(unbiased + 127) << 23) | ((uint32_t)sig & 0x7FFFFFu);
    }
    const int shift = exp + 149;
    const unsigned long long units = shift >= 0 ? mag << shift : (shift <= -64 ? 0ull : mag >> (-shift));
    return units == 0 ? 0u : (sign | (uint32_t)units);
}

// One output from its group sums, scale words (byte q = group q) and C (reference::mma::combine).
__device__ __forceinline__ float nvfp4_mma_combine(const int p4[4], uint32_t sfa, uint32_t sfb, float c) {
    const uint32_t cb = __float_as_uint(c);
    const int c_field = (int)((cb >> 23) & 0xFFu);
    const long long c_mant = (long long)(cb & 0x7FFFFFu);
    bool nan = c_field == 0xFF && c_mant != 0;
    long long g[4];
    int e[4];
    int e_max = c_field == 0 ? -126 : c_field - 127;
    const long long c_sig = c_field == 0 ? c_mant : (c_mant | (1ll << 23));
    const int c_exp = e_max;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
        int ma, ea, mb, eb;
        nan |= !nvfp4_ue4m3_parts((sfa >> (8 * q)) & 0xFFu, ma, ea);
        nan |= !nvfp4_ue4m3_parts((sfb >> (8 * q)) & 0xFFu, mb, eb);
        g[q] = (long long)p4[q] * ma * mb;
        e[q] = ea + eb;
        e_max = max(e_max, e[q]);
    }
    if (nan) return __uint_as_float(0x7FFFFFFFu);
    if (c_field == 0xFF) return c;  // ±Inf: outside the model, as on the CPU
    long long sum = nvfp4_shift_trunc(cb >> 31 ? -c_sig : c_sig, 12 - (e_max - c_exp));
#pragma unroll
    for (int q = 0; q < 4; ++q) sum += nvfp4_shift_trunc(g[q], 27 - (e_max - e[q]));
    return __uint_as_float(nvfp4_f32_rz_bits(sum, e_max - 35));
}

// The emulated instruction. Not inlined: a GEMM issues it from many unrolled call sites, and one out-of-
// line copy keeps the sm_90a kernel's code size, registers and compile time those of the native one.
// Every lane must call it (it shuffles across the whole warp), with warp-uniform selectors.
//
// Lane (g, t) computes its own four outputs. Row g + 8h of A lives in registers a[h] (k 8t'..8t'+7)
// and a[h + 2] (k 32 + 8t'..) of the four lanes 4g + t' of its own quad; column n of B in b[0], b[1]
// of lanes 4n + t'. K group q is t' in {2(q&1), 2(q&1)+1} of register half q >> 1.
__device__ __noinline__ nvfp4_mma_acc nvfp4_mma_emulated(uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                        uint32_t b0, uint32_t b1, nvfp4_mma_acc c,
                                                        uint32_t sfa, uint32_t sfb, int tid_a, int tid_b) {
    const unsigned full = 0xFFFFFFFFu;
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    nvfp4_mma_acc d;
#pragma unroll 1
    for (int i = 0; i < 4; ++i) {
        const int h = i >> 1, n = 2 * t + (i & 1);
        // What this lane sends is chosen by the warp-uniform i, so every receiver gets the register
        // half it asks for.
        const uint32_t a_lo = h ? a1 : a0, a_hi = h ? a3 : a2;
        const uint32_t row_sf = __shfl_sync(full, sfa, 4 * g + 2 * tid_a + h);
        const uint32_t col_sf = __shfl_sync(full, sfb, 4 * n + tid_b);
        int p4[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            int acc = 0;
#pragma unroll
            for (int u = 0; u < 2; ++u) {
                const int tt = 2 * (q & 1) + u;
                const uint32_t av = __shfl_sync(full, q >> 1 ? a_hi : a_lo, 4 * g + tt);
                const uint32_t bv = __shfl_sync(full, q >> 1 ? b1 : b0, 4 * n + tt);
                acc = nvfp4_dot8_doubled(av, bv, acc);
            }
            p4[q] = acc;
        }
        const float ci = i == 0 ? c.d[0] : i == 1 ? c.d[1] : i == 2 ? c.d[2] : c.d[3];
        const float r = nvfp4_mma_combine(p4, row_sf, col_sf, ci);
        d.d[0] = i == 0 ? r : d.d[0];
        d.d[1] = i == 1 ? r : d.d[1];
        d.d[2] = i == 2 ? r : d.d[2];
        d.d[3] = i == 3 ? r : d.d[3];
    }
    return d;
}

#endif  // emulation

#if NVFP4_MMA_AVAILABLE
// D = A·B + C of one m16n8k64 block-scaled NVFP4 tile, in place on `acc`. TID_A/TID_B are the
// instruction's thread-id selectors (which lanes' scale registers are read; immediates in the PTX).
template <int TID_A = 0, int TID_B = 0>
__device__ __forceinline__ void nvfp4_mma_m16n8k64(nvfp4_mma_acc &acc, uint32_t a0, uint32_t a1, uint32_t a2,
                                                   uint32_t a3, uint32_t b0, uint32_t b1, uint32_t sfa,
                                                   uint32_t sfb) {
    static_assert(TID_A >= 0 && TID_A <= 1 && TID_B >= 0 && TID_B <= 3, "thread-id selectors");
#if NVFP4_MMA_NATIVE
    asm volatile(
        "mma.sync.aligned.kind::mxf4nvf4.block_scale.scale_vec::4X.m16n8k64.row.col.f32.e2m1.e2m1.f32.ue4m3 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3}, %10, {%12, %13}, %11, {%12, %14};\n"
        : "+f"(acc.d[0]), "+f"(acc.d[1]), "+f"(acc.d[2]), "+f"(acc.d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "r"(sfa), "r"(sfb), "h"((uint16_t)0),
          "h"((uint16_t)TID_A), "h"((uint16_t)TID_B));
#else
    acc = nvfp4_mma_emulated(a0, a1, a2, a3, b0, b1, acc, sfa, sfb, TID_A, TID_B);
#endif
}
#endif

#endif  // NVFP4_COMMON_MMA_FP4_CUH
