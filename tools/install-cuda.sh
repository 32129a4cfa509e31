#!/usr/bin/env bash
# Installs a project-local CUDA 13.0 compiler from NVIDIA's PyPI wheels into <repo>/.cuda/venv.
#
# The project's machines (developers', CI's) have no CUDA, and only package registries can be
# reached, so nvcc comes from PyPI (shared/reference/cuda-toolchain.md lists the wheels and why
# each is needed). build.rs finds the result through .cuda/stamp without any environment set up.
#
# Usage: tools/install-cuda.sh [--force]
#   Skips everything when an nvcc >= 12.8 is already found (NVCC, CUDA_HOME/CUDA_PATH, PATH,
#   /usr/local/cuda): 12.8 is the first release that compiles sm_120a's FP4 MMA.
#   --force installs the project-local toolchain even then, and re-checks an existing one.
# Output: `CUDA_HOME=...` and `LIBCLANG_PATH=...` lines; .cuda/env holds the same as `export`
# lines (plus PATH) for `source .cuda/env`. A second run with .cuda complete returns at once.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cuda_dir="$repo/.cuda"
venv="$cuda_dir/venv"
stamp="$cuda_dir/stamp"
env_file="$cuda_dir/env"

force=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        -h | --help) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install-cuda.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
    esac
done

# Prints "X.Y" from `nvcc --version` ("Cuda compilation tools, release 13.0, V13.0.88"), or nothing.
nvcc_release() {
    "$1" --version 2>/dev/null | sed -n 's/.*release \([0-9]\{1,\}\.[0-9]\{1,\}\).*/\1/p' | head -n1
}

# True when release "X.Y" is at least 12.8.
release_ok() {
    local major="${1%%.*}" minor="${1#*.}"
    [ -n "$1" ] && { [ "$major" -gt 12 ] || { [ "$major" -eq 12 ] && [ "$minor" -ge 8 ]; }; }
}

# A libclang.so for bindgen: the venv's wheel first, then the system's LLVM installs.
find_libclang_dir() {
    local f
    for f in "$venv"/lib/python3*/site-packages/clang/native/libclang.so \
        /usr/lib/llvm-*/lib/libclang.so /usr/lib/llvm-*/lib/libclang-*.so* \
        /usr/lib/x86_64-linux-gnu/libclang-*.so* /usr/lib64/libclang.so; do
        if [ -e "$f" ]; then dirname "$f"; return 0; fi
    done
    return 1
}

write_env() {
    local cuda_home="$1" libclang_dir="$2"
    {
        echo "# Written by tools/install-cuda.sh; source it to put the project's nvcc on PATH."
        echo "export CUDA_HOME='$cuda_home'"
        echo "export PATH='$cuda_home/bin':\"\$PATH\""
        [ -n "$libclang_dir" ] && echo "export LIBCLANG_PATH='$libclang_dir'"
    } >"$env_file.tmp"
    mv "$env_file.tmp" "$env_file"
}

report() {
    local cuda_home="$1" libclang_dir="$2"
    echo "CUDA_HOME=$cuda_home"
    if [ -n "$libclang_dir" ]; then
        echo "LIBCLANG_PATH=$libclang_dir"
    else
        echo "LIBCLANG_PATH= (no libclang.so found: run with --force, or install libclang-dev)" >&2
    fi
}

if [ "$force" -eq 0 ]; then
    # 1. An existing toolchain, in the order build.rs searches.
    candidates=()
    [ -n "${NVCC:-}" ] && candidates+=("$NVCC")
    [ -n "${CUDA_HOME:-}" ] && candidates+=("$CUDA_HOME/bin/nvcc")
    [ -n "${CUDA_PATH:-}" ] && candidates+=("$CUDA_PATH/bin/nvcc")
    if p="$(command -v nvcc 2>/dev/null)"; then candidates+=("$p"); fi
    candidates+=(/usr/local/cuda/bin/nvcc)
    for nvcc in "${candidates[@]}"; do
        [ -x "$nvcc" ] || continue
        rel="$(nvcc_release "$nvcc")"
        if release_ok "$rel"; then
            echo "install-cuda.sh: found nvcc $rel at $nvcc; nothing to install (--force installs anyway)"
            # nvcc lives in $CUDA_HOME/bin; resolve symlinks such as /usr/bin/nvcc first.
            report "$(dirname "$(dirname "$(readlink -f "$nvcc")")")" "$(find_libclang_dir || true)"
            exit 0
        fi
        echo "install-cuda.sh: ignoring nvcc at $nvcc (release '${rel:-unknown}' < 12.8)" >&2
    done

    # 2. The project-local toolchain from an earlier run: trust the stamp, run nothing.
    if [ -f "$stamp" ] && [ -f "$env_file" ]; then
        cuda_home="$(cat "$stamp")"
        if [ -x "$cuda_home/bin/nvcc" ]; then
            report "$cuda_home" "$(find_libclang_dir || true)"
            exit 0
        fi
    fi
fi

# 3. Install. The stamp goes last, so an interrupted run is simply redone next time
#    (pip skips what is already satisfied).
rm -f "$stamp"
mkdir -p "$cuda_dir"
if [ ! -x "$venv/bin/python" ]; then
    echo "install-cuda.sh: creating $venv"
    python3 -m venv "$venv"
fi
echo "install-cuda.sh: installing the CUDA 13.0 wheels (about 300 MB; a few minutes)"
# cuobjdump and nvdisasm have no 13.0 build on PyPI; newer ones read 13.0 cubins fine.
"$venv/bin/python" -m pip install --quiet \
    'nvidia-cuda-nvcc==13.0.*' \
    'nvidia-nvvm==13.0.*' \
    'nvidia-cuda-crt==13.0.*' \
    'nvidia-cuda-runtime==13.0.*' \
    'nvidia-cuda-cccl==13.0.*' \
    'nvidia-cuda-cuobjdump' \
    'nvidia-cuda-nvdisasm' \
    'libclang==18.1.1'

cuda_home=""
for d in "$venv"/lib/python3*/site-packages/nvidia/cu13; do
    [ -x "$d/bin/nvcc" ] && cuda_home="$d"
done
if [ -z "$cuda_home" ]; then
    echo "install-cuda.sh: the wheels installed but no nvidia/cu13/bin/nvcc is in $venv" >&2
    exit 1
fi
rel="$(nvcc_release "$cuda_home/bin/nvcc")"
if ! release_ok "$rel"; then
    echo "install-cuda.sh: $cuda_home/bin/nvcc --version failed or is older than 12.8:" >&2
    "$cuda_home/bin/nvcc" --version >&2 || true
    exit 1
fi
libclang_dir="$(find_libclang_dir || true)"
write_env "$cuda_home" "$libclang_dir"
echo "$cuda_home" >"$stamp.tmp"
mv "$stamp.tmp" "$stamp"
# build.rs watches .cuda/stamp only once it exists (cargo reruns a build script on every build while a
# watched file is missing), so a first install must tell cargo itself: a newer build.rs reruns it.
[ -f "$repo/build.rs" ] && touch "$repo/build.rs"
echo "install-cuda.sh: nvcc $rel installed"
report "$cuda_home" "$libclang_dir"
