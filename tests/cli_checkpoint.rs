//! The `nvfp4` binary on generated checkpoints: the four checkpoint commands, their errors, and an
//! interrupted write.

#[path = "checkpoint_common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nvfp4::reference::synthetic::Rng;
use safetensors::Dtype as St;

fn nvfp4(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nvfp4"))
        .args(args.iter().map(|a| a.as_ref()))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn model(dir: &Path) -> std::path::PathBuf {
    let mut rng = Rng::new(common::seed());
    let t = common::generate(&mut rng, &common::model_tensors());
    let p = dir.join("model.safetensors");
    common::write(&p, &t);
    p
}

#[test]
fn quantize_inspect_dequantize_convert_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let input = model(dir.path());
    let before = std::fs::read(&input).unwrap();
    let q = dir.path().join("q.safetensors");
    let report = dir.path().join("report.json");
    let s = ok(&nvfp4(&[&"quantize", &input, &"-o", &q, &"--report", &report]));
    assert!(s.contains("model.layers.0.mlp.up_proj.weight"), "{s}");
    assert!(s.contains("SNR dB"), "the error table is printed: {s}");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let layers = r["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    for l in layers {
        let snr = l["snr_db"].as_f64().unwrap();
        assert!(snr > 10.0 && l["rel_rmse"].as_f64().unwrap() < 0.3, "{l}");
        assert!(l["max_abs_error"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(std::fs::read(&input).unwrap(), before);

    let j = ok(&nvfp4(&[&"inspect", &q, &"--json"]));
    let j: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert_eq!(j["flavour"], "modelopt");
    assert_eq!(j["layers"].as_array().unwrap().len(), 3);
    let t = ok(&nvfp4(&[&"inspect", &q]));
    assert!(t.contains("flavour: modelopt") && t.contains("F8_E4M3"), "{t}");

    let d = dir.path().join("d.safetensors");
    ok(&nvfp4(&[&"dequantize", &q, &"-o", &d, &"--dtype", &"f16"]));
    let dj: serde_json::Value = serde_json::from_str(&ok(&nvfp4(&[&"inspect", &d, &"--json"]))).unwrap();
    assert_eq!(dj["flavour"], "dense");
    let up = dj["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "model.layers.0.mlp.up_proj.weight")
        .unwrap()
        .clone();
    assert_eq!(
        (up["dtype"].as_str(), &up["shape"]),
        (Some("F16"), &serde_json::json!([48, 64]))
    );

    let mut prev = q.clone();
    for (to, name) in [
        ("comfy", "c.safetensors"),
        ("compressed-tensors", "ct.safetensors"),
        ("modelopt", "m2.safetensors"),
    ] {
        let out = dir.path().join(name);
        ok(&nvfp4(&[&"convert", &prev, &"-o", &out, &"--to", &to]));
        let j: serde_json::Value = serde_json::from_str(&ok(&nvfp4(&[&"inspect", &out, &"--json"]))).unwrap();
        assert_eq!(j["flavour"], to);
        prev = out;
    }
    let a = common::read_all(&q);
    let b = common::read_all(&prev);
    assert_eq!(
        a, b,
        "modelopt -> comfy -> compressed-tensors -> modelopt changed bytes"
    );
}

#[test]
fn dry_run_lists_decisions_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = model(dir.path());
    let out = dir.path().join("q.safetensors");
    let s = ok(&nvfp4(&[
        &"quantize",
        &input,
        &"-o",
        &out,
        &"--dry-run",
        &"--exclude",
        &"*.down_proj",
        &"--include",
        &"lm_head",
    ]));
    assert!(!out.exists());
    let line = |t: &str| {
        s.lines()
            .find(|l| l.contains(t))
            .unwrap_or_else(|| panic!("{t} missing: {s}"))
            .to_string()
    };
    assert!(
        line("lm_head.weight").starts_with("quantize")
            && line("lm_head.weight").contains("--include lm_head")
    );
    assert!(line("down_proj.weight").starts_with("keep") && line("down_proj.weight").contains("--exclude"));
    assert!(line("model.norm.weight").starts_with("keep"));
    assert!(line("up_proj.weight").starts_with("quantize"));
    assert!(s.contains("3 tensors to quantize"), "{s}");
}

#[test]
fn existing_outputs_need_force_and_bad_inputs_name_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let input = model(dir.path());
    let out = dir.path().join("q.safetensors");
    std::fs::write(&out, "old").unwrap();
    let e = fails(&nvfp4(&[&"quantize", &input, &"-o", &out]));
    assert!(e.contains("exists") && e.contains("--force"), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
    ok(&nvfp4(&[&"quantize", &input, &"-o", &out, &"--force"]));
    assert_eq!(&std::fs::read(&out).unwrap()[8..9], b"{");

    let e = fails(&nvfp4(&[
        &"quantize",
        &input,
        &"-o",
        &dir.path().join("x.safetensors"),
        &"--include",
        &"model.odd",
    ]));
    assert!(
        e.contains("model.safetensors") && e.contains("model.odd.weight") && e.contains("multiple of 16"),
        "{e}"
    );

    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, [7u8, 0, 0]).unwrap();
    let e = fails(&nvfp4(&[&"inspect", &bad]));
    assert!(
        e.contains("bad.safetensors") && e.contains("corrupt safetensors header"),
        "{e}"
    );

    let e = fails(&nvfp4(&[
        &"convert",
        &input,
        &"-o",
        &dir.path().join("c.safetensors"),
        &"--to",
        &"comfy",
    ]));
    assert!(e.contains("no NVFP4 layers"), "{e}");
}

#[test]
fn gpu_flag_without_a_gpu_is_a_clear_error() {
    if nvfp4::cuda::Device::new(0).is_ok() {
        eprintln!("SKIPPED gpu_flag_without_a_gpu_is_a_clear_error: this machine has a GPU");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let input = model(dir.path());
    let out = dir.path().join("q.safetensors");
    let e = fails(&nvfp4(&[&"quantize", &input, &"-o", &out, &"--gpu"]));
    assert!(e.contains("--gpu") && e.contains("CUDA"), "{e}");
    assert!(!out.exists());
}

#[test]
fn an_interrupted_write_leaves_no_output_and_the_next_run_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    // ~96 MB of f32 weights in many tensors, so the run lasts long enough to be killed mid-way.
    let mut tensors = std::collections::BTreeMap::new();
    let mut rng = Rng::new(common::seed());
    let v: Vec<f32> = rng.normal_vec(1024 * 1024, 1.0);
    for i in 0..24 {
        tensors.insert(
            format!("blocks.{i}.mlp.weight"),
            (St::F32, vec![1024, 1024], common::encode(St::F32, &v)),
        );
    }
    let input = dir.path().join("big.safetensors");
    common::write(&input, &tensors);
    drop(tensors);
    let out = dir.path().join("q.safetensors");
    let mut child = Command::new(env!("CARGO_BIN_EXE_nvfp4"))
        .args([
            std::ffi::OsStr::new("quantize"),
            input.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let partial = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("nvfp4-partial"))
            .collect::<Vec<_>>()
    };
    // Wait until the temporary has data in it, then kill.
    let t0 = Instant::now();
    loop {
        let p = partial();
        if let Some(p) = p.first()
            && std::fs::metadata(dir.path().join(p))
                .map(|m| m.len() > 1 << 20)
                .unwrap_or(false)
        {
            break;
        }
        if let Ok(Some(_)) = child.try_wait() {
            panic!("the run finished before it could be interrupted; make the input bigger");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no temporary output appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists(), "a killed run left an output file");
    assert_eq!(
        partial().len(),
        1,
        "the killed run's temporary is hidden under its own name"
    );
    // The next run removes the dead run's temporary and completes.
    ok(&nvfp4(&[&"quantize", &input, &"-o", &out]));
    assert!(out.exists());
    assert!(partial().is_empty(), "{:?}", partial());
}
