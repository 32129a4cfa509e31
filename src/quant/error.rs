//! How far a quantized tensor is from the data it came from: Σx², Σ(x̂ - x)² and max |x̂ - x|, the
//! sums behind a checkpoint's per-layer report. The CPU twin of `ops::error_stats`, which runs the
//! same f32 arithmetic on the device (csrc/quant_error.cu).

use rayon::prelude::*;

use super::{BLOCK, Nvfp4Tensor};
use crate::format::{Element, e2m1, e4m3};

/// The error sums of one quantized tensor against its input. `x̂` is the dequantized value as
/// [`crate::quant::dequantize`] defines it before the final rounding: `e2m1(code) * (e4m3(scale) *
/// global_scale)` in f32.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ErrorStats {
    /// `Σ x²` (NaN when an input is NaN, infinite when one is infinite or its square overflows f32).
    pub signal: f64,
    /// `Σ (x̂ - x)²`.
    pub noise: f64,
    /// `max |x̂ - x|` over the elements whose error is not NaN (0 when there are none).
    pub max_abs: f64,
}

impl ErrorStats {
    /// `sqrt(noise / signal)`, 0 when the signal is not positive (an all-zero weight).
    pub fn rel_rmse(&self) -> f64 {
        if self.signal > 0.0 {
            (self.noise / self.signal).sqrt()
        } else {
            0.0
        }
    }

    /// `10 log10(signal / noise)` in dB, infinite when the noise is not positive (exact).
    pub fn snr_db(&self) -> f64 {
        if self.noise > 0.0 {
            10.0 * (self.signal / self.noise).log10()
        } else {
            f64::INFINITY
        }
    }
}

/// Measures `q` against the data `x` (`[rows, cols]` row-major) it was quantized from; a tensor with
/// no elements, or `x` of the wrong length, measures all zeros.
///
/// The arithmetic is fixed, so the GPU twin can repeat it: per row, each element's `x²` and
/// `(x̂ - x)²` are f32 products summed in f32 per position in the block (16 lanes) over a group of 16
/// blocks, each group's lane sums are added in f64; a zero-padded tail block (K not a multiple of 16)
/// is summed in f32 element by element and then added in f64. Only the order of the f64 additions is
/// free (rows are reduced in parallel).
///
/// ```
/// use nvfp4::quant::{error_stats, quantize, QuantizeOptions};
/// let x: Vec<f32> = (0..64).map(|i| i as f32 / 10.0).collect();
/// let q = quantize("w", &x, 2, 32, &QuantizeOptions::default())?;
/// let e = error_stats(&x, &q);
/// assert!(e.signal > 0.0 && e.rel_rmse() < 0.25);
/// # Ok::<(), nvfp4::Error>(())
/// ```
pub fn error_stats<T: Element>(x: &[T], q: &Nvfp4Tensor) -> ErrorStats {
    let (rows, cols) = (q.rows(), q.cols());
    if rows == 0 || cols == 0 || x.len() != rows * cols {
        return ErrorStats::default();
    }
    let s2 = q.global_scale();
    let row_bytes = q.cols_padded() / 2;
    let whole = cols / BLOCK;
    let (signal, noise, max_abs) = x
        .par_chunks(cols)
        .zip(q.codes().par_chunks(row_bytes))
        .enumerate()
        .map(|(r, (xr, codes))| {
            // Decode scales of the row first, so the element loop reads them as a plain slice
            // whatever the scale layout.
            let d: Vec<f32> = (0..q.block_cols())
                .map(|b| e4m3::decode_f32(q.scale_at(r, b)) * s2)
                .collect();
            let (mut sig, mut noise, mut max) =
                row_sums(&xr[..whole * BLOCK], &codes[..whole * BLOCK / 2], &d[..whole]);
            if whole * BLOCK < cols {
                // The zero-padded tail block, element by element.
                let (xt, ct) = (&xr[whole * BLOCK..], &codes[whole * BLOCK / 2..]);
                let (mut bs, mut bn) = (0.0f32, 0.0f32);
                for (i, v) in xt.iter().enumerate() {
                    let v = v.to_f32();
                    let e = e2m1::decode_f32((ct[i / 2] >> (4 * (i % 2))) & 0xF) * d[whole] - v;
                    bs += v * v;
                    bn += e * e;
                    max = max.max(e.abs() as f64);
                }
                sig += bs as f64;
                noise += bn as f64;
            }
            (sig, noise, max)
        })
        .reduce(|| (0.0, 0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1, a.2.max(b.2)));
    ErrorStats {
        signal,
        noise,
        max_abs,
    }
}

/// Σx², Σ(x̂-x)² and max|x̂-x| over whole blocks of one row, `d[b]` being block `b`'s decode scale.
/// Terms are summed per position in the block (16 lanes) in f32 over a group of 16 blocks, and
/// each group's lanes are added in f64: the f32 sums hold 16 terms each (relative error ~2^-20, plenty
/// for a report), and the loop needs no horizontal reduction, so it vectorizes (8 lanes with AVX2,
/// chosen at run time). The E2M1 decode is lane arithmetic instead of a table lookup for the same
/// reason.
#[multiversion::multiversion(targets("x86_64+avx2+fma", "x86_64+avx"))]
fn row_sums<T: Element>(x: &[T], codes: &[u8], d: &[f32]) -> (f64, f64, f64) {
    const GROUP: usize = 16;
    let (mut sig, mut noise, mut max) = ([0.0f64; BLOCK], [0.0f64; BLOCK], [0.0f32; BLOCK]);
    for ((xg, cg), dg) in x
        .chunks(GROUP * BLOCK)
        .zip(codes.chunks(GROUP * BLOCK / 2))
        .zip(d.chunks(GROUP))
    {
        let (mut gs, mut gn) = ([0.0f32; BLOCK], [0.0f32; BLOCK]);
        for ((xb, cb), &d) in xg.chunks_exact(BLOCK).zip(cg.chunks_exact(BLOCK / 2)).zip(dg) {
            let mut c = [0u32; BLOCK];
            for i in 0..BLOCK / 2 {
                c[2 * i] = (cb[i] & 0xF) as u32;
                c[2 * i + 1] = (cb[i] >> 4) as u32;
            }
            for j in 0..BLOCK {
                let v = xb[j].to_f32();
                let e = e2m1_lanes(c[j]) * d - v;
                gs[j] += v * v;
                gn[j] += e * e;
                let a = e.abs();
                max[j] = if a > max[j] { a } else { max[j] };
            }
        }
        for j in 0..BLOCK {
            sig[j] += gs[j] as f64;
            noise[j] += gn[j] as f64;
        }
    }
    let max = max.iter().fold(0.0f32, |m, &e| if e > m { e } else { m });
    (sig.iter().sum(), noise.iter().sum(), max as f64)
}

/// `e2m1::decode_f32(c)` for a 4-bit code, in integer lane operations only: magnitudes 2..7 are
/// `(1 + m/2) * 2^(e-1)` with `e = m >> 1`, 1 is 0.5 and 0 is 0.
#[inline(always)]
fn e2m1_lanes(c: u32) -> f32 {
    let m = c & 7;
    let normal = ((126 + (m >> 1)) << 23) | ((m & 1) << 22);
    let mag = if m >= 2 {
        normal
    } else if m == 1 {
        126 << 23
    } else {
        0
    };
    f32::from_bits(mag | ((c & 8) << 28))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{NonFinite, QuantizeOptions, dequantize, quantize};
    use crate::reference::synthetic::Rng;
    use half::bf16;

    #[test]
    fn lane_decode_is_the_e2m1_codec() {
        for c in 0..16u32 {
            assert_eq!(
                e2m1_lanes(c).to_bits(),
                e2m1::decode_f32(c as u8).to_bits(),
                "code {c}"
            );
        }
    }

    /// The sums against a plain f64 computation over the dequantized tensor, on shapes with and
    /// without a padded tail block; seeds are fresh each run and printed on failure.
    #[test]
    fn sums_match_an_f64_reference() {
        let seed = Rng::fresh_seed();
        let mut rng = Rng::new(seed);
        for &(rows, cols) in &[(3usize, 16usize), (7, 50), (33, 272), (5, 1)] {
            let x: Vec<bf16> = (0..rows * cols)
                .map(|_| bf16::from_f32(rng.normal() * 2.0))
                .collect();
            let opts = QuantizeOptions {
                pad_k: true,
                ..QuantizeOptions::default()
            };
            let q = quantize("w", &x, rows, cols, &opts).unwrap();
            let got = error_stats(&x, &q);
            let y = dequantize::<f32>(&q);
            let (mut sig, mut noise, mut max) = (0.0f64, 0.0f64, 0.0f64);
            for (a, b) in x.iter().zip(&y) {
                let (a, b) = (a.to_f32() as f64, *b as f64);
                sig += a * a;
                noise += (b - a) * (b - a);
                max = max.max((b - a).abs());
            }
            let rel = (noise / sig).sqrt();
            assert!(
                ((got.rel_rmse() - rel) / rel).abs() < 1e-5,
                "seed {seed} {rows}x{cols}: {} vs {rel}",
                got.rel_rmse()
            );
            assert_eq!(got.max_abs, max, "seed {seed} {rows}x{cols}");
        }
    }

    /// NaN and Inf inputs (quantized with `NonFinite::Saturate`): the sums carry them, the maximum
    /// skips NaN errors and keeps infinite ones.
    #[test]
    fn non_finite_inputs_propagate_into_the_sums_not_the_nan_max() {
        let opts = QuantizeOptions {
            non_finite: NonFinite::Saturate,
            ..QuantizeOptions::default()
        };
        let mut x = vec![1.0f32; 32];
        x[3] = f32::NAN;
        let q = quantize("w", &x, 1, 32, &opts).unwrap();
        let e = error_stats(&x, &q);
        assert!(e.signal.is_nan() && e.noise.is_nan());
        assert!(e.max_abs.is_finite());
        x[3] = f32::INFINITY;
        let q = quantize("w", &x, 1, 32, &opts).unwrap();
        let e = error_stats(&x, &q);
        assert_eq!(
            (e.signal, e.noise, e.max_abs),
            (f64::INFINITY, f64::INFINITY, f64::INFINITY)
        );
        assert!(e.rel_rmse().is_nan(), "Inf / Inf");
    }
}
