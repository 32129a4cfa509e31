//! The GEMM dispatch decision (`ops::choose_kernel`, what `GemmPlan::new` runs on the device's compute
//! capability) without a GPU: W4A4 on sm_12x goes to the sm_120 FP4 tensor cores, on sm_80/sm_90/sm_100
//! to the dequantize (mma.sync) kernels, overrides and refusals are typed, and the reason says why.

use nvfp4::Error;
use nvfp4::format::Dtype;
use nvfp4::ops::{Fp4Backend, Fp4Tile, GemmKernel, GemmOp, GemmRoute, GemmSpec, choose_kernel};

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
                    let c = choose_kernel(cc, &spec).unwrap();
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
            let c = choose_kernel(cc, &GemmSpec::w4a4(m, 130, 1008)).unwrap();
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
        }
    }
    let sm90 = choose_kernel((9, 0), &GemmSpec::w4a4(1, 64, 64)).unwrap();
    assert!(
        sm90.reason.contains("no block-scaled FP4 tensor cores"),
        "{}",
        sm90.reason
    );
    let sm100 = choose_kernel((10, 0), &GemmSpec::w4a4(1, 64, 64)).unwrap();
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
            let c = choose_kernel(cc, &spec).unwrap();
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
    let c = choose_kernel((9, 0), &emu).unwrap();
    assert_eq!(
        c.route,
        fp4(Fp4Backend::Sm120Emulated, Fp4Tile::Small),
        "{}",
        c.reason
    );
    assert!(c.reason.contains("forced"), "{}", c.reason);
    // On sm_12x the same override is admitted (the hardware runs it natively).
    assert_eq!(
        choose_kernel((12, 0), &emu).unwrap().route,
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
        let e = choose_kernel(cc, &spec).unwrap_err();
        assert!(matches!(e, Error::UnsupportedArch { .. }), "{cc:?} {b:?}: {e}");
    }
    // A forced dequantize kernel keeps sm_12x on the mma.sync route (for comparisons on Blackwell).
    let deq = GemmSpec {
        kernel: Some(GemmKernel::M64),
        ..base
    };
    let c = choose_kernel((12, 0), &deq).unwrap();
    assert_eq!(c.route, GemmRoute::Dequantize(GemmKernel::M64), "{}", c.reason);
    assert!(c.reason.contains("forced"), "{}", c.reason);
    // Both overrides at once, an FP4 backend for W4A16, split-K on the FP4 route: typed refusals.
    let both = GemmSpec {
        kernel: Some(GemmKernel::M16),
        ..emu
    };
    let e = choose_kernel((9, 0), &both).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidValue { name, .. } if name == "kernel"),
        "{e}"
    );
    let w4a16 = GemmSpec {
        fp4_backend: Some(Fp4Backend::Native),
        ..GemmSpec::w4a16(1, 64, 64)
    };
    let e = choose_kernel((12, 0), &w4a16).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidValue { name, .. } if name == "fp4_backend"),
        "{e}"
    );
    let split = GemmSpec {
        splits: Some(4),
        ..base
    };
    let e = choose_kernel((12, 0), &split).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidValue { name, .. } if name == "splits"),
        "{e}"
    );
    let one = GemmSpec {
        splits: Some(1),
        ..base
    };
    assert!(choose_kernel((12, 0), &one).is_ok());
}

#[test]
fn bad_shapes_and_old_gpus_are_typed_errors_on_both_routes() {
    for cc in [(9, 0), (12, 0)] {
        for k in [0, 24] {
            let e = choose_kernel(cc, &GemmSpec::w4a4(4, 8, k)).unwrap_err();
            assert!(matches!(e, Error::Shape { .. }), "{cc:?} K={k}: {e}");
        }
    }
    // More W rows than the FP4 kernel's grid covers (65535 x 64).
    let e = choose_kernel((12, 0), &GemmSpec::w4a4(1, 65_535 * 64 + 1, 64)).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = choose_kernel((7, 5), &GemmSpec::w4a4(1, 64, 64)).unwrap_err();
    assert!(matches!(e, Error::UnsupportedArch { .. }), "{e}");
}
