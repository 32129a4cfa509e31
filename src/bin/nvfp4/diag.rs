//! `nvfp4 diag`: prints [`nvfp4::diag::run`]'s report as tables, or as JSON with `--json`.

use clap::Args;
use nvfp4::diag::{self, DiagModel, DiagOptions, DiagReport};

/// Options of `nvfp4 diag`.
#[derive(Args)]
pub struct DiagArgs {
    /// Print the report as JSON (keys documented in `nvfp4::diag`).
    #[arg(long)]
    pub json: bool,
    /// GPU ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Model of the IO-versus-compute section: 3b or 7b (SeedVR2), or a safetensors checkpoint FILE.
    #[arg(long, default_value = "7b")]
    pub model: String,
    /// VRAM budget in GB for blocks_to_swap (default: 90% of the GPU's memory).
    #[arg(long)]
    pub vram_budget: Option<f64>,
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |x| x.to_string())
}

fn print_human(r: &DiagReport) {
    let s = &r.system;
    println!("system");
    let rows: Vec<(&str, String)> = vec![
        ("GPU", opt(s.gpu_name.clone()).to_string()),
        ("compute capability", opt(s.compute_capability.clone())),
        ("SMs", opt(s.sm_count)),
        (
            "memory",
            opt(s
                .memory_bytes
                .map(|b| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64))),
        ),
        ("driver", opt(s.driver_version.clone())),
        ("CUDA (driver API)", opt(s.cuda_driver_api.clone())),
        ("PCIe link", opt(s.pcie_link.clone())),
        ("nvcc (build)", s.nvcc.clone()),
        ("fatbin targets", s.fatbin_targets.join(", ")),
        ("native image", opt(s.native_image)),
    ];
    for (k, v) in rows {
        println!("  {k:<20} {v}");
    }
    if let Some(why) = &r.no_gpu_reason {
        println!("  no GPU: {why}");
    }
    println!("kernels");
    for k in &s.kernels {
        println!("  {:<38} {}\n  {:<38}   why: {}", k.op, k.family, "", k.why);
    }
    println!("self-test");
    for c in &r.selftest {
        println!(
            "  {:<20} {:<4} {}  {}",
            c.name,
            c.device,
            c.status.as_str(),
            c.detail
        );
    }
    if let Some(t) = &r.transfers {
        println!("transfers ({} MiB copies)", t.bytes >> 20);
        println!("  {:<10} {:>12} {:>12}", "host", "H2D GB/s", "D2H GB/s");
        println!(
            "  {:<10} {:>12.1} {:>12.1}",
            "pinned", t.pinned_h2d_gbs, t.pinned_d2h_gbs
        );
        println!(
            "  {:<10} {:>12.1} {:>12.1}",
            "pageable", t.pageable_h2d_gbs, t.pageable_d2h_gbs
        );
        println!(
            "  pinned pool cap {:.1} GiB",
            t.pool_cap_bytes as f64 / (1u64 << 30) as f64
        );
    }
    if let Some(o) = &r.overlap {
        println!(
            "overlap: copy {:.3} ms, GEMM {:.3} ms, both {:.3} ms -> both / max = {:.3} (1.0 = full overlap)",
            o.copy_ms, o.gemm_ms, o.both_ms, o.ratio
        );
    }
    if let Some(m) = &r.model {
        println!(
            "model {} ({} blocks, {} tokens, VRAM budget {})",
            m.name,
            m.blocks,
            m.tokens,
            opt(m.vram_budget_bytes.map(|b| format!("{:.1} GB", b as f64 / 1e9)))
        );
        println!(
            "  {:<6} {:>10} {:>10} {:>11} {:>6} {:>6} {:>10} {:>10}",
            "dtype", "block MB", "upload ms", "compute ms", "depth", "swap", "pool GB", "pass ms"
        );
        let f = |v: Option<f64>| opt(v.map(|x| format!("{x:.2}")));
        for d in &m.dtypes {
            println!(
                "  {:<6} {:>10.1} {:>10} {:>11} {:>6} {:>6} {:>10} {:>10}",
                d.dtype,
                d.block_bytes as f64 / 1e6,
                f(d.upload_ms),
                f(d.compute_ms),
                opt(d.prefetch_depth),
                opt(d.blocks_to_swap),
                f(d.pool_bytes.map(|b| b as f64 / 1e9)),
                f(d.pass_ms)
            );
        }
    }
    for w in &r.warnings {
        println!("warning: {w}");
    }
    println!("{}", if r.passed() { "PASS" } else { "FAIL" });
}

pub fn run(a: &DiagArgs) -> anyhow::Result<()> {
    let model = match a.model.as_str() {
        "3b" => DiagModel::Seedvr2_3b,
        "7b" => DiagModel::Seedvr2_7b,
        file => DiagModel::File(file.into()),
    };
    if let Some(gb) = a.vram_budget {
        anyhow::ensure!(
            gb.is_finite() && gb > 0.0,
            "--vram-budget must be a positive number of GB"
        );
    }
    let opts = DiagOptions {
        device: a.device,
        model,
        vram_budget: a.vram_budget.map(|gb| (gb * 1e9) as usize),
        break_kernel: std::env::var("NVFP4_DIAG_BREAK").ok().filter(|s| !s.is_empty()),
        ..Default::default()
    };
    let r = diag::run(&opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r.to_json())?);
    } else {
        print_human(&r);
    }
    if !r.passed() {
        std::process::exit(1);
    }
    Ok(())
}
