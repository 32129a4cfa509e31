//! The CPU quantizer and dequantizer of `nvfp4::quant` against the test vectors of
//! `shared/reference/nvfp4-format.md` §0.8 and an independent scalar re-implementation of §0.5 written
//! in this file (plain loops, f32 arithmetic in ModelOpt's order, its own E2M1/E4M3 rounding by brute
//! force from the definitions), plus properties: the error bound of quantize→dequantize, layout
//! independence, determinism across thread counts, and every degenerate input the API names.

use half::{bf16, f16};
use nvfp4::Error;
use nvfp4::format::{Element, Overflow, ScaleLayout, ZeroSign};
use nvfp4::quant::{
    GlobalScale, GlobalScaleRule, NonFinite, Nvfp4Tensor, QuantizeOptions, dequantize, dequantize_into,
    quantize,
};
use nvfp4::reference::synthetic::Rng;
use proptest::prelude::*;

// ------------------------------------------------------------------------------------------------
// Slow references for the two roundings (tests/support/slow_codecs.rs, which
// tests/format_exhaustive.rs checks exhaustively against the crate's codecs).
// ------------------------------------------------------------------------------------------------

#[path = "support/slow_codecs.rs"]
mod slow_codecs;
use slow_codecs::{e2m1_ref, e4m3_def, e4m3_mags, e4m3_ref};

// ------------------------------------------------------------------------------------------------
// §0.5 re-implemented.
// ------------------------------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
struct RefQuant {
    s2: f32,
    /// Linear `[rows, cols/16]`.
    scales: Vec<u8>,
    /// `[rows, cols/2]`, even element in the low nibble.
    codes: Vec<u8>,
}

/// §0.5 for `[rows, cols]` (cols a multiple of 16), input already widened (exactly) to f32.
///
/// Two documented departures of the crate from ModelOpt's raw formula are reproduced: a block whose scale
/// is 0/0 (an all-zero block of a zero global scale) gets scale 1.0 like any other all-zero block, and
/// a zero element is not divided (so a zero divisor cannot make it NaN). NaN/Inf (present only in
/// `NonFinite::Saturate` runs) take no part in the maxima. Block scales are capped at 448 with or without
/// the clamp (a third documented departure). Returns `None` where a scale byte would be NaN, which the
/// cap makes impossible; the crate would have to refuse it with `Error::InvalidValue`.
fn reference_quantize(x: &[f32], rows: usize, cols: usize, opts: &QuantizeOptions) -> Option<RefQuant> {
    assert_eq!(cols % 16, 0);
    let mags = e4m3_mags();
    let mut amax = 0.0f32;
    for &v in x {
        if v.is_finite() && v.abs() > amax {
            amax = v.abs();
        }
    }
    let s2 = match opts.global_scale {
        GlobalScale::FromAmax(GlobalScaleRule::Divide) => amax / 2688.0f32,
        GlobalScale::FromAmax(GlobalScaleRule::Reciprocal) => amax * (1.0f32 / 2688.0f32),
        GlobalScale::Given(g) => g,
    };
    let bc = cols / 16;
    let mut scales = vec![0u8; rows * bc];
    let mut codes = vec![0u8; rows * cols / 2];
    for r in 0..rows {
        for b in 0..bc {
            let block = &x[r * cols + b * 16..r * cols + b * 16 + 16];
            let mut bmax = 0.0f32;
            for &v in block {
                if v.is_finite() && v.abs() > bmax {
                    bmax = v.abs();
                }
            }
            let t = 6.0f32 * s2;
            let mut s = bmax / t;
            if s == 0.0 || s.is_nan() {
                s = 1.0;
            }
            if opts.clamp_scale {
                s = s.max(1.0 / 512.0);
            }
            // The crate caps scales at 448 with or without the clamp (ModelOpt's formula would write
            // a NaN byte where a given global scale is too small).
            s = s.min(448.0);
            let sf = e4m3_ref(f64::from(s), Overflow::NonSaturating, &mags);
            if sf & 0x7F == 0x7F {
                return None;
            }
            scales[r * bc + b] = sf;
            let d = e4m3_def(sf) as f32 * s2;
            for (j, &v) in block.iter().enumerate() {
                let y = if v == 0.0 { v } else { v / d };
                let q = e2m1_ref(f64::from(y), opts.zero_sign);
                let byte = &mut codes[(r * cols + b * 16 + j) / 2];
                *byte |= if j % 2 == 0 { q } else { q << 4 };
            }
        }
    }
    Some(RefQuant { s2, scales, codes })
}

fn linear_scales(t: &Nvfp4Tensor) -> Vec<u8> {
    let mut v = Vec::with_capacity(t.rows() * t.block_cols());
    for r in 0..t.rows() {
        for c in 0..t.block_cols() {
            v.push(t.scale_at(r, c));
        }
    }
    v
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

fn opts() -> QuantizeOptions {
    QuantizeOptions::default()
}

// ------------------------------------------------------------------------------------------------
// §0.8 test vectors.
// ------------------------------------------------------------------------------------------------

// The document's decimals, exact in bf16 (hence in f32), kept digit for digit.
#[allow(clippy::excessive_precision)]
const ROW0_BLOCK: [f32; 16] = [
    0.10009765625,
    -0.25,
    0.30078125,
    0.75,
    -1.0,
    1.296875,
    2.0,
    -2.59375,
    3.09375,
    4.0,
    -5.5,
    6.0,
    0.0,
    -0.0,
    0.050048828125,
    -0.06982421875,
];

fn vector_input() -> Vec<bf16> {
    let mut row1 = vec![bf16::from_f32(1e-3); 16];
    row1.extend([10.0, -7.5, 2.5, 0.625].map(bf16::from_f32));
    row1.extend([bf16::ZERO; 12]);
    let mut v: Vec<bf16> = ROW0_BLOCK
        .iter()
        .chain(&ROW0_BLOCK)
        .map(|&x| bf16::from_f32(x))
        .collect();
    v.extend(row1);
    v
}

fn check_test_vectors(q: &Nvfp4Tensor, what: &str) {
    assert_eq!(q.shape(), [2, 32], "{what}");
    assert_eq!(
        q.global_scale().to_bits(),
        0x3B73CF3D,
        "{what}: S2 = {}",
        q.global_scale()
    );
    assert_eq!(linear_scales(q), [0x78, 0x78, 0x13, 0x7E], "{what}: scale bytes");
    let row0 = [0x90, 0x21, 0x3A, 0xD4, 0x65, 0x7F, 0x00, 0x80];
    assert_eq!(&q.codes()[0..8], &row0, "{what}: row 0 block 0");
    assert_eq!(&q.codes()[8..16], &row0, "{what}: row 0 block 1");
    assert_eq!(&q.codes()[16..24], &[0x77; 8], "{what}: row 1 block 0 saturates");
    assert_eq!(
        &q.codes()[24..32],
        &[0xE7, 0x13, 0, 0, 0, 0, 0, 0],
        "{what}: row 1 block 1"
    );
    let deq: Vec<f32> = dequantize(q);
    let want = [10.0f32, -6.6666665, 2.5, 0.8333333];
    assert_eq!(&deq[48..52], &want, "{what}: row 1 block 1 dequantized");
    assert!(
        deq[52..64].iter().all(|&v| v.to_bits() == 0),
        "{what}: zeros dequantize to +0.0"
    );
}

#[test]
fn test_vectors_of_the_reference_document_bit_for_bit() {
    let w = vector_input();
    // The inputs are bf16-exact (so bf16, f16 and f32 inputs all mean the same numbers) except 1e-3,
    // which the document itself takes as bf16.
    for (i, &x) in ROW0_BLOCK.iter().enumerate() {
        assert_eq!(bf16::from_f32(x).to_f32(), x, "element {i} is bf16-exact");
        assert_eq!(f16::from_f32(x).to_f32(), x, "element {i} is f16-exact");
    }
    check_test_vectors(&quantize("vectors", &w, 2, 32, &opts()).unwrap(), "bf16");
    let w32: Vec<f32> = w.iter().map(|x| x.to_f32()).collect();
    check_test_vectors(&quantize("vectors", &w32, 2, 32, &opts()).unwrap(), "f32");
    let w16: Vec<f16> = w32.iter().map(|&x| f16::from_f32(x)).collect();
    assert!(
        w16.iter().zip(&w32).all(|(a, &b)| a.to_f32() == b),
        "bf16(1e-3) is f16-exact too"
    );
    check_test_vectors(&quantize("vectors", &w16, 2, 32, &opts()).unwrap(), "f16");
    // And the independent re-implementation agrees with the document.
    let r = reference_quantize(&w32, 2, 32, &opts()).unwrap();
    assert_eq!(
        (r.s2.to_bits(), r.scales.as_slice()),
        (0x3B73CF3D, &[0x78u8, 0x78, 0x13, 0x7E][..])
    );
    // With the hardware zero sign, -0.0 (element 13) gives code 8: byte 6 of each row-0 block is 0x80.
    let hw = QuantizeOptions {
        zero_sign: ZeroSign::Hardware,
        ..opts()
    };
    let q = quantize("vectors", &w, 2, 32, &hw).unwrap();
    assert_eq!(
        &q.codes()[0..8],
        &[0x90, 0x21, 0x3A, 0xD4, 0x65, 0x7F, 0x80, 0x80]
    );
}

// ------------------------------------------------------------------------------------------------
// The quantizer against the re-implementation on random tensors.
// ------------------------------------------------------------------------------------------------

/// One random row of `cols` values from distribution `kind` (0..8).
fn random_row(rng: &mut Rng, cols: usize, kind: u64) -> Vec<f32> {
    let pow2 =
        |rng: &mut Rng, lo: i32, hi: i32| 2f32.powi(lo + (rng.next_u64() % (hi - lo + 1) as u64) as i32);
    // Rows of similar magnitude mostly; now and then one far below the rest (block scales under 2^-9).
    let row_scale = if rng.next_u64() % 4 == 0 {
        pow2(rng, -30, 4)
    } else {
        pow2(rng, -3, 3)
    };
    (0..cols)
        .map(|j| {
            let v = match kind {
                // Normal with a random width.
                0 => rng.normal() * 10f32.powf(rng.uniform() * 6.0 - 3.0),
                // Heavy tail: ratio of normals (Cauchy), capped to stay finite in f16.
                1 => (rng.normal() / (rng.normal().abs() + 1e-4)).clamp(-6e4, 6e4),
                // Tiny values, around 1e-6.
                2 => rng.normal() * 1e-6,
                // Exact E2M1 values times powers of two.
                3 => e2m1_value(rng) * pow2(rng, -8, 8),
                // E2M1 midpoints: ties once divided by a power-of-two scale.
                4 => {
                    let mids = [0.25f32, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0];
                    let m = mids[(rng.next_u64() % 8) as usize];
                    if rng.next_u64() % 2 == 0 { m } else { -m }
                }
                // Mostly zeros (both signs), with whole zero blocks.
                5 => {
                    if (j / 16) % 2 == 0 || rng.next_u64() % 4 != 0 {
                        if rng.next_u64() % 2 == 0 { 0.0 } else { -0.0 }
                    } else {
                        rng.normal()
                    }
                }
                // Per-block dynamic range: each block its own power of two.
                6 => rng.normal() * 2f32.powi((j / 16) as i32 * 5 - 20),
                // Uniform in [-1, 1).
                _ => rng.uniform() * 2.0 - 1.0,
            };
            v * row_scale
        })
        .collect()
}

fn e2m1_value(rng: &mut Rng) -> f32 {
    let v = [0.0f32, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
    let x = v[(rng.next_u64() % 8) as usize];
    if rng.next_u64() % 2 == 0 { x } else { -x }
}

/// Half the time every row from one distribution (like a real weight), else each row its own.
fn random_tensor(rng: &mut Rng, rows: usize, cols: usize) -> Vec<f32> {
    let kind = (rng.next_u64() % 2 == 0).then(|| rng.next_u64() % 8);
    (0..rows)
        .flat_map(|_| {
            let k = kind.unwrap_or_else(|| rng.next_u64() % 8);
            random_row(rng, cols, k)
        })
        .collect()
}

/// Narrows to `T`, turning what overflows `T` into zero unless `keep_non_finite`.
fn narrow<T: Element>(x: &[f32], keep_non_finite: bool) -> Vec<T> {
    x.iter()
        .map(|&v| {
            let t = T::from_f32(v);
            if t.to_f32().is_finite() || keep_non_finite {
                t
            } else {
                T::from_f32(0.0)
            }
        })
        .collect()
}

fn compare_with_reference<T: Element>(rng: &mut Rng, seed: u64, case: usize, opts: &QuantizeOptions) {
    let rows = 1 + (rng.next_u64() % 40) as usize;
    let cols = 16 * (1 + (rng.next_u64() % 16) as usize);
    let mut x = random_tensor(rng, rows, cols);
    if opts.non_finite == NonFinite::Saturate {
        for _ in 0..1 + rng.next_u64() % 4 {
            let i = (rng.next_u64() % x.len() as u64) as usize;
            x[i] = [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY][(rng.next_u64() % 4) as usize];
        }
    }
    let data: Vec<T> = narrow(&x, opts.non_finite == NonFinite::Saturate);
    let wide: Vec<f32> = data.iter().map(|v| v.to_f32()).collect();
    let mut opts = *opts;
    if let GlobalScale::Given(_) = opts.global_scale {
        // A given scale around the tensor's own: a power of two half the time (exact ties then), and
        // sometimes far too small (saturation), sometimes zero.
        let amax = wide
            .iter()
            .filter(|v| v.is_finite())
            .fold(0.0f32, |m, v| m.max(v.abs()));
        let g = match rng.next_u64() % 6 {
            0 => 0.0,
            1 | 2 => {
                let e = if amax > 0.0 {
                    (amax / 2688.0).log2().round() as i32
                } else {
                    0
                };
                2f32.powi(e + (rng.next_u64() % 5) as i32 - 2)
            }
            3 => amax / 2688.0 * 1e-3,
            _ => amax / 2688.0 * (0.25 + 4.0 * rng.uniform()),
        };
        opts.global_scale = GlobalScale::Given(if g.is_finite() { g } else { 0.0 });
    }
    opts.scale_layout = if rng.next_u64() % 2 == 0 {
        ScaleLayout::Linear
    } else {
        ScaleLayout::Swizzled128x4
    };
    let ctx = format!(
        "seed {seed:#x}, case {case}, {:?} [{rows}, {cols}], {opts:?}",
        T::DTYPE
    );
    let got = quantize("random", &data, rows, cols, &opts);
    let Some(want) = reference_quantize(&wide, rows, cols, &opts) else {
        match got {
            Err(Error::InvalidValue { .. }) => return,
            other => panic!("{ctx}: a scale byte would be NaN, expected Error::InvalidValue, got {other:?}"),
        }
    };
    let q = got.unwrap_or_else(|e| panic!("{ctx}: {e}"));
    assert_eq!(
        q.global_scale().to_bits(),
        want.s2.to_bits(),
        "{ctx}: global scale"
    );
    assert_eq!(q.scale_layout(), opts.scale_layout, "{ctx}");
    let scales = linear_scales(&q);
    if let Some(i) = (0..scales.len()).find(|&i| scales[i] != want.scales[i]) {
        let (r, b) = (i / (cols / 16), i % (cols / 16));
        panic!(
            "{ctx}: scale ({r}, {b}) is {:#04x}, expected {:#04x}; block {:?}",
            scales[i],
            want.scales[i],
            &wide[r * cols + b * 16..r * cols + b * 16 + 16]
        );
    }
    if let Some(i) = (0..q.codes().len()).find(|&i| q.codes()[i] != want.codes[i]) {
        let (r, e) = (2 * i / cols, 2 * i % cols);
        panic!(
            "{ctx}: code byte {i} (row {r}, elements {e}, {}) is {:#04x}, expected {:#04x}; values {:?}, block \
             scale {:#04x}",
            e + 1,
            q.codes()[i],
            want.codes[i],
            &wide[r * cols + e..r * cols + e + 2],
            want.scales[r * (cols / 16) + e / 16]
        );
    }
}

fn all_option_sets() -> Vec<QuantizeOptions> {
    let mut v = Vec::new();
    for gs in [
        GlobalScale::FromAmax(GlobalScaleRule::Divide),
        GlobalScale::FromAmax(GlobalScaleRule::Reciprocal),
        GlobalScale::Given(1.0),
    ] {
        for zero_sign in [ZeroSign::Hardware, ZeroSign::ModelOpt] {
            for clamp_scale in [true, false] {
                for non_finite in [NonFinite::Error, NonFinite::Saturate] {
                    v.push(QuantizeOptions {
                        global_scale: gs,
                        zero_sign,
                        clamp_scale,
                        non_finite,
                        ..opts()
                    });
                }
            }
        }
    }
    v
}

fn quantize_matches_reference<T: Element>() {
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    let mut case = 0;
    for o in all_option_sets() {
        for _ in 0..6 {
            compare_with_reference::<T>(&mut rng, seed, case, &o);
            case += 1;
        }
    }
}

#[test]
fn quantize_f32_matches_the_scalar_reimplementation_of_the_formula() {
    quantize_matches_reference::<f32>();
}

#[test]
fn quantize_f16_matches_the_scalar_reimplementation_of_the_formula() {
    quantize_matches_reference::<f16>();
}

#[test]
fn quantize_bf16_matches_the_scalar_reimplementation_of_the_formula() {
    quantize_matches_reference::<bf16>();
}

#[test]
fn global_scale_rules_differ_as_documented() {
    // Divide is amax / 2688 correctly rounded; Reciprocal is amax * f32(1/2688). They differ by one ulp
    // for some amax (§0.5.1): find such an amax and check both.
    let r = 1.0f32 / 2688.0;
    let amax = (1..10_000)
        .map(|i| 1.0 + i as f32 / 1024.0)
        .find(|&a| a / 2688.0 != a * r)
        .unwrap();
    for (rule, want) in [
        (GlobalScaleRule::Divide, amax / 2688.0),
        (GlobalScaleRule::Reciprocal, amax * r),
    ] {
        let o = QuantizeOptions {
            global_scale: GlobalScale::FromAmax(rule),
            ..opts()
        };
        let mut w = vec![0.5f32; 16];
        w[3] = -amax;
        let q = quantize("w", &w, 1, 16, &o).unwrap();
        assert_eq!(q.global_scale().to_bits(), want.to_bits(), "{rule:?} amax {amax}");
        assert_eq!(
            nvfp4::quant::global_scale_from_amax(amax, rule).to_bits(),
            want.to_bits()
        );
    }
}

// ------------------------------------------------------------------------------------------------
// quantize -> dequantize error.
// ------------------------------------------------------------------------------------------------

/// Half the spacing of the E2M1 grid around the magnitude `y` (y <= 6).
fn half_step(y: f64) -> f64 {
    if y <= 2.0 {
        0.25
    } else if y <= 4.0 {
        0.5
    } else {
        1.0
    }
}

fn element_strategy() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => (-1.0f32..1.0, -40i32..40).prop_map(|(m, e)| m * 2f32.powi(e)),
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
        1 => (0usize..8, -20i32..20, any::<bool>()).prop_map(|(i, e, neg)| {
            let v = [0.25f32, 0.5, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0][i] * 2f32.powi(e);
            if neg { -v } else { v }
        }),
        1 => any::<u32>().prop_map(f32::from_bits).prop_filter("finite", |v| v.is_finite()),
    ]
}

proptest! {
    #![proptest_config(config(128))]

    /// Every element dequantizes within half a grid step of its block, after the roundings on the way:
    ///
    /// With `d = f32(f32(sf) * S2)` the block's scale (the same f32 the quantizer divides by and the
    /// dequantizer multiplies by) and `y = |x| / d` exactly:
    /// * if `y > 6` the code saturates and `deq == ±f32(6 * d)` exactly;
    /// * otherwise `deq = f32(v * d)` for the grid value `v` nearest to `ŷ = f32(x / d)`, so
    ///   `|x - deq| <= d·|y - ŷ| + d·|ŷ - v| + |v·d - deq|
    ///              <= d·(u·y + 2^-150/d) + d·h(ŷ) + (u·|deq| + 2^-150)`, with `u = 2^-24`, `h` half the
    ///   grid spacing at `ŷ` (0.25 up to 2, 0.5 up to 4, 1 up to 6), and the 2^-150 terms for results in
    ///   f32's subnormal range. `h(ŷ) <= h(y·(1 + 2^-23))` since `h` does not decrease.
    #[test]
    fn dequantize_is_within_half_a_grid_step_of_every_element(
        rows in 1usize..6,
        blocks in 1usize..5,
        values in prop::collection::vec(element_strategy(), 16 * 5 * 4),
        gs in prop_oneof![
            Just(GlobalScale::FromAmax(GlobalScaleRule::Divide)),
            Just(GlobalScale::FromAmax(GlobalScaleRule::Reciprocal)),
            (-20i32..20).prop_map(|e| GlobalScale::Given(2f32.powi(e))),
        ],
        zero_sign in prop_oneof![Just(ZeroSign::Hardware), Just(ZeroSign::ModelOpt)],
        clamp_scale in any::<bool>(),
    ) {
        let cols = 16 * blocks;
        let x = &values[..rows * cols];
        let o = QuantizeOptions { global_scale: gs, zero_sign, clamp_scale, ..opts() };
        let q = match quantize("w", x, rows, cols, &o) {
            Ok(q) => q,
            Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
        };
        let deq: Vec<f32> = dequantize(&q);
        let u = 2f64.powi(-24);
        let tiny = 2f64.powi(-150);
        for r in 0..rows {
            for c in 0..cols {
                let (xi, di) = (x[r * cols + c], deq[r * cols + c]);
                let d = nvfp4::format::e4m3::decode_f32(q.scale_at(r, c / 16)) * q.global_scale();
                // A zero is never divided (d may be 0); any other x over d = 0 saturates.
                let y = if xi == 0.0 { 0.0 } else { f64::from(xi.abs()) / f64::from(d) };
                if y > 6.0 {
                    let want = if xi < 0.0 { -(6.0 * d) } else { 6.0 * d };
                    prop_assert_eq!(di, want, "({}, {}): {:e} saturates, d = {:e}", r, c, xi, d);
                } else {
                    let (xf, df, dd) = (f64::from(xi), f64::from(di), f64::from(d));
                    let bound = dd * (u * y + half_step(y * (1.0 + 2f64.powi(-23)))) + tiny
                        + u * df.abs() + tiny;
                    let err = (xf - df).abs();
                    prop_assert!(err <= bound * (1.0 + 1e-12),
                        "({}, {}): x = {:e}, deq = {:e}, d = {:e}, |err| = {:e} > {:e}", r, c, xi, di, d, err, bound);
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Layouts, output types, determinism.
// ------------------------------------------------------------------------------------------------

#[test]
fn linear_and_swizzled_outputs_hold_the_same_scales_and_codes() {
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    for (rows, cols) in [(1, 16), (3, 48), (130, 80), (257, 16), (40, 256)] {
        let x: Vec<bf16> = narrow(&random_tensor(&mut rng, rows, cols), false);
        let lin = quantize("w", &x, rows, cols, &opts()).unwrap();
        let so = QuantizeOptions {
            scale_layout: ScaleLayout::Swizzled128x4,
            ..opts()
        };
        let sw = quantize("w", &x, rows, cols, &so).unwrap();
        let ctx = format!("seed {seed:#x}, [{rows}, {cols}]");
        assert_eq!(sw.codes(), lin.codes(), "{ctx}");
        assert_eq!(sw.global_scale().to_bits(), lin.global_scale().to_bits(), "{ctx}");
        assert_eq!(
            sw.scales().len(),
            ScaleLayout::Swizzled128x4.len(rows, cols / 16),
            "{ctx}"
        );
        assert_eq!(lin.scales().len(), rows * cols / 16, "{ctx}");
        for r in 0..rows {
            for c in 0..cols / 16 {
                assert_eq!(sw.scale_at(r, c), lin.scale_at(r, c), "{ctx}: ({r}, {c})");
                assert_eq!(
                    lin.scale_at(r, c),
                    lin.scales()[r * (cols / 16) + c],
                    "{ctx}: ({r}, {c})"
                );
            }
        }
        let real = rows * (cols / 16);
        assert_eq!(
            sw.scales().iter().filter(|&&b| b != 0).count(),
            lin.scales().iter().filter(|&&b| b != 0).count()
        );
        assert!(real <= sw.scales().len());
        assert_eq!(dequantize::<f32>(&sw), dequantize::<f32>(&lin), "{ctx}");
        assert_eq!(
            lin.clone().with_scale_layout(ScaleLayout::Swizzled128x4).unwrap(),
            sw,
            "{ctx}"
        );
        assert_eq!(sw.with_scale_layout(ScaleLayout::Linear).unwrap(), lin, "{ctx}");
    }
}

#[test]
fn dequantize_to_f16_and_bf16_rounds_the_f32_value_once() {
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    let x = random_tensor(&mut rng, 16, 64);
    let q = quantize("w", &x, 16, 64, &opts()).unwrap();
    let f: Vec<f32> = dequantize(&q);
    let h: Vec<f16> = dequantize(&q);
    let b: Vec<bf16> = dequantize(&q);
    for i in 0..f.len() {
        assert_eq!(
            h[i].to_bits(),
            f16::from_f32(f[i]).to_bits(),
            "seed {seed:#x}, element {i}"
        );
        assert_eq!(
            b[i].to_bits(),
            bf16::from_f32(f[i]).to_bits(),
            "seed {seed:#x}, element {i}"
        );
    }
    let mut out = vec![0.0f32; f.len()];
    dequantize_into(&q, &mut out).unwrap();
    assert_eq!(out, f);
    let mut short = vec![0.0f32; f.len() - 1];
    match dequantize_into(&q, &mut short) {
        Err(Error::Length { expected, actual, .. }) => assert_eq!((expected, actual), (f.len(), f.len() - 1)),
        other => panic!("expected Error::Length, got {other:?}"),
    }
}

#[test]
fn quantize_is_deterministic_across_thread_counts() {
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    // Two shapes of about 2M elements: K a multiple of 16 (blocks run across rows) and a padded K (the
    // row-wise path).
    for (rows, cols, pad_k) in [(1024usize, 2048usize, false), (700, 3000, true)] {
        let x: Vec<bf16> = (0..rows * cols)
            .map(|i| bf16::from_f32(rng.normal() * if i % 977 == 0 { 50.0 } else { 1.0 }))
            .collect();
        let o = QuantizeOptions { pad_k, ..opts() };
        let results: Vec<Nvfp4Tensor> = [1, 2, 3, 7]
            .into_iter()
            .map(|t| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(t)
                    .build()
                    .unwrap()
                    .install(|| quantize("w", &x, rows, cols, &o).unwrap())
            })
            .collect();
        for (i, r) in results.iter().enumerate().skip(1) {
            assert!(
                r == &results[0],
                "seed {seed:#x}, [{rows}, {cols}]: result {i} differs from 1 thread"
            );
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Degenerate inputs.
// ------------------------------------------------------------------------------------------------

#[test]
fn an_all_zero_tensor_has_zero_global_scale_unit_block_scales_and_zero_codes() {
    let mut x = vec![0.0f32; 3 * 32];
    for v in x.iter_mut().skip(1).step_by(3) {
        *v = -0.0;
    }
    for layout in [ScaleLayout::Linear, ScaleLayout::Swizzled128x4] {
        for clamp_scale in [true, false] {
            let o = QuantizeOptions {
                scale_layout: layout,
                clamp_scale,
                ..opts()
            };
            let q = quantize("zeros", &x, 3, 32, &o).unwrap();
            assert_eq!(q.global_scale().to_bits(), 0, "{o:?}");
            assert_eq!(linear_scales(&q), [0x38; 6], "{o:?}");
            assert!(q.codes().iter().all(|&b| b == 0), "{o:?}");
            let d: Vec<f32> = dequantize(&q);
            assert!(d.iter().all(|v| v.to_bits() == 0), "{o:?}: {d:?}");
        }
    }
    let q = quantize("zeros", &[bf16::ZERO; 64], 2, 32, &opts()).unwrap();
    assert_eq!((q.global_scale(), linear_scales(&q)), (0.0, vec![0x38; 4]));
}

#[test]
fn an_all_zero_block_in_a_non_zero_tensor_gets_scale_one_and_zero_codes() {
    let mut x = vec![0.0f32; 64];
    x[5] = 3.0;
    x[40] = -0.0;
    x[63] = -1.5;
    let q = quantize("w", &x, 1, 64, &opts()).unwrap();
    let s = linear_scales(&q);
    assert_eq!((s[1], s[2]), (0x38, 0x38));
    assert!(q.codes()[8..24].iter().all(|&b| b == 0));
    assert_ne!(s[0], 0x38);
}

#[test]
fn non_finite_input_is_refused_with_its_position() {
    let (rows, cols) = (5, 48);
    for (pos, bad) in [
        (0usize, f32::NAN),
        (17, f32::INFINITY),
        (239, f32::NEG_INFINITY),
        (100, -f32::NAN),
    ] {
        let mut x = vec![1.0f32; rows * cols];
        x[pos] = bad;
        let check = |r: Result<Nvfp4Tensor, Error>, what: &str| match r {
            Err(Error::NonFinite {
                index,
                row,
                col,
                value,
                shape,
                ..
            }) => {
                assert_eq!((index, row, col), (pos, pos / cols, pos % cols), "{what}");
                assert_eq!(shape, [rows, cols], "{what}");
                assert!(
                    value.is_nan() == bad.is_nan() && (bad.is_nan() || value == bad),
                    "{what}: {value}"
                );
            }
            other => panic!("{what}: expected Error::NonFinite at {pos}, got {other:?}"),
        };
        check(quantize("w", &x, rows, cols, &opts()), "f32");
        check(
            quantize("w", &narrow::<f16>(&x, true), rows, cols, &opts()),
            "f16",
        );
        check(
            quantize("w", &narrow::<bf16>(&x, true), rows, cols, &opts()),
            "bf16",
        );
    }
    // The first one is reported, across the quantizer's parallel chunks.
    let mut x = vec![0.5f32; 300_000];
    x[250_000] = f32::NAN;
    x[140_000] = f32::INFINITY;
    x[140_001] = f32::NAN;
    match quantize(
        "w",
        &x,
        3000,
        100,
        &QuantizeOptions {
            pad_k: true,
            ..opts()
        },
    ) {
        Err(Error::NonFinite { index, row, col, .. }) => assert_eq!((index, row, col), (140_000, 1400, 0)),
        other => panic!("expected Error::NonFinite, got {other:?}"),
    }
}

#[test]
fn non_finite_input_saturates_when_asked_and_takes_no_part_in_the_maxima() {
    let sat = QuantizeOptions {
        non_finite: NonFinite::Saturate,
        ..opts()
    };
    let mut x = vec![0.0f32; 48];
    // Block 0: non-finite values among finite ones whose max is 3.
    x[0] = f32::INFINITY;
    x[1] = f32::NEG_INFINITY;
    x[2] = f32::NAN;
    x[3] = -f32::NAN;
    x[4] = 3.0;
    x[5] = -1.5;
    // Block 1: only non-finite values.
    x[16] = f32::NAN;
    x[17] = f32::NEG_INFINITY;
    // Block 2: the tensor's finite maximum.
    x[32] = 6.0;
    for zero_sign in [ZeroSign::Hardware, ZeroSign::ModelOpt] {
        let o = QuantizeOptions { zero_sign, ..sat };
        let q = quantize("w", &x, 1, 48, &o).unwrap();
        assert_eq!(q.global_scale(), 6.0 / 2688.0, "{zero_sign:?}");
        let ref_q = reference_quantize(&x, 1, 48, &o).unwrap();
        assert_eq!(linear_scales(&q), ref_q.scales, "{zero_sign:?}");
        assert_eq!(q.codes(), ref_q.codes.as_slice(), "{zero_sign:?}");
        let c = |i: usize| (q.codes()[i / 2] >> (4 * (i % 2))) & 0xF;
        assert_eq!(
            [c(0), c(1), c(2), c(3), c(16), c(17)],
            [0x7, 0xF, 0x7, 0x7, 0x7, 0xF],
            "{zero_sign:?}"
        );
        // Block 0's scale comes from 3.0 alone: 3 / (6 * S2) = 224 -> 0x76 (E4M3 224).
        assert_eq!(q.scale_at(0, 0), 0x76, "{zero_sign:?}");
        assert_eq!(
            q.scale_at(0, 1),
            0x38,
            "{zero_sign:?}: a block of only NaN/Inf has scale 1.0"
        );
        assert_eq!(c(4), 0x7, "3.0 is the block max: code 6.0");
    }
    assert_eq!(nvfp4::quant::amax(&x), (6.0, Some(0)));
}

#[test]
fn k_not_a_multiple_of_16_is_refused_or_zero_padded() {
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    for cols in [1usize, 7, 15, 17, 31, 33, 100] {
        let rows = 1 + (rng.next_u64() % 5) as usize;
        let x = random_tensor(&mut rng, rows, cols);
        let ctx = format!("seed {seed:#x}, [{rows}, {cols}]");
        match quantize("w", &x, rows, cols, &opts()) {
            Err(Error::Shape { shape, .. }) => assert_eq!(shape, [rows, cols], "{ctx}"),
            other => panic!("{ctx}: expected Error::Shape, got {other:?}"),
        }
        let padded_cols = cols.div_ceil(16) * 16;
        let mut xp = vec![0.0f32; rows * padded_cols];
        for r in 0..rows {
            xp[r * padded_cols..r * padded_cols + cols].copy_from_slice(&x[r * cols..(r + 1) * cols]);
        }
        for layout in [ScaleLayout::Linear, ScaleLayout::Swizzled128x4] {
            let o = QuantizeOptions {
                pad_k: true,
                scale_layout: layout,
                ..opts()
            };
            let q = quantize("w", &x, rows, cols, &o).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            let qp = quantize("w", &xp, rows, padded_cols, &o).unwrap();
            assert_eq!(q.shape(), [rows, cols], "{ctx}");
            assert_eq!(q.cols_padded(), padded_cols, "{ctx}");
            assert_eq!(q.block_cols(), padded_cols / 16, "{ctx}");
            assert_eq!(
                q.codes(),
                qp.codes(),
                "{ctx}: codes equal those of the explicitly padded tensor"
            );
            assert_eq!(q.scales(), qp.scales(), "{ctx}");
            assert_eq!(q.global_scale().to_bits(), qp.global_scale().to_bits(), "{ctx}");
            for r in 0..rows {
                for j in cols..padded_cols {
                    let code = (q.codes()[(r * padded_cols + j) / 2] >> (4 * (j % 2))) & 0xF;
                    assert_eq!(code, 0, "{ctx}: padding code ({r}, {j})");
                }
            }
            let d: Vec<f32> = dequantize(&q);
            let dp: Vec<f32> = dequantize(&qp);
            assert_eq!(d.len(), rows * cols, "{ctx}");
            for r in 0..rows {
                assert_eq!(
                    &d[r * cols..(r + 1) * cols],
                    &dp[r * padded_cols..r * padded_cols + cols],
                    "{ctx}: row {r}"
                );
            }
        }
    }
}

#[test]
fn empty_tensors_quantize_and_dequantize() {
    for (rows, cols, pad_k) in [
        (0usize, 0usize, false),
        (0, 16, false),
        (3, 0, false),
        (0, 17, true),
        (0, 0, true),
    ] {
        for layout in [ScaleLayout::Linear, ScaleLayout::Swizzled128x4] {
            let o = QuantizeOptions {
                pad_k,
                scale_layout: layout,
                ..opts()
            };
            let ctx = format!("[{rows}, {cols}] {o:?}");
            let q = quantize::<f32>("empty", &[], rows, cols, &o).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            assert_eq!(q.shape(), [rows, cols], "{ctx}");
            assert!(q.codes().is_empty(), "{ctx}");
            assert_eq!(q.scales().len(), layout.len(rows, q.block_cols()), "{ctx}");
            assert_eq!(q.global_scale(), 0.0, "{ctx}");
            assert!(dequantize::<f32>(&q).is_empty(), "{ctx}");
            assert!(dequantize::<bf16>(&q).is_empty(), "{ctx}");
            let q = quantize::<bf16>("empty", &[], rows, cols, &o).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            assert_eq!(q.shape(), [rows, cols], "{ctx}");
        }
    }
}

#[test]
fn a_shape_whose_element_count_overflows_is_refused() {
    for (rows, cols) in [(usize::MAX, 16), (1 << 40, 1 << 40), (16, usize::MAX)] {
        match quantize::<f32>("huge", &[], rows, cols, &opts()) {
            Err(Error::ShapeOverflow { shape, .. }) => assert_eq!(shape, [rows, cols]),
            other => panic!("[{rows}, {cols}]: expected Error::ShapeOverflow, got {other:?}"),
        }
    }
}

#[test]
fn padding_k_past_usize_max_is_a_shape_overflow() {
    // [0, usize::MAX] has no elements, but K padded up to 16 does not fit in usize.
    let o = QuantizeOptions {
        pad_k: true,
        ..opts()
    };
    for cols in [usize::MAX, usize::MAX - 14] {
        match quantize::<f32>("huge", &[], 0, cols, &o) {
            Err(Error::ShapeOverflow { .. }) => {}
            other => panic!("[0, {cols}] with pad_k: expected Error::ShapeOverflow, got {other:?}"),
        }
    }
}

#[test]
fn a_data_length_that_does_not_match_the_shape_is_refused() {
    for (len, rows, cols) in [(31usize, 2usize, 16usize), (33, 2, 16), (0, 1, 16), (16, 0, 16)] {
        match quantize("w", &vec![1.0f32; len], rows, cols, &opts()) {
            Err(Error::Length {
                expected,
                actual,
                shape,
                ..
            }) => {
                assert_eq!((expected, actual, shape), (rows * cols, len, vec![rows, cols]));
            }
            other => panic!("{len} elements for [{rows}, {cols}]: expected Error::Length, got {other:?}"),
        }
    }
}

#[test]
fn from_parts_validates_lengths_scale_bytes_and_the_global_scale() {
    let ok = |codes: usize, scales: Vec<u8>, layout, gs| {
        Nvfp4Tensor::from_parts("w", 3, 32, vec![0x21; codes], scales, layout, gs)
    };
    let lin = ScaleLayout::Linear;
    let sw = ScaleLayout::Swizzled128x4;
    let t = ok(48, vec![0x38; 6], lin, 0.5).unwrap();
    assert_eq!((t.shape(), t.cols_padded(), t.block_cols()), ([3, 32], 32, 2));
    assert_eq!(dequantize::<f32>(&t)[..2], [0.25, 0.5]);
    ok(48, vec![0x38; 512], sw, 0.5).unwrap();
    ok(48, vec![0x38; 6], lin, 0.0).unwrap();
    for (codes, n, layout) in [
        (47, 6, lin),
        (49, 6, lin),
        (48, 5, lin),
        (48, 7, lin),
        (48, 6, sw),
        (48, 511, sw),
    ] {
        match ok(codes, vec![0x38; n], layout, 0.5) {
            Err(Error::Length { .. }) => {}
            other => panic!(
                "{codes} code bytes, {n} scale bytes, {layout:?}: expected Error::Length, got {other:?}"
            ),
        }
    }
    for nan in [0x7Fu8, 0xFF] {
        for at in [0, 5] {
            let mut s = vec![0x38; 6];
            s[at] = nan;
            assert!(
                matches!(ok(48, s, lin, 0.5), Err(Error::InvalidValue { .. })),
                "scale byte {nan:#04x} at {at}"
            );
        }
    }
    for gs in [
        -1.0f32,
        -f32::MIN_POSITIVE,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ] {
        assert!(
            matches!(ok(48, vec![0x38; 6], lin, gs), Err(Error::InvalidValue { .. })),
            "global scale {gs}"
        );
    }
    assert!(matches!(
        Nvfp4Tensor::from_parts("w", 1, 24, vec![0; 12], vec![0x38; 2], lin, 1.0),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        Nvfp4Tensor::from_parts("w", usize::MAX, 32, vec![], vec![], lin, 1.0),
        Err(Error::ShapeOverflow { .. })
    ));
}

#[test]
fn values_beyond_the_range_of_a_given_global_scale_saturate() {
    // S2 = 1/64: the largest representable magnitude is 448 * 6 / 64 = 42.
    let s2 = 1.0 / 64.0;
    let o = QuantizeOptions {
        global_scale: GlobalScale::Given(s2),
        ..opts()
    };
    let mut x = vec![0.0f32; 32];
    x[0] = 1000.0;
    x[1] = -500.0;
    x[2] = 42.0;
    x[3] = -42.5;
    x[16] = 42.0;
    x[17] = -41.0;
    let q = quantize("act", &x, 1, 32, &o).unwrap();
    assert_eq!(q.global_scale(), s2);
    assert_eq!(linear_scales(&q), [0x7E, 0x7E]);
    let c = |i: usize| (q.codes()[i / 2] >> (4 * (i % 2))) & 0xF;
    assert_eq!([c(0), c(1), c(2), c(3), c(16)], [0x7, 0xF, 0x7, 0xF, 0x7]);
    let d: Vec<f32> = dequantize(&q);
    assert_eq!(&d[..4], &[42.0, -42.0, 42.0, -42.0]);
    assert_eq!(d[16], 42.0);
    for zero_sign in [ZeroSign::Hardware, ZeroSign::ModelOpt] {
        let o = QuantizeOptions { zero_sign, ..o };
        assert_eq!(
            quantize("act", &x, 1, 32, &o).unwrap().codes(),
            reference_quantize(&x, 1, 32, &o).unwrap().codes
        );
    }
    // Without the clamp the block scale 1000 / (6/64) = 10666 is still capped at 448 (ModelOpt's formula
    // would write a NaN byte there): the same saturated bytes as with the clamp.
    let no_clamp = QuantizeOptions {
        clamp_scale: false,
        ..o
    };
    assert_eq!(quantize("act", &x, 1, 32, &no_clamp).unwrap(), q);
    // A given global scale must be finite and non-negative.
    for g in [-1.0f32, f32::NAN, f32::INFINITY] {
        let o = QuantizeOptions {
            global_scale: GlobalScale::Given(g),
            ..opts()
        };
        assert!(
            matches!(quantize("act", &x, 1, 32, &o), Err(Error::InvalidValue { .. })),
            "given {g}"
        );
    }
}

#[test]
fn tiny_blocks_follow_the_clamp_rule() {
    // §0.5: a non-zero block whose scale is below 2^-10 gets byte 0x01 with the clamp, 0x00 without it
    // (and then codes 0x7/0xF, x / 0 saturating); both dequantize to zero.
    let mut x = vec![0.0f32; 32];
    x[0] = 1.0;
    x[16] = 1e-6;
    x[17] = -1e-6;
    let q = quantize("w", &x, 1, 32, &opts()).unwrap();
    assert_eq!(q.scale_at(0, 1), 0x01);
    let q = quantize(
        "w",
        &x,
        1,
        32,
        &QuantizeOptions {
            clamp_scale: false,
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(q.scale_at(0, 1), 0x00);
    assert_eq!(q.codes()[8], 0xF7);
    let d: Vec<f32> = dequantize(&q);
    assert!(d[16..].iter().all(|&v| v == 0.0));
}

#[test]
fn a_negative_zero_given_global_scale_is_refused_or_treated_as_zero() {
    // Given(-0.0) passes a `s < 0.0` check, but then 6 * S2 = -0.0 and every block scale is -Inf (clamped
    // to 2^-9, so byte 0x01 where +0.0 gives 0x7E) and x / -0.0 flips the sign of every code. Either
    // refuse it like a negative scale, or quantize exactly as with +0.0.
    let x: Vec<f32> = (0..32).map(|i| (i as f32 - 10.0) / 4.0).collect();
    let plus = quantize(
        "w",
        &x,
        1,
        32,
        &QuantizeOptions {
            global_scale: GlobalScale::Given(0.0),
            ..opts()
        },
    )
    .unwrap();
    match quantize(
        "w",
        &x,
        1,
        32,
        &QuantizeOptions {
            global_scale: GlobalScale::Given(-0.0),
            ..opts()
        },
    ) {
        Err(Error::InvalidValue { .. }) => {}
        Ok(q) => {
            assert_eq!(
                q.scales(),
                plus.scales(),
                "scale bytes of Given(-0.0) vs Given(+0.0)"
            );
            assert_eq!(q.codes(), plus.codes(), "codes of Given(-0.0) vs Given(+0.0)");
            assert_eq!(q.global_scale().to_bits(), 0, "global scale stored as -0.0");
        }
        Err(e) => panic!("expected Ok or Error::InvalidValue, got {e:?}"),
    }
}
