#!/usr/bin/env bash
# Stages the GPU test binary and the CLI for the device machine (shared/gpu/stage.sh), keeping only
# the test binary that holds GPU tests: the others are host-only (they run in CI), and under
# `--sanitize` compute-sanitizer counts a binary that never touches the GPU as a failure.
#
#   tools/stage-gpu.sh [--sanitize]      then: run with carry [".gpu"], command `bash .gpu/run.sh`
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .cuda/env ] && source .cuda/env
bash "${STAGE_SH:-../shared/gpu/stage.sh}" "$@"
find .gpu/tests -type f ! -name 'gpu-test' -delete
ls .gpu/tests .gpu/bin
