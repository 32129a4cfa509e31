//! `ops::GpuQuantizer` (the `--gpu` checkpoint pipeline) against the CPU: the same tensors and errors
//! as `quant::quantize`, the same output files as the CPU `quantize_checkpoint`, and error sums that
//! match the CPU measure.

use std::path::Path;

use half::{bf16, f16};
use nvfp4::checkpoint::{self, Checkpoint, QuantizeJob, cpu_quantizer};
use nvfp4::format::{ScaleLayout, ZeroSign};
use nvfp4::ops::{GpuElement, GpuQuantizer};
use nvfp4::quant::{self, GlobalScale, GlobalScaleRule, NonFinite, QuantizeOptions};
use nvfp4::reference::synthetic::Rng;
use safetensors::Dtype;

use crate::checkpoint_common as ckc;
use crate::common::{assert_same_tensor, convert, device, mixed_values};

fn options() -> Vec<QuantizeOptions> {
    let mut v = Vec::new();
    for scale_layout in [ScaleLayout::Linear, ScaleLayout::Swizzled128x4] {
        for zero_sign in [ZeroSign::ModelOpt, ZeroSign::Hardware] {
            for global_scale in [
                GlobalScale::FromAmax(GlobalScaleRule::Divide),
                GlobalScale::FromAmax(GlobalScaleRule::Reciprocal),
                GlobalScale::Given(0.01),
            ] {
                v.push(QuantizeOptions {
                    global_scale,
                    zero_sign,
                    scale_layout,
                    clamp_scale: zero_sign == ZeroSign::ModelOpt,
                    pad_k: true,
                    ..QuantizeOptions::default()
                });
            }
        }
    }
    v
}

fn close(a: f64, b: f64) -> bool {
    a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-9 * b.abs()
}

/// One tensor through the GPU quantizer and through `quant::quantize` (+ `quant::error_stats`):
/// identical tensors, or identical errors.
fn check_one<T: GpuElement + bytemuck::Pod>(
    gpu: &mut GpuQuantizer,
    host: &[T],
    rows: usize,
    cols: usize,
    opts: &QuantizeOptions,
    what: &str,
) {
    let cpu = quant::quantize("w", host, rows, cols, opts);
    let got = gpu.quantize_slice("w", host, rows, cols, opts, true);
    match (cpu, got) {
        (Ok(c), Ok((g, stats))) => {
            assert_same_tensor(&c, &g, what);
            let e = quant::error_stats(host, &c);
            let s = stats.expect("measure was asked for");
            assert!(
                close(s.signal, e.signal) && close(s.noise, e.noise),
                "{what}: {s:?} vs {e:?}"
            );
            assert_eq!(s.max_abs.to_bits(), e.max_abs.to_bits(), "{what}: {s:?} vs {e:?}");
        }
        (Err(c), Err(g)) => assert_eq!(c.to_string(), g.to_string(), "{what}"),
        (c, g) => panic!("{what}: cpu {:?} vs gpu {:?}", c.map(|_| ()), g.map(|_| ())),
    }
}

/// Every option on every dtype, shapes growing and shrinking through one quantizer (its reused
/// buffers must never leak one tensor into the next), with chunks small enough that most tensors
/// take several.
#[test]
fn gpu_quantizer_matches_cpu_quantize_for_every_option() {
    let Some(dev) = device("gpu_quantizer_matches_cpu_quantize_for_every_option") else {
        return;
    };
    let mut gpu = GpuQuantizer::with_chunk_bytes(dev, 3000).unwrap();
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    for (rows, cols) in [
        (257usize, 272usize),
        (3, 48),
        (130, 80),
        (7, 50),
        (1, 16),
        (64, 4112),
        (2, 24),
    ] {
        let v = mixed_values(&mut rng, rows * cols);
        for opts in options() {
            let what = format!("seed {seed} {rows}x{cols} {opts:?}");
            check_one::<f32>(&mut gpu, &v, rows, cols, &opts, &format!("{what} f32"));
            check_one::<f16>(&mut gpu, &convert(&v), rows, cols, &opts, &format!("{what} f16"));
            check_one::<bf16>(&mut gpu, &convert(&v), rows, cols, &opts, &format!("{what} bf16"));
        }
    }
    let st = gpu.stages();
    assert!(st.tensors > 0 && st.h2d.bytes == st.read.bytes && st.kernels.bytes == st.read.bytes);
    assert!(st.h2d.seconds > 0.0 && st.d2h.seconds > 0.0, "{st:?}");
}

/// Errors are the CPU quantizer's, word for word: the first NaN/Inf (and its value) before a bad given
/// scale, K not a multiple of 16, a length that does not match; an empty tensor is a tensor.
#[test]
fn gpu_quantizer_errors_and_empty_tensors_match_cpu() {
    let Some(dev) = device("gpu_quantizer_errors_and_empty_tensors_match_cpu") else {
        return;
    };
    let mut gpu = GpuQuantizer::with_chunk_bytes(dev, 1 << 12).unwrap();
    let strict = QuantizeOptions::default();
    let mut v = vec![0.5f32; 64 * 1024];
    v[40_000] = f32::INFINITY;
    v[50_000] = f32::NAN;
    check_one(&mut gpu, &v, 64, 1024, &strict, "first non-finite");
    let bad_scale = QuantizeOptions {
        global_scale: GlobalScale::Given(-1.0),
        ..strict
    };
    check_one(
        &mut gpu,
        &v,
        64,
        1024,
        &bad_scale,
        "non-finite before the bad scale",
    );
    check_one(&mut gpu, &vec![1.0f32; 1024], 64, 16, &bad_scale, "bad scale");
    let saturate = QuantizeOptions {
        non_finite: NonFinite::Saturate,
        ..strict
    };
    check_one(&mut gpu, &v, 64, 1024, &saturate, "saturated");
    check_one(&mut gpu, &[1.0f32; 48], 2, 24, &strict, "K not a multiple of 16");
    check_one(&mut gpu, &[1.0f32; 40], 2, 24, &saturate, "short data");
    check_one::<bf16>(&mut gpu, &[], 0, 64, &strict, "no rows");
    check_one::<f16>(&mut gpu, &[], 5, 0, &strict, "no columns");
    // And the quantizer still works after every error.
    check_one(
        &mut gpu,
        &vec![0.25f32; 4096],
        16,
        256,
        &strict,
        "after the errors",
    );
}

/// The bigger tensors make the double-buffered upload run over many chunks.
fn tensors() -> Vec<ckc::Gen> {
    let mut g = ckc::model_tensors();
    let big = |name, dtype, shape: &[usize]| ckc::Gen {
        name,
        dtype,
        shape: shape.to_vec(),
    };
    g.push(big(
        "model.layers.1.mlp.gate_proj.weight",
        Dtype::BF16,
        &[300, 1040],
    ));
    g.push(big("model.layers.1.mlp.up_proj.weight", Dtype::F32, &[129, 2064]));
    g.push(big(
        "model.layers.1.self_attn.o_proj.weight",
        Dtype::F16,
        &[1000, 512],
    ));
    g
}

fn files_of(path: &Path) -> Vec<(String, Vec<u8>)> {
    if path.is_dir() {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    } else {
        vec![(String::new(), std::fs::read(path).unwrap())]
    }
}

/// A single-file and a sharded checkpoint quantized by the GPU quantizer (default chunks and tiny
/// ones) give byte-identical outputs to the CPU quantizer's, and the same report within f64 rounding.
#[test]
fn gpu_checkpoint_output_is_byte_identical_to_cpu() {
    let Some(dev) = device("gpu_checkpoint_output_is_byte_identical_to_cpu") else {
        return;
    };
    let mut gpu = GpuQuantizer::new(dev).unwrap();
    // A second quantizer (its own device handle on the same GPU) with chunks of 4 KiB.
    let mut small = GpuQuantizer::with_chunk_bytes(nvfp4::cuda::Device::new(0).unwrap(), 4096).unwrap();
    let seed = ckc::seed();
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let t = ckc::generate(&mut rng, &tensors());
    let single = dir.path().join("model.safetensors");
    ckc::write(&single, &t);
    let sharded = dir.path().join("sharded");
    ckc::write_sharded(&sharded, &t);
    let job = QuantizeJob {
        measure: true,
        ..QuantizeJob::default()
    };
    for (input, name) in [(&single, "single"), (&sharded, "sharded")] {
        let ck = Checkpoint::open(input).unwrap();
        let cpu_out = dir.path().join(format!("{name}-cpu"));
        let cpu = checkpoint::quantize_checkpoint(&ck, &cpu_out, &job, &cpu_quantizer, &|_| {}).unwrap();
        for (g, chunks) in [(&mut gpu, "default"), (&mut small, "4096")] {
            let gpu_out = dir.path().join(format!("{name}-gpu-{chunks}"));
            let s = checkpoint::quantize_checkpoint_with(&ck, &gpu_out, &job, g, &|_| {}).unwrap();
            let what = format!("seed {seed} {name}, {chunks} chunks");
            let (a, b) = (files_of(&cpu_out), files_of(&gpu_out));
            assert_eq!(
                a.iter().map(|f| &f.0).collect::<Vec<_>>(),
                b.iter().map(|f| &f.0).collect::<Vec<_>>(),
                "{what}: files"
            );
            for ((n, x), (_, y)) in a.iter().zip(&b) {
                assert!(x == y, "{what}: {n} differs");
            }
            assert_eq!(
                (s.quantized, s.copied, s.bytes_written),
                (cpu.quantized, cpu.copied, cpu.bytes_written),
                "{what}"
            );
            assert_eq!(s.layers.len(), cpu.layers.len(), "{what}");
            for (l, c) in s.layers.iter().zip(&cpu.layers) {
                assert_eq!((&l.name, l.shape), (&c.name, c.shape), "{what}");
                assert!(close(l.rel_rmse, c.rel_rmse), "{what}: {l:?} vs {c:?}");
                assert!(close(l.snr_db, c.snr_db), "{what}: {l:?} vs {c:?}");
                assert_eq!(l.max_abs.to_bits(), c.max_abs.to_bits(), "{what}: {l:?} vs {c:?}");
            }
        }
    }
    let st = gpu.stages();
    assert_eq!(st.tensors, 2 * 6, "six quantized tensors per checkpoint: {st:?}");
    eprintln!("stages: {}", st.summary());
}
