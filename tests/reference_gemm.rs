//! The reference GEMMs of `nvfp4::reference`: exact where the arithmetic is exact, the Higham bound
//! that GPU kernels are judged by, and the typed errors of mismatched shapes.

use half::{bf16, f16};
use nvfp4::Error;
use nvfp4::format::{ScaleLayout, e2m1, e4m3};
use nvfp4::quant::{GlobalScale, Nvfp4Tensor, QuantizeOptions, dequantize, quantize};
use nvfp4::reference::synthetic::Rng;
use nvfp4::reference::{GemmReference, gamma, gemm_f32, gemm_w4a4, gemm_w4a16};

/// A small integer times a power of two: `m * 2^e`, |m| <= 4, e in [-2, 2]. Products are multiples of
/// 2^-4 below 2^8 in magnitude, so any sum of up to 2^11 of them is an f32 integer multiple of 2^-4
/// below 2^19 < 2^24 * 2^-4: every partial sum is exact in f32.
fn small_exact(rng: &mut Rng) -> f32 {
    let m = (rng.next_u64() % 9) as i32 - 4;
    let e = (rng.next_u64() % 5) as i32 - 2;
    m as f32 * 2f32.powi(e)
}

/// `C = A W^T` accumulated sequentially in f32, products rounded to f32 (no FMA).
fn naive_f32(a: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut c = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f32;
            for p in 0..k {
                acc += a[i * k + p] * w[j * k + p];
            }
            c[i * n + j] = acc;
        }
    }
    c
}

#[test]
fn gemm_f32_equals_a_naive_loop_when_every_partial_sum_is_exact() {
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    for (m, n, k) in [
        (1, 1, 1),
        (3, 5, 7),
        (8, 4, 64),
        (5, 9, 2048),
        (2, 3, 0),
        (0, 3, 4),
        (3, 0, 4),
    ] {
        let a: Vec<f32> = (0..m * k).map(|_| small_exact(&mut rng)).collect();
        let w: Vec<f32> = (0..n * k).map(|_| small_exact(&mut rng)).collect();
        let r = gemm_f32(&a, &w, m, n, k).unwrap();
        let ctx = format!("seed {seed:#x}, m {m} n {n} k {k}");
        assert_eq!((r.m, r.n, r.k), (m, n, k), "{ctx}");
        assert_eq!(r.values.len(), m * n, "{ctx}");
        let naive = naive_f32(&a, &w, m, n, k);
        let abs: Vec<f32> = {
            let aa: Vec<f32> = a.iter().map(|x| x.abs()).collect();
            let wa: Vec<f32> = w.iter().map(|x| x.abs()).collect();
            naive_f32(&aa, &wa, m, n, k)
        };
        for i in 0..m * n {
            assert_eq!(r.values[i], f64::from(naive[i]), "{ctx}: output {i}");
            assert_eq!(r.abs_sums[i], f64::from(abs[i]), "{ctx}: abs sum {i}");
        }
        assert_eq!(r.first_violation(&naive, 0), None, "{ctx}");
        // The same numbers as f16 and bf16 (all exact in both) give the same product.
        let (a16, w16): (Vec<f16>, Vec<f16>) = (
            a.iter().map(|&x| f16::from_f32(x)).collect(),
            w.iter().map(|&x| f16::from_f32(x)).collect(),
        );
        assert_eq!(
            gemm_f32(&a16, &w16, m, n, k).unwrap().values,
            r.values,
            "{ctx}: f16"
        );
        let (ab, wb): (Vec<bf16>, Vec<bf16>) = (
            a.iter().map(|&x| bf16::from_f32(x)).collect(),
            w.iter().map(|&x| bf16::from_f32(x)).collect(),
        );
        assert_eq!(
            gemm_f32(&ab, &wb, m, n, k).unwrap().values,
            r.values,
            "{ctx}: bf16"
        );
    }
}

/// Quantizes `[rows, cols]` normal data with a power-of-two global scale, so that dequantizing to f32
/// is exact (`e2m1 * e4m3 * 2^g` has at most 6 significant bits and stays far from f32's limits).
fn quantize_pow2(
    rng: &mut Rng,
    rows: usize,
    cols: usize,
    g: i32,
    layout: ScaleLayout,
) -> (Vec<f32>, Nvfp4Tensor) {
    let x: Vec<f32> = (0..rows * cols)
        .map(|i| rng.normal() * if i % 13 == 0 { 8.0 } else { 1.0 })
        .collect();
    let o = QuantizeOptions {
        global_scale: GlobalScale::Given(2f32.powi(g)),
        scale_layout: layout,
        pad_k: true,
        ..QuantizeOptions::default()
    };
    let q = quantize("w", &x, rows, cols, &o).unwrap();
    (x, q)
}

#[test]
fn gemm_w4a16_equals_gemm_f32_of_the_exactly_dequantized_weight() {
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    for (m, n, k, layout) in [
        (1, 1, 16, ScaleLayout::Linear),
        (4, 7, 64, ScaleLayout::Swizzled128x4),
        (3, 130, 48, ScaleLayout::Swizzled128x4),
        (5, 6, 40, ScaleLayout::Linear),
        (2, 3, 7, ScaleLayout::Swizzled128x4),
    ] {
        let ctx = format!("seed {seed:#x}, m {m} n {n} k {k} {layout:?}");
        let (_, w) = quantize_pow2(&mut rng, n, k, -6, layout);
        let wd: Vec<f32> = dequantize(&w);
        let a: Vec<f32> = rng.normal_vec(m * k, 1.0);
        let r = gemm_w4a16(&a, m, &w).unwrap();
        let e = gemm_f32(&a, &wd, m, n, k).unwrap();
        assert_eq!((r.m, r.n, r.k), (m, n, k), "{ctx}");
        assert_eq!(r.values, e.values, "{ctx}");
        assert_eq!(r.abs_sums, e.abs_sums, "{ctx}");
        // bf16 activations: the same as their f32 widening.
        let ab: Vec<bf16> = a.iter().map(|&x| bf16::from_f32(x)).collect();
        let abf: Vec<f32> = ab.iter().map(|x| x.to_f32()).collect();
        assert_eq!(
            gemm_w4a16(&ab, m, &w).unwrap().values,
            gemm_f32(&abf, &wd, m, n, k).unwrap().values,
            "{ctx}"
        );
    }
}

#[test]
fn gemm_w4a16_with_any_global_scale_is_within_one_rounding_of_the_dequantized_product() {
    // With S2 = amax / 2688 the f32 dequantizer rounds `e2m1 * f32(sf * S2)` twice; the reference
    // decodes exactly. Each weight differs by at most 2 u |w| (u = 2^-24), so each output by at most
    // 2u * abs_sums, up to the f64 accumulation (negligible: 2^-53 per step).
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    let (m, n, k) = (4, 9, 256);
    let x = rng.normal_vec(n * k, 0.02);
    let w = quantize("w", &x, n, k, &QuantizeOptions::default()).unwrap();
    let wd: Vec<f32> = dequantize(&w);
    let a = rng.normal_vec(m * k, 1.0);
    let r = gemm_w4a16(&a, m, &w).unwrap();
    let e = gemm_f32(&a, &wd, m, n, k).unwrap();
    for i in 0..m * n {
        let tol = 2.001 * 2f64.powi(-24) * e.abs_sums[i];
        assert!(
            (r.values[i] - e.values[i]).abs() <= tol,
            "seed {seed:#x}, output {i}: {} vs {}",
            r.values[i],
            e.values[i]
        );
    }
}

/// The exact value of element (r, c) as an integer multiple of 2^-10 (e2m1 * 2 is an integer, e4m3 * 2^9
/// too), without the global scale.
fn scaled_int(t: &Nvfp4Tensor, r: usize, c: usize) -> i64 {
    let code = (t.codes()[(r * t.cols_padded() + c) / 2] >> (4 * (c % 2))) & 0xF;
    let v2 = e2m1::decode_f32(code) * 2.0;
    let s512 = e4m3::decode_f32(t.scale_at(r, c / 16)) * 512.0;
    assert!(v2.fract() == 0.0 && s512.fract() == 0.0);
    v2 as i64 * s512 as i64
}

#[test]
fn gemm_w4a4_equals_alpha_times_the_integer_sums() {
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    for (m, n, k, ga, gw) in [
        (1, 1, 16, 0, 0),
        (3, 5, 64, -4, -7),
        (6, 4, 256, 3, -12),
        (2, 3, 33, -1, 2),
    ] {
        let ctx = format!("seed {seed:#x}, m {m} n {n} k {k}");
        let (_, a) = quantize_pow2(&mut rng, m, k, ga, ScaleLayout::Swizzled128x4);
        let (_, w) = quantize_pow2(&mut rng, n, k, gw, ScaleLayout::Linear);
        let r = gemm_w4a4(&a, &w).unwrap();
        assert_eq!((r.m, r.n, r.k), (m, n, k), "{ctx}");
        // alpha = a.global_scale * w.global_scale = 2^(ga + gw); the sums of products of two multiples of
        // 2^-10 are multiples of 2^-20 and far below 2^53 of them, so the f64 reference must be exact.
        let alpha = 2f64.powi(ga + gw);
        for i in 0..m {
            for j in 0..n {
                let (mut s, mut sa) = (0i128, 0i128);
                for c in 0..k {
                    let p = i128::from(scaled_int(&a, i, c)) * i128::from(scaled_int(&w, j, c));
                    s += p;
                    sa += p.abs();
                }
                let want = s as f64 * 2f64.powi(-20) * alpha;
                assert_eq!(r.values[i * n + j], want, "{ctx}: ({i}, {j})");
                assert_eq!(
                    r.abs_sums[i * n + j],
                    sa as f64 * 2f64.powi(-20) * alpha,
                    "{ctx}: ({i}, {j}) abs"
                );
            }
        }
        // And the same as gemm_f32 of the two exactly dequantized operands.
        let (ad, wd): (Vec<f32>, Vec<f32>) = (dequantize(&a), dequantize(&w));
        assert_eq!(gemm_f32(&ad, &wd, m, n, k).unwrap().values, r.values, "{ctx}");
    }
}

#[test]
fn gemm_w4a4_carries_alpha_for_any_global_scales() {
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    let (m, n, k) = (3, 4, 128);
    let a = quantize(
        "a",
        &rng.normal_vec(m * k, 3.0),
        m,
        k,
        &QuantizeOptions::default(),
    )
    .unwrap();
    let w = quantize(
        "w",
        &rng.normal_vec(n * k, 0.01),
        n,
        k,
        &QuantizeOptions::default(),
    )
    .unwrap();
    let r = gemm_w4a4(&a, &w).unwrap();
    let alpha = f64::from(a.global_scale()) * f64::from(w.global_scale());
    for i in 0..m {
        for j in 0..n {
            let s: i128 = (0..k)
                .map(|c| i128::from(scaled_int(&a, i, c)) * i128::from(scaled_int(&w, j, c)))
                .sum();
            let want = s as f64 * 2f64.powi(-20) * alpha;
            let tol = 1e-12 * r.abs_sums[i * n + j];
            assert!(
                (r.values[i * n + j] - want).abs() <= tol,
                "seed {seed:#x}, ({i}, {j})"
            );
        }
    }
}

#[test]
fn gamma_is_highams_constant_for_f32() {
    let u = 2f64.powi(-24);
    assert_eq!(gamma(0), 0.0);
    assert_eq!(gamma(1), u / (1.0 - u));
    assert_eq!(gamma(1024), 2f64.powi(-14) / (1.0 - 2f64.powi(-14)));
    assert_eq!(gamma(4096), 2f64.powi(-12) / (1.0 - 2f64.powi(-12)));
    for k in [2usize, 3, 100, 12345, 1 << 20] {
        let want = k as f64 * u / (1.0 - k as f64 * u);
        assert!((gamma(k) - want).abs() <= 1e-15 * want, "k {k}");
        assert!(gamma(k) > k as f64 * u && gamma(k) > gamma(k - 1), "k {k}");
    }
}

#[test]
fn first_violation_accepts_naive_f32_accumulation_on_random_data() {
    // Higham (3.5): a sequential f32 dot product of length k, products rounded, is within
    // gamma(k) * sum |a||w| of the exact value, whatever the data. Try it where it is tightest: all
    // terms of one sign, widely varying magnitudes, long K.
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    for &k in &[1usize, 2, 3, 16, 100, 1000, 4096] {
        for dist in 0..3 {
            let (m, n) = (3, 5);
            let draw = |rng: &mut Rng| match dist {
                0 => rng.normal(),
                1 => rng.uniform() + 0.5,
                _ => rng.normal() * 2f32.powi((rng.next_u64() % 20) as i32 - 10),
            };
            let a: Vec<f32> = (0..m * k).map(|_| draw(&mut rng)).collect();
            let w: Vec<f32> = (0..n * k).map(|_| draw(&mut rng)).collect();
            let r = gemm_f32(&a, &w, m, n, k).unwrap();
            let naive = naive_f32(&a, &w, m, n, k);
            assert_eq!(
                r.first_violation(&naive, 0),
                None,
                "seed {seed:#x}, k {k}, distribution {dist}"
            );
            // Reversed order, and pairwise: any order is within the bound.
            let rev: Vec<f32> = (0..m * n)
                .map(|o| {
                    let (i, j) = (o / n, o % n);
                    (0..k)
                        .rev()
                        .fold(0.0f32, |acc, p| acc + a[i * k + p] * w[j * k + p])
                })
                .collect();
            assert_eq!(
                r.first_violation(&rev, 0),
                None,
                "seed {seed:#x}, k {k}, distribution {dist}, reversed"
            );
        }
    }
}

#[test]
fn first_violation_finds_the_first_perturbed_output() {
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    let (m, n, k) = (4, 6, 512);
    let a = rng.normal_vec(m * k, 1.0);
    let w = rng.normal_vec(n * k, 1.0);
    let r = gemm_f32(&a, &w, m, n, k).unwrap();
    let naive = naive_f32(&a, &w, m, n, k);
    assert_eq!(r.first_violation(&naive, 0), None, "seed {seed:#x}");
    for (first, second) in [(0usize, 23usize), (7, 8), (22, 23)] {
        let mut got = naive.clone();
        for &i in &[second, first] {
            // Ten bounds away: far outside, yet well inside f32's resolution of the value.
            got[i] = (r.values[i] + 10.0 * r.bound(i, 0)) as f32;
        }
        let (i, err, bound) = r
            .first_violation(&got, 0)
            .unwrap_or_else(|| panic!("seed {seed:#x}: perturbation at {first} missed"));
        assert_eq!(i, first, "seed {seed:#x}");
        assert!(
            err > bound && bound == r.bound(first, 0),
            "seed {seed:#x}: err {err}, bound {bound}"
        );
        // A larger allowance for epilogue roundings widens the bound: gamma(k + extra).
        assert_eq!(r.bound(first, 3), gamma(k + 3) * r.abs_sums[first]);
    }
    let mut got = naive.clone();
    got[5] = f32::NAN;
    assert_eq!(
        r.first_violation(&got, 0).map(|v| v.0),
        Some(5),
        "seed {seed:#x}: NaN output"
    );
    got[5] = f32::INFINITY;
    assert_eq!(
        r.first_violation(&got, 0).map(|v| v.0),
        Some(5),
        "seed {seed:#x}: Inf output"
    );
}

#[test]
fn first_violation_never_accepts_an_output_of_the_wrong_length() {
    // `got` shorter than the reference leaves outputs unchecked; it must not read as "no violation"
    // (a panic or a reported violation are both acceptable).
    let mut rng = Rng::new(Rng::fresh_seed());
    let (m, n, k) = (2, 3, 16);
    let a = rng.normal_vec(m * k, 1.0);
    let w = rng.normal_vec(n * k, 1.0);
    let r = gemm_f32(&a, &w, m, n, k).unwrap();
    let naive = naive_f32(&a, &w, m, n, k);
    for len in [0, m * n - 1, m * n + 1] {
        let mut got = naive.clone();
        got.resize(len, 0.0);
        let res = std::panic::catch_unwind(|| r.first_violation(&got, 0));
        assert!(
            !matches!(res, Ok(None)),
            "an output of {len} values for {} passed",
            m * n
        );
    }
}

#[test]
fn mismatched_shapes_give_typed_errors() {
    let a = vec![1.0f32; 6];
    let w = vec![1.0f32; 8];
    let len = |r: Result<GemmReference, Error>, want: (usize, usize), what: &str| match r {
        Err(Error::Length { expected, actual, .. }) => assert_eq!((expected, actual), want, "{what}"),
        other => panic!("{what}: expected Error::Length, got {other:?}"),
    };
    len(gemm_f32(&a, &w, 2, 2, 4), (8, 6), "A too short");
    len(gemm_f32(&w, &a, 2, 2, 4), (8, 6), "W too short");
    len(gemm_f32(&a, &w, 2, 3, 3), (9, 8), "W too long");
    match gemm_f32::<f32>(&[], &[], usize::MAX, 1, 2) {
        Err(Error::ShapeOverflow { .. }) => {}
        other => panic!("expected Error::ShapeOverflow, got {other:?}"),
    }
    let q = |rows, cols| {
        quantize(
            "q",
            &vec![1.0f32; rows * cols],
            rows,
            cols,
            &QuantizeOptions::default(),
        )
        .unwrap()
    };
    let w = q(3, 32);
    len(
        gemm_w4a16(&[1.0f32; 31], 1, &w),
        (32, 31),
        "W4A16 activation length",
    );
    len(
        gemm_w4a16(&[1.0f32; 64], 1, &w),
        (32, 64),
        "W4A16 activation length",
    );
    match gemm_w4a4(&q(2, 16), &w) {
        Err(Error::Shape { .. }) => {}
        other => panic!("W4A4 with K 16 vs 32: expected Error::Shape, got {other:?}"),
    }
    // Empty products are fine.
    assert!(gemm_w4a4(&q(0, 32), &w).unwrap().values.is_empty());
    assert!(gemm_w4a16::<f32>(&[], 0, &w).unwrap().values.is_empty());
    let r = gemm_f32::<f32>(&[], &[], 2, 3, 0).unwrap();
    assert_eq!(r.values, vec![0.0; 6]);
}
