//! `nvfp4 bench gemm`: the NVFP4 GEMM kernels against cuBLAS bf16, and cuBLASLt FP8 (E4M3 x E4M3 ->
//! bf16) where the GPU has it (sm_89 and newer), on the same shapes in the same process. Each figure is
//! the median of repeated CUDA-event timings with L2 flushed before each, set against the bandwidth of
//! a device-to-device copy measured in the same run as the memory limit.
//!
//! The flush writes a 256 MiB buffer and then reads it back, so L2 starts each run full of clean lines,
//! as it is in an engine where the previous layer read its weights. A write alone (`--dirty-flush`, the
//! usual zero-fill of benchmark harnesses) leaves up to the whole L2 dirty, and a run then pays the
//! write-back of every line it evicts: up to its own read traffic again for a weight set smaller than
//! L2 (a 8192² NVFP4 layer is 36 MB), a smaller share for cuBLAS's 134 MB of bf16.

use std::fmt::Write as _;

use anyhow::Context;
use clap::Args;
use cudarc::driver::CudaSlice;
use half::bf16;
use nvfp4::cuda::{CublasBf16, CublasFp8, Device, GpuTimer, alloc_zeros, checksum, upload};
use nvfp4::format::Dtype;
use nvfp4::ops::{DeviceNvfp4, GemmKernel, GemmOp, GemmPlan, GemmRoute, GemmSpec};
use nvfp4::quant::{QuantizeOptions, quantize};

/// Sweep of M and shapes.
#[derive(Args)]
pub struct GemmArgs {
    /// Values of M (rows of activations), comma-separated.
    #[arg(long, default_value = "1,2,4,8,16,32,64,128,256,1024,4096")]
    pub m: String,
    /// Weight shapes as NxK (output features x input features), comma-separated: the issue's 8192²,
    /// 28672x8192, 8192x28672 and the SeedVR2 7B / 3B DiT linears.
    #[arg(
        long,
        default_value = "8192x8192,28672x8192,8192x28672,9216x3072,3072x3072,12288x3072,3072x12288,7680x2560,2560x2560,10240x2560,2560x10240"
    )]
    pub shapes: String,
    /// Shapes on which W4A4 is timed too (empty: none).
    #[arg(long, default_value = "8192x8192")]
    pub w4a4_shapes: String,
    /// Split-K factors to time W4A16 with as well, each forced, beside the plan's own choice
    /// (comma-separated; empty: only the plan's choice). For tuning the split heuristic.
    #[arg(long, default_value = "")]
    pub splits: String,
    /// W4A16 kernels to time as well, each forced, beside the plan's own choice (comma-separated, of
    /// m16, m64, wg64, wg128, wg256 and cublas; empty: only the plan's choice). A kernel this GPU cannot
    /// run, or that does not take the shape, is reported and skipped.
    #[arg(long, default_value = "")]
    pub kernels: String,
    /// Timed repetitions per figure (the median is reported).
    #[arg(long, default_value_t = 15)]
    pub reps: usize,
    /// Keep L2 warm between repetitions (by default a 256 MiB write and read-back evict it before each).
    #[arg(long)]
    pub no_flush: bool,
    /// Flush L2 with the write only, leaving it dirty (see the module docs).
    #[arg(long, conflicts_with = "no_flush")]
    pub dirty_flush: bool,
    /// Write every figure as JSON to this file.
    #[arg(long)]
    pub json: Option<String>,
    /// Draw time against M (ours and cuBLAS, one panel per shape) as SVG to this file.
    #[arg(long)]
    pub svg: Option<String>,
    /// Device ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
}

fn list(s: &str) -> anyhow::Result<Vec<usize>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| p.trim().parse().with_context(|| format!("`{p}` is not a number")))
        .collect()
}

/// A `--kernels` entry: its name, and the `kernel` and `cublas` overrides it puts in a spec.
type ForcedKernel = (String, Option<GemmKernel>, Option<bool>);

/// `--kernels`: each name as the override it puts in a spec.
fn kernels(s: &str) -> anyhow::Result<Vec<ForcedKernel>> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let k = match p {
                "m16" => Some(GemmKernel::M16),
                "m64" => Some(GemmKernel::M64),
                "wg64" => Some(GemmKernel::Wg64),
                "wg128" => Some(GemmKernel::Wg128),
                "wg256" => Some(GemmKernel::Wg256),
                "cublas" => None,
                _ => anyhow::bail!("--kernels: `{p}` is none of m16, m64, wg64, wg128, wg256, cublas"),
            };
            Ok((p.to_string(), k, k.is_none().then_some(true)))
        })
        .collect()
}

fn shapes(s: &str) -> anyhow::Result<Vec<(usize, usize)>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (n, k) = p
                .trim()
                .split_once('x')
                .with_context(|| format!("shape `{p}` is not NxK"))?;
            Ok((n.parse()?, k.parse()?))
        })
        .collect()
}

/// Fast filler (xorshift): the values do not change the timing, only their count does.
fn bits(n: usize, seed: u64) -> Vec<u16> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u16
        })
        .collect()
}

/// An E4M3 byte from the low 8 of 16 random bits, NaN (0x7F, 0xFF) moved to the largest finite magnitude.
fn fp8_of(r: u16) -> u8 {
    let b = r as u8;
    if b & 0x7F == 0x7F { b - 1 } else { b }
}

/// A bf16 in ±[1/8, 2) from 16 random bits.
fn bf16_of(r: u16) -> bf16 {
    bf16::from_bits((r & 0x8000) | ((124 + (r & 3)) << 7) | ((r >> 2) & 0x7F))
}

struct Row {
    op: &'static str,
    n: usize,
    k: usize,
    m: usize,
    ours_us: f64,
    cublas_us: f64,
    /// cuBLASLt FP8 (E4M3 x E4M3 -> bf16) on the same shape, where the GPU has it.
    fp8_us: Option<f64>,
    bytes: f64,
    copy_bw: f64,
    /// The plan's route and kernel in a few words (the table's last column).
    route: String,
    /// A `--splits` or `--kernels` row, beside the plan's own choice (left out of the plot).
    forced: bool,
    explain: String,
}

/// How L2 is evicted before each timed run: a buffer written, then read back unless `dirty`, into
/// `sums` (the read's otherwise unused result).
struct Flush {
    buf: CudaSlice<u8>,
    sums: CudaSlice<u64>,
    dirty: bool,
}

/// Median of `reps` event timings of `f`, L2 flushed before each unless `flush` is None.
fn median_us(
    dev: &Device,
    flush: &mut Option<Flush>,
    reps: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    let s = dev.stream();
    f()?;
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        if let Some(fl) = flush.as_mut() {
            s.memset_zeros(&mut fl.buf)?;
            if !fl.dirty {
                checksum(dev, s, &fl.buf, &mut fl.sums, 0)?;
            }
        }
        let timer = GpuTimer::start(s)?;
        f()?;
        t.push(timer.stop_ms(s)? as f64 * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

pub fn gemm(a: &GemmArgs) -> anyhow::Result<()> {
    let dev = Device::new(a.device).context("opening the GPU")?;
    let i = dev.info();
    println!(
        "device {}: {} ({}, {} SMs), median of {} runs each, L2 {}",
        i.ordinal,
        i.name,
        i.arch(),
        i.sm_count,
        a.reps,
        if a.no_flush {
            "warm"
        } else if a.dirty_flush {
            "flushed before each run by a 256 MiB write (left dirty)"
        } else {
            "flushed before each run by a 256 MiB write and read-back (clean)"
        }
    );
    let s = dev.stream().clone();
    let ms = list(&a.m)?;
    let shapes = shapes(&a.shapes)?;
    let a4_shapes = shapes_or_empty(&a.w4a4_shapes)?;
    let forced_splits = list(&a.splits)?;
    let forced_kernels = kernels(&a.kernels)?;
    if forced_splits.contains(&0) {
        anyhow::bail!("--splits: a split-K factor is at least 1");
    }
    let max_m = ms.iter().copied().max().unwrap_or(1);
    let max_elems = shapes
        .iter()
        .map(|&(n, k)| (n * k).max(max_m * k).max(max_m * n))
        .max()
        .unwrap_or(0);
    let pool = bits(max_elems, 0x5EED);
    let mut flush = if a.no_flush {
        None
    } else {
        Some(Flush {
            buf: alloc_zeros::<u8>(&s, "L2 flush", 256 << 20)?,
            sums: alloc_zeros::<u64>(&s, "L2 flush sums", 1)?,
            dirty: a.dirty_flush,
        })
    };

    // The memory limit: a device-to-device copy, counting its read and its write.
    let copy_bytes = 256usize << 20;
    let src = alloc_zeros::<u8>(&s, "copy source", copy_bytes)?;
    let mut dst = alloc_zeros::<u8>(&s, "copy destination", copy_bytes)?;
    let t_copy = median_us(&dev, &mut flush, a.reps, || Ok(s.memcpy_dtod(&src, &mut dst)?))?;
    let copy_bw = 2.0 * copy_bytes as f64 / (t_copy * 1e-6);
    println!(
        "D2D copy of 256 MiB: {t_copy:.1} us, {:.0} GB/s (read + write): the bandwidth limit below",
        copy_bw / 1e9
    );
    drop((src, dst));

    let blas = CublasBf16::new(&s)?;
    let mut rows = Vec::new();
    // Whether the FP8 baseline runs here; the first refusal is printed, later shapes skip it quietly.
    let mut fp8_ok = true;
    println!(
        "\n{:<6} {:>12} {:>5} {:>10} {:>10} {:>7} {:>9} {:>7} {:>8} {:>6} {:>8}  plan",
        "op", "N x K", "M", "ours us", "cuBLAS us", "ratio", "FP8 us", "vs FP8", "GB/s", "of cp", "TFLOPS"
    );
    for &(n, k) in &shapes {
        anyhow::ensure!(k % 16 == 0, "K of {n}x{k} must be a multiple of 16");
        let w_bf16 = upload(
            &s,
            "W bf16",
            &pool[..n * k].iter().map(|&r| bf16_of(r)).collect::<Vec<_>>(),
        )?;
        let codes: Vec<u8> = pool[..n * k / 4].iter().flat_map(|r| r.to_le_bytes()).collect();
        let scales: Vec<u8> = pool[..n * k / 16]
            .iter()
            .map(|&r| 0x30 + (r & 0xF) as u8)
            .collect();
        let t = nvfp4::Nvfp4Tensor::from_parts(
            "W",
            n,
            k,
            codes,
            scales,
            nvfp4::format::ScaleLayout::Linear,
            1.0 / 64.0,
        )?;
        let w = DeviceNvfp4::upload(&s, &t)?;
        let w_fp8 = if fp8_ok {
            Some(upload(
                &s,
                "W e4m3",
                &pool[..n * k].iter().map(|&r| fp8_of(r)).collect::<Vec<_>>(),
            )?)
        } else {
            None
        };
        let w_bytes = (n * k / 2 + n * k / 16) as f64;
        for &m in &ms {
            let a_host: Vec<bf16> = pool[..m * k].iter().map(|&r| bf16_of(r.rotate_left(5))).collect();
            let act = upload(&s, "A", &a_host)?;
            let mut out = alloc_zeros::<bf16>(&s, "out", m * n)?;
            let mut plan = GemmPlan::new(&dev, &s, &GemmSpec::w4a16(m, n, k))?;
            let ours = median_us(&dev, &mut flush, a.reps, || {
                Ok(plan.w4a16(&dev, &s, &act, &w, None, &mut out)?)
            })?;
            let cublas = median_us(&dev, &mut flush, a.reps, || {
                Ok(blas.gemm(m, n, k, &act, &w_bf16, &mut out)?)
            })?;
            let fp8 = match (&w_fp8, fp8_ok.then(|| CublasFp8::new(&s, m, n, k))) {
                (Some(w8), Some(Ok(g))) => {
                    let a8 = upload(
                        &s,
                        "A e4m3",
                        &pool[..m * k]
                            .iter()
                            .map(|&r| fp8_of(r.rotate_left(5)))
                            .collect::<Vec<_>>(),
                    )?;
                    Some(median_us(&dev, &mut flush, a.reps, || {
                        Ok(g.gemm(&a8, w8, 1.0, &mut out)?)
                    })?)
                }
                (_, Some(Err(e))) => {
                    println!("cuBLASLt FP8 baseline: skipped from here on ({e})");
                    fp8_ok = false;
                    None
                }
                _ => None,
            };
            let base = (cublas, fp8);
            let bytes = w_bytes + (m * k * 2 + m * n * 2) as f64;
            rows.push(report("W4A16", n, k, m, ours, base, bytes, copy_bw, &plan));
            for &split in &forced_splits {
                let spec = GemmSpec {
                    splits: Some(split),
                    ..GemmSpec::w4a16(m, n, k)
                };
                let mut forced = GemmPlan::new(&dev, &s, &spec)?;
                let t = median_us(&dev, &mut flush, a.reps, || {
                    Ok(forced.w4a16(&dev, &s, &act, &w, None, &mut out)?)
                })?;
                rows.push(Row {
                    forced: true,
                    ..report("W4A16", n, k, m, t, base, bytes, copy_bw, &forced)
                });
            }
            for (name, kernel, cublas_route) in &forced_kernels {
                let spec = GemmSpec {
                    kernel: *kernel,
                    cublas: *cublas_route,
                    ..GemmSpec::w4a16(m, n, k)
                };
                let mut forced = match GemmPlan::new(&dev, &s, &spec) {
                    Ok(p) => p,
                    Err(e) => {
                        println!("W4A16  {n:>5}x{k:<6} {m:>5}  {name}: skipped ({e})");
                        continue;
                    }
                };
                let t = median_us(&dev, &mut flush, a.reps, || {
                    Ok(forced.w4a16(&dev, &s, &act, &w, None, &mut out)?)
                })?;
                rows.push(Row {
                    forced: true,
                    ..report("W4A16", n, k, m, t, base, bytes, copy_bw, &forced)
                });
            }
            if a4_shapes.contains(&(n, k)) {
                let aq = quantize("A", &a_host, m, k, &QuantizeOptions::default())?;
                let aq = DeviceNvfp4::upload(&s, &aq)?;
                let spec = GemmSpec {
                    op: GemmOp::W4A4,
                    out: Dtype::Bf16,
                    ..GemmSpec::w4a16(m, n, k)
                };
                let mut plan = GemmPlan::new(&dev, &s, &spec)?;
                let ours = median_us(&dev, &mut flush, a.reps, || {
                    Ok(plan.w4a4(&dev, &s, &aq, &w, None, &mut out)?)
                })?;
                let bytes = w_bytes + (m * k * 9 / 16 + m * n * 2) as f64;
                rows.push(report("W4A4", n, k, m, ours, base, bytes, copy_bw, &plan));
            }
        }
    }
    if let Some(path) = &a.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "op": r.op, "n": r.n, "k": r.k, "m": r.m,
                    "ours_us": r.ours_us, "cublas_bf16_us": r.cublas_us,
                    "ratio_vs_cublas": r.cublas_us / r.ours_us,
                    "cublas_fp8_us": r.fp8_us, "ratio_vs_cublas_fp8": r.fp8_us.map(|f| f / r.ours_us),
                    "bytes": r.bytes, "fraction_of_copy_bw": r.bytes / (r.ours_us * 1e-6) / r.copy_bw,
                    "copy_bw_bytes_per_s": r.copy_bw, "route": r.route, "plan": r.explain, "forced": r.forced,
                })
            })
            .collect();
        let doc = serde_json::json!({
            "device": i.name, "arch": i.arch(), "sms": i.sm_count, "reps": a.reps,
            "l2_flushed": !a.no_flush, "l2_flush": if a.no_flush { "none" } else if a.dirty_flush { "write" } else { "write+read" }, "copy_bw_bytes_per_s": copy_bw, "rows": v,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {path}"))?;
        println!("wrote {path}");
    }
    if let Some(path) = &a.svg {
        std::fs::write(path, svg(&rows, &i.name)).with_context(|| format!("writing {path}"))?;
        println!("wrote {path}");
    }
    Ok(())
}

fn shapes_or_empty(s: &str) -> anyhow::Result<Vec<(usize, usize)>> {
    if s.trim().is_empty() {
        Ok(Vec::new())
    } else {
        shapes(s)
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    op: &'static str,
    n: usize,
    k: usize,
    m: usize,
    ours: f64,
    (cublas, fp8): (f64, Option<f64>),
    bytes: f64,
    copy_bw: f64,
    plan: &GemmPlan,
) -> Row {
    let bw = bytes / (ours * 1e-6);
    let explain = plan.explain();
    let kernel = explain
        .split("kernel ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap_or("");
    let route = match plan.route() {
        GemmRoute::DequantizeCublas { dtype } => format!("dequantize + cuBLAS ({dtype:?})"),
        GemmRoute::Dequantize(_) | GemmRoute::Fp4TensorCore { .. } => {
            format!("{kernel} split {}", plan.splits())
        }
    };
    println!(
        "{op:<6} {:>12} {m:>5} {ours:>10.1} {cublas:>10.1} {:>6.2}x {:>9} {:>7} {:>8.0} {:>6.2} {:>8.1}  {route}",
        format!("{n}x{k}"),
        cublas / ours,
        fp8.map_or("-".into(), |f| format!("{f:.1}")),
        fp8.map_or("-".into(), |f| format!("{:.2}x", f / ours)),
        bw / 1e9,
        bw / copy_bw,
        2.0 * (m * n * k) as f64 / (ours * 1e-6) / 1e12,
    );
    Row {
        op,
        n,
        k,
        m,
        ours_us: ours,
        cublas_us: cublas,
        fp8_us: fp8,
        bytes,
        copy_bw,
        route,
        forced: false,
        explain: explain.to_string(),
    }
}

/// Bytes a baseline moves at the least: bf16 (`elem` = 2) or FP8 (1) operands, a bf16 output.
fn baseline_bytes(r: &Row, elem: usize) -> f64 {
    (elem * (r.n * r.k + r.m * r.k) + 2 * r.m * r.n) as f64
}

/// One plotted line: its colour, and (M, value) points.
type Series = (&'static str, Vec<(usize, f64)>);

/// Hand-written SVG: per shape (the plan's choices only, not forced rows) two panels against M (log2):
/// time (log) and the fraction of the copy bandwidth each moves (its least bytes over its time),
/// for NVFP4 W4A16 (blue), W4A4 (green), cuBLAS bf16 (red) and cuBLASLt FP8 (orange).
fn svg(rows: &[Row], device: &str) -> String {
    let rows: Vec<&Row> = rows.iter().filter(|r| !r.forced).collect();
    let mut shapes: Vec<(usize, usize)> = Vec::new();
    for r in &rows {
        if !shapes.contains(&(r.n, r.k)) {
            shapes.push((r.n, r.k));
        }
    }
    let (pw, ph, cols) = (320.0, 400.0, 4usize);
    let nrows = shapes.len().div_ceil(cols).max(1);
    let (w, h) = (pw * cols as f64, ph * nrows as f64 + 40.0);
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="10">"#
    );
    let _ = writeln!(
        o,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="18" font-size="13">NVFP4 W4A16 (blue), W4A4 (green), cuBLAS bf16 (red), cuBLASLt FP8 (orange) against M (log2), {device}: time (us, log), then fraction of copy bandwidth</text>"#
    );
    for (idx, &(n, k)) in shapes.iter().enumerate() {
        let (x0, y0) = ((idx % cols) as f64 * pw + 45.0, (idx / cols) as f64 * ph + 50.0);
        let rs: Vec<&Row> = rows.iter().copied().filter(|r| (r.n, r.k) == (n, k)).collect();
        // Each line: its colour, the rows it is drawn from, its time, and the least bytes it moves.
        type Line = (
            &'static str,
            &'static str,
            fn(&Row) -> Option<f64>,
            fn(&Row) -> f64,
        );
        let lines: [Line; 4] = [
            ("blue", "W4A16", |r| Some(r.ours_us), |r| r.bytes),
            ("green", "W4A4", |r| Some(r.ours_us), |r| r.bytes),
            ("red", "W4A16", |r| Some(r.cublas_us), |r| baseline_bytes(r, 2)),
            ("orange", "W4A16", |r| r.fp8_us, |r| baseline_bytes(r, 1)),
        ];
        // Times, or (`frac`) the fraction of the copy bandwidth each point moves.
        let series = |frac: bool| -> Vec<Series> {
            lines
                .iter()
                .map(|&(color, op, time, bytes)| {
                    let pts = rs.iter().filter(|r| r.op == op).filter_map(|r| {
                        let us = time(r)?;
                        Some((
                            r.m,
                            if frac {
                                bytes(r) / (us * 1e-6) / r.copy_bw
                            } else {
                                us
                            },
                        ))
                    });
                    (color, pts.collect())
                })
                .collect()
        };
        let (times, fracs) = (series(false), series(true));
        let mmax = rs.iter().map(|r| r.m).max().unwrap_or(1).max(2);
        panel(&mut o, (x0, y0), mmax, &format!("{n} x {k}: us"), &times, true);
        panel(&mut o, (x0, y0 + ph / 2.0), mmax, "of copy BW", &fracs, false);
    }
    o.push_str("</svg>\n");
    o
}

/// One panel of [`svg`] at `(x0, y0)`: M on a log2 axis up to `mmax`, values on a log10 axis (`log`)
/// or linear from 0 (at least to 1).
fn panel(o: &mut String, (x0, y0): (f64, f64), mmax: usize, title: &str, series: &[Series], log: bool) {
    let (iw, ih) = (260.0, 140.0);
    let vals = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, v)| v))
        .filter(|v| v.is_finite() && *v > 0.0);
    let (lo, hi) = vals.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    if lo > hi {
        return;
    }
    let (ylo, yhi) = if log {
        (
            lo.log10().floor(),
            hi.log10().ceil().max(lo.log10().floor() + 1.0),
        )
    } else {
        (0.0, hi.max(1.0))
    };
    let fy = |v: f64| if log { v.log10() } else { v };
    let px = |m: usize| x0 + (m as f64).log2() / (mmax as f64).log2() * iw;
    let py = |v: f64| y0 + ih - (fy(v) - ylo) / (yhi - ylo) * ih;
    let _ = writeln!(
        o,
        r#"<rect x="{x0}" y="{y0}" width="{iw}" height="{ih}" fill="none" stroke="gray"/><text x="{x0}" y="{}">{title}</text>"#,
        y0 - 5.0
    );
    let ticks: Vec<f64> = if log {
        (ylo as i32..=yhi as i32).map(|d| 10f64.powi(d)).collect()
    } else {
        (0..=(yhi * 4.0).ceil() as i32)
            .map(|q| f64::from(q) / 4.0)
            .collect()
    };
    for t in ticks {
        let _ = writeln!(
            o,
            r#"<text x="{}" y="{}" text-anchor="end">{t}</text>"#,
            x0 - 3.0,
            py(t) + 3.0
        );
    }
    let mut ms: Vec<usize> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(m, _)| m))
        .collect();
    ms.sort_unstable();
    ms.dedup();
    for m in ms {
        let _ = writeln!(
            o,
            r#"<text x="{}" y="{}" text-anchor="middle">{m}</text>"#,
            px(m),
            y0 + ih + 12.0
        );
    }
    for (color, pts) in series {
        if pts.is_empty() {
            continue;
        }
        let pts: Vec<String> = pts
            .iter()
            .map(|&(m, v)| format!("{:.1},{:.1}", px(m), py(v)))
            .collect();
        let _ = writeln!(
            o,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
            pts.join(" ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(m: usize, ours: f64, fp8: Option<f64>, forced: bool) -> Row {
        Row {
            op: "W4A16",
            n: 64,
            k: 128,
            m,
            ours_us: ours,
            cublas_us: 2.0 * ours,
            fp8_us: fp8,
            bytes: 1e6,
            copy_bw: 3e12,
            route: String::new(),
            forced,
            explain: String::new(),
        }
    }

    #[test]
    fn svg_plots_the_plan_rows_and_both_baselines_in_two_panels() {
        let rows = [
            row(1, 10.0, Some(15.0), false),
            row(1, 999.0, None, true),
            row(16, 12.0, Some(16.0), false),
            row(256, 40.0, None, false),
        ];
        let s = svg(&rows, "test GPU");
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        // Time and bandwidth panels, each with ours, cuBLAS bf16 and FP8 (W4A4 was not timed).
        assert_eq!(s.matches("<polyline").count(), 6, "{s}");
        assert_eq!(s.matches(r#"stroke="orange""#).count(), 2);
        // The forced row's 999 us stays out: the time axis tops out at 100.
        assert!(s.contains(">100</text>") && !s.contains(">1000</text>"), "{s}");
        let blue = s.lines().find(|l| l.contains(r#"stroke="blue""#)).unwrap();
        assert_eq!(blue.matches(',').count(), 3, "one point per plan row: {blue}");
    }

    #[test]
    fn baseline_bytes_count_operands_and_the_bf16_output() {
        let r = row(2, 1.0, None, false);
        assert_eq!(
            baseline_bytes(&r, 2),
            (2 * (64 * 128 + 2 * 128) + 2 * 2 * 64) as f64
        );
        assert_eq!(baseline_bytes(&r, 1), (64 * 128 + 2 * 128 + 2 * 2 * 64) as f64);
    }
}
