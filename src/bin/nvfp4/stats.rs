//! Error figures and timing helpers shared by the demo and the benchmarks.

use std::time::Instant;

/// Error of an approximation against a reference.
pub struct ErrorStats {
    /// sqrt(mean((x - ref)^2)) / sqrt(mean(ref^2)).
    pub rel_rmse: f64,
    /// 10 log10(Σ ref^2 / Σ (x - ref)^2).
    pub snr_db: f64,
    /// max |x - ref|.
    pub max_abs: f64,
}

impl ErrorStats {
    pub fn new(approx: impl Iterator<Item = f64>, reference: impl Iterator<Item = f64>) -> Self {
        let (mut sig, mut noise, mut max_abs) = (0.0f64, 0.0f64, 0.0f64);
        for (x, r) in approx.zip(reference) {
            let e = x - r;
            sig += r * r;
            noise += e * e;
            max_abs = max_abs.max(e.abs());
        }
        let rel_rmse = if sig > 0.0 { (noise / sig).sqrt() } else { 0.0 };
        let snr_db = if noise > 0.0 {
            10.0 * (sig / noise).log10()
        } else {
            f64::INFINITY
        };
        ErrorStats {
            rel_rmse,
            snr_db,
            max_abs,
        }
    }
}

impl std::fmt::Display for ErrorStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rel RMSE {:.4}  SNR {:6.2} dB  max |err| {:.4e}",
            self.rel_rmse, self.snr_db, self.max_abs
        )
    }
}

/// Median wall time in seconds of `reps` runs of `f` after one warm-up run.
pub fn median_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}
