// quantize.cu: NVFP4 quantize, dequantize and scale-layout kernels; the CPU twins are quant::amax,
// quant::global_scale_from_amax, quant::quantize, quant::dequantize and format::scale_layout::convert,
// and the output bytes are identical (launch contracts in nvfp4.h).
//
// The kernels are streams over memory with little arithmetic (quantize's one IEEE division per
// element is the most), so the design goal is full-width coalesced memory traffic:
// - One thread per 16-element block (a "unit"): bf16/f16 input is 32 bytes = two 16-byte loads, f32 is
//   64 bytes = four; the 16 codes leave as one 8-byte store, the scale as one byte. A warp therefore
//   reads 1 or 2 KiB and writes 256 contiguous bytes of codes per step.
// - Grid-stride loops with 64-bit indices, so the host may cap the grid and tensors past 2^32 elements
//   work.
// - Correctness before speed: a unit that is not 16-byte aligned, or that straddles the logical end of
//   a row (cols < cols_padded), takes scalar loads.
//
// Register budget: at most 64 per thread, no spills on any target (build.rs warns and
// tools/check-sass.sh fails on a spill). 64 registers x 256 threads = 16384, so an SM's 65536 registers
// hold 4 blocks, 1024 threads: half the 2048-thread maximum, and with 32-64 bytes in flight per thread
// that is 32-64 KiB of loads per SM, more than the ~20 KiB that HBM3's bandwidth-latency product
// needs (3.35 TB/s x ~800 ns / 132 SMs). ptxas (CUDA 13.0) reports, sm_80 / sm_90a / sm_100a / sm_120f:
//   nvfp4_quantize 58 / 48 / 56 / 56, nvfp4_dequantize 40 / 40 / 40 / 40, nvfp4_amax 47 / 47 / 56 / 56,
//   nvfp4_scale_layout 26 / 26 / 26 / 26, nvfp4_global_scale 12 / 12 / 12 / 13; 0 bytes spilled.
// The quantize block kernel is bound by instruction issue (ncu, H100: time scales with the SM clock,
// DRAM 26-51%), so its history is one of instructions cut per 16-element unit:
// - 48 per element at first: a division each (reciprocal, five FMAs, a range check, a convergence
//   barrier) and 23 instructions of seven-comparison E2M1 encode. FastDiv (a multiply and two FMAs)
//   and the integer encode e2m1_mag, a compile-time dtype, a grid capped at 16 blocks per SM: 155 -> 91
//   us at 8192 x 8192 bf16 (blocks only), DRAM 45%.
// - A 6-instruction E2M1 encode, one comparison per sign under MODELOPT where d < 2, the global scale
//   derived in this kernel (no nvfp4_global_scale launch): 81 us, 134 us with the amax pass; ncu 419
//   warp instructions per unit.
// - A 32-bit walk where the padded tensor has fewer than 2^31 elements, the hardware E4M3 conversions
//   for the scale byte and its decode (sm_89+), the 16-bit block maximum over packed pairs (sm_86+) and
//   the launch-constant half of the fast-quotient range test hoisted: 344 warp instructions per unit
//   (ncu), 67.6 us blocks only (0.87 of the copy), 119.3 us with the amax pass (0.88); 28672 x 8192:
//   218.1 / 376.8 us (0.92 / 0.95). H100, 2026-12-07.
// dequantize ~2.5 TB/s (bf16 out). amax, with four 16-byte loads in flight per thread (full minus
// blocks-only time, memsets included): ~2.6 TB/s of input at 8192 x 8192 bf16, ~3.0 TB/s at 28672 x 8192.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "common/codecs.cuh"
#include "nvfp4.h"

// The params structs cross the FFI boundary by value: their sizes are the ABI (bindgen checks the
// same on the Rust side).
static_assert(sizeof(nvfp4_amax_params) == 40, "ABI");
static_assert(sizeof(nvfp4_global_scale_params) == 24, "ABI");
static_assert(sizeof(nvfp4_quantize_params) == 88, "ABI");
static_assert(sizeof(nvfp4_dequantize_params) == 56, "ABI");
static_assert(sizeof(nvfp4_scale_layout_params) == 40, "ABI");

namespace {

constexpr int kBlock = 16;  // elements per NVFP4 block, and per unit of work

// ---- grid-stride iteration over (row, block) units ----

// Walks units u = tid, tid + stride, ... < rows * per_row as (row, col) pairs, dividing only once per
// thread: each step adds stride's quotient and remainder by per_row and carries. 64-bit division is a
// software routine on the GPU, and this keeps it out of the loop. I is the index type: uint64_t in
// general, uint32_t for a quantize launch whose every index fits 31 bits (quantize_impl), where each
// step's carry and every address below it cost half the instructions.
template <typename I>
struct UnitWalkT {
    I rows, per_row, row, col, step_rows, step_cols;

    __device__ UnitWalkT(I rows_, I per_row_) : rows(rows_), per_row(per_row_) {
        const uint64_t tid = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
        const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
        // per_row == 0 means no units; row = rows ends the walk before any division by zero.
        if (per_row == 0) {
            row = rows;
            col = step_rows = step_cols = 0;
            return;
        }
        if (((tid | stride | (uint64_t)per_row) >> 32) == 0) {
            // The usual case: 32-bit division is a few instructions, 64-bit a software routine.
            const uint32_t t = (uint32_t)tid, s = (uint32_t)stride, n = (uint32_t)per_row;
            row = t / n;
            col = t % n;
            step_rows = s / n;
            step_cols = s % n;
        } else {
            row = (I)(tid / per_row);
            col = (I)(tid % per_row);
            step_rows = (I)(stride / per_row);
            step_cols = (I)(stride % per_row);
        }
    }
    __device__ bool valid() const { return row < rows; }
    __device__ void next() {
        row += step_rows;
        col += step_cols;
        if (col >= per_row) {
            col -= per_row;
            row += 1;
        }
    }
};

using UnitWalk = UnitWalkT<uint64_t>;

// Offset of the scale of (row r, block c): nvfp4_swizzled_offset in index type I (the quantize launch's
// 32-bit walk passes uint32_t, which is exact there: the whole padded scale tensor fits its indices).
template <typename I>
__device__ inline I scale_offset(uint32_t layout, I r, I c, I block_cols) {
    if (layout != NVFP4_SCALE_SWIZZLED_128X4) return r * block_cols + c;
    return nvfp4_swizzled_offset_t<I>(r, c, (I)nvfp4_swizzle_padded_cols(block_cols));
}

// ---- element loads, widened exactly to f32 ----

template <uint32_t DT>
struct Elem;

template <>
struct Elem<NVFP4_DTYPE_F32> {
    using T = float;
    __device__ static float widen(float v) { return v; }
    // Word w of a 16-byte vector holds 1 element.
    __device__ static void unpack(uint32_t w, float *out) { out[0] = __uint_as_float(w); }
    static constexpr int per_word = 1;
};

template <>
struct Elem<NVFP4_DTYPE_F16> {
    using T = unsigned short;
    __device__ static float widen(unsigned short v) { return __half2float(__ushort_as_half(v)); }
    // Little-endian: the lower-addressed element is the low half of the word.
    __device__ static void unpack(uint32_t w, float *out) {
        out[0] = widen((unsigned short)(w & 0xFFFFu));
        out[1] = widen((unsigned short)(w >> 16));
    }
    static constexpr int per_word = 2;
};

template <>
struct Elem<NVFP4_DTYPE_BF16> {
    using T = unsigned short;
    // A bf16 is the top half of an f32: widening is a shift, exact.
    __device__ static float widen(unsigned short v) { return __uint_as_float((uint32_t)v << 16); }
    __device__ static void unpack(uint32_t w, float *out) {
        out[0] = __uint_as_float(w << 16);
        out[1] = __uint_as_float(w & 0xFFFF0000u);
    }
    static constexpr int per_word = 2;
};

// Widens raw element bits to f32, exactly: f32 as is; a bf16 is the top half of an f32 (a shift); f16
// through the hardware conversion, which is exact for every f16 (subnormals and NaN included).
__device__ inline float widen(uint32_t bits, uint32_t dtype) {
    return dtype == NVFP4_DTYPE_F32    ? __uint_as_float(bits)
           : dtype == NVFP4_DTYPE_BF16 ? __uint_as_float(bits << 16)
                                       : __half2float(__ushort_as_half((unsigned short)bits));
}

// Loads the 16 elements of (row, block b), widened to f32; columns at or past `cols` read as +0. The
// dtype is a run-time value on purpose: only this load stage depends on it, so the quantize pipeline
// after it (16 divisions and encodes) exists once in the binary instead of once per dtype and path.
__device__ inline void load_unit(const void *x, uint32_t dtype, uint64_t r, uint64_t b, uint64_t cols,
                                 float v[kBlock]) {
    const bool wide = dtype == NVFP4_DTYPE_F32;
    const uint64_t c0 = b * kBlock;
    const uint64_t esize = wide ? 4 : 2;
    const char *p = static_cast<const char *>(x) + (r * cols + c0) * esize;
    // Raw element bits: an f32 word, or a 16-bit value in the low half.
    uint32_t e[kBlock];
    if (c0 + kBlock <= cols && ((uintptr_t)p & 15) == 0) {
        // 16 elements = 64 bytes (f32) or 32 bytes (f16/bf16): four or two 16-byte vectors.
        const uint4 *vp = reinterpret_cast<const uint4 *>(p);
        uint32_t w[kBlock];
        const uint4 q0 = __ldg(vp), q1 = __ldg(vp + 1);
        const uint4 q2 = wide ? __ldg(vp + 2) : make_uint4(0, 0, 0, 0);
        const uint4 q3 = wide ? __ldg(vp + 3) : make_uint4(0, 0, 0, 0);
        const uint4 q[4] = {q0, q1, q2, q3};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            w[4 * i] = q[i].x;
            w[4 * i + 1] = q[i].y;
            w[4 * i + 2] = q[i].z;
            w[4 * i + 3] = q[i].w;
        }
        // Little-endian: of two 16-bit elements in a word, the lower-addressed one is the low half.
#pragma unroll
        for (int j = 0; j < kBlock; ++j) e[j] = wide ? w[j] : (w[j / 2] >> (16 * (j & 1))) & 0xFFFFu;
    } else {
#pragma unroll
        for (int j = 0; j < kBlock; ++j) {
            e[j] = c0 + j >= cols ? 0u
                   : wide         ? __ldg(reinterpret_cast<const unsigned int *>(p) + j)
                                  : __ldg(reinterpret_cast<const unsigned short *>(p) + j);
        }
    }
#pragma unroll
    for (int j = 0; j < kBlock; ++j) v[j] = widen(e[j], dtype);
}

// max with NaN propagation (PTX max.NaN, sm_80+): one instruction where fmaxf would drop a NaN, so a
// single maximum over |x| tells whether any element was NaN or Inf.
__device__ inline float max_nan(float a, float b) {
    float r;
    asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}

// sm_86+ takes the maximum of |x| over a pair of 16-bit floats in one instruction
// (max.NaN.xorsign.abs.{bf16x2,f16x2}: magnitudes compared, signs xored, any NaN gives NaN).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 860
#define NVFP4_PAIR_MAX 1
#else
#define NVFP4_PAIR_MAX 0
#endif

#if NVFP4_PAIR_MAX
template <uint32_t DT>
__device__ inline uint32_t pair_max_abs(uint32_t a, uint32_t b) {
    uint32_t r;
    if (DT == NVFP4_DTYPE_BF16) {
        asm("max.NaN.xorsign.abs.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    } else {
        asm("max.NaN.xorsign.abs.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    }
    return r;
}
#endif

// load_unit for a dtype known at compile time, also returning m, the NaN-propagating maximum of |x|
// over the block (NaN when any element is NaN, else the largest magnitude, Inf included). The aligned
// whole-block case unpacks each 32-bit word straight into its one or two f32 values (Elem::unpack: a
// shift or a mask for bf16), half the instructions of the run-time-dtype path, and on sm_86+ takes a
// 16-bit block's maximum over the packed words, eight pairs in seven instructions, before widening;
// every other case is load_unit itself. Both maxima are exact: a maximum only selects.
template <uint32_t DT, typename I>
__device__ inline float load_unit_t(const void *x, I r, I b, I cols, float v[kBlock]) {
    using E = Elem<DT>;
    const I c0 = b * kBlock;
    const char *p = static_cast<const char *>(x) + (uint64_t)(r * cols + c0) * sizeof(typename E::T);
    if (c0 + kBlock <= cols && ((uintptr_t)p & 15) == 0) {
        constexpr int nvec = kBlock / (4 * E::per_word);
        const uint4 *vp = reinterpret_cast<const uint4 *>(p);
        uint4 q[nvec];
#pragma unroll
        for (int i = 0; i < nvec; ++i) q[i] = __ldg(vp + i);
#pragma unroll
        for (int i = 0; i < nvec; ++i) {
            float *o = v + i * 4 * E::per_word;
            E::unpack(q[i].x, o);
            E::unpack(q[i].y, o + E::per_word);
            E::unpack(q[i].z, o + 2 * E::per_word);
            E::unpack(q[i].w, o + 3 * E::per_word);
        }
#if NVFP4_PAIR_MAX
        if (DT != NVFP4_DTYPE_F32) {
            // A tree over the eight words; the xored signs are dropped by the |.| of the last step.
            const uint32_t m01 = pair_max_abs<DT>(pair_max_abs<DT>(q[0].x, q[0].y), pair_max_abs<DT>(q[0].z, q[0].w));
            const uint32_t m23 = pair_max_abs<DT>(pair_max_abs<DT>(q[1].x, q[1].y), pair_max_abs<DT>(q[1].z, q[1].w));
            float h[2];
            E::unpack(pair_max_abs<DT>(m01, m23), h);
            return max_nan(fabsf(h[0]), fabsf(h[1]));
        }
#endif
    } else {
        load_unit(x, DT, r, b, cols, v);
    }
    float m = 0.0f;
#pragma unroll
    for (int j = 0; j < kBlock; ++j) m = max_nan(m, fabsf(v[j]));
    return m;
}

__device__ inline bool is_finite_nonneg_or_nan(float m) { return (__float_as_uint(m) & 0x7FFFFFFFu) < 0x7F800000u; }

// ---- amax ----

// Folds element x (at index i) into a thread's running max of finite |x| and first non-finite index.
__device__ inline void amax_fold(float x, uint64_t i, float &m, unsigned long long &first) {
    m = fmaxf(m, nvfp4_finite_abs(x));
    if (nvfp4_is_nonfinite(x) && i < first) first = i;
}

// Folds one 16-byte vector whose first element has index i0. The common case, all elements finite, is
// one NaN-propagating max per element; a vector holding a NaN or Inf redoes the exact per-element fold.
template <uint32_t DT>
__device__ inline void amax_vec(const uint4 &q, uint64_t i0, float &m, unsigned long long &first) {
    using E = Elem<DT>;
    constexpr int per_vec = 4 * E::per_word;
    float e[per_vec];
    E::unpack(q.x, e);
    E::unpack(q.y, e + E::per_word);
    E::unpack(q.z, e + 2 * E::per_word);
    E::unpack(q.w, e + 3 * E::per_word);
    float mv = 0.0f;
#pragma unroll
    for (int j = 0; j < per_vec; ++j) mv = max_nan(mv, fabsf(e[j]));
    if (is_finite_nonneg_or_nan(mv)) {
        m = fmaxf(m, mv);
    } else {
#pragma unroll
        for (int j = 0; j < per_vec; ++j) amax_fold(e[j], i0 + j, m, first);
    }
}

template <uint32_t DT>
__device__ inline void amax_impl(const nvfp4_amax_params &p, float &m, unsigned long long &first) {
    using E = Elem<DT>;
    const typename E::T *x = static_cast<const typename E::T *>(p.x);
    const uint64_t tid = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    constexpr int per_vec = 4 * E::per_word;  // elements per 16-byte vector
    // Vectors cover the aligned prefix; a misaligned base gets no vectors and the scalar loop does all.
    const uint64_t nvec = ((uintptr_t)x & 15) == 0 ? p.n / per_vec : 0;
    const uint4 *xv = reinterpret_cast<const uint4 *>(x);
    // Four independent 16-byte loads in flight per thread (64 bytes): the host launches only 4 blocks of
    // 256 threads per SM, and at one load per step that is 16 KiB per SM in flight, short of the
    // ~20-25 KiB HBM3 needs (3.35 TB/s x ~1 us / 132 SMs); four make it 64 KiB.
    uint64_t v = tid;
    for (; v + 3 * stride < nvec; v += 4 * stride) {
        uint4 q[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) q[k] = __ldg(xv + v + k * stride);
#pragma unroll
        for (int k = 0; k < 4; ++k) amax_vec<DT>(q[k], (v + k * stride) * per_vec, m, first);
    }
    for (; v < nvec; v += stride) amax_vec<DT>(__ldg(xv + v), v * per_vec, m, first);
    for (uint64_t i = nvec * per_vec + tid; i < p.n; i += stride) amax_fold(E::widen(x[i]), i, m, first);
}

// ---- dequantize output ----

// The NaN the CPU produces for e2m1(q) * (e4m3(sf) * s2) when the scale product is NaN: x86 keeps the
// payload of the NaN operand (the first one when both are), quieted, and the half crate narrows NaN by
// keeping the sign and the top payload bits. Here: the decoded scale's NaN if it is one, else s2's.
__device__ inline uint32_t cpu_nan_bits(float dec, float s2) {
    return (nvfp4_is_nan(dec) ? __float_as_uint(dec) : __float_as_uint(s2)) | 0x00400000u;
}

template <uint32_t DT>
struct Out;

template <>
struct Out<NVFP4_DTYPE_F32> {
    using T = uint32_t;
    __device__ static T narrow(float v) { return __float_as_uint(v); }
    __device__ static T nan(uint32_t bits) { return bits; }
};

template <>
struct Out<NVFP4_DTYPE_F16> {
    using T = unsigned short;
    __device__ static T narrow(float v) { return __half_as_ushort(__float2half_rn(v)); }
    // half::f16::from_f32 on NaN: sign, all-ones exponent, quiet bit, top 10 payload bits.
    __device__ static T nan(uint32_t bits) {
        return (T)(((bits >> 16) & 0x8000u) | 0x7E00u | ((bits >> 13) & 0x3FFu));
    }
};

template <>
struct Out<NVFP4_DTYPE_BF16> {
    using T = unsigned short;
    __device__ static T narrow(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }
    // half::bf16::from_f32 on NaN: the top half with the quiet bit set.
    __device__ static T nan(uint32_t bits) { return (T)((bits >> 16) | 0x0040u); }
};

template <uint32_t DT>
__device__ inline void dequantize_impl(const nvfp4_dequantize_params &p) {
    using O = Out<DT>;
    using T = typename O::T;
    T *out = static_cast<T *>(p.out);
    const uint64_t block_cols = p.cols / kBlock;
    const float s2 = *p.global_scale;
    const bool codes_vec = ((uintptr_t)p.codes & 7) == 0;
    const bool out_vec = ((uintptr_t)out & 15) == 0;
    for (UnitWalk w(p.rows, block_cols); w.valid(); w.next()) {
        const uint8_t *cp = p.codes + w.row * (p.cols / 2) + w.col * (kBlock / 2);
        uint64_t codes = 0;
        if (codes_vec) {
            codes = __ldg(reinterpret_cast<const unsigned long long *>(cp));
        } else {
#pragma unroll
            for (int i = 0; i < kBlock / 2; ++i) codes |= (uint64_t)__ldg(cp + i) << (8 * i);
        }
        const float dec = nvfp4_e4m3_decode(p.scales[scale_offset(p.scale_layout, w.row, w.col, block_cols)]);
        const float sd = __fmul_rn(dec, s2);
        T o[kBlock];
        if (nvfp4_is_nonfinite(sd)) {
            // Rare (a NaN scale byte, or a global scale near f32::MAX), and the NaNs must carry the CPU's
            // bits: a NaN scale passes through every product unchanged (e2m1 values are never NaN); with
            // sd = +-Inf, a zero code gives 0 * Inf, for which x86 (the reference's platform) writes its
            // default NaN 0xFFC00000 where the GPU would write 0x7FFFFFFF.
            const bool nan = nvfp4_is_nan(sd);
#pragma unroll
            for (int j = 0; j < kBlock; ++j) {
                const uint32_t c = (uint32_t)(codes >> (4 * j)) & 0xFu;
                o[j] = nan ? O::nan(cpu_nan_bits(dec, s2))
                     : (c & 7u) == 0 ? O::nan(0xFFC00000u)
                                     : O::narrow(__fmul_rn(nvfp4_e2m1_decode(c), sd));
            }
        } else {
#pragma unroll
            for (int j = 0; j < kBlock; ++j) {
                o[j] = O::narrow(__fmul_rn(nvfp4_e2m1_decode((uint32_t)(codes >> (4 * j)) & 0xFu), sd));
            }
        }
        T *op = out + w.row * p.cols + w.col * kBlock;
        if (out_vec) {
            // 16 outputs of sizeof(T) bytes: 64 (f32) or 32 (f16/bf16) bytes, as 16-byte stores.
            constexpr int per_vec = 16 / sizeof(T);
            uint4 *vp = reinterpret_cast<uint4 *>(op);
#pragma unroll
            for (int i = 0; i < kBlock / per_vec; ++i) {
                uint32_t wds[4];
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    if (sizeof(T) == 4) {
                        wds[k] = (uint32_t)o[i * per_vec + k];
                    } else {
                        wds[k] = (uint32_t)o[i * per_vec + 2 * k] | ((uint32_t)o[i * per_vec + 2 * k + 1] << 16);
                    }
                }
                vp[i] = make_uint4(wds[0], wds[1], wds[2], wds[3]);
            }
        } else {
#pragma unroll
            for (int j = 0; j < kBlock; ++j) op[j] = o[j];
        }
    }
}

// ---- quantize ----

// The global scale from amax (quant::global_scale_from_amax): nvfp4_global_scale's value, and the
// quantize kernel's when it derives the scale itself.
__device__ inline float global_scale_of(uint32_t amax_bits, uint32_t rule) {
    const float amax = __uint_as_float(amax_bits);
    // 1/2688 rounded to f32 once, at compile time, as PyTorch does when it turns `t / 2688.0` into a
    // multiply by the reciprocal (quant::GlobalScaleRule::Reciprocal).
    constexpr float kRecip = 1.0f / 2688.0f;
    return rule == NVFP4_GLOBAL_RECIPROCAL ? __fmul_rn(amax, kRecip) : __fdiv_rn(amax, 2688.0f);
}

// The launch's global scale (nvfp4_quantize_params): given, or derived from amax by every block, with
// block 0 storing it. No block reads global_scale when amax_bits is set, so that store races nothing.
__device__ inline float launch_global_scale(const nvfp4_quantize_params &p) {
    if (p.amax_bits == nullptr) return *p.global_scale;
    const float s2 = global_scale_of(*p.amax_bits, p.rule);
    if (blockIdx.x == 0 && threadIdx.x == 0) *p.global_scale = s2;
    return s2;
}

// The exact quotient without a division per element. __fdiv_rn(a, d) is, wherever its range check
// (FCHK) passes, the sequence r = rcp.approx(d); rd = fma(r, fma(-d, r, 1), r); q0 = a * rd;
// q = fma(rd, fma(-d, q0, a), q0), and that result is the correctly rounded quotient (the CUDA
// guarantee for __fdiv_rn). Only the first two steps depend on d alone, so a block computes rd once and
// each element pays one multiply and two FMAs instead of a reciprocal, five FMAs, a range check and a
// convergence barrier. The block takes this path only where the range check cannot fail for any element
// that matters: d in [2^-68, 2^100], every |x| finite and |x| / d below about 2^100. An element with
// |x| >= d * 2^-32 >= 2^-100 then has a normal |x|, a normal quotient and a normal residual, inside the
// check's window. One with |x| < d * 2^-32 (so |x| / d < 0.25, magnitude 0 exactly) may get an inexact
// q, still far below 0.25: its magnitude is right, and its sign comes from the exact rule below.
struct FastDiv {
    float d, rd;
};

__device__ inline FastDiv fast_div(float d) {
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(d));  // MUFU.RCP: what __fdiv_rn starts from
    return {d, __fmaf_rn(r, __fmaf_rn(-d, r, 1.0f), r)};
}

__device__ inline float fast_quotient(const FastDiv &f, float a) {
    const float q0 = __fmul_rn(a, f.rd);
    return __fmaf_rn(f.rd, __fmaf_rn(-f.d, q0, a), q0);
}

// E2M1 magnitude code (0..7) of a finite quotient q >= 0, rounded to nearest even exactly like
// nvfp4_e2m1_encode's seven comparisons, in one float add and six integer instructions. The E2M1
// grid has step 0.5 below 2, then 1 up to 4, then 2: the step is 2^(e - 1) for q's exponent e, at
// least 0.5. Adding m = 2^(e + 22) (exponent field E = max(e_bits, 127) + 22) makes the f32 adder round
// q to a multiple of that step with ties to even, and the sum's low bits count the steps: n = bits(q + m)
// - bits(m), 0..4. The code is then n + 2 * (E - 149) (each doubling of the step starts two codes
// higher), capped at 7 (6.0), and the two constants fold into one multiply-add of E. Checked against
// the comparisons for every f32 q in [0, 2^100] (the fast path's range).
__device__ inline uint32_t e2m1_mag(float q) {
    const uint32_t e = max(__float_as_uint(q) >> 23, 127u);
    const float m = __uint_as_float((e + 22u) << 23);
    const uint32_t k = e * ((1u << 23) - 2u) + ((22u << 23) + 254u);
    return min(__float_as_uint(__fadd_rn(q, m)) - k, 7u);
}

// The 16 codes of a block through the exact fast quotient. The sign rule (quant's quantize_block): the
// code is negative when y = rn(x / d) is: HARDWARE takes y's sign bit, which is x's (d > 0, and
// -0 / d = -0); MODELOPT takes y < 0, which for x < 0 is rn(|x| / d) != 0, i.e. |x| / d > 2^-150
// (2^-150 itself rounds to the even 0): |x| > RD(d * 2^-150) = zthr, computed exactly in two products.
__device__ inline uint64_t quantize_codes_fast(const float v[kBlock], const FastDiv &f, uint32_t zero_sign) {
    uint64_t codes = 0;
    if (zero_sign == NVFP4_ZERO_SIGN_HARDWARE) {
#pragma unroll
        for (int j = 0; j < kBlock; ++j) {
            const uint32_t mag = e2m1_mag(fast_quotient(f, fabsf(v[j])));
            const uint32_t code = mag | ((__float_as_uint(v[j]) >> 28) & 8u);
            codes |= (uint64_t)code << (4 * j);
        }
    } else {
        const float zthr = __fmul_rd(__fmul_rn(f.d, 0x1p-24f), 0x1p-126f);
        if (zthr == 0.0f) {
            // d < 2 (the usual case): |x| > 0 is all the rule asks, so a code is negative exactly when
            // x < 0 (-0 is not).
#pragma unroll
            for (int j = 0; j < kBlock; ++j) {
                const uint32_t mag = e2m1_mag(fast_quotient(f, fabsf(v[j])));
                codes |= (uint64_t)(mag | (v[j] < 0.0f ? 8u : 0u)) << (4 * j);
            }
            return codes;
        }
#pragma unroll
        for (int j = 0; j < kBlock; ++j) {
            const float a = fabsf(v[j]);
            const uint32_t mag = e2m1_mag(fast_quotient(f, a));
            const uint32_t code = mag | (v[j] < 0.0f && a > zthr ? 8u : 0u);
            codes |= (uint64_t)code << (4 * j);
        }
    }
    return codes;
}

// Whether a block whose |x| maximum (NaN-propagating) is m and whose decode scale is d takes the fast
// quotient: see FastDiv. m * 2^-100 may round, which only moves the bound by an ulp.
__device__ inline bool fast_block(float m, float d) {
    return (__float_as_uint(m) & 0x7F800000u) != 0x7F800000u && d >= 0x1p-68f &&
           d <= 0x1p100f && __fmul_rn(m, 0x1p-100f) <= d;
}

// sm_89+ converts f32 to E4M3 (cvt.rn.satfinite.e4m3x2.f32) and E4M3 to f16 (cvt.rn.f16x2.e4m3x2) in
// hardware: one instruction each where the integer codecs take about 30.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
#define NVFP4_CVT_E4M3 1
#else
#define NVFP4_CVT_E4M3 0
#endif

// nvfp4_scale_byte_of_quotient for the quantize kernel, where s = bmax / (6 * s2) is +0 or more, +Inf
// or NaN (bmax >= 0; the host rejects a negative or non-finite given scale, and a derived one is >= 0).
// On that domain the rules are: 0 or NaN -> 1.0, the clamp's lower bound 2^-9, then the cap at 448 and
// E4M3 round to nearest even. The hardware conversion's satfinite is that cap: every s above 448
// (+Inf included) gives 448, and below it the conversion rounds to nearest even, subnormals included.
__device__ inline uint32_t scale_byte(float s, uint32_t clamp_scale) {
#if NVFP4_CVT_E4M3
    if (s == 0.0f || nvfp4_is_nan(s)) s = 1.0f;
    if (clamp_scale) s = fmaxf(s, 0x1p-9f);
    unsigned short r;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(0.0f), "f"(s));  // s -> the low byte
    return r & 0xFFu;
#else
    return nvfp4_scale_byte_of_quotient(s, clamp_scale);
#endif
}

// nvfp4_e4m3_decode of a byte scale_byte wrote (never the NaN 0x7F): through f16, which holds every
// E4M3 value exactly, as a normal number or zero.
__device__ inline float scale_decode(uint32_t sf) {
#if NVFP4_CVT_E4M3
    uint32_t h;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h) : "h"((unsigned short)sf));
    return __half2float(__ushort_as_half((unsigned short)(h & 0xFFFFu)));
#else
    return nvfp4_e4m3_decode(sf);
#endif
}

// What every unit of a launch shares: the global scale s2, s6 = 6 * s2 and its fast reciprocal, and the
// bounds [lo, hi] on bmax inside which bmax / s6 takes the fast quotient (see quantize_unit).
struct LaunchScale {
    float s2, s6, lo, hi;
    FastDiv f6;
};

__device__ inline LaunchScale launch_scale(const nvfp4_quantize_params &p) {
    LaunchScale c;
    c.s2 = launch_global_scale(p);
    c.s6 = __fmul_rn(6.0f, c.s2);
    c.f6 = fast_div(c.s6);
    // fast_block(bmax, s6) && bmax >= s6 * 2^-32, with the s6-only tests done once: s6 in [2^-68, 2^100],
    // and bmax * 2^-100 <= s6 as bmax <= s6 * 2^100. Both products are exact (s6 * 2^-32 >= 2^-100 is
    // normal) or overflow to +Inf where s6 >= 2^28, and there every finite bmax passes either form.
    const bool ok = c.s6 >= 0x1p-68f && c.s6 <= 0x1p100f;
    c.lo = ok ? __fmul_rn(c.s6, 0x1p-32f) : INFINITY;
    c.hi = ok ? __fmul_rn(c.s6, 0x1p100f) : 0.0f;
    return c;
}

// One unit (16 elements already loaded, m their NaN-propagating maximum of |x|): scale byte, codes,
// stores.
template <typename I>
__device__ inline void quantize_unit(const nvfp4_quantize_params &p, const UnitWalkT<I> &w, const float v[kBlock],
                                     float m, I block_cols, const LaunchScale &c, bool codes_vec) {
    // When m is finite it is the block's finite maximum too.
    float bmax = m;
    if ((__float_as_uint(m) & 0x7F800000u) == 0x7F800000u) {
        bmax = 0.0f;
#pragma unroll
        for (int j = 0; j < kBlock; ++j) bmax = fmaxf(bmax, nvfp4_finite_abs(v[j]));
    }
    // s = bmax / (6 * s2) through the same exact fast quotient when s >= ~2^-32 (normal operands,
    // quotient and residual), or bmax = 0 (exact); else the division, because a tiny s must come out
    // exactly: one that underflows to 0 becomes 1.0 below.
    const bool s_fast = bmax == 0.0f || (bmax >= c.lo && bmax <= c.hi);
    const float s = s_fast ? fast_quotient(c.f6, bmax) : __fdiv_rn(bmax, c.s6);
    const uint32_t sf = scale_byte(s, p.clamp_scale);
    const float d = __fmul_rn(scale_decode(sf), c.s2);
    // Element j's code goes to bits 4j..4j+3: little-endian, that puts element 2i in the low nibble
    // of byte i and element 2i+1 in its high nibble (nvfp4-format.md §0.4).
    uint64_t codes = 0;
    if (fast_block(m, d)) {
        codes = quantize_codes_fast(v, fast_div(d), p.zero_sign);
    } else {
        // NaN/Inf elements, or a scale at the ends of the range: the division itself.
#pragma unroll
        for (int j = 0; j < kBlock; ++j) codes |= (uint64_t)nvfp4_quantize_element(v[j], d, p.zero_sign) << (4 * j);
    }
    uint8_t *cp = p.codes + (w.row * (I)(p.cols_padded / 2) + w.col * (I)(kBlock / 2));
    if (codes_vec) {
        *reinterpret_cast<unsigned long long *>(cp) = codes;
    } else {
#pragma unroll
        for (int i = 0; i < kBlock / 2; ++i) cp[i] = (uint8_t)(codes >> (8 * i));
    }
    p.scales[scale_offset<I>(p.scale_layout, w.row, w.col, block_cols)] = (uint8_t)sf;
}

template <uint32_t DT, typename I>
__device__ inline void quantize_walk(const nvfp4_quantize_params &p, const LaunchScale &c) {
    const I block_cols = (I)(p.cols_padded / kBlock);
    const bool codes_vec = ((uintptr_t)p.codes & 7) == 0;
    for (UnitWalkT<I> w((I)p.rows, block_cols); w.valid(); w.next()) {
        float v[kBlock];
        const float m = load_unit_t<DT, I>(p.x, w.row, w.col, (I)p.cols, v);
        quantize_unit<I>(p, w, v, m, block_cols, c, codes_vec);
    }
}

// One unit per trip. Measured slower on the H100 at 8192 x 8192 bf16 (blocks only, 91 us):
// - two units per trip, both loaded before either is computed: 72 registers, 3 blocks per SM, 102 us;
// - the loads in a per-thread shared-memory ring, 3 units ahead through cp.async (2026-12-07): 100.8 us.
//   ncu: 0.74 instructions issued per scheduler cycle and 3.7 of 10.9 cycles between a warp's
//   instructions spent eligible but not selected, DRAM 41%. The kernel is bound by instruction issue,
//   not by bytes in flight, and the ring only added instructions.
// A launch whose padded tensor (rows and scale columns padded to the 128x4 tiles) has fewer than 2^31
// elements walks with 32-bit indices (block-uniform choice): every index and offset then fits, and
// the walk, the addresses and the swizzle cost half the instructions. Larger tensors take 64 bits.
template <uint32_t DT>
__device__ inline void quantize_impl(const nvfp4_quantize_params &p) {
    const LaunchScale c = launch_scale(p);
    const uint64_t padded =
        nvfp4_swizzle_padded_rows(p.rows) * nvfp4_swizzle_padded_cols(p.cols_padded / kBlock) * kBlock;
    if (padded < (1ull << 31)) {
        quantize_walk<DT, uint32_t>(p, c);
    } else {
        quantize_walk<DT, uint64_t>(p, c);
    }
}

}  // namespace

extern "C" __global__ void nvfp4_amax(nvfp4_amax_params p) {
    float m = 0.0f;
    unsigned long long first = ~0ull;
    switch (p.dtype) {
        case NVFP4_DTYPE_F32: amax_impl<NVFP4_DTYPE_F32>(p, m, first); break;
        case NVFP4_DTYPE_F16: amax_impl<NVFP4_DTYPE_F16>(p, m, first); break;
        case NVFP4_DTYPE_BF16: amax_impl<NVFP4_DTYPE_BF16>(p, m, first); break;
        default: return;  // the host validates dtype; an unknown one leaves the outputs untouched
    }
    // Warp reduction, then one slot per warp in shared memory (at most 1024 / 32 = 32 warps), then the
    // first warp reduces those: one atomic of each kind per block.
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        m = fmaxf(m, __shfl_xor_sync(0xFFFFFFFFu, m, off));
        const unsigned long long o = __shfl_xor_sync(0xFFFFFFFFu, first, off);
        first = o < first ? o : first;
    }
    __shared__ float warp_max[32];
    __shared__ unsigned long long warp_first[32];
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
    if (lane == 0) {
        warp_max[warp] = m;
        warp_first[warp] = first;
    }
    __syncthreads();
    if (warp != 0) return;
    m = lane < warps ? warp_max[lane] : 0.0f;
    first = lane < warps ? warp_first[lane] : ~0ull;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        m = fmaxf(m, __shfl_xor_sync(0xFFFFFFFFu, m, off));
        const unsigned long long o = __shfl_xor_sync(0xFFFFFFFFu, first, off);
        first = o < first ? o : first;
    }
    if (lane == 0) {
        // Non-negative floats order like their bit patterns, so an integer max is the float max.
        if (m > 0.0f) atomicMax(p.amax_bits, __float_as_uint(m));
        if (first != ~0ull) atomicMin(p.first_nonfinite, first);
    }
}

extern "C" __global__ void nvfp4_global_scale(nvfp4_global_scale_params p) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    *p.global_scale = global_scale_of(*p.amax_bits, p.rule);
}

extern "C" __global__ void nvfp4_quantize(nvfp4_quantize_params p) {
    switch (p.dtype) {
        case NVFP4_DTYPE_F32: quantize_impl<NVFP4_DTYPE_F32>(p); break;
        case NVFP4_DTYPE_F16: quantize_impl<NVFP4_DTYPE_F16>(p); break;
        case NVFP4_DTYPE_BF16: quantize_impl<NVFP4_DTYPE_BF16>(p); break;
        default: break;  // the host validates dtype
    }
}

extern "C" __global__ void nvfp4_dequantize(nvfp4_dequantize_params p) {
    switch (p.out_dtype) {
        case NVFP4_DTYPE_F32: dequantize_impl<NVFP4_DTYPE_F32>(p); break;
        case NVFP4_DTYPE_F16: dequantize_impl<NVFP4_DTYPE_F16>(p); break;
        case NVFP4_DTYPE_BF16: dequantize_impl<NVFP4_DTYPE_BF16>(p); break;
        default: break;
    }
}

extern "C" __global__ void nvfp4_scale_layout(nvfp4_scale_layout_params p) {
    const uint64_t cp = nvfp4_swizzle_padded_cols(p.block_cols);
    // One walk over the real entries; the linear side is the contiguous one, so it sets the order.
    for (UnitWalk w(p.rows, p.block_cols); w.valid(); w.next()) {
        const uint64_t lin = w.row * p.block_cols + w.col;
        const uint64_t swz = nvfp4_swizzled_offset(w.row, w.col, cp);
        if (p.to_swizzled) {
            p.dst[swz] = p.src[lin];
        } else {
            p.dst[lin] = p.src[swz];
        }
    }
}
