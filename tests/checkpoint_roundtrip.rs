//! Whole-checkpoint round trips on generated files: quantize gives the CPU reference's bytes,
//! dequantize stays within the per-block bound, conversions between flavours are lossless.

#[path = "checkpoint_common/mod.rs"]
mod common;

use half::{bf16, f16};
use nvfp4::checkpoint::{
    self, Checkpoint, Dense, Flavour, QuantizeJob, Selection, cpu_quantizer, encode_global_scale,
};
use nvfp4::format::{Dtype, e4m3};
use nvfp4::quant::{self, QuantizeOptions};
use nvfp4::reference::synthetic::Rng;
use safetensors::Dtype as St;

const QUANTIZED: [&str; 3] = [
    "model.layers.0.mlp.up_proj",
    "model.layers.0.mlp.down_proj",
    "model.layers.0.self_attn.q_proj",
];

fn dense_f32(dtype: St, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        St::F32 => common::pod(bytes),
        St::F16 => bytes
            .chunks(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        St::BF16 => bytes
            .chunks(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => unreachable!(),
    }
}

fn quantize_to(input: &std::path::Path, out: &std::path::Path) -> checkpoint::Summary {
    let ck = Checkpoint::open(input).unwrap();
    let job = QuantizeJob {
        measure: true,
        ..QuantizeJob::default()
    };
    checkpoint::quantize_checkpoint(&ck, out, &job, &cpu_quantizer, &|_| {}).unwrap()
}

#[test]
fn quantize_writes_the_reference_quantizers_bytes_and_copies_the_rest() {
    let mut rng = Rng::new(common::seed());
    let dir = tempfile::tempdir().unwrap();
    let tensors = common::generate(&mut rng, &common::model_tensors());
    let input = dir.path().join("model.safetensors");
    common::write(&input, &tensors);
    let before = std::fs::read(&input).unwrap();
    let out = dir.path().join("model-nvfp4.safetensors");
    let s = quantize_to(&input, &out);
    assert_eq!(std::fs::read(&input).unwrap(), before, "the input was modified");
    assert_eq!(s.quantized, 3);
    assert_eq!(s.layers.len(), 3);
    assert_eq!(
        s.excluded_modules,
        ["lm_head", "model.embed_tokens", "model.norm", "model.odd"]
    );

    let got = common::read_all(&out);
    for (name, (dtype, shape, bytes)) in &tensors {
        let module = name.strip_suffix(".weight").unwrap_or(name);
        if QUANTIZED.contains(&module) {
            let q = match dtype {
                St::F32 => quant::quantize(
                    name,
                    &dense_f32(*dtype, bytes),
                    shape[0],
                    shape[1],
                    &QuantizeOptions::default(),
                ),
                St::F16 => {
                    let v: Vec<f16> = common::pod(bytes);
                    quant::quantize(name, &v, shape[0], shape[1], &QuantizeOptions::default())
                }
                _ => {
                    let v: Vec<bf16> = common::pod(bytes);
                    quant::quantize(name, &v, shape[0], shape[1], &QuantizeOptions::default())
                }
            }
            .unwrap();
            let w = &got[&format!("{module}.weight")];
            assert_eq!((w.0.as_str(), &w.1), ("U8", &vec![shape[0], shape[1] / 2]));
            assert_eq!(w.2, q.codes(), "{name}: codes differ from the CPU reference");
            let sc = &got[&format!("{module}.weight_scale")];
            assert_eq!(
                (sc.0.as_str(), &sc.1),
                ("F8_E4M3", &vec![shape[0], shape[1] / 16])
            );
            assert_eq!(sc.2, q.scales(), "{name}: scales differ");
            let g = &got[&format!("{module}.weight_scale_2")];
            assert_eq!((g.0.as_str(), g.1.len()), ("F32", 0));
            assert_eq!(g.2, q.global_scale().to_le_bytes());
        } else {
            let t = &got[name];
            assert_eq!(
                (&t.0, &t.1, &t.2),
                (&dtype.to_string(), shape, bytes),
                "{name} not copied unchanged"
            );
        }
    }
    // The single-file output carries the quant config in its header.
    let f = checkpoint::TensorFile::open(&out).unwrap();
    let cfg = &f
        .metadata()
        .iter()
        .find(|(k, _)| k == "hf_quant_config")
        .unwrap()
        .1;
    let cfg: serde_json::Value = serde_json::from_str(cfg).unwrap();
    assert_eq!(cfg["quantization"]["quant_algo"], "NVFP4");
    assert_eq!(cfg["quantization"]["group_size"], 16);
}

/// |x - x̂| <= d for every element, d = e4m3(sf) * S2 of its block: half the widest E2M1 gap (4 to 6)
/// is 1 d, and a saturated element (|x/d| > 6 after the scale rounded down) exceeds 6 d by at most
/// 6 d / 15 (E4M3 rounds with relative error <= 1/16). The test adds the f32/bf16 rounding of x̂.
fn assert_within_block_bound(name: &str, x: &[f32], back: &[f32], q: &nvfp4::Nvfp4Tensor, out_ulp: f32) {
    let k = q.cols();
    for (i, (&a, &b)) in x.iter().zip(back).enumerate() {
        let d = e4m3::decode_f32(q.scale_at(i / k, (i % k) / 16)) * q.global_scale();
        let tol = d + b.abs() * out_ulp + 1e-30;
        assert!((a - b).abs() <= tol, "{name}[{i}]: {a} vs {b}, bound {tol}");
    }
}

#[test]
fn quantize_inspect_dequantize_round_trip_single_and_sharded() {
    let mut rng = Rng::new(common::seed());
    let tensors = common::generate(&mut rng, &common::model_tensors());
    let dir = tempfile::tempdir().unwrap();
    let single = dir.path().join("m.safetensors");
    common::write(&single, &tensors);
    let sharded = dir.path().join("sharded");
    common::write_sharded(&sharded, &tensors);

    for (input, out, deq) in [
        (
            single.clone(),
            dir.path().join("q.safetensors"),
            dir.path().join("d.safetensors"),
        ),
        (
            sharded.clone(),
            dir.path().join("q-dir"),
            dir.path().join("d-dir"),
        ),
    ] {
        quantize_to(&input, &out);
        let ck = Checkpoint::open(&out).unwrap();
        let info = checkpoint::inspect(&ck).unwrap();
        assert_eq!(info.flavour, Flavour::ModelOpt);
        assert_eq!(info.layers.len(), 3);
        for l in &info.layers {
            assert!(l.block_scale_range.0 > 0.0 && l.block_scale_range.1 <= 448.0);
        }
        checkpoint::dequantize_checkpoint(&ck, &deq, Dtype::F32, false, &|_| {}).unwrap();
        let back = common::read_all(&deq);
        assert_eq!(
            back.len(),
            tensors.len(),
            "dequantize restores the dense tensor set"
        );
        for module in QUANTIZED {
            let name = format!("{module}.weight");
            let (dt, shape, bytes) = &tensors[&name];
            let b = &back[&name];
            assert_eq!((b.0.as_str(), &b.1), ("F32", shape));
            let layer = checkpoint::read_layer(&ck, module, Flavour::ModelOpt).unwrap();
            let x = dense_f32(*dt, bytes);
            let y: Vec<f32> = common::pod(&b.2);
            assert_eq!(y, quant::dequantize::<f32>(&layer.tensor));
            assert_within_block_bound(&name, &x, &y, &layer.tensor, 0.0);
        }
    }
    // The sharded output keeps the shards, rewrites the index, adds the quant configs, copies files.
    let q = dir.path().join("q-dir");
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(q.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    assert_eq!(
        index["weight_map"]["model.layers.0.mlp.up_proj.weight_scale_2"],
        "model-00001-of-00002.safetensors"
    );
    assert_eq!(
        index["weight_map"]["lm_head.weight"],
        "model-00002-of-00002.safetensors"
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(q.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["quantization_config"]["quant_method"], "modelopt");
    assert_eq!(config["quantization_config"]["quant_algo"], "NVFP4");
    assert_eq!(config["hidden_size"], 64);
    let hf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(q.join("hf_quant_config.json")).unwrap()).unwrap();
    assert_eq!(hf["quantization"]["exclude_modules"][0], "lm_head");
    assert!(q.join("tokenizer.json").is_file());
}

#[test]
fn convert_modelopt_comfy_compressed_tensors_modelopt_is_lossless() {
    let mut rng = Rng::new(common::seed());
    let mut gens = common::model_tensors();
    // An all-zero weight: S2 = 0 is written to compressed-tensors as G = 1.0 (its own fallback) and
    // recovered exactly from the metadata record.
    let zero = "model.layers.0.mlp.gate_proj.weight";
    gens.push(common::Gen {
        name: zero,
        dtype: St::BF16,
        shape: vec![16, 32],
    });
    let mut tensors = common::generate(&mut rng, &gens);
    tensors.get_mut(zero).unwrap().2.fill(0);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("m.safetensors");
    common::write(&input, &tensors);
    let mo = dir.path().join("mo.safetensors");
    quantize_to(&input, &mo);

    let chain = [
        (Flavour::Comfy, "comfy.safetensors"),
        (Flavour::CompressedTensors, "ct.safetensors"),
        (Flavour::ModelOpt, "mo2.safetensors"),
    ];
    let mut prev = mo.clone();
    for (to, name) in chain {
        let out = dir.path().join(name);
        let ck = Checkpoint::open(&prev).unwrap();
        checkpoint::convert_checkpoint(&ck, &out, to, false, &|_| {}).unwrap();
        let back = Checkpoint::open(&out).unwrap();
        assert_eq!(checkpoint::detect(&back), to);
        // Every layer reads back to the same canonical tensor in every flavour.
        for module in QUANTIZED {
            let a =
                checkpoint::read_layer(&Checkpoint::open(&mo).unwrap(), module, Flavour::ModelOpt).unwrap();
            let b = checkpoint::read_layer(&back, module, to).unwrap();
            assert_eq!(a, b, "{module} after {}", to.name());
        }
        prev = out;
    }
    let a = common::read_all(&mo);
    let b = common::read_all(&prev);
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, v) in &a {
        assert_eq!(v, &b[k], "{k} changed along modelopt -> comfy -> ct -> modelopt");
    }

    // The ComfyUI file follows ComfyUI's conventions: high nibble first, rows padded to 16, scales
    // swizzled and padded to [roundup(Np,128), roundup(K/16,4)], a comfy_quant marker.
    let comfy = common::read_all(&dir.path().join("comfy.safetensors"));
    let down = "model.layers.0.mlp.down_proj";
    assert_eq!(comfy[&format!("{down}.weight")].1, vec![48, 16]);
    assert_eq!(comfy[&format!("{down}.weight_scale")].1, vec![128, 4]);
    let marker: serde_json::Value = serde_json::from_slice(&comfy[&format!("{down}.comfy_quant")].2).unwrap();
    assert_eq!(marker["format"], "nvfp4");
    assert_eq!(marker["logical_shape"], serde_json::json!([40, 32]));
    let mo_codes = &a[&format!("{down}.weight")].2;
    let comfy_codes = &comfy[&format!("{down}.weight")].2;
    assert!(
        mo_codes
            .iter()
            .zip(comfy_codes)
            .all(|(&m, &c)| c == m.rotate_left(4))
    );
    assert!(comfy_codes[mo_codes.len()..].iter().all(|&c| c == 0));
    let up = "model.layers.0.mlp.up_proj";
    let up_marker: serde_json::Value =
        serde_json::from_slice(&comfy[&format!("{up}.comfy_quant")].2).unwrap();
    assert_eq!(
        up_marker,
        serde_json::json!({"format": "nvfp4"}),
        "no extra key when nothing is padded"
    );

    // compressed-tensors: weight_packed, encode-convention global scale of shape [1].
    let ct = common::read_all(&dir.path().join("ct.safetensors"));
    let g = &ct[&format!("{up}.weight_global_scale")];
    assert_eq!((g.0.as_str(), &g.1), ("F32", &vec![1]));
    let g = f32::from_le_bytes(g.2[..4].try_into().unwrap());
    let s2 = f32::from_le_bytes(a[&format!("{up}.weight_scale_2")].2[..4].try_into().unwrap());
    // Not every f32 is the reciprocal of an f32: where none near 1/s2 reproduces s2, the writer keeps
    // f32(1/s2), whose reciprocal is within an ulp (the exact s2 travels in the file's metadata).
    assert_eq!(g, nvfp4::checkpoint::encode_global_scale(s2), "s2 {s2:e}");
    let back = 1.0 / g;
    assert!(
        back == s2 || back.to_bits().abs_diff(s2.to_bits()) <= 1,
        "1/G = {back:e} for s2 = {s2:e}"
    );
}

#[test]
fn comfy_rows_come_from_the_bias_when_the_marker_has_no_shape() {
    // A ComfyUI file as ComfyUI writes it: no logical shape anywhere; the bias gives N.
    let mut rng = Rng::new(common::seed());
    let w: Vec<f32> = rng.normal_vec(20 * 32, 1.0);
    let q = quant::quantize("w", &w, 20, 32, &QuantizeOptions::default()).unwrap();
    let layer = checkpoint::QuantizedLayer {
        prefix: "blk.proj".into(),
        tensor: q.clone(),
        input_scale: Some(0.25),
    };
    let mut tensors = std::collections::BTreeMap::new();
    for t in checkpoint::layer_tensors(layer, Flavour::Comfy).unwrap() {
        let bytes = if t.name.ends_with("comfy_quant") {
            br#"{"format": "nvfp4"}"#.to_vec()
        } else {
            t.bytes
        };
        let shape = if t.name.ends_with("comfy_quant") {
            vec![bytes.len()]
        } else {
            t.shape
        };
        tensors.insert(t.name, (t.dtype, shape, bytes));
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.safetensors");
    common::write(&p, &tensors);
    let ck = Checkpoint::open(&p).unwrap();
    let padded = checkpoint::read_layer(&ck, "blk.proj", Flavour::Comfy).unwrap();
    assert_eq!(
        padded.tensor.shape(),
        [32, 32],
        "without a hint the stored rows are N"
    );
    tensors.insert("blk.proj.bias".into(), (St::F32, vec![20], vec![0; 80]));
    common::write(&p.with_extension("b.safetensors"), &tensors);
    let ck = Checkpoint::open(&p.with_extension("b.safetensors")).unwrap();
    let l = checkpoint::read_layer(&ck, "blk.proj", Flavour::Comfy).unwrap();
    assert_eq!(l.tensor, q);
    assert_eq!(l.input_scale, Some(0.25));
}

#[test]
fn compressed_tensors_global_scale_is_exact_where_an_f32_inverse_exists() {
    // Over every f32 S2 in [1, 2): where some f32 G has 1/G == S2, encode_global_scale finds it.
    // About 17% have none (1/x maps [sqrt2, 2) onto fewer f32 values than it holds): there the
    // metadata record carries S2, tested by the conversion round trips.
    let (mut exact, mut none) = (0u32, 0u32);
    for m in 0..(1u32 << 23) {
        let s2 = f32::from_bits((127 << 23) | m);
        if 1.0 / encode_global_scale(s2) == s2 {
            exact += 1;
        } else {
            none += 1;
            // Then no G within 64 ulps works either.
            let g0 = 1.0 / s2;
            for d in -64i32..=64 {
                let g = f32::from_bits((g0.to_bits() as i32 + d) as u32);
                assert_ne!(
                    1.0 / g,
                    s2,
                    "S2 {s2:e} has an exact partner {g:e} the search missed"
                );
            }
            assert!(
                s2 > std::f32::consts::SQRT_2 * 0.999,
                "S2 {s2} below sqrt2 has no partner"
            );
        }
    }
    eprintln!("{exact} of 2^23 decode scales in [1,2) have an exact f32 encode partner, {none} do not");
    assert!(none < (1 << 23) / 5);
}

#[test]
fn a_foreign_compressed_tensors_file_reads_as_one_over_g() {
    let mut rng = Rng::new(common::seed());
    let w: Vec<f32> = rng.normal_vec(16 * 32, 1.0);
    let q = quant::quantize("w", &w, 16, 32, &QuantizeOptions::default()).unwrap();
    let g = 2688.0f32 / 3.0;
    let layer = checkpoint::QuantizedLayer {
        prefix: "m".into(),
        tensor: q,
        input_scale: None,
    };
    let mut tensors = std::collections::BTreeMap::new();
    for t in checkpoint::layer_tensors(layer, Flavour::CompressedTensors).unwrap() {
        let bytes = if t.name == "m.weight_global_scale" {
            g.to_le_bytes().to_vec()
        } else {
            t.bytes
        };
        tensors.insert(t.name, (t.dtype, t.shape, bytes));
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ct.safetensors");
    common::write(&p, &tensors);
    let ck = Checkpoint::open(&p).unwrap();
    assert_eq!(checkpoint::detect(&ck), Flavour::CompressedTensors);
    let l = checkpoint::read_layer(&ck, "m", Flavour::CompressedTensors).unwrap();
    assert_eq!(l.tensor.global_scale(), 1.0 / g);
}

#[test]
fn selection_defaults_follow_seedvr2_and_globs_override() {
    let e = |name: &str, dtype: St, shape: &[usize]| checkpoint::TensorEntry {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
        range: 0..0,
    };
    let sel = Selection::default();
    assert!(
        sel.decide(&e("blocks.0.attn.proj_qkv.weight", St::BF16, &[64, 64]))
            .quantize
    );
    for kept in [
        "blocks.0.attn.proj_qkv.bias",
        "blocks.0.norm1.weight",
        "vid_in.patch_embed.weight",
        "emb.time_embed.0.weight",
        "lm_head.weight",
        "blocks.0.ln_1.weight",
    ] {
        assert!(!sel.decide(&e(kept, St::BF16, &[64, 64])).quantize, "{kept}");
    }
    assert!(
        !sel.decide(&e("a.weight", St::BF16, &[64, 24])).quantize,
        "K % 16"
    );
    assert!(
        !sel.decide(&e("a.weight", St::BF16, &[64, 4, 4])).quantize,
        "not 2-D"
    );
    assert!(
        !sel.decide(&e("a.weight", St::I32, &[64, 64])).quantize,
        "not a float"
    );
    let sel = Selection {
        include: vec!["lm_head".into()],
        exclude: vec!["blocks.1.*".into()],
    };
    assert!(sel.decide(&e("lm_head.weight", St::BF16, &[64, 64])).quantize);
    assert!(
        !sel.decide(&e("blocks.1.mlp.weight", St::BF16, &[64, 64]))
            .quantize
    );
    assert!(checkpoint::glob_match(
        "model.layers.*.mlp*",
        "model.layers.10.mlp.up_proj"
    ));
    assert!(!checkpoint::glob_match(
        "model.layers.?.mlp",
        "model.layers.10.mlp"
    ));
}

#[test]
fn dense_views_match_every_dtype() {
    let mut rng = Rng::new(common::seed());
    let tensors = common::generate(&mut rng, &common::model_tensors());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    common::write(&p, &tensors);
    let f = checkpoint::TensorFile::open(&p).unwrap();
    for e in f.entries() {
        let (dt, _, bytes) = &tensors[&e.name];
        match f.dense(e) {
            Ok(Dense::F32(v)) => assert_eq!(bytemuck::cast_slice::<f32, u8>(&v), &bytes[..]),
            Ok(Dense::F16(v)) => assert_eq!(bytemuck::cast_slice::<f16, u8>(&v), &bytes[..]),
            Ok(Dense::Bf16(v)) => assert_eq!(bytemuck::cast_slice::<bf16, u8>(&v), &bytes[..]),
            Err(nvfp4::Error::UnsupportedDtype { .. }) => assert_eq!(*dt, St::I64),
            Err(e) => panic!("{e}"),
        }
    }
}

/// The CPU quantizer through [`checkpoint::CheckpointQuantizer`], returning made-up error sums (or
/// none) and counting its calls.
struct Scripted {
    stats: Option<quant::ErrorStats>,
    calls: usize,
    measured: usize,
}

impl checkpoint::CheckpointQuantizer for Scripted {
    fn quantize(
        &mut self,
        name: &str,
        data: &Dense<'_>,
        rows: usize,
        cols: usize,
        opts: &QuantizeOptions,
        measure: bool,
    ) -> nvfp4::Result<(nvfp4::Nvfp4Tensor, Option<quant::ErrorStats>)> {
        self.calls += 1;
        self.measured += usize::from(measure);
        Ok((cpu_quantizer(name, data, rows, cols, opts)?, self.stats))
    }
}

#[test]
fn a_checkpoint_quantizer_may_supply_its_own_error_sums() {
    let mut rng = Rng::new(common::seed());
    let dir = tempfile::tempdir().unwrap();
    let tensors = common::generate(&mut rng, &common::model_tensors());
    let input = dir.path().join("model.safetensors");
    common::write(&input, &tensors);
    let ck = Checkpoint::open(&input).unwrap();
    let reference = dir.path().join("cpu.safetensors");
    let cpu = quantize_to(&input, &reference);
    let run = |stats, measure, out: &str| {
        let mut q = Scripted {
            stats,
            calls: 0,
            measured: 0,
        };
        let job = QuantizeJob {
            measure,
            ..QuantizeJob::default()
        };
        let out = dir.path().join(out);
        let s = checkpoint::quantize_checkpoint_with(&ck, &out, &job, &mut q, &|_| {}).unwrap();
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(&reference).unwrap(),
            "{out:?}"
        );
        (s, q.calls, q.measured)
    };
    // Sums it supplies are what the report shows; the CPU measure does not run.
    let given = quant::ErrorStats {
        signal: 4.0,
        noise: 0.04,
        max_abs: 0.5,
    };
    let (s, calls, measured) = run(Some(given), true, "given.safetensors");
    assert_eq!((calls, measured), (3, 3));
    for l in &s.layers {
        assert!(
            (l.snr_db - 20.0).abs() < 1e-12 && (l.rel_rmse - 0.1).abs() < 1e-12,
            "{l:?}"
        );
        assert_eq!(l.max_abs, 0.5);
    }
    let names: Vec<&str> = s.layers.iter().map(|l| l.name.as_str()).collect();
    let cpu_names: Vec<&str> = cpu.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, cpu_names);
    // None: the pipeline measures on the CPU, as quantize_checkpoint does.
    // (Equal up to the order of rayon's f64 reduction.)
    let (s, _, _) = run(None, true, "none.safetensors");
    assert_eq!(s.layers.len(), cpu.layers.len());
    for (a, b) in s.layers.iter().zip(&cpu.layers) {
        assert_eq!((&a.name, a.shape, a.max_abs), (&b.name, b.shape, b.max_abs));
        assert!(
            ((a.rel_rmse - b.rel_rmse) / b.rel_rmse).abs() < 1e-12,
            "{a:?} vs {b:?}"
        );
    }
    // Without measuring there is no report, whatever the quantizer returns.
    let (s, _, measured) = run(Some(given), false, "off.safetensors");
    assert!(s.layers.is_empty());
    assert_eq!(measured, 0);
}
