//! Checkpoints: safetensors in and out (ModelOpt/HF, compressed-tensors, ComfyUI flavours).
//!
//! Depends on [`crate::quant`] and [`crate::format`] only, never on `cuda`: a GPU quantize is the
//! caller's `ops` call, passed in as a [`Quantizer`] or a [`CheckpointQuantizer`] (`ops::GpuQuantizer`
//! is one).
//!
//! - [`TensorFile`], [`Checkpoint`]: memory-mapped safetensors files and sharded models
//!   (`model.safetensors.index.json`), validated by the `safetensors` crate; bad input is a typed
//!   error naming the file and tensor.
//! - [`Flavour`], [`read_layer`], [`layer_tensors`]: one NVFP4 layer in each flavour's tensors.
//! - [`quantize_checkpoint`], [`convert_checkpoint`], [`dequantize_checkpoint`]: whole checkpoints,
//!   written tensor by tensor into a temporary name and renamed when complete.
//! - [`inspect`]: what a file holds.
//!
//! **Exactness of conversions.** Codes and block-scale bytes are carried exactly between flavours;
//! only their layout changes (ComfyUI: nibble swap, rows padded to 16, scales swizzled 128x4 with
//! 0x00 padding). ModelOpt and ComfyUI store the same decode-convention global scale `S2`, so those
//! conversions dequantize to identical values. compressed-tensors stores the encode scale `G` and
//! dequantizes `e2m1 * (sf / G)`: writing it, [`encode_global_scale`] picks the f32 `G` nearest to
//! `1/S2` with `1/G == S2` exactly where one exists (for about 17% of f32 values none does: `1/x`
//! maps `[sqrt2, 2)` onto fewer f32 values than it holds), and the header metadata key
//! [`CT_DECODE_SCALES_KEY`] records `S2` itself, so reading our own file back gives `S2`'s bytes (a
//! round trip is byte-identical); a foreign compressed-tensors file is read as `S2 = f32(1/G)`. The values compressed-tensors itself computes, `sf / G`, equal ModelOpt's
//! `sf * S2` exactly when `S2` is a power of two and otherwise may differ by one f32 ulp of the scale
//! product (nvfp4-format.md §0.7.1). An all-zero tensor (`S2 = 0`) is written with `G = 1.0`,
//! compressed-tensors' own fallback (its codes are all zero, so its values are exact either way).
//!
//! **ComfyUI shapes.** ComfyUI files do not store a layer's logical shape (ComfyUI takes it from the
//! module). Writing, this crate pads rows to a multiple of 16 as ComfyUI does and, only when it pads,
//! adds `"logical_shape": [N, K]` to the layer's `comfy_quant` JSON (an extra key ComfyUI ignores).
//! Reading, N comes from that key, else from a 1-D `bias` within 16 rows, else the stored rows.

mod file;
mod flavour;
mod inspect;
mod map;
mod pipeline;
mod report;
mod select;
mod source;
mod write;

pub use file::{Dense, TensorEntry, TensorFile};
pub use flavour::{
    CT_DECODE_SCALES_KEY, Flavour, OutTensor, QuantizedLayer, detect, encode_global_scale, find_layers,
    layer_global_scale, layer_shape, layer_specs, layer_tensors, read_layer,
};
pub use inspect::{Inspection, LayerSummary, inspect};
pub use pipeline::{
    CheckpointQuantizer, Progress, QuantizeJob, Quantizer, Summary, convert_checkpoint, cpu_quantizer,
    dequantize_checkpoint, plan_quantize, quant_config_json, quantize_checkpoint, quantize_checkpoint_with,
};
pub use report::LayerError;
pub use select::{Decision, PRESERVED_PATTERNS, Selection, glob_match, module_of};
pub use source::{Checkpoint, INDEX_NAME};
pub use write::{FileWriter, Sink, Staged, TensorSpec};
