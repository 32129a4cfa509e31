//! The cuBLASLt FP8 baseline of `nvfp4 bench gemm` (`CublasFp8`) against an f64 product of the same
//! E4M3 bytes: a baseline that computed something else would make every FP8 ratio meaningless.

use half::bf16;
use nvfp4::cuda::{CublasFp8, alloc_zeros, download, upload};
use nvfp4::format::e4m3;
use nvfp4::reference::synthetic::Rng;

use crate::common::device;

/// A random E4M3 byte, never NaN (0x7F, 0xFF).
fn e4m3_byte(rng: &mut Rng) -> u8 {
    loop {
        let b = rng.next_u64() as u8;
        if b & 0x7F != 0x7F {
            return b;
        }
    }
}

#[test]
fn blas_fp8_gpu_matches_f64_product() {
    let Some(dev) = device("blas_fp8_gpu_matches_f64_product") else {
        return;
    };
    let (major, minor) = dev.info().compute_capability;
    if (major, minor) < (8, 9) {
        match CublasFp8::new(dev.stream(), 16, 16, 16) {
            Err(e) => {
                eprintln!("SKIPPED blas_fp8_gpu_matches_f64_product: sm_{major}{minor} has no FP8 GEMM ({e})")
            }
            Ok(_) => panic!("cuBLASLt offered FP8 on sm_{major}{minor}"),
        }
        return;
    }
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    let s = dev.stream();
    // M = 1 (the GEMV case), odd M, N a multiple of 8 (bf16 rows 16-byte aligned), K multiples of 16.
    for (m, n, k) in [(1, 64, 64), (7, 136, 208), (33, 200, 1024), (130, 8, 16)] {
        let what = format!("seed {seed:#x}, [{m}, {n}, {k}]");
        let a: Vec<u8> = (0..m * k).map(|_| e4m3_byte(&mut rng)).collect();
        let w: Vec<u8> = (0..n * k).map(|_| e4m3_byte(&mut rng)).collect();
        let alpha = 2f32.powi((rng.next_u64() % 9) as i32 - 8);
        let fp8 = CublasFp8::new(s, m, n, k).unwrap_or_else(|e| panic!("{what}: {e}"));
        let (da, dw) = (upload(s, "A", &a).unwrap(), upload(s, "W", &w).unwrap());
        // Poison: 0xFFFF is a bf16 NaN, which no finite product writes.
        let mut dc = upload(s, "C", &vec![bf16::from_bits(0xFFFF); m * n]).unwrap();
        fp8.gemm(&da, &dw, alpha, &mut dc)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let c = download(s, "C", &dc).unwrap();
        let dec = |b: u8| f64::from(e4m3::decode_bf16(b).to_f32());
        for i in 0..m {
            for j in 0..n {
                let (mut sum, mut abs) = (0f64, 0f64);
                for p in 0..k {
                    let t = dec(a[i * k + p]) * dec(w[j * k + p]);
                    sum += t;
                    abs += t.abs();
                }
                let want = sum * f64::from(alpha);
                let got = f64::from(c[i * n + j].to_f32());
                // f32 accumulation (k roundings of at most 2^-24 of the running |sum|), plus the Hopper
                // FP8 tensor core's narrower internal accumulator (about 14 bits, which cuBLASLt promotes
                // to f32 every few MMAs: DeepSeek-V3 report, section 3.3.2), then bf16 rounding. A wrong
                // layout or scale is off by about |sum|, far above this.
                let acc = k as f64 * 2f64.powi(-24) + 2f64.powi(-12);
                let tol = abs * f64::from(alpha) * acc + want.abs() * 2f64.powi(-8) + 1e-30;
                assert!(
                    (got - want).abs() <= tol,
                    "{what}: C[{i}, {j}] = {got}, want {want} ± {tol}"
                );
            }
        }
    }
    // A buffer that does not hold its shape is a typed error, not a launch.
    let fp8 = CublasFp8::new(s, 2, 16, 32).unwrap();
    let (a, w) = (
        alloc_zeros::<u8>(s, "A", 2 * 32).unwrap(),
        alloc_zeros::<u8>(s, "W", 15 * 32).unwrap(),
    );
    let mut c = alloc_zeros::<bf16>(s, "C", 2 * 16).unwrap();
    assert!(matches!(
        fp8.gemm(&a, &w, 1.0, &mut c),
        Err(nvfp4::Error::Length { .. })
    ));
}
