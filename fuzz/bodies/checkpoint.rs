//! The checkpoint readers on arbitrary files: header parse ([`Checkpoint::open`]), flavour detection,
//! every layer read in every flavour, dense views, inspect, the quantize plan, and (flag bit 1) a whole
//! convert / dequantize / quantize of the file. Never panics; every error is a checkpoint error
//! (and those that carry a file name name the file read).
//!
//! Input: one flag byte, then the file. Flag bit 0 set: the file is framed, `HEADER 0x00 DATA`, and the
//! body writes the 8-byte length prefix itself, so mutations of a real header's JSON keep a
//! consistent prefix; clear: the bytes are the file verbatim.
//!
//! Shared by the libFuzzer target (fuzz/fuzz_targets/) and the stable replay test
//! (tests/fuzz_replay.rs), so a crash found once stays a regression test.

use std::path::{Path, PathBuf};

use nvfp4::Error;
use nvfp4::checkpoint::{self, Checkpoint, Flavour, QuantizeJob, Selection};
use nvfp4::format::Dtype;

const FLAVOURS: [Flavour; 4] = [
    Flavour::Dense,
    Flavour::ModelOpt,
    Flavour::CompressedTensors,
    Flavour::Comfy,
];

/// A scratch directory of this process (libFuzzer runs inputs one at a time per process).
pub fn scratch(what: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nvfp4-fuzz-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("scratch directory");
    d
}

/// Panics unless `e` is an error a checkpoint reader may return for bad input; errors with a file
/// field must name a file of the checkpoint (`files` holds their paths).
pub fn check_error(e: &Error, files: &[&Path]) {
    let msg = e.to_string();
    assert!(!msg.is_empty(), "empty message for {e:?}");
    let file = match e {
        Error::CorruptHeader { file, .. }
        | Error::TensorOutOfBounds { file, .. }
        | Error::UnsupportedDtype { file, .. }
        | Error::ScaleShape { file, .. } => Some(file),
        Error::MissingShard { index, .. } => Some(index),
        Error::Io { .. }
        | Error::Shape { .. }
        | Error::Length { .. }
        | Error::ShapeOverflow { .. }
        | Error::NonFinite { .. }
        | Error::InvalidValue { .. }
        | Error::OutputExists { .. } => None,
        other => panic!("a checkpoint reader returned an unexpected error: {other:?}"),
    };
    if let Some(file) = file {
        assert!(
            files.iter().any(|p| Path::new(file).starts_with(p)),
            "error names `{file}`, not one of {files:?}: {msg}"
        );
    }
}

/// Everything read-only that can be done with an opened checkpoint; `files` as for [`check_error`].
pub fn exercise(ck: &Checkpoint, files: &[&Path]) {
    let ok = |r: nvfp4::Result<()>| {
        if let Err(e) = r {
            check_error(&e, files);
        }
    };
    let _ = checkpoint::detect(ck);
    for f in ck.files() {
        for e in f.entries() {
            assert_eq!(f.bytes(e).len(), e.len());
            match f.dense(e) {
                Ok(d) => assert_eq!(d.len(), e.shape.iter().product::<usize>(), "{}", e.name),
                Err(err) => check_error(&err, files),
            }
        }
    }
    for (prefix, found) in checkpoint::find_layers(ck) {
        for fl in FLAVOURS {
            match checkpoint::layer_shape(ck, &prefix, fl) {
                Ok((_, k, _)) => {
                    // K is twice the packed columns, exactly (no wrapped arithmetic, even in builds
                    // without overflow checks).
                    let w = if fl == Flavour::CompressedTensors {
                        "weight_packed"
                    } else {
                        "weight"
                    };
                    let (_, e) = ck.get(&format!("{prefix}.{w}")).expect("shaped, so present");
                    assert_eq!(k as u128, 2 * e.shape[1] as u128, "{prefix}: K of {:?}", e.shape);
                }
                Err(e) => check_error(&e, files),
            }
            ok(checkpoint::layer_global_scale(ck, &prefix, fl).map(drop));
            match checkpoint::read_layer(ck, &prefix, fl) {
                Ok(l) => {
                    if fl == found {
                        let [n, k] = l.tensor.shape();
                        let (sn, sk, _) = checkpoint::layer_shape(ck, &prefix, fl).expect("read, so shaped");
                        assert_eq!((n, k), (sn, sk), "{prefix}: read_layer and layer_shape disagree");
                    }
                    for to in FLAVOURS {
                        ok(checkpoint::layer_tensors(l.clone(), to).map(drop));
                    }
                }
                Err(e) => check_error(&e, files),
            }
        }
    }
    ok(checkpoint::inspect(ck).map(|i| drop(i.to_json())));
    ok(checkpoint::plan_quantize(ck, &Selection::default()).map(drop));
    ok(ck.config().map(drop));
}

/// Whole-checkpoint writes from `ck` into `out` (removed afterwards), chosen by `sel`.
pub fn write_through(ck: &Checkpoint, out: &Path, sel: u8, files: &[&Path]) {
    let none = |_: u64| {};
    let r = match sel % 5 {
        0 => checkpoint::convert_checkpoint(ck, out, Flavour::ModelOpt, true, &none),
        1 => checkpoint::convert_checkpoint(ck, out, Flavour::CompressedTensors, true, &none),
        2 => checkpoint::convert_checkpoint(ck, out, Flavour::Comfy, true, &none),
        3 => checkpoint::dequantize_checkpoint(ck, out, Dtype::Bf16, true, &none),
        _ => {
            let job = QuantizeJob {
                selection: Selection::default(),
                options: Default::default(),
                force: true,
                measure: true,
            };
            checkpoint::quantize_checkpoint(ck, out, &job, &checkpoint::cpu_quantizer, &none)
        }
    };
    match r {
        Ok(_) => {
            // What was written reads back.
            match Checkpoint::open(out) {
                Ok(back) => exercise(&back, &[out]),
                Err(e) => panic!("our own output does not open: {e}"),
            }
        }
        Err(e) => {
            check_error(&e, files);
            assert!(!out.exists(), "a failed write left {}", out.display());
        }
    }
    if out.is_dir() {
        let _ = std::fs::remove_dir_all(out);
    } else {
        let _ = std::fs::remove_file(out);
    }
}

/// Runs one input; panics on a property violation.
pub fn run(data: &[u8]) {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let dir = scratch("checkpoint");
    let path = dir.join("in.safetensors");
    let bytes = if flags & 1 != 0 {
        let cut = body.iter().position(|&b| b == 0).unwrap_or(body.len());
        let (header, rest) = body.split_at(cut);
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header);
        v.extend_from_slice(rest.get(1..).unwrap_or_default());
        v
    } else {
        body.to_vec()
    };
    std::fs::write(&path, &bytes).expect("scratch write");
    let files = [path.as_path()];
    match Checkpoint::open(&path) {
        Ok(ck) => {
            exercise(&ck, &files);
            if flags & 2 != 0 {
                write_through(&ck, &dir.join("out.safetensors"), flags >> 2, &files);
            }
        }
        Err(e) => check_error(&e, &files),
    }
}
