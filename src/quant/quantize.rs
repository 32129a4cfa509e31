//! The CPU quantizer: ModelOpt's NVFP4 formula (nvfp4-format.md §0.5), in IEEE f32, in ModelOpt's
//! order of operations, parallel over blocks with rayon and deterministic for any thread count (every
//! block is computed independently, and the global max does not depend on the order of reduction).

use rayon::prelude::*;

use super::{BLOCK, GLOBAL_DIVISOR, Nvfp4Tensor, SCALE_MIN};
use crate::error::{Error, Result, element_count};
use crate::format::{Element, ScaleLayout, ZeroSign, e4m3, scale_layout};

/// How the global scale is computed from the tensor's absolute maximum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GlobalScaleRule {
    /// `amax / 2688.0f`, correctly rounded: ModelOpt's formula, and its bytes when run on CPU.
    #[default]
    Divide,
    /// `amax * f32(1/2688)`: what ModelOpt gives when run on CUDA (PyTorch divides by a Python scalar
    /// with a reciprocal multiply), so what most published checkpoints hold (§0.5.1).
    Reciprocal,
}

/// Where the global scale comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GlobalScale {
    /// From the tensor's own absolute maximum (weights).
    FromAmax(GlobalScaleRule),
    /// Given by the caller in the decode convention, e.g. a checkpoint's `input_scale` for activations.
    /// Values beyond `2688 * scale` saturate to ±6 (block scales are capped at 448).
    Given(f32),
}

impl Default for GlobalScale {
    fn default() -> Self {
        GlobalScale::FromAmax(GlobalScaleRule::Divide)
    }
}

/// What happens to NaN and ±Inf in the input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum NonFinite {
    /// A typed error naming the first such element.
    #[default]
    Error,
    /// They take no part in the maxima; ±Inf encodes as ±6 and NaN as +6 (code 0x7), as
    /// `cvt.rn.satfinite` does.
    Saturate,
}

/// Every choice the quantizer makes. `Default` gives ModelOpt's bytes as ModelOpt computes them on CPU.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantizeOptions {
    /// Where the global scale comes from.
    pub global_scale: GlobalScale,
    /// Sign of zero codes: [`ZeroSign::ModelOpt`] by default (-0.0 gives code 0, as in ModelOpt files).
    pub zero_sign: ZeroSign,
    /// Layout of the block scales produced.
    pub scale_layout: ScaleLayout,
    /// NaN/Inf handling.
    pub non_finite: NonFinite,
    /// Pad K up to a multiple of 16 with zeros instead of refusing it.
    pub pad_k: bool,
    /// Raise block scales to at least 2^-9 (ModelOpt since 2026-05). Without it (older exports) a block
    /// whose scale is below 2^-10 gets scale byte 0x00. Either way scales are capped at 448: a scale
    /// can only exceed it when a given global scale is too small for the data (or the global scale
    /// underflowed to 0), where ModelOpt's formula would write the NaN byte 0x7F; here the block
    /// saturates instead, and its values beyond `6 * 448 * global_scale` encode as ±6.
    pub clamp_scale: bool,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions {
            global_scale: GlobalScale::default(),
            zero_sign: ZeroSign::ModelOpt,
            scale_layout: ScaleLayout::Linear,
            non_finite: NonFinite::Error,
            pad_k: false,
            clamp_scale: true,
        }
    }
}

const CHUNK: usize = 1 << 16;

/// The largest finite `|x|` of `data` (0 if none) and the index of the first NaN/Inf, if any.
///
/// ```
/// assert_eq!(nvfp4::quant::amax(&[1.0f32, -3.0, f32::NAN]), (3.0, Some(2)));
/// ```
pub fn amax<T: Element>(data: &[T]) -> (f32, Option<usize>) {
    let (bits, first) = data
        .par_chunks(CHUNK)
        .enumerate()
        .map(|(i, chunk)| {
            let mut m = 0i32;
            let mut bad = false;
            for v in chunk {
                let k = abs_bits(v.to_f32());
                bad |= k >= INF_BITS;
                m = m.max(if k < INF_BITS { k } else { 0 });
            }
            let first = if bad {
                chunk
                    .iter()
                    .position(|v| !v.to_f32().is_finite())
                    .map(|p| i * CHUNK + p)
            } else {
                None
            };
            (m, first)
        })
        .reduce(
            || (0, None),
            |(ma, fa), (mb, fb)| {
                let first = match (fa, fb) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                (ma.max(mb), first)
            },
        );
    (f32::from_bits(bits as u32), first)
}

/// `|x|` as its f32 bit pattern. For non-negative floats the bit patterns order like the values, and
/// everything at or above [`INF_BITS`] is Inf or NaN; integer max vectorizes where float max (with
/// its NaN rules) does not.
#[inline(always)]
fn abs_bits(x: f32) -> i32 {
    (x.to_bits() & 0x7FFF_FFFF) as i32
}

const INF_BITS: i32 = 0x7F80_0000;

/// K rounded up to a multiple of 16: [`Error::Shape`] when K is not a multiple of 16 and padding is
/// off, [`Error::ShapeOverflow`] when the padded tensor does not fit in `usize`.
pub(crate) fn padded_k(name: &str, rows: usize, cols: usize, pad_k: bool) -> Result<usize> {
    if cols % BLOCK != 0 && !pad_k {
        return Err(Error::shape(
            name,
            &[rows, cols],
            "the last dimension (K) must be a multiple of 16 (or quantize with pad_k)",
        ));
    }
    let overflow = || Error::ShapeOverflow {
        name: name.to_string(),
        shape: vec![rows, cols],
    };
    let cols_padded = cols.checked_next_multiple_of(BLOCK).ok_or_else(overflow)?;
    rows.checked_mul(cols_padded).ok_or_else(overflow)?;
    Ok(cols_padded)
}

/// A given global scale must be finite and non-negative; -0.0 is refused too, since dividing by it
/// would flip the sign of every code.
pub(crate) fn check_given_scale(name: &str, s: f32) -> Result<()> {
    if s.is_finite() && !s.is_sign_negative() {
        Ok(())
    } else {
        Err(Error::invalid(
            name,
            format!("given global scale {s} must be finite and +0.0 or more"),
        ))
    }
}

/// The global scale (decode convention) for a tensor whose absolute maximum is `amax`.
pub fn global_scale_from_amax(amax: f32, rule: GlobalScaleRule) -> f32 {
    match rule {
        GlobalScaleRule::Divide => amax / GLOBAL_DIVISOR,
        GlobalScaleRule::Reciprocal => amax * (1.0 / GLOBAL_DIVISOR),
    }
}

/// The E4M3 scale byte of one 16-element block and its decode scale `d = e4m3(sf) * s2`.
#[inline(always)]
fn block_scale(x: &[f32; BLOCK], s2: f32, clamp: bool) -> (u8, f32) {
    // Four independent running maxima (a 4-lane vector) instead of one 16-long dependency chain.
    // NaN and Inf lanes are zeroed first, so `a > m` is an ordinary max.
    let mut lanes = [0.0f32; 4];
    for chunk in x.chunks_exact(4) {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            let a = if abs_bits(v) < INF_BITS { v.abs() } else { 0.0 };
            *m = if a > *m { a } else { *m };
        }
    }
    let m01 = if lanes[0] > lanes[1] { lanes[0] } else { lanes[1] };
    let m23 = if lanes[2] > lanes[3] { lanes[2] } else { lanes[3] };
    let bmax = if m01 > m23 { m01 } else { m23 };
    let mut s = bmax / (6.0 * s2);
    // ModelOpt maps a zero scale (an all-zero block) to 1.0. A NaN here can only be 0/0: an all-zero
    // block of an all-zero tensor, which ModelOpt turns into NaN bytes and this crate into the same
    // result as any other all-zero block.
    if s == 0.0 || s.is_nan() {
        s = 1.0;
    }
    if clamp {
        s = s.max(SCALE_MIN);
    }
    // The upper bound holds with or without the clamp, so no scale byte is ever NaN.
    s = s.min(e4m3::MAX);
    let sf = e4m3::encode_f32(s, e4m3::Overflow::NonSaturating);
    (sf, e4m3::decode_f32(sf) * s2)
}

/// The eight packed code bytes of one block whose decode scale is `d`. `MODELOPT` selects the
/// zero-sign rule at compile time so the element loop has no branch.
#[inline(always)]
fn block_codes<const MODELOPT: bool>(x: &[f32; BLOCK], d: f32, codes: &mut [u8]) {
    // The element loop works on 32-bit lanes only (f32 values, i32 masks and codes) so it vectorizes;
    // it is `e2m1::encode_f32` spelled lane-wise, and the exhaustive tests hold the two equal.
    let mut q = [0i32; BLOCK];
    for j in 0..BLOCK {
        // Zeros skip the division so that a zero divisor (global scale 0) cannot turn them into NaN.
        let y = if x[j] == 0.0 { x[j] } else { x[j] / d };
        let a = y.abs();
        let mag = (a > 0.25) as i32
            + (a >= 0.75) as i32
            + (a > 1.25) as i32
            + (a >= 1.75) as i32
            + (a > 2.5) as i32
            + (a >= 3.5) as i32
            + (a > 5.0) as i32;
        let neg = if MODELOPT {
            (y < 0.0) as i32
        } else {
            (y.to_bits() >> 31) as i32
        };
        q[j] = if y.is_nan() { 0x7 } else { mag | (neg << 3) };
    }
    for i in 0..BLOCK / 2 {
        codes[i] = (q[2 * i] | (q[2 * i + 1] << 4)) as u8;
    }
}

/// Scale byte and codes of one block (the two halves above, back to back).
#[inline(always)]
fn quantize_block<const MODELOPT: bool>(x: &[f32; BLOCK], s2: f32, clamp: bool, codes: &mut [u8]) -> u8 {
    let (sf, d) = block_scale(x, s2, clamp);
    block_codes::<MODELOPT>(x, d, codes);
    sf
}

#[inline(always)]
fn load_block<T: Element>(src: &[T]) -> [f32; BLOCK] {
    let mut x = [0.0f32; BLOCK];
    for (d, s) in x.iter_mut().zip(src) {
        *d = s.to_f32();
    }
    x
}

/// Quantizes a row-major `[rows, cols]` tensor to NVFP4 along `cols`.
///
/// Follows ModelOpt's formula exactly (`amax / 2688`, block scale `bmax / (6 * S2)` clamped to
/// [2^-9, 448] and rounded to E4M3, elements divided by `e4m3(sf) * S2` and rounded to E2M1), so the
/// bytes equal ModelOpt's on CPU with the default options. Errors name `name`: the data length must be
/// `rows * cols`; `cols` must be a multiple of 16 unless `opts.pad_k`; NaN/Inf are refused unless
/// `opts.non_finite` is `Saturate`.
///
/// An all-zero tensor gets global scale 0, scale bytes 0x38 and codes 0 (ModelOpt's formula gives NaN
/// scale bytes there); it dequantizes to exact zeros.
///
/// ```
/// use nvfp4::quant::{quantize, QuantizeOptions};
/// use half::bf16;
/// let w: Vec<bf16> = (0..32).map(|i| bf16::from_f32(i as f32)).collect();
/// let q = quantize("layer.weight", &w, 2, 16, &QuantizeOptions::default())?;
/// assert_eq!(q.global_scale(), 31.0 / 2688.0);
/// # Ok::<(), nvfp4::Error>(())
/// ```
pub fn quantize<T: Element>(
    name: &str,
    data: &[T],
    rows: usize,
    cols: usize,
    opts: &QuantizeOptions,
) -> Result<Nvfp4Tensor> {
    let shape = [rows, cols];
    let n = element_count(name, &shape)?;
    if data.len() != n {
        return Err(Error::length(name, &shape, n, data.len()));
    }
    let cols_padded = padded_k(name, rows, cols, opts.pad_k)?;

    let (m, first_bad) = amax(data);
    if let (NonFinite::Error, Some(index)) = (opts.non_finite, first_bad) {
        return Err(Error::non_finite(name, shape, index, data[index].to_f32()));
    }
    let s2 = match opts.global_scale {
        GlobalScale::FromAmax(rule) => global_scale_from_amax(m, rule),
        GlobalScale::Given(s) => {
            check_given_scale(name, s)?;
            s
        }
    };

    let block_cols = cols_padded / BLOCK;
    let mut codes = vec![0u8; rows * cols_padded / 2];
    let mut scales = vec![0u8; rows * block_cols];
    match opts.zero_sign {
        ZeroSign::ModelOpt => fill::<T, true>(
            data,
            cols,
            cols_padded,
            s2,
            opts.clamp_scale,
            &mut codes,
            &mut scales,
        ),
        ZeroSign::Hardware => fill::<T, false>(
            data,
            cols,
            cols_padded,
            s2,
            opts.clamp_scale,
            &mut codes,
            &mut scales,
        ),
    }
    if opts.scale_layout != ScaleLayout::Linear {
        scales = scale_layout::convert(&scales, rows, block_cols, ScaleLayout::Linear, opts.scale_layout)?;
    }
    Ok(Nvfp4Tensor {
        rows,
        cols,
        cols_padded,
        codes,
        scales,
        scale_layout: opts.scale_layout,
        global_scale: s2,
    })
}

/// Quantizes every block into `codes` and linear `scales`, in parallel.
fn fill<T: Element, const MODELOPT: bool>(
    data: &[T],
    cols: usize,
    cols_padded: usize,
    s2: f32,
    clamp: bool,
    codes: &mut [u8],
    scales: &mut [u8],
) {
    if cols == cols_padded {
        // Blocks are contiguous across rows: parallelize over runs of blocks, whatever the shape.
        const BLOCKS: usize = 4096;
        codes
            .par_chunks_mut(BLOCKS * BLOCK / 2)
            .zip(scales.par_chunks_mut(BLOCKS))
            .zip(data.par_chunks(BLOCKS * BLOCK))
            .for_each(|((c, s), x)| run::<T, MODELOPT>(x, s2, clamp, c, s));
    } else if cols_padded > 0 {
        let block_cols = cols_padded / BLOCK;
        codes
            .par_chunks_mut(cols_padded / 2)
            .zip(scales.par_chunks_mut(block_cols))
            .zip(data.par_chunks(cols))
            .for_each(|((c, s), x)| {
                // Whole blocks first, then the zero-padded tail block.
                let whole = cols / BLOCK;
                run::<T, MODELOPT>(
                    &x[..whole * BLOCK],
                    s2,
                    clamp,
                    &mut c[..whole * BLOCK / 2],
                    &mut s[..whole],
                );
                let tail = load_block(&x[whole * BLOCK..]);
                s[whole] = quantize_block::<MODELOPT>(&tail, s2, clamp, &mut c[whole * BLOCK / 2..]);
            });
    }
}

/// Quantizes a run of whole blocks. Compiled for AVX2 as well as the baseline and chosen at run time
/// (the `multiversion` crate), so the element loop is 8 lanes wide where the CPU allows.
#[multiversion::multiversion(targets("x86_64+avx2+fma", "x86_64+avx"))]
fn run<T: Element, const MODELOPT: bool>(x: &[T], s2: f32, clamp: bool, codes: &mut [u8], scales: &mut [u8]) {
    // Two passes over groups of blocks: first every scale (a long serial chain per block: max,
    // divide, round, decode), then every block's codes. Within a pass the blocks are independent, so
    // the CPU overlaps their divisions instead of waiting on one block's chain at a time.
    const GROUP: usize = 64;
    let mut d = [0.0f32; GROUP];
    for ((c, s), x) in codes
        .chunks_mut(GROUP * BLOCK / 2)
        .zip(scales.chunks_mut(GROUP))
        .zip(x.chunks(GROUP * BLOCK))
    {
        for ((s, d), x) in s.iter_mut().zip(d.iter_mut()).zip(x.chunks_exact(BLOCK)) {
            (*s, *d) = block_scale(&load_block(x), s2, clamp);
        }
        for ((c, &d), x) in c
            .chunks_exact_mut(BLOCK / 2)
            .zip(d.iter())
            .zip(x.chunks_exact(BLOCK))
        {
            block_codes::<MODELOPT>(&load_block(x), d, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dequantize;

    #[test]
    fn reference_row_one_quantizes_as_documented() {
        // nvfp4-format.md §0.8, row 1: sixteen 1e-3 (bf16) then [10, -7.5, 2.5, 0.625, 0 x 12].
        let mut x = vec![half::bf16::from_f32(1e-3).to_f32(); 16];
        x.extend([10.0, -7.5, 2.5, 0.625]);
        x.extend([0.0; 12]);
        let q = quantize("row1", &x, 1, 32, &QuantizeOptions::default()).unwrap();
        assert_eq!(q.global_scale().to_bits(), 0x3B73_CF3D);
        assert_eq!(q.scales(), [0x13, 0x7E]);
        assert_eq!(&q.codes()[8..10], [0xE7, 0x13]);
        let d: Vec<f32> = dequantize(&q);
        assert_eq!(&d[16..20], [10.0, -6.666_666_5, 2.5, 0.833_333_3]);
    }

    #[test]
    fn all_zero_tensor_is_zero_scale_one_codes_zero() {
        let q = quantize("zeros", &[0.0f32; 64], 2, 32, &QuantizeOptions::default()).unwrap();
        assert_eq!(q.global_scale(), 0.0);
        assert!(q.scales().iter().all(|&b| b == 0x38));
        assert!(q.codes().iter().all(|&b| b == 0));
        assert!(
            dequantize::<f32>(&q)
                .iter()
                .all(|&v| v == 0.0 && v.is_sign_positive())
        );
    }
}
