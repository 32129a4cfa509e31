#!/usr/bin/env bash
# A short fuzz run of every target in fuzz/ (CI's smoke test; long campaigns use `cargo fuzz run`).
#
# Builds the targets the way cargo-fuzz does (libFuzzer linked by libfuzzer-sys, sanitizer-coverage
# instrumentation, --cfg fuzzing) with the stable toolchain, so CI needs neither nightly nor
# cargo-fuzz; kernels are skipped (NVFP4_SKIP_KERNELS=1): the targets exercise host code only.
# FUZZ_SECONDS (default 20) is the time per target (five targets: under 2 minutes of fuzzing).
# Each run starts from fuzz/seeds/<target>/ (committed;
# a crash found goes there as a regression input, replayed by tests/fuzz_replay.rs on stable Rust)
# plus the git-ignored fuzz/corpus/<target>/ that grows between runs. A crash fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-20}
export NVFP4_SKIP_KERNELS=1
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros, as cargo-fuzz does.
triple=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --manifest-path fuzz/Cargo.toml --target-dir fuzz/target --target "$triple" --bins
for t in codecs quantize scale_layout checkpoint cli; do
  # checkpoint seeds are whole (small) safetensors files, up to 8 KB.
  max_len=4096; [ "$t" = checkpoint ] && max_len=16384
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  cp -n fuzz/seeds/"$t"/* "fuzz/corpus/$t/" 2>/dev/null || true
  echo "=== fuzz $t for ${secs}s"
  "fuzz/target/$triple/release/$t" -max_total_time="$secs" -max_len="$max_len" -artifact_prefix="fuzz/artifacts/$t/" "fuzz/corpus/$t" 2>&1 | tail -n 3
done
