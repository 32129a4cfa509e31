//! Checkpoints: safetensors in and out (ModelOpt/HF, compressed-tensors, ComfyUI flavours).
//!
//! Depends on [`crate::quant`] and [`crate::format`] only, never on `cuda`: a GPU quantize is the
//! caller's `ops` call.
