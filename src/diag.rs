//! Diagnostics of this machine for the crate: the system, a self-test of every kernel against the CPU
//! reference, host-device transfer bandwidth, copy/compute overlap, and IO against compute for a
//! model. [`run`] returns a [`DiagReport`]; `nvfp4 diag` prints it.
//!
//! # JSON schema (`DiagReport::to_json`, version [`SCHEMA_VERSION`])
//!
//! Every key is always present; a value that was not measured is `null`.
//!
//! - `schema_version` (int), `gpu_available` (bool), `no_gpu_reason` (string|null), `passed` (bool),
//!   `warnings` (array of strings)
//! - `system`: `nvcc` (string), `fatbin_targets` (array of strings), `driver_version` (string),
//!   `cuda_driver_api` (string), `gpu_name`, `compute_capability` (e.g. "sm_90"), `sm_count`,
//!   `memory_bytes`, `pcie_link` (e.g. "gen5 x16" or "unknown"), `native_image` (bool|null),
//!   `kernels` (array of `{op, family, why}`); GPU keys are null without a GPU
//! - `selftest` (checks: `cpu_quantize`, `cpu_dequantize`, `cpu_reference_gemm`; with a GPU also
//!   `quantize`, `dequantize`, `scale_layout`, `gemv_w4a16`, `gemm_w4a16`, `gemv_w4a4`, `gemm_w4a4`,
//!   `gemm_cublas` (the dequantize + cuBLAS route; SKIP without cuBLAS), `gemm_fp4_sm120`,
//!   `offload_stream`, `checksum`): array of `{name, device ("cpu"|"gpu"), status ("PASS"|"FAIL"|"SKIP"), detail}`
//! - `transfers`: null, or `{bytes, pinned_h2d_gbs, pinned_d2h_gbs, pageable_h2d_gbs,
//!   pageable_d2h_gbs, pool_cap_bytes}`
//! - `overlap`: null, or `{copy_ms, gemm_ms, both_ms, ratio}` (ratio = both / max(copy, gemm))
//! - `model` (`name` is the path for a checkpoint FILE): `{name, blocks, tokens, vram_budget_bytes, dtypes: [{dtype ("bf16"|"nvfp4"),
//!   block_bytes, upload_ms, compute_ms, prefetch_depth, blocks_to_swap, pool_bytes, pass_ms}]}`;
//!   the times (and the figures that depend on them) are null without a GPU
//!
//! The self-test hook [`DiagOptions::break_kernel`] (the CLI reads `NVFP4_DIAG_BREAK=<name>`) corrupts
//! the named check's result before it is compared, so that check reports FAIL.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;
use serde_json::{Value, json};

use crate::cuda::{
    Device, GpuTimer, PinnedBuffer, PinnedFlags, StreamSet, alloc_zeros, copy_h2d_async, default_pool_cap,
    download, upload,
};
use crate::error::{Error, Result};
use crate::format::{Dtype, ScaleLayout, e2m1, e4m3};
use crate::ops::{self, DeviceNvfp4, Fp4Backend, GemmOp, GemmPlan, GemmRoute, GemmSpec};
use crate::quant::{self, QuantizeOptions};
use crate::reference::{self, synthetic::Rng};

/// Version of the JSON schema in the module documentation.
pub const SCHEMA_VERSION: u32 = 1;

/// Which model the IO-versus-compute section sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiagModel {
    /// SeedVR2-3B's shapes (32 blocks, hidden 2560; approximate).
    Seedvr2_3b,
    /// SeedVR2-7B's shapes (36 blocks, hidden 3072).
    Seedvr2_7b,
    /// A safetensors checkpoint (file, directory or index): its 2-D `*.weight` tensors grouped into
    /// blocks by the first numeric name component (`blocks.7.attn.qkv.weight` is block 7); NVFP4
    /// (`U8`) weights count two columns a byte. The largest block stands for every block.
    File(std::path::PathBuf),
}

/// A model's name, block count and the `[out, in]` linears of one block.
pub type ModelShape = (String, usize, Vec<(usize, usize)>);

impl DiagModel {
    /// Name, block count and the `[out, in]` linears of one block.
    pub fn shapes(&self) -> Result<ModelShape> {
        let (name, blocks, h) = match self {
            DiagModel::Seedvr2_3b => ("seedvr2-3b", 32, 2560),
            DiagModel::Seedvr2_7b => ("seedvr2-7b", 36, 3072),
            DiagModel::File(path) => return checkpoint_shapes(path),
        };
        // Each linear exists for the video and for the text stream.
        let one = [(3 * h, h), (h, h), (4 * h, h), (h, 4 * h)];
        Ok((
            name.to_string(),
            blocks,
            one.iter().chain(one.iter()).copied().collect(),
        ))
    }
}

fn checkpoint_shapes(path: &std::path::Path) -> Result<ModelShape> {
    use safetensors::Dtype as St;
    let ck = crate::checkpoint::Checkpoint::open(path)?;
    let mut by_block: std::collections::BTreeMap<String, Vec<(usize, usize)>> = Default::default();
    for f in ck.files() {
        for e in f.entries() {
            if !e.name.ends_with(".weight") || e.shape.len() != 2 {
                continue;
            }
            let (n, k) = match e.dtype {
                St::F32 | St::F16 | St::BF16 => (e.shape[0], e.shape[1]),
                St::U8 => (e.shape[0], e.shape[1] * 2),
                _ => continue,
            };
            let parts: Vec<&str> = e.name.split('.').collect();
            let Some(i) = parts.iter().position(|p| p.parse::<usize>().is_ok()) else {
                continue;
            };
            by_block.entry(parts[..=i].join(".")).or_default().push((n, k));
        }
    }
    let blocks = by_block.len();
    let linears = by_block
        .into_values()
        .max_by_key(|l| l.iter().map(|&(n, k)| n * k).sum::<usize>())
        .ok_or_else(|| {
            Error::invalid(
                &path.display().to_string(),
                "no 2-D `*.weight` tensor with a block number in its name",
            )
        })?;
    Ok((path.display().to_string(), blocks, linears))
}

/// What [`run`] does.
#[derive(Clone, Debug)]
pub struct DiagOptions {
    /// GPU ordinal.
    pub device: usize,
    /// The model of the IO section.
    pub model: DiagModel,
    /// VRAM budget in bytes for `blocks_to_swap` (default: 90% of the GPU's memory).
    pub vram_budget: Option<usize>,
    /// Corrupt this self-test check's result (a test hook): the check reports FAIL.
    pub break_kernel: Option<String>,
    /// Tokens (M) of the model section's GEMMs.
    pub tokens: usize,
}

impl Default for DiagOptions {
    fn default() -> Self {
        DiagOptions {
            device: 0,
            model: DiagModel::Seedvr2_7b,
            vram_budget: None,
            break_kernel: None,
            tokens: 256,
        }
    }
}

/// Outcome of one self-test check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Matched the reference.
    Pass,
    /// Did not match (or failed to run).
    Fail,
    /// Not applicable on this machine.
    Skip,
}

impl Status {
    /// "PASS", "FAIL" or "SKIP".
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        }
    }
}

/// One self-test check.
#[derive(Clone, Debug)]
pub struct Check {
    /// The check's name (what `break_kernel` matches).
    pub name: String,
    /// "cpu" or "gpu".
    pub device: &'static str,
    /// The outcome.
    pub status: Status,
    /// What was compared, or the first mismatch.
    pub detail: String,
}

/// Which kernel family an operation uses on this GPU, and why.
#[derive(Clone, Debug)]
pub struct KernelChoice {
    /// The operation.
    pub op: String,
    /// The family (e.g. "Hopper mma.sync W4A16 GEMV").
    pub family: String,
    /// Why, from the plan's own explanation.
    pub why: String,
}

/// The system section.
#[derive(Clone, Debug, Default)]
pub struct SystemInfo {
    /// nvcc version the fatbins were built with, or "none".
    pub nvcc: String,
    /// Targets in the fatbin.
    pub fatbin_targets: Vec<String>,
    /// Kernel driver version (`/proc/driver/nvidia/version`), or "unknown".
    pub driver_version: Option<String>,
    /// CUDA version the driver supports (cuDriverGetVersion).
    pub cuda_driver_api: Option<String>,
    /// GPU name.
    pub gpu_name: Option<String>,
    /// "sm_XY".
    pub compute_capability: Option<String>,
    /// SMs.
    pub sm_count: Option<u32>,
    /// Device memory.
    pub memory_bytes: Option<usize>,
    /// PCIe link from sysfs ("gen5 x16"), or "unknown".
    pub pcie_link: Option<String>,
    /// Whether the fatbin has a native cubin for this GPU (otherwise PTX JIT or nothing).
    pub native_image: Option<bool>,
    /// Kernel family per operation.
    pub kernels: Vec<KernelChoice>,
}

/// Host-device copy bandwidth.
#[derive(Clone, Copy, Debug, Default)]
pub struct Transfers {
    /// Bytes per copy.
    pub bytes: usize,
    /// GB/s from pinned memory to the device.
    pub pinned_h2d_gbs: f64,
    /// GB/s from the device to pinned memory.
    pub pinned_d2h_gbs: f64,
    /// GB/s from pageable memory to the device.
    pub pageable_h2d_gbs: f64,
    /// GB/s from the device to pageable memory.
    pub pageable_d2h_gbs: f64,
    /// The pinned pool's default cap on this device.
    pub pool_cap_bytes: usize,
}

/// A real upload on a copy stream beside a real GEMM on the compute stream.
#[derive(Clone, Copy, Debug, Default)]
pub struct Overlap {
    /// The upload alone.
    pub copy_ms: f64,
    /// The GEMM alone.
    pub gemm_ms: f64,
    /// Both at once.
    pub both_ms: f64,
    /// `both / max(copy, gemm)`: 1.0 is full overlap, `(copy + gemm) / max` none.
    pub ratio: f64,
}

/// IO against compute for one weight type of the model.
#[derive(Clone, Debug, Default)]
pub struct DtypeIo {
    /// "bf16" or "nvfp4".
    pub dtype: &'static str,
    /// Device bytes of one block.
    pub block_bytes: usize,
    /// One block's upload from pinned memory (measured bandwidth).
    pub upload_ms: Option<f64>,
    /// One block's GEMMs at `tokens` rows (measured W4A16 kernels; the bf16 line uses the same
    /// compute, since only the upload differs in a streamed pass).
    pub compute_ms: Option<f64>,
    /// Recommended ring depth.
    pub prefetch_depth: Option<usize>,
    /// Fewest blocks to stream for the VRAM budget.
    pub blocks_to_swap: Option<usize>,
    /// Pinned bytes the streamed blocks need in the pool.
    pub pool_bytes: Option<usize>,
    /// Expected milliseconds per pass.
    pub pass_ms: Option<f64>,
}

/// The model section.
#[derive(Clone, Debug, Default)]
pub struct ModelIo {
    /// The model.
    pub name: String,
    /// Its blocks.
    pub blocks: usize,
    /// Rows of the GEMMs.
    pub tokens: usize,
    /// The budget used for `blocks_to_swap`.
    pub vram_budget_bytes: Option<usize>,
    /// bf16 and NVFP4.
    pub dtypes: Vec<DtypeIo>,
}

/// Everything [`run`] found.
#[derive(Clone, Debug, Default)]
pub struct DiagReport {
    /// Whether a GPU was opened.
    pub gpu_available: bool,
    /// Why not.
    pub no_gpu_reason: Option<String>,
    /// The system.
    pub system: SystemInfo,
    /// Every check.
    pub selftest: Vec<Check>,
    /// Copy bandwidth (GPU only).
    pub transfers: Option<Transfers>,
    /// Copy/compute overlap (GPU only).
    pub overlap: Option<Overlap>,
    /// The model section.
    pub model: Option<ModelIo>,
    /// Things to act on.
    pub warnings: Vec<String>,
}

impl DiagReport {
    /// Whether no check failed.
    pub fn passed(&self) -> bool {
        self.selftest.iter().all(|c| c.status != Status::Fail)
    }

    /// The report as JSON, with the keys of the module documentation.
    pub fn to_json(&self) -> Value {
        let s = &self.system;
        json!({
            "schema_version": SCHEMA_VERSION,
            "gpu_available": self.gpu_available,
            "no_gpu_reason": self.no_gpu_reason,
            "passed": self.passed(),
            "warnings": self.warnings,
            "system": {
                "nvcc": s.nvcc,
                "fatbin_targets": s.fatbin_targets,
                "driver_version": s.driver_version,
                "cuda_driver_api": s.cuda_driver_api,
                "gpu_name": s.gpu_name,
                "compute_capability": s.compute_capability,
                "sm_count": s.sm_count,
                "memory_bytes": s.memory_bytes,
                "pcie_link": s.pcie_link,
                "native_image": s.native_image,
                "kernels": s.kernels.iter().map(|k| json!({"op": k.op, "family": k.family, "why": k.why})).collect::<Vec<_>>(),
            },
            "selftest": self.selftest.iter().map(|c| json!({
                "name": c.name, "device": c.device, "status": c.status.as_str(), "detail": c.detail,
            })).collect::<Vec<_>>(),
            "transfers": self.transfers.map(|t| json!({
                "bytes": t.bytes,
                "pinned_h2d_gbs": t.pinned_h2d_gbs,
                "pinned_d2h_gbs": t.pinned_d2h_gbs,
                "pageable_h2d_gbs": t.pageable_h2d_gbs,
                "pageable_d2h_gbs": t.pageable_d2h_gbs,
                "pool_cap_bytes": t.pool_cap_bytes,
            })),
            "overlap": self.overlap.map(|o| json!({
                "copy_ms": o.copy_ms, "gemm_ms": o.gemm_ms, "both_ms": o.both_ms, "ratio": o.ratio,
            })),
            "model": self.model.as_ref().map(|m| json!({
                "name": m.name,
                "blocks": m.blocks,
                "tokens": m.tokens,
                "vram_budget_bytes": m.vram_budget_bytes,
                "dtypes": m.dtypes.iter().map(|d| json!({
                    "dtype": d.dtype,
                    "block_bytes": d.block_bytes,
                    "upload_ms": d.upload_ms,
                    "compute_ms": d.compute_ms,
                    "prefetch_depth": d.prefetch_depth,
                    "blocks_to_swap": d.blocks_to_swap,
                    "pool_bytes": d.pool_bytes,
                    "pass_ms": d.pass_ms,
                })).collect::<Vec<_>>(),
            })),
        })
    }
}

/// Runs every diagnostic that this machine allows. Failing checks are in the report, not errors; an
/// error is returned only for unusable options.
pub fn run(opts: &DiagOptions) -> Result<DiagReport> {
    let mut r = DiagReport {
        system: SystemInfo {
            nvcc: crate::cuda::NVCC_VERSION.unwrap_or("none").to_string(),
            fatbin_targets: crate::cuda::TARGETS.iter().map(|t| t.to_string()).collect(),
            ..Default::default()
        },
        ..Default::default()
    };
    r.selftest = cpu_selftest(opts.break_kernel.as_deref());
    let dev = match Device::new(opts.device) {
        Ok(d) => d,
        Err(e) => {
            r.no_gpu_reason = Some(e.to_string());
            r.system.kernels.push(KernelChoice {
                op: "all".into(),
                family: "CPU".into(),
                why: format!("no GPU: {e}"),
            });
            r.model = Some(model_io(opts, None, None, None)?);
            return Ok(r);
        }
    };
    r.gpu_available = true;
    system(&dev, &mut r);
    if !dev.has_kernels() {
        r.warnings
            .push("this build or this GPU has no nvfp4 kernels: only the CPU path runs".into());
        r.model = Some(model_io(opts, Some(&dev), None, None)?);
        return Ok(r);
    }
    r.selftest
        .extend(gpu_selftest(&dev, opts.break_kernel.as_deref()));
    match transfers(&dev) {
        Ok(t) => r.transfers = Some(t),
        Err(e) => r.warnings.push(format!("transfer measurement failed: {e}")),
    }
    match overlap(&dev) {
        Ok(o) => {
            if o.ratio > 1.2 {
                r.warnings.push(format!(
                    "upload and GEMM overlap poorly (both / max = {:.2}); streamed weights will stall",
                    o.ratio
                ));
            }
            r.overlap = Some(o);
        }
        Err(e) => r.warnings.push(format!("overlap measurement failed: {e}")),
    }
    let h2d = r.transfers.map(|t| t.pinned_h2d_gbs);
    let compute = match block_compute_ms(&dev, opts) {
        Ok(c) => Some(c),
        Err(e) => {
            r.warnings.push(format!("block compute measurement failed: {e}"));
            None
        }
    };
    r.model = Some(model_io(opts, Some(&dev), h2d, compute)?);
    Ok(r)
}

fn system(dev: &Device, r: &mut DiagReport) {
    let i = dev.info();
    let s = &mut r.system;
    s.gpu_name = Some(i.name.clone());
    s.compute_capability = Some(i.arch());
    s.sm_count = Some(i.sm_count);
    s.memory_bytes = Some(i.total_memory);
    s.cuda_driver_api = Some(format!(
        "{}.{}",
        i.driver_version / 1000,
        i.driver_version % 1000 / 10
    ));
    s.driver_version = Some(
        std::fs::read_to_string("/proc/driver/nvidia/version")
            .ok()
            .and_then(|t| {
                t.split_whitespace()
                    .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('.'))
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "unknown".into()),
    );
    s.pcie_link = Some(pcie_link(dev).unwrap_or_else(|| "unknown".into()));
    let native = s
        .fatbin_targets
        .iter()
        .any(|t| cubin_runs_on(t, i.compute_capability));
    s.native_image = Some(native);
    if !native {
        r.warnings.push(format!(
            "the fatbin ({}) has no native image for {}: kernels are JIT-compiled from PTX (slow start, \
             no arch-specific features) or absent",
            s.fatbin_targets.join(", "),
            i.arch()
        ));
    }
    for (op, m) in [("W4A16 GEMV (M <= 32)", 1usize), ("W4A16 GEMM (M > 32)", 256)] {
        match GemmPlan::new(dev, dev.stream(), &GemmSpec::w4a16(m, 3072, 3072)) {
            Ok(p) => s.kernels.push(KernelChoice {
                op: op.into(),
                family: match p.route() {
                    GemmRoute::DequantizeCublas { dtype } => format!("dequantize to {dtype:?} + cuBLAS"),
                    _ => format!(
                        "{} mma.sync in-register decode ({:?})",
                        family(i.compute_capability),
                        p.kernel()
                    ),
                },
                why: p.explain().to_string(),
            }),
            Err(e) => s.kernels.push(KernelChoice {
                op: op.into(),
                family: "CPU".into(),
                why: e.to_string(),
            }),
        }
    }
    // W4A4 through the general entry point: the FP4 tensor cores on sm_12x, the mma.sync decode
    // kernels elsewhere (ops::choose_kernel).
    for (op, m) in [("W4A4 GEMV (M <= 32)", 1usize), ("W4A4 GEMM (M > 32)", 256)] {
        match GemmPlan::new(dev, dev.stream(), &GemmSpec::w4a4(m, 3072, 3072)) {
            Ok(p) => s.kernels.push(KernelChoice {
                op: op.into(),
                family: match p.route() {
                    GemmRoute::Dequantize(k) => format!(
                        "{} mma.sync in-register decode ({k:?})",
                        family(i.compute_capability)
                    ),
                    GemmRoute::Fp4TensorCore { backend, tile } => format!(
                        "sm_120 FP4 tensor cores ({}, Fp4Backend::{backend:?})",
                        tile.kernel().symbol()
                    ),
                    GemmRoute::DequantizeCublas { dtype } => {
                        format!("dequantize to {dtype:?} + cuBLAS")
                    }
                },
                why: p.explain().to_string(),
            }),
            Err(e) => s.kernels.push(KernelChoice {
                op: op.into(),
                family: "CPU".into(),
                why: e.to_string(),
            }),
        }
    }
    let fp4 = match crate::cuda::gemm_fp4::fp4_mma_on(dev, true) {
        Ok(crate::cuda::gemm_fp4::Fp4Mma::Native) => KernelChoice {
            op: "W4A4 FP4 tensor-core GEMM".into(),
            family: "native sm_120 FP4 (Fp4Backend::Native)".into(),
            why: "sm_12x has the block-scaled FP4 MMA; GemmPlan's W4A4 route takes it by default".into(),
        },
        Ok(crate::cuda::gemm_fp4::Fp4Mma::Emulated) => KernelChoice {
            op: "W4A4 FP4 tensor-core GEMM".into(),
            family: "sm_120 kernel, MMA emulated (Fp4Backend::Sm120Emulated; verification only)".into(),
            why: "sm_90 has no FP4 MMA; the integer emulation gives the sm_120 bits, slowly, only when \
                  asked for (GemmSpec::fp4_backend); GemmPlan's W4A4 runs the mma.sync kernels here"
                .into(),
        },
        Err(e) => KernelChoice {
            op: "W4A4 FP4 tensor-core GEMM".into(),
            family: "none (use the W4A4 mma.sync GEMM)".into(),
            why: e.to_string(),
        },
    };
    s.kernels.push(fp4);
    s.kernels.push(KernelChoice {
        op: "quantize / dequantize / scale layouts".into(),
        family: format!("{} portable CUDA kernels", family(i.compute_capability)),
        why: "one kernel for every arch >= sm_80, byte-identical with the CPU".into(),
    });
}

/// Whether fatbin target `t` ("sm_90a", "sm_120f", "sm_80", "compute_80") is a cubin that runs on a
/// device of compute capability `cc`: `a` needs the exact arch, `f` the same major (family), plain
/// `sm_XY` the same major and a minor at most the device's; PTX (`compute_`) is not a native image.
fn cubin_runs_on(t: &str, cc: (u32, u32)) -> bool {
    let Some(v) = t.strip_prefix("sm_") else {
        return false;
    };
    let (digits, suffix) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let Ok(num) = digits.parse::<u32>() else {
        return false;
    };
    let (maj, min) = (num / 10, num % 10);
    match suffix {
        "a" => (maj, min) == cc,
        "f" => maj == cc.0 && min <= cc.1,
        "" => maj == cc.0 && min <= cc.1,
        _ => false,
    }
}

fn family(cc: (u32, u32)) -> &'static str {
    match cc.0 {
        12 => "Blackwell sm_120",
        10 => "Blackwell sm_100",
        9 => "Hopper",
        8 => "Ampere",
        _ => "portable",
    }
}

fn pcie_link(dev: &Device) -> Option<String> {
    use cudarc::driver::sys::CUdevice_attribute as A;
    let ctx = dev.context();
    let dom = ctx.attribute(A::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID).ok()?;
    let bus = ctx.attribute(A::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID).ok()?;
    let d = ctx.attribute(A::CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID).ok()?;
    let base = format!("/sys/bus/pci/devices/{dom:04x}:{bus:02x}:{d:02x}.0");
    let speed = std::fs::read_to_string(format!("{base}/current_link_speed")).ok()?;
    let width = std::fs::read_to_string(format!("{base}/current_link_width")).ok()?;
    let gts: f64 = speed.split_whitespace().next()?.parse().ok()?;
    let generation = match gts as u32 {
        0..=2 => 1,
        3..=5 => 2,
        6..=8 => 3,
        9..=16 => 4,
        17..=32 => 5,
        _ => 6,
    };
    Some(format!("gen{generation} x{} ({})", width.trim(), speed.trim()))
}

fn broken(hook: Option<&str>, name: &str) -> bool {
    hook == Some(name)
}

fn check(name: &str, device: &'static str, r: Result<std::result::Result<String, String>>) -> Check {
    let (status, detail) = match r {
        Ok(Ok(d)) => (Status::Pass, d),
        Ok(Err(d)) => (Status::Fail, d),
        Err(e) => (Status::Fail, format!("error: {e}")),
    };
    Check {
        name: name.into(),
        device,
        status,
        detail,
    }
}

fn first_diff<T: PartialEq + std::fmt::Debug>(
    got: &[T],
    want: &[T],
    what: &str,
) -> std::result::Result<String, String> {
    if got.len() != want.len() {
        return Err(format!("{what}: {} values, want {}", got.len(), want.len()));
    }
    match got.iter().zip(want).position(|(a, b)| a != b) {
        None => Ok(format!("{what}: {} values bit-exact", got.len())),
        Some(i) => Err(format!("{what}: index {i}: got {:?}, want {:?}", got[i], want[i])),
    }
}

fn within(
    r: &reference::GemmReference,
    got: &[f32],
    extra: usize,
    what: &str,
) -> std::result::Result<String, String> {
    match r.first_violation(got, extra) {
        None => Ok(format!("{what}: {} outputs within the f32 bound", got.len())),
        Some((i, err, bound)) => Err(format!("{what}: output {i}: error {err:e} > bound {bound:e}")),
    }
}

/// The CPU checks: quantize and dequantize against a scalar re-derivation from the codecs, and the
/// reference GEMM against an exact integer product. `hook` corrupts the named check.
pub fn cpu_selftest(hook: Option<&str>) -> Vec<Check> {
    let (m, n, k) = (5usize, 24usize, 64usize);
    let mut rng = Rng::new(0x5EED);
    let w = rng.normal_vec(n * k, 1.0);
    let q = quant::quantize("w", &w, n, k, &QuantizeOptions::default());
    let mut out = Vec::new();
    out.push(check(
        "cpu_quantize",
        "cpu",
        q.as_ref()
            .map_err(|e| Error::invalid("w", e.to_string()))
            .map(|q| {
                let mut codes = q.codes().to_vec();
                if broken(hook, "cpu_quantize") {
                    codes[0] ^= 1;
                }
                let s2 = q.global_scale();
                let amax = w.iter().fold(0f32, |a, x| a.max(x.abs()));
                if s2 != amax / 2688.0 {
                    return Err(format!(
                        "global scale {s2:e}, want amax/2688 = {:e}",
                        amax / 2688.0
                    ));
                }
                let mut want = vec![0u8; codes.len()];
                for (i, &x) in w.iter().enumerate() {
                    let (r, c) = (i / k, i % k);
                    let d = e4m3::decode_f32(q.scale_at(r, c / 16)) * s2;
                    let y = if x == 0.0 { x } else { x / d };
                    let code = e2m1::encode_f32(y, e2m1::ZeroSign::ModelOpt);
                    want[i / 2] |= code << (4 * (i % 2));
                }
                first_diff(&codes, &want, "codes vs scalar e2m1(x / (e4m3(sf) * S2))")
            }),
    ));
    out.push(check(
        "cpu_dequantize",
        "cpu",
        q.as_ref()
            .map_err(|e| Error::invalid("w", e.to_string()))
            .map(|q| {
                let mut got: Vec<u32> = quant::dequantize::<f32>(q).iter().map(|x| x.to_bits()).collect();
                if broken(hook, "cpu_dequantize") {
                    got[0] ^= 1;
                }
                let want: Vec<u32> = (0..n * k)
                    .map(|i| {
                        let (r, c) = (i / k, i % k);
                        let code = (q.codes()[i / 2] >> (4 * (i % 2))) & 0xF;
                        (e2m1::decode_f32(code)
                            * (e4m3::decode_f32(q.scale_at(r, c / 16)) * q.global_scale()))
                        .to_bits()
                    })
                    .collect();
                first_diff(&got, &want, "dequantize vs scalar e2m1 * (e4m3 * S2)")
            }),
    ));
    // Small integers: every product and sum is exact in f64 and in i64.
    let ai: Vec<i64> = (0..m * k).map(|_| (rng.next_u64() % 9) as i64 - 4).collect();
    let wi: Vec<i64> = (0..n * k).map(|_| (rng.next_u64() % 9) as i64 - 4).collect();
    let af: Vec<f32> = ai.iter().map(|&x| x as f32).collect();
    let wf: Vec<f32> = wi.iter().map(|&x| x as f32).collect();
    out.push(check(
        "cpu_reference_gemm",
        "cpu",
        reference::gemm_f32(&af, &wf, m, n, k).map(|r| {
            let mut got = r.values.clone();
            if broken(hook, "cpu_reference_gemm") {
                got[0] += 1.0;
            }
            let want: Vec<f64> = (0..m * n)
                .map(|i| {
                    let (r, c) = (i / n, i % n);
                    (0..k).map(|j| ai[r * k + j] * wi[c * k + j]).sum::<i64>() as f64
                })
                .collect();
            first_diff(&got, &want, "f64 reference GEMM vs exact integer product")
        }),
    ));
    out
}

fn to_bf16(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

/// The GPU checks: every kernel family against its CPU twin on small random data.
pub fn gpu_selftest(dev: &Device, hook: Option<&str>) -> Vec<Check> {
    let s = dev.stream().clone();
    let mut rng = Rng::new(0xD1A6);
    let (n, k) = (72usize, 320usize);
    let w = to_bf16(&rng.normal_vec(n * k, 1.0));
    let opts = QuantizeOptions::default();
    let cpu_w = quant::quantize("w", &w, n, k, &opts);
    let mut out = Vec::new();
    let Ok(cpu_w) = cpu_w else {
        out.push(check(
            "quantize",
            "gpu",
            Err(Error::invalid("w", "CPU quantize failed")),
        ));
        return out;
    };
    let gpu_w = (|| -> Result<DeviceNvfp4> {
        let x = upload(&s, "w", &w)?;
        ops::quantize(dev, &s, "w", &x, n, k, &opts)
    })();
    out.push(check(
        "quantize",
        "gpu",
        gpu_w
            .as_ref()
            .map_err(|e| Error::invalid("w", e.to_string()))
            .and_then(|g| {
                let h = g.download(&s)?;
                let mut codes = h.codes().to_vec();
                if broken(hook, "quantize") {
                    codes[0] ^= 1;
                }
                let r = first_diff(&codes, cpu_w.codes(), "codes").and_then(|a| {
                    first_diff(h.scales(), cpu_w.scales(), "scales")
                        .map(|b| format!("{a}; {b}; global scale {}", h.global_scale()))
                });
                Ok(r.and_then(|d| {
                    if h.global_scale().to_bits() == cpu_w.global_scale().to_bits() {
                        Ok(d)
                    } else {
                        Err(format!(
                            "global scale {} vs CPU {}",
                            h.global_scale(),
                            cpu_w.global_scale()
                        ))
                    }
                }))
            }),
    ));
    let dw = DeviceNvfp4::upload(&s, &cpu_w);
    out.push(check(
        "dequantize",
        "gpu",
        dw.as_ref()
            .map_err(|e| Error::invalid("w", e.to_string()))
            .and_then(|dw| {
                let mut y: CudaSlice<bf16> = alloc_zeros(&s, "y", n * k)?;
                ops::dequantize(dev, &s, dw, &mut y)?;
                let mut got: Vec<u16> = download(&s, "y", &y)?.iter().map(|x| x.to_bits()).collect();
                if broken(hook, "dequantize") {
                    got[0] ^= 1;
                }
                let want: Vec<u16> = quant::dequantize::<bf16>(&cpu_w)
                    .iter()
                    .map(|x| x.to_bits())
                    .collect();
                Ok(first_diff(&got, &want, "bf16 output"))
            }),
    ));
    out.push(check(
        "scale_layout",
        "gpu",
        (|| {
            let mut d = DeviceNvfp4::upload(&s, &cpu_w)?;
            d.set_scale_layout(dev, &s, ScaleLayout::Swizzled128x4)?;
            let mut got = d.download(&s)?.scales().to_vec();
            if broken(hook, "scale_layout") {
                got[0] ^= 1;
            }
            let want = cpu_w.clone().with_scale_layout(ScaleLayout::Swizzled128x4)?;
            Ok(first_diff(&got, want.scales(), "linear -> 128x4 swizzled scales"))
        })(),
    ));
    // The mma.sync kernels by name (the cuBLAS route forbidden, or M = 80 would take it), then the
    // dequantize + cuBLAS route forced, where cuBLAS loads.
    for (name, m, w4a4, cublas) in [
        ("gemv_w4a16", 3usize, false, Some(false)),
        ("gemm_w4a16", 80, false, Some(false)),
        ("gemv_w4a4", 3, true, Some(false)),
        ("gemm_w4a4", 80, true, Some(false)),
        ("gemm_cublas", 80, false, Some(true)),
    ] {
        if let (Some(true), ops::CublasAvailability::Unavailable(why)) =
            (cublas, ops::CublasAvailability::probe())
        {
            out.push(Check {
                name: name.into(),
                device: "gpu",
                status: Status::Skip,
                detail: format!("the dequantize + cuBLAS route is unavailable: {why}"),
            });
            continue;
        }
        let a = rng.normal_vec(m * k, 1.0);
        out.push(check(
            name,
            "gpu",
            (|| {
                let dw = DeviceNvfp4::upload(&s, &cpu_w)?;
                let mut o: CudaSlice<f32> = upload(&s, "out", &vec![f32::NAN; m * n])?;
                let spec = GemmSpec {
                    op: if w4a4 {
                        GemmOp::W4A4
                    } else {
                        GemmOp::W4A16(Dtype::Bf16)
                    },
                    out: Dtype::F32,
                    cublas,
                    ..GemmSpec::w4a16(m, n, k)
                };
                let mut plan = GemmPlan::new(dev, &s, &spec)?;
                let want = if w4a4 {
                    let aq = quant::quantize("a", &a, m, k, &opts)?;
                    let da = DeviceNvfp4::upload(&s, &aq)?;
                    plan.w4a4(dev, &s, &da, &dw, None, &mut o)?;
                    reference::gemm_w4a4(&aq, &cpu_w)?
                } else {
                    let ab = to_bf16(&a);
                    let da = upload(&s, "a", &ab)?;
                    plan.w4a16(dev, &s, &da, &dw, None, &mut o)?;
                    reference::gemm_w4a16(&ab, m, &cpu_w)?
                };
                let mut got = download(&s, "out", &o)?;
                if broken(hook, name) {
                    got[0] += 1.0e3;
                }
                // As tests/gpu/gemm.rs: truncating tensor-core adds count twice, plus the epilogue.
                Ok(within(&want, &got, k + 4, &format!("{:?}", plan.route())))
            })(),
        ));
    }
    let backend = match dev.info().compute_capability {
        (12, _) => Some(Fp4Backend::Native),
        (9, 0) => Some(Fp4Backend::Sm120Emulated),
        _ => None,
    };
    match backend {
        None => out.push(Check {
            name: "gemm_fp4_sm120".into(),
            device: "gpu",
            status: Status::Skip,
            detail: format!("no FP4 MMA (native or emulated) on {}", dev.info().arch()),
        }),
        Some(b) => {
            let m = 40;
            let a = rng.normal_vec(m * k, 1.0);
            out.push(check(
                "gemm_fp4_sm120",
                "gpu",
                (|| {
                    let aq = quant::quantize("a", &a, m, k, &opts)?;
                    let want: Vec<f32> = reference::mma::mma_gemm(&aq, &cpu_w, Default::default())?;
                    let mut da = DeviceNvfp4::upload(&s, &aq)?;
                    let mut dw = DeviceNvfp4::upload(&s, &cpu_w)?;
                    da.set_scale_layout(dev, &s, ScaleLayout::Swizzled128x4)?;
                    dw.set_scale_layout(dev, &s, ScaleLayout::Swizzled128x4)?;
                    let mut o: CudaSlice<f32> = upload(&s, "out", &vec![f32::NAN; m * n])?;
                    ops::gemm_fp4(dev, &s, &da, &dw, None, &mut o, b)?;
                    let mut got: Vec<u32> = download(&s, "out", &o)?.iter().map(|x| x.to_bits()).collect();
                    if broken(hook, "gemm_fp4_sm120") {
                        got[0] ^= 1;
                    }
                    let want: Vec<u32> = want.iter().map(|x| x.to_bits()).collect();
                    Ok(first_diff(&got, &want, &format!("{b:?} vs the CPU MMA model")))
                })(),
            ));
        }
    }
    out.push(check(
        "offload_stream",
        "gpu",
        (|| {
            use crate::offload::{HostBlock, HostTensor, LayerPrefetcher, PrefetchConfig, Weight};
            // Five blocks of different sizes streamed through two slots, two passes: each block's
            // device bytes (checksum kernel) must be its own image, never a stale slot's.
            let blocks = (0..5u64)
                .map(|b| {
                    let bytes: Vec<u8> = (0..1000 + 300 * b).map(|_| rng.next_u64() as u8).collect();
                    Ok(HostBlock {
                        tensors: vec![HostTensor::new(b + 1, format!("block{b}"), Weight::Bytes(bytes))?],
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let want: Vec<u64> = blocks
                .iter()
                .map(|b| b.device_image().map(|i| crate::offload::checksum(&i)))
                .collect::<Result<_>>()?;
            let streams = StreamSet::new(dev)?;
            let cfg = PrefetchConfig {
                blocks_to_swap: blocks.len(),
                depth: 2,
                ..Default::default()
            };
            let pool = Arc::new(crate::cuda::PinnedPool::new(dev));
            let mut pf = LayerPrefetcher::new(dev, streams.clone(), pool, blocks, cfg)?;
            let n = pf.num_blocks();
            let mut sums: CudaSlice<u64> = alloc_zeros(&streams.compute, "sums", 2 * n)?;
            for p in 0..2 {
                pf.begin_pass()?;
                for i in 0..n {
                    let b = pf.block(i)?;
                    crate::cuda::checksum(dev, &streams.compute, &b.bytes(), &mut sums, p * n + i)?;
                    pf.done(i)?;
                }
                pf.end_pass()?;
            }
            let mut got = download(&streams.compute, "sums", &sums)?;
            streams.synchronize()?;
            if broken(hook, "offload_stream") {
                got[0] ^= 1;
            }
            let want2: Vec<u64> = want.iter().chain(&want).copied().collect();
            Ok(first_diff(
                &got,
                &want2,
                "LayerPrefetcher block bytes, 5 blocks x 2 passes, depth 2",
            ))
        })(),
    ));
    out.push(check(
        "checksum",
        "gpu",
        (|| {
            let bytes: Vec<u8> = (0..100_003).map(|_| rng.next_u64() as u8).collect();
            let d = upload(&s, "bytes", &bytes)?;
            let mut sums: CudaSlice<u64> = alloc_zeros(&s, "sums", 1)?;
            crate::cuda::checksum(dev, &s, &d, &mut sums, 0)?;
            let mut got = download(&s, "sums", &sums)?;
            if broken(hook, "checksum") {
                got[0] ^= 1;
            }
            Ok(first_diff(
                &got,
                &[crate::offload::checksum(&bytes)],
                "offload checksum",
            ))
        })(),
    ));
    out
}

/// Mean milliseconds of `reps` runs of `f` on `stream` after one warm-up, timed with CUDA events.
pub fn time_ms<E: From<Error>>(
    stream: &Arc<CudaStream>,
    reps: usize,
    mut f: impl FnMut() -> std::result::Result<(), E>,
) -> std::result::Result<f64, E> {
    f()?;
    let t = GpuTimer::start(stream)?;
    for _ in 0..reps {
        f()?;
    }
    Ok(t.stop_ms(stream)? as f64 / reps.max(1) as f64)
}

/// Host memory of a bandwidth measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostMemory {
    /// A `Vec<u8>` (the driver stages it).
    Pageable,
    /// Page-locked memory with these flags.
    Pinned(PinnedFlags),
}

/// (H2D, D2H) GB/s of `bytes`-long copies between `host` memory and the device, mean of `reps`.
pub fn copy_bandwidth(
    dev: &Device,
    stream: &Arc<CudaStream>,
    bytes: usize,
    reps: usize,
    host: HostMemory,
) -> Result<(f64, f64)> {
    let mut d: CudaSlice<u8> = alloc_zeros(stream, "device buffer", bytes)?;
    let err = crate::cuda::cuda_err;
    let (h2d, d2h) = match host {
        HostMemory::Pageable => {
            let mut p = vec![1u8; bytes];
            (
                time_ms(stream, reps, || {
                    stream.memcpy_htod(&p, &mut d).map_err(err("H2D copy"))
                })?,
                time_ms(stream, reps, || {
                    stream.memcpy_dtoh(&d, &mut p).map_err(err("D2H copy"))
                })?,
            )
        }
        HostMemory::Pinned(flags) => {
            let mut p = PinnedBuffer::new(dev.context(), bytes, flags)?;
            (
                time_ms(stream, reps, || {
                    stream.memcpy_htod(p.as_slice(), &mut d).map_err(err("H2D copy"))
                })?,
                time_ms(stream, reps, || {
                    stream.memcpy_dtoh(&d, p.as_mut_slice()).map_err(err("D2H copy"))
                })?,
            )
        }
    };
    let gbs = |ms: f64| bytes as f64 / (ms * 1e-3) / 1e9;
    Ok((gbs(h2d), gbs(d2h)))
}

fn transfers(dev: &Device) -> Result<Transfers> {
    let s = dev.new_stream()?;
    let bytes = 64 << 20;
    let (ph, pd) = copy_bandwidth(dev, &s, bytes, 5, HostMemory::Pinned(PinnedFlags::Portable))?;
    let (gh, gd) = copy_bandwidth(dev, &s, bytes, 3, HostMemory::Pageable)?;
    Ok(Transfers {
        bytes,
        pinned_h2d_gbs: ph,
        pinned_d2h_gbs: pd,
        pageable_h2d_gbs: gh,
        pageable_d2h_gbs: gd,
        pool_cap_bytes: default_pool_cap(dev),
    })
}

fn overlap(dev: &Device) -> Result<Overlap> {
    let st = StreamSet::new(dev)?;
    let bytes = 128usize << 20;
    let host = PinnedBuffer::new(dev.context(), bytes, PinnedFlags::Portable)?;
    let mut slot: CudaSlice<u8> = alloc_zeros(&st.upload, "slot", bytes)?;
    let (m, n, k) = (512usize, 8192usize, 8192usize);
    let zeros = QuantizeOptions::default();
    let w = DeviceNvfp4::alloc(&st.compute, "w", n, k, &zeros)?;
    let a: CudaSlice<bf16> = alloc_zeros(&st.compute, "a", m * k)?;
    let mut o: CudaSlice<bf16> = alloc_zeros(&st.compute, "out", m * n)?;
    let mut plan = GemmPlan::new(dev, &st.compute, &GemmSpec::w4a16(m, n, k))?;
    st.synchronize()?;
    let reps = 3;
    let copy_ms = time_ms(&st.upload, reps, || {
        copy_h2d_async(&st.upload, &host, 0, &mut slot)
    })?;
    let gemm_ms = time_ms(&st.compute, reps, || {
        plan.w4a16(dev, &st.compute, &a, &w, None, &mut o)
    })?;
    // Both: the copy stream starts with the compute stream and the compute stream ends after it.
    let mut both = 0.0;
    for _ in 0..reps {
        st.synchronize()?;
        let t = GpuTimer::start(&st.compute)?;
        let start = st.record(&st.compute)?;
        st.wait(&st.upload, &start)?;
        copy_h2d_async(&st.upload, &host, 0, &mut slot)?;
        plan.w4a16(dev, &st.compute, &a, &w, None, &mut o)?;
        let done = st.record(&st.upload)?;
        st.wait(&st.compute, &done)?;
        both += t.stop_ms(&st.compute)? as f64;
    }
    let both_ms = both / reps as f64;
    st.synchronize()?;
    Ok(Overlap {
        copy_ms,
        gemm_ms,
        both_ms,
        ratio: both_ms / copy_ms.max(gemm_ms).max(f64::MIN_POSITIVE),
    })
}

fn block_compute_ms(dev: &Device, opts: &DiagOptions) -> Result<f64> {
    let (_, _, linears) = opts.model.shapes()?;
    let s = dev.new_stream()?;
    let m = opts.tokens.max(1);
    let mut total = 0.0;
    // Each distinct shape timed once, counted as often as it occurs; K not a multiple of 16 stays
    // bf16 in a real model and is not timed.
    let mut distinct: Vec<((usize, usize), usize)> = Vec::new();
    for &nk in linears.iter().filter(|l| l.1 % 16 == 0) {
        match distinct.iter_mut().find(|d| d.0 == nk) {
            Some(d) => d.1 += 1,
            None => distinct.push((nk, 1)),
        }
    }
    for &((n, k), count) in &distinct {
        let w = DeviceNvfp4::alloc(&s, "w", n, k, &QuantizeOptions::default())?;
        let a: CudaSlice<bf16> = alloc_zeros(&s, "a", m * k)?;
        let mut o: CudaSlice<bf16> = alloc_zeros(&s, "out", m * n)?;
        let mut plan = GemmPlan::new(dev, &s, &GemmSpec::w4a16(m, n, k))?;
        total += count as f64 * time_ms(&s, 3, || plan.w4a16(dev, &s, &a, &w, None, &mut o))?;
    }
    Ok(total)
}

/// Device bytes of one block: NVFP4 codes + linear scales + global scale, each part 256-aligned as
/// the prefetcher lays them out; bf16 two bytes a weight.
fn block_bytes(linears: &[(usize, usize)], nvfp4: bool) -> usize {
    let al = |x: usize| x.div_ceil(crate::offload::PART_ALIGN) * crate::offload::PART_ALIGN;
    linears
        .iter()
        .map(|&(n, k)| {
            if nvfp4 {
                al(n * k / 2) + al(n * k / 16) + al(4)
            } else {
                al(n * k * 2)
            }
        })
        .sum()
}

/// Fewest blocks to stream so that the resident blocks plus `depth` slots fit `budget`, or `None`
/// when even streaming all of them does not.
pub fn blocks_to_swap(blocks: usize, block_bytes: usize, depth: usize, budget: usize) -> Option<usize> {
    (0..=blocks).find(|&s| {
        let slots = if s == 0 { 0 } else { depth.min(s) };
        (blocks - s + slots).saturating_mul(block_bytes) <= budget
    })
}

fn model_io(
    opts: &DiagOptions,
    dev: Option<&Device>,
    h2d_gbs: Option<f64>,
    compute_ms: Option<f64>,
) -> Result<ModelIo> {
    let (name, blocks, linears) = opts.model.shapes()?;
    let budget = opts
        .vram_budget
        .or_else(|| dev.map(|d| d.info().total_memory / 10 * 9));
    let mut dtypes = Vec::new();
    for (dtype, nv) in [("bf16", false), ("nvfp4", true)] {
        let bb = block_bytes(&linears, nv);
        let upload_ms = h2d_gbs.map(|g| bb as f64 / (g * 1e9) * 1e3);
        let depth = match (upload_ms, compute_ms) {
            (Some(u), Some(c)) if u > c && c > 0.0 => ((u / c).ceil() as usize + 1).min(4),
            _ => 2,
        };
        let swap = budget.and_then(|b| blocks_to_swap(blocks, bb, depth, b));
        let pass_ms = match (upload_ms, compute_ms, swap) {
            (Some(u), Some(c), Some(s)) => Some(s as f64 * u.max(c) + (blocks - s) as f64 * c),
            _ => None,
        };
        dtypes.push(DtypeIo {
            dtype,
            block_bytes: bb,
            upload_ms,
            compute_ms,
            prefetch_depth: Some(depth),
            blocks_to_swap: swap,
            pool_bytes: swap.map(|s| s * bb),
            pass_ms,
        });
    }
    Ok(ModelIo {
        name,
        blocks,
        tokens: opts.tokens,
        vram_budget_bytes: budget,
        dtypes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_selftest_passes_and_breaks() {
        assert!(cpu_selftest(None).iter().all(|c| c.status == Status::Pass));
        let b = cpu_selftest(Some("cpu_quantize"));
        assert_eq!(b.iter().filter(|c| c.status == Status::Fail).count(), 1);
    }

    #[test]
    fn native_images() {
        assert!(cubin_runs_on("sm_90a", (9, 0)));
        assert!(!cubin_runs_on("sm_90a", (10, 0)));
        assert!(cubin_runs_on("sm_120f", (12, 1)));
        assert!(cubin_runs_on("sm_80", (8, 6)));
        assert!(!cubin_runs_on("compute_80", (8, 0)));
        assert!(!cubin_runs_on("sm_100a", (10, 3)));
    }

    #[test]
    fn swap_fits_budget() {
        assert_eq!(blocks_to_swap(10, 100, 2, 1000), Some(0));
        assert_eq!(blocks_to_swap(10, 100, 2, 500), Some(7));
        assert_eq!(blocks_to_swap(10, 100, 2, 100), None);
    }
}
