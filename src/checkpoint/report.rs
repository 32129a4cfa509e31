//! The per-layer error of a quantization against its input: relative RMSE, SNR and max |error|.

use rayon::prelude::*;

use super::file::Dense;
use crate::format::{Element, e2m1, e4m3};
use crate::quant::{BLOCK, Nvfp4Tensor};

/// How far one quantized layer is from the weight it came from (dequantized to f32, compared in f64).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerError {
    /// The tensor.
    pub name: String,
    /// Its shape `[N, K]`.
    pub shape: [usize; 2],
    /// `sqrt(Σ (x̂ - x)^2 / Σ x^2)` (0 for an all-zero weight).
    pub rel_rmse: f64,
    /// `10 log10(Σ x^2 / Σ (x̂ - x)^2)` in dB (infinite when exact).
    pub snr_db: f64,
    /// `max |x̂ - x|`.
    pub max_abs: f64,
}

impl LayerError {
    /// Compares `q` with the weight it was quantized from.
    pub fn measure(name: &str, input: &Dense<'_>, q: &Nvfp4Tensor) -> Self {
        let (sig, noise, max_abs) = match input {
            Dense::F32(v) => sums(v, q),
            Dense::F16(v) => sums(v, q),
            Dense::Bf16(v) => sums(v, q),
        };
        LayerError {
            name: name.to_string(),
            shape: q.shape(),
            rel_rmse: if sig > 0.0 { (noise / sig).sqrt() } else { 0.0 },
            snr_db: if noise > 0.0 {
                10.0 * (sig / noise).log10()
            } else {
                f64::INFINITY
            },
            max_abs,
        }
    }

    /// The report entry as JSON (an infinite SNR is written as `null`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "shape": self.shape,
            "rel_rmse": self.rel_rmse,
            "snr_db": if self.snr_db.is_finite() { serde_json::json!(self.snr_db) } else { serde_json::Value::Null },
            "max_abs_error": self.max_abs,
        })
    }
}

fn sums<T: Element>(x: &[T], q: &Nvfp4Tensor) -> (f64, f64, f64) {
    let (rows, cols) = (q.rows(), q.cols());
    if rows == 0 || cols == 0 || x.len() != rows * cols {
        return (0.0, 0.0, 0.0);
    }
    let s2 = q.global_scale();
    let row_bytes = q.cols_padded() / 2;
    let grid: [f32; 16] = std::array::from_fn(|c| e2m1::decode_f32(c as u8));
    x.par_chunks(cols)
        .zip(q.codes().par_chunks(row_bytes))
        .enumerate()
        .map(|(r, (xr, codes))| {
            let (mut sig, mut noise, mut max) = (0.0f64, 0.0f64, 0.0f32);
            for (b, (xb, cb)) in xr.chunks(BLOCK).zip(codes.chunks(BLOCK / 2)).enumerate() {
                // One block in f32 (16 terms: the f32 sums are exact to ~2^-20 relative, plenty for a
                // report), the blocks of a row summed in f64.
                let d = e4m3::decode_f32(q.scale_at(r, b)) * s2;
                let table = grid.map(|g| g * d);
                let (mut bs, mut bn) = (0.0f32, 0.0f32);
                for (pair, &byte) in xb.chunks(2).zip(cb) {
                    let v0 = pair[0].to_f32();
                    let e0 = table[(byte & 0xF) as usize] - v0;
                    bs += v0 * v0;
                    bn += e0 * e0;
                    max = max.max(e0.abs());
                    if let Some(v1) = pair.get(1) {
                        let v1 = v1.to_f32();
                        let e1 = table[(byte >> 4) as usize] - v1;
                        bs += v1 * v1;
                        bn += e1 * e1;
                        max = max.max(e1.abs());
                    }
                }
                sig += bs as f64;
                noise += bn as f64;
            }
            (sig, noise, max as f64)
        })
        .reduce(|| (0.0, 0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1, a.2.max(b.2)))
}
