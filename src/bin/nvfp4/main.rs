//! The `nvfp4` command-line tool: checkpoints (quantize, inspect, dequantize, convert), the demo,
//! benchmarks and diagnostics of the nvfp4 crate.

mod bench;
mod bench_gemm;
mod bench_gpu;
mod bench_offload;
mod checkpoint_cmds;
mod demo;
mod diag;
mod stats;

use clap::{Parser, Subcommand};

/// NVFP4 (E2M1 + E4M3 block scales) for Rust inference engines.
#[derive(Parser)]
#[command(name = "nvfp4", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a small seeded transformer through NVFP4 (GPU if present, else CPU) against its bf16 reference.
    Demo(demo::DemoArgs),
    /// Check this machine: system, kernel self-test, transfers, overlap, IO vs compute for a model.
    Diag(diag::DiagArgs),
    /// Measure throughput against a baseline measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Quantize a bf16/f16/f32 safetensors checkpoint to NVFP4 (ModelOpt/HF layout).
    Quantize(checkpoint_cmds::QuantizeArgs),
    /// Show a checkpoint's tensors, flavour and per-layer scale ranges.
    Inspect(checkpoint_cmds::InspectArgs),
    /// Dequantize an NVFP4 checkpoint (any flavour) back to bf16/f16/f32.
    Dequantize(checkpoint_cmds::DequantizeArgs),
    /// Convert an NVFP4 checkpoint between ModelOpt, compressed-tensors and ComfyUI.
    Convert(checkpoint_cmds::ConvertArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Diag(a) => diag::run(&a),
        Command::Bench(cmd) => bench::run(&cmd),
        Command::Quantize(a) => checkpoint_cmds::quantize(&a),
        Command::Inspect(a) => checkpoint_cmds::inspect(&a),
        Command::Dequantize(a) => checkpoint_cmds::dequantize(&a),
        Command::Convert(a) => checkpoint_cmds::convert(&a),
    }
}
