//! A SeedVR2-7B-shaped diffusion transformer streamed through the GPU with the public API only: the
//! engine's view of weight streaming (BlockSwap).
//!
//! Per block, the linear layers 9216x3072, 3072x3072, 12288x3072 and 3072x12288, once for the video and
//! once for the text stream (random, seeded weights). The blocks that do not fit `--vram-budget` stream
//! from pinned host memory through a ring of `--depth` slots; the rest stay resident. The "forward" of a
//! block is one real kernel per weight reading all of it (NVFP4: dequantize to bf16 scratch; bf16: a
//! device copy), standing in for the GEMMs. Run with NVFP4 weights and with bf16 weights:
//!
//! ```sh
//! cargo run --release --example streamed_dit -- --blocks 36 --shrink 2 --vram-budget 2048
//! ```
//!
//! Flags: `--blocks N` (36), `--shrink S` (divide every dimension by S; 1 = real shapes; default 4 so a
//! run takes seconds), `--tokens T` (tokens per forward, for tokens/s; 4096), `--vram-budget MIB`
//! (weights plus slots; default: half of the model's NVFP4 bytes), `--depth D` (2), `--passes P` (3).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use half::bf16;
use nvfp4::cuda::{Device, PinnedPool, StreamSet, alloc_zeros};
use nvfp4::cudarc::driver::{CudaSlice, CudaStream};
use nvfp4::offload::{HostBlock, HostTensor, LayerPrefetcher, PrefetchConfig, Weight};
use nvfp4::ops;
use nvfp4::quant::{self, QuantizeOptions};
use nvfp4::reference::synthetic::Rng;

const LINEARS: [(&str, usize, usize); 4] = [
    ("qkv", 9216, 3072),
    ("proj", 3072, 3072),
    ("mlp_up", 12288, 3072),
    ("mlp_down", 3072, 12288),
];

struct Args {
    blocks: usize,
    shrink: usize,
    tokens: usize,
    vram_budget_mib: Option<usize>,
    depth: usize,
    passes: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        blocks: 36,
        shrink: 4,
        tokens: 4096,
        vram_budget_mib: None,
        depth: 2,
        passes: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> Result<usize, String> {
            let v = it.next().ok_or(format!("{flag} needs a value"))?;
            v.parse().map_err(|_| format!("{flag}: `{v}` is not a number"))
        };
        match flag.as_str() {
            "--blocks" => a.blocks = value()?.max(1),
            "--shrink" => a.shrink = value()?.max(1),
            "--tokens" => a.tokens = value()?,
            "--vram-budget" => a.vram_budget_mib = Some(value()?),
            "--depth" => a.depth = value()?.max(1),
            "--passes" => a.passes = value()?.max(1),
            other => return Err(format!("unknown flag `{other}`")),
        }
    }
    Ok(a)
}

/// One block of weights, reused for every block under fresh tensor ids (quantizing 36 distinct
/// blocks would dominate a demo run; the bytes streamed are the same).
fn model(a: &Args, nvfp4: bool) -> nvfp4::Result<Vec<HostBlock>> {
    let mut proto = Vec::new();
    let mut rng = Rng::new(7);
    for stream in ["video", "text"] {
        for (name, rows, cols) in LINEARS {
            let (rows, cols) = (
                (rows / a.shrink).max(16) / 16 * 16,
                (cols / a.shrink).max(16) / 16 * 16,
            );
            let x = rng.normal_vec(rows * cols, 0.02);
            let w = if nvfp4 {
                Weight::Nvfp4(quant::quantize(
                    name,
                    &x,
                    rows,
                    cols,
                    &QuantizeOptions::default(),
                )?)
            } else {
                Weight::Bf16 {
                    rows,
                    cols,
                    data: x.iter().map(|&v| bf16::from_f32(v)).collect(),
                }
            };
            proto.push((format!("{stream}.{name}"), w));
        }
    }
    let mut id = 0;
    (0..a.blocks)
        .map(|_| {
            let tensors = proto
                .iter()
                .map(|(n, w)| {
                    id += 1;
                    HostTensor::new(id, n.clone(), w.clone())
                })
                .collect::<nvfp4::Result<_>>()?;
            Ok(HostBlock { tensors })
        })
        .collect()
}

/// The bf16 activation buffer of `n` elements (one per weight size, reused every block).
fn scratch_for<'a>(
    map: &'a mut HashMap<usize, CudaSlice<bf16>>,
    stream: &Arc<CudaStream>,
    n: usize,
) -> nvfp4::Result<&'a mut CudaSlice<bf16>> {
    Ok(match map.entry(n) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => e.insert(alloc_zeros(stream, "activations", n)?),
    })
}

fn run(dev: &Device, a: &Args, nvfp4: bool) -> nvfp4::Result<()> {
    let blocks = model(a, nvfp4)?;
    let block_bytes = blocks[0].device_bytes()?;
    let nvfp4_model = model(&Args { blocks: 1, ..*a }, true)?[0].device_bytes()? * a.blocks;
    let budget = a.vram_budget_mib.map(|m| m << 20).unwrap_or(nvfp4_model / 2);
    // Resident blocks fill what the slots leave of the budget; the rest stream.
    let resident = (budget.saturating_sub(a.depth * block_bytes) / block_bytes.max(1)).min(a.blocks);
    let cfg = PrefetchConfig {
        blocks_to_swap: a.blocks - resident,
        depth: a.depth,
        prefetch_next_pass: true,
        vram_budget: Some(budget),
    };
    let free_before = dev.context().mem_get_info().map(|m| m.0).unwrap_or(0);
    let streams = StreamSet::new(dev)?;
    let mut pf = LayerPrefetcher::new(dev, streams.clone(), Arc::new(PinnedPool::new(dev)), blocks, cfg)?;
    let mut scratch: HashMap<usize, CudaSlice<bf16>> = HashMap::new();
    let mut peak_used = 0usize;
    let (mut time, mut stall, mut upload) = (0.0, 0.0, 0.0);
    for pass in 0..=a.passes {
        pf.begin_pass()?;
        for i in 0..pf.num_blocks() {
            let b = pf.block(i)?;
            for j in 0..b.len() {
                let t = b.tensor(j)?;
                if nvfp4 {
                    let v = t.nvfp4()?;
                    let out = scratch_for(&mut scratch, &streams.compute, v.rows * v.cols)?;
                    ops::dequantize_view(dev, &streams.compute, &v, out)?;
                } else {
                    let v = t.bf16()?;
                    let out = scratch_for(&mut scratch, &streams.compute, v.len())?;
                    streams
                        .compute
                        .memcpy_dtod(&v, out)
                        .map_err(|e| nvfp4::Error::Cuda {
                            context: "copying a weight".into(),
                            source: e,
                        })?;
                }
            }
            pf.done(i)?;
        }
        let st = pf.end_pass()?;
        let free = dev.context().mem_get_info().map(|m| m.0).unwrap_or(free_before);
        peak_used = peak_used.max(free_before.saturating_sub(free));
        if pass > 0 {
            // Pass 0 fills the pinned pool from pageable memory: a one-time cost, not the steady state.
            time += st.pass_ms;
            stall += st.stall_ms;
            upload += st.upload_ms;
        }
    }
    let p = a.passes as f64;
    let (swapped, slots) = pf.swap_config();
    println!(
        "{:>5}: {} blocks of {:.1} MB, {} resident, {swapped} streamed through {slots} slots | {:8.1} tokens/s  {:6.1} blocks/s  \
         pass {:7.2} ms  stall {:6.2} ms  upload {:7.2} ms | device memory: weights+slots {:.0} MB, peak used {:.0} MB",
        if nvfp4 { "NVFP4" } else { "bf16" },
        a.blocks,
        block_bytes as f64 / 1e6,
        a.blocks - swapped,
        a.tokens as f64 / (time / p * 1e-3),
        a.blocks as f64 / (time / p * 1e-3),
        time / p,
        stall / p,
        upload / p,
        pf.device_bytes() as f64 / 1e6,
        peak_used as f64 / 1e6,
    );
    Ok(())
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("streamed_dit: {e}");
            std::process::exit(2);
        }
    };
    let dev = match Device::new(0) {
        Ok(d) => d,
        Err(e) => {
            println!("streamed_dit: no GPU ({e}); nothing to stream. Exiting.");
            return;
        }
    };
    println!(
        "{} ({}), {} blocks, dimensions / {}, {} tokens, depth {}",
        dev.info().name,
        dev.info().arch(),
        a.blocks,
        a.shrink,
        a.tokens,
        a.depth
    );
    for nvfp4 in [true, false] {
        if let Err(e) = run(&dev, &a, nvfp4) {
            eprintln!("streamed_dit ({}): {e}", if nvfp4 { "NVFP4" } else { "bf16" });
            std::process::exit(1);
        }
    }
}
