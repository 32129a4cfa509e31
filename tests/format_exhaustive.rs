//! The scalar codecs of `nvfp4::format`, checked exhaustively (every f16, every bf16, every E2M1 code,
//! every E4M3/UE8M0 byte, a sweep of f32) and by property tests against slow references written from the
//! definitions of `shared/reference/nvfp4-format.md` §0.1–0.6. None of the references calls the crate's
//! encoders or decoders: values are enumerated from the bit-level definitions in f64 and the nearest one
//! is picked by brute force, so a disagreement is a bug in one of two very different implementations.

use half::{bf16, f16};
use nvfp4::format::scale_layout::{self, padded_cols, padded_rows, swizzled_offset};
use nvfp4::format::ue8m0::{self, Rounding};
use nvfp4::format::{NibbleOrder, Overflow, ScaleLayout, ZeroSign, e2m1, e4m3, packing};
use proptest::prelude::*;

// ------------------------------------------------------------------------------------------------
// Slow references, from the definitions (E2M1 and E4M3 in tests/support/slow_codecs.rs).
// ------------------------------------------------------------------------------------------------

#[path = "support/slow_codecs.rs"]
mod slow_codecs;
use slow_codecs::{E2M1_MAGS, e2m1_def, e2m1_ref, e4m3_def, e4m3_mags, e4m3_ref};

/// IEEE binary16 from its bits, by the definition (exact in f64; NaN keeps its sign).
fn f16_def(bits: u16) -> f64 {
    let (s, e, m) = (bits >> 15, (bits >> 10) & 0x1F, bits & 0x3FF);
    let mag = match e {
        0 => f64::from(m) * 2f64.powi(-24),
        0x1F if m == 0 => f64::INFINITY,
        0x1F => f64::NAN,
        _ => (1.0 + f64::from(m) / 1024.0) * 2f64.powi(i32::from(e) - 15),
    };
    if s == 1 { -mag } else { mag }
}

/// bfloat16 from its bits: by definition the top half of an f32.
fn bf16_def(bits: u16) -> f64 {
    f64::from(f32::from_bits(u32::from(bits) << 16))
}

/// UE4M3 encode as the crate documents it: satfinite, sign bit never set (x <= 0 -> 0x00), NaN -> 0x7F.
fn ue4m3_ref(x: f64, mags: &[f64]) -> u8 {
    if x.is_nan() {
        0x7F
    } else if x <= 0.0 {
        0
    } else {
        e4m3_ref(x, Overflow::SatFinite, mags)
    }
}

/// UE8M0 encode: the power of two 2^e, e in [-127, 127], chosen by the rounding direction, saturating.
fn ue8m0_ref(x: f64, rounding: Rounding) -> u8 {
    if x.is_nan() {
        return 0xFF;
    }
    if x <= 0.0 {
        return 0;
    }
    let exps = -127..=127i32;
    let e = match rounding {
        Rounding::Down => exps.filter(|&e| 2f64.powi(e) <= x).max().unwrap_or(-127),
        Rounding::Up => exps.filter(|&e| 2f64.powi(e) >= x).min().unwrap_or(127),
    };
    (e + 127) as u8
}

const ZS: [ZeroSign; 2] = [ZeroSign::Hardware, ZeroSign::ModelOpt];
const OV: [Overflow; 2] = [Overflow::SatFinite, Overflow::NonSaturating];

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

/// Same value and same sign bit (so -0.0 differs from +0.0), or both NaN.
fn same_f64(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || (a == b && a.is_sign_negative() == b.is_sign_negative())
}

// ------------------------------------------------------------------------------------------------
// The references themselves.
// ------------------------------------------------------------------------------------------------

#[test]
fn references_agree_with_the_tables_of_the_reference_document() {
    // §0.1's table, code by code.
    let table = [
        0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
    ];
    for c in 0..16u8 {
        assert!(same_f64(e2m1_def(c), table[c as usize]), "E2M1 code {c:#x}");
    }
    for c in 0..8u8 {
        assert_eq!(e2m1_def(c), E2M1_MAGS[c as usize]);
    }
    // §0.2's table of intervals, at its ends and ties.
    let cases = [
        (0.25, 0),
        (0.2500001, 1),
        (0.75, 2),
        (0.7499999, 1),
        (1.25, 2),
        (1.2500001, 3),
        (1.75, 4),
        (2.5, 4),
        (2.5000002, 5),
        (3.5, 6),
        (5.0, 6),
        (5.0000005, 7),
        (1e30, 7),
    ];
    for (x, code) in cases {
        assert_eq!(e2m1_ref(f64::from(x as f32), ZeroSign::Hardware), code, "{x}");
    }
    // §0.3's limits and the values measured on the H100.
    let m = e4m3_mags();
    assert_eq!(m.len(), 127);
    assert_eq!(m[0x7E], 448.0);
    assert_eq!(m[0x01], 2f64.powi(-9));
    assert_eq!(m[0x08], 2f64.powi(-6));
    assert!(
        m.windows(2).all(|w| w[0] < w[1]),
        "E4M3 values must increase with the code"
    );
    let sat = Overflow::SatFinite;
    for (x, b) in [
        (464.0, 0x7E),
        (480.0, 0x7E),
        (1e4, 0x7E),
        (2f64.powi(-10), 0x00),
        (3.0 * 2f64.powi(-10), 0x02),
    ] {
        assert_eq!(e4m3_ref(x, sat, &m), b, "{x}");
    }
    assert_eq!(e4m3_ref(f64::NEG_INFINITY, sat, &m), 0xFE);
    assert_eq!(e4m3_ref(-f64::NAN, sat, &m), 0x7F);
    assert_eq!(e4m3_ref(464.0, Overflow::NonSaturating, &m), 0x7E);
    assert_eq!(e4m3_ref(-f64::NAN, Overflow::NonSaturating, &m), 0xFF);
    // f16 definition spot checks against `half`.
    for bits in [
        0x0001u16, 0x03FF, 0x0400, 0x3C00, 0x7BFF, 0x7C00, 0xFC00, 0x8000, 0xC000,
    ] {
        assert!(
            same_f64(f16_def(bits), f16::from_bits(bits).to_f64()),
            "{bits:#06x}"
        );
    }
}

// ------------------------------------------------------------------------------------------------
// E2M1.
// ------------------------------------------------------------------------------------------------

#[test]
fn e2m1_encode_matches_nearest_even_for_every_f16() {
    for bits in 0..=u16::MAX {
        let x = f16_def(bits);
        for zs in ZS {
            let got = e2m1::encode_f16(f16::from_bits(bits), zs);
            assert_eq!(got, e2m1_ref(x, zs), "f16 {bits:#06x} = {x:e}, {zs:?}");
        }
    }
}

#[test]
fn e2m1_encode_matches_nearest_even_for_every_bf16() {
    for bits in 0..=u16::MAX {
        let x = bf16_def(bits);
        for zs in ZS {
            let got = e2m1::encode_bf16(bf16::from_bits(bits), zs);
            assert_eq!(got, e2m1_ref(x, zs), "bf16 {bits:#06x} = {x:e}, {zs:?}");
        }
    }
}

/// Every high half of an f32 with low halves 0 (the bf16 values, ties among them), 1 (just above a
/// value with a zero low half), 0x7FFF/0x8000 (around the halfway points), 0xFFFF (just below the next).
const LOW_HALVES: [u32; 5] = [0, 1, 0x7FFF, 0x8000, 0xFFFF];

#[test]
fn e2m1_encode_f32_matches_nearest_even_on_a_sweep_of_f32() {
    for hi in 0..=u32::from(u16::MAX) {
        for lo in LOW_HALVES {
            let bits = hi << 16 | lo;
            let x = f32::from_bits(bits);
            for zs in ZS {
                assert_eq!(
                    e2m1::encode_f32(x, zs),
                    e2m1_ref(f64::from(x), zs),
                    "f32 {bits:#010x} = {x:e}, {zs:?}"
                );
            }
        }
    }
}

#[test]
fn e2m1_decodes_every_code_by_the_definition() {
    for byte in 0..=u8::MAX {
        // Only the low 4 bits count.
        let want = e2m1_def(byte & 0xF);
        let f = e2m1::decode_f32(byte);
        assert!(same_f64(f64::from(f), want), "code {byte:#04x}: {f} vs {want}");
        let h = e2m1::decode_f16(byte);
        assert!(same_f64(h.to_f64(), want), "code {byte:#04x} f16: {h}");
        let b = e2m1::decode_bf16(byte);
        assert!(same_f64(b.to_f64(), want), "code {byte:#04x} bf16: {b}");
    }
    // §0.1: code 8 decodes to f16 -0.0, 0x8000.
    assert_eq!(e2m1::decode_f16(0x8).to_bits(), 0x8000);
    for c in 0..16 {
        assert!(
            same_f64(f64::from(e2m1::VALUES[c]), e2m1_def(c as u8)),
            "VALUES[{c}]"
        );
    }
}

#[test]
fn e2m1_decode_then_encode_is_the_identity() {
    for c in 0..16u8 {
        assert_eq!(e2m1::encode_f32(e2m1::decode_f32(c), ZeroSign::Hardware), c);
        assert_eq!(e2m1::encode_f16(e2m1::decode_f16(c), ZeroSign::Hardware), c);
        assert_eq!(e2m1::encode_bf16(e2m1::decode_bf16(c), ZeroSign::Hardware), c);
        // ModelOpt's sign is `x < 0`: -0.0 (code 8) comes back as code 0, every other code unchanged.
        let want = if c == 8 { 0 } else { c };
        assert_eq!(e2m1::encode_f32(e2m1::decode_f32(c), ZeroSign::ModelOpt), want);
    }
}

// ------------------------------------------------------------------------------------------------
// E4M3 and UE4M3.
// ------------------------------------------------------------------------------------------------

#[test]
fn e4m3_encode_matches_nearest_even_for_every_f16() {
    let m = e4m3_mags();
    for bits in 0..=u16::MAX {
        let x = f16_def(bits);
        for ov in OV {
            let got = e4m3::encode_f16(f16::from_bits(bits), ov);
            assert_eq!(got, e4m3_ref(x, ov, &m), "f16 {bits:#06x} = {x:e}, {ov:?}");
        }
    }
}

#[test]
fn e4m3_encode_matches_nearest_even_for_every_bf16() {
    let m = e4m3_mags();
    for bits in 0..=u16::MAX {
        let x = bf16_def(bits);
        for ov in OV {
            let got = e4m3::encode_bf16(bf16::from_bits(bits), ov);
            assert_eq!(got, e4m3_ref(x, ov, &m), "bf16 {bits:#06x} = {x:e}, {ov:?}");
        }
    }
}

#[test]
fn e4m3_encode_f32_matches_nearest_even_on_a_sweep_of_f32() {
    let m = e4m3_mags();
    for hi in 0..=u32::from(u16::MAX) {
        for lo in LOW_HALVES {
            let bits = hi << 16 | lo;
            let x = f32::from_bits(bits);
            for ov in OV {
                let want = e4m3_ref(f64::from(x), ov, &m);
                assert_eq!(e4m3::encode_f32(x, ov), want, "f32 {bits:#010x} = {x:e}, {ov:?}");
            }
        }
    }
}

#[test]
fn e4m3_encode_f32_matches_nearest_even_at_every_midpoint_and_its_neighbours() {
    // Every midpoint between consecutive E4M3 values (and 464, between 448 and the would-be 480), and
    // the f32 on either side of it: the places where a rounding bug shows.
    let m = e4m3_mags();
    let mut mids: Vec<f64> = m.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
    mids.push(464.0);
    for mid in mids {
        let x = mid as f32;
        assert_eq!(f64::from(x), mid, "midpoints are f32-exact");
        for x in [x, x.next_down(), x.next_up()] {
            for s in [x, -x] {
                for ov in OV {
                    let want = e4m3_ref(f64::from(s), ov, &m);
                    assert_eq!(
                        e4m3::encode_f32(s, ov),
                        want,
                        "{s:e} ({:#010x}), {ov:?}",
                        s.to_bits()
                    );
                }
            }
        }
    }
}

#[test]
fn e4m3_decodes_every_byte_by_the_definition() {
    for b in 0..=u8::MAX {
        let want = e4m3_def(b);
        let f = e4m3::decode_f32(b);
        assert!(same_f64(f64::from(f), want), "byte {b:#04x}: {f} vs {want}");
        assert_eq!(
            f.is_nan(),
            b & 0x7F == 0x7F,
            "byte {b:#04x}: NaN exactly for 0x7F/0xFF"
        );
        let h = e4m3::decode_f16(b);
        assert!(same_f64(h.to_f64(), want), "byte {b:#04x} f16: {h}");
        let bf = e4m3::decode_bf16(b);
        assert!(same_f64(bf.to_f64(), want), "byte {b:#04x} bf16: {bf}");
        assert!(
            same_f64(f64::from(e4m3::VALUES[b as usize]), want),
            "VALUES[{b:#04x}]"
        );
    }
    assert_eq!(e4m3::MAX, 448.0);
    assert_eq!(f64::from(e4m3::MIN_SUBNORMAL), 2f64.powi(-9));
}

#[test]
fn e4m3_decode_then_encode_is_the_identity_for_every_finite_byte() {
    for b in (0..=u8::MAX).filter(|b| b & 0x7F != 0x7F) {
        for ov in OV {
            assert_eq!(e4m3::encode_f32(e4m3::decode_f32(b), ov), b, "{b:#04x} {ov:?}");
            assert_eq!(
                e4m3::encode_f16(e4m3::decode_f16(b), ov),
                b,
                "{b:#04x} {ov:?} f16"
            );
            assert_eq!(
                e4m3::encode_bf16(e4m3::decode_bf16(b), ov),
                b,
                "{b:#04x} {ov:?} bf16"
            );
        }
    }
}

#[test]
fn ue4m3_encode_never_sets_the_sign_bit_and_matches_satfinite_on_a_sweep_of_f32() {
    let m = e4m3_mags();
    for hi in 0..=u32::from(u16::MAX) {
        for lo in LOW_HALVES {
            let bits = hi << 16 | lo;
            let x = f32::from_bits(bits);
            let got = e4m3::encode_ue4m3(x);
            assert_eq!(got & 0x80, 0, "f32 {bits:#010x} = {x:e}: sign bit set");
            assert_eq!(got, ue4m3_ref(f64::from(x), &m), "f32 {bits:#010x} = {x:e}");
        }
    }
    assert_eq!(e4m3::encode_ue4m3(-0.0), 0);
    assert_eq!(e4m3::encode_ue4m3(-f32::NAN), 0x7F);
    assert_eq!(e4m3::encode_ue4m3(f32::INFINITY), 0x7E);
}

#[test]
fn ue4m3_decode_ignores_the_top_bit() {
    for b in 0..=u8::MAX {
        let want = e4m3_def(b & 0x7F);
        let got = e4m3::decode_ue4m3(b);
        assert!(same_f64(f64::from(got), want), "byte {b:#04x}: {got} vs {want}");
        assert!(
            !got.is_sign_negative() || got.is_nan(),
            "byte {b:#04x} decodes negative"
        );
    }
    for b in 0..0x7Fu8 {
        assert_eq!(e4m3::encode_ue4m3(e4m3::decode_ue4m3(b)), b, "{b:#04x}");
    }
}

// ------------------------------------------------------------------------------------------------
// UE8M0.
// ------------------------------------------------------------------------------------------------

#[test]
fn ue8m0_decodes_every_byte_to_its_power_of_two() {
    for b in 0..=u8::MAX {
        let got = ue8m0::decode_f32(b);
        if b == 0xFF {
            assert!(got.is_nan());
        } else {
            assert_eq!(f64::from(got), 2f64.powi(i32::from(b) - 127), "byte {b:#04x}");
            for r in [Rounding::Down, Rounding::Up] {
                assert_eq!(ue8m0::encode_f32(got, r), b, "byte {b:#04x} {r:?}");
            }
        }
    }
}

#[test]
fn ue8m0_encode_matches_the_reference_on_a_sweep_of_f32() {
    // 2^16 high halves x 3 low halves x 2 roundings, each against a brute-force search of 255 exponents.
    for hi in 0..=u32::from(u16::MAX) {
        for lo in [0, 1, 0xFFFF] {
            let x = f32::from_bits(hi << 16 | lo);
            for r in [Rounding::Down, Rounding::Up] {
                assert_eq!(
                    ue8m0::encode_f32(x, r),
                    ue8m0_ref(f64::from(x), r),
                    "{x:e} ({:#010x}) {r:?}",
                    x.to_bits()
                );
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Property tests over arbitrary f32 bit patterns.
// ------------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn e2m1_encode_f32_matches_reference_for_any_bits(bits in any::<u32>()) {
        let x = f32::from_bits(bits);
        for zs in ZS {
            prop_assert_eq!(e2m1::encode_f32(x, zs), e2m1_ref(f64::from(x), zs), "{:e} {:?}", x, zs);
        }
    }

    #[test]
    fn e4m3_encode_f32_matches_reference_for_any_bits(bits in any::<u32>()) {
        let x = f32::from_bits(bits);
        let m = e4m3_mags();
        for ov in OV {
            prop_assert_eq!(e4m3::encode_f32(x, ov), e4m3_ref(f64::from(x), ov, &m), "{:e} {:?}", x, ov);
        }
        prop_assert_eq!(e4m3::encode_ue4m3(x), ue4m3_ref(f64::from(x), &m), "{:e}", x);
    }

    #[test]
    fn e4m3_encode_f32_matches_reference_in_the_scale_range(x in -500.0f32..500.0, e in -12i32..2) {
        // Uniform bits mostly miss [2^-10, 464]: this draws from the range block scales live in.
        let x = x * 2f32.powi(e);
        let m = e4m3_mags();
        for ov in OV {
            prop_assert_eq!(e4m3::encode_f32(x, ov), e4m3_ref(f64::from(x), ov, &m), "{:e} {:?}", x, ov);
        }
    }

    #[test]
    fn ue8m0_encode_f32_matches_reference_for_any_bits(bits in any::<u32>()) {
        let x = f32::from_bits(bits);
        for r in [Rounding::Down, Rounding::Up] {
            prop_assert_eq!(ue8m0::encode_f32(x, r), ue8m0_ref(f64::from(x), r), "{:e} {:?}", x, r);
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Packing (§0.4).
// ------------------------------------------------------------------------------------------------

fn even_codes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(0u8..16, 0..96).prop_map(|mut v| {
        v.truncate(v.len() / 2 * 2);
        v
    })
}

const ORDERS: [NibbleOrder; 2] = [NibbleOrder::LowFirst, NibbleOrder::HighFirst];

#[test]
fn packing_puts_the_even_element_in_the_low_nibble_by_default() {
    assert_eq!(NibbleOrder::default(), NibbleOrder::LowFirst);
    assert_eq!(packing::pack_pair(0x1, 0x2, NibbleOrder::LowFirst), 0x21);
    assert_eq!(packing::pack_pair(0x1, 0x2, NibbleOrder::HighFirst), 0x12);
    // Only the low 4 bits of each code count.
    assert_eq!(packing::pack_pair(0xF3, 0xA5, NibbleOrder::LowFirst), 0x53);
    assert_eq!(packing::pack_pair(0xF3, 0xA5, NibbleOrder::HighFirst), 0x35);
    assert_eq!(packing::unpack_pair(0x21, NibbleOrder::LowFirst), (0x1, 0x2));
    assert_eq!(packing::unpack_pair(0x21, NibbleOrder::HighFirst), (0x2, 0x1));
    // §0.8's row 0 codes and bytes.
    let codes = [0, 9, 1, 2, 0xA, 3, 4, 0xD, 5, 6, 0xF, 7, 0, 0, 0, 8];
    let mut out = [0u8; 8];
    assert!(packing::pack(&codes, &mut out, NibbleOrder::LowFirst));
    assert_eq!(out, [0x90, 0x21, 0x3A, 0xD4, 0x65, 0x7F, 0x00, 0x80]);
}

#[test]
fn pack_and_unpack_refuse_mismatched_lengths_and_write_nothing() {
    for order in ORDERS {
        let mut out = [0xAAu8; 2];
        assert!(!packing::pack(&[1, 2, 3], &mut out, order), "odd code count");
        assert!(
            !packing::pack(&[1, 2, 3, 4, 5, 6], &mut out, order),
            "output too short"
        );
        assert!(!packing::pack(&[1, 2], &mut out, order), "output too long");
        assert_eq!(out, [0xAA; 2]);
        let mut codes = [0xAAu8; 3];
        assert!(!packing::unpack(&[0x21], &mut codes, order));
        assert!(!packing::unpack(&[0x21, 0x43], &mut codes, order));
        assert_eq!(codes, [0xAA; 3]);
        assert!(packing::pack(&[], &mut [], order));
        assert!(packing::unpack(&[], &mut [], order));
    }
}

#[test]
fn swap_nibbles_is_an_involution_on_every_byte() {
    for b in 0..=u8::MAX {
        assert_eq!(packing::swap_nibbles(b), ((b & 0xF) << 4) | (b >> 4));
        assert_eq!(packing::swap_nibbles(packing::swap_nibbles(b)), b);
        let (e, o) = packing::unpack_pair(b, NibbleOrder::LowFirst);
        assert_eq!(
            packing::pack_pair(e, o, NibbleOrder::HighFirst),
            packing::swap_nibbles(b)
        );
    }
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn pack_unpack_round_trips_in_both_orders(codes in even_codes()) {
        for order in ORDERS {
            let mut packed = vec![0u8; codes.len() / 2];
            prop_assert!(packing::pack(&codes, &mut packed, order));
            for (i, &b) in packed.iter().enumerate() {
                let (lo, hi) = (b & 0xF, b >> 4);
                let (even, odd) = (codes[2 * i], codes[2 * i + 1]);
                match order {
                    NibbleOrder::LowFirst => prop_assert_eq!((lo, hi), (even, odd)),
                    NibbleOrder::HighFirst => prop_assert_eq!((hi, lo), (even, odd)),
                }
            }
            let mut back = vec![0xFFu8; codes.len()];
            prop_assert!(packing::unpack(&packed, &mut back, order));
            prop_assert_eq!(&back, &codes);
        }
    }

    #[test]
    fn swap_all_converts_between_nibble_orders(codes in even_codes()) {
        let mut lo = vec![0u8; codes.len() / 2];
        let mut hi = vec![0u8; codes.len() / 2];
        prop_assert!(packing::pack(&codes, &mut lo, NibbleOrder::LowFirst));
        prop_assert!(packing::pack(&codes, &mut hi, NibbleOrder::HighFirst));
        let mut converted = lo.clone();
        packing::swap_all(&mut converted);
        prop_assert_eq!(&converted, &hi);
        packing::swap_all(&mut converted);
        prop_assert_eq!(&converted, &lo);
        let swapped: Vec<u8> = lo.iter().map(|&b| packing::swap_nibbles(b)).collect();
        prop_assert_eq!(&swapped, &hi);
    }
}

// ------------------------------------------------------------------------------------------------
// Block-scale layouts (§0.6).
// ------------------------------------------------------------------------------------------------

/// §0.6's formula, written out again.
fn swizzle_def(r: usize, c: usize, block_cols: usize) -> usize {
    let cp = block_cols.div_ceil(4) * 4;
    (r / 128) * (cp / 4) * 512 + (c / 4) * 512 + (r % 32) * 16 + ((r % 128) / 32) * 4 + (c % 4)
}

#[test]
fn swizzled_offsets_match_the_worked_examples() {
    let l = ScaleLayout::Swizzled128x4;
    assert_eq!(l.len(300, 10), 4608);
    assert_eq!((padded_rows(300), padded_cols(10)), (384, 12));
    let cases = [
        ((0, 0), 0),
        ((1, 0), 16),
        ((31, 0), 496),
        ((32, 0), 4),
        ((127, 0), 508),
        ((0, 1), 1),
        ((0, 4), 512),
        ((128, 0), 1536),
        ((5, 6), 594),
        ((299, 9), 4277),
    ];
    for ((r, c), off) in cases {
        assert_eq!(l.offset(r, c, 10), off, "({r},{c})");
        assert_eq!(swizzled_offset(r, c, 10), off, "({r},{c})");
        assert_eq!(swizzle_def(r, c, 10), off, "({r},{c}) in the test's own formula");
    }
}

#[test]
fn linear_layout_is_row_major_without_padding() {
    let l = ScaleLayout::Linear;
    assert_eq!(ScaleLayout::default(), l);
    assert_eq!(l.len(300, 10), 3000);
    assert_eq!(l.offset(0, 0, 10), 0);
    assert_eq!(l.offset(1, 0, 10), 10);
    assert_eq!(l.offset(299, 9, 10), 2999);
    assert_eq!(ScaleLayout::Swizzled128x4.len(0, 10), 0);
    assert_eq!(ScaleLayout::Swizzled128x4.len(1, 1), 512);
    assert_eq!(ScaleLayout::Swizzled128x4.len(129, 5), 256 * 8);
}

#[test]
fn convert_refuses_a_wrong_source_length() {
    for (from, to) in [
        (ScaleLayout::Linear, ScaleLayout::Swizzled128x4),
        (ScaleLayout::Swizzled128x4, ScaleLayout::Linear),
        (ScaleLayout::Linear, ScaleLayout::Linear),
    ] {
        let n = from.len(3, 2);
        for len in [n - 1, n + 1] {
            let err = scale_layout::convert(&vec![0x38; len], 3, 2, from, to).unwrap_err();
            match err {
                nvfp4::Error::Length { expected, actual, .. } => assert_eq!((expected, actual), (n, len)),
                e => panic!("{from:?}->{to:?} with {len} bytes: expected Error::Length, got {e:?}"),
            }
        }
    }
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn swizzled_offset_is_injective_into_the_padded_buffer(rows in 1usize..300, block_cols in 1usize..13) {
        let l = ScaleLayout::Swizzled128x4;
        let len = l.len(rows, block_cols);
        prop_assert_eq!(len, rows.div_ceil(128) * 128 * block_cols.div_ceil(4) * 4);
        let mut hit = vec![false; len];
        for r in 0..rows {
            for c in 0..block_cols {
                let off = l.offset(r, c, block_cols);
                prop_assert_eq!(off, swizzle_def(r, c, block_cols));
                prop_assert!(off < len, "({}, {}) -> {} outside {}", r, c, off, len);
                prop_assert!(!hit[off], "({}, {}) -> {} hit twice", r, c, off);
                hit[off] = true;
            }
        }
        // And onto: padding the shape to whole tiles fills every byte.
        let (rp, cp) = (padded_rows(rows), padded_cols(block_cols));
        let mut all = vec![false; len];
        for r in 0..rp {
            for c in 0..cp {
                all[swizzled_offset(r, c, block_cols)] = true;
            }
        }
        prop_assert!(all.iter().all(|&h| h));
    }

    #[test]
    fn linear_to_swizzled_to_linear_round_trips_with_zero_padding(
        rows in 1usize..300,
        block_cols in 1usize..13,
        seed in any::<u64>(),
    ) {
        let mut rng = nvfp4::reference::synthetic::Rng::new(seed);
        // Scale bytes that are never 0x00, so a padding byte is told apart from a real one.
        let linear: Vec<u8> = (0..rows * block_cols).map(|_| (rng.next_u64() % 255) as u8 + 1).collect();
        let sw = scale_layout::convert(&linear, rows, block_cols, ScaleLayout::Linear, ScaleLayout::Swizzled128x4)
            .unwrap();
        prop_assert_eq!(sw.len(), ScaleLayout::Swizzled128x4.len(rows, block_cols));
        let mut real = vec![false; sw.len()];
        for r in 0..rows {
            for c in 0..block_cols {
                let off = swizzled_offset(r, c, block_cols);
                prop_assert_eq!(sw[off], linear[r * block_cols + c]);
                real[off] = true;
            }
        }
        for (i, (&b, &is_real)) in sw.iter().zip(&real).enumerate() {
            prop_assert!(is_real || b == 0, "padding byte {} is {:#04x}", i, b);
        }
        let back = scale_layout::convert(&sw, rows, block_cols, ScaleLayout::Swizzled128x4, ScaleLayout::Linear)
            .unwrap();
        prop_assert_eq!(&back, &linear);
        let same = scale_layout::convert(&sw, rows, block_cols, ScaleLayout::Swizzled128x4, ScaleLayout::Swizzled128x4)
            .unwrap();
        prop_assert_eq!(&same, &sw);
    }
}
