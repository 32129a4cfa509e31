#!/usr/bin/env bash
# README's test command: everything CI checks, on a machine with nothing installed but Rust.
#
#   tools/test.sh
#
# 1. installs the pinned CUDA toolchain from PyPI into .cuda/ when no nvcc >= 12.8 is found
#    (tools/install-cuda.sh; a system CUDA is used as it is),
# 2. cargo fmt --check,
# 3. builds with NVFP4_REQUIRE_NVCC=1 (every kernel must compile for every target) and runs every test,
#    unit, integration and doc (GPU tests skip visibly without a GPU; NVFP4_REQUIRE_GPU=1 fails them),
# 4. checks the kernels' SASS and register spills (tools/check-sass.sh),
# 5. clippy with -D warnings, with and without the CLI feature,
# 6. Miri over the format and quant unit tests (tools/miri.sh),
# 7. a short fuzz run of every fuzz target (tools/fuzz-smoke.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
phase() { echo; echo "=== $1 ($(date +%H:%M:%S))"; }

phase "CUDA toolchain"
tools/install-cuda.sh
# shellcheck disable=SC1091
[ -f .cuda/env ] && source .cuda/env
export NVFP4_REQUIRE_NVCC=1 NVFP4_REQUIRE_BINDGEN=1

phase "rustfmt"
cargo fmt --all -- --check

phase "build and test"
cargo test --all-targets --no-fail-fast
cargo test --doc

phase "kernel SASS and spills"
tools/check-sass.sh

phase "clippy"
cargo clippy --all-targets -- -D warnings
cargo clippy --lib --no-default-features -- -D warnings

phase "miri (format, quant)"
tools/miri.sh

phase "fuzz smoke"
FUZZ_SECONDS=${FUZZ_SECONDS:-20} tools/fuzz-smoke.sh

phase "all checks passed"
