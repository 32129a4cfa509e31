//! GPU quantize, dequantize and scale-layout conversion against the CPU, byte for byte.

use std::sync::Arc;

use cudarc::driver::CudaStream;
use half::{bf16, f16};
use nvfp4::cuda::{Device, KernelId, alloc_zeros, download, upload};
use nvfp4::format::{ScaleLayout, ZeroSign};
use nvfp4::ops::{self, DeviceNvfp4, GpuElement};
use nvfp4::quant::{self, GlobalScale, GlobalScaleRule, NonFinite, QuantizeOptions};
use nvfp4::reference::synthetic::Rng;
use nvfp4::{Error, Nvfp4Tensor};

use crate::common::{assert_same_tensor, convert, device, dtype_tests, mixed_values, under_sanitizer};

/// Quantizes on both sides and compares every byte; `what` names the case in the failure message.
fn check_quantize<T: GpuElement>(
    dev: &Device,
    stream: &Arc<CudaStream>,
    host: &[T],
    rows: usize,
    cols: usize,
    opts: &QuantizeOptions,
    what: &str,
) {
    let cpu = quant::quantize("x", host, rows, cols, opts);
    let x = upload(stream, "x", host).unwrap();
    let gpu = ops::quantize(dev, stream, "x", &x, rows, cols, opts).and_then(|t| t.download(stream));
    match (cpu, gpu) {
        (Ok(c), Ok(g)) => {
            assert_same_tensor(&c, &g, what);
        }
        (Err(Error::NonFinite { index: a, .. }), Err(Error::NonFinite { index: b, .. })) => {
            assert_eq!(a, b, "{what}: first non-finite index")
        }
        (c, g) => panic!("{what}: cpu {:?} vs gpu {:?}", c.map(|_| ()), g.map(|_| ())),
    }
}

fn option_grid() -> Vec<QuantizeOptions> {
    let mut v = Vec::new();
    for layout in [ScaleLayout::Linear, ScaleLayout::Swizzled128x4] {
        for zero_sign in [ZeroSign::ModelOpt, ZeroSign::Hardware] {
            for global_scale in [
                GlobalScale::FromAmax(GlobalScaleRule::Divide),
                GlobalScale::FromAmax(GlobalScaleRule::Reciprocal),
                GlobalScale::Given(0.01),
            ] {
                for clamp_scale in [true, false] {
                    v.push(QuantizeOptions {
                        global_scale,
                        zero_sign,
                        scale_layout: layout,
                        clamp_scale,
                        ..Default::default()
                    });
                }
            }
        }
    }
    v
}

/// Shapes: 1x16, rows not a multiple of 128, K/16 not a multiple of 4, several tiles.
const SHAPES: [(usize, usize); 6] = [(1, 16), (3, 48), (130, 80), (257, 272), (64, 4096), (1000, 1040)];

fn quantize_matches_cpu_for<T: GpuElement>(test: &str) {
    let Some(dev) = device(test) else { return };
    let stream = dev.new_stream().unwrap();
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    for (rows, cols) in SHAPES {
        let host: Vec<T> = convert(&mixed_values(&mut rng, rows * cols));
        for opts in option_grid() {
            check_quantize(
                &dev,
                &stream,
                &host,
                rows,
                cols,
                &opts,
                &format!("seed {seed} {rows}x{cols} {opts:?}"),
            );
        }
    }
}

dtype_tests!(quantize_matches_cpu_for;
    gpu_quantize_matches_cpu_f32 => f32,
    gpu_quantize_matches_cpu_f16 => f16,
    gpu_quantize_matches_cpu_bf16 => bf16,
);

/// Tensors big enough that every thread of the capped grid (16 blocks per SM) walks several units (the
/// shapes above give each thread at most one): the walk's carry from one row to the next is exercised
/// on every dtype, with both scale layouts and both global-scale sources.
fn quantize_long_walks_for<T: GpuElement>(test: &str, rows: usize) {
    let Some(dev) = device(test) else { return };
    let stream = dev.new_stream().unwrap();
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    let cols = 8192;
    let units = rows * cols / 16;
    let slots = 16 * 256 * dev.info().sm_count as usize;
    assert!(
        units > 5 * slots,
        "{rows}x{cols} gives {units} units for {slots} threads"
    );
    let host: Vec<T> = convert(&mixed_values(&mut rng, rows * cols));
    for (global_scale, scale_layout) in [
        (
            GlobalScale::FromAmax(GlobalScaleRule::Reciprocal),
            ScaleLayout::Linear,
        ),
        (GlobalScale::Given(0.02), ScaleLayout::Swizzled128x4),
    ] {
        let opts = QuantizeOptions {
            global_scale,
            scale_layout,
            ..Default::default()
        };
        check_quantize(
            &dev,
            &stream,
            &host,
            rows,
            cols,
            &opts,
            &format!("seed {seed} {rows}x{cols} {opts:?}"),
        );
    }
}

dtype_tests!(quantize_long_walks_for(6144);
    gpu_quantize_long_walks_match_cpu_bf16 => bf16,
    gpu_quantize_long_walks_match_cpu_f16 => f16,
    gpu_quantize_long_walks_match_cpu_f32 => f32,
);

/// x moved by k ulps (k < 0 towards zero), kept within the finite non-negative f32 range.
fn ulps(x: f32, k: i32) -> f32 {
    let b = x.to_bits() as i64 + k as i64;
    f32::from_bits(b.clamp(0, 0x7F7F_FFFF) as u32)
}

/// Elements placed on and a few ulps around every E2M1 rounding threshold of their block, in quotient
/// space (x = t * d, d the block's decode scale as the CPU computes it), over global scales from 2^-80
/// to 2^90, so blocks on both sides of the kernel's fast-quotient range guard are hit; plus subnormal
/// elements around the MODELOPT zero-sign boundary |x| = d * 2^-150. The kernel replaces the division
/// by a per-block reciprocal and two FMAs; this is where a wrong quotient would change a code.
#[test]
fn gpu_quantize_near_e2m1_thresholds_match_cpu() {
    let Some(dev) = device("gpu_quantize_near_e2m1_thresholds_match_cpu") else {
        return;
    };
    let stream = dev.new_stream().unwrap();
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    let thresholds = [0.25f32, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, 0.5, 1.0];
    let blocks = if under_sanitizer() { 64 } else { 2048 };
    for _ in 0..12 {
        let s2 = 2f32.powi((rng.next_u64() % 171) as i32 - 80) * (1.0 + rng.uniform());
        for clamp_scale in [true, false] {
            for zero_sign in [ZeroSign::ModelOpt, ZeroSign::Hardware] {
                let opts = QuantizeOptions {
                    global_scale: GlobalScale::Given(s2),
                    zero_sign,
                    clamp_scale,
                    ..Default::default()
                };
                let mut host = Vec::with_capacity(blocks * 16);
                for _ in 0..blocks {
                    // The block maximum sets the scale: 6 * s2 * S for a random S across E4M3's range.
                    let s = 2f32.powi((rng.next_u64() % 19) as i32 - 10) * (1.0 + rng.uniform());
                    let bmax = 6.0 * s2 * s;
                    let mut block = vec![0.0f32; 16];
                    block[0] = bmax;
                    let one = quant::quantize("probe", &block, 1, 16, &opts).unwrap();
                    let d = nvfp4::format::e4m3::decode_f32(one.scales()[0]) * s2;
                    for (j, x) in block.iter_mut().enumerate().skip(1) {
                        let sign = if rng.next_u64() % 2 == 0 { 1.0 } else { -1.0 };
                        *x = if j == 15 {
                            // Near the zero-sign boundary: d * 2^-150, in subnormal steps.
                            let z = (d as f64 * 2f64.powi(-150)) as f32;
                            sign * ulps(z, (rng.next_u64() % 7) as i32 - 3)
                        } else {
                            let t = thresholds[(rng.next_u64() % thresholds.len() as u64) as usize];
                            sign * ulps(t * d, (rng.next_u64() % 9) as i32 - 4).min(bmax)
                        };
                    }
                    host.extend_from_slice(&block);
                }
                check_quantize(
                    &dev,
                    &stream,
                    &host,
                    blocks,
                    16,
                    &opts,
                    &format!("seed {seed} s2 {s2:e} thresholds f32 {opts:?}"),
                );
                let b: Vec<bf16> = convert(&host);
                check_quantize(
                    &dev,
                    &stream,
                    &b,
                    blocks,
                    16,
                    &opts,
                    &format!("seed {seed} s2 {s2:e} thresholds bf16 {opts:?}"),
                );
            }
        }
    }
}

/// Block scales on, and a few ulps around, every rounding boundary of E4M3: each midpoint between two
/// neighbouring E4M3 values (a tie, to even), the subnormal ties below 2^-9 that the clamp lifts or
/// that round to 0 without it, and the saturation region past 448. The global scale makes 6 * s2 a
/// power of two, so the block maximum divided by it is exactly the quotient placed there. On sm_89+
/// the kernel encodes and decodes the scale with the hardware E4M3 conversions rather than the integer
/// codec; this is where a rounding difference between the two would show.
#[test]
fn gpu_quantize_scale_ties_match_cpu() {
    let Some(dev) = device("gpu_quantize_scale_ties_match_cpu") else {
        return;
    };
    let stream = dev.new_stream().unwrap();
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    let e4m3 = nvfp4::format::e4m3::decode_f32;
    let mut quotients: Vec<f32> = (0u8..0x7E).map(|b| (e4m3(b) + e4m3(b + 1)) / 2.0).collect();
    quotients.extend([
        2f32.powi(-11),
        3.0 * 2f32.powi(-11),
        2f32.powi(-12),
        448.0,
        456.0,
        464.0,
        480.0,
        1e6,
    ]);
    for k in [-20, -3, 0, 5, 20] {
        let s2 = (1.0f32 / 3.0) * 2f32.powi(k);
        let s6 = 6.0 * s2;
        assert_eq!(
            s6.to_bits() & 0x7F_FFFF,
            0,
            "6 * s2 = {s6:e} is not a power of two"
        );
        let mut host = Vec::new();
        for &q in &quotients {
            for off in -2..=2 {
                let bmax = ulps(q, off) * s6;
                host.push(bmax);
                for _ in 1..16 {
                    let sign = if rng.next_u64() % 2 == 0 { 1.0 } else { -1.0 };
                    host.push(sign * bmax * rng.uniform());
                }
            }
        }
        let rows = host.len() / 16;
        for clamp_scale in [true, false] {
            let opts = QuantizeOptions {
                global_scale: GlobalScale::Given(s2),
                clamp_scale,
                ..Default::default()
            };
            let what = format!("seed {seed} s2 {s2:e} scale ties {opts:?}");
            check_quantize(&dev, &stream, &host, rows, 16, &opts, &format!("{what} f32"));
            let b: Vec<bf16> = convert(&host);
            check_quantize(&dev, &stream, &b, rows, 16, &opts, &format!("{what} bf16"));
            let h: Vec<f16> = convert(&host);
            check_quantize(&dev, &stream, &h, rows, 16, &opts, &format!("{what} f16"));
        }
    }
}

#[test]
fn gpu_quantize_special_values_match_cpu() {
    let Some(dev) = device("gpu_quantize_special_values_match_cpu") else {
        return;
    };
    let stream = dev.new_stream().unwrap();
    let s2 = 0.01f32;
    let mut specials = vec![
        0.0,
        -0.0,
        f32::from_bits(1),
        -f32::from_bits(0x7F_FFFF),
        f32::MIN_POSITIVE,
        1e-30,
        448.0 * 6.0 * s2,
        448.0 * 6.0 * s2 * 1.001,
        -1e30,
        f32::MAX,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
    ];
    // Exact ties of the E2M1 grid for a block whose scale is 1.0 * s2 * k.
    for t in [0.25f32, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0] {
        specials.push(t * 6.0 * s2);
        specials.push(-t * 6.0 * s2);
    }
    while specials.len() % 16 != 0 {
        specials.push(6.0 * s2 * 6.0);
    }
    let rows = specials.len() / 16;
    for opts in option_grid() {
        for non_finite in [NonFinite::Saturate, NonFinite::Error] {
            let opts = QuantizeOptions { non_finite, ..opts };
            check_quantize(
                &dev,
                &stream,
                &specials,
                rows,
                16,
                &opts,
                &format!("specials f32 {opts:?}"),
            );
            let h: Vec<f16> = convert(&specials);
            check_quantize(
                &dev,
                &stream,
                &h,
                rows,
                16,
                &opts,
                &format!("specials f16 {opts:?}"),
            );
            let b: Vec<bf16> = convert(&specials);
            check_quantize(
                &dev,
                &stream,
                &b,
                rows,
                16,
                &opts,
                &format!("specials bf16 {opts:?}"),
            );
        }
    }
    // An all-zero tensor: global scale 0, scales 0x38, codes 0.
    let zeros = vec![0.0f32; 64];
    check_quantize(
        &dev,
        &stream,
        &zeros,
        2,
        32,
        &QuantizeOptions::default(),
        "all zero",
    );
}

#[test]
fn gpu_quantize_pads_k_like_cpu() {
    let Some(dev) = device("gpu_quantize_pads_k_like_cpu") else {
        return;
    };
    let stream = dev.new_stream().unwrap();
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    for (rows, cols) in [(1, 1), (5, 17), (130, 100), (3, 4095)] {
        let host: Vec<bf16> = convert(&mixed_values(&mut rng, rows * cols));
        for layout in [ScaleLayout::Linear, ScaleLayout::Swizzled128x4] {
            let opts = QuantizeOptions {
                pad_k: true,
                scale_layout: layout,
                ..Default::default()
            };
            check_quantize(
                &dev,
                &stream,
                &host,
                rows,
                cols,
                &opts,
                &format!("seed {seed} pad {rows}x{cols}"),
            );
        }
        let x = upload(&stream, "x", &host).unwrap();
        let err = ops::quantize(&dev, &stream, "x", &x, rows, cols, &QuantizeOptions::default());
        assert!(
            cols % 16 == 0 || matches!(err, Err(Error::Shape { .. })),
            "unpadded K {cols} must be refused"
        );
    }
}

#[test]
fn gpu_quantize_kernel_writes_every_byte() {
    // Poison the outputs, launch the kernel directly, and compare: a byte the kernel forgot shows up.
    let Some(dev) = device("gpu_quantize_kernel_writes_every_byte") else {
        return;
    };
    let stream = dev.new_stream().unwrap();
    let seed = Rng::fresh_seed();
    let (rows, cols) = (77, 208);
    let host: Vec<bf16> = convert(&mixed_values(&mut Rng::new(seed), rows * cols));
    let cpu = quant::quantize("x", &host, rows, cols, &QuantizeOptions::default()).unwrap();
    let x = upload(&stream, "x", &host).unwrap();
    let shape = nvfp4::cuda::launch::QuantizeShape {
        rows,
        cols,
        cols_padded: cols,
        scale_layout: ScaleLayout::Linear,
        zero_sign: ZeroSign::ModelOpt,
        clamp_scale: true,
    };
    // Once with the global scale given, once derived by the kernel from the amax (then the kernel's
    // store of the scale is checked too, over a poisoned NaN).
    let (amax, _) = quant::amax(&host);
    let GlobalScale::FromAmax(rule) = QuantizeOptions::default().global_scale else {
        panic!("the default global scale is derived from the amax")
    };
    let amax_bits = upload(&stream, "amax", &[amax.to_bits()]).unwrap();
    let amax_view = amax_bits.as_view();
    for derive in [None, Some((&amax_view, rule))] {
        let given = if derive.is_some() {
            f32::NAN
        } else {
            cpu.global_scale()
        };
        let mut gs = upload(&stream, "gs", &[given]).unwrap();
        let mut codes = upload(&stream, "codes", &vec![0xA5u8; rows * cols / 2]).unwrap();
        let mut scales = upload(&stream, "scales", &vec![0x5Au8; rows * cols / 16]).unwrap();
        nvfp4::cuda::launch::quantize(&dev, &stream, &x, shape, &mut gs, derive, &mut codes, &mut scales)
            .unwrap();
        let what = format!("seed {seed}, derived scale {}", derive.is_some());
        assert_eq!(download(&stream, "codes", &codes).unwrap(), cpu.codes(), "{what}");
        assert_eq!(
            download(&stream, "scales", &scales).unwrap(),
            cpu.scales(),
            "{what}"
        );
        assert_eq!(
            download(&stream, "gs", &gs).unwrap()[0].to_bits(),
            cpu.global_scale().to_bits(),
            "{what}"
        );
    }
}

fn dequantize_matches_cpu_for<T: GpuElement + PartialEq + std::fmt::Debug>(
    dev: &Device,
    stream: &Arc<CudaStream>,
    t: &Nvfp4Tensor,
    what: &str,
) {
    let cpu: Vec<T> = quant::dequantize(t);
    let d = DeviceNvfp4::upload(stream, t).unwrap();
    // Poison: every output starts as all-ones bits (a NaN in every type).
    let mut out = upload(stream, "out", &vec![T::from_f32(f32::NAN); cpu.len()]).unwrap();
    ops::dequantize(dev, stream, &d, &mut out).unwrap();
    let gpu = download(stream, "out", &out).unwrap();
    let bits = |v: &T| bytemuck::bytes_of(v).to_vec();
    if let Some(i) = cpu.iter().zip(&gpu).position(|(a, b)| bits(a) != bits(b)) {
        panic!("{what}: element {i}: cpu {:?} gpu {:?}", cpu[i], gpu[i]);
    }
}

#[test]
fn gpu_dequantize_matches_cpu_bit_for_bit() {
    let Some(dev) = device("gpu_dequantize_matches_cpu_bit_for_bit") else {
        return;
    };
    let stream = dev.new_stream().unwrap();
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    for (rows, cols) in SHAPES {
        let host = mixed_values(&mut rng, rows * cols);
        for layout in [ScaleLayout::Linear, ScaleLayout::Swizzled128x4] {
            let opts = QuantizeOptions {
                scale_layout: layout,
                ..Default::default()
            };
            let t = quant::quantize("x", &host, rows, cols, &opts).unwrap();
            let what = format!("seed {seed} {rows}x{cols} {layout:?}");
            dequantize_matches_cpu_for::<f32>(&dev, &stream, &t, &what);
            dequantize_matches_cpu_for::<f16>(&dev, &stream, &t, &what);
            dequantize_matches_cpu_for::<bf16>(&dev, &stream, &t, &what);
        }
    }
}

#[test]
fn gpu_scale_layout_conversion_matches_cpu() {
    let Some(dev) = device("gpu_scale_layout_conversion_matches_cpu") else {
        return;
    };
    let stream = dev.new_stream().unwrap();
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    for (rows, cols) in SHAPES {
        let host = mixed_values(&mut rng, rows * cols);
        let lin = quant::quantize("x", &host, rows, cols, &QuantizeOptions::default()).unwrap();
        let swz = lin.clone().with_scale_layout(ScaleLayout::Swizzled128x4).unwrap();
        let mut d = DeviceNvfp4::upload(&stream, &lin).unwrap();
        d.set_scale_layout(&dev, &stream, ScaleLayout::Swizzled128x4)
            .unwrap();
        assert_eq!(
            d.download(&stream).unwrap(),
            swz,
            "seed {seed} {rows}x{cols} to swizzled"
        );
        d.set_scale_layout(&dev, &stream, ScaleLayout::Linear).unwrap();
        assert_eq!(
            d.download(&stream).unwrap(),
            lin,
            "seed {seed} {rows}x{cols} back to linear"
        );
    }
}

#[test]
fn gpu_every_kernel_loads() {
    let Some(dev) = device("gpu_every_kernel_loads") else {
        return;
    };
    assert!(dev.has_kernels(), "no kernels for {}", dev.info().arch());
    // A zero-sized launch of each kernel through its op proves the symbol resolved.
    for k in KernelId::ALL {
        eprintln!("kernel {} from unit {}", k.symbol(), k.unit());
    }
    let stream = dev.new_stream().unwrap();
    let x = upload(&stream, "x", &[1.0f32; 16]).unwrap();
    let mut t = ops::quantize(&dev, &stream, "x", &x, 1, 16, &QuantizeOptions::default()).unwrap();
    t.set_scale_layout(&dev, &stream, ScaleLayout::Swizzled128x4)
        .unwrap();
    let mut out = alloc_zeros::<f32>(&stream, "out", 16).unwrap();
    ops::dequantize(&dev, &stream, &t, &mut out).unwrap();
    assert_eq!(download(&stream, "out", &out).unwrap(), vec![1.0f32; 16]);
    println!("device: {:?}", dev.info());
}

#[test]
fn gpu_out_of_memory_is_a_typed_error() {
    let Some(dev) = device("gpu_out_of_memory_is_a_typed_error") else {
        return;
    };
    if under_sanitizer() {
        // memcheck reports the refused allocation itself as an API error; the path runs unsanitized.
        eprintln!("SKIPPED gpu_out_of_memory_is_a_typed_error under compute-sanitizer");
        return;
    }
    let stream = dev.new_stream().unwrap();
    let too_big = dev.info().total_memory * 4;
    match alloc_zeros::<u8>(&stream, "huge", too_big) {
        Err(Error::OutOfMemory { bytes, .. }) => assert_eq!(bytes, too_big),
        other => panic!("expected OutOfMemory, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn gpu_quantize_reports_the_first_non_finite_like_cpu() {
    let Some(dev) = device("gpu_quantize_reports_the_first_non_finite_like_cpu") else {
        return;
    };
    let stream = dev.new_stream().unwrap();
    let mut host = vec![1.0f32; 64 * 1024];
    host[40_000] = f32::INFINITY;
    host[50_000] = f32::NAN;
    let x = upload(&stream, "x", &host).unwrap();
    match ops::quantize(&dev, &stream, "x", &x, 64, 1024, &QuantizeOptions::default()) {
        Err(Error::NonFinite { index, row, col, .. }) => assert_eq!((index, row, col), (40_000, 39, 64)),
        other => panic!("expected NonFinite, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn gpu_quantize_beyond_2_pow_32_elements() {
    let Some(dev) = device("gpu_quantize_beyond_2_pow_32_elements") else {
        return;
    };
    if under_sanitizer() {
        eprintln!(
            "SKIPPED gpu_quantize_beyond_2_pow_32_elements under compute-sanitizer (hours at this size)"
        );
        return;
    }
    // 131073 x 32768 = 2^32 + 32768 elements: every index past 2^32 must land where the CPU puts it.
    let (rows, cols) = ((1usize << 17) + 1, 1usize << 15);
    let need = rows * cols * 2 + rows * cols / 2 * 2 + rows * cols / 16;
    if dev.info().total_memory < need + (1 << 30) {
        panic!(
            "the device has {} bytes, the test needs {need}",
            dev.info().total_memory
        );
    }
    use rayon::prelude::*;
    let seed = Rng::fresh_seed();
    let host: Vec<bf16> = (0..rows * cols)
        .into_par_iter()
        .map(|i| {
            let mut r = Rng::new(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            bf16::from_f32(r.normal() * if i % 4097 == 0 { 50.0 } else { 1.0 })
        })
        .collect();
    let stream = dev.new_stream().unwrap();
    // Probe the allocation first: a memory checker's shadow memory can exhaust the device at this
    // size, which is a visible skip, not a failure (the plain run on an 80 GB device needs ~13 GB).
    match alloc_zeros::<u8>(&stream, "probe", need) {
        Err(Error::OutOfMemory { bytes, .. }) => {
            eprintln!(
                "SKIPPED gpu_quantize_beyond_2_pow_32_elements: {bytes} bytes not available on the device"
            );
            return;
        }
        other => drop(other.unwrap()),
    }
    check_quantize(
        &dev,
        &stream,
        &host,
        rows,
        cols,
        &QuantizeOptions::default(),
        &format!("seed {seed} 2^32+"),
    );
}
