//! The GEMM dispatch decision (`ops::choose_kernel`, what `GemmPlan::new` runs on the device's compute
//! capability and cuBLAS's availability) without a GPU: W4A4 on sm_12x goes to the sm_120 FP4 tensor
//! cores, on sm_80/sm_90/sm_100 to the dequantize (mma.sync) kernels, large M to dequantize + cuBLAS
//! where cuBLAS loads and its cost model says so, overrides and refusals are typed, and the reason says
//! why.

use nvfp4::Error;
use nvfp4::format::Dtype;
use nvfp4::ops::{
    CublasAvailability, Fp4Backend, Fp4Tile, GemmChoice, GemmKernel, GemmOp, GemmRoute, GemmSpec,
    choose_kernel,
};

const BLAS: CublasAvailability = CublasAvailability::Available;

fn no_blas() -> CublasAvailability {
    CublasAvailability::Unavailable("test: libcublas not loadable".into())
}

/// The decision where cuBLAS cannot load: the kernel routes alone.
fn choose(cc: (u32, u32), spec: &GemmSpec) -> nvfp4::Result<GemmChoice> {
    choose_kernel(cc, spec, &no_blas())
}

/// The kernel W4A16 takes on sm_90 above M = 32 without cuBLAS (K a multiple of 64): the wgmma kernel's
/// tile for M where this build has sm_90a code, else the 64-row mma.sync kernel.
fn hopper_tile(m: usize) -> GemmKernel {
    if nvfp4::ops::WGMMA_BY_DEFAULT && nvfp4::cuda::TARGETS.contains(&"sm_90a") {
        GemmKernel::wgmma_for(m)
    } else {
        GemmKernel::M64
    }
}

fn fp4(backend: Fp4Backend, tile: Fp4Tile) -> GemmRoute {
    GemmRoute::Fp4TensorCore { backend, tile }
}

#[test]
fn w4a4_on_sm12x_takes_the_fp4_tensor_core_kernel_by_default() {
    for cc in [(12, 0), (12, 1)] {
        for (m, tile) in [
            (1, Fp4Tile::Small),
            (7, Fp4Tile::Small),
            (16, Fp4Tile::Small),
            (17, Fp4Tile::Large),
            (128, Fp4Tile::Large),
            (4096, Fp4Tile::Large),
        ] {
            for out in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
                for bias in [false, true] {
                    let spec = GemmSpec {
                        out,
                        bias,
                        ..GemmSpec::w4a4(m, 130, 1008)
                    };
                    // cuBLAS being available changes nothing: the FP4 tensor cores stay W4A4's default.
                    let c = choose_kernel(cc, &spec, &BLAS).unwrap();
                    assert_eq!(
                        c.route,
                        fp4(Fp4Backend::Native, tile),
                        "{cc:?} M={m}: {}",
                        c.reason
                    );
                    let r = &c.reason;
                    assert!(r.contains("FP4 tensor-core"), "{r}");
                    assert!(r.contains(tile.kernel().symbol()), "{r}");
                    assert!(r.contains("Native"), "{r}");
                    assert!(
                        r.contains(&format!("sm_{}{}", cc.0, cc.1)),
                        "the arch is the reason: {r}"
                    );
                    assert!(r.contains("block-scaled FP4 tensor cores"), "{r}");
                    assert!(r.contains(&format!("M = {m}")), "the tile's reason: {r}");
                }
            }
        }
    }
}

#[test]
fn w4a4_on_sm80_sm90_sm100_takes_the_dequantize_kernels() {
    for cc in [(8, 0), (8, 6), (8, 9), (9, 0), (10, 0)] {
        for (m, kernel, name) in [
            (1, GemmKernel::M16, "nvfp4_gemv_w4a4"),
            (7, GemmKernel::M16, "nvfp4_gemv_w4a4"),
            (32, GemmKernel::M16, "nvfp4_gemv_w4a4"),
            (33, GemmKernel::M64, "nvfp4_gemm_w4a4"),
            (1000, GemmKernel::M64, "nvfp4_gemm_w4a4"),
        ] {
            let c = choose(cc, &GemmSpec::w4a4(m, 130, 1008)).unwrap();
            assert_eq!(
                c.route,
                GemmRoute::Dequantize(kernel),
                "{cc:?} M={m}: {}",
                c.reason
            );
            let r = &c.reason;
            assert!(r.contains(name), "{r}");
            assert!(r.contains("dequantize"), "{r}");
            assert!(!r.contains("FP4 tensor-core kernel"), "{r}");
            assert!(
                r.contains(&format!("sm_{}{}", cc.0, cc.1)),
                "the arch is the reason: {r}"
            );
            assert!(r.contains(if m <= 32 { "M <= 32" } else { "M > 32" }), "{r}");
            // Above M = 32 the reason says why cuBLAS did not take it.
            assert_eq!(m > 32, r.contains("libcublas not loadable"), "{r}");
        }
    }
    let sm90 = choose((9, 0), &GemmSpec::w4a4(1, 64, 64)).unwrap();
    assert!(
        sm90.reason.contains("no block-scaled FP4 tensor cores"),
        "{}",
        sm90.reason
    );
    let sm100 = choose((10, 0), &GemmSpec::w4a4(1, 64, 64)).unwrap();
    assert!(sm100.reason.contains("tcgen05"), "{}", sm100.reason);
}

#[test]
fn w4a16_stays_on_the_dequantize_kernels_everywhere() {
    for cc in [(8, 0), (9, 0), (10, 0), (12, 0)] {
        for act in [Dtype::Bf16, Dtype::F16] {
            let spec = GemmSpec {
                op: GemmOp::W4A16(act),
                ..GemmSpec::w4a16(1, 4096, 4096)
            };
            let c = choose_kernel(cc, &spec, &BLAS).unwrap();
            assert_eq!(
                c.route,
                GemmRoute::Dequantize(GemmKernel::M16),
                "{cc:?}: {}",
                c.reason
            );
        }
    }
}

#[test]
fn overrides_force_either_route_and_refuse_what_cannot_run() {
    let base = GemmSpec::w4a4(7, 130, 1008);
    // The emulated sm_120 route on an H100: what the GPU tests force.
    let emu = GemmSpec {
        fp4_backend: Some(Fp4Backend::Sm120Emulated),
        ..base
    };
    let c = choose((9, 0), &emu).unwrap();
    assert_eq!(
        c.route,
        fp4(Fp4Backend::Sm120Emulated, Fp4Tile::Small),
        "{}",
        c.reason
    );
    assert!(c.reason.contains("forced"), "{}", c.reason);
    // On sm_12x the same override is admitted (the hardware runs it natively).
    assert_eq!(
        choose((12, 0), &emu).unwrap().route,
        fp4(Fp4Backend::Sm120Emulated, Fp4Tile::Small)
    );
    // The emulation exists only in the sm_90a build; the native backend only on sm_12x.
    for (cc, b) in [
        ((8, 0), Fp4Backend::Sm120Emulated),
        ((10, 0), Fp4Backend::Sm120Emulated),
        ((9, 0), Fp4Backend::Native),
        ((10, 0), Fp4Backend::Native),
    ] {
        let spec = GemmSpec {
            fp4_backend: Some(b),
            ..base
        };
        let e = choose(cc, &spec).unwrap_err();
        assert!(matches!(e, Error::UnsupportedArch { .. }), "{cc:?} {b:?}: {e}");
    }
    // A forced dequantize kernel keeps sm_12x on the mma.sync route (for comparisons on Blackwell).
    let deq = GemmSpec {
        kernel: Some(GemmKernel::M64),
        ..base
    };
    let c = choose((12, 0), &deq).unwrap();
    assert_eq!(c.route, GemmRoute::Dequantize(GemmKernel::M64), "{}", c.reason);
    assert!(c.reason.contains("forced"), "{}", c.reason);
    // Both overrides at once, an FP4 backend for W4A16, split-K on the FP4 route: typed refusals.
    let both = GemmSpec {
        kernel: Some(GemmKernel::M16),
        ..emu
    };
    let e = choose((9, 0), &both).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidValue { name, .. } if name == "kernel"),
        "{e}"
    );
    let w4a16 = GemmSpec {
        fp4_backend: Some(Fp4Backend::Native),
        ..GemmSpec::w4a16(1, 64, 64)
    };
    let e = choose((12, 0), &w4a16).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidValue { name, .. } if name == "fp4_backend"),
        "{e}"
    );
    let split = GemmSpec {
        splits: Some(4),
        ..base
    };
    let e = choose((12, 0), &split).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidValue { name, .. } if name == "splits"),
        "{e}"
    );
    let one = GemmSpec {
        splits: Some(1),
        ..base
    };
    assert!(choose((12, 0), &one).is_ok());
}

#[test]
fn bad_shapes_and_old_gpus_are_typed_errors_on_both_routes() {
    for cc in [(9, 0), (12, 0)] {
        for k in [0, 24] {
            let e = choose(cc, &GemmSpec::w4a4(4, 8, k)).unwrap_err();
            assert!(matches!(e, Error::Shape { .. }), "{cc:?} K={k}: {e}");
        }
    }
    // More W rows than the FP4 kernel's grid covers (65535 x 64).
    let e = choose((12, 0), &GemmSpec::w4a4(1, 65_535 * 64 + 1, 64)).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = choose((7, 5), &GemmSpec::w4a4(1, 64, 64)).unwrap_err();
    assert!(matches!(e, Error::UnsupportedArch { .. }), "{e}");
}

fn cublas(dtype: Dtype) -> GemmRoute {
    GemmRoute::DequantizeCublas { dtype }
}

/// The layers of `nvfp4 bench gemm`'s sweep (BENCHMARKS.md), N x K.
const SWEEP: [(usize, usize); 11] = [
    (8192, 8192),
    (28672, 8192),
    (8192, 28672),
    (9216, 3072),
    (3072, 3072),
    (12288, 3072),
    (3072, 12288),
    (7680, 2560),
    (2560, 2560),
    (10240, 2560),
    (2560, 10240),
];

#[test]
fn large_m_takes_dequantize_cublas_where_the_cost_model_says_so() {
    // Every GPU family without the FP4 default for the op: W4A16 everywhere, W4A4 below sm_12x.
    let ops = [
        (GemmOp::W4A16(Dtype::Bf16), vec![(8, 0), (9, 0), (10, 0), (12, 0)]),
        (GemmOp::W4A16(Dtype::F16), vec![(8, 6), (9, 0), (12, 0)]),
        (GemmOp::W4A4, vec![(8, 0), (9, 0), (10, 0)]),
    ];
    for (op, ccs) in &ops {
        for &cc in ccs {
            for out in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
                for bias in [false, true] {
                    let spec = |m, n, k| GemmSpec {
                        op: *op,
                        out,
                        bias,
                        ..GemmSpec::w4a16(m, n, k)
                    };
                    let want = match op {
                        GemmOp::W4A16(act) => *act,
                        GemmOp::W4A4 if out == Dtype::F16 => Dtype::F16,
                        GemmOp::W4A4 => Dtype::Bf16,
                    };
                    // M <= 32: the 16-row kernels, cuBLAS not even mentioned.
                    for m in [1, 16, 32] {
                        let c = choose_kernel(cc, &spec(m, 8192, 8192), &BLAS).unwrap();
                        assert_eq!(c.route, GemmRoute::Dequantize(GemmKernel::M16), "{}", c.reason);
                        assert!(!c.reason.contains("cuBLAS"), "{}", c.reason);
                    }
                    // Prefill-sized M on every layer of the sweep: cuBLAS, but on sm_90 W4A16 up to
                    // M = 128 keeps the wgmma kernel (and may at M = 1024, the crossover).
                    let hopper = cc == (9, 0) && matches!(op, GemmOp::W4A16(_));
                    for &(n, k) in &SWEEP {
                        for m in [65, 128, 1024, 4096] {
                            let c = choose_kernel(cc, &spec(m, n, k), &BLAS).unwrap();
                            if hopper && m <= 128 && hopper_tile(m) != GemmKernel::M64 {
                                let want = GemmRoute::Dequantize(hopper_tile(m));
                                assert_eq!(c.route, want, "{op:?} M={m} {n}x{k}: {}", c.reason);
                                assert!(c.reason.contains("wgmma"), "{}", c.reason);
                                assert!(c.reason.contains("not taken (estimated"), "{}", c.reason);
                                continue;
                            }
                            if hopper && m == 1024 && matches!(c.route, GemmRoute::Dequantize(_)) {
                                // Near the crossover the estimates are within a few percent.
                                assert!(c.reason.contains("wgmma"), "{}", c.reason);
                                continue;
                            }
                            assert_eq!(c.route, cublas(want), "{op:?} {cc:?} M={m} {n}x{k}: {}", c.reason);
                            let r = &c.reason;
                            assert!(r.contains("dequantize + cuBLAS"), "{r}");
                            assert!(r.contains(&format!("M = {m} > 32")), "{r}");
                            assert!(r.contains("estimated"), "{r}");
                            assert!(r.contains("cublasGemmEx"), "{r}");
                        }
                    }
                    // A small layer from M = 33 on: the 64-row kernel's floor alone outweighs it.
                    let c = choose_kernel(cc, &spec(33, 130, 1008), &BLAS).unwrap();
                    assert_eq!(c.route, cublas(want), "{}", c.reason);
                }
            }
        }
    }
}

#[test]
fn the_cost_model_keeps_w4a16_on_mma_sync_only_for_the_largest_layers_up_to_m_64() {
    // What choose_kernel's documentation states, from the H100 sweep: W4A16 (bf16 out, no bias) keeps the
    // 64-row kernel at M = 33..64 on 8192², 8192x28672 and 28672x8192 and nowhere else; W4A4 never.
    // (On sm_80; sm_90 has the wgmma kernel, below.)
    let big = [(8192, 8192), (28672, 8192), (8192, 28672)];
    for &(n, k) in &SWEEP {
        for m in [33, 48, 64] {
            let c = choose_kernel((8, 0), &GemmSpec::w4a16(m, n, k), &BLAS).unwrap();
            if big.contains(&(n, k)) {
                assert_eq!(
                    c.route,
                    GemmRoute::Dequantize(GemmKernel::M64),
                    "{n}x{k} M={m}: {}",
                    c.reason
                );
                assert!(
                    c.reason.contains("dequantize + cuBLAS not taken (estimated"),
                    "{}",
                    c.reason
                );
            } else {
                assert_eq!(c.route, cublas(Dtype::Bf16), "{n}x{k} M={m}: {}", c.reason);
            }
            let c = choose_kernel((9, 0), &GemmSpec::w4a4(m, n, k), &BLAS).unwrap();
            assert_eq!(c.route, cublas(Dtype::Bf16), "W4A4 {n}x{k} M={m}: {}", c.reason);
        }
    }
}

#[test]
fn w4a16_on_sm90_takes_the_wgmma_kernel_above_m_32_where_k_allows() {
    if !nvfp4::cuda::TARGETS.contains(&"sm_90a") {
        eprintln!("SKIPPED: this build has no sm_90a code (NVFP4_CUDA_ARCHS), so no wgmma kernel");
        return;
    }
    let auto = hopper_tile(64) != GemmKernel::M64;
    if !auto {
        eprintln!("SKIPPED the automatic choice: the wgmma kernel is opt-in (ops::WGMMA_BY_DEFAULT)");
    }
    for &(n, k) in SWEEP.iter().filter(|_| auto) {
        for (m, tile) in [
            (33, GemmKernel::Wg64),
            (64, GemmKernel::Wg64),
            (100, GemmKernel::Wg128),
        ] {
            for act in [Dtype::Bf16, Dtype::F16] {
                let spec = GemmSpec {
                    op: GemmOp::W4A16(act),
                    ..GemmSpec::w4a16(m, n, k)
                };
                let c = choose_kernel((9, 0), &spec, &BLAS).unwrap();
                assert_eq!(
                    c.route,
                    GemmRoute::Dequantize(tile),
                    "{n}x{k} M={m}: {}",
                    c.reason
                );
                let sym = if act == Dtype::Bf16 {
                    "sm90_bf16"
                } else {
                    "sm90_f16"
                };
                assert!(c.reason.contains(sym), "{}", c.reason);
                assert!(
                    c.reason.contains("on sm_90 with K a multiple of 64"),
                    "{}",
                    c.reason
                );
            }
        }
    }
    // K not a multiple of 64: the 64-row kernel, saying why.
    let c = choose_kernel((9, 0), &GemmSpec::w4a16(100, 4096, 4160 + 32), &no_blas()).unwrap();
    assert_eq!(c.route, GemmRoute::Dequantize(GemmKernel::M64), "{}", c.reason);
    assert_eq!(auto, c.reason.contains("not a multiple of 64"), "{}", c.reason);
    // Not on other GPUs, and a forced wgmma tile there is a typed error.
    let c = choose_kernel((8, 0), &GemmSpec::w4a16(100, 4096, 4096), &no_blas()).unwrap();
    assert_eq!(c.route, GemmRoute::Dequantize(GemmKernel::M64), "{}", c.reason);
    let forced = GemmSpec {
        kernel: Some(GemmKernel::Wg128),
        ..GemmSpec::w4a16(100, 4096, 4096)
    };
    for cc in [(8, 0), (10, 0), (12, 0)] {
        let e = choose_kernel(cc, &forced, &BLAS).unwrap_err();
        assert!(matches!(e, Error::UnsupportedArch { .. }), "{cc:?}: {e}");
    }
    assert_eq!(
        choose_kernel((9, 0), &forced, &BLAS).unwrap().route,
        GemmRoute::Dequantize(GemmKernel::Wg128)
    );
    // W4A4 has no wgmma kernel: forcing one is refused.
    let w4a4 = GemmSpec {
        kernel: Some(GemmKernel::Wg64),
        ..GemmSpec::w4a4(100, 4096, 4096)
    };
    let e = choose_kernel((9, 0), &w4a4, &BLAS).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidValue { name, .. } if name == "kernel"),
        "{e}"
    );
}

#[test]
fn without_cublas_large_m_falls_back_to_mma_sync_with_the_reason() {
    let why = CublasAvailability::Unavailable("libcublas.so.13: cannot open shared object file".into());
    for spec in [
        GemmSpec::w4a16(4096, 8192, 8192),
        GemmSpec::w4a4(4096, 8192, 8192),
    ] {
        let c = choose_kernel((9, 0), &spec, &why).unwrap();
        let want = match spec.op {
            GemmOp::W4A4 => GemmKernel::M64,
            GemmOp::W4A16(_) => hopper_tile(spec.m),
        };
        assert_eq!(c.route, GemmRoute::Dequantize(want), "{}", c.reason);
        let r = &c.reason;
        assert!(r.contains("would be faster here"), "{r}");
        assert!(
            r.contains("libcublas.so.13: cannot open shared object file"),
            "{r}"
        );
    }
    // Where the model keeps mma.sync anyway, the reason gives the estimate, not the absence.
    let c = choose_kernel((9, 0), &GemmSpec::w4a16(64, 8192, 8192), &why).unwrap();
    assert!(c.reason.contains("not taken (estimated"), "{}", c.reason);
    assert!(!c.reason.contains("cannot open"), "{}", c.reason);
    // The probe of this process never panics, with or without the library.
    let _ = CublasAvailability::probe();
}

#[test]
fn the_cublas_override_forces_forbids_and_refuses_conflicts() {
    let small = GemmSpec::w4a16(1, 130, 1008);
    let large = GemmSpec::w4a16(4096, 8192, 8192);
    // Forced: at M = 1, on sm_12x W4A4 (instead of the FP4 tensor cores), for every op.
    let force = |s: GemmSpec| GemmSpec {
        cublas: Some(true),
        ..s
    };
    let c = choose_kernel((9, 0), &force(small), &BLAS).unwrap();
    assert_eq!(c.route, cublas(Dtype::Bf16), "{}", c.reason);
    assert!(
        c.reason.contains("forced by the caller (GemmSpec::cublas)"),
        "{}",
        c.reason
    );
    let c = choose_kernel((12, 0), &force(GemmSpec::w4a4(1, 130, 1008)), &BLAS).unwrap();
    assert_eq!(c.route, cublas(Dtype::Bf16), "{}", c.reason);
    let f16 = GemmSpec {
        op: GemmOp::W4A16(Dtype::F16),
        ..force(small)
    };
    assert_eq!(
        choose_kernel((8, 0), &f16, &BLAS).unwrap().route,
        cublas(Dtype::F16)
    );
    let f16_out = GemmSpec {
        out: Dtype::F16,
        ..force(GemmSpec::w4a4(3, 64, 64))
    };
    assert_eq!(
        choose_kernel((9, 0), &f16_out, &BLAS).unwrap().route,
        cublas(Dtype::F16)
    );
    // A split count of 1 is no conflict.
    let one = GemmSpec {
        splits: Some(1),
        ..force(small)
    };
    assert_eq!(
        choose_kernel((9, 0), &one, &BLAS).unwrap().route,
        cublas(Dtype::Bf16)
    );

    // Forced without cuBLAS: a typed error naming the reason, not a silent fallback.
    let e = choose_kernel((9, 0), &force(small), &no_blas()).unwrap_err();
    assert!(
        matches!(&e, Error::Cublas { message, .. } if message.contains("libcublas not loadable")),
        "{e}"
    );
    // Conflicting overrides.
    let with_kernel = GemmSpec {
        kernel: Some(GemmKernel::M64),
        ..force(large)
    };
    let e = choose_kernel((9, 0), &with_kernel, &BLAS).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidValue { name, .. } if name == "cublas"),
        "{e}"
    );
    let with_fp4 = GemmSpec {
        fp4_backend: Some(Fp4Backend::Sm120Emulated),
        ..force(GemmSpec::w4a4(7, 130, 1008))
    };
    let e = choose_kernel((9, 0), &with_fp4, &BLAS).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidValue { name, .. } if name == "cublas"),
        "{e}"
    );
    let with_splits = GemmSpec {
        splits: Some(3),
        ..force(large)
    };
    let e = choose_kernel((9, 0), &with_splits, &BLAS).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidValue { name, .. } if name == "splits"),
        "{e}"
    );
    // The checks before any route still come first.
    let f32_act = GemmSpec {
        op: GemmOp::W4A16(Dtype::F32),
        ..force(small)
    };
    let e = choose_kernel((9, 0), &f32_act, &BLAS).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidValue { name, .. } if name == "A"),
        "{e}"
    );
    let e = choose_kernel((7, 5), &force(small), &BLAS).unwrap_err();
    assert!(matches!(e, Error::UnsupportedArch { .. }), "{e}");
    let e = choose_kernel((9, 0), &force(GemmSpec::w4a16(4, 8, 24)), &BLAS).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    // Beyond cuBLAS's 32-bit dimensions: refused when forced, skipped (with the reason) when not.
    let wide = GemmSpec::w4a16(128, (i32::MAX as usize) + 1, 16);
    let e = choose_kernel((9, 0), &force(wide), &BLAS).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let c = choose_kernel((9, 0), &wide, &BLAS).unwrap();
    assert_eq!(c.route, GemmRoute::Dequantize(GemmKernel::M64), "{}", c.reason);
    assert!(
        c.reason.contains("dequantize + cuBLAS not possible"),
        "{}",
        c.reason
    );

    // Forbidden, or another route's override given: large M stays on mma.sync, and says so.
    let forbid = GemmSpec {
        cublas: Some(false),
        ..large
    };
    let c = choose_kernel((9, 0), &forbid, &BLAS).unwrap();
    assert_eq!(c.route, GemmRoute::Dequantize(hopper_tile(4096)), "{}", c.reason);
    assert!(c.reason.contains("forbidden by the caller"), "{}", c.reason);
    let forbid_small = GemmSpec {
        cublas: Some(false),
        ..small
    };
    let c = choose_kernel((9, 0), &forbid_small, &BLAS).unwrap();
    assert_eq!(c.route, GemmRoute::Dequantize(GemmKernel::M16), "{}", c.reason);
    for spec in [
        GemmSpec {
            kernel: Some(GemmKernel::M16),
            ..large
        },
        GemmSpec {
            splits: Some(1),
            ..large
        },
        GemmSpec {
            splits: Some(4),
            ..large
        },
    ] {
        let c = choose_kernel((9, 0), &spec, &BLAS).unwrap();
        assert!(
            matches!(c.route, GemmRoute::Dequantize(_)),
            "{spec:?}: {}",
            c.reason
        );
        assert!(c.reason.contains("not considered"), "{}", c.reason);
    }
    let fp4 = GemmSpec {
        fp4_backend: Some(Fp4Backend::Sm120Emulated),
        ..GemmSpec::w4a4(4096, 8192, 8192)
    };
    let c = choose_kernel((9, 0), &fp4, &BLAS).unwrap();
    assert!(matches!(c.route, GemmRoute::Fp4TensorCore { .. }), "{}", c.reason);
}
