//! The three NVFP4 checkpoint flavours (nvfp4-format.md §0.7, §4): how one quantized linear layer is
//! stored in each, read into an [`Nvfp4Tensor`] (linear scales, low nibble first, decode-convention
//! global scale) and written back out.

use safetensors::Dtype as StDtype;

use super::file::{TensorEntry, TensorFile};
use super::source::Checkpoint;
use crate::error::{Error, Result};
use crate::format::packing::swap_all;
use crate::format::scale_layout::{self, ScaleLayout, padded_cols, padded_rows};
use crate::quant::{BLOCK, Nvfp4Tensor};

/// How a checkpoint stores NVFP4 layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flavour {
    /// No NVFP4 layers: a dense (bf16/f16/f32) checkpoint.
    Dense,
    /// NVIDIA ModelOpt / Hugging Face (`nvidia/*-FP4`): `weight` U8 `[N, K/2]` low nibble first,
    /// `weight_scale` F8_E4M3 `[N, K/16]` linear, `weight_scale_2` F32 `[]` = amax/2688.
    ModelOpt,
    /// compressed-tensors `nvfp4-pack-quantized` (llm-compressor): `weight_packed`, linear
    /// `weight_scale`, `weight_global_scale` F32 `[1]` = 2688/amax (the inverse of ModelOpt's).
    CompressedTensors,
    /// ComfyUI (`comfy_quant`): high nibble first, rows padded to 16, scales in the 128x4 swizzled
    /// layout `[roundup(Np,128), roundup(K/16,4)]`, a `<layer>.comfy_quant` JSON marker.
    Comfy,
}

impl Flavour {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Dense => "dense",
            Flavour::ModelOpt => "modelopt",
            Flavour::CompressedTensors => "compressed-tensors",
            Flavour::Comfy => "comfy",
        }
    }

    /// Parses a [`Flavour::name`] (`modelopt`, `compressed-tensors`, `comfy`, `dense`).
    pub fn parse(s: &str) -> Option<Self> {
        [
            Flavour::Dense,
            Flavour::ModelOpt,
            Flavour::CompressedTensors,
            Flavour::Comfy,
        ]
        .into_iter()
        .find(|f| f.name() == s)
    }

    /// Names of the tensors of layer `prefix` in this flavour (for skipping them when copying the
    /// rest). Dense returns nothing.
    pub fn tensor_suffixes(self) -> &'static [&'static str] {
        match self {
            Flavour::Dense => &[],
            Flavour::ModelOpt => &["weight", "weight_scale", "weight_scale_2", "input_scale"],
            Flavour::CompressedTensors => &[
                "weight_packed",
                "weight_scale",
                "weight_global_scale",
                "input_global_scale",
            ],
            Flavour::Comfy => &[
                "weight",
                "weight_scale",
                "weight_scale_2",
                "input_scale",
                "comfy_quant",
            ],
        }
    }
}

/// One NVFP4 linear layer, in the crate's canonical form.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedLayer {
    /// The module name (`model.layers.0.mlp.up_proj`), without `.weight`.
    pub prefix: String,
    /// Codes (low nibble first), linear block scales, decode-convention global scale.
    pub tensor: Nvfp4Tensor,
    /// The activation's global scale in the decode convention (`act_amax / 2688`), when calibrated.
    pub input_scale: Option<f32>,
}

/// A tensor to be written: name, dtype, shape and bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct OutTensor {
    /// Name.
    pub name: String,
    /// safetensors dtype.
    pub dtype: StDtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Little-endian bytes.
    pub bytes: Vec<u8>,
}

impl OutTensor {
    fn new(name: String, dtype: StDtype, shape: Vec<usize>, bytes: Vec<u8>) -> Self {
        OutTensor {
            name,
            dtype,
            shape,
            bytes,
        }
    }
}

/// The NVFP4 layers of a checkpoint: `(prefix, flavour)` for every module that has a `weight_scale`,
/// sorted by prefix. The checkpoint's flavour is the first of CompressedTensors, Comfy, ModelOpt found.
pub fn find_layers(ck: &Checkpoint) -> Vec<(String, Flavour)> {
    let comfy_meta = comfy_metadata_layers(ck);
    ck.names()
        .filter_map(|n| n.strip_suffix(".weight_scale"))
        .map(|p| {
            let has = |s: &str| ck.get(&format!("{p}.{s}")).is_some();
            let f = if has("weight_packed") {
                Flavour::CompressedTensors
            } else if has("comfy_quant") || comfy_meta.iter().any(|l| l == p) {
                Flavour::Comfy
            } else {
                Flavour::ModelOpt
            };
            (p.to_string(), f)
        })
        .collect()
}

/// The flavour of a checkpoint as a whole (see [`find_layers`]).
pub fn detect(ck: &Checkpoint) -> Flavour {
    let layers = find_layers(ck);
    for f in [Flavour::CompressedTensors, Flavour::Comfy, Flavour::ModelOpt] {
        if layers.iter().any(|(_, g)| *g == f) {
            return f;
        }
    }
    Flavour::Dense
}

/// Layers listed in the older ComfyUI header key `_quantization_metadata`.
fn comfy_metadata_layers(ck: &Checkpoint) -> Vec<String> {
    let mut out = Vec::new();
    for f in ck.files() {
        for (k, v) in f.metadata() {
            if k != "_quantization_metadata" {
                continue;
            }
            if let Ok(serde_json::Value::Object(o)) = serde_json::from_str::<serde_json::Value>(v)
                && let Some(serde_json::Value::Object(layers)) = o.get("layers")
            {
                out.extend(layers.keys().cloned());
            }
        }
    }
    out
}

fn file_name(f: &TensorFile) -> String {
    f.path().display().to_string()
}

fn need<'a>(ck: &'a Checkpoint, name: &str) -> Result<(&'a TensorFile, &'a TensorEntry)> {
    ck.get(name).ok_or_else(|| Error::CorruptHeader {
        file: ck.files().first().map(file_name).unwrap_or_default(),
        what: format!("tensor `{name}` is missing"),
    })
}

fn scale_bytes<'a>(f: &'a TensorFile, e: &TensorEntry) -> Result<&'a [u8]> {
    match e.dtype {
        StDtype::F8_E4M3 | StDtype::U8 => Ok(f.bytes(e)),
        d => Err(f.unsupported(e, d, "F8_E4M3 (or U8) block scales")),
    }
}

/// A one-element F32 tensor (shape `[]` or `[1]`).
fn scalar_f32(f: &TensorFile, e: &TensorEntry) -> Result<f32> {
    if e.dtype != StDtype::F32 {
        return Err(f.unsupported(e, e.dtype, "F32"));
    }
    if e.shape.iter().product::<usize>() != 1 || e.shape.len() > 1 {
        return Err(Error::ScaleShape {
            file: file_name(f),
            tensor: e.name.clone(),
            shape: e.shape.clone(),
            expected: "[] or [1] (one f32)".into(),
        });
    }
    let b = f.bytes(e);
    Ok(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn optional_scalar(ck: &Checkpoint, name: &str) -> Result<Option<f32>> {
    match ck.get(name) {
        Some((f, e)) => scalar_f32(f, e).map(Some),
        None => Ok(None),
    }
}

/// `[N, K/2]` U8 packed codes: returns (N, K).
fn packed_shape(f: &TensorFile, e: &TensorEntry) -> Result<(usize, usize)> {
    if e.dtype != StDtype::U8 {
        return Err(f.unsupported(e, e.dtype, "U8 packed E2M1 codes"));
    }
    // `half` is unbounded when N is 0 (a zero-byte tensor passes safetensors' size check), so K is
    // computed checked: found by fuzz/seeds/checkpoint/crash-packed-shape-overflow.
    let k = match e.shape[..] {
        [n, half] => half.checked_mul(2).filter(|k| k % BLOCK == 0).map(|k| (n, k)),
        _ => None,
    };
    k.ok_or_else(|| {
        Error::shape(
            &format!("{}: {}", file_name(f), e.name),
            &e.shape,
            "packed NVFP4 weights are 2-D [N, K/2] with K a multiple of 16",
        )
    })
}

fn check_scale_shape(f: &TensorFile, e: &TensorEntry, expected: [usize; 2]) -> Result<()> {
    if e.shape[..] != expected {
        return Err(Error::ScaleShape {
            file: file_name(f),
            tensor: e.name.clone(),
            shape: e.shape.clone(),
            expected: format!("{expected:?}"),
        });
    }
    Ok(())
}

fn with_file(f: &TensorFile, e: Error) -> Error {
    match e {
        Error::Shape {
            name,
            shape,
            expected,
        } => Error::Shape {
            name: format!("{}: {name}", file_name(f)),
            shape,
            expected,
        },
        Error::InvalidValue { name, what } => Error::InvalidValue {
            name: format!("{}: {name}", file_name(f)),
            what,
        },
        Error::Length {
            name,
            shape,
            expected,
            actual,
        } => Error::Length {
            name: format!("{}: {name}", file_name(f)),
            shape,
            expected,
            actual,
        },
        other => other,
    }
}

/// Reads layer `prefix` stored in `flavour` into the canonical form. Every shape, dtype and value is
/// checked ([`Error::ScaleShape`], [`Error::UnsupportedDtype`], [`Error::InvalidValue`] for a NaN
/// scale byte or a negative global scale).
pub fn read_layer(ck: &Checkpoint, prefix: &str, flavour: Flavour) -> Result<QuantizedLayer> {
    match flavour {
        Flavour::Dense => Err(Error::invalid(prefix, "a dense layer has no NVFP4 tensors")),
        Flavour::ModelOpt => {
            let (wf, we) = need(ck, &format!("{prefix}.weight"))?;
            let (n, k) = packed_shape(wf, we)?;
            let (sf, se) = need(ck, &format!("{prefix}.weight_scale"))?;
            check_scale_shape(sf, se, [n, k / BLOCK])?;
            let scales = scale_bytes(sf, se)?.to_vec();
            let (gf, ge) = need(ck, &format!("{prefix}.weight_scale_2"))?;
            let s2 = scalar_f32(gf, ge)?;
            let t = Nvfp4Tensor::from_parts(
                &we.name,
                n,
                k,
                wf.bytes(we).to_vec(),
                scales,
                ScaleLayout::Linear,
                s2,
            )
            .map_err(|e| with_file(wf, e))?;
            Ok(QuantizedLayer {
                prefix: prefix.to_string(),
                tensor: t,
                input_scale: optional_scalar(ck, &format!("{prefix}.input_scale"))?,
            })
        }
        Flavour::CompressedTensors => {
            let (wf, we) = need(ck, &format!("{prefix}.weight_packed"))?;
            let (n, k) = packed_shape(wf, we)?;
            let (sf, se) = need(ck, &format!("{prefix}.weight_scale"))?;
            check_scale_shape(sf, se, [n, k / BLOCK])?;
            let scales = scale_bytes(sf, se)?.to_vec();
            let (gf, ge) = need(ck, &format!("{prefix}.weight_global_scale"))?;
            let g = scalar_f32(gf, ge)?;
            let s2 = exact_decode_scale(wf, prefix, g)
                .or(decode_from_encode(g))
                .ok_or_else(|| {
                    with_file(
                        gf,
                        Error::invalid(
                            &ge.name,
                            format!("encode global scale {g} must be finite and > 0"),
                        ),
                    )
                })?;
            let t = Nvfp4Tensor::from_parts(
                &we.name,
                n,
                k,
                wf.bytes(we).to_vec(),
                scales,
                ScaleLayout::Linear,
                s2,
            )
            .map_err(|e| with_file(wf, e))?;
            let input = optional_scalar(ck, &format!("{prefix}.input_global_scale"))?
                .map(|g| decode_from_encode(g).unwrap_or(0.0));
            Ok(QuantizedLayer {
                prefix: prefix.to_string(),
                tensor: t,
                input_scale: input,
            })
        }
        Flavour::Comfy => read_comfy(ck, prefix),
    }
}

fn read_comfy(ck: &Checkpoint, prefix: &str) -> Result<QuantizedLayer> {
    let (wf, we) = need(ck, &format!("{prefix}.weight"))?;
    let (np, k) = packed_shape(wf, we)?;
    let bc = k / BLOCK;
    let (sf, se) = need(ck, &format!("{prefix}.weight_scale"))?;
    let swz = [padded_rows(np), padded_cols(bc)];
    check_scale_shape(sf, se, swz)?;
    let (gf, ge) = need(ck, &format!("{prefix}.weight_scale_2"))?;
    let s2 = scalar_f32(gf, ge)?;
    let n = comfy_rows(ck, prefix, np)?;
    if n > np {
        return Err(Error::shape(
            &format!("{}: {}", file_name(wf), we.name),
            &we.shape,
            format!("at least {n} rows (the logical shape in its comfy_quant marker)"),
        ));
    }
    let linear = scale_layout::convert(
        scale_bytes(sf, se)?,
        np,
        bc,
        ScaleLayout::Swizzled128x4,
        ScaleLayout::Linear,
    )?;
    let mut codes = wf.bytes(we)[..n * k / 2].to_vec();
    swap_all(&mut codes);
    let t = Nvfp4Tensor::from_parts(
        &we.name,
        n,
        k,
        codes,
        linear[..n * bc].to_vec(),
        ScaleLayout::Linear,
        s2,
    )
    .map_err(|e| with_file(wf, e))?;
    Ok(QuantizedLayer {
        prefix: prefix.to_string(),
        tensor: t,
        input_scale: optional_scalar(ck, &format!("{prefix}.input_scale"))?,
    })
}

/// The logical rows of a ComfyUI layer stored with `np` rows. ComfyUI pads the weight to a multiple
/// of 16 rows and does not store the module's shape (it comes from `out_features` at load time).
/// This crate writes the logical shape into the marker when it pads; otherwise a 1-D `bias` that
/// fits gives N; otherwise the stored rows are taken as N.
fn comfy_rows(ck: &Checkpoint, prefix: &str, np: usize) -> Result<usize> {
    if let Some(l) = comfy_marker(ck, prefix)?.and_then(|m| m.get("logical_shape").cloned())
        && let Some(rows) = l.get(0).and_then(|v| v.as_u64())
    {
        return Ok(rows as usize);
    }
    if let Some((_, b)) = ck.get(&format!("{prefix}.bias"))
        && b.shape.len() == 1
        && b.shape[0] <= np
        && b.shape[0] + 16 > np
    {
        return Ok(b.shape[0]);
    }
    Ok(np)
}

/// The logical `[N, K]` of layer `prefix` and whether it has an activation scale, from its header
/// entries alone.
pub fn layer_shape(ck: &Checkpoint, prefix: &str, flavour: Flavour) -> Result<(usize, usize, bool)> {
    let (weight, input) = match flavour {
        Flavour::CompressedTensors => ("weight_packed", "input_global_scale"),
        _ => ("weight", "input_scale"),
    };
    let (wf, we) = need(ck, &format!("{prefix}.{weight}"))?;
    let (np, k) = packed_shape(wf, we)?;
    let n = if flavour == Flavour::Comfy {
        comfy_rows(ck, prefix, np)?.min(np)
    } else {
        np
    };
    Ok((n, k, ck.get(&format!("{prefix}.{input}")).is_some()))
}

fn comfy_marker(ck: &Checkpoint, prefix: &str) -> Result<Option<serde_json::Value>> {
    let Some((f, e)) = ck.get(&format!("{prefix}.comfy_quant")) else {
        return Ok(None);
    };
    serde_json::from_slice(f.bytes(e))
        .map(Some)
        .map_err(|err| Error::CorruptHeader {
            file: file_name(f),
            what: format!("`{}` is not UTF-8 JSON: {err}", e.name),
        })
}

/// The header `__metadata__` key under which this crate records, in compressed-tensors files it
/// writes, each layer's exact decode scale: `{"<layer>": "0x3B73CF3D", ...}` (f32 bits). About 17% of
/// f32 decode scales have no f32 `G` with `1/G` equal to them (where `1/x` maps a binade onto fewer
/// values), so `G` alone cannot carry them; loaders ignore header metadata.
pub const CT_DECODE_SCALES_KEY: &str = "nvfp4.decode_global_scales";

/// The decode scale recorded for `prefix` in `f`'s metadata, if it is consistent with `g` (a file
/// edited by another tool after we wrote it falls back to `1/G`).
fn exact_decode_scale(f: &TensorFile, prefix: &str, g: f32) -> Option<f32> {
    let (_, v) = f.metadata().iter().find(|(k, _)| k == CT_DECODE_SCALES_KEY)?;
    let map: serde_json::Value = serde_json::from_str(v).ok()?;
    let hex = map.get(prefix)?.as_str()?.strip_prefix("0x")?;
    let s2 = f32::from_bits(u32::from_str_radix(hex, 16).ok()?);
    (s2.is_finite() && s2 >= 0.0 && encode_global_scale(s2) == g).then_some(s2)
}

/// The decode-convention global scale of layer `prefix` from its scalar tensor alone.
pub fn layer_global_scale(ck: &Checkpoint, prefix: &str, flavour: Flavour) -> Result<f32> {
    if flavour == Flavour::CompressedTensors {
        let (gf, ge) = need(ck, &format!("{prefix}.weight_global_scale"))?;
        let g = scalar_f32(gf, ge)?;
        let (wf, _) = need(ck, &format!("{prefix}.weight_packed"))?;
        return Ok(exact_decode_scale(wf, prefix, g)
            .or(decode_from_encode(g))
            .unwrap_or(0.0));
    }
    let (gf, ge) = need(ck, &format!("{prefix}.weight_scale_2"))?;
    scalar_f32(gf, ge)
}

/// compressed-tensors' encode scale `G` (2688/amax) to the decode convention: `1 / G`.
fn decode_from_encode(g: f32) -> Option<f32> {
    (g.is_finite() && g > 0.0).then(|| 1.0 / g)
}

/// The encode scale compressed-tensors stores for decode scale `s2`: an f32 `G` near `1/s2` with
/// `1/G == s2` exactly when one exists within 8 ulps (so a round trip returns `s2`'s bytes), else
/// `f32(1/s2)`. An all-zero tensor (`s2 == 0`) gets 1.0, compressed-tensors' own fallback.
pub fn encode_global_scale(s2: f32) -> f32 {
    if s2.is_nan() || s2 <= 0.0 || s2.is_infinite() {
        return 1.0;
    }
    let g0 = 1.0 / s2;
    if !g0.is_finite() {
        return g0;
    }
    for k in 0..=8i32 {
        for d in [k, -k] {
            let g = f32::from_bits((g0.to_bits() as i64 + d as i64) as u32);
            if g.is_finite() && g > 0.0 && 1.0 / g == s2 {
                return g;
            }
        }
    }
    g0
}

/// The tensors of `layer` in `flavour`, in the order they are written.
pub fn layer_tensors(layer: QuantizedLayer, flavour: Flavour) -> Result<Vec<OutTensor>> {
    let p = &layer.prefix;
    let t = layer.tensor.with_scale_layout(ScaleLayout::Linear)?;
    let (n, k) = (t.rows(), t.cols());
    let bc = t.block_cols();
    let f32b = |x: f32| x.to_le_bytes().to_vec();
    let mut out = Vec::new();
    match flavour {
        Flavour::Dense => return Err(Error::invalid(p, "use dequantize for a dense layer")),
        Flavour::ModelOpt => {
            let (codes, scales, s2) = t.into_parts();
            out.push(OutTensor::new(
                format!("{p}.weight"),
                StDtype::U8,
                vec![n, k / 2],
                codes,
            ));
            out.push(OutTensor::new(
                format!("{p}.weight_scale"),
                StDtype::F8_E4M3,
                vec![n, bc],
                scales,
            ));
            out.push(OutTensor::new(
                format!("{p}.weight_scale_2"),
                StDtype::F32,
                vec![],
                f32b(s2),
            ));
            if let Some(s) = layer.input_scale {
                out.push(OutTensor::new(
                    format!("{p}.input_scale"),
                    StDtype::F32,
                    vec![],
                    f32b(s),
                ));
            }
        }
        Flavour::CompressedTensors => {
            out.push(OutTensor::new(
                format!("{p}.weight_packed"),
                StDtype::U8,
                vec![n, k / 2],
                t.codes().to_vec(),
            ));
            out.push(OutTensor::new(
                format!("{p}.weight_scale"),
                StDtype::F8_E4M3,
                vec![n, bc],
                t.scales().to_vec(),
            ));
            out.push(OutTensor::new(
                format!("{p}.weight_global_scale"),
                StDtype::F32,
                vec![1],
                f32b(encode_global_scale(t.global_scale())),
            ));
            if let Some(s) = layer.input_scale {
                out.push(OutTensor::new(
                    format!("{p}.input_global_scale"),
                    StDtype::F32,
                    vec![1],
                    f32b(encode_global_scale(s)),
                ));
            }
        }
        Flavour::Comfy => {
            // Pad rows to 16 as ComfyUI does (`get_padded_shape`): zero codes, 0x00 scales (what
            // comfy-kitchen writes for an all-zero block), then swizzle the padded [Np, K/16] scales.
            let np = n.div_ceil(16) * 16;
            let mut codes = t.codes().to_vec();
            codes.resize(np * k / 2, 0);
            swap_all(&mut codes);
            let mut lin = t.scales().to_vec();
            lin.resize(np * bc, 0);
            let swz = scale_layout::convert(&lin, np, bc, ScaleLayout::Linear, ScaleLayout::Swizzled128x4)?;
            let marker = comfy_marker_bytes(n, k);
            out.push(OutTensor::new(
                format!("{p}.weight"),
                StDtype::U8,
                vec![np, k / 2],
                codes,
            ));
            out.push(OutTensor::new(
                format!("{p}.weight_scale"),
                StDtype::F8_E4M3,
                vec![padded_rows(np), padded_cols(bc)],
                swz,
            ));
            out.push(OutTensor::new(
                format!("{p}.weight_scale_2"),
                StDtype::F32,
                vec![],
                f32b(t.global_scale()),
            ));
            if let Some(s) = layer.input_scale {
                out.push(OutTensor::new(
                    format!("{p}.input_scale"),
                    StDtype::F32,
                    vec![],
                    f32b(s),
                ));
            }
            out.push(OutTensor::new(
                format!("{p}.comfy_quant"),
                StDtype::U8,
                vec![marker.len()],
                marker,
            ));
        }
    }
    Ok(out)
}

/// The names, dtypes and shapes [`layer_tensors`] produces for an `[n, k]` layer, without its data:
/// lets a writer lay out a file's header before quantizing.
pub fn layer_specs(
    prefix: &str,
    n: usize,
    k: usize,
    input_scale: bool,
    flavour: Flavour,
) -> Vec<(String, StDtype, Vec<usize>)> {
    let p = prefix;
    let bc = k / BLOCK;
    let mut out = Vec::new();
    let (weight, global, global_shape, input) = match flavour {
        Flavour::Dense => return out,
        Flavour::ModelOpt | Flavour::Comfy => ("weight", "weight_scale_2", vec![], "input_scale"),
        Flavour::CompressedTensors => (
            "weight_packed",
            "weight_global_scale",
            vec![1],
            "input_global_scale",
        ),
    };
    let np = if flavour == Flavour::Comfy {
        n.div_ceil(16) * 16
    } else {
        n
    };
    out.push((format!("{p}.{weight}"), StDtype::U8, vec![np, k / 2]));
    let scale_shape = if flavour == Flavour::Comfy {
        vec![padded_rows(np), padded_cols(bc)]
    } else {
        vec![n, bc]
    };
    out.push((format!("{p}.weight_scale"), StDtype::F8_E4M3, scale_shape));
    out.push((format!("{p}.{global}"), StDtype::F32, global_shape.clone()));
    if input_scale {
        out.push((format!("{p}.{input}"), StDtype::F32, global_shape));
    }
    if flavour == Flavour::Comfy {
        out.push((
            format!("{p}.comfy_quant"),
            StDtype::U8,
            vec![comfy_marker_bytes(n, k).len()],
        ));
    }
    out
}

fn comfy_marker_bytes(n: usize, k: usize) -> Vec<u8> {
    let mut marker = serde_json::json!({ "format": "nvfp4" });
    if n % 16 != 0 {
        marker["logical_shape"] = serde_json::json!([n, k]);
    }
    marker.to_string().into_bytes()
}
