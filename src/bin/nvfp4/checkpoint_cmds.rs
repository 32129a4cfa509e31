//! `nvfp4 quantize | inspect | dequantize | convert`: whole safetensors checkpoints.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use nvfp4::QuantizeOptions;
use nvfp4::checkpoint::{self, Checkpoint, Flavour, QuantizeJob, Selection};
use nvfp4::format::Dtype;

/// `nvfp4 quantize INPUT -o OUTPUT`.
#[derive(Args)]
pub struct QuantizeArgs {
    /// A .safetensors file, a sharded model's index, or a model directory.
    input: PathBuf,
    /// The output: a file for a file input, a directory for a directory or index.
    #[arg(short, long)]
    output: PathBuf,
    /// Keep tensors (or modules) matching this glob unquantized (repeatable; wins over --include).
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// Quantize tensors (or modules) matching this glob even where the default keeps them (repeatable).
    #[arg(long, value_name = "GLOB")]
    include: Vec<String>,
    /// Quantize on CUDA device 0 (same bytes as the CPU).
    #[arg(long)]
    gpu: bool,
    /// Write the per-layer error report as JSON.
    #[arg(long, value_name = "FILE.json")]
    report: Option<PathBuf>,
    /// Print what would be quantized and kept, and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Replace an existing output.
    #[arg(long)]
    force: bool,
}

/// `nvfp4 inspect FILE`.
#[derive(Args)]
pub struct InspectArgs {
    /// A .safetensors file, a sharded model's index, or a model directory.
    file: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

/// Output dtype of `dequantize`.
#[derive(Clone, Copy, ValueEnum)]
pub enum OutDtype {
    /// bfloat16.
    Bf16,
    /// IEEE binary16.
    F16,
    /// IEEE binary32.
    F32,
}

/// `nvfp4 dequantize INPUT -o OUTPUT`.
#[derive(Args)]
pub struct DequantizeArgs {
    /// An NVFP4 checkpoint (any flavour).
    input: PathBuf,
    /// The dense output.
    #[arg(short, long)]
    output: PathBuf,
    /// Element type of the dequantized weights.
    #[arg(long, value_enum, default_value = "bf16")]
    dtype: OutDtype,
    /// Replace an existing output.
    #[arg(long)]
    force: bool,
}

/// Target flavour of `convert`.
#[derive(Clone, Copy, ValueEnum)]
pub enum ToFlavour {
    /// NVIDIA ModelOpt / Hugging Face.
    Modelopt,
    /// compressed-tensors `nvfp4-pack-quantized`.
    CompressedTensors,
    /// ComfyUI `comfy_quant`.
    Comfy,
}

/// `nvfp4 convert INPUT -o OUTPUT --to FLAVOUR`.
#[derive(Args)]
pub struct ConvertArgs {
    /// An NVFP4 checkpoint (any flavour).
    input: PathBuf,
    /// The output.
    #[arg(short, long)]
    output: PathBuf,
    /// The flavour to write.
    #[arg(long, value_enum)]
    to: ToFlavour,
    /// Replace an existing output.
    #[arg(long)]
    force: bool,
}

fn open(path: &Path) -> anyhow::Result<Checkpoint> {
    Checkpoint::open(path).with_context(|| format!("reading {}", path.display()))
}

/// A bytes/s progress bar on stderr, hidden when stderr is not a terminal.
fn progress_bar(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// The `--gpu` quantizer on device 0, its buffers sized for the largest tensor to quantize so that
/// allocating and pinning stay out of the timed run.
fn gpu_quantizer(ck: &Checkpoint, selection: &Selection) -> anyhow::Result<nvfp4::ops::GpuQuantizer> {
    let dev = nvfp4::cuda::Device::new(0)
        .context("--gpu needs a CUDA device (device 0); run without --gpu to quantize on the CPU")?;
    if !dev.has_kernels() {
        bail!("--gpu: this nvfp4 build holds no GPU kernels (nvcc was not found when it was built)");
    }
    let mut q = nvfp4::ops::GpuQuantizer::new(dev).context("--gpu: setting up the GPU quantizer")?;
    let (mut input, mut output) = (0usize, 0usize);
    // A plan error is reported by the quantize itself, with its context.
    let plan = checkpoint::plan_quantize(ck, selection).unwrap_or_default();
    for d in plan.iter().filter(|d| d.quantize) {
        if let Some((_, e)) = ck.get(&d.name) {
            let (n, k) = (e.shape[0], e.shape[1]);
            input = input.max(e.len());
            output = output.max(n * k / 2 + n * k / 16);
        }
    }
    q.reserve(input, output)
        .context("--gpu: allocating device and pinned buffers for the largest tensor")?;
    Ok(q)
}

/// `nvfp4 quantize`.
pub fn quantize(a: &QuantizeArgs) -> anyhow::Result<()> {
    let ck = open(&a.input)?;
    let selection = Selection {
        include: a.include.clone(),
        exclude: a.exclude.clone(),
    };
    if a.dry_run {
        let plan = checkpoint::plan_quantize(&ck, &selection)?;
        for d in &plan {
            println!(
                "{:<9} {:<60} {}",
                if d.quantize { "quantize" } else { "keep" },
                d.name,
                d.reason
            );
        }
        let q = plan.iter().filter(|d| d.quantize).count();
        println!("{q} tensors to quantize, {} to keep", plan.len() - q);
        return Ok(());
    }
    let mut gpu = if a.gpu {
        Some(gpu_quantizer(&ck, &selection)?)
    } else {
        None
    };
    let job = QuantizeJob {
        selection,
        options: QuantizeOptions::default(),
        force: a.force,
        measure: true,
    };
    let total = ck.data_bytes();
    let pb = progress_bar(total, "quantize");
    let t0 = Instant::now();
    let summary = match &mut gpu {
        Some(g) => checkpoint::quantize_checkpoint_with(&ck, &a.output, &job, g, &|b| pb.inc(b)),
        None => {
            checkpoint::quantize_checkpoint(&ck, &a.output, &job, &checkpoint::cpu_quantizer, &|b| pb.inc(b))
        }
    }
    .with_context(|| format!("quantizing {} to {}", a.input.display(), a.output.display()))?;
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{:<60} {:>16} {:>10} {:>9} {:>11}",
        "layer", "shape", "rel RMSE", "SNR dB", "max |err|"
    );
    for l in &summary.layers {
        println!(
            "{:<60} {:>16} {:>10.5} {:>9.2} {:>11.4e}",
            l.name,
            format!("{}x{}", l.shape[0], l.shape[1]),
            l.rel_rmse,
            l.snr_db,
            l.max_abs
        );
    }
    println!(
        "{} tensors quantized, {} copied; {:.2} GB read, {:.2} GB written in {:.2} s ({:.2} GB/s of input){}",
        summary.quantized,
        summary.copied,
        total as f64 / 1e9,
        summary.bytes_written as f64 / 1e9,
        secs,
        total as f64 / 1e9 / secs.max(1e-9),
        if a.gpu { " on the GPU" } else { "" }
    );
    let stages = gpu.as_ref().map(|g| g.stages());
    if let Some(st) = &stages {
        // The slowest stage (lowest GB/s while busy) bounds the run unless the waits are large.
        println!(
            "GPU stages: {}; end to end {:.2} GB/s",
            st.summary(),
            total as f64 / 1e9 / secs.max(1e-9)
        );
    }
    if let Some(path) = &a.report {
        let json = serde_json::json!({
            "input": a.input.display().to_string(),
            "output": a.output.display().to_string(),
            "quantizer": if a.gpu { "gpu" } else { "cpu" },
            "seconds": secs,
            "input_bytes": total,
            "gb_per_s": total as f64 / 1e9 / secs.max(1e-9),
            "stages": stages.map(|s| s.to_json()),
            "layers": summary.layers.iter().map(|l| l.to_json()).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `nvfp4 inspect`.
pub fn inspect(a: &InspectArgs) -> anyhow::Result<()> {
    let ck = open(&a.file)?;
    let i = checkpoint::inspect(&ck).with_context(|| format!("inspecting {}", a.file.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&i.to_json())?);
        return Ok(());
    }
    println!(
        "flavour: {}   files: {}   tensors: {}   bytes: {}",
        i.flavour.name(),
        i.files.len(),
        i.tensors.len(),
        i.total_bytes()
    );
    println!("{:<64} {:<8} {:>18} {:>12}", "tensor", "dtype", "shape", "bytes");
    for (n, d, s, b) in &i.tensors {
        println!("{n:<64} {d:<8} {:>18} {b:>12}", format!("{s:?}"));
    }
    if !i.layers.is_empty() {
        println!();
        println!(
            "{:<56} {:>14} {:>12} {:>22} {:>6}",
            "NVFP4 layer", "shape", "global", "block scales", "zero"
        );
        for l in &i.layers {
            println!(
                "{:<56} {:>14} {:>12.5e} {:>22} {:>6}",
                l.prefix,
                format!("{}x{}", l.shape[0], l.shape[1]),
                l.global_scale,
                format!("{:.4e}..{:.4e}", l.block_scale_range.0, l.block_scale_range.1),
                l.zero_blocks
            );
        }
    }
    Ok(())
}

/// `nvfp4 dequantize`.
pub fn dequantize(a: &DequantizeArgs) -> anyhow::Result<()> {
    let ck = open(&a.input)?;
    let dtype = match a.dtype {
        OutDtype::Bf16 => Dtype::Bf16,
        OutDtype::F16 => Dtype::F16,
        OutDtype::F32 => Dtype::F32,
    };
    let pb = progress_bar(ck.data_bytes(), "dequantize");
    let s = checkpoint::dequantize_checkpoint(&ck, &a.output, dtype, a.force, &|b| pb.inc(b))
        .with_context(|| format!("dequantizing {} to {}", a.input.display(), a.output.display()))?;
    pb.finish_and_clear();
    println!(
        "{} layers dequantized, {} tensors copied, {} bytes written",
        s.quantized, s.copied, s.bytes_written
    );
    Ok(())
}

/// `nvfp4 convert`.
pub fn convert(a: &ConvertArgs) -> anyhow::Result<()> {
    let ck = open(&a.input)?;
    let to = match a.to {
        ToFlavour::Modelopt => Flavour::ModelOpt,
        ToFlavour::CompressedTensors => Flavour::CompressedTensors,
        ToFlavour::Comfy => Flavour::Comfy,
    };
    let from = checkpoint::detect(&ck);
    if from == Flavour::Dense {
        bail!("{} holds no NVFP4 layers; quantize it first", a.input.display());
    }
    let pb = progress_bar(ck.data_bytes(), "convert");
    let s = checkpoint::convert_checkpoint(&ck, &a.output, to, a.force, &|b| pb.inc(b))
        .with_context(|| format!("converting {} to {}", a.input.display(), a.output.display()))?;
    pb.finish_and_clear();
    println!(
        "{} layers converted {} -> {}, {} tensors copied, {} bytes written",
        s.quantized,
        from.name(),
        to.name(),
        s.copied,
        s.bytes_written
    );
    Ok(())
}
