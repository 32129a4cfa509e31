//! What a checkpoint holds: tensors, dtypes, shapes, bytes, its flavour and each NVFP4 layer's scales.

use super::flavour::{self, Flavour};
use super::source::Checkpoint;
use crate::error::Result;
use crate::format::e4m3;

/// One NVFP4 layer as `inspect` reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSummary {
    /// Module name.
    pub prefix: String,
    /// How it is stored.
    pub flavour: Flavour,
    /// Logical `[N, K]`.
    pub shape: [usize; 2],
    /// Decode-convention global scale.
    pub global_scale: f32,
    /// Smallest and largest block scale (decoded E4M3 values).
    pub block_scale_range: (f32, f32),
    /// Block scales that are zero (their blocks decode to zero).
    pub zero_blocks: usize,
    /// The activation scale, when calibrated.
    pub input_scale: Option<f32>,
}

/// The summary of a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Inspection {
    /// The detected flavour.
    pub flavour: Flavour,
    /// The files read.
    pub files: Vec<String>,
    /// Every tensor: name, dtype, shape, bytes.
    pub tensors: Vec<(String, String, Vec<usize>, usize)>,
    /// Every NVFP4 layer.
    pub layers: Vec<LayerSummary>,
}

impl Inspection {
    /// Total bytes of tensor data.
    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.3 as u64).sum()
    }

    /// As JSON (what `nvfp4 inspect --json` prints).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "flavour": self.flavour.name(),
            "files": self.files,
            "total_bytes": self.total_bytes(),
            "tensors": self.tensors.iter().map(|(n, d, s, b)| serde_json::json!({
                "name": n, "dtype": d, "shape": s, "bytes": b,
            })).collect::<Vec<_>>(),
            "layers": self.layers.iter().map(|l| serde_json::json!({
                "name": l.prefix,
                "flavour": l.flavour.name(),
                "shape": l.shape,
                "global_scale": l.global_scale,
                "block_scale_min": l.block_scale_range.0,
                "block_scale_max": l.block_scale_range.1,
                "zero_blocks": l.zero_blocks,
                "input_scale": l.input_scale,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Reads every layer of `ck` (validating it as [`flavour::read_layer`] does) and summarizes it.
///
/// ```no_run
/// let ck = nvfp4::checkpoint::Checkpoint::open("model-nvfp4.safetensors".as_ref())?;
/// let i = nvfp4::checkpoint::inspect(&ck)?;
/// println!("{:?}: {} NVFP4 layers", i.flavour, i.layers.len());
/// # Ok::<(), nvfp4::Error>(())
/// ```
pub fn inspect(ck: &Checkpoint) -> Result<Inspection> {
    let mut tensors = Vec::new();
    for name in ck.names() {
        if let Some((_, e)) = ck.get(name) {
            tensors.push((e.name.clone(), e.dtype.to_string(), e.shape.clone(), e.len()));
        }
    }
    let mut layers = Vec::new();
    for (prefix, f) in flavour::find_layers(ck) {
        let l = flavour::read_layer(ck, &prefix, f)?;
        let (mut lo, mut hi, mut zeros) = (f32::INFINITY, 0.0f32, 0usize);
        for &b in l.tensor.scales() {
            let v = e4m3::decode_f32(b).abs();
            if v == 0.0 {
                zeros += 1;
            }
            lo = lo.min(v);
            hi = hi.max(v);
        }
        layers.push(LayerSummary {
            prefix,
            flavour: f,
            shape: l.tensor.shape(),
            global_scale: l.tensor.global_scale(),
            block_scale_range: if lo.is_finite() { (lo, hi) } else { (0.0, 0.0) },
            zero_blocks: zeros,
            input_scale: l.input_scale,
        });
    }
    Ok(Inspection {
        flavour: flavour::detect(ck),
        files: ck
            .files()
            .iter()
            .map(|f| f.path().display().to_string())
            .collect(),
        tensors,
        layers,
    })
}
