//! Generated checkpoints for the checkpoint and CLI tests, written with the `safetensors` crate's own
//! serializer (so the reader is tested against an independent writer).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use half::{bf16, f16};
use nvfp4::reference::synthetic::Rng;
use safetensors::{Dtype, tensor::TensorView};

/// A dense tensor to write: name, dtype, shape, values (converted to the dtype).
pub struct Gen {
    pub name: &'static str,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

/// The model the tests quantize: quantizable weights in all three dtypes with N not a multiple of
/// 16 (ComfyUI row padding) and of 128 (swizzle padding), and tensors the default keeps.
pub fn model_tensors() -> Vec<Gen> {
    let g = |name, dtype, shape: &[usize]| Gen {
        name,
        dtype,
        shape: shape.to_vec(),
    };
    vec![
        g("model.layers.0.mlp.up_proj.weight", Dtype::BF16, &[48, 64]),
        g("model.layers.0.mlp.down_proj.weight", Dtype::F16, &[40, 32]),
        g("model.layers.0.self_attn.q_proj.weight", Dtype::F32, &[130, 48]),
        g("model.layers.0.self_attn.q_proj.bias", Dtype::F32, &[130]),
        g("model.norm.weight", Dtype::BF16, &[64]),
        g("model.embed_tokens.weight", Dtype::BF16, &[32, 64]),
        g("lm_head.weight", Dtype::BF16, &[32, 64]),
        g("model.odd.weight", Dtype::BF16, &[8, 24]),
        g("model.step", Dtype::I64, &[1]),
    ]
}

/// Bytes of `values` in `dtype`.
pub fn encode(dtype: Dtype, values: &[f32]) -> Vec<u8> {
    match dtype {
        Dtype::F32 => bytemuck::cast_slice(values).to_vec(),
        Dtype::F16 => values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect(),
        Dtype::I64 => values.iter().flat_map(|&v| (v as i64).to_le_bytes()).collect(),
        Dtype::I32 => values.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect(),
        _ => values.iter().map(|&v| v as u8).collect(),
    }
}

/// Random bytes for every tensor of `gens`.
pub fn generate(rng: &mut Rng, gens: &[Gen]) -> BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> {
    gens.iter()
        .map(|g| {
            let n: usize = g.shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|i| match i % 97 {
                    0 => 0.0,
                    1 => rng.normal() * 40.0,
                    _ => rng.normal() * 0.02,
                })
                .collect();
            (
                g.name.to_string(),
                (g.dtype, g.shape.clone(), encode(g.dtype, &v)),
            )
        })
        .collect()
}

/// Writes `tensors` as one safetensors file with the `safetensors` crate.
pub fn write(path: &Path, tensors: &BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// Writes `tensors` as a sharded model in `dir`: two shards split by name, the index and a config.
pub fn write_sharded(dir: &Path, tensors: &BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>) {
    std::fs::create_dir_all(dir).unwrap();
    let (a, b): (BTreeMap<_, _>, BTreeMap<_, _>) = tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .partition(|(k, _)| k.contains("layers"));
    let names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    write(&dir.join(names[0]), &a);
    write(&dir.join(names[1]), &b);
    let mut map = serde_json::Map::new();
    for k in a.keys() {
        map.insert(k.clone(), names[0].into());
    }
    for k in b.keys() {
        map.insert(k.clone(), names[1].into());
    }
    let index = serde_json::json!({ "metadata": { "total_size": 0 }, "weight_map": map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"architectures": ["Test"], "hidden_size": 64}"#,
    )
    .unwrap();
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
}

/// Every tensor of a checkpoint (file or directory), by name.
pub fn read_all(path: &Path) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let ck = nvfp4::checkpoint::Checkpoint::open(path).unwrap();
    ck.names()
        .map(|n| {
            let (f, e) = ck.get(n).unwrap();
            (
                n.to_string(),
                (e.dtype.to_string(), e.shape.clone(), f.bytes(e).to_vec()),
            )
        })
        .collect()
}

/// A fresh seed, printed so a failure can be replayed with `NVFP4_SEED`.
pub fn seed() -> u64 {
    let s = std::env::var("NVFP4_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(Rng::fresh_seed);
    eprintln!("seed {s} (replay with NVFP4_SEED={s})");
    s
}

/// `bytes` reinterpreted as `T`s (copied, so any alignment works).
pub fn pod<T: bytemuck::Pod>(bytes: &[u8]) -> Vec<T> {
    let mut v = vec![T::zeroed(); bytes.len() / std::mem::size_of::<T>()];
    bytemuck::cast_slice_mut::<T, u8>(&mut v).copy_from_slice(bytes);
    v
}
