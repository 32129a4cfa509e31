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
use nvfp4::ops::{self, DeviceNvfp4, Fp4Backend, GpuElement};
use nvfp4::quant::{self, QuantizeOptions};
use nvfp4::reference::mma::{self, MmaGemmEpilogue, MmaTile, VectorCase};
use nvfp4::reference::synthetic::Rng;
use nvfp4::{Error, Nvfp4Tensor};

use crate::common::{device, mixed_values, under_sanitizer};

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

fn check_gemm<T: GpuElement>(
    dev: &Device,
    backend: Fp4Backend,
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
    ops::gemm_fp4(dev, s, &da, &dw, db.as_ref(), &mut out, backend).unwrap();
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
        check_gemm::<f32>(&dev, backend, &a, &w, None, &what("f32", false));
        check_gemm::<f32>(&dev, backend, &a, &w, Some(&bias), &what("f32", true));
        check_gemm::<bf16>(&dev, backend, &a, &w, Some(&bias), &what("bf16", true));
        check_gemm::<f16>(&dev, backend, &a, &w, None, &what("f16", false));
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
