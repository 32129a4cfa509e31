//! `nvfp4 demo`: a small seeded transformer (residual MLP blocks) quantized to NVFP4, run block by
//! block on the GPU when there is one, or on the CPU otherwise, and compared with the bf16 reference.
//!
//! On the GPU the blocks stream: every block's NVFP4 weights go through the crate's
//! [`LayerPrefetcher`](nvfp4::offload::LayerPrefetcher) (pinned pool, copy stream, a ring of
//! `--depth` device slots ordered by events), so block `i + 1` uploads while block `i` computes, and the
//! W4A16 GEMMs read their weights in place from the slots ([`nvfp4::ops::GemmPlan::w4a16_slot`]).
//! `--no-stream` runs the former path instead (each block's weights uploaded into owned tensors when it
//! comes), the baseline the streamed output must equal bit for bit (same kernels, same bytes).

use std::time::Instant;

use clap::Args;
use half::bf16;
use nvfp4::quant::{self, Nvfp4Tensor, QuantizeOptions};
use nvfp4::reference::synthetic::Rng;
use rayon::prelude::*;

use crate::stats::ErrorStats;

/// Shape and seed of the synthetic transformer.
#[derive(Args)]
pub struct DemoArgs {
    /// Transformer blocks.
    #[arg(long, default_value_t = 4)]
    pub blocks: usize,
    /// Hidden size (a multiple of 16; the MLP is 4x wider).
    #[arg(long, default_value_t = 256)]
    pub hidden: usize,
    /// Tokens (rows of the activations).
    #[arg(long, default_value_t = 32)]
    pub tokens: usize,
    /// Seed of the weights and inputs (printed, so a run can be replayed).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Run on the CPU even when a GPU is present.
    #[arg(long)]
    pub cpu: bool,
    /// Prefetch depth on the GPU: device slots in the weight ring (2 hides one block's upload under the
    /// previous block's compute).
    #[arg(long, default_value_t = 2)]
    pub depth: usize,
    /// On the GPU, upload each block's weights into owned tensors when it comes instead of streaming them
    /// through the prefetcher (the non-streamed baseline).
    #[arg(long)]
    pub no_stream: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

struct Block {
    up: (Vec<bf16>, Nvfp4Tensor),
    down: (Vec<bf16>, Nvfp4Tensor),
}

fn round_bf16(v: &mut [f32]) {
    for x in v {
        *x = bf16::from_f32(*x).to_f32();
    }
}

/// `x[m, k] · w[n, k]^T` in f32.
fn matmul(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; m * n];
    out.par_chunks_mut(n).enumerate().for_each(|(r, o)| {
        let xr = &x[r * k..(r + 1) * k];
        for (j, oj) in o.iter_mut().enumerate() {
            *oj = xr.iter().zip(&w[j * k..(j + 1) * k]).map(|(a, b)| a * b).sum();
        }
    });
    let _ = m;
    out
}

fn rms_norm(x: &[f32], d: usize) -> Vec<f32> {
    x.chunks(d)
        .flat_map(|r| {
            let s = (r.iter().map(|v| v * v).sum::<f32>() / d as f32 + 1e-6).sqrt();
            r.iter().map(move |v| v / s)
        })
        .collect()
}

fn gelu(v: &mut [f32]) {
    for x in v {
        *x = 0.5 * *x * (1.0 + (0.797_884_6 * (*x + 0.044_715 * *x * *x * *x)).tanh());
    }
}

/// One residual MLP block on `x`; `linear(which, input_bf16_rounded)` computes a layer (up when true).
fn mlp_block(
    x: &mut [f32],
    d: usize,
    mut linear: impl FnMut(bool, &[f32]) -> anyhow::Result<Vec<f32>>,
) -> anyhow::Result<()> {
    let mut h = rms_norm(x, d);
    round_bf16(&mut h);
    let mut u = linear(true, &h)?;
    gelu(&mut u);
    round_bf16(&mut u);
    let y = linear(false, &u)?;
    for (xi, yi) in x.iter_mut().zip(&y) {
        *xi += yi;
    }
    Ok(())
}

/// One forward pass; `linear(block, which, input_bf16_rounded)` computes a layer.
fn forward(
    x0: &[f32],
    blocks: usize,
    d: usize,
    m: usize,
    mut linear: impl FnMut(usize, bool, &[f32]) -> anyhow::Result<Vec<f32>>,
) -> anyhow::Result<Vec<f32>> {
    let mut x = x0.to_vec();
    for b in 0..blocks {
        mlp_block(&mut x, d, |up, h| linear(b, up, h))?;
    }
    let _ = m;
    Ok(x)
}

/// FNV-1a of the output's f32 bits: equal outputs, equal hashes (the streamed and non-streamed GPU runs
/// are compared through it).
fn output_hash(out: &[f32]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in out {
        for byte in v.to_bits().to_le_bytes() {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// What the prefetcher measured over the streamed pass.
struct StreamReport {
    blocks: usize,
    depth: usize,
    stats: nvfp4::offload::PassStats,
}

struct GpuRun {
    out: Vec<f32>,
    ms: f64,
    device: String,
    kernels: Vec<String>,
    stream: Option<StreamReport>,
}

/// The streamed GPU forward: every block's weights through the layer prefetcher, the GEMMs reading the
/// slots in place.
fn run_gpu_streamed(
    blocks: &[Block],
    x0: &[f32],
    d: usize,
    m: usize,
    depth: usize,
) -> anyhow::Result<GpuRun> {
    use std::sync::Arc;

    use nvfp4::cuda::{Device, PinnedPool, StreamSet, alloc_zeros, download, upload};
    use nvfp4::offload::{HostBlock, HostTensor, LayerPrefetcher, PrefetchConfig, Weight};
    use nvfp4::ops::SlotWeight;
    let dev = Device::new(0)?;
    anyhow::ensure!(dev.has_kernels(), "this build or GPU has no nvfp4 kernels");
    anyhow::ensure!(depth > 0, "--depth must be at least 1");
    let nb = blocks.len();
    let host: Vec<HostBlock> = blocks
        .iter()
        .enumerate()
        .map(|(b, blk)| {
            let id = 2 * b as u64;
            Ok(HostBlock {
                tensors: vec![
                    HostTensor::new(id, format!("blocks.{b}.mlp.up"), Weight::Nvfp4(blk.up.1.clone()))?,
                    HostTensor::new(
                        id + 1,
                        format!("blocks.{b}.mlp.down"),
                        Weight::Nvfp4(blk.down.1.clone()),
                    )?,
                ],
            })
        })
        .collect::<nvfp4::Result<_>>()?;
    let cfg = PrefetchConfig {
        blocks_to_swap: nb,
        depth,
        // One pass: no upload of the next pass's first blocks.
        prefetch_next_pass: false,
        vram_budget: None,
    };
    let mut pf = LayerPrefetcher::new(
        &dev,
        StreamSet::new(&dev)?,
        Arc::new(PinnedPool::new(&dev)),
        host,
        cfg,
    )?;
    let s = pf.streams().compute.clone();
    let (kernels, mut plans) = plans(&dev, &s, d, m)?;
    let t0 = Instant::now();
    pf.begin_pass()?;
    let mut x = x0.to_vec();
    for b in 0..nb {
        {
            // The slot views live in this scope only: `done(b)` below (which lets the slot be refilled
            // once the GEMMs enqueued here finish) cannot be called while they are borrowed.
            let block = pf.block(b)?;
            let wu = block.tensor(0)?.slot_weight()?;
            let wd = block.tensor(1)?.slot_weight()?;
            mlp_block(&mut x, d, |up, h| {
                let (w, plan, n): (&SlotWeight<'_>, _, _) = if up {
                    (&wu, &mut plans[0], 4 * d)
                } else {
                    (&wd, &mut plans[1], d)
                };
                let a: Vec<bf16> = h.iter().map(|&v| bf16::from_f32(v)).collect();
                let da = upload(&s, "activations", &a)?;
                let mut o = alloc_zeros::<f32>(&s, "out", m * n)?;
                plan.w4a16_slot(&dev, &s, &da, w, None, &mut o)?;
                Ok(download(&s, "out", &o)?)
            })?;
        }
        pf.done(b)?;
    }
    let stats = pf.end_pass()?;
    let (_, slots) = pf.swap_config();
    Ok(GpuRun {
        out: x,
        ms: t0.elapsed().as_secs_f64() * 1e3,
        device: format!("{} ({})", dev.info().name, dev.info().arch()),
        kernels,
        stream: Some(StreamReport {
            blocks: nb,
            depth: slots,
            stats,
        }),
    })
}

/// The GEMM plans of the two layers of a block (up `[4d, d]`, down `[d, 4d]`), f32 out, and their reasons.
fn plans(
    dev: &nvfp4::cuda::Device,
    s: &std::sync::Arc<nvfp4::cudarc::driver::CudaStream>,
    d: usize,
    m: usize,
) -> anyhow::Result<(Vec<String>, Vec<nvfp4::ops::GemmPlan>)> {
    use nvfp4::format::Dtype;
    use nvfp4::ops::{GemmPlan, GemmSpec};
    let mut kernels = Vec::new();
    let mut plans = Vec::new();
    for (n, k) in [(4 * d, d), (d, 4 * d)] {
        let spec = GemmSpec {
            out: Dtype::F32,
            ..GemmSpec::w4a16(m, n, k)
        };
        let p = GemmPlan::new(dev, s, &spec)?;
        kernels.push(p.explain().to_string());
        plans.push(p);
    }
    Ok((kernels, plans))
}

/// The non-streamed GPU forward (`--no-stream`): each block's weights uploaded into owned tensors when
/// the block comes, on one stream.
fn run_gpu(blocks: &[Block], x0: &[f32], d: usize, m: usize) -> anyhow::Result<GpuRun> {
    use nvfp4::cuda::{Device, alloc_zeros, download, upload};
    use nvfp4::ops::DeviceNvfp4;
    let dev = Device::new(0)?;
    anyhow::ensure!(dev.has_kernels(), "this build or GPU has no nvfp4 kernels");
    let s = dev.new_stream()?;
    let (kernels, mut plans) = plans(&dev, &s, d, m)?;
    let t0 = Instant::now();
    // Each block's NVFP4 weights go up when the block runs (streamed, one block resident at a time).
    let mut resident: Option<(usize, DeviceNvfp4, DeviceNvfp4)> = None;
    let out = forward(x0, blocks.len(), d, m, |b, up, h| {
        if resident.as_ref().is_none_or(|r| r.0 != b) {
            resident = Some((
                b,
                DeviceNvfp4::upload(&s, &blocks[b].up.1)?,
                DeviceNvfp4::upload(&s, &blocks[b].down.1)?,
            ));
        }
        let Some((_, wu, wd)) = resident.as_ref() else {
            anyhow::bail!("block {b} not resident");
        };
        let (w, plan, n) = if up {
            (wu, &mut plans[0], 4 * d)
        } else {
            (wd, &mut plans[1], d)
        };
        let a: Vec<bf16> = h.iter().map(|&v| bf16::from_f32(v)).collect();
        let da = upload(&s, "activations", &a)?;
        let mut o = alloc_zeros::<f32>(&s, "out", m * n)?;
        plan.w4a16(&dev, &s, &da, w, None, &mut o)?;
        Ok(download(&s, "out", &o)?)
    })?;
    Ok(GpuRun {
        out,
        ms: t0.elapsed().as_secs_f64() * 1e3,
        device: format!("{} ({})", dev.info().name, dev.info().arch()),
        kernels,
        stream: None,
    })
}

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let (nb, d, m) = (args.blocks, args.hidden, args.tokens);
    anyhow::ensure!(
        nb > 0 && d > 0 && m > 0,
        "--blocks, --hidden and --tokens must be positive"
    );
    anyhow::ensure!(
        d % 16 == 0,
        "--hidden must be a multiple of 16 (NVFP4 blocks), got {d}"
    );
    let mut rng = Rng::new(args.seed);
    let t0 = Instant::now();
    let mut blocks = Vec::new();
    for b in 0..nb {
        let mut layer = |n: usize, k: usize, name: String| -> anyhow::Result<(Vec<bf16>, Nvfp4Tensor)> {
            let mut w = rng.normal_vec(n * k, (1.0 / k as f32).sqrt());
            for _ in 0..(n * k / 4096).max(1) {
                let i = (rng.next_u64() % (n * k) as u64) as usize;
                w[i] *= 10.0;
            }
            let wb: Vec<bf16> = w.iter().map(|&x| bf16::from_f32(x)).collect();
            let q = quant::quantize(&name, &wb, n, k, &QuantizeOptions::default())?;
            Ok((wb, q))
        };
        blocks.push(Block {
            up: layer(4 * d, d, format!("blocks.{b}.mlp.up"))?,
            down: layer(d, 4 * d, format!("blocks.{b}.mlp.down"))?,
        });
    }
    let quantize_ms = t0.elapsed().as_secs_f64() * 1e3;
    let x0 = rng.normal_vec(m * d, 1.0);

    let ref_w: Vec<[Vec<f32>; 2]> = blocks
        .iter()
        .map(|b| [&b.up.0, &b.down.0].map(|w| w.iter().map(|x| x.to_f32()).collect()))
        .collect();
    let t = Instant::now();
    let reference = forward(&x0, nb, d, m, |b, up, h| {
        let (n, k) = if up { (4 * d, d) } else { (d, 4 * d) };
        Ok(matmul(h, &ref_w[b][usize::from(!up)], m, n, k))
    })?;
    let ref_ms = t.elapsed().as_secs_f64() * 1e3;

    let (backend, out, ms, device, kernels, gpu_error, streamed) = {
        let gpu = if args.cpu {
            Err(anyhow::anyhow!("--cpu given"))
        } else if args.no_stream {
            run_gpu(&blocks, &x0, d, m)
        } else {
            run_gpu_streamed(&blocks, &x0, d, m, args.depth)
        };
        match gpu {
            Ok(g) => ("gpu", g.out, g.ms, g.device, g.kernels, None, g.stream),
            Err(e) => {
                let deq: Vec<[Vec<f32>; 2]> = blocks
                    .iter()
                    .map(|b| {
                        [
                            quant::dequantize::<f32>(&b.up.1),
                            quant::dequantize::<f32>(&b.down.1),
                        ]
                    })
                    .collect();
                let t = Instant::now();
                let out = forward(&x0, nb, d, m, |b, up, h| {
                    let (n, k) = if up { (4 * d, d) } else { (d, 4 * d) };
                    Ok(matmul(h, &deq[b][usize::from(!up)], m, n, k))
                })?;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                (
                    "cpu",
                    out,
                    ms,
                    format!("CPU ({} threads)", rayon::current_num_threads()),
                    vec!["CPU dequantize + f32 GEMM (rayon)".to_string()],
                    Some(e.to_string()),
                    None,
                )
            }
        }
    };
    let err = ErrorStats::new(out.iter().map(|&v| v as f64), reference.iter().map(|&v| v as f64));
    let bf16_bytes: usize = blocks.iter().map(|b| (b.up.0.len() + b.down.0.len()) * 2).sum();
    let nvfp4_bytes: usize = blocks
        .iter()
        .map(|b| b.up.1.size_bytes() + b.down.1.size_bytes())
        .sum();
    let params = bf16_bytes / 2;
    if args.json {
        let v = serde_json::json!({
            "seed": args.seed,
            "blocks": nb,
            "hidden": d,
            "tokens": m,
            "params": params,
            "backend": backend,
            "device": device,
            "gpu_unavailable_reason": gpu_error,
            "kernels": kernels,
            "snr_db": if err.snr_db.is_finite() { Some(err.snr_db) } else { None },
            "rel_rmse": err.rel_rmse,
            "max_abs_err": err.max_abs,
            "bf16_bytes": bf16_bytes,
            "nvfp4_bytes": nvfp4_bytes,
            "memory_saved": 1.0 - nvfp4_bytes as f64 / bf16_bytes as f64,
            "quantize_ms": quantize_ms,
            "reference_ms": ref_ms,
            "nvfp4_ms": ms,
            "output_hash": output_hash(&out),
            "streamed": streamed.is_some(),
            "streamed_blocks": streamed.as_ref().map(|r| r.blocks),
            "prefetch_depth": streamed.as_ref().map(|r| r.depth),
            "upload_ms": streamed.as_ref().map(|r| r.stats.upload_ms),
            "compute_ms": streamed.as_ref().map(|r| r.stats.compute_ms),
            "stall_ms": streamed.as_ref().map(|r| r.stats.stall_ms),
            "upload_overlap": streamed.as_ref().map(|r| r.stats.overlap()),
            "bytes_uploaded": streamed.as_ref().map(|r| r.stats.bytes_uploaded),
            "pageable_tensors": streamed.as_ref().map(|r| r.stats.pageable_tensors),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "nvfp4 demo: {nb} residual MLP blocks, hidden {d} (MLP {}), {m} tokens, {params} weights, seed {}",
        4 * d,
        args.seed
    );
    if let Some(e) = &gpu_error {
        println!("  GPU not used: {e}");
    }
    println!("  ran on      {device} [{backend}]");
    for k in &kernels {
        println!("  kernel      {k}");
    }
    match &streamed {
        Some(r) => println!(
            "  streamed    {} blocks through the layer prefetcher, depth {} (pinned pool, copy stream, events): \
             {:.2} MiB uploaded{}, upload {:.2} ms, compute {:.2} ms (GPU timeline, host glue between GEMMs \
             included), stall {:.2} ms, {:.0}% of the upload hidden",
            r.blocks,
            r.depth,
            r.stats.bytes_uploaded as f64 / 1048576.0,
            if r.stats.pageable_tensors > 0 {
                format!(" ({} tensors from pageable memory)", r.stats.pageable_tensors)
            } else {
                String::new()
            },
            r.stats.upload_ms,
            r.stats.compute_ms,
            r.stats.stall_ms,
            100.0 * r.stats.overlap()
        ),
        None if backend == "gpu" => {
            println!("  streamed    no (--no-stream: each block's weights uploaded when it comes)")
        }
        None => {}
    }
    println!("  accuracy    NVFP4 output vs bf16 reference: {err}");
    println!(
        "  memory      {:.2} MiB bf16 -> {:.2} MiB NVFP4 ({:.1}% saved, {:.3} bits/weight)",
        bf16_bytes as f64 / 1048576.0,
        nvfp4_bytes as f64 / 1048576.0,
        100.0 * (1.0 - nvfp4_bytes as f64 / bf16_bytes as f64),
        nvfp4_bytes as f64 * 8.0 / params as f64
    );
    println!(
        "  time        quantize {quantize_ms:.1} ms (CPU), bf16 reference forward {ref_ms:.1} ms (CPU), NVFP4 forward {ms:.1} ms ({backend})"
    );
    Ok(())
}
