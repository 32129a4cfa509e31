// quant_error.cu: the error sums of a quantized tensor against its input (sum x^2, sum (x^ - x)^2,
// max |x^ - x|), the numbers behind `nvfp4 quantize`'s per-layer report. The CPU twin is
// quant::error_stats, and the f32 part of the arithmetic is the same operation for operation, so the two
// differ only in the order of the f64 additions (launch contract in nvfp4.h).
//
// Why the CPU's f32 lane sums are repeated instead of summing every term in f64: the CPU sums 16 terms
// per lane in f32 (relative error ~2^-20 per group), so an all-f64 GPU sum would differ from the report
// the CPU path prints by ~1e-7 relative; with the same f32 groups the two agree to f64 rounding (~1e-15),
// and a test can hold them to 1e-9.
//
// Work split: a unit is one group of up to 16 consecutive whole blocks of one row (the CPU's group),
// and every lane's f32 sum runs over the group's blocks in order, so one thread must own a lane for the
// whole group. Four threads share a unit, each owning 4 lanes of every block: one 8-byte (bf16/f16) or
// 16-byte (f32) load per block step, a warp reading 8 groups' contiguous 32- or 64-byte blocks (whole
// sectors). Four lanes rather than a whole 16-byte vector of bf16 (8 lanes) keep the f32 sums at 8
// registers; with 8 lanes the kernel needed 70-80 registers. The tail block of a row (K not a multiple
// of 16) is a unit of its own, summed element by element by the unit's first thread.
//
// Reduction without atomics: each thread adds its groups' lane sums in f64 in walk order, the block
// reduces with a fixed shuffle tree and a fixed pass over warps, and nvfp4_quant_error_reduce sums the
// per-block partials in a fixed order: the same launch gives the same bits every run.
//
// It is a memory stream with ~15 instructions per element (widen, decode, 4 products/differences, 2
// sums, a max); the pipeline runs it once per tensor after quantize, far off the PCIe-bound path.
// Register budget: 64 per thread (__launch_bounds__(256, 4): 4 blocks of 256 threads per SM, half the
// thread limit, each with one 8- or 16-byte load in flight per step), no spills on any target. ptxas
// (CUDA 13.0), sm_80 / sm_90a / sm_100a / sm_120f: nvfp4_quant_error 64 / 64 / 60 / 59,
// nvfp4_quant_error_reduce 20 / 22 / 22 / 24; 0 bytes spilled. (Unbounded, sm_80 took 70.)

#include <cuda_fp16.h>
#include <stdint.h>

#include "common/codecs.cuh"
#include "nvfp4.h"

static_assert(sizeof(nvfp4_quant_error_params) == 72, "ABI");
static_assert(sizeof(nvfp4_quant_error_reduce_params) == 24, "ABI");

namespace {

constexpr int kBlock = 16;  // elements per NVFP4 block
constexpr int kGroup = 16;  // blocks per f32 lane sum: quant::error_stats's GROUP

// Raw element bits widened exactly to f32: f32 as is; bf16 is the top half of an f32; f16 through the
// hardware conversion, exact for every f16.
template <uint32_t DT>
struct Elem;

template <>
struct Elem<NVFP4_DTYPE_F32> {
    static constexpr int bytes = 4;
    __device__ static float widen(uint32_t b) { return __uint_as_float(b); }
    __device__ static uint32_t load(const char *p) { return __ldg(reinterpret_cast<const unsigned int *>(p)); }
};

template <>
struct Elem<NVFP4_DTYPE_F16> {
    static constexpr int bytes = 2;
    __device__ static float widen(uint32_t b) { return __half2float(__ushort_as_half((unsigned short)b)); }
    __device__ static uint32_t load(const char *p) { return __ldg(reinterpret_cast<const unsigned short *>(p)); }
};

template <>
struct Elem<NVFP4_DTYPE_BF16> {
    static constexpr int bytes = 2;
    __device__ static float widen(uint32_t b) { return __uint_as_float(b << 16); }
    __device__ static uint32_t load(const char *p) { return __ldg(reinterpret_cast<const unsigned short *>(p)); }
};

// Walks threads t = tid, tid + stride, ... < rows * per_row as (row, col) pairs, dividing once per
// thread: each step adds the stride's quotient and remainder by per_row and carries (64-bit division
// is a software routine, and in the loop it cost ~15 registers).
struct Walk {
    uint64_t per_row, row, col, step_rows, step_cols;

    __device__ Walk(uint64_t rows, uint64_t per_row_) : per_row(per_row_) {
        const uint64_t tid = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
        const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
        if (per_row == 0) {  // no work: row = rows ends the walk before any division by zero
            row = rows;
            col = step_rows = step_cols = 0;
            return;
        }
        row = tid / per_row;
        col = tid % per_row;
        step_rows = stride / per_row;
        step_cols = stride % per_row;
    }
    __device__ void next() {
        row += step_rows;
        col += step_cols;
        if (col >= per_row) {
            col -= per_row;
            row += 1;
        }
    }
};

// The swizzled offset separates into a row part and a column part (offset(r, c) = offset(r, 0) +
// offset(0, c): rows pick the 128-row tile and the place in the 512-byte tile, columns the K tile and
// the byte in the 4-byte slot), so a unit computes the row part once and each block adds its column's.
// The linear layout separates the same way.
struct ScaleRow {
    const uint8_t *base;
    uint64_t padded_cols;
    bool swizzled;

    __device__ ScaleRow(const uint8_t *scales, uint32_t layout, uint64_t r, uint64_t block_cols)
        : padded_cols(nvfp4_swizzle_padded_cols(block_cols)), swizzled(layout == NVFP4_SCALE_SWIZZLED_128X4) {
        base = scales + (swizzled ? nvfp4_swizzled_offset(r, 0, padded_cols) : r * block_cols);
    }
    __device__ uint8_t at(uint64_t c) const {
        return __ldg(base + (swizzled ? nvfp4_swizzled_offset(0, c, padded_cols) : c));
    }
};

// One element's terms, exactly as quant::error_stats computes them: e = e2m1(code) * d - x as two
// rounded operations (never contracted to an FMA), then the two squares added to their f32 lane sums.
// fmaxf skips a NaN error, as the CPU's `a > max` does.
__device__ inline void fold(float v, uint32_t code, float d, float &s, float &n, float &mx) {
    const float e = __fsub_rn(__fmul_rn(nvfp4_e2m1_decode(code), d), v);
    s = __fadd_rn(s, __fmul_rn(v, v));
    n = __fadd_rn(n, __fmul_rn(e, e));
    mx = fmaxf(mx, fabsf(e));
}

template <uint32_t DT>
__device__ inline void error_impl(const nvfp4_quant_error_params &p, double &sig, double &noise, float &mx) {
    using E = Elem<DT>;
    constexpr int kLanes = 4;                     // elements per thread and block: one 8- or 16-byte load
    constexpr int kThreads = kBlock / kLanes;     // threads per unit
    const uint64_t whole = p.cols / kBlock;       // whole blocks per row
    const uint64_t tail = p.cols % kBlock;        // elements of the tail block
    const uint64_t groups = (whole + kGroup - 1) / kGroup + (tail != 0 ? 1 : 0);
    const uint64_t per_row = groups * kThreads;   // threads per row
    const uint64_t block_cols = p.cols_padded / kBlock;
    const uint64_t row_bytes = p.cols_padded / 2;
    const float s2 = *p.global_scale;
    const char *x = static_cast<const char *>(p.x);
    for (Walk w(p.rows, per_row); w.row < p.rows; w.next()) {
        const uint64_t r = w.row, c = w.col;
        const uint64_t g = c / kThreads;
        const uint32_t h = (uint32_t)(c % kThreads);
        const uint8_t *codes = p.codes + r * row_bytes;
        if (tail != 0 && g == groups - 1) {
            if (h != 0) continue;
            const char *xp = x + (r * p.cols + whole * kBlock) * E::bytes;
            const uint8_t *cp = codes + whole * (kBlock / 2);
            const float d = __fmul_rn(nvfp4_e4m3_decode(ScaleRow(p.scales, p.scale_layout, r, block_cols).at(whole)), s2);
            float bs = 0.0f, bn = 0.0f;
            for (uint64_t i = 0; i < tail; ++i) {
                const uint32_t code = (__ldg(cp + i / 2) >> (4 * (i % 2))) & 0xFu;
                fold(E::widen(E::load(xp + i * E::bytes)), code, d, bs, bn, mx);
            }
            sig += (double)bs;
            noise += (double)bn;
            continue;
        }
        float gs[kLanes], gn[kLanes];
#pragma unroll
        for (int j = 0; j < kLanes; ++j) gs[j] = gn[j] = 0.0f;
        const uint64_t b0 = g * kGroup;
        const uint32_t nb = (uint32_t)min((uint64_t)kGroup, whole - b0);
        // The thread's 16 bytes of block b0 and its kLanes / 2 code bytes; both advance by one block per
        // step, so their alignment is fixed for the unit.
        const char *xp = x + (r * p.cols + b0 * kBlock + h * kLanes) * E::bytes;
        const uint8_t *cp = codes + b0 * (kBlock / 2) + h * (kLanes / 2);
        const bool vec = ((uintptr_t)xp & (kLanes * E::bytes - 1)) == 0;
        const ScaleRow scales(p.scales, p.scale_layout, r, block_cols);
        for (uint32_t k = 0; k < nb; ++k, xp += kBlock * E::bytes, cp += kBlock / 2) {
            uint32_t bits[kLanes];
            if (vec) {
                if (E::bytes == 4) {
                    const uint4 q = __ldg(reinterpret_cast<const uint4 *>(xp));
                    bits[0] = q.x, bits[1] = q.y, bits[2] = q.z, bits[3] = q.w;
                } else {
                    // Little-endian: of two 16-bit elements in a word, the lower-addressed is the low half.
                    const uint2 q = __ldg(reinterpret_cast<const uint2 *>(xp));
                    bits[0] = q.x & 0xFFFFu, bits[1] = q.x >> 16, bits[2] = q.y & 0xFFFFu, bits[3] = q.y >> 16;
                }
            } else {
#pragma unroll
                for (int j = 0; j < kLanes; ++j) bits[j] = E::load(xp + j * E::bytes);
            }
            // Element 2i in the low nibble of byte i.
            uint32_t cw = 0;
#pragma unroll
            for (int i = 0; i < kLanes / 2; ++i) cw |= (uint32_t)__ldg(cp + i) << (8 * i);
            const float d = __fmul_rn(nvfp4_e4m3_decode(scales.at(b0 + k)), s2);
#pragma unroll
            for (int j = 0; j < kLanes; ++j) fold(E::widen(bits[j]), (cw >> (4 * j)) & 0xFu, d, gs[j], gn[j], mx);
        }
#pragma unroll
        for (int j = 0; j < kLanes; ++j) {
            sig += (double)gs[j];
            noise += (double)gn[j];
        }
    }
}

// Sums (sig, noise) and maxes mx over the block in a fixed order: a shuffle tree in each warp, then the
// first warp over the warps' results. Every thread must call it; thread 0 holds the result.
__device__ inline void block_reduce(double &sig, double &noise, float &mx) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        sig += __shfl_xor_sync(0xFFFFFFFFu, sig, off);
        noise += __shfl_xor_sync(0xFFFFFFFFu, noise, off);
        mx = fmaxf(mx, __shfl_xor_sync(0xFFFFFFFFu, mx, off));
    }
    __shared__ double warp_sig[32], warp_noise[32];
    __shared__ float warp_max[32];
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
    if (lane == 0) {
        warp_sig[warp] = sig;
        warp_noise[warp] = noise;
        warp_max[warp] = mx;
    }
    __syncthreads();
    if (warp != 0) return;
    sig = lane < warps ? warp_sig[lane] : 0.0;
    noise = lane < warps ? warp_noise[lane] : 0.0;
    mx = lane < warps ? warp_max[lane] : 0.0f;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        sig += __shfl_xor_sync(0xFFFFFFFFu, sig, off);
        noise += __shfl_xor_sync(0xFFFFFFFFu, noise, off);
        mx = fmaxf(mx, __shfl_xor_sync(0xFFFFFFFFu, mx, off));
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(256, 4) nvfp4_quant_error(nvfp4_quant_error_params p) {
    double sig = 0.0, noise = 0.0;
    float mx = 0.0f;
    switch (p.dtype) {
        case NVFP4_DTYPE_F32: error_impl<NVFP4_DTYPE_F32>(p, sig, noise, mx); break;
        case NVFP4_DTYPE_F16: error_impl<NVFP4_DTYPE_F16>(p, sig, noise, mx); break;
        case NVFP4_DTYPE_BF16: error_impl<NVFP4_DTYPE_BF16>(p, sig, noise, mx); break;
        default: break;  // the host validates dtype; the partials stay zero
    }
    block_reduce(sig, noise, mx);
    if (threadIdx.x == 0) {
        double *out = p.partials + 3 * (uint64_t)blockIdx.x;
        out[0] = sig;
        out[1] = noise;
        out[2] = (double)mx;
    }
}

extern "C" __global__ void nvfp4_quant_error_reduce(nvfp4_quant_error_reduce_params p) {
    if (blockIdx.x != 0) return;
    double sig = 0.0, noise = 0.0;
    float mx = 0.0f;
    for (uint64_t i = threadIdx.x; i < p.blocks; i += blockDim.x) {
        sig += p.partials[3 * i];
        noise += p.partials[3 * i + 1];
        // Every partial max is an f32 widened exactly, so narrowing it back is exact too.
        mx = fmaxf(mx, (float)p.partials[3 * i + 2]);
    }
    block_reduce(sig, noise, mx);
    if (threadIdx.x == 0) {
        p.out[0] = sig;
        p.out[1] = noise;
        p.out[2] = (double)mx;
    }
}
