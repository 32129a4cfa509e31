//! Build script: compiles every top-level `csrc/*.cu` (one translation unit each) with nvcc into one
//! fatbin per unit, with a cubin for each target GPU plus PTX for forward JIT, and writes
//! `$OUT_DIR/kernels.rs` for `src/cuda/kernels.rs` to `include!`. Without nvcc the crate still builds,
//! with no kernels (the CPU path works). std only: the crate has no build-dependencies.
//!
//! Environment (each one reruns this script when it changes):
//! - `NVCC`: path to nvcc. Otherwise the first of `$CUDA_HOME/bin/nvcc`, `$CUDA_PATH/bin/nvcc`, `PATH`,
//!   `/usr/local/cuda/bin/nvcc`, and the project-local toolchain of `tools/install-cuda.sh` (found
//!   through `.cuda/stamp`) whose `nvcc --version` is at least 12.8 (the first with sm_120a FP4).
//! - `NVFP4_CUDA_ARCHS`: comma list of exactly the targets to build, replacing the default
//!   `80,90a,100a,120f,compute_80` (`120a` instead of `120f` before nvcc 12.9, which introduced family
//!   targets). An item `90a` or `sm_90a` is a cubin, `compute_80` is PTX; so `NVFP4_CUDA_ARCHS=90a`
//!   builds only the sm_90a cubin and no PTX.
//! - `NVFP4_NVCC_FLAGS`: extra nvcc flags (whitespace-separated), appended to every compile.
//! - `NVFP4_BUILD_JOBS`: parallel nvcc processes (default: the available parallelism).
//! - `NVFP4_REQUIRE_NVCC=1`: a missing nvcc is a build error instead of a warning.
//! - `NVFP4_SKIP_KERNELS=1`: never run nvcc (fuzzing and other CPU-only builds); wins over
//!   `NVFP4_REQUIRE_NVCC`.
//!
//! Outputs are cached in `<target-dir>/nvfp4-kernels/<hash>/`, keyed by nvcc, the flags, the targets,
//! this script and every file under csrc/, so the dev, test, clippy and release profiles compile the
//! kernels once between them. ptxas's `-v` report is kept next to the fatbins and in
//! `$OUT_DIR/ptxas-report.txt` (`env!("NVFP4_PTXAS_REPORT")`); a register spill is a cargo warning.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

/// Every environment variable this script reads.
const ENV_VARS: [&str; 9] = [
    "NVCC",
    "CUDA_HOME",
    "CUDA_PATH",
    "PATH",
    "NVFP4_CUDA_ARCHS",
    "NVFP4_REQUIRE_NVCC",
    "NVFP4_SKIP_KERNELS",
    "NVFP4_BUILD_JOBS",
    "NVFP4_NVCC_FLAGS",
];

/// sm_120a's block-scaled FP4 MMA needs nvcc 12.8; the `f` family targets need 12.9.
const MIN_NVCC: (u32, u32) = (12, 8);
const FAMILY_NVCC: (u32, u32) = (12, 9);

/// Flags of every compile. No fast-math: the codecs depend on IEEE rounding (csrc/common/codecs.cuh).
const BASE_FLAGS: [&str; 4] = ["-std=c++17", "-O3", "-lineinfo", "--expt-relaxed-constexpr"];

fn main() {
    for var in ENV_VARS {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let csrc = manifest_dir.join("csrc");
    let sources = files_under(&csrc);
    println!("cargo:rerun-if-changed={}", csrc.display());
    for file in &sources {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    // A missing file would make cargo rerun this script on every build, so the stamp is watched only once
    // it exists; tools/install-cuda.sh touches build.rs after a first install instead.
    let stamp = manifest_dir.join(".cuda").join("stamp");
    if stamp.is_file() {
        println!("cargo:rerun-if-changed={}", stamp.display());
    }
    let report = out_dir.join("ptxas-report.txt");
    println!("cargo:rustc-env=NVFP4_PTXAS_REPORT={}", report.display());

    let generated = match kernels(&csrc, &sources, &stamp, &out_dir) {
        Ok(built) => {
            copy(&built.dir.join("ptxas-report.txt"), &report);
            let mut fatbins = String::new();
            for unit in &built.units {
                let dst = out_dir.join(format!("{unit}.fatbin"));
                copy(&built.dir.join(format!("{unit}.fatbin")), &dst);
                write!(fatbins, "({unit:?}, include_bytes!({:?})), ", utf8(&dst)).unwrap();
            }
            let targets: Vec<String> = built.targets.iter().map(Target::name).collect();
            let version = format!("{}.{}", built.nvcc.version.0, built.nvcc.version.1);
            kernels_rs(&fatbins, &format!("Some({version:?})"), &targets, "None")
        }
        Err(reason) => {
            write(&report, &format!("GPU kernels were not built: {reason}\n"));
            kernels_rs("", "None", &[], &format!("Some({reason:?})"))
        }
    };
    write(&out_dir.join("kernels.rs"), &generated);
}

/// The contents of `$OUT_DIR/kernels.rs`.
fn kernels_rs(fatbins: &str, version: &str, targets: &[String], reason: &str) -> String {
    format!(
        "/// (translation unit stem, fatbin bytes) for every csrc/*.cu; empty without nvcc.\n\
         pub const FATBINS: &[(&str, &[u8])] = &[{fatbins}];\n\
         /// nvcc's version (\"13.0\") or None when kernels were not built.\n\
         pub const NVCC_VERSION: Option<&str> = {version};\n\
         /// Targets compiled in, e.g. [\"sm_80\", \"sm_90a\", \"sm_100a\", \"sm_120f\", \"compute_80\"].\n\
         pub const TARGETS: &[&str] = &{targets:?};\n\
         /// Why kernels are absent (None when built).\n\
         pub const NO_KERNELS_REASON: Option<&str> = {reason};\n"
    )
}

/// Compiled kernels, ready in `dir`.
struct Built {
    dir: PathBuf,
    nvcc: Nvcc,
    targets: Vec<Target>,
    /// Stems of the translation units, each with `<stem>.fatbin` in `dir`.
    units: Vec<String>,
}

/// Finds nvcc and compiles (or reuses) the kernels; `Err` says why there are none.
fn kernels(csrc: &Path, sources: &[PathBuf], stamp: &Path, out_dir: &Path) -> Result<Built, String> {
    if flag("NVFP4_SKIP_KERNELS") {
        return Err("NVFP4_SKIP_KERNELS is set".to_string());
    }
    let nvcc = match find_nvcc(stamp) {
        Ok(nvcc) => nvcc,
        Err(searched) => {
            if flag("NVFP4_REQUIRE_NVCC") {
                panic!(
                    "NVFP4_REQUIRE_NVCC is set but no usable nvcc (>= {}.{}) was found; searched: {searched}. \
                     Install one with tools/install-cuda.sh, or point NVCC or CUDA_HOME at one.",
                    MIN_NVCC.0, MIN_NVCC.1
                );
            }
            println!(
                "cargo:warning=nvfp4: nvcc not found (searched: {searched}); GPU kernels are not built, \
                 the CPU path works (tools/install-cuda.sh installs nvcc)"
            );
            return Err(format!("no usable nvcc (searched: {searched})"));
        }
    };
    let targets = targets(nvcc.version);
    let extra: Vec<String> = env::var("NVFP4_NVCC_FLAGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let units: Vec<PathBuf> = sources
        .iter()
        .filter(|p| p.parent() == Some(csrc) && p.extension().is_some_and(|e| e == "cu"))
        .cloned()
        .collect();
    let stems: Vec<String> = units
        .iter()
        .map(|p| utf8(Path::new(p.file_stem().unwrap())).to_string())
        .collect();
    let include = format!("-I{}", utf8(csrc));

    // The cache key: everything that can change a byte of the output.
    let mut key = Fnv::new();
    key.add(b"nvfp4-kernels/1");
    key.add(include_bytes!("build.rs"));
    key.add(utf8(&nvcc.path).as_bytes());
    key.add(nvcc.version_text.as_bytes());
    for target in &targets {
        key.add(target.name().as_bytes());
        key.add(target.defines().join(" ").as_bytes());
    }
    key.add(BASE_FLAGS.join(" ").as_bytes());
    key.add(extra.join(" ").as_bytes());
    for file in sources {
        key.add(utf8(file.strip_prefix(csrc).unwrap_or(file)).as_bytes());
        key.add(&fs::read(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display())));
    }
    let root = cache_root(out_dir);
    let dir = root.join(format!("{:016x}", key.finish()));

    let built = Built {
        dir,
        nvcc,
        targets,
        units: stems,
    };
    if built.dir.join("done").is_file() {
        // Rewriting the marker records the use, which is what pruning keeps by.
        write(&built.dir.join("done"), "");
        warn_from_report(&built.dir.join("ptxas-report.txt"));
        return Ok(built);
    }
    // Build in a private directory and rename it into place when complete, so a concurrent build of
    // another profile never sees a half-written cache entry.
    let tmp = root.join(format!("{:016x}.tmp-{}", key.finish(), std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(tmp.join("obj")).unwrap_or_else(|e| panic!("creating {}: {e}", tmp.display()));
    compile(&built, &units, &include, &extra, &tmp);
    warn_from_report(&tmp.join("ptxas-report.txt"));
    write(&tmp.join("done"), "");
    if built.dir.exists() && !built.dir.join("done").is_file() {
        let _ = fs::remove_dir_all(&built.dir);
    }
    if fs::rename(&tmp, &built.dir).is_err() {
        // Another build finished the same entry first; its bytes are the same.
        if !built.dir.join("done").is_file() {
            panic!("could not move {} to {}", tmp.display(), built.dir.display());
        }
        let _ = fs::remove_dir_all(&tmp);
    }
    prune(&root, &built.dir);
    Ok(built)
}

/// Every csrc/ edit makes a new cache entry: keep the few most recently used and delete the rest, along
/// with build folders that a killed build left behind. An entry another build is reading at this moment
/// is among the recent ones, so it survives.
fn prune(root: &Path, keep: &Path) {
    const KEEP: usize = 8;
    const ABANDONED: Duration = Duration::from_secs(3600);
    let Ok(entries) = fs::read_dir(root) else { return };
    let mut done = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path == keep || !path.is_dir() {
            continue;
        }
        let age = |p: &Path| {
            fs::metadata(p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
        };
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.contains(".tmp-"))
        {
            if age(&path).is_some_and(|a| a > ABANDONED) {
                let _ = fs::remove_dir_all(&path);
            }
        } else if let Some(a) = age(&path.join("done")) {
            done.push((a, path));
        }
    }
    done.sort();
    for (_, path) in done.into_iter().skip(KEEP - 1) {
        let _ = fs::remove_dir_all(path);
    }
}

/// Compiles every (unit, target) pair in parallel into `tmp/obj`, then packs each unit's images into
/// `tmp/<stem>.fatbin`, and writes `tmp/ptxas-report.txt` and `tmp/targets.txt`.
fn compile(built: &Built, units: &[PathBuf], include: &str, extra: &[String], tmp: &Path) {
    let obj = tmp.join("obj");
    let jobs: Vec<(usize, usize)> = (0..units.len())
        .flat_map(|u| (0..built.targets.len()).map(move |t| (u, t)))
        .collect();
    let results: Mutex<Vec<Option<Result<String, String>>>> = Mutex::new(vec![None; jobs.len()]);
    let next = AtomicUsize::new(0);
    thread::scope(|scope| {
        for _ in 0..build_jobs().min(jobs.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(u, t)) = jobs.get(i) else { break };
                    let target = &built.targets[t];
                    let out = obj.join(target.file_name(&built.units[u]));
                    let mut cmd = Command::new(&built.nvcc.path);
                    cmd.args(target.nvcc_args())
                        .args(BASE_FLAGS)
                        .arg(include)
                        .args(target.defines());
                    cmd.args(extra).arg("-o").arg(&out).arg(&units[u]);
                    let result = match cmd.output() {
                        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stderr).into_owned()),
                        Ok(o) => Err(format!(
                            "nvcc failed ({}) compiling {} for {}:\n{}{}\ncommand: {cmd:?}",
                            o.status,
                            units[u].display(),
                            target.name(),
                            String::from_utf8_lossy(&o.stdout),
                            String::from_utf8_lossy(&o.stderr)
                        )),
                        Err(e) => Err(format!("could not run {cmd:?}: {e}")),
                    };
                    results.lock().unwrap()[i] = Some(result);
                }
            });
        }
    });
    let results = results.into_inner().unwrap();

    let mut report = String::new();
    let mut failures = Vec::new();
    for (&(u, t), result) in jobs.iter().zip(results) {
        match result.expect("every job ran") {
            Ok(stderr) => writeln!(
                report,
                "== {}.cu {} ==\n{stderr}",
                built.units[u],
                built.targets[t].name()
            )
            .unwrap(),
            Err(e) => failures.push(e),
        }
    }
    if !failures.is_empty() {
        let _ = fs::remove_dir_all(tmp);
        panic!("{}", failures.join("\n\n"));
    }
    write(&tmp.join("ptxas-report.txt"), &report);
    let names: Vec<String> = built.targets.iter().map(Target::name).collect();
    write(&tmp.join("targets.txt"), &(names.join("\n") + "\n"));

    let fatbinary = fatbinary(&built.nvcc.path);
    // Compressed cubins are a quarter of the size (most of a -lineinfo cubin is the PTX text kept for
    // source correlation); every CUDA 12+ driver loads them. Older fatbinary lacks the flag.
    let compress = Command::new(&fatbinary)
        .arg("--help")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--compress-all"));
    for stem in &built.units {
        let out = tmp.join(format!("{stem}.fatbin"));
        let mut cmd = Command::new(&fatbinary);
        // Run inside obj/ with bare file names: the --image3 syntax is comma-separated, and a path could
        // hold a comma.
        cmd.current_dir(&obj)
            .arg("-64")
            .arg(format!("--create={}", utf8(&out)));
        if compress {
            cmd.arg("--compress-all");
        }
        for target in &built.targets {
            cmd.arg(target.image_spec(&target.file_name(stem)));
        }
        match cmd.output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "fatbinary failed ({}): {}\ncommand: {cmd:?}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("could not run {cmd:?}: {e}"),
        }
    }
}

/// A compilation target: a cubin for a real GPU, or PTX for a virtual one.
#[derive(Clone, Debug, PartialEq)]
enum Target {
    /// `sm_<arch>`, e.g. "90a".
    Cubin(String),
    /// `compute_<arch>`, e.g. "80".
    Ptx(String),
}

impl Target {
    fn name(&self) -> String {
        match self {
            Target::Cubin(a) => format!("sm_{a}"),
            Target::Ptx(a) => format!("compute_{a}"),
        }
    }

    fn file_name(&self, stem: &str) -> String {
        match self {
            Target::Cubin(a) => format!("{stem}.sm_{a}.cubin"),
            Target::Ptx(a) => format!("{stem}.compute_{a}.ptx"),
        }
    }

    /// nvcc's mode and target. `-cubin` takes exactly one target, which is what lets each target have
    /// its own defines.
    fn nvcc_args(&self) -> Vec<String> {
        match self {
            Target::Cubin(a) => {
                vec![
                    "-cubin".into(),
                    "-gencode".into(),
                    format!("arch=compute_{a},code=sm_{a}"),
                    "-Xptxas".into(),
                    "-v".into(),
                ]
            }
            Target::Ptx(a) => vec!["-ptx".into(), format!("--gpu-architecture=compute_{a}")],
        }
    }

    /// Per-target defines. Hopper has no block-scaled FP4 MMA: kernels written for it run there
    /// through the emulation in csrc/common (DESIGN.md, "Verifying sm_120 without a Blackwell GPU").
    fn defines(&self) -> Vec<String> {
        match self {
            Target::Cubin(a) if a.starts_with("90") => vec!["-DNVFP4_MMA_EMULATION=1".into()],
            _ => Vec::new(),
        }
    }

    /// This image's `fatbinary --image3` argument.
    fn image_spec(&self, file: &str) -> String {
        match self {
            Target::Cubin(a) => format!("--image3=kind=elf,sm={a},file={file}"),
            Target::Ptx(a) => format!("--image3=kind=ptx,sm={a},file={file}"),
        }
    }
}

/// The targets to build: `NVFP4_CUDA_ARCHS`, or the default set.
fn targets(version: (u32, u32)) -> Vec<Target> {
    let list = env::var("NVFP4_CUDA_ARCHS").unwrap_or_default();
    if list.trim().is_empty() {
        let sm120 = if version >= FAMILY_NVCC { "120f" } else { "120a" };
        return vec![
            Target::Cubin("80".into()),
            Target::Cubin("90a".into()),
            Target::Cubin("100a".into()),
            Target::Cubin(sm120.into()),
            // PTX from a plain (non-`a`) architecture: `a` features do not carry forward, so only this
            // JIT-compiles on GPUs newer than every cubin.
            Target::Ptx("80".into()),
        ];
    }
    let mut targets = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (target, arch) = if let Some(a) = item.strip_prefix("compute_") {
            (Target::Ptx(a.to_string()), a)
        } else {
            let a = item.strip_prefix("sm_").unwrap_or(item);
            (Target::Cubin(a.to_string()), a)
        };
        let digits = arch.trim_end_matches(['a', 'f']);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || arch.len() > digits.len() + 1 {
            panic!(
                "NVFP4_CUDA_ARCHS: '{item}' is not a target like 90a, sm_120f or compute_80 (list: '{list}')"
            );
        }
        if arch.ends_with('f') && version < FAMILY_NVCC {
            panic!(
                "NVFP4_CUDA_ARCHS: '{item}' is a family target, which needs nvcc >= {}.{} (found {}.{})",
                FAMILY_NVCC.0, FAMILY_NVCC.1, version.0, version.1
            );
        }
        if !targets.contains(&target) {
            targets.push(target);
        }
    }
    targets
}

/// A usable nvcc.
struct Nvcc {
    path: PathBuf,
    version: (u32, u32),
    /// The whole `nvcc --version` output, for the cache key.
    version_text: String,
}

/// The first usable nvcc in the documented order, or a description of every place searched.
fn find_nvcc(stamp: &Path) -> Result<Nvcc, String> {
    let exe = format!("nvcc{}", env::consts::EXE_SUFFIX);
    let mut candidates: Vec<(String, PathBuf)> = Vec::new();
    if let Some(p) = env::var_os("NVCC").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        // A bare name such as `NVCC=nvcc-13` is looked up on PATH.
        let p = if p.components().count() == 1 {
            on_path(p.as_os_str()).unwrap_or(p)
        } else {
            p
        };
        candidates.push(("NVCC".into(), p));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = env::var_os(var).filter(|p| !p.is_empty()) {
            candidates.push((format!("${var}/bin"), PathBuf::from(home).join("bin").join(&exe)));
        }
    }
    let (mut searched, mut notable) = (Vec::new(), Vec::new());
    match on_path(exe.as_ref()) {
        Some(p) => candidates.push(("PATH".into(), p)),
        None => searched.push("PATH (no nvcc)".to_string()),
    }
    candidates.push(("default".into(), PathBuf::from("/usr/local/cuda/bin").join(&exe)));
    match fs::read_to_string(stamp) {
        Ok(home) => candidates.push((
            ".cuda/stamp".into(),
            PathBuf::from(home.trim()).join("bin").join(&exe),
        )),
        Err(_) => candidates.push((".cuda/stamp".into(), stamp.to_path_buf())),
    }

    for (source, path) in candidates {
        let problem = if !path.is_file() {
            "missing".to_string()
        } else {
            match Command::new(&path).arg("--version").output() {
                Ok(o) if o.status.success() => {
                    let text = String::from_utf8_lossy(&o.stdout).into_owned();
                    match parse_release(&text) {
                        Some(version) if version >= MIN_NVCC => {
                            for rejected in &notable {
                                println!(
                                    "cargo:warning=nvfp4: skipped nvcc {rejected}; using {}",
                                    path.display()
                                );
                            }
                            return Ok(Nvcc {
                                path,
                                version,
                                version_text: text,
                            });
                        }
                        Some((major, minor)) => {
                            format!("release {major}.{minor} < {}.{}", MIN_NVCC.0, MIN_NVCC.1)
                        }
                        None => "no `release X.Y` in `nvcc --version`".to_string(),
                    }
                }
                Ok(o) => format!(
                    "`--version` failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => format!("cannot run: {e}"),
            }
        };
        let note = format!("{source}: {} ({problem})", path.display());
        // Worth a warning when the choice falls through to a later candidate: a variable that was set on
        // purpose, or an nvcc that exists but is unusable (too old, broken).
        if matches!(source.as_str(), "NVCC" | "$CUDA_HOME/bin" | "$CUDA_PATH/bin") || path.is_file() {
            notable.push(note.clone());
        }
        searched.push(note);
    }
    Err(searched.join("; "))
}

/// `X.Y` from nvcc's "Cuda compilation tools, release 13.0, V13.0.88".
fn parse_release(text: &str) -> Option<(u32, u32)> {
    let rest = &text[text.find("release ")? + "release ".len()..];
    let version: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let (major, minor) = version.split_once('.')?;
    Some((major.parse().ok()?, minor.trim_end_matches('.').parse().ok()?))
}

fn on_path(name: &std::ffi::OsStr) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `fatbinary` ships next to nvcc; a symlinked nvcc (e.g. /usr/bin/nvcc) is followed to its real folder.
fn fatbinary(nvcc: &Path) -> PathBuf {
    let exe = format!("fatbinary{}", env::consts::EXE_SUFFIX);
    let beside = |p: &Path| p.parent().map(|d| d.join(&exe)).filter(|f| f.is_file());
    beside(nvcc)
        .or_else(|| fs::canonicalize(nvcc).ok().and_then(|p| beside(&p)))
        .or_else(|| on_path(exe.as_ref()))
        .unwrap_or_else(|| panic!("no fatbinary next to {} nor on PATH", nvcc.display()))
}

/// Emits a cargo warning for every register spill and every compiler warning in a ptxas report.
fn warn_from_report(report: &Path) {
    let Ok(text) = fs::read_to_string(report) else {
        return;
    };
    let mut unit = "";
    let mut function = "";
    for line in text.lines() {
        if let Some(header) = line.strip_prefix("== ").and_then(|l| l.strip_suffix(" ==")) {
            unit = header;
        } else if let Some(name) = line.split("Function properties for ").nth(1) {
            function = name.trim();
        } else if line.contains("bytes spill stores") {
            // "    0 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads"
            let bytes = |what: &str| -> u64 {
                line.split(',')
                    .find(|part| part.contains(what))
                    .and_then(|part| part.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            };
            let (stores, loads) = (bytes("spill stores"), bytes("spill loads"));
            if stores != 0 || loads != 0 {
                println!(
                    "cargo:warning=nvfp4: {function} ({unit}) spills registers: {stores} bytes spill stores, \
                     {loads} bytes spill loads"
                );
            }
        } else if line.to_ascii_lowercase().contains("warning") {
            println!("cargo:warning=nvfp4: {unit}: {}", line.trim());
        }
    }
}

/// `<target-dir>/nvfp4-kernels`, shared by every profile: OUT_DIR is
/// `<target-dir>[/<triple>]/<profile>/build/<pkg>-<hash>/out`, so two levels above the `build` folder.
fn cache_root(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == "build"))
        .and_then(|build| build.parent()?.parent())
        .unwrap_or(out_dir)
        .join("nvfp4-kernels")
}

/// Every file under `dir`, recursively, sorted (empty if `dir` is missing).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn build_jobs() -> usize {
    match env::var("NVFP4_BUILD_JOBS") {
        Ok(v) if !v.trim().is_empty() => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => panic!("NVFP4_BUILD_JOBS must be a positive integer, not '{v}'"),
        },
        _ => thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// A boolean variable: set, non-empty, and not `0` or `false`.
fn flag(name: &str) -> bool {
    env::var(name).is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

fn utf8(path: &Path) -> &str {
    path.to_str()
        .unwrap_or_else(|| panic!("path is not UTF-8: {}", path.display()))
}

fn write(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn copy(from: &Path, to: &Path) {
    fs::copy(from, to).unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
}

/// 64-bit FNV-1a: a hash whose value is the same on every Rust release (std's DefaultHasher promises
/// no such thing, and a changed key would only cost a rebuild, but a stable one is as cheap).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    /// Adds `bytes` and their length, so that ("ab", "c") and ("a", "bc") differ.
    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes.iter().chain(&(bytes.len() as u64).to_le_bytes()) {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
