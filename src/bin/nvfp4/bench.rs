//! `nvfp4 bench`: throughput, each figure beside a baseline measured in the same run and the limit.

use clap::{Args, Subcommand};
use half::{bf16, f16};
use nvfp4::format::Element;
use nvfp4::quant::{self, QuantizeOptions};
use nvfp4::reference::synthetic::Rng;

use crate::stats::median_secs;

/// What to measure.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// CPU quantize and dequantize (rayon), against a memcpy of the same bytes.
    Cpu(CpuArgs),
    /// GPU quantize and dequantize, against a device-to-device copy of the same bytes.
    Quantize(GpuArgs),
    /// Host-to-device and device-to-host copies from pinned memory of each flag set and from pageable
    /// memory.
    Pinned(PinnedArgs),
    /// NVFP4 GEMM/GEMV (W4A16, W4A4) against cuBLAS bf16 over a sweep of M and shapes.
    Gemm(crate::bench_gemm::GemmArgs),
    /// Weight streaming (BlockSwap) of a SeedVR2-7B-shaped model: pooled pinned H2D against the
    /// pinned peak, streamed pass time against max(upload, compute), NVFP4 against bf16, pageable.
    Offload(OffloadArgs),
}

/// Model size and repetitions of the offload benchmark.
#[derive(Args)]
pub struct OffloadArgs {
    /// Blocks streamed (SeedVR2-7B has 36; all are swapped).
    #[arg(long, default_value_t = 8)]
    pub blocks: usize,
    /// Divide every linear layer's dimensions by this (1 = the real shapes).
    #[arg(long, default_value_t = 1)]
    pub shrink: usize,
    /// Device slots in the ring.
    #[arg(long, default_value_t = 2)]
    pub depth: usize,
    /// Timed passes per configuration (after one warm-up pass that fills the pinned pool).
    #[arg(long, default_value_t = 2)]
    pub passes: usize,
    /// Dequantize repetitions per block in the compute-bound configuration.
    #[arg(long, default_value_t = 24)]
    pub compute_reps: usize,
    /// Repetitions of the pinned-peak copy.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Device ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
}

/// Shapes and repetitions of the GPU quantize benchmark.
#[derive(Args)]
pub struct GpuArgs {
    /// Shapes as ROWSxCOLS, comma-separated.
    #[arg(long, default_value = "8192x8192,28672x8192")]
    pub shapes: String,
    /// Timed repetitions per figure (the time reported is their mean, from CUDA events).
    #[arg(long, default_value_t = 20)]
    pub reps: usize,
    /// Device ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
}

/// Size and repetitions of the pinned-memory benchmark.
#[derive(Args)]
pub struct PinnedArgs {
    /// Bytes per copy, in MiB.
    #[arg(long, default_value_t = 256)]
    pub mib: usize,
    /// Timed repetitions.
    #[arg(long, default_value_t = 10)]
    pub reps: usize,
    /// Device ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
}

/// Shape and repetitions of the CPU benchmark.
#[derive(Args)]
pub struct CpuArgs {
    /// Rows of the tensor.
    #[arg(long, default_value_t = 8192)]
    pub rows: usize,
    /// Columns (K), a multiple of 16.
    #[arg(long, default_value_t = 8192)]
    pub cols: usize,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
}

pub fn run(cmd: &BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Cpu(a) => cpu(a),
        BenchCommand::Quantize(a) => crate::bench_gpu::quantize(a),
        BenchCommand::Pinned(a) => crate::bench_gpu::pinned(a),
        BenchCommand::Gemm(a) => crate::bench_gemm::gemm(a),
        BenchCommand::Offload(a) => crate::bench_offload::offload(a),
    }
}

fn cpu(a: &CpuArgs) -> anyhow::Result<()> {
    let (rows, cols) = (a.rows, a.cols);
    anyhow::ensure!(
        cols % 16 == 0 && rows > 0 && cols > 0,
        "--cols must be a positive multiple of 16"
    );
    let n = rows * cols;
    println!(
        "CPU benchmark, [{rows}, {cols}], {} rayon threads, median of {}",
        rayon::current_num_threads(),
        a.reps
    );
    let x = Rng::new(1).normal_vec(n, 1.0);
    // Baseline: a parallel copy of the input's bytes, the floor any single pass over the data pays.
    let src = vec![0u8; n * 2];
    let mut dst = vec![1u8; n * 2];
    let t_copy = median_secs(a.reps, || {
        use rayon::prelude::*;
        dst.par_chunks_mut(1 << 20)
            .zip(src.par_chunks(1 << 20))
            .for_each(|(d, s)| d.copy_from_slice(s));
    });
    let copy_gbs = (n * 2) as f64 * 2.0 / t_copy / 1e9;
    println!(
        "  memcpy of the bf16 bytes      {:8.2} ms  {:6.2} GB/s read+write (baseline)",
        t_copy * 1e3,
        copy_gbs
    );
    bench_type::<bf16>(&x, rows, cols, a.reps, copy_gbs)?;
    bench_type::<f16>(&x, rows, cols, a.reps, copy_gbs)?;
    bench_type::<f32>(&x, rows, cols, a.reps, copy_gbs)?;
    Ok(())
}

fn bench_type<T: Element>(
    x: &[f32],
    rows: usize,
    cols: usize,
    reps: usize,
    copy_gbs: f64,
) -> anyhow::Result<()> {
    let data: Vec<T> = x.iter().map(|&v| T::from_f32(v)).collect();
    let in_bytes = (data.len() * T::DTYPE.size()) as f64;
    let opts = QuantizeOptions::default();
    let q = quant::quantize("bench", &data, rows, cols, &opts)?;
    let tq = median_secs(reps, || {
        let _ = quant::quantize("bench", &data, rows, cols, &opts);
    });
    let ta = median_secs(reps, || {
        std::hint::black_box(quant::amax(&data));
    });
    let mut out = vec![T::from_f32(0.0); data.len()];
    let td = median_secs(reps, || {
        let _ = quant::dequantize_into(&q, &mut out);
    });
    // Bytes moved: quantize reads the input twice (amax, then blocks) and writes 9/16 byte per element.
    let moved_q = 2.0 * in_bytes + q.size_bytes() as f64;
    let moved_d = in_bytes + q.size_bytes() as f64;
    let name = format!("{:?}", T::DTYPE).to_lowercase();
    println!(
        "  quantize   {name:>4} -> NVFP4     {:8.2} ms  {:6.2} GB/s of input  ({:.2} of memcpy for its {:.0} MB moved)",
        tq * 1e3,
        in_bytes / tq / 1e9,
        moved_q / tq / 1e9 / copy_gbs,
        moved_q / 1e6
    );
    println!(
        "    of which the amax pass    {:8.2} ms  {:6.2} GB/s of input",
        ta * 1e3,
        in_bytes / ta / 1e9
    );
    println!(
        "  dequantize NVFP4 -> {name:>4}     {:8.2} ms  {:6.2} GB/s of output ({:.2} of memcpy for its {:.0} MB moved)",
        td * 1e3,
        in_bytes / td / 1e9,
        moved_d / td / 1e9 / copy_gbs,
        moved_d / 1e6
    );
    Ok(())
}
