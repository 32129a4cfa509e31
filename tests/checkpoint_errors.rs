//! Every bad input gets its own typed error naming the file and the tensor.

#[path = "checkpoint_common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::Path;

use nvfp4::Error;
use nvfp4::checkpoint::{self, Checkpoint, Flavour, QuantizeJob, Selection, cpu_quantizer};
use nvfp4::reference::synthetic::Rng;
use safetensors::Dtype as St;

type Tensors = BTreeMap<String, (St, Vec<usize>, Vec<u8>)>;

fn one(name: &str, dtype: St, shape: &[usize], values: &[f32]) -> Tensors {
    let mut t = Tensors::new();
    t.insert(
        name.into(),
        (dtype, shape.to_vec(), common::encode(dtype, values)),
    );
    t
}

fn quantize(input: &Path, out: &Path, sel: Selection) -> nvfp4::Result<checkpoint::Summary> {
    let ck = Checkpoint::open(input)?;
    let job = QuantizeJob {
        selection: sel,
        ..QuantizeJob::default()
    };
    checkpoint::quantize_checkpoint(&ck, out, &job, &cpu_quantizer, &|_| {})
}

/// A raw file: an 8-byte little-endian header length, the header, then `data`.
fn raw(path: &Path, header: &str, data: &[u8]) {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    std::fs::write(path, b).unwrap();
}

#[test]
fn truncated_or_corrupt_headers_are_corrupt_header_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, Vec<u8>); 4] = [
        ("short.safetensors", vec![1, 2, 3]),
        ("prefix.safetensors", {
            let mut b = 1000u64.to_le_bytes().to_vec();
            b.extend_from_slice(b"{}");
            b
        }),
        ("json.safetensors", {
            let mut b = 9u64.to_le_bytes().to_vec();
            b.extend_from_slice(b"{\"a\": nul");
            b
        }),
        ("dtype.safetensors", {
            let h = r#"{"w":{"dtype":"Q7","shape":[1],"data_offsets":[0,1]}}"#;
            let mut b = (h.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(h.as_bytes());
            b.push(0);
            b
        }),
    ];
    for (name, bytes) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        match Checkpoint::open(&p) {
            Err(Error::CorruptHeader { file, .. }) => assert!(file.ends_with(name)),
            Err(e) => panic!("{name}: wrong error {e}"),
            Ok(_) => panic!("{name}: accepted"),
        }
    }
}

#[test]
fn offsets_outside_the_file_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("oob.safetensors");
    raw(
        &p,
        r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"big.weight":{"dtype":"BF16","shape":[16,16],"data_offsets":[4,516]}}"#,
        &[0u8; 20],
    );
    match Checkpoint::open(&p) {
        Err(Error::TensorOutOfBounds {
            file,
            tensor,
            start,
            end,
            data_len,
        }) => {
            assert!(file.ends_with("oob.safetensors"));
            assert_eq!(
                (tensor.as_str(), start, end, data_len),
                ("big.weight", 4, 516, 20)
            );
        }
        other => panic!("{:?}", other.err()),
    }
    // A file cut short after a valid header: the same error.
    let mut rng = Rng::new(common::seed());
    let t = common::generate(&mut rng, &common::model_tensors());
    let good = dir.path().join("good.safetensors");
    common::write(&good, &t);
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    assert!(matches!(
        Checkpoint::open(&cut),
        Err(Error::TensorOutOfBounds { .. })
    ));
}

#[test]
fn unsupported_dtype_on_an_included_tensor_and_on_a_scale() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("i.safetensors");
    common::write(&p, &one("a.weight", St::I32, &[16, 16], &[1.0; 256]));
    let sel = Selection {
        include: vec!["a".into()],
        ..Selection::default()
    };
    match quantize(&p, &dir.path().join("o.safetensors"), sel) {
        Err(Error::UnsupportedDtype {
            file, tensor, dtype, ..
        }) => {
            assert!(file.ends_with("i.safetensors"));
            assert_eq!((tensor.as_str(), dtype.as_str()), ("a.weight", "I32"));
        }
        other => panic!("{:?}", other.err()),
    }
    // Without --include the I32 tensor is simply copied.
    quantize(&p, &dir.path().join("o.safetensors"), Selection::default()).unwrap();

    // A ModelOpt layer whose global scale is BF16.
    let mut t = one("l.weight", St::U8, &[16, 8], &[0.0; 128]);
    t.insert(
        "l.weight_scale".into(),
        (St::F8_E4M3, vec![16, 1], vec![0x38; 16]),
    );
    t.insert("l.weight_scale_2".into(), (St::BF16, vec![], vec![0, 0x3f]));
    let q = dir.path().join("q.safetensors");
    common::write(&q, &t);
    let ck = Checkpoint::open(&q).unwrap();
    match checkpoint::read_layer(&ck, "l", Flavour::ModelOpt) {
        Err(Error::UnsupportedDtype { tensor, dtype, .. }) => {
            assert_eq!((tensor.as_str(), dtype.as_str()), ("l.weight_scale_2", "BF16"))
        }
        other => panic!("{:?}", other.err()),
    }
}

#[test]
fn k_not_a_multiple_of_16_on_an_included_tensor_is_a_shape_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k.safetensors");
    common::write(&p, &one("odd.weight", St::BF16, &[4, 24], &[1.0; 96]));
    // Kept by default...
    let s = quantize(&p, &dir.path().join("o1.safetensors"), Selection::default()).unwrap();
    assert_eq!((s.quantized, s.copied), (0, 1));
    // ...an error when asked for.
    let sel = Selection {
        include: vec!["odd.*".into()],
        ..Selection::default()
    };
    match quantize(&p, &dir.path().join("o2.safetensors"), sel) {
        Err(Error::Shape { name, shape, .. }) => {
            assert!(
                name.contains("k.safetensors") && name.ends_with("odd.weight"),
                "{name}"
            );
            assert_eq!(shape, [4, 24]);
        }
        other => panic!("{:?}", other.err()),
    }
    assert!(!dir.path().join("o2.safetensors").exists());
}

#[test]
fn a_missing_shard_is_named() {
    let mut rng = Rng::new(common::seed());
    let t = common::generate(&mut rng, &common::model_tensors());
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    common::write_sharded(&m, &t);
    std::fs::remove_file(m.join("model-00002-of-00002.safetensors")).unwrap();
    match Checkpoint::open(&m) {
        Err(Error::MissingShard { index, shard, tensor }) => {
            assert!(index.ends_with("model.safetensors.index.json"));
            assert_eq!(shard, "model-00002-of-00002.safetensors");
            assert!(!tensor.contains("layers"), "{tensor}");
        }
        other => panic!("{:?}", other.err()),
    }
}

#[test]
fn nan_or_inf_in_a_weight_names_the_index() {
    let dir = tempfile::tempdir().unwrap();
    for (bad, what) in [(f32::NAN, "nan"), (f32::NEG_INFINITY, "inf")] {
        let mut v = vec![0.5f32; 64];
        v[37] = bad;
        let p = dir.path().join(format!("{what}.safetensors"));
        common::write(&p, &one("w.weight", St::BF16, &[4, 16], &v));
        match quantize(
            &p,
            &dir.path().join(format!("{what}-out.safetensors")),
            Selection::default(),
        ) {
            Err(Error::NonFinite {
                name,
                index,
                row,
                col,
                ..
            }) => {
                assert!(
                    name.contains(&format!("{what}.safetensors")) && name.ends_with("w.weight"),
                    "{name}"
                );
                assert_eq!((index, row, col), (37, 2, 5));
            }
            other => panic!("{:?}", other.err()),
        }
        assert!(
            !dir.path().join(format!("{what}-out.safetensors")).exists(),
            "partial output left"
        );
    }
}

#[test]
fn scale_shapes_that_do_not_fit_their_weight() {
    let dir = tempfile::tempdir().unwrap();
    let base = || {
        let mut t = one("l.weight", St::U8, &[16, 16], &[0.0; 256]);
        t.insert(
            "l.weight_scale_2".into(),
            (St::F32, vec![], 1f32.to_le_bytes().to_vec()),
        );
        t
    };
    let cases = [
        ("l.weight_scale", vec![16, 3], Flavour::ModelOpt),
        ("l.weight_scale", vec![2, 16], Flavour::ModelOpt),
        ("l.weight_scale", vec![16, 2], Flavour::Comfy),
    ];
    for (i, (name, shape, flavour)) in cases.into_iter().enumerate() {
        let mut t = base();
        let n: usize = shape.iter().product();
        t.insert(name.into(), (St::F8_E4M3, shape.clone(), vec![0x38; n]));
        if flavour == Flavour::Comfy {
            t.insert(
                "l.comfy_quant".into(),
                (St::U8, vec![18], br#"{"format":"nvfp4"}"#.to_vec()),
            );
        }
        let p = dir.path().join(format!("s{i}.safetensors"));
        common::write(&p, &t);
        let ck = Checkpoint::open(&p).unwrap();
        assert_eq!(checkpoint::detect(&ck), flavour);
        match checkpoint::read_layer(&ck, "l", flavour) {
            Err(Error::ScaleShape {
                file,
                tensor,
                shape: s,
                ..
            }) => {
                assert!(file.ends_with(&format!("s{i}.safetensors")));
                assert_eq!((tensor.as_str(), s), (name, shape));
            }
            other => panic!("{:?}", other.err()),
        }
        // inspect and convert report the same error.
        assert!(matches!(checkpoint::inspect(&ck), Err(Error::ScaleShape { .. })));
    }
    // A global scale with two elements.
    let mut t = base();
    t.insert(
        "l.weight_scale".into(),
        (St::F8_E4M3, vec![16, 2], vec![0x38; 32]),
    );
    t.insert("l.weight_scale_2".into(), (St::F32, vec![2], vec![0; 8]));
    let p = dir.path().join("g.safetensors");
    common::write(&p, &t);
    let ck = Checkpoint::open(&p).unwrap();
    assert!(matches!(
        checkpoint::read_layer(&ck, "l", Flavour::ModelOpt),
        Err(Error::ScaleShape { tensor, .. }) if tensor == "l.weight_scale_2"
    ));
}

#[test]
fn an_existing_output_is_refused_unless_forced_and_never_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("i.safetensors");
    common::write(&p, &one("w.weight", St::BF16, &[4, 16], &[1.0; 64]));
    let out = dir.path().join("o.safetensors");
    std::fs::write(&out, b"keep me").unwrap();
    assert!(matches!(
        quantize(&p, &out, Selection::default()),
        Err(Error::OutputExists { .. })
    ));
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    let ck = Checkpoint::open(&p).unwrap();
    let job = QuantizeJob {
        force: true,
        ..QuantizeJob::default()
    };
    checkpoint::quantize_checkpoint(&ck, &out, &job, &cpu_quantizer, &|_| {}).unwrap();
    assert!(Checkpoint::open(&out).is_ok());
    // Even forced, the input itself is never the output.
    let before = std::fs::read(&p).unwrap();
    assert!(checkpoint::quantize_checkpoint(&ck, &p, &job, &cpu_quantizer, &|_| {}).is_err());
    assert_eq!(std::fs::read(&p).unwrap(), before);
    // No temporaries left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("nvfp4-partial"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
