//! The sm_120 FP4 tensor-core path on the device against the CPU model of the instruction
//! (`nvfp4::reference::mma`): the bare instruction on the recorded vectors and on random tiles, and the
//! whole GEMM kernel against `mma_gemm` bit for bit. On an H100 this runs the sm_90a build, whose
//! instruction is the integer emulation of csrc/common/mma_fp4.cuh; on sm_120 it runs the hardware.

// Outputs are addressed as D[m][n], as the vectors and the PTX ISA write them.
#![allow(clippy::needless_range_loop)]

use half::{bf16, f16};
use nvfp4::cuda::gemm_fp4::{MmaProbeTiles, fp4_mma_on, mma_probe};
use nvfp4::cuda::{Device, alloc_zeros, download, upload};
use nvfp4::format::ScaleLayout;
use nvfp4::ops::{
    self, DeviceNvfp4, Fp4Backend, Fp4GemmPlan, Fp4GemmSpec, Fp4Tile, GemmKernel, GemmPlan, GemmRoute,
    GemmSpec, GpuElement, LinearNvfp4Options,
};
use nvfp4::quant::{self, QuantizeOptions};
use nvfp4::reference::mma::{self, MmaGemmEpilogue, MmaTile, VectorCase};
use nvfp4::reference::{self, synthetic::Rng};
use nvfp4::{Error, Nvfp4Tensor};

use crate::common::{device, mixed_values, under_sanitizer};
use crate::gemm::{exact_fp4, exact_values, narrowing_within};

/// The backend that runs the sm_120 kernel here, or `None` after printing why the test skips.
fn backend(dev: &Device, test: &str) -> Option<Fp4Backend> {
    match fp4_mma_on(dev, true) {
        Ok(mma) => Some(match mma {
            nvfp4::cuda::gemm_fp4::Fp4Mma::Native => Fp4Backend::Native,
            nvfp4::cuda::gemm_fp4::Fp4Mma::Emulated => Fp4Backend::Sm120Emulated,
        }),
        Err(e) => {
            eprintln!("SKIPPED {test}: {e}");
            None
        }
    }
}

/// The recorded vectors: the file `NVFP4_MMA_VECTORS` names, else the copy in tests/data/, embedded in
/// the binary because the GPU tests run staged on another machine, where the source tree is absent.
fn vectors() -> Vec<VectorCase> {
    let text = match std::env::var("NVFP4_MMA_VECTORS") {
        Ok(path) => std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")),
        Err(_) => include_str!("../data/mxf4nvf4-m16n8k64.jsonl").to_string(),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| VectorCase::parse(l).unwrap())
        .collect()
}

fn same(got: f32, expected: u32) -> bool {
    got.to_bits() == expected || (got == 0.0 && f32::from_bits(expected) == 0.0)
}

/// Runs the probe kernel on `tiles` with the given selectors; D per tile.
fn probe(dev: &Device, tiles: &[MmaTile], tid_a: u32, tid_b: u32) -> Vec<[[f32; 8]; 16]> {
    let s = dev.stream();
    let (mut a, mut b, mut sfa, mut sfb, mut c) = (vec![], vec![], vec![], vec![], vec![]);
    let pack = |codes: &[u8; 64]| -> Vec<u8> { codes.chunks(2).map(|p| p[0] | p[1] << 4).collect() };
    for t in tiles {
        t.a.iter().for_each(|r| a.extend(pack(r)));
        t.b.iter().for_each(|r| b.extend(pack(r)));
        sfa.extend(t.sfa.iter().map(|w| u32::from_le_bytes(*w)));
        sfb.extend(t.sfb.iter().map(|w| u32::from_le_bytes(*w)));
        c.extend(t.c.iter().flatten());
    }
    let (a, b) = (upload(s, "a", &a).unwrap(), upload(s, "b", &b).unwrap());
    let (sfa, sfb) = (upload(s, "sfa", &sfa).unwrap(), upload(s, "sfb", &sfb).unwrap());
    let c = upload(s, "c", &c).unwrap();
    // Poison: a kernel that writes nothing leaves NaN payloads no model produces.
    let mut d = upload(s, "d", &vec![f32::from_bits(0x7FC0_DEAD); tiles.len() * 128]).unwrap();
    let t = MmaProbeTiles {
        a: &a,
        b: &b,
        sfa: &sfa,
        sfb: &sfb,
        c: &c,
    };
    mma_probe(dev, s, &t, &mut d, tid_a, tid_b).unwrap();
    let d = download(s, "d", &d).unwrap();
    d.chunks(128)
        .map(|x| std::array::from_fn(|m| std::array::from_fn(|n| x[m * 8 + n])))
        .collect()
}

#[test]
fn gpu_mma_instruction_reproduces_every_vector_with_every_selector() {
    let Some(dev) = device("gpu_mma_instruction_reproduces_every_vector_with_every_selector") else {
        return;
    };
    if backend(
        &dev,
        "gpu_mma_instruction_reproduces_every_vector_with_every_selector",
    )
    .is_none()
    {
        return;
    }
    let cases = vectors();
    let tiles: Vec<MmaTile> = cases.iter().map(|c| c.tile.clone()).collect();
    for (tid_a, tid_b) in (0..2).flat_map(|a| (0..4).map(move |b| (a, b))) {
        let d = probe(&dev, &tiles, tid_a, tid_b);
        for (i, (case, d)) in cases.iter().zip(&d).enumerate() {
            for m in 0..16 {
                for n in 0..8 {
                    assert!(
                        same(d[m][n], case.d_bits[m][n]),
                        "selectors ({tid_a}, {tid_b}) case {i} ({}) D[{m}][{n}]: device {:#010x}, expected {:#010x}",
                        case.category,
                        d[m][n].to_bits(),
                        case.d_bits[m][n]
                    );
                }
            }
        }
    }
}

#[test]
fn gpu_mma_instruction_matches_the_model_on_random_tiles() {
    let Some(dev) = device("gpu_mma_instruction_matches_the_model_on_random_tiles") else {
        return;
    };
    if backend(&dev, "gpu_mma_instruction_matches_the_model_on_random_tiles").is_none() {
        return;
    }
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    let count = if under_sanitizer() { 64 } else { 2048 };
    let tiles: Vec<MmaTile> = (0..count)
        .map(|_| {
            // Every scale byte but NaN (the vectors cover NaN), C across the whole f32 range.
            let mut sf = || loop {
                let b = (rng.next_u64() & 0xFF) as u8;
                if b & 0x7F != 0x7F {
                    break b;
                }
            };
            let sfa = std::array::from_fn(|_| std::array::from_fn(|_| sf()));
            let sfb = std::array::from_fn(|_| std::array::from_fn(|_| sf()));
            let a = std::array::from_fn(|_| std::array::from_fn(|_| (rng.next_u64() & 0xF) as u8));
            let b = std::array::from_fn(|_| std::array::from_fn(|_| (rng.next_u64() & 0xF) as u8));
            let c = std::array::from_fn(|_| {
                std::array::from_fn(|_| {
                    loop {
                        let v = f32::from_bits(rng.next_u64() as u32);
                        if v.is_finite() {
                            break if rng.next_u64() % 2 == 0 { v } else { v * 1e-30 };
                        }
                    }
                })
            });
            MmaTile { a, b, sfa, sfb, c }
        })
        .collect();
    let d = probe(&dev, &tiles, 1, 2);
    for (i, (t, d)) in tiles.iter().zip(&d).enumerate() {
        let want = mma::mma_m16n8k64(t);
        for m in 0..16 {
            for n in 0..8 {
                assert!(
                    same(d[m][n], want[m][n].to_bits()),
                    "seed {seed} tile {i} D[{m}][{n}]: device {:#010x}, model {:#010x}",
                    d[m][n].to_bits(),
                    want[m][n].to_bits()
                );
            }
        }
    }
}

/// Random NVFP4 operands: quantized mixed values, or raw random codes and scale bytes (every non-NaN
/// UE4M3 value, subnormal and zero scales included) with a random global scale.
fn operand(rng: &mut Rng, name: &str, rows: usize, k: usize, raw: bool) -> Nvfp4Tensor {
    let t = if raw {
        let codes = (0..rows * k / 2).map(|_| rng.next_u64() as u8).collect();
        let scales = (0..rows * k / 16)
            .map(|_| {
                loop {
                    let b = (rng.next_u64() & 0x7F) as u8;
                    if b != 0x7F {
                        break b;
                    }
                }
            })
            .collect();
        let gs = 2f32.powi((rng.next_u64() % 20) as i32 - 10) * (1.0 + rng.uniform());
        Nvfp4Tensor::from_parts(name, rows, k, codes, scales, ScaleLayout::Linear, gs).unwrap()
    } else {
        let x = mixed_values(rng, rows * k);
        quant::quantize(name, &x, rows, k, &QuantizeOptions::default()).unwrap()
    };
    t.with_scale_layout(ScaleLayout::Swizzled128x4).unwrap()
}

/// The GEMM on the device against `mma_gemm`, bit for bit, into a NaN-poisoned output: through
/// `ops::gemm_fp4` (the tile chosen by M) when `tile` is `None`, else through a plan forcing `tile`.
fn check_gemm<T: GpuElement>(
    dev: &Device,
    backend: Fp4Backend,
    tile: Option<Fp4Tile>,
    a: &Nvfp4Tensor,
    w: &Nvfp4Tensor,
    bias: Option<&[f32]>,
    what: &str,
) {
    let s = dev.stream();
    let (m, n) = (a.rows(), w.rows());
    let want: Vec<T> = mma::mma_gemm(a, w, MmaGemmEpilogue { bias }).unwrap();
    let da = DeviceNvfp4::upload(s, a).unwrap();
    let dw = DeviceNvfp4::upload(s, w).unwrap();
    let db = bias.map(|b| upload(s, "bias", b).unwrap());
    let mut out = upload(s, "out", &vec![T::from_f32(f32::NAN); m * n]).unwrap();
    match tile {
        None => ops::gemm_fp4(dev, s, &da, &dw, db.as_ref(), &mut out, backend).unwrap(),
        Some(t) => {
            let spec = Fp4GemmSpec {
                backend: Some(backend),
                tile: Some(t),
                ..Fp4GemmSpec::new(m, n, a.cols_padded())
            };
            let plan = Fp4GemmPlan::new(dev, &spec).unwrap();
            // A plan that ignored the forced tile would test the other kernel twice.
            assert_eq!(plan.tile(), t, "{what}");
            assert!(
                plan.explain().contains(t.kernel().symbol()),
                "{what}: {}",
                plan.explain()
            );
            plan.launch(dev, s, &da, &dw, db.as_ref(), &mut out).unwrap();
        }
    }
    let got = download(s, "out", &out).unwrap();
    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
        let (g, e) = (g.to_f32(), e.to_f32());
        assert!(
            g.to_bits() == e.to_bits() || (g == 0.0 && e == 0.0),
            "{what}: out[{}][{}] = {g:e} ({:#010x}), model {e:e} ({:#010x})",
            i / n,
            i % n,
            g.to_bits(),
            e.to_bits()
        );
    }
}

#[test]
fn gpu_gemm_fp4_matches_the_chained_mma_model_bit_for_bit() {
    let Some(dev) = device("gpu_gemm_fp4_matches_the_chained_mma_model_bit_for_bit") else {
        return;
    };
    let Some(backend) = backend(&dev, "gpu_gemm_fp4_matches_the_chained_mma_model_bit_for_bit") else {
        return;
    };
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    // M from a single row to several tiles with a ragged edge; N and K not multiples of the 64 tile;
    // K % 32 == 16 takes the kernel's 8-byte copy path.
    let shapes: &[(usize, usize, usize)] = if under_sanitizer() {
        &[(1, 8, 16), (7, 70, 208), (65, 64, 128)]
    } else {
        &[
            (1, 8, 16),
            (1, 200, 1008),
            (7, 70, 208),
            (16, 64, 64),
            (128, 96, 320),
            (1000, 72, 272),
            (130, 130, 1024),
        ]
    };
    for (i, &(m, n, k)) in shapes.iter().enumerate() {
        let raw = i % 2 == 1;
        let a = operand(&mut rng, "A", m, k, raw);
        let w = operand(&mut rng, "W", n, k, !raw);
        let bias: Vec<f32> = (0..n).map(|_| rng.normal() * 4.0).collect();
        let what = |t: &str, b: bool| format!("seed {seed} M={m} N={n} K={k} {t} bias={b} raw_a={raw}");
        check_gemm::<f32>(&dev, backend, None, &a, &w, None, &what("f32", false));
        check_gemm::<f32>(&dev, backend, None, &a, &w, Some(&bias), &what("f32", true));
        check_gemm::<bf16>(&dev, backend, None, &a, &w, Some(&bias), &what("bf16", true));
        check_gemm::<f16>(&dev, backend, None, &a, &w, None, &what("f16", false));
    }
}

#[test]
fn gpu_gemm_fp4_both_tiles_match_the_chained_mma_model_bit_for_bit() {
    let name = "gpu_gemm_fp4_both_tiles_match_the_chained_mma_model_bit_for_bit";
    let Some(dev) = device(name) else {
        return;
    };
    let Some(backend) = backend(&dev, name) else {
        return;
    };
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    // Each tile on each M, both sides of the small tile's limit (16 | 17: one full 16-row tile, then a
    // second holding one row) and several row tiles of either (128); N never a multiple of 64 but for
    // one shape, K % 32 == 16 (8-byte copies) and K % 32 == 0 (16-byte copies), K shorter and longer
    // than the small tile's 8-stage pipeline.
    let shapes: &[(usize, usize, usize)] = if under_sanitizer() {
        &[(1, 70, 208), (17, 72, 80)]
    } else {
        &[
            (1, 200, 1008),
            (1, 8, 16),
            (7, 70, 208),
            (16, 130, 320),
            (16, 64, 64),
            (17, 72, 80),
            (17, 136, 1024),
            (128, 96, 272),
        ]
    };
    for (i, &(m, n, k)) in shapes.iter().enumerate() {
        let raw = i % 2 == 0;
        let a = operand(&mut rng, "A", m, k, raw);
        let w = operand(&mut rng, "W", n, k, !raw);
        let bias: Vec<f32> = (0..n).map(|_| rng.normal() * 4.0).collect();
        for tile in [Fp4Tile::Small, Fp4Tile::Large] {
            let what = |t: &str, b: bool| {
                format!("seed {seed} {tile:?} tile M={m} N={n} K={k} {t} bias={b} raw_a={raw}")
            };
            let t = Some(tile);
            check_gemm::<f32>(&dev, backend, t, &a, &w, None, &what("f32", false));
            check_gemm::<f32>(&dev, backend, t, &a, &w, Some(&bias), &what("f32", true));
            check_gemm::<bf16>(&dev, backend, t, &a, &w, Some(&bias), &what("bf16", true));
            check_gemm::<bf16>(&dev, backend, t, &a, &w, None, &what("bf16", false));
            check_gemm::<f16>(&dev, backend, t, &a, &w, Some(&bias), &what("f16", true));
            check_gemm::<f16>(&dev, backend, t, &a, &w, None, &what("f16", false));
        }
    }
}

#[test]
fn gpu_gemm_fp4_plan_takes_the_small_tile_up_to_m_16() {
    let name = "gpu_gemm_fp4_plan_takes_the_small_tile_up_to_m_16";
    let Some(dev) = device(name) else {
        return;
    };
    let Some(backend) = backend(&dev, name) else {
        return;
    };
    for (m, want) in [
        (1, Fp4Tile::Small),
        (16, Fp4Tile::Small),
        (17, Fp4Tile::Large),
        (4096, Fp4Tile::Large),
    ] {
        let spec = Fp4GemmSpec {
            backend: Some(backend),
            ..Fp4GemmSpec::new(m, 4096, 4096)
        };
        let plan = Fp4GemmPlan::new(&dev, &spec).unwrap();
        let e = plan.explain();
        assert_eq!(plan.tile(), want, "M={m}: {e}");
        assert!(e.contains(want.kernel().symbol()), "M={m}: {e}");
        assert!(e.contains(&format!("M = {m}")), "M={m} (the reason): {e}");
        let forced = if want == Fp4Tile::Small {
            Fp4Tile::Large
        } else {
            Fp4Tile::Small
        };
        let plan = Fp4GemmPlan::new(
            &dev,
            &Fp4GemmSpec {
                tile: Some(forced),
                ..spec
            },
        )
        .unwrap();
        assert_eq!(plan.tile(), forced, "M={m}");
        assert!(plan.explain().contains("forced"), "{}", plan.explain());
    }
}

#[test]
fn gpu_gemm_fp4_refuses_what_it_cannot_run() {
    let Some(dev) = device("gpu_gemm_fp4_refuses_what_it_cannot_run") else {
        return;
    };
    let s = dev.stream();
    let mut rng = Rng::new(7);
    let lin = quant::quantize(
        "A",
        &mixed_values(&mut rng, 4 * 32),
        4,
        32,
        &QuantizeOptions::default(),
    )
    .unwrap();
    let a = DeviceNvfp4::upload(s, &lin).unwrap();
    let w = DeviceNvfp4::upload(
        s,
        &lin.clone().with_scale_layout(ScaleLayout::Swizzled128x4).unwrap(),
    )
    .unwrap();
    let mut out = alloc_zeros::<f32>(s, "out", 16).unwrap();
    let err = ops::gemm_fp4(&dev, s, &a, &w, None, &mut out, Fp4Backend::Sm120Emulated).unwrap_err();
    assert!(matches!(err, Error::InvalidValue { .. }), "linear scales: {err}");
    let native = ops::gemm_fp4(&dev, s, &w, &w, None, &mut out, Fp4Backend::Native);
    if dev.info().compute_capability.0 != 12 {
        assert!(matches!(native, Err(Error::UnsupportedArch { .. })), "{native:?}");
    }
    let mut short = alloc_zeros::<f32>(s, "out", 15).unwrap();
    let err = ops::gemm_fp4(&dev, s, &w, &w, None, &mut short, Fp4Backend::Sm120Emulated).unwrap_err();
    assert!(
        matches!(err, Error::Length { .. } | Error::UnsupportedArch { .. }),
        "{err}"
    );
}

/// Runs the FP4 GEMM through a plan on `a`, `w` (linear scales; swizzled here) into a NaN-poisoned
/// output of type `O`; the outputs as f32.
fn run_planned<O: GpuElement>(
    dev: &Device,
    backend: Fp4Backend,
    a: &Nvfp4Tensor,
    w: &Nvfp4Tensor,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let s = dev.stream();
    let (m, n) = (a.rows(), w.rows());
    let sw = |t: &Nvfp4Tensor| t.clone().with_scale_layout(ScaleLayout::Swizzled128x4).unwrap();
    let da = DeviceNvfp4::upload(s, &sw(a)).unwrap();
    let dw = DeviceNvfp4::upload(s, &sw(w)).unwrap();
    let db = bias.map(|b| upload(s, "bias", b).unwrap());
    let spec = Fp4GemmSpec {
        backend: Some(backend),
        ..Fp4GemmSpec::new(m, n, a.cols_padded())
    };
    let plan = Fp4GemmPlan::new(dev, &spec).unwrap();
    assert_eq!(plan.workspace_bytes(), 0);
    assert_eq!(plan.tile(), Fp4Tile::for_m(m), "{}", plan.explain());
    assert!(
        plan.explain().contains(plan.tile().kernel().symbol()),
        "{}",
        plan.explain()
    );
    let mut out = upload(s, "out", &vec![O::from_f32(f32::NAN); m * n]).unwrap();
    plan.launch(dev, s, &da, &dw, db.as_ref(), &mut out).unwrap();
    download(s, "out", &out)
        .unwrap()
        .iter()
        .map(|x| x.to_f32())
        .collect()
}

/// The f64 reference with the bias added as one more term (it joins the error scale).
fn reference_with_bias(a: &Nvfp4Tensor, w: &Nvfp4Tensor, bias: Option<&[f32]>) -> reference::GemmReference {
    let mut r = reference::gemm_w4a4(a, w).unwrap();
    if let Some(b) = bias {
        let n = w.rows();
        for (i, (v, s)) in r.values.iter_mut().zip(r.abs_sums.iter_mut()).enumerate() {
            *v += b[i % n] as f64;
            *s += b[i % n].abs() as f64;
        }
    }
    r
}

fn check_against_reference<O: GpuElement>(
    dev: &Device,
    backend: Fp4Backend,
    a: &Nvfp4Tensor,
    w: &Nvfp4Tensor,
    bias: Option<&[f32]>,
    exact: bool,
    what: &str,
) {
    let got = run_planned::<O>(dev, backend, a, w, bias);
    let want = reference_with_bias(a, w, bias);
    assert_eq!(got.len(), want.values.len(), "{what}");
    if exact {
        for (i, (&g, &v)) in got.iter().zip(&want.values).enumerate() {
            let e = O::from_f32(v as f32).to_f32();
            assert!(
                g.to_bits() == e.to_bits() || (g == 0.0 && e == 0.0),
                "{what} {:?}: exact-sum out[{i}] = {g:e}, reference {e:e} ({v:e})",
                O::DTYPE
            );
        }
        return;
    }
    // The instruction truncates once per 64-wide K step (at most one ulp: two roundings' worth) and its
    // alignment truncation is far below that; then alpha, its product, the bias sum and the output
    // rounding: counted as K + 4 extra roundings on top of K, as for the Hopper kernels.
    let extra = a.cols_padded() + 4;
    for (i, &g) in got.iter().enumerate() {
        let bound = want.bound(i, extra);
        assert!(
            narrowing_within::<O>(g, want.values[i], bound),
            "{what} {:?}: out[{i}] = {g:e}, reference {:e}, bound {bound:e}",
            O::DTYPE,
            want.values[i]
        );
    }
}

#[test]
fn gpu_gemm_fp4_matches_the_f64_reference() {
    let Some(dev) = device("gpu_gemm_fp4_matches_the_f64_reference") else {
        return;
    };
    let Some(backend) = backend(&dev, "gpu_gemm_fp4_matches_the_f64_reference") else {
        return;
    };
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    // M over {1, 7, 16, 128, 1000}; N and K never multiples of the 64 tile (K % 32 == 16 included).
    let shapes: &[(usize, usize, usize)] = if under_sanitizer() {
        &[(1, 70, 208), (7, 130, 80)]
    } else {
        &[
            (1, 70, 208),
            (7, 130, 1008),
            (16, 67, 80),
            (128, 200, 272),
            (1000, 70, 144),
        ]
    };
    for &(m, n, k) in shapes {
        for exact in [true, false] {
            let (a, w) = if exact {
                (exact_fp4(&mut rng, "A", m, k), exact_fp4(&mut rng, "W", n, k))
            } else {
                let a = quant::quantize(
                    "A",
                    &mixed_values(&mut rng, m * k),
                    m,
                    k,
                    &QuantizeOptions::default(),
                );
                let w = quant::quantize(
                    "W",
                    &mixed_values(&mut rng, n * k),
                    n,
                    k,
                    &QuantizeOptions::default(),
                );
                (a.unwrap(), w.unwrap())
            };
            let bias = if exact {
                exact_values(&mut rng, n)
            } else {
                rng.normal_vec(n, 4.0)
            };
            let what = format!("seed {seed} M={m} N={n} K={k} exact={exact}");
            check_against_reference::<f32>(&dev, backend, &a, &w, None, exact, &what);
            check_against_reference::<f32>(&dev, backend, &a, &w, Some(&bias), exact, &what);
            check_against_reference::<bf16>(&dev, backend, &a, &w, Some(&bias), exact, &what);
            check_against_reference::<bf16>(&dev, backend, &a, &w, None, exact, &what);
            check_against_reference::<f16>(&dev, backend, &a, &w, Some(&bias), exact, &what);
            check_against_reference::<f16>(&dev, backend, &a, &w, None, exact, &what);
        }
    }
}

#[test]
fn gpu_gemm_fp4_plan_refuses_bad_shapes_up_front() {
    let Some(dev) = device("gpu_gemm_fp4_plan_refuses_bad_shapes_up_front") else {
        return;
    };
    let Some(backend) = backend(&dev, "gpu_gemm_fp4_plan_refuses_bad_shapes_up_front") else {
        return;
    };
    let spec = |k| Fp4GemmSpec {
        backend: Some(backend),
        ..Fp4GemmSpec::new(4, 8, k)
    };
    let err = Fp4GemmPlan::new(&dev, &spec(40)).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "K = 40: {err}");
    assert!(err.to_string().contains("multiple of 16"), "{err}");
    let plan = Fp4GemmPlan::new(&dev, &spec(64)).unwrap();
    // Operands of another shape than planned: a typed error naming the tensor, before any launch.
    let s = dev.stream();
    let mut rng = Rng::new(3);
    let t = operand(&mut rng, "A", 4, 32, false);
    let d = DeviceNvfp4::upload(s, &t).unwrap();
    let mut out = alloc_zeros::<f32>(s, "out", 32).unwrap();
    let err = plan.launch(&dev, s, &d, &d, None, &mut out).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    // The default backend is the hardware one: chosen on sm_12x, refused elsewhere.
    let auto = Fp4GemmPlan::new(&dev, &Fp4GemmSpec::new(4, 8, 64));
    if dev.info().compute_capability.0 == 12 {
        assert_eq!(auto.unwrap().backend(), Fp4Backend::Native);
    } else {
        assert!(matches!(auto, Err(Error::UnsupportedArch { .. })), "{auto:?}");
    }
}

#[test]
fn gpu_linear_nvfp4_matches_cpu_quantize_then_the_mma_model() {
    let Some(dev) = device("gpu_linear_nvfp4_matches_cpu_quantize_then_the_mma_model") else {
        return;
    };
    let Some(backend) = backend(&dev, "gpu_linear_nvfp4_matches_cpu_quantize_then_the_mma_model") else {
        return;
    };
    let s = dev.stream();
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    let shapes: &[(usize, usize, usize)] = if under_sanitizer() {
        &[(3, 70, 208)]
    } else {
        &[(1, 70, 208), (16, 130, 1008), (130, 72, 264)]
    };
    for &(m, n, k) in shapes {
        for input_scale in [None, Some(0.05f32)] {
            let x: Vec<bf16> = mixed_values(&mut rng, m * k)
                .iter()
                .map(|&v| bf16::from_f32(v))
                .collect();
            let wopts = QuantizeOptions {
                pad_k: true,
                ..QuantizeOptions::default()
            };
            let w = quant::quantize("W", &mixed_values(&mut rng, n * k), n, k, &wopts).unwrap();
            let w = w.with_scale_layout(ScaleLayout::Swizzled128x4).unwrap();
            let bias: Vec<f32> = rng.normal_vec(n, 2.0);
            let opts = LinearNvfp4Options {
                input_scale,
                backend: Some(backend),
            };
            let a = quant::quantize("x", &x, m, k, &opts.quantize_options()).unwrap();
            let want: Vec<bf16> = mma::mma_gemm(&a, &w, MmaGemmEpilogue { bias: Some(&bias) }).unwrap();
            let dx = upload(s, "x", &x).unwrap();
            let dw = DeviceNvfp4::upload(s, &w).unwrap();
            let db = upload(s, "bias", &bias).unwrap();
            let mut out = upload(s, "out", &vec![bf16::NAN; m * n]).unwrap();
            ops::linear_nvfp4(&dev, s, &dx, &dw, Some(&db), &mut out, &opts).unwrap();
            let got = download(s, "out", &out).unwrap();
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g.to_bits() == e.to_bits() || (g.to_f32() == 0.0 && e.to_f32() == 0.0),
                    "seed {seed} M={m} N={n} K={k} input_scale={input_scale:?}: out[{i}] = {g}, model {e}"
                );
            }
        }
    }
}

/// One launch of the general W4A4 entry point (`GemmPlan::w4a4`) on the planned route, A and W with
/// the given scale layouts, bias and output of type `O`, into a NaN-poisoned output.
#[allow(clippy::too_many_arguments)]
fn plan_w4a4<O: GpuElement>(
    dev: &Device,
    plan: &mut GemmPlan,
    a: &Nvfp4Tensor,
    w: &Nvfp4Tensor,
    a_layout: ScaleLayout,
    w_layout: ScaleLayout,
    bias: Option<&[O]>,
) -> Vec<O> {
    let s = dev.stream();
    let (m, n) = (a.rows(), w.rows());
    let da = DeviceNvfp4::upload(s, &a.clone().with_scale_layout(a_layout).unwrap()).unwrap();
    let dw = DeviceNvfp4::upload(s, &w.clone().with_scale_layout(w_layout).unwrap()).unwrap();
    let db = bias.map(|b| upload(s, "bias", b).unwrap());
    let mut out = upload(s, "out", &vec![O::from_f32(f32::NAN); m * n]).unwrap();
    plan.w4a4(dev, s, &da, &dw, db.as_ref(), &mut out).unwrap();
    download(s, "out", &out).unwrap()
}

/// `GemmPlan::w4a4` forced onto the sm_120 route (`GemmSpec::fp4_backend`) against `mma_gemm` bit for
/// bit (both scale layouts on each operand: linear ones go through the plan's conversion scratch, which
/// a second launch reuses) and, for quantized inputs, against the f64 reference within the stated bound.
fn check_plan_fp4<O: GpuElement>(
    dev: &Device,
    backend: Fp4Backend,
    a: &Nvfp4Tensor,
    w: &Nvfp4Tensor,
    bias: Option<&[f32]>,
    reference_too: bool,
    what: &str,
) {
    let s = dev.stream();
    let (m, n, k) = (a.rows(), w.rows(), a.cols_padded());
    // The plan's bias has the output's type; the kernel widens it exactly, so the model gets it as f32.
    let bias_o: Option<Vec<O>> = bias.map(|b| b.iter().map(|&x| O::from_f32(x)).collect());
    let bias_f32: Option<Vec<f32>> = bias_o.as_ref().map(|b| b.iter().map(|x| x.to_f32()).collect());
    let spec = GemmSpec {
        out: O::DTYPE,
        bias: bias.is_some(),
        fp4_backend: Some(backend),
        ..GemmSpec::w4a4(m, n, k)
    };
    let mut plan = GemmPlan::new(dev, s, &spec).unwrap();
    let tile = Fp4Tile::for_m(m);
    assert_eq!(
        plan.route(),
        GemmRoute::Fp4TensorCore { backend, tile },
        "{what}: {}",
        plan.explain()
    );
    let e = plan.explain();
    assert!(
        e.contains("FP4 tensor-core") && e.contains(tile.kernel().symbol()) && e.contains("forced"),
        "{what}: {e}"
    );
    assert_eq!(plan.splits(), 1, "{what}");
    let want: Vec<O> = mma::mma_gemm(
        a,
        w,
        MmaGemmEpilogue {
            bias: bias_f32.as_deref(),
        },
    )
    .unwrap();
    let (lin, sw) = (ScaleLayout::Linear, ScaleLayout::Swizzled128x4);
    for (la, lw) in [(lin, lin), (sw, lin), (lin, sw), (sw, sw)] {
        let got = plan_w4a4::<O>(dev, &mut plan, a, w, la, lw, bias_o.as_deref());
        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
            let (g, e) = (g.to_f32(), e.to_f32());
            assert!(
                g.to_bits() == e.to_bits() || (g == 0.0 && e == 0.0),
                "{what} {:?} A {la:?} W {lw:?}: out[{}][{}] = {g:e} ({:#010x}), model {e:e} ({:#010x})",
                O::DTYPE,
                i / n,
                i % n,
                g.to_bits(),
                e.to_bits()
            );
        }
        if reference_too {
            let r = reference_with_bias(
                &a.clone().with_scale_layout(lin).unwrap(),
                &w.clone().with_scale_layout(lin).unwrap(),
                bias_f32.as_deref(),
            );
            // As gpu_gemm_fp4_matches_the_f64_reference: K + 4 roundings on top of K.
            let extra = k + 4;
            for (i, g) in got.iter().enumerate() {
                let bound = r.bound(i, extra);
                assert!(
                    narrowing_within::<O>(g.to_f32(), r.values[i], bound),
                    "{what} {:?}: out[{i}] = {:e}, reference {:e}, bound {bound:e}",
                    O::DTYPE,
                    g.to_f32(),
                    r.values[i]
                );
            }
        }
    }
}

#[test]
fn gpu_gemm_plan_w4a4_on_the_sm120_route_matches_the_mma_model_and_the_reference() {
    let name = "gpu_gemm_plan_w4a4_on_the_sm120_route_matches_the_mma_model_and_the_reference";
    let Some(dev) = device(name) else {
        return;
    };
    // What a plan does unasked on this GPU: the FP4 tensor cores on sm_12x, the dequantize kernels
    // elsewhere (an H100 included).
    let auto = GemmPlan::new(&dev, dev.stream(), &GemmSpec::w4a4(7, 130, 1008)).unwrap();
    if dev.info().compute_capability.0 == 12 {
        assert_eq!(
            auto.route(),
            GemmRoute::Fp4TensorCore {
                backend: Fp4Backend::Native,
                tile: Fp4Tile::Small
            },
            "{}",
            auto.explain()
        );
    } else {
        assert_eq!(
            auto.route(),
            GemmRoute::Dequantize(GemmKernel::M16),
            "{}",
            auto.explain()
        );
    }
    let Some(backend) = backend(&dev, name) else {
        return;
    };
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    // M over {1, 7, 16, 128}; N and K never multiples of the 64 tile (K % 32 == 16 included).
    let shapes: &[(usize, usize, usize)] = if under_sanitizer() {
        &[(1, 70, 208), (7, 130, 80)]
    } else {
        &[(1, 70, 208), (7, 130, 1008), (16, 67, 80), (128, 200, 272)]
    };
    for &(m, n, k) in shapes {
        for raw in [false, true] {
            // `operand` gives swizzled scales; each check converts to the layouts it launches with.
            let a = operand(&mut rng, "A", m, k, raw);
            let w = operand(&mut rng, "W", n, k, raw);
            let bias: Vec<f32> = rng.normal_vec(n, 4.0);
            let what = |b: bool| format!("seed {seed} M={m} N={n} K={k} raw={raw} bias={b}");
            let r = !raw;
            check_plan_fp4::<f32>(&dev, backend, &a, &w, None, r, &what(false));
            check_plan_fp4::<f32>(&dev, backend, &a, &w, Some(&bias), r, &what(true));
            check_plan_fp4::<bf16>(&dev, backend, &a, &w, Some(&bias), r, &what(true));
            check_plan_fp4::<bf16>(&dev, backend, &a, &w, None, r, &what(false));
            check_plan_fp4::<f16>(&dev, backend, &a, &w, Some(&bias), r, &what(true));
            check_plan_fp4::<f16>(&dev, backend, &a, &w, None, r, &what(false));
        }
    }
}
