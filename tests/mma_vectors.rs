//! The CPU model of the sm_120 block-scaled FP4 MMA (`nvfp4::reference::mma`) against the recorded
//! vectors of tests/data/mxf4nvf4-m16n8k64.jsonl (MMA-Sim's outputs; see tests/data/README.md), every
//! case bit for bit (±0 equal), at matrix level and through the register fragments.

// Outputs are addressed as D[m][n], as the vectors and the PTX ISA write them.
#![allow(clippy::needless_range_loop)]

use nvfp4::reference::mma::{self, MmaTile, VectorCase};
use nvfp4::reference::synthetic::Rng;

/// The vector file: `NVFP4_MMA_VECTORS` when set, else the copy in tests/data/.
fn vectors() -> Vec<VectorCase> {
    let path = std::env::var("NVFP4_MMA_VECTORS").unwrap_or_else(|_| {
        format!(
            "{}/tests/data/mxf4nvf4-m16n8k64.jsonl",
            env!("CARGO_MANIFEST_DIR")
        )
    });
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| VectorCase::parse(l).unwrap_or_else(|e| panic!("{path} line {}: {e}", i + 1)))
        .collect()
}

/// Equal bits, except that +0.0 and -0.0 are equal (tests/data/README.md).
fn same(got: f32, expected: u32) -> bool {
    got.to_bits() == expected || (got == 0.0 && f32::from_bits(expected) == 0.0)
}

#[test]
fn mma_model_reproduces_every_vector() {
    let cases = vectors();
    assert!(cases.len() >= 240, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let d = mma::mma_m16n8k64(&case.tile);
        for m in 0..16 {
            for n in 0..8 {
                if !same(d[m][n], case.d_bits[m][n]) {
                    failures.push(format!(
                        "case {i} ({}): D[{m}][{n}] = {:#010x}, expected {:#010x}",
                        case.category,
                        d[m][n].to_bits(),
                        case.d_bits[m][n]
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn mma_fragment_model_reproduces_every_vector_for_every_selector() {
    for (i, case) in vectors().iter().enumerate() {
        // Selectors rotate with the case so all 8 (tidA, tidB) pairs are exercised.
        let (tid_a, tid_b) = (i % 2, (i / 2) % 4);
        let (a, b, c, sfa, sfb) = mma::tile_fragments(&case.tile, tid_a, tid_b);
        let d = mma::mma_fragments(&a, &b, &c, &sfa, &sfb, tid_a, tid_b);
        for (lane, regs) in d.iter().enumerate() {
            for (r, &v) in regs.iter().enumerate() {
                let (m, n) = mma::c_element(lane, r);
                assert!(
                    same(v, case.d_bits[m][n]),
                    "case {i} ({}), lane {lane} d{r} = D[{m}][{n}]: {:#010x}, expected {:#010x}",
                    case.category,
                    v.to_bits(),
                    case.d_bits[m][n]
                );
            }
        }
    }
}

/// The model's integer arithmetic against an independent f64 evaluation of the same published steps
/// (exact terms, alignment with truncation at 35 fractional bits, round toward zero), on random tiles
/// with wide scales and C.
#[test]
fn mma_model_matches_an_f64_evaluation_of_the_published_steps() {
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    for case in 0..200 {
        let mut t = MmaTile {
            a: [[0; 64]; 16],
            b: [[0; 64]; 8],
            sfa: [[0; 4]; 16],
            sfb: [[0; 4]; 8],
            c: [[0.0; 8]; 16],
        };
        let scale = |rng: &mut Rng| loop {
            let b = (rng.next_u64() & 0xFF) as u8;
            if b & 0x7F != 0x7F {
                return b;
            }
        };
        for m in 0..16 {
            t.a[m] = std::array::from_fn(|_| (rng.next_u64() & 0xF) as u8);
            t.sfa[m] = std::array::from_fn(|_| scale(&mut rng));
            for n in 0..8 {
                t.c[m][n] = rng.normal() * 2f32.powi((rng.next_u64() % 40) as i32 - 20);
            }
        }
        for n in 0..8 {
            t.b[n] = std::array::from_fn(|_| (rng.next_u64() & 0xF) as u8);
            t.sfb[n] = std::array::from_fn(|_| scale(&mut rng));
        }
        let d = mma::mma_m16n8k64(&t);
        for m in 0..16 {
            for n in 0..8 {
                let expected = f64_model(&t.a[m], &t.b[n], t.sfa[m], t.sfb[n], t.c[m][n]);
                assert!(
                    same(d[m][n], expected.to_bits()),
                    "seed {seed} case {case} D[{m}][{n}]: {} vs f64 steps {}",
                    d[m][n],
                    expected
                );
            }
        }
    }
}

/// sm120-mma.md §6 step by step in f64 (every quantity here is exact in f64).
fn f64_model(a: &[u8; 64], b: &[u8; 64], sfa: [u8; 4], sfb: [u8; 4], c: f32) -> f32 {
    let e2m1 = |x: u8| nvfp4::format::e2m1::decode_f32(x) as f64;
    // (significand, exponent) with the model's conventions: frexp-style, subnormals at the format's
    // minimum exponent, zero at -126.
    let parts = |v: f64, min_exp: i32| -> (f64, i32) {
        if v == 0.0 {
            return (0.0, -126);
        }
        let mut e = v.abs().log2().floor() as i32;
        if e < min_exp {
            e = min_exp;
        }
        (v / 2f64.powi(e), e)
    };
    let mut terms = vec![parts(c as f64, -126)];
    for q in 0..4 {
        let p: f64 = (16 * q..16 * q + 16).map(|k| e2m1(a[k]) * e2m1(b[k])).sum();
        let (s0, e0) = parts(nvfp4::format::e4m3::decode_f32(sfa[q] & 0x7F) as f64, -6);
        let (s1, e1) = parts(nvfp4::format::e4m3::decode_f32(sfb[q] & 0x7F) as f64, -6);
        terms.push((p * s0 * s1, e0 + e1));
    }
    let e_max = terms.iter().map(|t| t.1).max().unwrap();
    let sum: f64 = terms
        .iter()
        .map(|&(s, e)| (s * 2f64.powi(35 + e - e_max)).trunc() * 2f64.powi(-35))
        .sum();
    let v = sum * 2f64.powi(e_max);
    if v == 0.0 {
        return 0.0;
    }
    let (s, e) = parts(v, -126);
    let s = (s * 2f64.powi(23)).trunc() * 2f64.powi(-23);
    (s * 2f64.powi(e)) as f32
}
