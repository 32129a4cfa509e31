/*
 * nvfp4.h: the C ABI between the Rust crate and the CUDA kernels of csrc/.
 *
 * Plain C (compiles as C99 with gcc, as CUDA C++ with nvcc, and through bindgen): only POD structs of
 * fixed-width fields, 8-byte fields first, explicit `_pad` where a struct would otherwise end on a
 * 4-byte hole, so the layout is the same for every compiler and bindgen can copy it without guessing.
 * Enums are not used as field types (their size is the compiler's choice); fields carrying an enum's
 * value are uint32_t.
 *
 * Every kernel takes its parameter struct BY VALUE as its only argument, so the launch passes one
 * pointer to the struct in the kernel-argument array.
 *
 * Launch geometry, common to all kernels: 1-D grid and block (gridDim.y = gridDim.z = 1). Indices are
 * 64-bit and every kernel walks its work with a grid-stride loop, so any grid.x >= 1 is correct: the
 * host may cap it (e.g. at 2^31 - 1, or at a few blocks per SM) and tensors beyond 2^32 elements work.
 */
#ifndef NVFP4_H
#define NVFP4_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Element type of unquantized data. */
enum nvfp4_dtype { NVFP4_DTYPE_F32 = 0, NVFP4_DTYPE_F16 = 1, NVFP4_DTYPE_BF16 = 2 };

/* Block-scale memory layout (nvfp4-format.md §0.6). */
enum nvfp4_scale_layout { NVFP4_SCALE_LINEAR = 0, NVFP4_SCALE_SWIZZLED_128X4 = 1 };

/* Sign of E2M1 codes whose magnitude is zero: format::ZeroSign. MODELOPT: the sign bit is `y < 0`, so
 * -0.0 gives code 0x0 and a tiny negative still gives 0x8; HARDWARE: the sign bit is copied, so -0.0
 * gives 0x8 too. */
enum nvfp4_zero_sign { NVFP4_ZERO_SIGN_MODELOPT = 0, NVFP4_ZERO_SIGN_HARDWARE = 1 };

/* Global-scale rule: quant::GlobalScaleRule. DIVIDE: amax / 2688.0f (ModelOpt on CPU); RECIPROCAL:
 * amax * f32(1/2688) (ModelOpt on CUDA, §0.5.1). 2688 = 6 * 448 = E2M1 max * E4M3 max. */
enum nvfp4_global_rule { NVFP4_GLOBAL_DIVIDE = 0, NVFP4_GLOBAL_RECIPROCAL = 1 };

/*
 * nvfp4_amax: the largest |x| over the FINITE elements of x[0..n), and the index of the first NaN/Inf.
 *   Before launch the host sets *amax_bits = 0 and *first_nonfinite = ~0ull; the kernel only raises
 *   the first (atomicMax on the f32 bit pattern, which orders like the value for non-negative floats)
 *   and lowers the second (atomicMin), so several launches over pieces of a tensor may share them.
 *   Launch: blockDim.x = 256 (any multiple of 32 up to 1024 works); grid.x any >= 1, suggested
 *   min(ceil(n / 2048), 4 * SM count): each thread reads 16 bytes per step, and fewer blocks mean
 *   fewer atomics. 16-byte loads when x is 16-byte aligned, scalar loads otherwise.
 */
typedef struct nvfp4_amax_params {
    const void *x;
    uint32_t *amax_bits;                /* f32 bits of max |finite x| */
    unsigned long long *first_nonfinite; /* smallest index of a NaN/Inf; ~0ull when none */
    uint64_t n;                         /* elements */
    uint32_t dtype;                     /* enum nvfp4_dtype */
    uint32_t _pad;
} nvfp4_amax_params;

/*
 * nvfp4_global_scale: *global_scale = rule(f32 from *amax_bits). Launch: grid 1, block 1 (other threads
 * do nothing). Runs after nvfp4_amax on the same stream so the global scale never visits the host.
 */
typedef struct nvfp4_global_scale_params {
    const uint32_t *amax_bits;
    float *global_scale;
    uint32_t rule; /* enum nvfp4_global_rule */
    uint32_t _pad;
} nvfp4_global_scale_params;

/*
 * nvfp4_quantize: x [rows, cols] row-major (row stride cols) -> codes [rows, cols_padded/2] (element 2i
 * in the low nibble of byte i) and one E4M3 scale per 16-element block; the CPU twin is
 * quant::quantize, and the bytes are identical.
 *   A unit is one 16-element block: units = rows * cols_padded / 16, one thread each.
 *   Launch: blockDim.x = 256 (any size works); grid.x = min(ceil(units / 256), 2^31 - 1).
 *   Scales: linear [rows, cols_padded/16], or swizzled with Rp = roundup(rows, 128),
 *   Cp = roundup(cols_padded/16, 4), Rp * Cp bytes. The kernel writes only real (row, block) entries:
 *   the host zero-fills a swizzled buffer (its padding must be 0x00) before the launch.
 *   Fast path (16-byte loads, one 8-byte code store) where the block lies inside cols and its start is
 *   16-byte aligned, and codes is 8-byte aligned; any other alignment is correct, only slower.
 *   *global_scale is read on the device (written by nvfp4_global_scale, or by the host).
 */
typedef struct nvfp4_quantize_params {
    const void *x;
    uint8_t *codes;
    uint8_t *scales;
    const float *global_scale;
    uint64_t rows;
    uint64_t cols;        /* logical K */
    uint64_t cols_padded; /* multiple of 16, >= cols; elements past cols read as +0 */
    uint32_t dtype;       /* enum nvfp4_dtype */
    uint32_t scale_layout; /* enum nvfp4_scale_layout */
    uint32_t zero_sign;   /* enum nvfp4_zero_sign */
    uint32_t clamp_scale; /* 1: clamp the block scale to [2^-9, 448] before rounding to E4M3 */
} nvfp4_quantize_params;

/*
 * nvfp4_dequantize: out[r, c] = e2m1(code) * (e4m3(scale) * global_scale), the scale product rounded
 * to f32 first, then one round-to-nearest-even to out_dtype (quant::dequantize; identical bits, NaN
 * included: a NaN scale byte gives the NaN the CPU gives).
 *   A unit is one 16-element block: units = rows * cols / 16. Launch: blockDim.x = 256 (any size
 *   works); grid.x = min(ceil(units / 256), 2^31 - 1). Fast path (8-byte code load, 16-byte stores)
 *   when codes is 8-byte and out 16-byte aligned.
 */
typedef struct nvfp4_dequantize_params {
    const uint8_t *codes;  /* [rows, cols/2] */
    const uint8_t *scales; /* linear [rows, cols/16] or swizzled as for quantize */
    const float *global_scale;
    void *out; /* [rows, cols] row-major */
    uint64_t rows;
    uint64_t cols;         /* multiple of 16 */
    uint32_t out_dtype;    /* enum nvfp4_dtype */
    uint32_t scale_layout; /* enum nvfp4_scale_layout */
} nvfp4_dequantize_params;

/*
 * nvfp4_scale_layout: permutes scale bytes between linear [rows, block_cols] and 128x4 swizzled
 * (format::scale_layout::convert). One thread per real entry: units = rows * block_cols.
 *   Launch: blockDim.x = 256 (any size works); grid.x = min(ceil(units / 256), 2^31 - 1).
 *   Linear -> swizzled writes only real entries: the host zero-fills dst (Rp * Cp bytes) first.
 *   Swizzled -> linear reads only real entries (the source's padding is ignored).
 *   src and dst must not overlap.
 */
typedef struct nvfp4_scale_layout_params {
    const uint8_t *src;
    uint8_t *dst;
    uint64_t rows;
    uint64_t block_cols;  /* K/16 */
    uint32_t to_swizzled; /* 1: linear -> swizzled, 0: swizzled -> linear */
    uint32_t _pad;
} nvfp4_scale_layout_params;

/*
 * nvfp4_gemm_fp4_sm120: D[M, N] = alpha * A[M, K] * W[N, K]^T (+ bias[N]), A and W NVFP4 (packed E2M1
 * codes, element 2i in the low nibble; UE4M3 block scales in the 128x4 swizzled layout, padding 0x00),
 * alpha = *a_global_scale * *w_global_scale (one f32 product on the device), on the sm_120 block-scaled
 * FP4 tensor cores (csrc/gemm_fp4_sm120.cu; the emulated instruction on sm_90a; a trap elsewhere).
 *   Every output starts from +0.0 and takes one m16n8k64 instruction per 64-wide K step in increasing K
 *   (K past k reads as code 0, scale 0x00); then v = acc * alpha, v = v + bias[n], each one f32
 *   round-to-nearest operation, and one round-to-nearest-even to out_dtype: reference::mma::mma_gemm
 *   gives the same bits.
 *   Launch: blockDim.x = 128 (exactly), gridDim = (ceil(m / 64), ceil(n / 64)), no dynamic shared memory.
 *   k is a multiple of 16; the code rows are 8-byte aligned (16-byte when k % 32 == 0: the kernel then
 *   copies 16 bytes at a time).
 */
typedef struct nvfp4_gemm_fp4_params {
    const uint8_t *a_codes;  /* [m, k/2] */
    const uint8_t *a_scales; /* swizzled, roundup(m, 128) * roundup(k/16, 4) bytes */
    const uint8_t *w_codes;  /* [n, k/2] */
    const uint8_t *w_scales; /* swizzled, roundup(n, 128) * roundup(k/16, 4) bytes */
    const float *a_global_scale;
    const float *w_global_scale;
    const float *bias; /* [n], or NULL */
    void *out;         /* [m, n] row-major, out_dtype */
    uint64_t m;
    uint64_t n;
    uint64_t k;
    uint32_t out_dtype; /* enum nvfp4_dtype */
    uint32_t _pad;
} nvfp4_gemm_fp4_params;

/*
 * nvfp4_mma_probe_sm120: the bare instruction (or its emulation) on `cases` independent tiles, through the
 * documented fragment layouts, for tests against reference::mma. Case i: A rows a[i][16][32 bytes]
 * (64 packed codes per row), B columns b[i][8][32 bytes], scale words sfa[i][16] and sfb[i][8] (byte q =
 * K group q), C c[i][16][8] and D d[i][16][8] row-major f32. The selectors tid_a (0..1) and tid_b (0..3)
 * choose which lanes supply scales; every other lane holds NaN scale bytes, which must be ignored.
 *   Launch: blockDim.x a multiple of 32; one warp per case, grid-stride (any grid.x >= 1).
 */
typedef struct nvfp4_mma_probe_params {
    const uint8_t *a;
    const uint8_t *b;
    const uint32_t *sfa;
    const uint32_t *sfb;
    const float *c;
    float *d;
    uint64_t cases;
    uint32_t tid_a;
    uint32_t tid_b;
} nvfp4_mma_probe_params;

#ifdef __cplusplus
} /* extern "C" */
#endif

#ifdef __CUDACC__
extern "C" __global__ void nvfp4_amax(nvfp4_amax_params p);
extern "C" __global__ void nvfp4_global_scale(nvfp4_global_scale_params p);
extern "C" __global__ void nvfp4_quantize(nvfp4_quantize_params p);
extern "C" __global__ void nvfp4_dequantize(nvfp4_dequantize_params p);
extern "C" __global__ void nvfp4_scale_layout(nvfp4_scale_layout_params p);
extern "C" __global__ void nvfp4_gemm_fp4_sm120(nvfp4_gemm_fp4_params p);
extern "C" __global__ void nvfp4_mma_probe_sm120(nvfp4_mma_probe_params p);
#endif

#endif /* NVFP4_H */
