//! Disk-write failure during `nvfp4 quantize` / `dequantize` / `convert`: the binary runs under a
//! file-size limit (`ulimit -f`, SIGXFSZ ignored, so `write()` fails with EFBIG once the output
//! passes the limit). Each must exit non-zero with a typed I/O error naming the output, leave no
//! output and no temporary file, and not panic.

#[path = "checkpoint_common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::Gen;
use nvfp4::reference::synthetic::Rng;
use safetensors::Dtype as St;

/// Runs `nvfp4 ARGS` with writes limited to `blocks` 512-byte blocks (POSIX `ulimit -f` units in
/// sh; bash counts 1024-byte blocks, still far below the outputs here).
fn nvfp4_limited(blocks: u32, args: &[&Path]) -> Output {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f {blocks} || exit 99; exec \"$0\" \"$@\""
        ))
        .arg(env!("CARGO_BIN_EXE_nvfp4"))
        .args(args)
        .stdin(Stdio::null());
    cmd.output().unwrap()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A dense model whose NVFP4 output (about 150 KB) and bf16 output (512 KB) both pass the limit.
fn big_model(path: &Path) {
    let gens = [
        Gen {
            name: "model.layers.0.mlp.up_proj.weight",
            dtype: St::BF16,
            shape: vec![512, 512],
        },
        Gen {
            name: "model.norm.weight",
            dtype: St::BF16,
            shape: vec![512],
        },
    ];
    let mut rng = Rng::new(common::seed());
    common::write(path, &common::generate(&mut rng, &gens));
}

fn assert_clean_failure(out: &Output, out_dir: &Path, name: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(99), "ulimit -f unsupported: {stderr}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected a clean error exit (not a signal, not success): {:?}\n{stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    assert!(
        stderr.contains("File too large"),
        "the EFBIG I/O error is reported: {stderr}"
    );
    assert!(
        stderr.contains(name),
        "the error names the output `{name}`: {stderr}"
    );
    assert_eq!(
        entries(out_dir),
        Vec::<String>::new(),
        "no output and no temporary left in {}",
        out_dir.display()
    );
}

#[test]
fn quantize_write_failure_is_a_clean_error_leaving_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("model.safetensors");
    big_model(&input);
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let q = out_dir.join("q.safetensors");
    let quantize: &[&Path] = &[Path::new("quantize"), &input, Path::new("-o"), &q];
    let out = nvfp4_limited(64, quantize);
    assert_clean_failure(&out, &out_dir, "q.safetensors");
    // Without the limit the same command succeeds, so the failure above was the write's.
    let out = nvfp4_limited(1 << 20, quantize);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(entries(&out_dir), ["q.safetensors"]);

    // The quantized file dequantized (512 KB of bf16) and converted, under the same limit.
    let d_dir = dir.path().join("deq");
    std::fs::create_dir(&d_dir).unwrap();
    let d = d_dir.join("d.safetensors");
    let out = nvfp4_limited(64, &[Path::new("dequantize"), &q, Path::new("-o"), &d]);
    assert_clean_failure(&out, &d_dir, "d.safetensors");
    let c = d_dir.join("c.safetensors");
    let out = nvfp4_limited(
        16,
        &[
            Path::new("convert"),
            &q,
            Path::new("-o"),
            &c,
            Path::new("--to"),
            Path::new("comfy"),
        ],
    );
    assert_clean_failure(&out, &d_dir, "c.safetensors");
}
