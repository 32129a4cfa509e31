//! `C[M, N] = A[M, K] · W[N, K]^T`, accumulated in f64 from operands decoded exactly.
//!
//! NVFP4 operands are decoded to their exact real values (`e2m1 * e4m3 * global_scale` needs at most
//! 30 significant bits, so the f64 value is exact) rather than through the f32 dequantizer. Products
//! of two decoded operands can need 60 bits, so the f64 accumulation rounds at 2^-53 relative: a
//! distance from the mathematical product far below any f32 kernel's, which the bound absorbs.

use rayon::prelude::*;

use crate::error::{Error, Result, element_count};
use crate::format::{Element, e2m1, e4m3};
use crate::quant::{BLOCK, Nvfp4Tensor};

/// A reference product with what a test needs to bound a kernel's error.
#[derive(Clone, Debug)]
pub struct GemmReference {
    /// Rows of A and C.
    pub m: usize,
    /// Rows of W, columns of C.
    pub n: usize,
    /// The reduction length.
    pub k: usize,
    /// `C`, row-major `[m, n]`, accumulated in f64.
    pub values: Vec<f64>,
    /// `Σ_k |a_ik| |w_jk|` per output: the scale of the rounding error of any summation order.
    pub abs_sums: Vec<f64>,
}

/// Higham's `γ_k = k·u / (1 − k·u)` for f32 (`u = 2^-24`): a recursive f32 sum of `k` products, in any
/// order, is within `γ_k · Σ|a||w|` of the exact value.
///
/// Valid for `k < 2^24`; beyond that the bound does not exist and this returns NaN, which
/// [`GemmReference::first_violation`] treats as a violation.
pub fn gamma(k: usize) -> f64 {
    let ku = k as f64 * f64::powi(2.0, -24);
    if ku < 1.0 { ku / (1.0 - ku) } else { f64::NAN }
}

impl GemmReference {
    /// The f32 accumulation bound of output `i` for a kernel that performs `k + extra` roundings along
    /// the way (`extra` counts epilogue steps such as a final scale multiply and the output cast).
    pub fn bound(&self, i: usize, extra: usize) -> f64 {
        gamma(self.k + extra) * self.abs_sums[i]
    }

    /// Index of the first output where `got` is outside the bound, with its error and bound. An output
    /// of the wrong length is a violation at the first missing (or extra) index, with infinite error.
    pub fn first_violation(&self, got: &[f32], extra: usize) -> Option<(usize, f64, f64)> {
        if got.len() != self.values.len() {
            return Some((got.len().min(self.values.len()), f64::INFINITY, 0.0));
        }
        got.iter().enumerate().find_map(|(i, &g)| {
            let err = (g as f64 - self.values[i]).abs();
            let bound = self.bound(i, extra);
            // A NaN error or a NaN bound is incomparable: a violation too.
            let within = matches!(
                err.partial_cmp(&bound),
                Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
            );
            (!within).then_some((i, err, bound))
        })
    }
}

fn product(a: &[f64], w: &[f64], m: usize, n: usize, k: usize) -> GemmReference {
    let mut values = vec![0.0; m * n];
    let mut abs_sums = vec![0.0; m * n];
    if k > 0 {
        values
            .par_chunks_mut(n.max(1))
            .zip(abs_sums.par_chunks_mut(n.max(1)))
            .zip(a.par_chunks(k))
            .for_each(|((v, s), ar)| {
                for (j, wr) in w.chunks_exact(k).enumerate() {
                    let (mut acc, mut abs) = (0.0f64, 0.0f64);
                    for (x, y) in ar.iter().zip(wr) {
                        acc += x * y;
                        abs += (x * y).abs();
                    }
                    v[j] = acc;
                    s[j] = abs;
                }
            });
    }
    GemmReference {
        m,
        n,
        k,
        values,
        abs_sums,
    }
}

fn check(name: &str, len: usize, rows: usize, k: usize) -> Result<()> {
    let need = element_count(name, &[rows, k])?;
    if len != need {
        return Err(Error::length(name, &[rows, k], need, len));
    }
    Ok(())
}

/// The exact value of every element of an NVFP4 tensor, `[rows, cols]`.
pub fn decode_exact(t: &Nvfp4Tensor) -> Vec<f64> {
    let mut out = vec![0.0; t.rows() * t.cols()];
    let gs = t.global_scale() as f64;
    if t.cols() == 0 {
        return out;
    }
    out.par_chunks_mut(t.cols())
        .zip(t.codes().par_chunks(t.cols_padded() / 2))
        .enumerate()
        .for_each(|(r, (o, c))| {
            for (j, o) in o.iter_mut().enumerate() {
                let code = c[j / 2] >> (4 * (j % 2));
                let s = e4m3::decode_f32(t.scale_at(r, j / BLOCK)) as f64;
                *o = e2m1::decode_f32(code) as f64 * s * gs;
            }
        });
    out
}

/// Plain GEMM of unquantized operands: `a` is `[m, k]`, `w` is `[n, k]`.
///
/// ```
/// let r = nvfp4::reference::gemm_f32(&[1.0f32, 2.0], &[3.0f32, 4.0, 5.0, 6.0], 1, 2, 2).unwrap();
/// assert_eq!(r.values, [11.0, 17.0]);
/// ```
pub fn gemm_f32<T: Element>(a: &[T], w: &[T], m: usize, n: usize, k: usize) -> Result<GemmReference> {
    check("A", a.len(), m, k)?;
    check("W", w.len(), n, k)?;
    let a: Vec<f64> = a.par_iter().map(|x| x.to_f32() as f64).collect();
    let w: Vec<f64> = w.par_iter().map(|x| x.to_f32() as f64).collect();
    Ok(product(&a, &w, m, n, k))
}

/// W4A16: NVFP4 weights `[n, k]`, unquantized activations `[m, k]`.
pub fn gemm_w4a16<T: Element>(a: &[T], m: usize, w: &Nvfp4Tensor) -> Result<GemmReference> {
    let (n, k) = (w.rows(), w.cols());
    check("A", a.len(), m, k)?;
    let a: Vec<f64> = a.par_iter().map(|x| x.to_f32() as f64).collect();
    Ok(product(&a, &decode_exact(w), m, n, k))
}

/// W4A4: both operands NVFP4 (`a` is `[m, k]`, `w` is `[n, k]`); the result carries
/// `alpha = a.global_scale * w.global_scale`.
pub fn gemm_w4a4(a: &Nvfp4Tensor, w: &Nvfp4Tensor) -> Result<GemmReference> {
    if a.cols() != w.cols() {
        return Err(Error::shape(
            "A",
            &a.shape(),
            format!("K = {} to match the weight's shape {:?}", w.cols(), w.shape()),
        ));
    }
    Ok(product(
        &decode_exact(a),
        &decode_exact(w),
        a.rows(),
        w.rows(),
        a.cols(),
    ))
}
