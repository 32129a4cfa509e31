#!/usr/bin/env bash
# Miri (nightly) over the pure-Rust unit tests of format/ and quant/: undefined behaviour in the
# codecs and the quantizer (bit casts, slicing, rayon) would show here. Kernels are skipped
# (NVFP4_SKIP_KERNELS=1); cuda/ is FFI and out of Miri's reach. If the nightly toolchain or the
# miri component cannot be had, this says so and exits 0 (CI prints the skip).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustup +nightly component add miri rust-src >/dev/null 2>&1; then
  echo "SKIPPED miri: no nightly toolchain with the miri component on this machine"
  exit 0
fi
# Tree Borrows: under the older Stacked Borrows model Miri stops inside crossbeam-epoch (rayon's
# dependency, crossbeam-epoch/src/internal.rs:567), not in this crate. Leaks are ignored because rayon's
# global pool threads outlive the tests by design.
MIRIFLAGS="${MIRIFLAGS:--Zmiri-tree-borrows -Zmiri-ignore-leaks}" NVFP4_SKIP_KERNELS=1 cargo +nightly miri test --lib -- format:: quant::
