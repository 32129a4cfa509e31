//! The GEMM reading its NVFP4 weight in place from a prefetcher slot (`GemmPlan::w4a16_slot`): the same
//! bits as the owned-weight GEMM on the same inputs, within the f32 accumulation bound of the f64
//! reference, across slot reuse and passes; its stream and shape checks; and `nvfp4 demo` streamed
//! through the prefetcher giving the same output bits as the non-streamed path.

use std::sync::Arc;

use half::bf16;
use nvfp4::cuda::{PinnedPool, StreamSet, download, upload};
use nvfp4::format::Dtype;
use nvfp4::offload::{HostBlock, HostTensor, LayerPrefetcher, PrefetchConfig, Weight};
use nvfp4::ops::{DeviceNvfp4, GemmPlan, GemmSpec};
use nvfp4::quant::{self, QuantizeOptions};
use nvfp4::reference::{self, synthetic::Rng};

use crate::common::{convert, device, mixed_values};

/// One block's problem: weight `[n, k]`, activations `[m, k]`.
struct Problem {
    m: usize,
    w: nvfp4::Nvfp4Tensor,
    a: Vec<bf16>,
}

#[test]
fn gpu_slot_gemm_equals_owned_gemm_and_reference() {
    let Some(dev) = device("gpu_slot_gemm_equals_owned_gemm_and_reference") else {
        return;
    };
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    let nb = 7;
    // M = 1 and odd M (16-row kernel), M > 32 (the 64-row kernel on even blocks, where the cuBLAS route
    // is forbidden; dequantize + cuBLAS, which the cost model picks for these small layers, on odd ones
    // where cuBLAS loads); N and K not multiples of the tiles.
    let ms = [1usize, 5, 33, 70];
    let problems: Vec<Problem> = (0..nb)
        .map(|_| {
            let n = 1 + (rng.next_u64() % 150) as usize;
            let k = 16 * (1 + (rng.next_u64() % 40) as usize);
            let m = ms[(rng.next_u64() % ms.len() as u64) as usize];
            let w = quant::quantize(
                "w",
                &mixed_values(&mut rng, n * k),
                n,
                k,
                &QuantizeOptions::default(),
            )
            .unwrap();
            let a = convert::<bf16>(&mixed_values(&mut rng, m * k));
            Problem { m, w, a }
        })
        .collect();
    let blocks: Vec<HostBlock> = problems
        .iter()
        .enumerate()
        .map(|(b, p)| HostBlock {
            tensors: vec![
                // An odd-sized part first, so the weight's parts sit at offsets inside the slot.
                HostTensor::new(2 * b as u64, "norm", Weight::Bytes(vec![b as u8; 77])).unwrap(),
                HostTensor::new(2 * b as u64 + 1, "w", Weight::Nvfp4(p.w.clone())).unwrap(),
            ],
        })
        .collect();
    // 5 of 7 blocks stream through 2 slots (slot reuse within a pass), 2 stay resident.
    let cfg = PrefetchConfig {
        blocks_to_swap: 5,
        depth: 2,
        ..Default::default()
    };
    let mut pf = LayerPrefetcher::new(
        &dev,
        StreamSet::new(&dev).unwrap(),
        Arc::new(PinnedPool::new(&dev)),
        blocks,
        cfg,
    )
    .unwrap();
    let s = pf.streams().compute.clone();
    let spec = |i: usize, p: &Problem| GemmSpec {
        out: Dtype::F32,
        cublas: (i % 2 == 0).then_some(false),
        ..GemmSpec::w4a16(p.m, p.w.rows(), p.w.cols())
    };
    let mut slot_plans: Vec<GemmPlan> = problems
        .iter()
        .enumerate()
        .map(|(i, p)| GemmPlan::new(&dev, &s, &spec(i, p)).unwrap())
        .collect();
    let mut owned_plans: Vec<GemmPlan> = problems
        .iter()
        .enumerate()
        .map(|(i, p)| GemmPlan::new(&dev, &s, &spec(i, p)).unwrap())
        .collect();
    let owned: Vec<DeviceNvfp4> = problems
        .iter()
        .map(|p| DeviceNvfp4::upload(&s, &p.w).unwrap())
        .collect();
    let acts: Vec<_> = problems.iter().map(|p| upload(&s, "a", &p.a).unwrap()).collect();
    // Two passes: the second reads blocks prefetched across the seam into recycled slots.
    for pass in 0..2 {
        let mut outs = Vec::new();
        pf.begin_pass().unwrap();
        for (i, p) in problems.iter().enumerate() {
            let len = p.m * p.w.rows();
            let mut o_slot = upload(&s, "out", &vec![f32::NAN; len]).unwrap();
            let mut o_owned = upload(&s, "out", &vec![f32::NAN; len]).unwrap();
            {
                let block = pf.block(i).unwrap();
                let w = block.get("w").unwrap().slot_weight().unwrap();
                slot_plans[i]
                    .w4a16_slot(&dev, &s, &acts[i], &w, None, &mut o_slot)
                    .unwrap_or_else(|e| panic!("seed {seed}: pass {pass} block {i}: {e}"));
            }
            pf.done(i).unwrap();
            owned_plans[i]
                .w4a16(&dev, &s, &acts[i], &owned[i], None, &mut o_owned)
                .unwrap();
            outs.push((o_slot, o_owned));
        }
        pf.end_pass().unwrap();
        for (i, (p, (o_slot, o_owned))) in problems.iter().zip(&outs).enumerate() {
            let got = download(&s, "out", o_slot).unwrap();
            let base = download(&s, "out", o_owned).unwrap();
            let what = format!(
                "seed {seed}: pass {pass} block {i} (M={} N={} K={}, {})",
                p.m,
                p.w.rows(),
                p.w.cols(),
                slot_plans[i].explain()
            );
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&got),
                bits(&base),
                "{what}: the slot GEMM differs from the owned-weight GEMM"
            );
            let want = reference::gemm_w4a16(&p.a, p.m, &p.w).unwrap();
            // As tests/gpu/gemm.rs: K truncating additions count 2K roundings, plus alpha and the store.
            if let Some((j, g, v)) = want.first_violation(&got, p.w.cols() + 4) {
                panic!("{what}: output {j} = {g:e}, reference {v:e}, outside gamma bound");
            }
        }
    }
}

#[test]
fn gpu_slot_gemm_refuses_another_stream_and_wrong_shape() {
    let Some(dev) = device("gpu_slot_gemm_refuses_another_stream_and_wrong_shape") else {
        return;
    };
    let w = quant::quantize("w", &vec![0.5f32; 64 * 128], 64, 128, &QuantizeOptions::default()).unwrap();
    let blocks = vec![HostBlock {
        tensors: vec![
            HostTensor::new(0, "w", Weight::Nvfp4(w)).unwrap(),
            HostTensor::new(1, "b", Weight::Bytes(vec![1; 16])).unwrap(),
        ],
    }];
    let cfg = PrefetchConfig {
        blocks_to_swap: 1,
        depth: 1,
        ..Default::default()
    };
    let mut pf = LayerPrefetcher::new(
        &dev,
        StreamSet::new(&dev).unwrap(),
        Arc::new(PinnedPool::new(&dev)),
        blocks,
        cfg,
    )
    .unwrap();
    let s = pf.streams().compute.clone();
    let other = pf.streams().upload.clone();
    let spec = GemmSpec {
        out: Dtype::F32,
        ..GemmSpec::w4a16(2, 64, 128)
    };
    let mut plan = GemmPlan::new(&dev, &s, &spec).unwrap();
    let mut wrong = GemmPlan::new(
        &dev,
        &s,
        &GemmSpec {
            out: Dtype::F32,
            ..GemmSpec::w4a16(2, 64, 256)
        },
    )
    .unwrap();
    let a = upload(&s, "a", &vec![bf16::ONE; 2 * 256]).unwrap();
    let mut out = upload(&s, "out", &vec![f32::NAN; 2 * 64]).unwrap();
    pf.begin_pass().unwrap();
    {
        let block = pf.block(0).unwrap();
        assert!(
            block.get("b").unwrap().slot_weight().is_err(),
            "bytes are not an NVFP4 weight"
        );
        let w = block.get("w").unwrap().slot_weight().unwrap();
        assert_eq!(w.stream().cu_stream(), s.cu_stream());
        let e = plan.w4a16_slot(&dev, &other, &a, &w, None, &mut out).unwrap_err();
        assert!(e.to_string().contains("compute stream"), "{e}");
        assert!(wrong.w4a16_slot(&dev, &s, &a, &w, None, &mut out).is_err());
        let a128 = upload(&s, "a", &vec![bf16::ONE; 2 * 128]).unwrap();
        plan.w4a16_slot(&dev, &s, &a128, &w, None, &mut out).unwrap();
    }
    pf.done(0).unwrap();
    pf.end_pass().unwrap();
    // 0.5 quantizes exactly; rows of ones: every output is 128 * 0.5.
    let got = download(&s, "out", &out).unwrap();
    assert!(got.iter().all(|&v| v == 64.0), "{got:?}");
}

/// The CLI: `NVFP4_BIN`, else cargo's build of it, else the staged copy (`.gpu/bin/nvfp4`, where
/// tools/stage-gpu.sh puts it for the device machine).
fn nvfp4_bin() -> std::path::PathBuf {
    let candidates = [
        std::env::var_os("NVFP4_BIN").map(Into::into),
        Some(env!("CARGO_BIN_EXE_nvfp4").into()),
        Some(".gpu/bin/nvfp4".into()),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p: &std::path::PathBuf| p.is_file())
        .expect("the nvfp4 CLI: set NVFP4_BIN, or build it (cargo build --features cli) or stage it")
}

fn demo(args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(nvfp4_bin())
        .arg("demo")
        .arg("--json")
        .args(args)
        .output()
        .expect("running nvfp4 demo");
    assert!(
        out.status.success(),
        "nvfp4 demo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("demo JSON")
}

#[test]
fn gpu_demo_streamed_equals_non_streamed() {
    let Some(_dev) = device("gpu_demo_streamed_equals_non_streamed") else {
        return;
    };
    let seed = Rng::fresh_seed().to_string();
    // 5 blocks through 2 slots (slots reused), and 3 blocks through 3 (one slot each); tokens 1 and 40
    // reach both GEMM kernels.
    for (blocks, depth, tokens) in [("5", "2", "40"), ("3", "3", "1")] {
        let common = [
            "--seed", &seed, "--blocks", blocks, "--hidden", "64", "--tokens", tokens,
        ];
        let streamed = demo(&[&common[..], &["--depth", depth]].concat());
        let baseline = demo(&[&common[..], &["--no-stream"]].concat());
        let what = format!("seed {seed}, blocks {blocks}, depth {depth}, tokens {tokens}");
        assert_eq!(streamed["backend"], "gpu", "{what}: {streamed}");
        assert_eq!(baseline["backend"], "gpu", "{what}: {baseline}");
        assert_eq!(streamed["streamed"], true, "{what}: {streamed}");
        assert_eq!(baseline["streamed"], false, "{what}: {baseline}");
        assert_eq!(
            streamed["streamed_blocks"].as_u64(),
            Some(blocks.parse().unwrap()),
            "{what}"
        );
        assert_eq!(
            streamed["prefetch_depth"].as_u64(),
            Some(depth.parse().unwrap()),
            "{what}"
        );
        // Every block's weights went up once (slot bytes include part alignment, so at least the NVFP4 bytes).
        assert!(
            streamed["bytes_uploaded"].as_u64().unwrap() >= streamed["nvfp4_bytes"].as_u64().unwrap(),
            "{what}: {streamed}"
        );
        assert_eq!(
            streamed["output_hash"], baseline["output_hash"],
            "{what}: the streamed output differs from the non-streamed one"
        );
        assert_eq!(streamed["rel_rmse"], baseline["rel_rmse"], "{what}");
        assert!(streamed["snr_db"].as_f64().unwrap() > 10.0, "{what}: {streamed}");
    }
}
