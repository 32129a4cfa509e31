//! Whole-checkpoint operations: quantize a dense checkpoint, convert between NVFP4 flavours,
//! dequantize. Each input file becomes one output file of the same name; every output is staged
//! under a temporary name and renamed into place only when complete.

use std::path::{Path, PathBuf};

use safetensors::Dtype as StDtype;

use super::file::{Dense, TensorEntry, TensorFile};
use super::flavour::{self, Flavour, QuantizedLayer};
use super::report::LayerError;
use super::select::{Decision, Selection, module_of};
use super::source::{Checkpoint, INDEX_NAME};
use super::write::{FileWriter, Sink, Staged, TensorSpec};
use crate::error::{Error, Result};
use crate::format::Dtype;
use crate::quant::{self, BLOCK, ErrorStats, Nvfp4Tensor, QuantizeOptions};

/// Quantizes one dense tensor: `(qualified name, data, rows, cols, options)`. The CPU reference
/// is [`cpu_quantizer`]; [`quantize_checkpoint`] measures each result's error on the CPU. A quantizer
/// with state of its own, or one that measures the error itself, is a [`CheckpointQuantizer`].
pub type Quantizer<'a> =
    dyn Fn(&str, &Dense<'_>, usize, usize, &QuantizeOptions) -> Result<Nvfp4Tensor> + Sync + 'a;

/// A quantizer [`quantize_checkpoint_with`] calls once per tensor, in file order: it may keep state
/// between tensors (device buffers, timings) and may measure each result's error itself, where its
/// data already is (`ops::GpuQuantizer` sums the error on the GPU next to the codes).
///
/// ```no_run
/// use nvfp4::checkpoint::{CheckpointQuantizer, Dense, cpu_quantizer};
/// use nvfp4::quant::ErrorStats;
/// use nvfp4::{Nvfp4Tensor, QuantizeOptions, Result};
/// /// The CPU quantizer, counting tensors.
/// struct Counting(usize);
/// impl CheckpointQuantizer for Counting {
///     fn quantize(&mut self, name: &str, data: &Dense<'_>, rows: usize, cols: usize,
///                 opts: &QuantizeOptions, _measure: bool) -> Result<(Nvfp4Tensor, Option<ErrorStats>)> {
///         self.0 += 1;
///         Ok((cpu_quantizer(name, data, rows, cols, opts)?, None)) // None: the pipeline measures
///     }
/// }
/// ```
pub trait CheckpointQuantizer {
    /// Quantizes `data` (`[rows, cols]`, named `name` in errors) exactly as [`cpu_quantizer`] does:
    /// the same bytes and the same errors. With `measure`, it may return the error sums of the
    /// result against `data` (`quant::error_stats`'s, within f64 rounding); `None` makes the pipeline
    /// measure on the CPU. Without `measure` the sums are ignored.
    fn quantize(
        &mut self,
        name: &str,
        data: &Dense<'_>,
        rows: usize,
        cols: usize,
        opts: &QuantizeOptions,
        measure: bool,
    ) -> Result<(Nvfp4Tensor, Option<ErrorStats>)>;
}

/// A plain [`Quantizer`] as a [`CheckpointQuantizer`] that leaves the measuring to the pipeline.
struct Stateless<'q, 'a>(&'q Quantizer<'a>);

impl CheckpointQuantizer for Stateless<'_, '_> {
    fn quantize(
        &mut self,
        name: &str,
        data: &Dense<'_>,
        rows: usize,
        cols: usize,
        opts: &QuantizeOptions,
        _measure: bool,
    ) -> Result<(Nvfp4Tensor, Option<ErrorStats>)> {
        Ok(((self.0)(name, data, rows, cols, opts)?, None))
    }
}

/// Progress: called with the input bytes just processed.
pub type Progress<'a> = dyn Fn(u64) + Sync + 'a;

/// The CPU reference quantizer ([`quant::quantize`]) over any dense dtype.
pub fn cpu_quantizer(
    name: &str,
    data: &Dense<'_>,
    rows: usize,
    cols: usize,
    opts: &QuantizeOptions,
) -> Result<Nvfp4Tensor> {
    match data {
        Dense::F32(v) => quant::quantize(name, v, rows, cols, opts),
        Dense::F16(v) => quant::quantize(name, v, rows, cols, opts),
        Dense::Bf16(v) => quant::quantize(name, v, rows, cols, opts),
    }
}

/// Decides every tensor of a dense checkpoint (sorted by name): what `--dry-run` prints.
/// A tensor an `--include` forces that cannot be quantized is an error: [`Error::Shape`] when it is
/// not 2-D or K is not a multiple of 16, [`Error::UnsupportedDtype`] when it is not a float.
pub fn plan_quantize(ck: &Checkpoint, sel: &Selection) -> Result<Vec<Decision>> {
    let mut out = Vec::new();
    for name in ck.names() {
        let Some((f, e)) = ck.get(name) else { continue };
        let d = sel.decide(e);
        if d.quantize {
            quantizable(f, e)?;
        }
        out.push(d);
    }
    Ok(out)
}

fn qualified(f: &TensorFile, tensor: &str) -> String {
    format!("{}: {tensor}", f.path().display())
}

fn quantizable(f: &TensorFile, e: &TensorEntry) -> Result<(usize, usize)> {
    if !matches!(e.dtype, StDtype::F32 | StDtype::F16 | StDtype::BF16) {
        return Err(f.unsupported(e, e.dtype, "F32, F16 or BF16 to quantize"));
    }
    match e.shape[..] {
        [n, k] if k % BLOCK == 0 => Ok((n, k)),
        [_, _] => Err(Error::shape(
            &qualified(f, &e.name),
            &e.shape,
            "K (the last dimension) must be a multiple of 16 to quantize",
        )),
        _ => Err(Error::shape(
            &qualified(f, &e.name),
            &e.shape,
            "only 2-D weights can be quantized",
        )),
    }
}

/// One unit of work in an output file: it knows its output specs before it runs.
enum Job {
    Copy {
        entry: String,
    },
    Quantize {
        entry: String,
        n: usize,
        k: usize,
    },
    Layer {
        prefix: String,
        from: Flavour,
    },
    Dequantize {
        prefix: String,
        from: Flavour,
        n: usize,
        k: usize,
    },
}

struct FilePlan {
    input: usize,
    jobs: Vec<(Job, Vec<TensorSpec>)>,
}

fn spec(name: String, dtype: StDtype, shape: Vec<usize>) -> TensorSpec {
    TensorSpec { name, dtype, shape }
}

fn copy_job(e: &TensorEntry) -> (Job, Vec<TensorSpec>) {
    (
        Job::Copy {
            entry: e.name.clone(),
        },
        vec![spec(e.name.clone(), e.dtype, e.shape.clone())],
    )
}

/// Where the results go: a file for a single-file input, a directory (shards, index, config) for a
/// model directory or index.
struct Output {
    staged: Staged,
    dir: bool,
}

impl Output {
    fn new(ck: &Checkpoint, target: &Path, force: bool) -> Result<Self> {
        for f in ck.files() {
            if same_file(f.path(), target) {
                return Err(Error::invalid(
                    &target.display().to_string(),
                    "the output is an input file",
                ));
            }
        }
        if let Some(d) = &ck.dir
            && same_file(d, target)
        {
            return Err(Error::invalid(
                &target.display().to_string(),
                "the output is the input directory",
            ));
        }
        let dir = ck.dir.is_some();
        Ok(Output {
            staged: Staged::new(target, dir, force)?,
            dir,
        })
    }

    fn file_path(&self, input: &TensorFile) -> PathBuf {
        if self.dir {
            self.staged
                .path()
                .join(input.path().file_name().unwrap_or_default())
        } else {
            self.staged.path().to_path_buf()
        }
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// What a whole-checkpoint operation did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Per quantized layer error (quantize only).
    pub layers: Vec<LayerError>,
    /// Tensors quantized or converted.
    pub quantized: usize,
    /// Tensors copied unchanged.
    pub copied: usize,
    /// Bytes written (tensor data).
    pub bytes_written: u64,
    /// Modules kept unquantized (their `.weight` copied): `exclude_modules` of the config.
    pub excluded_modules: Vec<String>,
}

/// Options of [`quantize_checkpoint`].
#[derive(Clone, Debug, Default)]
pub struct QuantizeJob {
    /// Which tensors.
    pub selection: Selection,
    /// The quantizer's options (ModelOpt's bytes by default).
    pub options: QuantizeOptions,
    /// Replace an existing output.
    pub force: bool,
    /// Measure each layer's error against its input (costs one more pass over the weight).
    pub measure: bool,
}

/// Quantizes the selected tensors of a dense checkpoint to the ModelOpt/HF NVFP4 layout in `out`
/// (a file for a single-file input, a directory for a model directory or index: shards and index,
/// `hf_quant_config.json`, `config.json` with `quantization_config`, other files copied).
///
/// ```no_run
/// use nvfp4::checkpoint::{Checkpoint, QuantizeJob, cpu_quantizer, quantize_checkpoint};
/// let ck = Checkpoint::open("model.safetensors".as_ref())?;
/// let s = quantize_checkpoint(&ck, "model-nvfp4.safetensors".as_ref(), &QuantizeJob::default(), &cpu_quantizer, &|_| {})?;
/// println!("{} layers quantized", s.quantized);
/// # Ok::<(), nvfp4::Error>(())
/// ```
pub fn quantize_checkpoint(
    ck: &Checkpoint,
    out: &Path,
    job: &QuantizeJob,
    quantizer: &Quantizer<'_>,
    progress: &Progress<'_>,
) -> Result<Summary> {
    quantize_checkpoint_with(ck, out, job, &mut Stateless(quantizer), progress)
}

/// [`quantize_checkpoint`] with a [`CheckpointQuantizer`]: the same output bytes for a quantizer
/// that gives [`cpu_quantizer`]'s tensors; each layer's error comes from the quantizer's own sums
/// where it returns them, else it is measured on the CPU.
///
/// ```no_run
/// use nvfp4::checkpoint::{Checkpoint, QuantizeJob, quantize_checkpoint_with};
/// let ck = Checkpoint::open("model.safetensors".as_ref())?;
/// let mut gpu = nvfp4::ops::GpuQuantizer::new(nvfp4::cuda::Device::new(0)?)?;
/// let s = quantize_checkpoint_with(&ck, "q.safetensors".as_ref(), &QuantizeJob::default(), &mut gpu, &|_| {})?;
/// println!("{} layers; stages: {}", s.quantized, gpu.stages().summary());
/// # Ok::<(), nvfp4::Error>(())
/// ```
pub fn quantize_checkpoint_with(
    ck: &Checkpoint,
    out: &Path,
    job: &QuantizeJob,
    quantizer: &mut dyn CheckpointQuantizer,
    progress: &Progress<'_>,
) -> Result<Summary> {
    let decisions = plan_quantize(ck, &job.selection)?;
    let quantize: std::collections::HashSet<&str> = decisions
        .iter()
        .filter(|d| d.quantize)
        .map(|d| d.name.as_str())
        .collect();
    let mut summary = Summary {
        excluded_modules: excluded_modules(&decisions),
        ..Summary::default()
    };
    let plans = ck
        .files()
        .iter()
        .enumerate()
        .map(|(i, f)| FilePlan {
            input: i,
            jobs: f
                .entries()
                .iter()
                .map(|e| {
                    if quantize.contains(e.name.as_str()) {
                        let (n, k) = (e.shape[0], e.shape[1]);
                        let specs = flavour::layer_specs(module_of(&e.name), n, k, false, Flavour::ModelOpt)
                            .into_iter()
                            .map(|(a, b, c)| spec(a, b, c))
                            .collect();
                        (
                            Job::Quantize {
                                entry: e.name.clone(),
                                n,
                                k,
                            },
                            specs,
                        )
                    } else {
                        copy_job(e)
                    }
                })
                .collect(),
        })
        .collect::<Vec<_>>();
    let output = Output::new(ck, out, job.force)?;
    let meta = quant_config_json(Flavour::ModelOpt, &summary.excluded_modules);
    for p in &plans {
        write_file(
            ck,
            &output,
            p,
            &meta,
            Flavour::ModelOpt,
            &mut summary,
            &mut |name, data, n, k| {
                let (q, stats) = quantizer.quantize(name, data, n, k, &job.options, job.measure)?;
                let err = job.measure.then(|| match stats {
                    Some(s) => LayerError::from_stats(name, q.shape(), &s),
                    None => LayerError::measure(name, data, &q),
                });
                Ok((q, err))
            },
            progress,
        )?;
    }
    finish_dir(ck, &output, &plans, Flavour::ModelOpt, &summary.excluded_modules)?;
    output.staged.commit()?;
    Ok(summary)
}

/// Converts every NVFP4 layer of `ck` to `to` (copying every other tensor unchanged). Layout and
/// scale convention change; codes and block-scale bytes are carried exactly (see the module docs for
/// where the values are exact).
pub fn convert_checkpoint(
    ck: &Checkpoint,
    out: &Path,
    to: Flavour,
    force: bool,
    progress: &Progress<'_>,
) -> Result<Summary> {
    if to == Flavour::Dense {
        return Err(Error::invalid(
            &out.display().to_string(),
            "use dequantize to write a dense checkpoint",
        ));
    }
    let layers = flavour::find_layers(ck);
    let plans = layer_plans(ck, &layers, |prefix, from, n, k, input| {
        let specs = flavour::layer_specs(prefix, n, k, input, to)
            .into_iter()
            .map(|(a, b, c)| spec(a, b, c))
            .collect();
        (
            Job::Layer {
                prefix: prefix.to_string(),
                from,
            },
            specs,
        )
    })?;
    let mut summary = Summary {
        excluded_modules: kept_weight_modules(ck, &layers),
        ..Summary::default()
    };
    let output = Output::new(ck, out, force)?;
    let meta = quant_config_json(to, &summary.excluded_modules);
    for p in &plans {
        write_file(
            ck,
            &output,
            p,
            &meta,
            to,
            &mut summary,
            &mut |_, _, _, _| unreachable_quantize(),
            progress,
        )?;
    }
    finish_dir(ck, &output, &plans, to, &summary.excluded_modules)?;
    output.staged.commit()?;
    Ok(summary)
}

/// Dequantizes every NVFP4 layer of `ck` to `dtype` (`<layer>.weight`, `[N, K]`), copying every other
/// tensor unchanged: a dense checkpoint again.
pub fn dequantize_checkpoint(
    ck: &Checkpoint,
    out: &Path,
    dtype: Dtype,
    force: bool,
    progress: &Progress<'_>,
) -> Result<Summary> {
    let layers = flavour::find_layers(ck);
    let st = match dtype {
        Dtype::F32 => StDtype::F32,
        Dtype::F16 => StDtype::F16,
        Dtype::Bf16 => StDtype::BF16,
    };
    let plans = layer_plans(ck, &layers, |prefix, from, n, k, _| {
        (
            Job::Dequantize {
                prefix: prefix.to_string(),
                from,
                n,
                k,
            },
            vec![spec(format!("{prefix}.weight"), st, vec![n, k])],
        )
    })?;
    let mut summary = Summary::default();
    let output = Output::new(ck, out, force)?;
    for p in &plans {
        write_file(
            ck,
            &output,
            p,
            &serde_json::Value::Null,
            Flavour::Dense,
            &mut summary,
            &mut |_, _, _, _| unreachable_quantize(),
            progress,
        )?;
    }
    finish_dir(ck, &output, &plans, Flavour::Dense, &[])?;
    output.staged.commit()?;
    Ok(summary)
}

fn unreachable_quantize() -> Result<(Nvfp4Tensor, Option<LayerError>)> {
    Err(Error::invalid(
        "convert",
        "no tensor is quantized by this operation",
    ))
}

type LayerJob<'a> = dyn Fn(&str, Flavour, usize, usize, bool) -> (Job, Vec<TensorSpec>) + 'a;

/// Plans for operations over NVFP4 layers: each layer is written where its packed weight lives;
/// every other tensor that is not part of a layer is copied.
fn layer_plans(
    ck: &Checkpoint,
    layers: &[(String, Flavour)],
    make: impl Fn(&str, Flavour, usize, usize, bool) -> (Job, Vec<TensorSpec>),
) -> Result<Vec<FilePlan>> {
    let make: &LayerJob<'_> = &make;
    let mut owned = std::collections::HashMap::new();
    let mut at = std::collections::HashMap::new();
    for (prefix, from) in layers {
        for s in from.tensor_suffixes() {
            owned.insert(format!("{prefix}.{s}"), ());
        }
        let weight = if *from == Flavour::CompressedTensors {
            "weight_packed"
        } else {
            "weight"
        };
        let wname = format!("{prefix}.{weight}");
        let (n, k, input) = flavour::layer_shape(ck, prefix, *from)?;
        at.insert(wname, (prefix.clone(), *from, n, k, input));
    }
    Ok(ck
        .files()
        .iter()
        .enumerate()
        .map(|(i, f)| FilePlan {
            input: i,
            jobs: f
                .entries()
                .iter()
                .filter_map(|e| {
                    if let Some((prefix, from, n, k, input)) = at.get(&e.name) {
                        Some(make(prefix, *from, *n, *k, *input))
                    } else if owned.contains_key(&e.name) {
                        None
                    } else {
                        Some(copy_job(e))
                    }
                })
                .collect(),
        })
        .collect())
}

type LayerQuantizer<'a> =
    dyn FnMut(&str, &Dense<'_>, usize, usize) -> Result<(Nvfp4Tensor, Option<LayerError>)> + 'a;

#[allow(clippy::too_many_arguments)]
fn write_file(
    ck: &Checkpoint,
    output: &Output,
    plan: &FilePlan,
    quant_config: &serde_json::Value,
    to: Flavour,
    summary: &mut Summary,
    quantize: &mut LayerQuantizer<'_>,
    progress: &Progress<'_>,
) -> Result<()> {
    let input = &ck.files()[plan.input];
    let specs: Vec<TensorSpec> = plan.jobs.iter().flat_map(|(_, s)| s.iter().cloned()).collect();
    let mut metadata: Vec<(String, String)> = input
        .metadata()
        .iter()
        .filter(|(k, _)| k != "hf_quant_config" && k != "_quantization_metadata")
        .cloned()
        .collect();
    metadata.retain(|(k, _)| k != flavour::CT_DECODE_SCALES_KEY);
    if !output.dir && to == Flavour::ModelOpt {
        metadata.push(("hf_quant_config".into(), quant_config.to_string()));
    }
    if to == Flavour::CompressedTensors {
        let mut exact = serde_json::Map::new();
        for (job, _) in &plan.jobs {
            if let Job::Layer { prefix, from } = job {
                let s2 = flavour::layer_global_scale(ck, prefix, *from)?;
                exact.insert(prefix.clone(), format!("0x{:08X}", s2.to_bits()).into());
            }
        }
        metadata.push((
            flavour::CT_DECODE_SCALES_KEY.into(),
            serde_json::Value::Object(exact).to_string(),
        ));
    }
    let path = output.file_path(input);
    let w = FileWriter::create(&path, specs, &metadata)?;
    w.write_behind(|w| {
        for (job, specs) in &plan.jobs {
            match job {
                Job::Copy { entry } => {
                    let (f, e) = ck
                        .get(entry)
                        .ok_or_else(|| Error::invalid(entry, "vanished from the plan"))?;
                    w.write(e.name.as_str(), f.bytes(e))?;
                    summary.copied += 1;
                    summary.bytes_written += e.len() as u64;
                    progress(e.len() as u64);
                }
                Job::Quantize { entry, n, k } => {
                    let (f, e) = ck
                        .get(entry)
                        .ok_or_else(|| Error::invalid(entry, "vanished from the plan"))?;
                    let data = f.dense(e)?;
                    let (q, err) = quantize(&qualified(f, &e.name), &data, *n, *k)?;
                    drop(data);
                    let layer = QuantizedLayer {
                        prefix: module_of(&e.name).to_string(),
                        tensor: q,
                        input_scale: None,
                    };
                    write_layer(w, layer, to, specs, summary)?;
                    if let Some(mut err) = err {
                        err.name = e.name.clone();
                        summary.layers.push(err);
                    }
                    progress(e.len() as u64);
                }
                Job::Layer { prefix, from } => {
                    let layer = flavour::read_layer(ck, prefix, *from)?;
                    let bytes = layer.tensor.size_bytes() as u64;
                    write_layer(w, layer, to, specs, summary)?;
                    progress(bytes);
                }
                Job::Dequantize { prefix, from, n, k } => {
                    let layer = flavour::read_layer(ck, prefix, *from)?;
                    let name = format!("{prefix}.weight");
                    let bytes = match specs[0].dtype {
                        StDtype::F32 => {
                            bytemuck::cast_slice(&quant::dequantize::<f32>(&layer.tensor)).to_vec()
                        }
                        StDtype::F16 => {
                            bytemuck::cast_slice(&quant::dequantize::<half::f16>(&layer.tensor)).to_vec()
                        }
                        _ => bytemuck::cast_slice(&quant::dequantize::<half::bf16>(&layer.tensor)).to_vec(),
                    };
                    debug_assert_eq!(bytes.len(), n * k * specs[0].dtype.bitsize() / 8);
                    summary.quantized += 1;
                    summary.bytes_written += bytes.len() as u64;
                    w.write(name, bytes)?;
                    progress(layer.tensor.size_bytes() as u64);
                }
            }
        }
        Ok(())
    })
}

fn write_layer(
    w: &Sink<'_>,
    layer: QuantizedLayer,
    to: Flavour,
    specs: &[TensorSpec],
    summary: &mut Summary,
) -> Result<()> {
    let tensors = flavour::layer_tensors(layer, to)?;
    if tensors.len() != specs.len() {
        return Err(Error::invalid(
            &specs[0].name,
            "the layer's tensors differ from its plan",
        ));
    }
    for t in tensors {
        summary.bytes_written += t.bytes.len() as u64;
        w.write(t.name, t.bytes)?;
    }
    summary.quantized += 1;
    Ok(())
}

fn excluded_modules(decisions: &[Decision]) -> Vec<String> {
    let mut v: Vec<String> = decisions
        .iter()
        .filter(|d| !d.quantize && d.name.ends_with(".weight"))
        .map(|d| module_of(&d.name).to_string())
        .collect();
    v.sort();
    v.dedup();
    v
}

fn kept_weight_modules(ck: &Checkpoint, layers: &[(String, Flavour)]) -> Vec<String> {
    let quantized: std::collections::HashSet<&str> = layers.iter().map(|(p, _)| p.as_str()).collect();
    let mut v: Vec<String> = ck
        .names()
        .filter(|n| n.ends_with(".weight"))
        .map(module_of)
        .filter(|m| !quantized.contains(m))
        .map(str::to_string)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The flavour's marker in `config.json["quantization_config"]` (ModelOpt: also `hf_quant_config.json`).
pub fn quant_config_json(to: Flavour, excluded: &[String]) -> serde_json::Value {
    match to {
        Flavour::ModelOpt => serde_json::json!({
            "producer": { "name": "nvfp4-rs", "version": env!("CARGO_PKG_VERSION") },
            "quantization": {
                "quant_algo": "NVFP4",
                "kv_cache_quant_algo": null,
                "group_size": 16,
                "exclude_modules": excluded,
            }
        }),
        Flavour::CompressedTensors => serde_json::json!({
            "quant_method": "compressed-tensors",
            "format": "nvfp4-pack-quantized",
            "quantization_status": "compressed",
            "config_groups": { "group_0": {
                "targets": ["Linear"],
                "weights": { "num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16,
                             "symmetric": true, "dynamic": false, "scale_dtype": "float8_e4m3fn" },
                "input_activations": null,
                "format": "nvfp4-pack-quantized",
            }},
            "ignore": excluded,
        }),
        Flavour::Comfy | Flavour::Dense => serde_json::Value::Null,
    }
}

/// `config.json["quantization_config"]` for ModelOpt: the flat form vLLM and transformers read.
fn modelopt_hf_config(excluded: &[String]) -> serde_json::Value {
    serde_json::json!({
        "quant_method": "modelopt",
        "quant_algo": "NVFP4",
        "group_size": 16,
        "exclude_modules": excluded,
        "ignore": excluded,
        "producer": { "name": "nvfp4-rs", "version": env!("CARGO_PKG_VERSION") },
        "config_groups": { "group_0": {
            "weights": { "dynamic": false, "num_bits": 4, "type": "float", "group_size": 16 },
            "targets": ["Linear"],
        }},
    })
}

/// For directory outputs: the index, `config.json` with the flavour's `quantization_config`,
/// `hf_quant_config.json` for ModelOpt, and every other regular file of the model copied.
fn finish_dir(
    ck: &Checkpoint,
    output: &Output,
    plans: &[FilePlan],
    to: Flavour,
    excluded: &[String],
) -> Result<()> {
    if !output.dir {
        return Ok(());
    }
    let Some(dir) = &ck.dir else { return Ok(()) };
    let out = output.staged.path();
    let inputs: std::collections::HashSet<PathBuf> =
        ck.files().iter().map(|f| f.path().to_path_buf()).collect();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        let name = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if !p.is_file()
            || inputs.contains(&p)
            || name == INDEX_NAME
            || name == "config.json"
            || name == "hf_quant_config.json"
            || name.starts_with('.')
        {
            continue;
        }
        std::fs::copy(&p, out.join(&name)).map_err(|e| Error::io(&p, e))?;
    }
    if let Some(mut config) = ck.config()? {
        if let Some(o) = config.as_object_mut() {
            match to {
                Flavour::ModelOpt => {
                    o.insert("quantization_config".into(), modelopt_hf_config(excluded));
                }
                Flavour::CompressedTensors => {
                    o.insert("quantization_config".into(), quant_config_json(to, excluded));
                }
                Flavour::Comfy | Flavour::Dense => {
                    o.remove("quantization_config");
                }
            }
        }
        write_json(&out.join("config.json"), &config)?;
    }
    if to == Flavour::ModelOpt {
        write_json(
            &out.join("hf_quant_config.json"),
            &quant_config_json(to, excluded),
        )?;
    }
    if ck.is_sharded() {
        let mut map = serde_json::Map::new();
        let mut total = 0u64;
        for p in plans {
            let shard = ck.files()[p.input]
                .path()
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            for (_, specs) in &p.jobs {
                for s in specs {
                    total += s.byte_len() as u64;
                    map.insert(s.name.clone(), serde_json::Value::String(shard.clone()));
                }
            }
        }
        write_json(
            &out.join(INDEX_NAME),
            &serde_json::json!({ "metadata": { "total_size": total }, "weight_map": map }),
        )?;
    }
    Ok(())
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| Error::invalid(&path.display().to_string(), e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}
