//! `nvfp4 diag --json` and `nvfp4 demo --json` through the built binary: valid JSON with every
//! documented key, and the self-test break hook turning a check into FAIL with a non-zero exit.
//! Without a GPU (CI) this covers the CPU path; with one it runs the GPU self-test too.

use std::process::Command;

use serde_json::Value;

fn nvfp4(args: &[&str], env: &[(&str, &str)]) -> (i32, Value) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nvfp4"));
    c.args(args).env_remove("NVFP4_DIAG_BREAK");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("running nvfp4");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

fn has(v: &Value, keys: &[&str], what: &str) {
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("{what} is not an object: {v}"));
    for k in keys {
        assert!(o.contains_key(*k), "{what} lacks key `{k}`: {v}");
    }
}

#[test]
fn diag_json_has_every_documented_key() {
    let (rc, v) = nvfp4(&["diag", "--json", "--model", "3b"], &[]);
    assert_eq!(rc, 0, "{v}");
    has(
        &v,
        &[
            "schema_version",
            "gpu_available",
            "no_gpu_reason",
            "passed",
            "warnings",
            "system",
            "selftest",
            "transfers",
            "overlap",
            "model",
        ],
        "report",
    );
    has(
        &v["system"],
        &[
            "nvcc",
            "fatbin_targets",
            "driver_version",
            "cuda_driver_api",
            "gpu_name",
            "compute_capability",
            "sm_count",
            "memory_bytes",
            "pcie_link",
            "native_image",
            "kernels",
        ],
        "system",
    );
    for k in v["system"]["kernels"].as_array().expect("kernels") {
        has(k, &["op", "family", "why"], "kernel choice");
    }
    let checks = v["selftest"].as_array().expect("selftest");
    assert!(checks.len() >= 3);
    for c in checks {
        has(c, &["name", "device", "status", "detail"], "check");
        assert_ne!(c["status"], "FAIL", "{c}");
    }
    for name in ["cpu_quantize", "cpu_dequantize", "cpu_reference_gemm"] {
        assert!(checks.iter().any(|c| c["name"] == name), "no check {name}");
    }
    assert_eq!(v["passed"], true);
    has(
        &v["model"],
        &["name", "blocks", "tokens", "vram_budget_bytes", "dtypes"],
        "model",
    );
    assert_eq!(v["model"]["name"], "seedvr2-3b");
    for d in v["model"]["dtypes"].as_array().expect("dtypes") {
        has(
            d,
            &[
                "dtype",
                "block_bytes",
                "upload_ms",
                "compute_ms",
                "prefetch_depth",
                "blocks_to_swap",
                "pool_bytes",
                "pass_ms",
            ],
            "dtype",
        );
    }
    if v["gpu_available"] == true {
        has(
            &v["transfers"],
            &[
                "bytes",
                "pinned_h2d_gbs",
                "pinned_d2h_gbs",
                "pageable_h2d_gbs",
                "pageable_d2h_gbs",
                "pool_cap_bytes",
            ],
            "transfers",
        );
        has(
            &v["overlap"],
            &["copy_ms", "gemm_ms", "both_ms", "ratio"],
            "overlap",
        );
    } else {
        assert!(v["no_gpu_reason"].is_string());
    }
}

#[test]
fn diag_break_hook_fails_with_nonzero_exit() {
    let (rc, v) = nvfp4(&["diag", "--json"], &[("NVFP4_DIAG_BREAK", "cpu_quantize")]);
    assert_ne!(rc, 0, "{v}");
    assert_eq!(v["passed"], false);
    let c = v["selftest"]
        .as_array()
        .expect("selftest")
        .iter()
        .find(|c| c["name"] == "cpu_quantize")
        .cloned();
    assert_eq!(c.expect("cpu_quantize check")["status"], "FAIL");
}

#[test]
fn diag_vram_budget_sets_blocks_to_swap() {
    let (rc, v) = nvfp4(&["diag", "--json", "--vram-budget", "2"], &[]);
    assert_eq!(rc, 0, "{v}");
    let d = &v["model"]["dtypes"];
    // 7B NVFP4 blocks are 127 MB: 2 GB holds 15 of them, so 36 - 15 + 2 slots -> 23 streamed.
    assert_eq!(d[1]["dtype"], "nvfp4");
    let swap = d[1]["blocks_to_swap"].as_u64().expect("blocks_to_swap");
    let bb = d[1]["block_bytes"].as_u64().expect("block_bytes");
    let depth = d[1]["prefetch_depth"].as_u64().expect("depth");
    assert!((36 - swap + depth) * bb <= 2_000_000_000, "{d}");
    assert!((36 - swap + 1 + depth) * bb > 2_000_000_000, "{d}");
}

#[test]
fn demo_json_has_every_key() {
    let (rc, v) = nvfp4(
        &[
            "demo", "--json", "--blocks", "2", "--hidden", "64", "--tokens", "8",
        ],
        &[],
    );
    assert_eq!(rc, 0, "{v}");
    has(
        &v,
        &[
            "seed",
            "blocks",
            "hidden",
            "tokens",
            "params",
            "backend",
            "device",
            "gpu_unavailable_reason",
            "kernels",
            "snr_db",
            "rel_rmse",
            "max_abs_err",
            "bf16_bytes",
            "nvfp4_bytes",
            "memory_saved",
            "quantize_ms",
            "reference_ms",
            "nvfp4_ms",
            "output_hash",
            "streamed",
            "streamed_blocks",
            "prefetch_depth",
            "upload_ms",
            "compute_ms",
            "stall_ms",
            "upload_overlap",
            "bytes_uploaded",
            "pageable_tensors",
        ],
        "demo",
    );
    // On the GPU the blocks stream through the prefetcher; on the CPU there is nothing to stream.
    if v["backend"] == "gpu" {
        assert_eq!(v["streamed"], true, "{v}");
        assert_eq!(v["streamed_blocks"].as_u64(), Some(2), "{v}");
    } else {
        assert_eq!(v["streamed"], false, "{v}");
        assert!(v["streamed_blocks"].is_null(), "{v}");
    }
    // NVFP4 costs accuracy but keeps the signal: well above 10 dB on this seeded model.
    assert!(v["snr_db"].as_f64().expect("snr") > 10.0, "{v}");
    assert!(v["memory_saved"].as_f64().expect("saved") > 0.7, "{v}");
}

#[test]
fn diag_model_file_groups_blocks() {
    use safetensors::tensor::{Dtype, TensorView};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.safetensors");
    let data = vec![0u8; 32 * 64 * 2];
    let mut tensors = Vec::new();
    for name in [
        "blocks.0.mlp.weight",
        "blocks.1.mlp.weight",
        "blocks.1.attn.weight",
        "head.weight",
    ] {
        tensors.push((
            name.to_string(),
            TensorView::new(Dtype::BF16, vec![32, 64], &data).expect("view"),
        ));
    }
    safetensors::serialize_to_file(tensors, None, &path).expect("write");
    let (rc, v) = nvfp4(
        &["diag", "--json", "--model", path.to_str().expect("utf-8 path")],
        &[],
    );
    assert_eq!(rc, 0, "{v}");
    assert_eq!(v["model"]["blocks"], 2, "{v}");
    // The largest block (block 1: two [32, 64] linears) stands for every block.
    assert_eq!(v["model"]["dtypes"][0]["block_bytes"], 2 * 32 * 64 * 2, "{v}");
}
