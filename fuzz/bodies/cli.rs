//! The JSON files the CLI reads beside a model's shards: the sharded index
//! (`model.safetensors.index.json`, parsed by [`Checkpoint::open`]) and `config.json`
//! ([`Checkpoint::config`], rewritten with the flavour's `quantization_config` on quantize/convert).
//! Never panics; every error is a checkpoint error naming the index or a shard.
//!
//! Input: `FLAGS INDEX 0x00 CONFIG [0x00 SHARD2]`. Two fixed shards are written beside the index
//! ([`SHARDS`]); a non-empty `SHARD2` replaces the second one's bytes. No `CONFIG` bytes: no
//! `config.json`. Flag bit 0: open the index file instead of the directory; bit 1: also
//! quantize/convert/dequantize the model (bits 2.. pick which), which reads and rewrites `config.json`.
//!
//! Shared by the libFuzzer target (fuzz/fuzz_targets/) and the stable replay test
//! (tests/fuzz_replay.rs), so a crash found once stays a regression test.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nvfp4::checkpoint::{Checkpoint, FileWriter, INDEX_NAME, TensorSpec};
use safetensors::Dtype;

#[allow(dead_code)]
#[path = "checkpoint.rs"]
pub mod ck_body;

/// The two shards' names, and their tensors: dense weights the quantizer takes, and ones it keeps.
pub const SHARDS: [&str; 2] = [
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
];

fn shard_specs(i: usize) -> Vec<TensorSpec> {
    let s = |name: &str, dtype, shape: &[usize]| TensorSpec {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
    };
    if i == 0 {
        vec![
            s("model.layers.0.mlp.up_proj.weight", Dtype::BF16, &[32, 32]),
            s("model.norm.weight", Dtype::BF16, &[32]),
        ]
    } else {
        vec![
            s("model.layers.0.self_attn.q_proj.weight", Dtype::F32, &[16, 32]),
            s("lm_head.weight", Dtype::BF16, &[16, 32]),
        ]
    }
}

/// The fixed shards' bytes, written once per process with the crate's own writer.
fn shard_bytes() -> &'static [Vec<u8>; 2] {
    static BYTES: OnceLock<[Vec<u8>; 2]> = OnceLock::new();
    BYTES.get_or_init(|| {
        let dir = ck_body::scratch("cli-shards");
        [0, 1].map(|i| {
            let p = dir.join(SHARDS[i]);
            let _ = std::fs::remove_file(&p);
            let specs = shard_specs(i);
            let mut w = FileWriter::create(&p, specs.clone(), &[]).expect("fixed shard");
            for s in &specs {
                let bytes: Vec<u8> = (0..s.byte_len()).map(|j| (j * 7 % 61) as u8 ^ 0x3c).collect();
                w.write(&s.name, &bytes).expect("fixed shard");
            }
            w.finish().expect("fixed shard");
            std::fs::read(&p).expect("fixed shard")
        })
    })
}

fn put(path: &Path, bytes: Option<&[u8]>) {
    match bytes {
        Some(b) => std::fs::write(path, b).expect("scratch write"),
        None => {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Runs one input; panics on a property violation.
pub fn run(data: &[u8]) {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let mut parts = body.splitn(3, |&b| b == 0);
    let index = parts.next().unwrap_or_default();
    let config = parts.next().filter(|c| !c.is_empty());
    let shard2 = parts.next().filter(|s| !s.is_empty());
    let shards = shard_bytes();
    let dir = ck_body::scratch("cli").join("model");
    std::fs::create_dir_all(&dir).expect("scratch directory");
    let paths: Vec<PathBuf> = [INDEX_NAME, SHARDS[0], SHARDS[1], "config.json"]
        .iter()
        .map(|n| dir.join(n))
        .collect();
    put(&paths[0], Some(index));
    put(&paths[1], Some(&shards[0]));
    put(&paths[2], Some(shard2.unwrap_or(&shards[1])));
    put(&paths[3], config);
    let files: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let input = if flags & 1 != 0 { &paths[0] } else { &dir };
    match Checkpoint::open(input) {
        Ok(ck) => {
            assert!(ck.is_sharded(), "an index input opens as a sharded model");
            ck_body::exercise(&ck, &files);
            if flags & 2 != 0 {
                let out = dir.with_file_name("out");
                ck_body::write_through(&ck, &out, flags >> 2, &files);
            }
        }
        Err(e) => ck_body::check_error(&e, &files),
    }
}
