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
 *   Global scale: with amax_bits NULL, *global_scale is read on the device (set by the host or by
 *   nvfp4_global_scale). With amax_bits set (written by nvfp4_amax earlier on the stream), every block
 *   derives the scale by `rule` exactly as nvfp4_global_scale does, and block 0 stores it in
 *   *global_scale: one launch fewer on the full quantize path.
 */
typedef struct nvfp4_quantize_params {
    const void *x;
    uint8_t *codes;
    uint8_t *scales;
    float *global_scale;       /* read, or written by block 0 when amax_bits is set */
    const uint32_t *amax_bits; /* NULL, or f32 bits of max |finite x| to derive the global scale from */
    uint64_t rows;
    uint64_t cols;        /* logical K */
    uint64_t cols_padded; /* multiple of 16, >= cols; elements past cols read as +0 */
    uint32_t dtype;       /* enum nvfp4_dtype */
    uint32_t scale_layout; /* enum nvfp4_scale_layout */
    uint32_t zero_sign;   /* enum nvfp4_zero_sign */
    uint32_t clamp_scale; /* 1: clamp the block scale to [2^-9, 448] before rounding to E4M3 */
    uint32_t rule;        /* enum nvfp4_global_rule, with amax_bits */
    uint32_t _pad;
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
 * nvfp4_quant_error: the error sums of an NVFP4 tensor against the data x [rows, cols] it was quantized
 * from (quant::error_stats is the CPU twin and the f32 arithmetic is the same): for x^ = e2m1(code) *
 * (e4m3(scale) * global_scale), with every product, difference and sum a separately rounded f32
 * operation, sum x^2, sum (x^ - x)^2 and max |x^ - x| (NaN errors skipped). Per row, the squares are
 * summed in f32 per position in the block (16 lanes) over groups of 16 whole blocks starting at block
 * 0; each group's lane sums are added in f64. The tail block of a row whose cols is not a multiple of
 * 16 is summed in f32 element by element (elements past cols do not exist), then added in f64.
 *   A unit is one group of one row (or its tail block): units = rows * (ceil((cols / 16) / 16) +
 *   (cols % 16 != 0)), 4 threads each, every thread owning 4 lanes (one 8- or 16-byte load) of every
 *   block of the group; thread 0 of a unit sums a tail block alone.
 *   Launch: blockDim.x = 256 (any multiple of 32 up to 256: the kernel is compiled for 4 blocks of 256
 *   per SM); grid.x any >= 1, suggested min(ceil(4 * units / 256), 8 * SM count). Every block writes its
 *   three partials (f64 sum x^2, sum (x^ - x)^2, max) to partials[3 * blockIdx.x ..], zeros when it had
 *   no work, so partials holds 3 * grid.x doubles. Blocks reduce in a fixed order (no atomics): the
 *   same launch gives the same bits.
 *   Vector loads of x where a thread's 4 elements are aligned to their size, scalar loads otherwise.
 * nvfp4_quant_error_reduce: out[0..3) = the sums over blocks of partials[3 * i + 0], [3 * i + 1] and
 *   the max of [3 * i + 2], i < blocks, in a fixed order. Launch: grid 1, blockDim.x a multiple of 32
 *   up to 1024 (other blocks do nothing). Runs after nvfp4_quant_error on the same stream.
 */
typedef struct nvfp4_quant_error_params {
    const void *x;              /* [rows, cols] of dtype, row-major */
    const uint8_t *codes;       /* [rows, cols_padded/2] */
    const uint8_t *scales;      /* linear [rows, cols_padded/16] or swizzled as for quantize */
    const float *global_scale;  /* one f32 on the device */
    double *partials;           /* [grid.x][3] */
    uint64_t rows;
    uint64_t cols;        /* logical K */
    uint64_t cols_padded; /* K rounded up to 16 */
    uint32_t dtype;        /* enum nvfp4_dtype */
    uint32_t scale_layout; /* enum nvfp4_scale_layout */
} nvfp4_quant_error_params;

typedef struct nvfp4_quant_error_reduce_params {
    const double *partials; /* [blocks][3] */
    double *out;            /* [3]: sum x^2, sum (x^ - x)^2, max |x^ - x| */
    uint64_t blocks;
} nvfp4_quant_error_reduce_params;

/*
 * nvfp4_gemm_* / nvfp4_gemv_*: out[M, N] = alpha * (A[M, K] . W[N, K]^T) + bias[N] (ops::gemm; the CPU
 * twins are reference::gemm_w4a16 and reference::gemm_w4a4). W is NVFP4 in the ModelOpt layout: codes
 * [N, K/2] (element 2i in the low nibble), linear E4M3 scales [N, K/16], f32 global scale on the device.
 * A is bf16 or f16 [M, K] (W4A16 kernels), or NVFP4 like W (W4A4 kernels). alpha is the product of the
 * global scales (read on the device). K is a multiple of 16; M, N any >= 1.
 *   Tensor cores (mma.sync m16n8k16, f32 accumulate, sm_80+); both operands decoded exactly to bf16/f16.
 *   Launch: blockDim.x = 128 (4 warps, 16 output columns each); grid = (ceil(N / 64),
 *   ceil(M / (16 * MT)), splits), MT = 1 for nvfp4_gemv_* and 4 for nvfp4_gemm_*. Split z covers K steps
 *   of 128 [z * steps_per_split, min((z + 1) * steps_per_split, ceil(K / 128))); every split must be
 *   non-empty.
 *   splits > 1: each split writes raw f32 partial sums to workspace [splits, M, N]; the last block of
 *   each (x, y) tile to finish (counted in counters[y * grid.x + x], which must be 0 before the launch
 *   and is 0 again after it) sums them in split order, so the result is deterministic. Launches that
 *   share a workspace must not overlap.
 *   16-byte loads of codes when K % 32 == 0 (rows are then 16-byte aligned), 4-byte loads otherwise.
 */
/*
 * Launch shape of the sm_90a W4A16 wgmma kernels (nvfp4_gemm_w4a16_sm90_{bf16,f16}_m{64,128,256}, same
 * params as above; BM = 64, 128 or 256 rows of M and 128 rows of W per block, grid (ceil(N / 128),
 * ceil(M / BM), splits), K % 64 == 0): threads per block and dynamic shared memory bytes. The kernel
 * checks its own layout against these at compile time; the host launches with them.
 */
enum nvfp4_sm90_launch {
    NVFP4_SM90_THREADS_M64 = 288,
    NVFP4_SM90_THREADS_M128 = 288,
    NVFP4_SM90_THREADS_M256 = 384,
    NVFP4_SM90_SMEM_M64 = 113760,
    NVFP4_SM90_SMEM_M128 = 205952,
    NVFP4_SM90_SMEM_M256 = 223312
};

typedef struct nvfp4_gemm_params {
    const void *a;               /* [M, K] bf16/f16, or NVFP4 codes [M, K/2] for W4A4 */
    const uint8_t *a_scales;     /* W4A4: linear E4M3 [M, K/16]; otherwise unused */
    const float *a_global_scale; /* W4A4: one f32; otherwise unused */
    const uint8_t *w_codes;      /* [N, K/2] */
    const uint8_t *w_scales;     /* linear E4M3 [N, K/16] */
    const float *w_global_scale; /* one f32 */
    const void *bias;            /* [N] of bias_dtype, or NULL */
    void *out;                   /* [M, N] of out_dtype, row-major */
    float *workspace;            /* [splits, M, N] f32 when splits > 1, else unused */
    uint32_t *counters;          /* [grid.x * grid.y] zeros when splits > 1, else unused */
    uint32_t m;
    uint32_t n;
    uint32_t k;
    uint32_t splits;
    uint32_t steps_per_split;
    uint32_t out_dtype;  /* enum nvfp4_dtype */
    uint32_t bias_dtype; /* enum nvfp4_dtype; ignored when bias is NULL */
    uint32_t _pad;
} nvfp4_gemm_params;

/*
 * nvfp4_checksum: a position-dependent checksum of data[0..n), for the offload tests: the wrapping
 * sum over i of (data[i] + 1) * ((i + 1) * 0x9E3779B97F4A7C15), mod 2^64 (offload::checksum is the CPU
 * twin). Wrapping addition commutes, so the order of the partial sums cannot matter; weighting by
 * position makes a shifted, stale or half-copied buffer change the sum. The kernel ADDS its sum to
 * *out (atomicAdd): the host zeroes *out first.
 *   Launch: blockDim.x = 256 (a multiple of 32); grid.x any >= 1, suggested min(ceil(n / 4096), 4 * SMs).
 */
typedef struct nvfp4_checksum_params {
    const uint8_t *data;
    unsigned long long *out;
    uint64_t n;
} nvfp4_checksum_params;

/*
 * nvfp4_gemm_fp4_sm120: D[M, N] = alpha * A[M, K] * W[N, K]^T (+ bias[N]), A and W NVFP4 (packed E2M1
 * codes, element 2i in the low nibble; UE4M3 block scales in the 128x4 swizzled layout, padding 0x00),
 * alpha = *a_global_scale * *w_global_scale (one f32 product on the device), on the sm_120 block-scaled
 * FP4 tensor cores (csrc/gemm_fp4_sm120.cu; the emulated instruction on sm_90a; a trap elsewhere).
 *   Every output starts from +0.0 and takes one m16n8k64 instruction per 64-wide K step in increasing K
 *   (K past k reads as code 0, scale 0x00); then v = acc * alpha, v = v + bias[n], each one f32
 *   round-to-nearest operation, and one round-to-nearest-even to out_dtype: reference::mma::mma_gemm
 *   gives the same bits. The bias is f32, f16 or bf16 (bias_dtype), widened exactly to f32 before the
 *   add, as the nvfp4_gemm_* kernels do (so ops::GemmPlan can hand this kernel its output-typed bias).
 *   Launch: blockDim.x = 128 (exactly), gridDim = (ceil(m / 64), ceil(n / 64)), no dynamic shared memory.
 * nvfp4_gemm_fp4_small_sm120: the same contract and the same bits with a 16x64 CTA tile (for M <= 16),
 *   launched with blockDim.x = 128 (exactly), gridDim = (ceil(m / 16), ceil(n / 64)).
 *   For both: k is a multiple of 16; the code rows are 8-byte aligned (16-byte when k % 32 == 0: the kernel then
 *   copies 16 bytes at a time).
 */
typedef struct nvfp4_gemm_fp4_params {
    const uint8_t *a_codes;  /* [m, k/2] */
    const uint8_t *a_scales; /* swizzled, roundup(m, 128) * roundup(k/16, 4) bytes */
    const uint8_t *w_codes;  /* [n, k/2] */
    const uint8_t *w_scales; /* swizzled, roundup(n, 128) * roundup(k/16, 4) bytes */
    const float *a_global_scale;
    const float *w_global_scale;
    const void *bias;  /* [n] of bias_dtype, or NULL */
    void *out;         /* [m, n] row-major, out_dtype */
    uint64_t m;
    uint64_t n;
    uint64_t k;
    uint32_t out_dtype;  /* enum nvfp4_dtype */
    uint32_t bias_dtype; /* enum nvfp4_dtype; ignored when bias is NULL */
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

/*
 * nvfp4_blas_alpha / nvfp4_blas_epilogue: the device-side ends of the dequantize + cuBLAS GEMM route
 * (ops::GemmPlan, csrc/gemm_blas.cu). That route dequantizes the NVFP4 operands without their global
 * scales into 16-bit workspaces (exact), multiplies them with cuBLAS (f32 accumulation, alpha read on the
 * device), and applies what the nvfp4_gemm_* epilogue applies in the same order: v = acc * alpha, then
 * v = v + bias[n], each one f32 round-to-nearest operation, then one round-to-nearest-even to out_dtype.
 *
 * nvfp4_blas_alpha: *alpha = *a_global_scale * *w_global_scale (one f32 rounding), for W4A4 plans.
 *   Launch: grid 1, block 1 (other threads do nothing).
 */
typedef struct nvfp4_blas_alpha_params {
    const float *a_global_scale;
    const float *w_global_scale;
    float *alpha;
} nvfp4_blas_alpha_params;

/*
 * nvfp4_blas_epilogue: out[r, c] = to_out_dtype(src[r, c] + bias[c]) over rows x n, src f32 (cuBLAS's
 * alpha * acc), bias of bias_dtype widened exactly to f32 (no add when bias is NULL: a plain narrowing).
 * src may equal out when out_dtype is F32 (each element is read and written by one thread); otherwise
 * they must not overlap.
 *   Launch: blockDim.x = 256 (any multiple of 32 works); grid = (ceil(n / 256) capped at 2^31 - 1,
 *   min(rows, 65535)): columns across x, rows across y, both grid-stride.
 */
typedef struct nvfp4_blas_epilogue_params {
    const float *src;  /* [rows, n] f32 */
    const void *bias;  /* [n] of bias_dtype, or NULL */
    void *out;         /* [rows, n] of out_dtype, row-major */
    uint64_t rows;
    uint64_t n;
    uint32_t out_dtype;  /* enum nvfp4_dtype */
    uint32_t bias_dtype; /* enum nvfp4_dtype; ignored when bias is NULL */
} nvfp4_blas_epilogue_params;

#ifdef __cplusplus
} /* extern "C" */
#endif

#ifdef __CUDACC__
extern "C" __global__ void nvfp4_amax(nvfp4_amax_params p);
extern "C" __global__ void nvfp4_global_scale(nvfp4_global_scale_params p);
extern "C" __global__ void nvfp4_quantize(nvfp4_quantize_params p);
extern "C" __global__ void nvfp4_dequantize(nvfp4_dequantize_params p);
extern "C" __global__ void nvfp4_scale_layout(nvfp4_scale_layout_params p);
extern "C" __global__ void nvfp4_quant_error(nvfp4_quant_error_params p);
extern "C" __global__ void nvfp4_quant_error_reduce(nvfp4_quant_error_reduce_params p);
extern "C" __global__ void nvfp4_gemv_w4a16_bf16(nvfp4_gemm_params p);
extern "C" __global__ void nvfp4_gemv_w4a16_f16(nvfp4_gemm_params p);
extern "C" __global__ void nvfp4_gemv_w4a4(nvfp4_gemm_params p);
extern "C" __global__ void nvfp4_gemm_w4a16_bf16(nvfp4_gemm_params p);
extern "C" __global__ void nvfp4_gemm_w4a16_f16(nvfp4_gemm_params p);
extern "C" __global__ void nvfp4_gemm_w4a4(nvfp4_gemm_params p);
extern "C" __global__ void nvfp4_checksum(nvfp4_checksum_params p);
extern "C" __global__ void nvfp4_gemm_fp4_sm120(nvfp4_gemm_fp4_params p);
extern "C" __global__ void nvfp4_gemm_fp4_small_sm120(nvfp4_gemm_fp4_params p);
extern "C" __global__ void nvfp4_mma_probe_sm120(nvfp4_mma_probe_params p);
extern "C" __global__ void nvfp4_blas_alpha(nvfp4_blas_alpha_params p);
extern "C" __global__ void nvfp4_blas_epilogue(nvfp4_blas_epilogue_params p);
#endif

#endif /* NVFP4_H */
