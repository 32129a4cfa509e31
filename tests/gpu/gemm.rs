//! The NVFP4 GEMM kernels against the f64 reference GEMMs (`reference::gemm_w4a16`, `gemm_w4a4`):
//! bit-identical on exact-sum inputs, within the f32 accumulation bound on random inputs. One table of
//! cases covers both kernels, split-K on and off, every activation/output type, bias, and ragged M, N, K;
//! a second holds the dequantize + cuBLAS route (`GemmSpec::cublas`) to the same contracts.

use std::sync::Arc;

use cudarc::driver::CudaStream;
use half::{bf16, f16};
use nvfp4::Error;
use nvfp4::Nvfp4Tensor;
use nvfp4::cuda::{Device, download, upload};
use nvfp4::format::{Dtype, ScaleLayout};
use nvfp4::ops::{
    CublasAvailability, DeviceNvfp4, GemmKernel, GemmOp, GemmPlan, GemmRoute, GemmSpec, GpuElement,
};
use nvfp4::quant::{self, QuantizeOptions};
use nvfp4::reference::{self, synthetic::Rng};

use crate::common::{convert, device, mixed_values};

/// (M, N, K): K = 16 (one block), 208 (K % 32 = 16: the 4-byte load path, a partial last step), 4160
/// (K % 128 = 64: a partial last step on the 16-byte path), 128 (exactly one step); N not a multiple of
/// the 64-column block; M around the 16- and 64-row tiles.
const SHAPES: [(usize, usize, usize); 9] = [
    (1, 1, 16),
    (1, 130, 4160),
    (3, 67, 208),
    (16, 64, 128),
    (17, 130, 4160),
    (128, 67, 208),
    (4099, 67, 208),
    (65, 200, 2048),
    // The GEMV's rows g + 8 with only row 8 present, several full (prefetched) steps, then a ragged one.
    (9, 72, 1056),
];

/// (activations, output): `None` is W4A4.
const TYPES: [(Option<Dtype>, Dtype); 9] = [
    (Some(Dtype::Bf16), Dtype::Bf16),
    (Some(Dtype::F16), Dtype::F16),
    (Some(Dtype::Bf16), Dtype::F32),
    (None, Dtype::F32),
    (Some(Dtype::F16), Dtype::Bf16),
    (None, Dtype::Bf16),
    (Some(Dtype::Bf16), Dtype::F16),
    (Some(Dtype::F16), Dtype::F32),
    (None, Dtype::F16),
];

#[derive(Clone, Copy, Debug)]
struct Case {
    m: usize,
    n: usize,
    k: usize,
    kernel: Option<GemmKernel>,
    splits: Option<usize>,
    act: Option<Dtype>,
    out: Dtype,
    bias: bool,
    exact: bool,
    /// `GemmSpec::cublas`.
    cublas: Option<bool>,
    /// Operands with 128x4 swizzled scales (the cuBLAS route reads them in place).
    swizzled: bool,
}

/// Codes of any value, scales from {0.5, 1, 1.5, 2}, global scale 1/2: every weight is a multiple of
/// 1/8 of magnitude at most 12. With activations that are integers in [-4, 4] every product is a
/// multiple of 1/8 below 48, so any partial sum of up to 2^16 products needs at most 22 bits: exact in
/// f32 whatever the order, and the kernel's result rounds exactly like the reference.
pub(crate) fn exact_fp4(rng: &mut Rng, name: &str, rows: usize, k: usize) -> Nvfp4Tensor {
    let codes = (0..rows * k / 2).map(|_| rng.next_u64() as u8).collect();
    let menu = [0x30u8, 0x38, 0x3C, 0x40];
    let scales = (0..rows * k / 16)
        .map(|_| menu[(rng.next_u64() % 4) as usize])
        .collect();
    Nvfp4Tensor::from_parts(name, rows, k, codes, scales, ScaleLayout::Linear, 0.5).unwrap()
}

pub(crate) fn exact_values(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| (rng.next_u64() % 9) as f32 - 4.0).collect()
}

fn operand(rng: &mut Rng, name: &str, rows: usize, k: usize, exact: bool) -> Nvfp4Tensor {
    if exact {
        exact_fp4(rng, name, rows, k)
    } else {
        quant::quantize(
            name,
            &mixed_values(rng, rows * k),
            rows,
            k,
            &QuantizeOptions::default(),
        )
        .unwrap()
    }
}

/// Whether `got` is a possible narrowing to `out` of an f32 within `bound` of `v`: narrowing is
/// monotone, so it lies between the narrowings of the interval's ends (rounded outwards to f32 first).
/// This also accepts the correct ±Inf of an f16 output beyond 65504.
pub(crate) fn narrowing_within<O: GpuElement>(got: f32, v: f64, bound: f64) -> bool {
    let down = |x: f64| {
        let f = x as f32;
        if f as f64 > x {
            f32::from_bits(if f > 0.0 {
                f.to_bits() - 1
            } else if f == 0.0 {
                0x8000_0001
            } else {
                f.to_bits() + 1
            })
        } else {
            f
        }
    };
    let up = |x: f64| -down(-x);
    let (lo, hi) = (
        O::from_f32(down(v - bound)).to_f32(),
        O::from_f32(up(v + bound)).to_f32(),
    );
    lo <= got && got <= hi
}

fn check_case<A: GpuElement, O: GpuElement>(
    dev: &Device,
    stream: &Arc<CudaStream>,
    c: Case,
    seed: u64,
) -> Result<String, String> {
    let mut rng = Rng::new(seed);
    let w = operand(&mut rng, "w", c.n, c.k, c.exact);
    let bias_host: Option<Vec<O>> = c.bias.then(|| {
        let v = if c.exact {
            exact_values(&mut rng, c.n)
        } else {
            rng.normal_vec(c.n, 4.0)
        };
        convert::<O>(&v)
    });
    let mut dw = DeviceNvfp4::upload(stream, &w).unwrap();
    if c.swizzled {
        dw.set_scale_layout(dev, stream, ScaleLayout::Swizzled128x4)
            .unwrap();
    }
    let bias = bias_host.as_ref().map(|b| upload(stream, "bias", b).unwrap());
    let mut out = upload(stream, "out", &vec![O::from_f32(f32::NAN); c.m * c.n]).unwrap();
    let spec = GemmSpec {
        m: c.m,
        n: c.n,
        k: c.k,
        op: c.act.map_or(GemmOp::W4A4, GemmOp::W4A16),
        out: O::DTYPE,
        bias: c.bias,
        kernel: c.kernel,
        splits: c.splits,
        fp4_backend: None,
        cublas: c.cublas,
    };
    let mut plan = GemmPlan::new(dev, stream, &spec).map_err(|e| e.to_string())?;
    if c.cublas == Some(true) && !matches!(plan.route(), GemmRoute::DequantizeCublas { .. }) {
        return Err(format!(
            "forced cuBLAS, planned {:?}: {}",
            plan.route(),
            plan.explain()
        ));
    }
    let reference = if c.act.is_some() {
        let v = if c.exact {
            exact_values(&mut rng, c.m * c.k)
        } else {
            mixed_values(&mut rng, c.m * c.k)
        };
        let a: Vec<A> = convert(&v);
        let da = upload(stream, "a", &a).unwrap();
        plan.w4a16(dev, stream, &da, &dw, bias.as_ref(), &mut out)
            .map_err(|e| e.to_string())?;
        reference::gemm_w4a16(&a, c.m, &w).unwrap()
    } else {
        let a = operand(&mut rng, "a", c.m, c.k, c.exact);
        let mut da = DeviceNvfp4::upload(stream, &a).unwrap();
        if c.swizzled {
            da.set_scale_layout(dev, stream, ScaleLayout::Swizzled128x4)
                .unwrap();
        }
        plan.w4a4(dev, stream, &da, &dw, bias.as_ref(), &mut out)
            .map_err(|e| e.to_string())?;
        reference::gemm_w4a4(&a, &w).unwrap()
    };
    let got: Vec<f32> = download(stream, "out", &out)
        .unwrap()
        .iter()
        .map(|x| x.to_f32())
        .collect();
    // The reference with the bias: one more term of the sum, so |bias| joins the error scale.
    let mut want = reference.clone();
    if let Some(b) = &bias_host {
        for (i, (v, s)) in want.values.iter_mut().zip(want.abs_sums.iter_mut()).enumerate() {
            let bj = b[i % c.n].to_f32() as f64;
            *v += bj;
            *s += bj.abs();
        }
    }
    if c.exact {
        for (i, (&g, &v)) in got.iter().zip(&want.values).enumerate() {
            let expect = O::from_f32(v as f32).to_f32();
            if g.to_bits() != expect.to_bits() {
                return Err(format!(
                    "exact-sum output {i}: got {g:e}, want {expect:e} (reference {v:e})"
                ));
            }
        }
        return Ok(plan.explain().to_string());
    }
    // Roundings along the way: the tensor cores add with truncation (error up to one ulp, twice a
    // rounding's), so K additions count as 2K roundings at u = 2^-24; then alpha (a product of two
    // global scales for W4A4), its product, the bias sum and a final f32 rounding: K + 4 extra.
    let extra = c.k + 4;
    let bad = if O::DTYPE == Dtype::F32 {
        want.first_violation(&got, extra)
    } else {
        got.iter().enumerate().find_map(|(i, &g)| {
            let bound = want.bound(i, extra);
            let err = (g as f64 - want.values[i]).abs();
            (!narrowing_within::<O>(g, want.values[i], bound)).then_some((i, err, bound))
        })
    };
    match bad {
        Some((i, err, bound)) => Err(format!(
            "output {i} (row {}, col {}): got {:e}, reference {:e}, |err| {err:e} > bound {bound:e}",
            i / c.n,
            i % c.n,
            got.get(i).copied().unwrap_or(f32::NAN),
            want.values.get(i).copied().unwrap_or(f64::NAN)
        )),
        None => Ok(plan.explain().to_string()),
    }
}

fn dispatch(dev: &Device, stream: &Arc<CudaStream>, c: Case, seed: u64) -> Result<String, String> {
    match (c.act, c.out) {
        (Some(Dtype::Bf16), Dtype::Bf16) | (None, Dtype::Bf16) => {
            check_case::<bf16, bf16>(dev, stream, c, seed)
        }
        (Some(Dtype::Bf16), Dtype::F16) => check_case::<bf16, f16>(dev, stream, c, seed),
        (Some(Dtype::Bf16), Dtype::F32) | (None, Dtype::F32) => check_case::<bf16, f32>(dev, stream, c, seed),
        (Some(Dtype::F16), Dtype::Bf16) => check_case::<f16, bf16>(dev, stream, c, seed),
        (Some(Dtype::F16), Dtype::F16) | (None, Dtype::F16) => check_case::<f16, f16>(dev, stream, c, seed),
        (Some(Dtype::F16), Dtype::F32) => check_case::<f16, f32>(dev, stream, c, seed),
        (Some(Dtype::F32), _) => unreachable!("no f32 activations in the table"),
    }
}

fn run_table(test: &str, cases: &[Case]) {
    let Some(dev) = device(test) else { return };
    let stream = dev.new_stream().unwrap();
    let seed = Rng::fresh_seed();
    let mut failures = Vec::new();
    for (i, &c) in cases.iter().enumerate() {
        let case_seed = seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        if let Err(e) = dispatch(&dev, &stream, c, case_seed) {
            failures.push(format!("{c:?} (seed {case_seed:#x}): {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed (run seed {seed:#x}):\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn table(exact: bool) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut i = 0;
    for &(m, n, k) in &SHAPES {
        for kernel in [GemmKernel::M16, GemmKernel::M64] {
            for splits in [Some(1), Some(3), None] {
                let (act, out) = TYPES[i % TYPES.len()];
                cases.push(Case {
                    m,
                    n,
                    k,
                    kernel: Some(kernel),
                    splits,
                    act,
                    out,
                    bias: i % 2 == 1,
                    exact,
                    cublas: None,
                    swizzled: false,
                });
                i += 1;
            }
        }
    }
    // Every type pair on one ragged shape, with split-K, planned automatically.
    for (j, &(act, out)) in TYPES.iter().enumerate() {
        cases.push(Case {
            m: 17,
            n: 130,
            k: 4160,
            kernel: None,
            splits: None,
            act,
            out,
            bias: j % 2 == 0,
            exact,
            cublas: None,
            swizzled: false,
        });
    }
    cases
}

/// (M, N, K) for the sm_90a wgmma kernel (K a multiple of 64): one tile (K = 64), K % 128 = 64 (a
/// half last step: 4160, 192), M and N around its 64/128/256-row and 128-column blocks, and the
/// issue's M list.
const WGMMA_SHAPES: [(usize, usize, usize); 10] = [
    (1, 1, 64),
    (3, 67, 192),
    (16, 130, 4160),
    (17, 128, 2048),
    (33, 129, 1088),
    (65, 200, 2048),
    (128, 67, 4160),
    (257, 300, 2048),
    (200, 1000, 1024),
    (4099, 67, 192),
];

/// The wgmma kernel's cases: every tile forced on every shape, split-K off, 3 splits and automatic,
/// W4A16 types only (it has no W4A4 variant), bias on and off; then the plan's own choice.
fn wgmma_table(exact: bool) -> Vec<Case> {
    let types: Vec<_> = TYPES.iter().filter(|t| t.0.is_some()).copied().collect();
    let mut cases = Vec::new();
    let mut i = 0;
    for &(m, n, k) in &WGMMA_SHAPES {
        for kernel in [GemmKernel::Wg64, GemmKernel::Wg128, GemmKernel::Wg256] {
            for splits in [Some(1), Some(3), None] {
                let (act, out) = types[i % types.len()];
                cases.push(Case {
                    m,
                    n,
                    k,
                    kernel: Some(kernel),
                    splits,
                    act,
                    out,
                    bias: i % 2 == 1,
                    exact,
                    cublas: None,
                    swizzled: false,
                });
                i += 1;
            }
        }
    }
    for (j, &(act, out)) in types.iter().enumerate() {
        cases.push(Case {
            m: 96,
            n: 260,
            k: 4160,
            kernel: None,
            splits: None,
            act,
            out,
            bias: j % 2 == 0,
            exact,
            cublas: Some(false),
            swizzled: false,
        });
    }
    cases
}

/// The W4A16 kernel above M = 32 without cuBLAS (K a multiple of 64): the wgmma kernel's tile where
/// the device runs it, else the 64-row mma.sync kernel.
fn large_m_kernel(dev: &Device, m: usize) -> GemmKernel {
    match nvfp4::cuda::launch_gemm::wgmma_for(dev.info().compute_capability) {
        Ok(()) if nvfp4::ops::WGMMA_BY_DEFAULT => GemmKernel::wgmma_for(m),
        _ => GemmKernel::M64,
    }
}

/// Whether the device runs the wgmma kernel; prints why not where it does not (a visible skip: these
/// GPU tests cover an sm_90 only kernel).
fn wgmma_device(test: &str) -> bool {
    let Some(dev) = device(test) else {
        return false;
    };
    let cc = dev.info().compute_capability;
    match nvfp4::cuda::launch_gemm::wgmma_for(cc) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("SKIPPED {test}: {e}");
            false
        }
    }
}

#[test]
fn gemm_gpu_wgmma_matches_reference_bit_for_bit_on_exact_sums() {
    let test = "gemm_gpu_wgmma_matches_reference_bit_for_bit_on_exact_sums";
    if wgmma_device(test) {
        run_table(test, &wgmma_table(true));
    }
}

#[test]
fn gemm_gpu_wgmma_within_f32_bound_on_random_inputs() {
    let test = "gemm_gpu_wgmma_within_f32_bound_on_random_inputs";
    if wgmma_device(test) {
        run_table(test, &wgmma_table(false));
    }
}

#[test]
fn gemm_gpu_matches_reference_bit_for_bit_on_exact_sums() {
    run_table(
        "gemm_gpu_matches_reference_bit_for_bit_on_exact_sums",
        &table(true),
    );
}

#[test]
fn gemm_gpu_within_f32_bound_on_random_inputs() {
    run_table("gemm_gpu_within_f32_bound_on_random_inputs", &table(false));
}

#[test]
fn gemm_gpu_plan_chooses_and_explains() {
    let Some(dev) = device("gemm_gpu_plan_chooses_and_explains") else {
        return;
    };
    let s = dev.stream();
    let p = GemmPlan::new(&dev, s, &GemmSpec::w4a16(1, 8192, 8192)).unwrap();
    assert_eq!(p.kernel(), GemmKernel::M16, "{}", p.explain());
    assert!(
        p.splits() > 1,
        "M = 1 should split K to fill the GPU: {}",
        p.explain()
    );
    assert!(p.explain().contains("nvfp4_gemv_w4a16_bf16"), "{}", p.explain());
    // Large M without the cuBLAS route: the 64-row (or on sm_90 the wgmma) kernel, no split (the route
    // itself is tested below).
    let no_blas = GemmSpec {
        cublas: Some(false),
        ..GemmSpec::w4a16(4096, 8192, 8192)
    };
    let p = GemmPlan::new(&dev, s, &no_blas).unwrap();
    let large = large_m_kernel(&dev, 4096);
    assert_eq!((p.kernel(), p.splits()), (large, 1), "{}", p.explain());
    let forced = GemmSpec {
        kernel: Some(GemmKernel::M64),
        splits: Some(1),
        ..GemmSpec::w4a16(1, 64, 256)
    };
    let p = GemmPlan::new(&dev, s, &forced).unwrap();
    assert_eq!(
        (p.kernel(), p.splits(), p.workspace_bytes()),
        (GemmKernel::M64, 1, 0)
    );
}

#[test]
fn gemm_gpu_rejects_bad_shapes_and_types_with_typed_errors() {
    let Some(dev) = device("gemm_gpu_rejects_bad_shapes_and_types_with_typed_errors") else {
        return;
    };
    let s = dev.stream();
    assert!(matches!(
        GemmPlan::new(&dev, s, &GemmSpec::w4a16(1, 8, 24)),
        Err(Error::Shape { .. })
    ));
    let f32_act = GemmSpec {
        op: GemmOp::W4A16(Dtype::F32),
        ..GemmSpec::w4a16(1, 8, 32)
    };
    assert!(matches!(
        GemmPlan::new(&dev, s, &f32_act),
        Err(Error::InvalidValue { .. })
    ));
    let mut plan = GemmPlan::new(&dev, s, &GemmSpec::w4a16(2, 8, 32)).unwrap();
    let w = quant::quantize("w", &vec![1.0f32; 8 * 64], 8, 64, &QuantizeOptions::default()).unwrap();
    let dw = DeviceNvfp4::upload(s, &w).unwrap();
    let a = upload(s, "a", &[bf16::ONE; 2 * 32]).unwrap();
    let mut out = upload(s, "out", &[bf16::ZERO; 16]).unwrap();
    let e = plan.w4a16(&dev, s, &a, &dw, None, &mut out).unwrap_err();
    assert!(matches!(&e, Error::Shape { name, .. } if name == "W"), "{e}");
    let w = quant::quantize("w", &vec![1.0f32; 8 * 32], 8, 32, &QuantizeOptions::default()).unwrap();
    let dw = DeviceNvfp4::upload(s, &w).unwrap();
    let short = upload(s, "a", &[bf16::ONE; 31]).unwrap();
    let e = plan.w4a16(&dev, s, &short, &dw, None, &mut out).unwrap_err();
    assert!(matches!(&e, Error::Length { name, .. } if name == "A"), "{e}");
    let mut wrong = upload(s, "out", &[0.0f32; 16]).unwrap();
    assert!(plan.w4a16(&dev, s, &a, &dw, None, &mut wrong).is_err());
    plan.w4a16(&dev, s, &a, &dw, None, &mut out).unwrap();
    // Every weight decodes to 1 (code 6 x scale 448 x 1/2688), so every output is the sum of 32 ones.
    assert!(
        download(s, "out", &out)
            .unwrap()
            .iter()
            .all(|x| x.to_f32() == 32.0)
    );
}

/// Whether this process can load cuBLAS, else a visible skip (a failure under `NVFP4_REQUIRE_GPU=1`:
/// the lent device has cuBLAS, `.gpu/run.sh` puts it on the loader path).
fn cublas_or_skip(test: &str) -> bool {
    match CublasAvailability::probe() {
        CublasAvailability::Available => true,
        CublasAvailability::Unavailable(why) => {
            if std::env::var("NVFP4_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("{test}: NVFP4_REQUIRE_GPU=1 but no cuBLAS: {why}");
            }
            eprintln!("SKIPPED {test}: no cuBLAS ({why})");
            false
        }
    }
}

/// (M, N, K) for the dequantize + cuBLAS route: [`SHAPES`] less its last, the GEMV's own case (M across
/// cuBLAS's tile sizes 1, 3, 16, 17, 128, 4099; N ragged; K = 16, 128, 208, 2048, 4160).
const CUBLAS_SHAPES: &[(usize, usize, usize)] = SHAPES.split_at(SHAPES.len() - 1).0;

/// The route forced on every shape with every (activation, output) pair, bias off and on; then N large
/// enough that a bias or a narrowing cuBLAS cannot do runs the GEMM in three slices of M (256, 256, 8
/// rows, the staging buffer holding 2^24 f32); then swizzled block scales.
fn cublas_table(exact: bool) -> Vec<Case> {
    let case = |(m, n, k): (usize, usize, usize), (act, out): (Option<Dtype>, Dtype), bias| Case {
        m,
        n,
        k,
        kernel: None,
        splits: None,
        act,
        out,
        bias,
        exact,
        cublas: Some(true),
        swizzled: false,
    };
    let mut cases = Vec::new();
    for &shape in CUBLAS_SHAPES {
        for &types in &TYPES {
            for bias in [false, true] {
                cases.push(case(shape, types, bias));
            }
        }
    }
    let sliced = (520, 65_600, 16);
    for (types, bias) in [
        ((Some(Dtype::Bf16), Dtype::F16), false),
        ((Some(Dtype::Bf16), Dtype::Bf16), true),
        ((Some(Dtype::F16), Dtype::F16), true),
        ((None, Dtype::Bf16), true),
    ] {
        cases.push(case(sliced, types, bias));
    }
    for (types, bias) in [
        ((Some(Dtype::Bf16), Dtype::Bf16), true),
        ((Some(Dtype::F16), Dtype::F32), false),
        ((None, Dtype::F16), true),
        ((None, Dtype::F32), false),
    ] {
        cases.push(Case {
            swizzled: true,
            ..case((17, 130, 4160), types, bias)
        });
    }
    cases
}

#[test]
fn gemm_gpu_cublas_route_matches_reference_bit_for_bit_on_exact_sums() {
    let test = "gemm_gpu_cublas_route_matches_reference_bit_for_bit_on_exact_sums";
    if device(test).is_some() && cublas_or_skip(test) {
        run_table(test, &cublas_table(true));
    }
}

#[test]
fn gemm_gpu_cublas_route_within_f32_bound_on_random_inputs() {
    let test = "gemm_gpu_cublas_route_within_f32_bound_on_random_inputs";
    if device(test).is_some() && cublas_or_skip(test) {
        run_table(test, &cublas_table(false));
    }
}

#[test]
fn gemm_gpu_cublas_route_plans_explain_and_check_inputs() {
    let test = "gemm_gpu_cublas_route_plans_explain_and_check_inputs";
    let Some(dev) = device(test) else { return };
    if !cublas_or_skip(test) {
        return;
    }
    let s = dev.new_stream().unwrap();
    // Chosen by the cost model for prefill-sized M; the workspace holds W at 16 bits.
    let p = GemmPlan::new(&dev, &s, &GemmSpec::w4a16(4096, 8192, 8192)).unwrap();
    assert_eq!(
        p.route(),
        GemmRoute::DequantizeCublas { dtype: Dtype::Bf16 },
        "{}",
        p.explain()
    );
    assert!(p.workspace_bytes() >= 8192 * 8192 * 2, "{}", p.workspace_bytes());
    for want in ["cublasGemmEx", "estimated", "workspace"] {
        assert!(p.explain().contains(want), "{want}: {}", p.explain());
    }
    assert_eq!(
        p.scale_layouts(),
        &[ScaleLayout::Linear, ScaleLayout::Swizzled128x4]
    );
    // W4A4 with an f16 output multiplies in f16, and holds A as well.
    let spec = GemmSpec {
        out: Dtype::F16,
        cublas: Some(true),
        ..GemmSpec::w4a4(100, 64, 256)
    };
    let p = GemmPlan::new(&dev, &s, &spec).unwrap();
    assert_eq!(p.route(), GemmRoute::DequantizeCublas { dtype: Dtype::F16 });
    assert!(p.workspace_bytes() >= (100 + 64) * 256 * 2);
    // A bias with a 16-bit output goes through the f32 staging buffer, in slices of M for large N.
    let spec = GemmSpec {
        bias: true,
        cublas: Some(true),
        ..GemmSpec::w4a16(300, 70_000, 16)
    };
    let p = GemmPlan::new(&dev, &s, &spec).unwrap();
    assert!(p.explain().contains("slices of 256 rows"), "{}", p.explain());
    assert!(p.workspace_bytes() >= 256 * 70_000 * 4);

    // Typed refusals at launch, as on the other routes.
    let (m, n, k) = (130, 72, 256);
    let spec = GemmSpec {
        cublas: Some(true),
        ..GemmSpec::w4a16(m, n, k)
    };
    let mut plan = GemmPlan::new(&dev, &s, &spec).unwrap();
    let mut rng = Rng::new(Rng::fresh_seed());
    let w = exact_fp4(&mut rng, "w", n, k);
    let dw = DeviceNvfp4::upload(&s, &w).unwrap();
    let a: Vec<bf16> = convert(&exact_values(&mut rng, m * k));
    let da = upload(&s, "a", &a).unwrap();
    let wrong_act = upload(&s, "a", &vec![f16::ONE; m * k]).unwrap();
    let mut out = upload(&s, "out", &vec![bf16::NAN; m * n]).unwrap();
    let e = plan.w4a16(&dev, &s, &wrong_act, &dw, None, &mut out).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidValue { name, .. } if name == "A"),
        "{e}"
    );
    let short = upload(&s, "a", &vec![bf16::ONE; m * k - 1]).unwrap();
    let e = plan.w4a16(&dev, &s, &short, &dw, None, &mut out).unwrap_err();
    assert!(matches!(&e, Error::Length { name, .. } if name == "A"), "{e}");
    let mut small_out = upload(&s, "out", &vec![bf16::NAN; m * n - 1]).unwrap();
    let e = plan.w4a16(&dev, &s, &da, &dw, None, &mut small_out).unwrap_err();
    assert!(matches!(&e, Error::Length { name, .. } if name == "out"), "{e}");
    let bias = upload(&s, "bias", &vec![bf16::ONE; n]).unwrap();
    let e = plan.w4a16(&dev, &s, &da, &dw, Some(&bias), &mut out).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidValue { name, .. } if name == "bias"),
        "{e}"
    );
    let other_w = exact_fp4(&mut rng, "w", n + 1, k);
    let other_w = DeviceNvfp4::upload(&s, &other_w).unwrap();
    let e = plan.w4a16(&dev, &s, &da, &other_w, None, &mut out).unwrap_err();
    assert!(matches!(&e, Error::Shape { name, .. } if name == "W"), "{e}");

    // Relaunching, and launching on another stream than the plan's (the handle follows the stream and
    // takes its workspace along), give the same bits as the first launch, and the reference's.
    let bits = |o: &cudarc::driver::CudaSlice<bf16>| {
        download(&s, "out", o)
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect::<Vec<_>>()
    };
    plan.w4a16(&dev, &s, &da, &dw, None, &mut out).unwrap();
    let first = bits(&out);
    let want = reference::gemm_w4a16(&a, m, &w).unwrap();
    let want: Vec<u16> = want
        .values
        .iter()
        .map(|&v| bf16::from_f32(v as f32).to_bits())
        .collect();
    assert_eq!(first, want, "exact sums: {}", plan.explain());
    let s2 = dev.new_stream().unwrap();
    for stream in [&s2, &s] {
        let mut again = upload(&s, "out", &vec![bf16::NAN; m * n]).unwrap();
        plan.w4a16(&dev, stream, &da, &dw, None, &mut again).unwrap();
        assert_eq!(bits(&again), first, "a later launch on another stream differs");
    }
}

#[test]
fn gemm_gpu_plan_without_cublas_or_forbidden_keeps_the_mma_sync_route() {
    let Some(dev) = device("gemm_gpu_plan_without_cublas_or_forbidden_keeps_the_mma_sync_route") else {
        return;
    };
    let s = dev.stream();
    let spec = GemmSpec {
        cublas: Some(false),
        ..GemmSpec::w4a16(4096, 8192, 8192)
    };
    let p = GemmPlan::new(&dev, s, &spec).unwrap();
    let large = large_m_kernel(&dev, 4096);
    assert_eq!(p.route(), GemmRoute::Dequantize(large), "{}", p.explain());
    assert!(p.explain().contains("forbidden by the caller"), "{}", p.explain());
    if let CublasAvailability::Unavailable(why) = CublasAvailability::probe() {
        // Where cuBLAS does not load, large M falls back with the reason, and forcing it is an error.
        let p = GemmPlan::new(&dev, s, &GemmSpec::w4a16(4096, 8192, 8192)).unwrap();
        assert_eq!(p.route(), GemmRoute::Dequantize(large), "{}", p.explain());
        assert!(p.explain().contains(&why), "{}", p.explain());
        let forced = GemmSpec {
            cublas: Some(true),
            ..GemmSpec::w4a16(4096, 8192, 8192)
        };
        assert!(matches!(
            GemmPlan::new(&dev, s, &forced),
            Err(Error::Cublas { .. })
        ));
    }
}
