// codecs.cuh: the scalar NVFP4 codecs and the 128x4 scale swizzle, bit-exact twins of src/format/.
//
// Each function names the CPU function it mirrors; the two must change together. Everything is
// __host__ __device__ so a plain C++ compiler can test these on the host (`g++ -x c++`): with no
// CUDA compiler the qualifiers expand to nothing and the arithmetic helpers below use plain operators.
//
// Rounding: every product and quotient is a separately rounded IEEE round-to-nearest-even operation.
// On the device that takes the __fmul_rn/__fdiv_rn intrinsics, which nvcc never contracts into an
// FMA nor replaces with a reciprocal; a contracted `a * b + c` or an approximate division would change
// bytes on a fraction of inputs, and the CPU reference is the specification.
#ifndef NVFP4_COMMON_CODECS_CUH
#define NVFP4_COMMON_CODECS_CUH

#include <stdint.h>

#include "nvfp4.h"

#ifndef __CUDACC__
#include <string.h>
#define __host__
#define __device__
#endif

#define NVFP4_HD __host__ __device__ inline

// ---- exact arithmetic and bit casts, the same on host and device ----

NVFP4_HD uint32_t nvfp4_f32_bits(float x) {
#ifdef __CUDA_ARCH__
    return __float_as_uint(x);
#else
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
#endif
}

NVFP4_HD float nvfp4_f32_from_bits(uint32_t u) {
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
#endif
}

NVFP4_HD float nvfp4_mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    return a * b;  // a lone product: nothing to contract with
#endif
}

NVFP4_HD float nvfp4_div_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fdiv_rn(a, b);
#else
    return a / b;
#endif
}

NVFP4_HD float nvfp4_add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}

// NaN and +-Inf: the exponent field is all ones.
NVFP4_HD bool nvfp4_is_nonfinite(float x) { return (nvfp4_f32_bits(x) & 0x7F800000u) == 0x7F800000u; }

NVFP4_HD bool nvfp4_is_nan(float x) { return (nvfp4_f32_bits(x) & 0x7FFFFFFFu) > 0x7F800000u; }

// |x| if x is finite, else 0: the contribution of x to an amax or a block max (NaN/Inf never count).
// Mirrors the `a <= f32::MAX` test of quant::amax and quant's quantize_block.
NVFP4_HD float nvfp4_finite_abs(float x) {
    const uint32_t a = nvfp4_f32_bits(x) & 0x7FFFFFFFu;
    return a < 0x7F800000u ? nvfp4_f32_from_bits(a) : 0.0f;
}

// ---- E2M1 ----

// Mirrors format::e2m1::encode_f32(y, zero_sign): round to nearest even with saturation, as
// cvt.rn.satfinite.e2m1x2.f32 does. The thresholds are the midpoints between neighbouring E2M1
// values; a midpoint goes to the even code, hence `>` at 0.25, 1.25, 2.5, 5 (ties to codes 0, 2, 4, 6)
// and `>=` at 0.75, 1.75, 3.5 (ties to codes 2, 4, 6). Counting the thresholds passed is branch-free.
// NaN -> 0x7 (+6, the PTX rule "NaN results are converted to positive MAX_NORM"); +-Inf -> 0x7/0xF.
NVFP4_HD uint32_t nvfp4_e2m1_encode(float y, uint32_t zero_sign) {
    if (nvfp4_is_nan(y)) return 0x7u;
    const float a = nvfp4_f32_from_bits(nvfp4_f32_bits(y) & 0x7FFFFFFFu);
    const uint32_t mag = (uint32_t)(a > 0.25f) + (uint32_t)(a >= 0.75f) + (uint32_t)(a > 1.25f) +
                         (uint32_t)(a >= 1.75f) + (uint32_t)(a > 2.5f) + (uint32_t)(a >= 3.5f) +
                         (uint32_t)(a > 5.0f);
    // MODELOPT takes the sign from `y < 0` (ModelOpt's _cast_fp4), so only -0.0 differs from HARDWARE.
    const bool negative = zero_sign == NVFP4_ZERO_SIGN_HARDWARE ? (nvfp4_f32_bits(y) >> 31) != 0 : y < 0.0f;
    return negative ? (mag | 0x8u) : mag;
}

// Mirrors format::e2m1::decode_f32(code): low 4 bits `S EE M`, bias 1. For E > 0 the value is
// (1 + M/2) * 2^(E-1), i.e. f32 exponent field E - 1 + 127 and mantissa M in the top mantissa bit
// (bit 22); E = 0 is subnormal, M * 0.5, so code 1 is 0.5 (0x3F000000). Code 8 is -0.0.
NVFP4_HD float nvfp4_e2m1_decode(uint32_t code) {
    const uint32_t e = (code >> 1) & 3u, m = code & 1u;
    const uint32_t mag = e != 0 ? ((e + 126u) << 23) | (m << 22) : (m != 0 ? 0x3F000000u : 0u);
    return nvfp4_f32_from_bits(mag | ((code & 8u) << 28));
}

// ---- E4M3 ----

// Mirrors format::e4m3::encode_f32(x, overflow), with saturate = 1 for Overflow::SatFinite and 0 for
// Overflow::NonSaturating. Round to nearest even throughout.
//   SatFinite:     |x| > 448 and +-Inf -> +-448 (0x7E/0xFE); NaN of either sign -> 0x7F.
//   NonSaturating: |x| > 464 (the midpoint between 448 and the would-be 480, a tie that goes to even
//                  448) and +-Inf -> NaN with the sign kept (0x7F/0xFF); NaN keeps its sign.
NVFP4_HD uint32_t nvfp4_e4m3_encode(float x, uint32_t saturate) {
    const uint32_t bits = nvfp4_f32_bits(x);
    const uint32_t sign = (bits >> 24) & 0x80u;
    const uint32_t abits = bits & 0x7FFFFFFFu;
    if (abits > 0x7F800000u) return saturate ? 0x7Fu : (0x7Fu | sign);
    const float a = nvfp4_f32_from_bits(abits);
    if (saturate && a > 448.0f) return 0x7Eu | sign;
    if (!saturate && a > 464.0f) return 0x7Fu | sign;
    if (a < 0.015625f) {
        // Subnormal range, |x| < 2^-6: the value in units of 2^-9 is below 8. a * 512 is exact, and adding
        // 2^23 makes the f32 adder round that to an integer with ties to even (the only rounding step);
        // a result of 8 is the smallest normal, 0x08, as it should be.
        const float units = nvfp4_add_rn(nvfp4_add_rn(nvfp4_mul_rn(a, 512.0f), 8388608.0f), -8388608.0f);
        return (uint32_t)units | sign;
    }
    // Normal: keep 3 of the 23 mantissa bits. Adding 0x7FFFF (just under half of the 2^20 dropped
    // weight) plus the kept lowest bit rounds to nearest even; a mantissa carry moves into the exponent,
    // as it should. Then rebias the exponent from 127 to 7: subtract (127 - 7) << 3 = 960.
    const uint32_t rounded = (abits + 0x7FFFFu + ((abits >> 20) & 1u)) >> 20;
    return (rounded - (120u << 3)) | sign;
}

// Mirrors format::e4m3::decode_f32(b): `S EEEE MMM`, bias 7. E = 0 is subnormal M * 2^-9 (an exact
// product); otherwise the f32 exponent field is E - 7 + 127 and the 3 mantissa bits sit at bits 22..20.
// 0x7F/0xFF decode to the quiet NaN 0x7FC00000 with the byte's sign, the NaN the CPU table holds
// (f32::NAN, negated for 0xFF), so that a NaN scale propagates the same bits on both sides.
NVFP4_HD float nvfp4_e4m3_decode(uint32_t b) {
    const uint32_t sign = (b & 0x80u) << 24;
    const uint32_t e = (b >> 3) & 0xFu, m = b & 7u;
    if (e == 0xFu && m == 7u) return nvfp4_f32_from_bits(0x7FC00000u | sign);
    if (e == 0) return nvfp4_f32_from_bits(nvfp4_f32_bits(nvfp4_mul_rn((float)m, 0.001953125f)) | sign);
    return nvfp4_f32_from_bits(sign | ((e + 120u) << 23) | (m << 20));
}

// ---- one NVFP4 block ----

// The E4M3 block-scale byte of a block whose finite absolute maximum is bmax, under global scale s2.
// Mirrors the scale half of quant's quantize_block (ModelOpt's formula, nvfp4-format.md §0.5):
//   s = bmax / (6 * s2), both rounded; 0 or NaN (only 0/0, an all-zero block) -> 1.0; raised to 2^-9
//   when clamping; always capped at 448 (which also turns s = +Inf, from 6 * s2 == 0, into 448); then
//   E4M3 round to nearest even (s is never negative).
NVFP4_HD uint32_t nvfp4_scale_byte_of_quotient(float s, uint32_t clamp_scale);

NVFP4_HD uint32_t nvfp4_block_scale_byte(float bmax, float s2, uint32_t clamp_scale) {
    return nvfp4_scale_byte_of_quotient(nvfp4_div_rn(bmax, nvfp4_mul_rn(6.0f, s2)), clamp_scale);
}

// The scale byte given s = bmax / (6 * s2) already rounded (for kernels that divide their own way).
NVFP4_HD uint32_t nvfp4_scale_byte_of_quotient(float s, uint32_t clamp_scale) {
    if (s == 0.0f || nvfp4_is_nan(s)) s = 1.0f;
    // Without the clamp only the lower bound goes (exports before 2026-05); the upper bound stays, so no
    // scale byte is ever NaN (ModelOpt's formula would write 0x7F there; see QuantizeOptions::clamp_scale).
    if (clamp_scale) s = s < 0.001953125f ? 0.001953125f : s;
    s = s > 448.0f ? 448.0f : s;
    return nvfp4_e4m3_encode(s, 0);
}

// The code of element x in a block whose decode scale is d = e4m3(sf) * s2 (rounded). Mirrors the
// element half of quant's quantize_block: zeros skip the division, so a zero or NaN divisor cannot turn
// them into NaN, and keep their sign for the zero-sign rule.
NVFP4_HD uint32_t nvfp4_quantize_element(float x, float d, uint32_t zero_sign) {
    const float y = x == 0.0f ? x : nvfp4_div_rn(x, d);
    return nvfp4_e2m1_encode(y, zero_sign);
}

// ---- the 128x4 block-scale swizzle (nvfp4-format.md §0.6) ----

// Block-columns padded to whole 4-column tiles: format::scale_layout::padded_cols.
NVFP4_HD uint64_t nvfp4_swizzle_padded_cols(uint64_t block_cols) { return (block_cols + 3) / 4 * 4; }

// Rows padded to whole 128-row tiles: format::scale_layout::padded_rows.
NVFP4_HD uint64_t nvfp4_swizzle_padded_rows(uint64_t rows) { return (rows + 127) / 128 * 128; }

// Mirrors format::scale_layout::swizzled_offset(r, c, block_cols), given padded_cols = Cp. A 128x4 tile
// is 512 bytes viewed as [32 lines][4 row-groups][4 columns]: row r of the tile is 16-byte line r % 32,
// 4-byte slot r / 32, so the scales of rows r, r+32, r+64, r+96 are adjacent. Tiles are ordered with the
// K-tile index fastest: Cp/4 tiles of 512 bytes per 128 rows.
// I is the index type: uint64_t in general, uint32_t where the caller knows the padded tensor fits it
// (the quantize kernel's 32-bit walk), which halves the instructions.
template <typename I>
NVFP4_HD I nvfp4_swizzled_offset_t(I r, I c, I padded_cols) {
    return (r / 128) * (padded_cols / 4) * 512 + (c / 4) * 512 + (r % 32) * 16 + ((r % 128) / 32) * 4 + (c % 4);
}

NVFP4_HD uint64_t nvfp4_swizzled_offset(uint64_t r, uint64_t c, uint64_t padded_cols) {
    return nvfp4_swizzled_offset_t<uint64_t>(r, c, padded_cols);
}

#endif  // NVFP4_COMMON_CODECS_CUH
