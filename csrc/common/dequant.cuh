// dequant.cuh: NVFP4 -> f16/bf16 register decode for the tensor-core W4A16/W4A4 kernels, and the
// mma.sync wrapper they share (sm_80+).
//
// The decode is the "low exponent bits" trick (Marlin's FP4 dequant, vllm csrc/quantization/marlin/
// dequant.h): an E2M1 nibble `S E1 E0 M` placed so that E1 E0 are the two lowest exponent bits and M the
// top mantissa bit of a 16-bit float is that value times a fixed power of two, for the subnormal codes
// (E = 0) too, because the float's own subnormal rule has the same shape:
//   bf16 (bias 127, 7 mantissa bits): bits 15 | 8..7 | 6  ->  value = e2m1 * 2^-126
//   f16  (bias 15, 10 mantissa bits): bits 15 | 11..10 | 9 ->  value = e2m1 * 2^-14
// The power of two is folded into the block scale, which is built the same way from its E4M3 byte and
// then multiplied in once per pair (one HMUL2 for two weights). Every step is exact: e2m1 has 2
// significant bits and e4m3 4, so their product (6 bits) fits both 16-bit formats, and the range works
// out (see w4_scale_pair). The f32 global scale and the remaining power of two are applied to the f32
// accumulator in the epilogue (W4_ALPHA_BIAS).
//
// Pair order. A 32-bit word of codes holds 8 consecutive K elements, element i in bits 4i..4i+3 (the
// ModelOpt low-nibble-first packing). Its low and high halves hold nibbles (0..3) and (4..7) at the same
// offsets, so one shift/mask sequence yields the pair (i, i + 4) in one f16x2/bf16x2 register: pair i of
// a word is K elements (i, i + 4). The kernels feed those pairs to the MMA as if they were adjacent K
// elements; the activation fragments are permuted the same way (w4_act_pairs), so the dot product is
// unchanged (a sum does not depend on the order of its terms' positions along K).
#ifndef NVFP4_COMMON_DEQUANT_CUH
#define NVFP4_COMMON_DEQUANT_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

// Integer ops per pair: one shift (none for i = 3), and-mask, shift, and-or (LOP3): 4, so about 2 per
// weight, which keeps the INT32 pipe (64 lanes per Hopper SM) below the ~26 weights per clock per SM that
// HBM3 delivers at 4.5 bits a weight.
template <bool BF16>
__device__ __forceinline__ uint32_t w4_decode_pair(uint32_t q, int i) {
    const uint32_t qi = q << (12 - 4 * i);  // sign of element i at bit 15, of element i + 4 at bit 31
    if (BF16) return (qi & 0x80008000u) | ((qi >> 6) & 0x01C001C0u);
    return (qi & 0x80008000u) | ((qi >> 3) & 0x0E000E00u);
}

// The 16-bit float that multiplies a decoded pair: e4m3(byte) * 2^118 (bf16) or * 2^7 (f16), in both
// halves. Putting the byte's 7 magnitude bits at f32 bits 26..20 makes EEEE the four lowest exponent
// bits, so the f32 is e4m3 * 2^-120 for subnormal bytes too; one or two exact power-of-two products then
// move it into range: bf16 e2m1 * 2^-126 times e4m3 * 2^118 is (e2m1 * e4m3) * 2^-8, at least 2^-18 and
// at most 2688 * 2^-8, normal; f16 e2m1 * 2^-14 times e4m3 * 2^7 is (e2m1 * e4m3) * 2^-7, a multiple of
// 2^-17 (f16 subnormals are multiples of 2^-24, so still exact) and at most 21. The sign bit is kept.
template <bool BF16>
__device__ __forceinline__ uint32_t w4_scale_pair(uint32_t byte) {
    float f = __uint_as_float(((byte & 0x7Fu) << 20) | ((byte & 0x80u) << 24));
    f = __fmul_rn(f, 1.70141183e38f);  // 2^127: now e4m3 * 2^7
    if (BF16) {
        f = __fmul_rn(f, 2.59614843e33f);  // 2^111: now e4m3 * 2^118 (at most 448 * 2^118 < 2^127)
        const __nv_bfloat162 h = __float2bfloat162_rn(f);
        return *reinterpret_cast<const uint32_t *>(&h);
    }
    const __half2 h = __float2half2_rn(f);
    return *reinterpret_cast<const uint32_t *>(&h);
}

// The power of two the epilogue multiplies back: decoded weights are (e2m1 * e4m3) * 2^-W4_SHIFT.
template <bool BF16>
struct W4Shift {
    static constexpr float factor = BF16 ? 256.0f : 128.0f;
};

// pair * scale, exact (see above).
template <bool BF16>
__device__ __forceinline__ uint32_t w4_mul2(uint32_t pair, uint32_t scale) {
    uint32_t r;
    if (BF16) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        asm("mul.rn.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(pair), "r"(scale));
#else
        // sm_80 has no bf16 multiply: an FMA with -0.0 added is the same exact product (and keeps -0.0).
        asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(pair), "r"(scale), "r"(0x80008000u));
#endif
    } else {
        asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(pair), "r"(scale));
    }
    return r;
}

// Activation pairs in the weights' pair order: from 8 consecutive 16-bit activations (x0 = elements 0,1;
// x1 = 2,3; x2 = 4,5; x3 = 6,7) the pairs (0,4), (1,5), (2,6), (3,7), one PRMT each.
__device__ __forceinline__ void w4_act_pairs(const uint4 &x, uint32_t p[4]) {
    p[0] = __byte_perm(x.x, x.z, 0x5410);
    p[1] = __byte_perm(x.x, x.z, 0x7632);
    p[2] = __byte_perm(x.y, x.w, 0x5410);
    p[3] = __byte_perm(x.y, x.w, 0x7632);
}

// D = A * B + D, m16n8k16, f32 accumulators. Fragment layout (PTX ISA, "Matrix Fragments for
// mma.m16n8k16"), with g = lane / 4 and t = lane % 4:
//   a[0]: row g,   k 2t..2t+1     a[1]: row g+8, k 2t..2t+1
//   a[2]: row g,   k 2t+8..2t+9   a[3]: row g+8, k 2t+8..2t+9
//   b[0]: k 2t..2t+1, col g       b[1]: k 2t+8..2t+9, col g
//   d[0..1]: row g, cols 2t, 2t+1 d[2..3]: row g+8, cols 2t, 2t+1
template <bool BF16>
__device__ __forceinline__ void w4_mma(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    if (BF16) {
        asm(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}

// 16 bytes of weights read once: no L1 allocation, so the activations keep L1 to themselves.
__device__ __forceinline__ uint4 w4_load_stream16(const void *p) {
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

#endif  // NVFP4_COMMON_DEQUANT_CUH
