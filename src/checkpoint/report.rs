//! The per-layer error of a quantization against its input: relative RMSE, SNR and max |error|.

use super::file::Dense;
use crate::quant::{ErrorStats, Nvfp4Tensor, error_stats};

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
    /// Compares `q` with the weight it was quantized from, on the CPU ([`error_stats`]).
    pub fn measure(name: &str, input: &Dense<'_>, q: &Nvfp4Tensor) -> Self {
        let stats = match input {
            Dense::F32(v) => error_stats(v, q),
            Dense::F16(v) => error_stats(v, q),
            Dense::Bf16(v) => error_stats(v, q),
        };
        Self::from_stats(name, q.shape(), &stats)
    }

    /// The report entry of a tensor of `shape` whose error sums were measured elsewhere (on the GPU,
    /// `ops::error_stats`).
    ///
    /// ```
    /// use nvfp4::{checkpoint::LayerError, quant::ErrorStats};
    /// let e = LayerError::from_stats("w", [4, 16], &ErrorStats { signal: 4.0, noise: 0.04, max_abs: 0.1 });
    /// assert!((e.snr_db - 20.0).abs() < 1e-9);
    /// ```
    pub fn from_stats(name: &str, shape: [usize; 2], stats: &ErrorStats) -> Self {
        LayerError {
            name: name.to_string(),
            shape,
            rel_rmse: stats.rel_rmse(),
            snr_db: stats.snr_db(),
            max_abs: stats.max_abs,
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
