//! A CPU model of the Blackwell sm_120 block-scaled FP4 tensor-core instruction
//! `mma.sync.aligned.m16n8k64.row.col.kind::mxf4nvf4.block_scale.scale_vec::4X.f32.e2m1.e2m1.f32.ue4m3`
//! (NVFP4 x NVFP4 with one UE4M3 scale per 16 K-elements, f32 accumulate), and [`mma_gemm`], a GEMM that
//! chains it over K exactly as `csrc/gemm_fp4_sm120.cu` does, so it predicts that kernel's bits on any
//! input.
//!
//! # Arithmetic (shared/reference/sm120-mma.md §6; MMA-Sim, arXiv:2511.10909)
//! For one output `D[m][n] = Σ_q P_q · sfa_q · sfb_q + C`:
//! 1. each 16-wide K group q gives the exact sum `P_q = Σ a_k b_k` (a multiple of 1/4, |P_q| <= 576);
//! 2. the group's term is `P_q · sig(sfa_q) · sig(sfb_q)` at exponent `exp(sfa_q) + exp(sfb_q)`, exact.
//!    Scales are read as |E4M3| (the sign bit is ignored); a subnormal scale has exponent -6, a zero
//!    scale exponent -126 (the group sum is not normalised, so a zero group still has an exponent);
//! 3. C is one more term: its f32 significand at its exponent (-126 for zero and subnormals);
//! 4. every term is aligned to the largest exponent E and truncated toward zero to 35 fractional bits,
//!    then the terms are summed exactly;
//! 5. the sum is rounded toward zero to f32 (subnormals kept; above f32's range it is ±Inf; an exact
//!    zero is +0.0). A NaN scale byte (0x7F/0xFF) among the 8 an output reads, or a NaN C, gives the
//!    canonical NaN 0x7FFF_FFFF.
//!
//! C = ±Inf is outside the published model (MMA-Sim cannot align an infinite significand); this model
//! returns C unchanged, which is what IEEE arithmetic would give. It is never produced by a GEMM of
//! finite NVFP4 operands (the largest sum of one instruction is far below f32's range).
//!
//! The integer form used here and in the device emulation (`csrc/common/mma_fp4.cuh`): with E2M1
//! values doubled (integers -12..12), `P4_q = Σ (2a)(2b) = 4 P_q` is an integer; with a scale's
//! significand written `ma/8` (`ma` = 8..15 normal, 0..7 subnormal), the group term is
//! `G_q · 2^(ea+eb-8)` with `G_q = P4_q · ma · mb` (|G_q| < 2^19). In units of `2^(E-35)` the aligned
//! term is `trunc(G_q · 2^(27 - (E - ea - eb)))` and C's is `trunc(M_c · 2^(12 - (E - e_c)))`
//! (`M_c` the 24-bit significand), so the sum fits in an i64 (< 2^49).
//!
//! # Fragment layouts (PTX ISA §9.7.14.5.11 "Matrix Fragments for mma.m16n8k64"; §9.7.14.3)
//! Written once here as index functions ([`a_element`], [`b_element`], [`c_element`], [`sfa_lane`],
//! [`sfb_lane`]) and used by [`mma_fragments`]; the CUDA wrapper documents the same maps. With
//! `g = lane / 4` and `t = lane % 4`, register r holds 8 E2M1 nibbles, nibble j at bits `4j..4j+3`:
//!
//! | operand | registers | row | column |
//! |---|---|---|---|
//! | A 16x64 | a0..a3 | `m = g + 8 (r & 1)` | `k = 8t + j + 32 (r >> 1)` |
//! | B 64x8 | b0..b1 | `k = 8t + j + 32 r` | `n = g` |
//! | C, D 16x8 | c0..c3 (f32) | `m = g + 8 (i >> 1)` | `n = 2t + (i & 1)` |
//!
//! Scales (4X: byte j of the register is K-block j, `k` in `16j..16j+16`): row m of A reads the register
//! of lane `4 (m % 8) + 2 tidA + m / 8`, column n of B that of lane `4n + tidB`, where `tidA` (0..1) and
//! `tidB` (0..3) are the instruction's thread-id selectors; the other lanes' scale registers are ignored.
//!
//! No FFI, no GPU.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::format::{Element, ScaleLayout};
use crate::quant::{BLOCK, Nvfp4Tensor};

/// Rows of A, C and D in one instruction.
pub const MMA_M: usize = 16;
/// Columns of B, C and D in one instruction.
pub const MMA_N: usize = 8;
/// The reduction length of one instruction.
pub const MMA_K: usize = 64;
/// Fractional bits kept when terms are aligned to the largest exponent (k = 64 block-scaled MMA).
pub const FRACTIONAL_BITS: i32 = 35;
/// The f32 pattern of every NaN result.
pub const NAN_BITS: u32 = 0x7FFF_FFFF;

// ---------------------------------------------------------------------------------------------------
// Fragment layouts

/// The (row m, column k) of A held by nibble `j` (0..8) of register `r` (0..4) of `lane` (0..32).
///
/// ```
/// use nvfp4::reference::mma::a_element;
/// assert_eq!(a_element(0, 0, 0), (0, 0));
/// assert_eq!(a_element(5, 3, 7), (9, 47)); // g = 1, t = 1: row 1 + 8, k = 8 + 7 + 32
/// ```
pub const fn a_element(lane: usize, r: usize, j: usize) -> (usize, usize) {
    let (g, t) = (lane / 4, lane % 4);
    (g + 8 * (r & 1), 8 * t + j + 32 * (r >> 1))
}

/// The (row k, column n) of B held by nibble `j` (0..8) of register `r` (0..2) of `lane`.
pub const fn b_element(lane: usize, r: usize, j: usize) -> (usize, usize) {
    let (g, t) = (lane / 4, lane % 4);
    (8 * t + j + 32 * r, g)
}

/// The (row m, column n) of C and D held by register `i` (0..4) of `lane`.
pub const fn c_element(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = (lane / 4, lane % 4);
    (g + 8 * (i >> 1), 2 * t + (i & 1))
}

/// The lane whose scale register supplies row `m` (0..16) of A, for thread-id selector `tid_a` (0..2).
pub const fn sfa_lane(m: usize, tid_a: usize) -> usize {
    4 * (m % 8) + 2 * tid_a + m / 8
}

/// The lane whose scale register supplies column `n` (0..8) of B, for thread-id selector `tid_b` (0..4).
pub const fn sfb_lane(n: usize, tid_b: usize) -> usize {
    4 * n + tid_b
}

// ---------------------------------------------------------------------------------------------------
// Arithmetic

/// An E2M1 code (low nibble) times two: an exact integer in -12..=12.
#[inline]
pub const fn e2m1_doubled(code: u8) -> i32 {
    const MAG: [i32; 8] = [0, 1, 2, 3, 4, 6, 8, 12];
    let m = MAG[(code & 7) as usize];
    if code & 8 != 0 { -m } else { m }
}

/// A UE4M3 scale byte as (integer significand in eighths, exponent), as the model reads it: the sign bit
/// ignored, subnormals at exponent -6, zero at exponent -126. `None` for NaN (0x7F/0xFF).
#[inline]
pub const fn ue4m3_parts(byte: u8) -> Option<(i64, i32)> {
    let b = byte & 0x7F;
    let (e, m) = ((b >> 3) as i32, (b & 7) as i64);
    if b == 0x7F {
        None
    } else if b == 0 {
        Some((0, -126))
    } else if e == 0 {
        Some((m, -6))
    } else {
        Some((8 + m, e - 7))
    }
}

/// `x · 2^shift` truncated toward zero, for any shift (large right shifts give 0).
#[inline]
const fn shift_trunc(x: i64, shift: i32) -> i64 {
    if shift >= 0 {
        x << shift
    } else if shift <= -63 {
        0
    } else {
        let mag = x.unsigned_abs() >> (-shift) as u32;
        if x < 0 { -(mag as i64) } else { mag as i64 }
    }
}

/// One output of the instruction from its parts: `p4[q]` = `Σ (2a)(2b)` over K group q, the four scale
/// bytes of the row of A and of the column of B, and C's f32 bits. Returns D's f32 bits.
///
/// ```
/// use nvfp4::reference::mma::combine;
/// // One group of 16 products 1·1 (P4 = 16·4), both scales 1.0 (0x38), C = 0.5.
/// let d = combine([64, 0, 0, 0], [0x38; 4], [0x38; 4], 0.5f32.to_bits());
/// assert_eq!(f32::from_bits(d), 16.5);
/// ```
pub fn combine(p4: [i32; 4], sfa: [u8; 4], sfb: [u8; 4], c_bits: u32) -> u32 {
    let c_exp_field = ((c_bits >> 23) & 0xFF) as i32;
    let c_mant = (c_bits & 0x7F_FFFF) as i64;
    let c_neg = c_bits >> 31 != 0;
    if c_exp_field == 0xFF && c_mant != 0 {
        return NAN_BITS;
    }
    let mut groups = [(0i64, 0i32); 4];
    for q in 0..4 {
        let (Some((ma, ea)), Some((mb, eb))) = (ue4m3_parts(sfa[q]), ue4m3_parts(sfb[q])) else {
            return NAN_BITS;
        };
        groups[q] = (p4[q] as i64 * ma * mb, ea + eb);
    }
    if c_exp_field == 0xFF {
        return c_bits; // ±Inf: outside the model, see the module documentation
    }
    let (c_sig, c_exp) = if c_exp_field == 0 {
        (c_mant, -126)
    } else {
        (c_mant | 1 << 23, c_exp_field - 127)
    };
    let c_sig = if c_neg { -c_sig } else { c_sig };
    let e_max = groups.iter().fold(c_exp, |e, g| e.max(g.1));
    let mut sum = shift_trunc(c_sig, 12 - (e_max - c_exp));
    for (g, e) in groups {
        sum += shift_trunc(g, 27 - (e_max - e));
    }
    f32_rz_bits(sum, e_max - FRACTIONAL_BITS)
}

/// `sum · 2^exp` rounded toward zero to f32 bits; an exact zero is +0.0, beyond f32's range ±Inf.
pub fn f32_rz_bits(sum: i64, exp: i32) -> u32 {
    if sum == 0 {
        return 0;
    }
    let sign = if sum < 0 { 1u32 << 31 } else { 0 };
    let mag = sum.unsigned_abs();
    let p = 63 - mag.leading_zeros() as i32; // mag is in [2^p, 2^(p+1))
    let unbiased = p + exp;
    if unbiased > 127 {
        return sign | 0x7F80_0000;
    }
    if unbiased >= -126 {
        let sig = if p >= 23 { mag >> (p - 23) } else { mag << (23 - p) };
        return sign | ((unbiased + 127) as u32) << 23 | (sig as u32 & 0x7F_FFFF);
    }
    // Subnormal: units of 2^-149.
    let shift = exp + 149;
    let units = if shift >= 0 {
        mag << shift
    } else if shift <= -64 {
        0
    } else {
        mag >> -shift
    };
    // A magnitude that truncates away is +0.0, as for an exact zero (the model's `trunc` is an integer).
    if units == 0 { 0 } else { sign | units as u32 }
}

/// `Σ (2a)(2b)` over 16 E2M1 codes of a row of A and a column of B (one code per byte, low nibble).
#[inline]
fn group_p4(a: &[u8], b: &[u8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| e2m1_doubled(x) * e2m1_doubled(y))
        .sum()
}

/// One output element: `a` and `b` hold the 64 E2M1 codes (one per byte) of a row of A and a column of
/// B, `sfa` and `sfb` their four scale bytes, `c` the accumulator input.
pub fn dot_block_scaled(a: &[u8; 64], b: &[u8; 64], sfa: [u8; 4], sfb: [u8; 4], c: f32) -> f32 {
    let mut p4 = [0; 4];
    for (q, p) in p4.iter_mut().enumerate() {
        *p = group_p4(&a[16 * q..16 * q + 16], &b[16 * q..16 * q + 16]);
    }
    f32::from_bits(combine(p4, sfa, sfb, c.to_bits()))
}

/// One instruction at matrix level: A is 16x64, B is 64x8 (stored as 8 columns of 64 codes, the
/// K-contiguous weight layout), one code per byte, scale bytes per row of A and column of B.
#[derive(Clone, Debug, PartialEq)]
pub struct MmaTile {
    /// Rows of A, one E2M1 code per k.
    pub a: [[u8; 64]; 16],
    /// Columns of B, one E2M1 code per k.
    pub b: [[u8; 64]; 8],
    /// The four UE4M3 scale bytes of each row of A (byte j scales k in 16j..16j+16).
    pub sfa: [[u8; 4]; 16],
    /// The four UE4M3 scale bytes of each column of B.
    pub sfb: [[u8; 4]; 8],
    /// The accumulator input.
    pub c: [[f32; 8]; 16],
}

/// `D = A · B + C` of one instruction, every output by [`dot_block_scaled`].
pub fn mma_m16n8k64(t: &MmaTile) -> [[f32; 8]; 16] {
    let mut d = [[0.0; 8]; 16];
    for (m, row) in d.iter_mut().enumerate() {
        for (n, out) in row.iter_mut().enumerate() {
            *out = dot_block_scaled(&t.a[m], &t.b[n], t.sfa[m], t.sfb[n], t.c[m][n]);
        }
    }
    d
}

/// The instruction at register level: every lane's A, B, C and scale registers in, every lane's D
/// registers out. Elements are gathered through the layout functions of this module, so a test that
/// packs a tile with them and compares with [`mma_m16n8k64`] checks the layout documentation too.
// Register numbers index both the fragments and the layout functions: a range loop says it plainly.
#[allow(clippy::needless_range_loop)]
pub fn mma_fragments(
    a: &[[u32; 4]; 32],
    b: &[[u32; 2]; 32],
    c: &[[f32; 4]; 32],
    sfa: &[u32; 32],
    sfb: &[u32; 32],
    tid_a: usize,
    tid_b: usize,
) -> [[f32; 4]; 32] {
    let mut tile = MmaTile {
        a: [[0; 64]; 16],
        b: [[0; 64]; 8],
        sfa: [[0; 4]; 16],
        sfb: [[0; 4]; 8],
        c: [[0.0; 8]; 16],
    };
    for lane in 0..32 {
        for j in 0..8 {
            for r in 0..4 {
                let (m, k) = a_element(lane, r, j);
                tile.a[m][k] = (a[lane][r] >> (4 * j)) as u8 & 0xF;
            }
            for r in 0..2 {
                let (k, n) = b_element(lane, r, j);
                tile.b[n][k] = (b[lane][r] >> (4 * j)) as u8 & 0xF;
            }
        }
        for i in 0..4 {
            let (m, n) = c_element(lane, i);
            tile.c[m][n] = c[lane][i];
        }
    }
    for m in 0..16 {
        tile.sfa[m] = sfa[sfa_lane(m, tid_a)].to_le_bytes();
    }
    for n in 0..8 {
        tile.sfb[n] = sfb[sfb_lane(n, tid_b)].to_le_bytes();
    }
    let d = mma_m16n8k64(&tile);
    let mut out = [[0.0; 4]; 32];
    for (lane, regs) in out.iter_mut().enumerate() {
        for (i, reg) in regs.iter_mut().enumerate() {
            let (m, n) = c_element(lane, i);
            *reg = d[m][n];
        }
    }
    out
}

/// The registers of a tile as the instruction expects them (the inverse of [`mma_fragments`]'s
/// gather): `(a, b, c, sfa, sfb)` per lane, scales placed for selectors `tid_a`, `tid_b` (lanes that
/// supply no scale get 0).
#[allow(clippy::type_complexity, clippy::needless_range_loop)]
pub fn tile_fragments(
    t: &MmaTile,
    tid_a: usize,
    tid_b: usize,
) -> (
    [[u32; 4]; 32],
    [[u32; 2]; 32],
    [[f32; 4]; 32],
    [u32; 32],
    [u32; 32],
) {
    let (mut a, mut b, mut c) = ([[0u32; 4]; 32], [[0u32; 2]; 32], [[0f32; 4]; 32]);
    let (mut sfa, mut sfb) = ([0u32; 32], [0u32; 32]);
    for lane in 0..32 {
        for j in 0..8 {
            for r in 0..4 {
                let (m, k) = a_element(lane, r, j);
                a[lane][r] |= ((t.a[m][k] & 0xF) as u32) << (4 * j);
            }
            for r in 0..2 {
                let (k, n) = b_element(lane, r, j);
                b[lane][r] |= ((t.b[n][k] & 0xF) as u32) << (4 * j);
            }
        }
        for i in 0..4 {
            let (m, n) = c_element(lane, i);
            c[lane][i] = t.c[m][n];
        }
    }
    for m in 0..16 {
        sfa[sfa_lane(m, tid_a)] = u32::from_le_bytes(t.sfa[m]);
    }
    for n in 0..8 {
        sfb[sfb_lane(n, tid_b)] = u32::from_le_bytes(t.sfb[n]);
    }
    (a, b, c, sfa, sfb)
}

// ---------------------------------------------------------------------------------------------------
// The chained GEMM

/// What [`mma_gemm`] computes besides the product: the kernel's epilogue.
#[derive(Clone, Copy, Debug, Default)]
pub struct MmaGemmEpilogue<'a> {
    /// Added to every row after the scale (`[N]`).
    pub bias: Option<&'a [f32]>,
}

/// The bits `csrc/gemm_fp4_sm120.cu` produces for `D[M, N] = alpha · A[M, K] · W[N, K]^T (+ bias)` with
/// `alpha = a.global_scale · w.global_scale` (f32), as f32.
///
/// Each output starts from `+0.0` and takes one instruction per 64-wide K step in increasing K, the
/// previous D as C ([`dot_block_scaled`]); K past the tensor's stored columns reads as code 0 with scale
/// byte 0x00 (the kernel's zero fill; a zero scale has exponent -126, which never sets the alignment).
/// Then `v = acc · alpha` and `v + bias[n]`, each one f32 round-to-nearest-even operation; an output
/// type narrower than f32 is one more rounding of `v` ([`Element::from_f32`]).
///
/// ```
/// use nvfp4::quant::{quantize, QuantizeOptions};
/// use nvfp4::reference::mma::{mma_gemm, MmaGemmEpilogue};
/// let a = quantize("a", &[1.0f32; 32], 1, 32, &QuantizeOptions::default()).unwrap();
/// let w = quantize("w", &[0.5f32; 64], 2, 32, &QuantizeOptions::default()).unwrap();
/// let d: Vec<f32> = mma_gemm(&a, &w, MmaGemmEpilogue::default()).unwrap();
/// assert_eq!(d, [16.0, 16.0]);
/// ```
pub fn mma_gemm<T: Element>(a: &Nvfp4Tensor, w: &Nvfp4Tensor, epilogue: MmaGemmEpilogue) -> Result<Vec<T>> {
    if a.cols_padded() != w.cols_padded() || a.cols() != w.cols() {
        return Err(Error::shape(
            "A",
            &a.shape(),
            format!("K = {} to match the weight's shape {:?}", w.cols(), w.shape()),
        ));
    }
    let (m, n, k) = (a.rows(), w.rows(), a.cols_padded());
    if let Some(bias) = epilogue.bias
        && bias.len() != n
    {
        return Err(Error::length("bias", &[n], n, bias.len()));
    }
    let alpha = a.global_scale() * w.global_scale();
    let steps = k.div_ceil(MMA_K);
    // Unpack W once: per row, per K step, 64 codes and 4 scale bytes (zero past K).
    let unpack = |t: &Nvfp4Tensor, r: usize, s: usize| -> ([u8; 64], [u8; 4]) {
        let mut codes = [0u8; 64];
        let mut sf = [0u8; 4];
        let row = &t.codes()[r * k / 2..(r + 1) * k / 2];
        for (i, c) in codes.iter_mut().enumerate() {
            let kk = s * MMA_K + i;
            if kk < k {
                *c = row[kk / 2] >> (4 * (kk % 2)) & 0xF;
            }
        }
        for (j, b) in sf.iter_mut().enumerate() {
            let blk = s * 4 + j;
            if blk < k / BLOCK {
                *b = t.scale_at(r, blk);
            }
        }
        (codes, sf)
    };
    let w_steps: Vec<Vec<([u8; 64], [u8; 4])>> = (0..n)
        .into_par_iter()
        .map(|r| (0..steps).map(|s| unpack(w, r, s)).collect())
        .collect();
    let mut out = vec![T::from_f32(0.0); m * n];
    out.par_chunks_mut(n.max(1)).enumerate().for_each(|(i, row)| {
        let a_steps: Vec<([u8; 64], [u8; 4])> = (0..steps).map(|s| unpack(a, i, s)).collect();
        for (j, o) in row.iter_mut().enumerate() {
            let mut acc = 0.0f32;
            for (s, (ac, asf)) in a_steps.iter().enumerate() {
                let (wc, wsf) = &w_steps[j][s];
                acc = dot_block_scaled(ac, wc, *asf, *wsf, acc);
            }
            let mut v = acc * alpha;
            if let Some(bias) = epilogue.bias {
                v += bias[j];
            }
            *o = T::from_f32(v);
        }
    });
    Ok(out)
}

/// The scale layout [`mma_gemm`]'s kernel twin reads (the tensor-core layout).
pub const KERNEL_SCALE_LAYOUT: ScaleLayout = ScaleLayout::Swizzled128x4;

// ---------------------------------------------------------------------------------------------------
// Test vectors

/// One case of the MMA test-vector format (shared/reference/mma-vectors/README.md, copied to
/// tests/data/): a tile and its expected D as f32 bits.
#[derive(Clone, Debug)]
pub struct VectorCase {
    /// The category, e.g. "big_c_small_products".
    pub category: String,
    /// The inputs.
    pub tile: MmaTile,
    /// Expected `D[m][n]` as f32 bits (NaN as 0x7FFF_FFFF).
    pub d_bits: [[u32; 8]; 16],
}

impl VectorCase {
    /// Parses one JSON line of the vector file. The format is fixed (keys `case`, `a`, `b`, `sfa`,
    /// `sfb`, `c`, `d`, every value a string or nested lists of strings), so a small scanner reads it
    /// without a JSON dependency.
    pub fn parse(line: &str) -> Result<Self> {
        let bad = |what: String| Error::invalid("MMA vector", what);
        // Every quoted string in order: keys and values alike.
        let mut strings = Vec::new();
        let mut rest = line;
        while let Some(start) = rest.find('"') {
            let after = &rest[start + 1..];
            let end = after.find('"').ok_or_else(|| bad("unterminated string".into()))?;
            strings.push(&after[..end]);
            rest = &after[end + 1..];
        }
        const KEYS: [&str; 7] = ["case", "a", "b", "sfa", "sfb", "c", "d"];
        let mut values: [Vec<&str>; 7] = Default::default();
        let mut current = None;
        for s in strings {
            match KEYS.iter().position(|k| *k == s) {
                Some(i) if current.is_none_or(|c: usize| !values[c].is_empty()) => current = Some(i),
                _ => match current {
                    Some(c) => values[c].push(s),
                    None => return Err(bad(format!("value `{s}` before any key"))),
                },
            }
        }
        let [case, a, b, sfa, sfb, c, d] = values;
        let count = |name: &str, v: &[&str], n: usize| {
            if v.len() == n {
                Ok(())
            } else {
                Err(bad(format!("`{name}` has {} strings, expected {n}", v.len())))
            }
        };
        count("case", &case, 1)?;
        count("a", &a, 16)?;
        count("b", &b, 8)?;
        count("sfa", &sfa, 16)?;
        count("sfb", &sfb, 8)?;
        count("c", &c, 128)?;
        count("d", &d, 128)?;
        let hex = |s: &str| u32::from_str_radix(s, 16).map_err(|e| bad(format!("`{s}`: {e}")));
        let codes = |s: &str| -> Result<[u8; 64]> {
            let mut out = [0u8; 64];
            if s.len() != 64 {
                return Err(bad(format!("a row of codes has {} digits, expected 64", s.len())));
            }
            for (o, ch) in out.iter_mut().zip(s.chars()) {
                *o = ch.to_digit(16).ok_or_else(|| bad(format!("`{ch}` is not hex")))? as u8;
            }
            Ok(out)
        };
        let scales = |s: &str| -> Result<[u8; 4]> { Ok(hex(s)?.to_be_bytes()) };
        let mut tile = MmaTile {
            a: [[0; 64]; 16],
            b: [[0; 64]; 8],
            sfa: [[0; 4]; 16],
            sfb: [[0; 4]; 8],
            c: [[0.0; 8]; 16],
        };
        let mut d_bits = [[0u32; 8]; 16];
        for m in 0..16 {
            tile.a[m] = codes(a[m])?;
            tile.sfa[m] = scales(sfa[m])?;
            for n in 0..8 {
                tile.c[m][n] = f32::from_bits(hex(c[8 * m + n])?);
                d_bits[m][n] = hex(d[8 * m + n])?;
            }
        }
        for n in 0..8 {
            tile.b[n] = codes(b[n])?;
            tile.sfb[n] = scales(sfb[n])?;
        }
        Ok(VectorCase {
            category: case[0].to_string(),
            tile,
            d_bits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_cover_every_element_once() {
        let mut a = [[0u8; 64]; 16];
        let mut b = [[0u8; 64]; 8];
        let mut c = [[0u8; 8]; 16];
        for lane in 0..32 {
            for j in 0..8 {
                for r in 0..4 {
                    let (m, k) = a_element(lane, r, j);
                    a[m][k] += 1;
                }
                for r in 0..2 {
                    let (k, n) = b_element(lane, r, j);
                    b[n][k] += 1;
                }
            }
            for i in 0..4 {
                let (m, n) = c_element(lane, i);
                c[m][n] += 1;
            }
        }
        assert!(a.iter().flatten().all(|&x| x == 1));
        assert!(b.iter().flatten().all(|&x| x == 1));
        assert!(c.iter().flatten().all(|&x| x == 1));
        for tid in 0..2 {
            let lanes: std::collections::BTreeSet<_> = (0..16).map(|m| sfa_lane(m, tid)).collect();
            assert_eq!(lanes.len(), 16);
        }
        for tid in 0..4 {
            let lanes: std::collections::BTreeSet<_> = (0..8).map(|n| sfb_lane(n, tid)).collect();
            assert_eq!(lanes.len(), 8);
        }
    }

    #[test]
    fn scale_parts_match_the_e4m3_codec() {
        for byte in 0..=255u8 {
            let v = crate::format::e4m3::decode_f32(byte & 0x7F);
            match ue4m3_parts(byte) {
                None => assert!(v.is_nan()),
                Some((m, e)) => assert_eq!(m as f64 / 8.0 * 2f64.powi(e), v as f64, "{byte:#04x}"),
            }
        }
    }

    #[test]
    fn rz_rounding_truncates_and_keeps_subnormals() {
        // 2^24 + 1 units of 2^0 truncates to 2^24.
        assert_eq!(f32_rz_bits((1 << 24) + 1, 0), 16_777_216f32.to_bits());
        assert_eq!(f32_rz_bits(-((1 << 24) + 1), 0), (-16_777_216f32).to_bits());
        // The smallest subnormal, and a value just below it that truncates to +0 magnitude.
        assert_eq!(f32_rz_bits(1, -149), 1);
        assert_eq!(f32_rz_bits(1, -150), 0);
        assert_eq!(f32_rz_bits(1, 128), 0x7F80_0000);
    }
}
