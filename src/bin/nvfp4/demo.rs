//! `nvfp4 demo`: one transformer-sized layer through NVFP4, end to end, with the error it costs and
//! the throughput the crate reaches on this machine.

use anyhow::Context;
use clap::Args;
use half::bf16;
use indicatif::{ProgressBar, ProgressStyle};
use nvfp4::quant::{self, GlobalScale, QuantizeOptions};
use nvfp4::reference::{self, synthetic::Rng};

use crate::stats::{ErrorStats, median_secs};

/// Shape and seed of the synthetic layer.
#[derive(Args)]
pub struct DemoArgs {
    /// Tokens (rows of the activation).
    #[arg(long, default_value_t = 256)]
    pub m: usize,
    /// Output features (rows of the weight).
    #[arg(long, default_value_t = 3072)]
    pub n: usize,
    /// Input features (the reduction length; SeedVR2-7B's hidden size is 3072).
    #[arg(long, default_value_t = 3072)]
    pub k: usize,
    /// Seed of the synthetic weights and activations (printed, so a run can be replayed).
    #[arg(long)]
    pub seed: Option<u64>,
}

fn to_bf16(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let (m, n, k) = (args.m, args.n, args.k);
    anyhow::ensure!(m > 0 && n > 0 && k > 0, "--m, --n and --k must be positive");
    anyhow::ensure!(
        k % 16 == 0,
        "--k must be a multiple of 16 (NVFP4 blocks are 16 wide), got {k}"
    );
    let seed = args.seed.unwrap_or_else(Rng::fresh_seed);
    println!("nvfp4 demo: layer A[{m}, {k}] x W[{n}, {k}]^T, bf16 inputs, seed {seed}");
    let pb = ProgressBar::new(6).with_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .context("progress bar template")?,
    );

    pb.set_message("synthetic weights and activations");
    let mut rng = Rng::new(seed);
    // Weights ~ N(0, 1/k) like an initialized linear layer, with a few large outliers as trained
    // transformers have; activations ~ N(0, 1) with heavier channels.
    let mut w = rng.normal_vec(n * k, (1.0 / k as f32).sqrt());
    for _ in 0..(n * k / 4096).max(1) {
        let i = (rng.next_u64() % (n * k) as u64) as usize;
        w[i] *= 20.0;
    }
    let mut a = rng.normal_vec(m * k, 1.0);
    for c in 0..k.min(8) {
        let ch = (rng.next_u64() % k as u64) as usize;
        for r in 0..m {
            a[r * k + ch] *= 10.0 + c as f32;
        }
    }
    let (w, a) = (to_bf16(&w), to_bf16(&a));
    pb.inc(1);

    pb.set_message("quantize W and A (CPU)");
    let wq = quant::quantize("W", &w, n, k, &QuantizeOptions::default())?;
    let (a_amax, _) = quant::amax(&a);
    let input_scale = quant::global_scale_from_amax(a_amax, Default::default());
    let a_opts = QuantizeOptions {
        global_scale: GlobalScale::Given(input_scale),
        ..Default::default()
    };
    let aq = quant::quantize("A", &a, m, k, &a_opts)?;
    pb.inc(1);

    pb.set_message("reference GEMMs (f64)");
    let exact = reference::gemm_f32(&a, &w, m, n, k)?;
    pb.inc(1);
    let w4a16 = reference::gemm_w4a16(&a, m, &wq)?;
    pb.inc(1);
    let w4a4 = reference::gemm_w4a4(&aq, &wq)?;
    pb.inc(1);

    pb.set_message("CPU throughput");
    let reps = 5;
    let tq = median_secs(reps, || {
        let _ = quant::quantize("W", &w, n, k, &QuantizeOptions::default());
    });
    let mut out = vec![bf16::ZERO; n * k];
    let td = median_secs(reps, || {
        let _ = quant::dequantize_into(&wq, &mut out);
    });
    pb.finish_and_clear();

    let wd: Vec<f32> = quant::dequantize(&wq);
    let bytes_bf16 = (n * k * 2) as f64;
    println!();
    println!(
        "weights  W  [{n}, {k}]: {:.2} MiB bf16 -> {:.2} MiB NVFP4 ({:.3} bits/weight)",
        bytes_bf16 / 1048576.0,
        wq.size_bytes() as f64 / 1048576.0,
        wq.size_bytes() as f64 * 8.0 / (n * k) as f64
    );
    println!(
        "  global scale {:e} (amax / 2688), input_scale of A {:e}",
        wq.global_scale(),
        input_scale
    );
    println!(
        "  W quantization        {}",
        ErrorStats::new(wd.iter().map(|&x| x as f64), w.iter().map(|x| x.to_f64()))
    );
    println!("GEMM outputs vs the bf16 GEMM (f64-accumulated references):");
    println!(
        "  W4A16 (NVFP4 W, bf16 A)  {}",
        ErrorStats::new(w4a16.values.iter().copied(), exact.values.iter().copied())
    );
    println!(
        "  W4A4  (NVFP4 W and A)    {}",
        ErrorStats::new(w4a4.values.iter().copied(), exact.values.iter().copied())
    );
    println!(
        "CPU ({} threads), median of {reps}:",
        rayon::current_num_threads()
    );
    println!(
        "  quantize   bf16 -> NVFP4  {:7.2} ms  {:6.2} GB/s of bf16 input",
        tq * 1e3,
        bytes_bf16 / tq / 1e9
    );
    println!(
        "  dequantize NVFP4 -> bf16  {:7.2} ms  {:6.2} GB/s of bf16 output",
        td * 1e3,
        bytes_bf16 / td / 1e9
    );
    Ok(())
}
