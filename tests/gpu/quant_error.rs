//! GPU error sums (`ops::error_stats`, csrc/quant_error.cu) against the CPU's `quant::error_stats`:
//! the same f32 lane sums, so the f64 totals agree to rounding (held to 1e-9 relative) and the maximum
//! exactly.

use std::sync::Arc;

use cudarc::driver::CudaStream;
use half::{bf16, f16};
use nvfp4::cuda::launch::{self, ErrorStatsShape};
use nvfp4::cuda::{Device, download, upload};
use nvfp4::format::ScaleLayout;
use nvfp4::ops::{self, DeviceNvfp4, GpuElement};
use nvfp4::quant::{self, ErrorStats, NonFinite, QuantizeOptions};
use nvfp4::reference::synthetic::Rng;

use crate::common::{convert, device, dtype_tests, mixed_values};

/// Shapes with K a multiple of 16 and not (K padding), one row, a partial last group (K / 16 not a
/// multiple of 16), rows not a multiple of 128 (swizzle padding), and rows whose byte length is not a
/// multiple of 8 (scalar loads).
const SHAPES: [(usize, usize); 12] = [
    (1, 16),
    (3, 48),
    (5, 1),
    (7, 50),
    (2, 24),
    (130, 80),
    (257, 272),
    (33, 4112),
    (64, 4096),
    (9, 4100),
    (1000, 1040),
    (300, 7),
];

/// `a` equals `b` to `rel` relative, NaN matching NaN and infinities matching exactly.
fn close(a: f64, b: f64, rel: f64) -> bool {
    if a.is_nan() || b.is_nan() || a.is_infinite() || b.is_infinite() {
        return a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
    }
    a == b || (a - b).abs() <= rel * b.abs().max(f64::MIN_POSITIVE)
}

fn assert_stats(gpu: &ErrorStats, cpu: &ErrorStats, what: &str) {
    assert!(
        close(gpu.signal, cpu.signal, 1e-9),
        "{what}: Σx² gpu {} cpu {}",
        gpu.signal,
        cpu.signal
    );
    assert!(
        close(gpu.noise, cpu.noise, 1e-9),
        "{what}: Σ(x̂-x)² gpu {} cpu {}",
        gpu.noise,
        cpu.noise
    );
    assert_eq!(
        gpu.max_abs.to_bits(),
        cpu.max_abs.to_bits(),
        "{what}: max |x̂-x| gpu {} cpu {}",
        gpu.max_abs,
        cpu.max_abs
    );
}

/// Quantizes on the CPU (so this tests the error kernels alone), uploads, and compares the GPU sums
/// with the CPU's. The result and partial buffers are poisoned with NaN first.
fn check<T: GpuElement>(
    dev: &Device,
    stream: &Arc<CudaStream>,
    host: &[T],
    rows: usize,
    cols: usize,
    opts: &QuantizeOptions,
    what: &str,
) {
    let q = quant::quantize("x", host, rows, cols, opts).unwrap();
    let cpu = quant::error_stats(host, &q);
    let x = upload(stream, "x", host).unwrap();
    let d = DeviceNvfp4::upload(stream, &q).unwrap();
    let mut out = ops::DeviceErrorStats::new(dev, stream).unwrap();
    out.sums = upload(stream, "poison", &[f64::NAN; 3]).unwrap();
    ops::error_stats_into(dev, stream, &x, &d, &mut out).unwrap();
    let gpu = out.download(stream).unwrap();
    assert_stats(&gpu, &cpu, what);
}

fn error_stats_match_cpu_for<T: GpuElement>(test: &str) {
    let Some(dev) = device(test) else { return };
    let stream = dev.new_stream().unwrap();
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    for (rows, cols) in SHAPES {
        let host: Vec<T> = convert(&mixed_values(&mut rng, rows * cols));
        for layout in [ScaleLayout::Linear, ScaleLayout::Swizzled128x4] {
            let opts = QuantizeOptions {
                pad_k: true,
                scale_layout: layout,
                ..QuantizeOptions::default()
            };
            check(
                &dev,
                &stream,
                &host,
                rows,
                cols,
                &opts,
                &format!("seed {seed} {rows}x{cols} {layout:?}"),
            );
        }
    }
}

dtype_tests!(error_stats_match_cpu_for;
    gpu_error_stats_match_cpu_f32 => f32,
    gpu_error_stats_match_cpu_f16 => f16,
    gpu_error_stats_match_cpu_bf16 => bf16,
);

/// NaN, ±Inf, values whose square overflows or underflows f32, subnormals, -0.0 and all-zero rows
/// (quantized with `NonFinite::Saturate`): the sums carry NaN and Inf as the CPU's do, the maximum
/// skips NaN errors.
#[test]
fn gpu_error_stats_special_values_match_cpu() {
    let Some(dev) = device("gpu_error_stats_special_values_match_cpu") else {
        return;
    };
    let stream = dev.new_stream().unwrap();
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    let specials = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        3.0e38,
        -2.5e38,
        1.0e-40,
        -1.0e-45,
        -0.0,
        1.0e-20,
        65504.0,
    ];
    let opts = QuantizeOptions {
        non_finite: NonFinite::Saturate,
        pad_k: true,
        ..QuantizeOptions::default()
    };
    for (rows, cols) in [(4usize, 64usize), (3, 37), (17, 272)] {
        for case in 0..6 {
            let mut v = mixed_values(&mut rng, rows * cols);
            match case {
                // One special value per tensor, then a few, then many.
                0..=2 => {
                    for _ in 0..(1 << (2 * case)) {
                        let i = (rng.next_u64() as usize) % v.len();
                        v[i] = specials[(rng.next_u64() as usize) % specials.len()];
                    }
                }
                // Finite specials only: the sums stay finite unless a square overflows.
                3 => {
                    for x in v.iter_mut().step_by(5) {
                        *x = specials[3 + (rng.next_u64() as usize) % (specials.len() - 3)];
                    }
                }
                // An all-zero tensor (global scale 0).
                4 => v.fill(0.0),
                // One all-zero row.
                _ => v[..cols].fill(0.0),
            }
            let what = format!("seed {seed} {rows}x{cols} case {case}");
            check::<f32>(&dev, &stream, &v, rows, cols, &opts, &format!("{what} f32"));
            check::<f16>(
                &dev,
                &stream,
                &convert(&v),
                rows,
                cols,
                &opts,
                &format!("{what} f16"),
            );
            check::<bf16>(
                &dev,
                &stream,
                &convert(&v),
                rows,
                cols,
                &opts,
                &format!("{what} bf16"),
            );
        }
    }
}

/// The launch on a view whose first element is not 8- or 16-byte aligned (the scalar loads), with
/// poisoned partials and sums; and the same launch twice gives the same bits (a fixed reduction order).
#[test]
fn gpu_error_stats_unaligned_input_and_deterministic() {
    let Some(dev) = device("gpu_error_stats_unaligned_input_and_deterministic") else {
        return;
    };
    let stream = dev.new_stream().unwrap();
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    let (rows, cols) = (513, 1024);
    let host: Vec<bf16> = convert(&mixed_values(&mut rng, rows * cols + 1));
    let q = quant::quantize("x", &host[1..], rows, cols, &QuantizeOptions::default()).unwrap();
    let cpu = quant::error_stats(&host[1..], &q);
    let x = upload(&stream, "x", &host).unwrap();
    let d = DeviceNvfp4::upload(&stream, &q).unwrap();
    let s = ErrorStatsShape {
        rows,
        cols,
        cols_padded: cols,
        scale_layout: ScaleLayout::Linear,
    };
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mut partials = upload(
            &stream,
            "partials",
            &vec![f64::NAN; launch::error_stats_partials(&dev)],
        )
        .unwrap();
        let mut sums = upload(&stream, "sums", &[f64::NAN; 3]).unwrap();
        launch::error_stats(
            &dev,
            &stream,
            &x.slice(1..),
            &d.codes,
            &d.scales,
            &d.global_scale,
            s,
            &mut partials,
            &mut sums,
        )
        .unwrap();
        let v = download(&stream, "sums", &sums).unwrap();
        runs.push(v.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
        let gpu = ErrorStats {
            signal: v[0],
            noise: v[1],
            max_abs: v[2],
        };
        assert_stats(&gpu, &cpu, &format!("seed {seed} unaligned"));
    }
    assert_eq!(runs[0], runs[1], "seed {seed}: two launches, different bits");
}

/// Buffers of the wrong size are typed errors naming the buffer, not launches.
#[test]
fn gpu_error_stats_refuses_mismatched_buffers() {
    let Some(dev) = device("gpu_error_stats_refuses_mismatched_buffers") else {
        return;
    };
    let stream = dev.new_stream().unwrap();
    let host = vec![1.0f32; 64];
    let q = quant::quantize("x", &host, 4, 16, &QuantizeOptions::default()).unwrap();
    let d = DeviceNvfp4::upload(&stream, &q).unwrap();
    let short = upload(&stream, "x", &host[..48]).unwrap();
    match ops::error_stats(&dev, &stream, &short, &d) {
        Err(nvfp4::Error::Length { .. }) => {}
        other => panic!("expected a length error, got {:?}", other.map(|_| ())),
    }
}
