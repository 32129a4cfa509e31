//! The `nvfp4` command-line tool: the demo, benchmarks and diagnostics of the nvfp4 crate.

mod bench;
mod bench_gpu;
mod bench_offload;
mod demo;
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
    /// Quantize a synthetic transformer layer and report NVFP4's error and the crate's throughput.
    Demo(demo::DemoArgs),
    /// Measure throughput against a baseline measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Bench(cmd) => bench::run(&cmd),
    }
}
