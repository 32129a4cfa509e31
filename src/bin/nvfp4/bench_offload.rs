//! `nvfp4 bench offload`: weight streaming (BlockSwap) on a SeedVR2-7B-shaped synthetic model, each
//! figure beside its baseline from the same run: the device's pinned H2D peak, max(upload, compute)
//! of the same pass, streamed bf16, and pageable staging.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use cudarc::driver::CudaSlice;
use half::bf16;
use nvfp4::cuda::{
    Device, GpuTimer, PinnedAllocator, PinnedBuffer, PinnedFlags, Pool, StreamSet, alloc_zeros,
    copy_h2d_async,
};
use nvfp4::offload::{HostBlock, HostTensor, LayerPrefetcher, PassStats, PrefetchConfig, Weight};
use nvfp4::ops;
use nvfp4::quant::{self, QuantizeOptions};
use nvfp4::reference::synthetic::Rng;
use rayon::prelude::*;

use crate::bench::OffloadArgs;

/// The linear layers of one SeedVR2-7B (NaDiT) block, `[out, in]`; each exists for the video and the
/// text stream.
const SEEDVR2_LINEARS: [(&str, usize, usize); 4] = [
    ("qkv", 9216, 3072),
    ("proj", 3072, 3072),
    ("mlp_up", 12288, 3072),
    ("mlp_down", 3072, 12288),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dtype {
    Nvfp4,
    Bf16,
}

/// One block's tensors (random, seeded), reused for every block with fresh ids: the bytes moved are
/// what matters here, and quantizing 36 distinct blocks would dominate the run.
fn synthetic_blocks(n: usize, shrink: usize, dtype: Dtype) -> anyhow::Result<Vec<HostBlock>> {
    let mut proto = Vec::new();
    for stream in ["video", "text"] {
        for (k, &(name, rows, cols)) in SEEDVR2_LINEARS.iter().enumerate() {
            let (rows, cols) = (
                (rows / shrink).max(16) / 16 * 16,
                (cols / shrink).max(16) / 16 * 16,
            );
            let seed = 1 + k as u64 + if stream == "text" { 100 } else { 0 };
            let x: Vec<f32> = (0..rows)
                .into_par_iter()
                .flat_map_iter(|r| Rng::new(seed * 1_000_003 + r as u64).normal_vec(cols, 0.02))
                .collect();
            let w = match dtype {
                Dtype::Nvfp4 => Weight::Nvfp4(quant::quantize(
                    name,
                    &x,
                    rows,
                    cols,
                    &QuantizeOptions::default(),
                )?),
                Dtype::Bf16 => Weight::Bf16 {
                    rows,
                    cols,
                    data: x.par_iter().map(|&v| bf16::from_f32(v)).collect(),
                },
            };
            proto.push((format!("{stream}.{name}"), w));
        }
    }
    let mut id = 0;
    (0..n)
        .map(|_| {
            let tensors = proto
                .iter()
                .map(|(name, w)| {
                    id += 1;
                    HostTensor::new(id, name.clone(), w.clone())
                })
                .collect::<nvfp4::Result<Vec<_>>>()?;
            Ok(HostBlock { tensors })
        })
        .collect()
}

/// The engine's per-block work: every weight read by a real kernel into bf16 scratch (NVFP4:
/// `ops::dequantize_view`; bf16: a device-to-device copy), `reps` times.
struct Compute {
    scratch: HashMap<usize, CudaSlice<bf16>>,
    reps: usize,
}

impl Compute {
    fn run(
        &mut self,
        dev: &Device,
        s: &StreamSet,
        b: &nvfp4::offload::DeviceBlock<'_>,
    ) -> anyhow::Result<()> {
        for _ in 0..self.reps {
            for j in 0..b.len() {
                let t = b.tensor(j)?;
                if let Ok(v) = t.nvfp4() {
                    let n = v.rows * v.cols;
                    let out = match self.scratch.entry(n) {
                        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(e) => {
                            e.insert(alloc_zeros(&s.compute, "scratch", n)?)
                        }
                    };
                    ops::dequantize_view(dev, &s.compute, &v, out)?;
                } else {
                    let v = t.bf16()?;
                    let n = v.len();
                    let out = match self.scratch.entry(n) {
                        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(e) => {
                            e.insert(alloc_zeros(&s.compute, "scratch", n)?)
                        }
                    };
                    s.compute.memcpy_dtod(&v, out)?;
                }
            }
        }
        Ok(())
    }
}

/// Runs `warm + passes` passes and returns the figures of the timed ones, summed.
fn stream_passes(
    dev: &Device,
    blocks: Vec<HostBlock>,
    cfg: PrefetchConfig,
    pool_cap: usize,
    reps: usize,
    passes: usize,
) -> anyhow::Result<(PassStats, usize)> {
    let pool = Arc::new(Pool::with_allocator(
        PinnedAllocator::new(dev.context(), PinnedFlags::Portable),
        pool_cap,
    ));
    let streams = StreamSet::new(dev)?;
    let mut pf = LayerPrefetcher::new(dev, streams.clone(), pool, blocks, cfg)?;
    let mut compute = Compute {
        scratch: HashMap::new(),
        reps,
    };
    let mut sum = PassStats::default();
    for p in 0..passes + 1 {
        pf.begin_pass()?;
        for i in 0..pf.num_blocks() {
            let b = pf.block(i)?;
            compute.run(dev, &streams, &b)?;
            pf.done(i)?;
        }
        let st = pf.end_pass()?;
        if p > 0 {
            sum.pass_ms += st.pass_ms;
            sum.upload_ms += st.upload_ms;
            sum.compute_ms += st.compute_ms;
            sum.stall_ms += st.stall_ms;
            sum.bytes_uploaded += st.bytes_uploaded;
            sum.pageable_tensors += st.pageable_tensors;
        }
    }
    let device_bytes = pf.device_bytes() + compute.scratch.values().map(|s| s.len() * 2).sum::<usize>();
    Ok((sum, device_bytes))
}

fn report(what: &str, st: &PassStats, passes: usize) -> f64 {
    let n = passes as f64;
    let ratio = st.pass_ms / st.upload_ms.max(st.compute_ms);
    println!(
        "  {what:<34} pass {:8.2} ms  upload {:8.2} ms ({:5.1} GB/s)  compute {:8.2} ms  stall {:7.2} ms  overlap {:5.1}%  pass/max(upload,compute) {:.3}",
        st.pass_ms / n,
        st.upload_ms / n,
        st.bytes_uploaded as f64 / (st.upload_ms * 1e-3) / 1e9,
        st.compute_ms / n,
        st.stall_ms / n,
        100.0 * st.overlap(),
        ratio
    );
    ratio
}

pub fn offload(a: &OffloadArgs) -> anyhow::Result<()> {
    let dev = crate::bench_gpu::open(a.device)?;
    let streams = StreamSet::new(&dev)?;
    // Baseline 1: the device's pinned H2D peak, one large copy from portable pinned memory.
    let bytes = 256usize << 20;
    let host = PinnedBuffer::new(dev.context(), bytes, PinnedFlags::Portable)?;
    let mut d = alloc_zeros::<u8>(&streams.upload, "peak buffer", bytes)?;
    copy_h2d_async(&streams.upload, &host, 0, &mut d)?;
    let t = GpuTimer::start(&streams.upload)?;
    for _ in 0..a.reps {
        copy_h2d_async(&streams.upload, &host, 0, &mut d)?;
    }
    let peak = bytes as f64 * a.reps as f64 / (t.stop_ms(&streams.upload)? as f64 * 1e-3) / 1e9;
    drop((host, d));
    println!("pinned H2D peak (one 256 MiB copy, portable pinned): {peak:.1} GB/s");

    let n = a.blocks;
    println!(
        "synthetic SeedVR2-7B blocks: {n} blocks, linears / {}, all swapped, depth {}, {} timed passes after one warm-up",
        a.shrink, a.depth, a.passes
    );
    let cfg = PrefetchConfig {
        blocks_to_swap: n,
        depth: a.depth,
        prefetch_next_pass: true,
        vram_budget: None,
    };
    let nv = synthetic_blocks(n, a.shrink, Dtype::Nvfp4).context("building the NVFP4 model")?;
    let block_bytes = nv[0].device_bytes()?;
    println!("  NVFP4 block {:.1} MB", block_bytes as f64 / 1e6);
    let cap = 64usize << 30;
    let (io, mem) = stream_passes(&dev, nv.clone(), cfg, cap, 1, a.passes)?;
    let io_ratio = report("NVFP4, IO-bound (dequantize x1)", &io, a.passes);
    let pooled = io.bytes_uploaded as f64 / (io.upload_ms * 1e-3) / 1e9;
    println!("    device memory (slots + scratch) {:.1} MB", mem as f64 / 1e6);
    let (cb, _) = stream_passes(&dev, nv.clone(), cfg, cap, a.compute_reps, a.passes)?;
    let cb_ratio = report(
        &format!("NVFP4, compute-bound (dequantize x{})", a.compute_reps),
        &cb,
        a.passes,
    );
    let (pg, _) = stream_passes(&dev, nv, cfg, 0, 1, a.passes)?;
    report("NVFP4, pageable staging (pool cap 0)", &pg, a.passes);
    let bf = synthetic_blocks(n, a.shrink, Dtype::Bf16).context("building the bf16 model")?;
    println!("  bf16 block {:.1} MB", bf[0].device_bytes()? as f64 / 1e6);
    let (b16, _) = stream_passes(&dev, bf, cfg, cap, 1, a.passes)?;
    report("bf16, IO-bound (copy x1)", &b16, a.passes);
    println!("summary (targets from issue #6):");
    println!(
        "  pooled pinned H2D / pinned peak        {pooled:.1} / {peak:.1} GB/s = {:.3}  (target >= 0.95)",
        pooled / peak
    );
    println!(
        "  streamed pass / max(upload, compute)   IO-bound {io_ratio:.3}, compute-bound {cb_ratio:.3}  (target <= 1.05)"
    );
    println!(
        "  streamed NVFP4 vs bf16, IO-bound       {:.2}x faster per pass  (target >= 3.3x; bytes {:.2}x fewer)",
        b16.pass_ms / io.pass_ms,
        b16.bytes_uploaded as f64 / io.bytes_uploaded as f64
    );
    println!(
        "  pageable staging vs pooled pinned      {:.2}x slower per pass ({:.1} GB/s)",
        pg.pass_ms / io.pass_ms,
        pg.bytes_uploaded as f64 / (pg.upload_ms * 1e-3) / 1e9
    );
    Ok(())
}
