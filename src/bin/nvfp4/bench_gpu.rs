//! GPU benchmarks: every figure beside a baseline measured in the same process on the same device.

use anyhow::Context;
use cudarc::driver::CudaSlice;
use half::bf16;
use nvfp4::cuda::{Device, PinnedBuffer, PinnedFlags, alloc_zeros, upload};
use nvfp4::format::ScaleLayout;
use nvfp4::ops::{self, DeviceNvfp4};
use nvfp4::quant::{GlobalScale, NonFinite, QuantizeOptions};
use nvfp4::reference::synthetic::Rng;

use crate::bench::{GpuArgs, PinnedArgs};

fn parse_shapes(s: &str) -> anyhow::Result<Vec<(usize, usize)>> {
    s.split(',')
        .map(|p| {
            let (r, c) = p
                .trim()
                .split_once('x')
                .with_context(|| format!("shape `{p}` is not ROWSxCOLS"))?;
            Ok((
                r.parse().with_context(|| format!("rows of `{p}`"))?,
                c.parse().with_context(|| format!("cols of `{p}`"))?,
            ))
        })
        .collect()
}

use nvfp4::diag::{HostMemory, copy_bandwidth};

/// Mean milliseconds of `reps` runs of `f` (after one warm-up): [`nvfp4::diag::time_ms`].
fn time_ms(
    stream: &std::sync::Arc<cudarc::driver::CudaStream>,
    reps: usize,
    f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    nvfp4::diag::time_ms(stream, reps, f)
}

pub fn open(ordinal: usize) -> anyhow::Result<Device> {
    let dev = Device::new(ordinal).context("opening the GPU")?;
    let i = dev.info();
    println!(
        "device {}: {} ({}, {} SMs, {:.1} GiB, driver {}.{})",
        i.ordinal,
        i.name,
        i.arch(),
        i.sm_count,
        i.total_memory as f64 / (1u64 << 30) as f64,
        i.driver_version / 1000,
        i.driver_version % 1000 / 10
    );
    Ok(dev)
}

pub fn quantize(a: &GpuArgs) -> anyhow::Result<()> {
    let dev = open(a.device)?;
    let stream = dev.new_stream()?;
    for (rows, cols) in parse_shapes(&a.shapes)? {
        anyhow::ensure!(cols % 16 == 0, "cols of {rows}x{cols} must be a multiple of 16");
        let n = rows * cols;
        let host: Vec<bf16> = Rng::new(7)
            .normal_vec(n, 1.0)
            .into_iter()
            .map(bf16::from_f32)
            .collect();
        let x = upload(&stream, "x", &host)?;
        let in_bytes = (n * 2) as f64;
        // Baseline: a device-to-device copy of the input; its bandwidth counts the read and the write.
        let mut copy: CudaSlice<bf16> = alloc_zeros(&stream, "copy", n)?;
        let t_copy = time_ms(&stream, a.reps, || Ok(stream.memcpy_dtod(&x, &mut copy)?))?;
        let copy_bw = 2.0 * in_bytes / (t_copy * 1e-3);
        println!("[{rows}, {cols}] bf16 ({:.0} MB)", in_bytes / 1e6);
        println!(
            "  D2D copy (baseline)                {:8.1} us  {:7.0} GB/s",
            t_copy * 1e3,
            copy_bw / 1e9
        );

        let full = QuantizeOptions {
            non_finite: NonFinite::Saturate,
            ..Default::default()
        };
        let mut out = DeviceNvfp4::alloc(&stream, "x", rows, cols, &full)?;
        let out_bytes = (out.codes.len() + out.scales.len()) as f64;
        let report = |what: &str, ms: f64, bytes: f64| {
            let bw = bytes / (ms * 1e-3);
            println!(
                "  {what:<34} {:8.1} us  {:7.0} GB/s  {:.2} of the copy",
                ms * 1e3,
                bw / 1e9,
                bw / copy_bw
            );
        };
        let t = time_ms(&stream, a.reps, || {
            Ok(ops::quantize_into(&dev, &stream, "x", &x, &full, &mut out)?)
        })?;
        report("quantize (amax pass + blocks)", t, 2.0 * in_bytes + out_bytes);
        let given = QuantizeOptions {
            global_scale: GlobalScale::Given(0.01),
            ..full
        };
        let t = time_ms(&stream, a.reps, || {
            Ok(ops::quantize_into(&dev, &stream, "x", &x, &given, &mut out)?)
        })?;
        report("quantize, given scale (blocks only)", t, in_bytes + out_bytes);
        let swz = QuantizeOptions {
            scale_layout: ScaleLayout::Swizzled128x4,
            ..given
        };
        let mut out_s = DeviceNvfp4::alloc(&stream, "x", rows, cols, &swz)?;
        let t = time_ms(&stream, a.reps, || {
            Ok(ops::quantize_into(&dev, &stream, "x", &x, &swz, &mut out_s)?)
        })?;
        report("  same, swizzled scales", t, in_bytes + out_bytes);
        let mut y: CudaSlice<bf16> = alloc_zeros(&stream, "y", n)?;
        let t = time_ms(&stream, a.reps, || {
            Ok(ops::dequantize(&dev, &stream, &out, &mut y)?)
        })?;
        report("dequantize -> bf16", t, in_bytes + out_bytes);
    }
    Ok(())
}

pub fn pinned(a: &PinnedArgs) -> anyhow::Result<()> {
    let dev = open(a.device)?;
    let stream = dev.new_stream()?;
    let bytes = a.mib << 20;
    println!(
        "host<->device copies of {} MiB, mean of {} (CUDA events)",
        a.mib, a.reps
    );
    let (h2d, d2h) = copy_bandwidth(&dev, &stream, bytes, a.reps, HostMemory::Pageable)?;
    println!("  pageable (Vec<u8>)       H2D {h2d:6.1} GB/s   D2H {d2h:6.1} GB/s");
    for flags in [
        PinnedFlags::Default,
        PinnedFlags::Portable,
        PinnedFlags::WriteCombined,
    ] {
        let (h2d, d2h) = copy_bandwidth(&dev, &stream, bytes, a.reps, HostMemory::Pinned(flags))?;
        let p = PinnedBuffer::new(dev.context(), bytes, flags)?;
        // Host-side read of the buffer: write-combined memory is uncached, which a stager pays for.
        let t0 = std::time::Instant::now();
        let sum: u64 = p.as_slice().iter().step_by(64).map(|&b| b as u64).sum();
        let host_read = bytes as f64 / t0.elapsed().as_secs_f64() / 1e9;
        std::hint::black_box(sum);
        println!(
            "  pinned {:<17} H2D {:6.1} GB/s   D2H {:6.1} GB/s   host read (1 byte per line) {:6.1} GB/s",
            format!("{flags:?}"),
            h2d,
            d2h,
            host_read
        );
    }
    Ok(())
}
