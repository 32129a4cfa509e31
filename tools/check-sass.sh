#!/usr/bin/env bash
# Checks the built kernels' machine code: what a green compile cannot show.
#
# Usage: tools/check-sass.sh [CACHE_DIR]
#   CACHE_DIR is a kernel cache entry of build.rs (<target-dir>/nvfp4-kernels/<hash>/, holding the
#   fatbins, ptxas-report.txt, targets.txt and the `done` marker). Default: the newest complete entry
#   under target/ (any profile, any target triple).
# Checks, each failing the script:
#   (a) every fatbin holds an ELF image for each cubin target the build was asked for (targets.txt;
#       the default four sm_80, sm_90a, sm_100a, sm_120a/f without it) and PTX for each compute_ target;
#   (b) ptxas reported no register spill in any function;
#   (c) if a kernel named *sm120* exists, its fatbin's sm_120 image really uses the block-scaled FP4
#       tensor-core instruction: a SASS line with both OMMA and E2M1 (OMMA.SF.16864.F32.E2M1.E2M1...).
#       Without that line the kernel silently took a non-MMA path (e.g. the emulation);
#   (d) if a kernel named *sm90* exists and sm_90a is a target, every such kernel's sm_90a SASS holds the
#       warpgroup MMA (HGMMA): a matrix kernel with only HMMA would be on the slower mma.sync path.
# Prints each fatbin's size. cuobjdump comes from $CUDA_HOME, .cuda/stamp (tools/install-cuda.sh) or PATH.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() { echo "check-sass: FAIL: $*" >&2; exit 1; }

if [ $# -ge 1 ]; then
    dir="$1"
else
    # Newest `done` marker wins: build.rs rewrites it whenever an entry is built or reused.
    done_file="$(find "$repo/target" -path '*/nvfp4-kernels/*/done' -printf '%T@ %p\n' 2>/dev/null |
        sort -rn | head -n1 | cut -d' ' -f2-)"
    [ -n "$done_file" ] || die "no built kernels under $repo/target (build the crate with nvcc first)"
    dir="$(dirname "$done_file")"
fi
[ -f "$dir/done" ] || die "$dir is not a complete kernel cache entry (no 'done' marker)"

cuobjdump=""
for c in "${CUDA_HOME:+$CUDA_HOME/bin/cuobjdump}" \
    "$( [ -f "$repo/.cuda/stamp" ] && echo "$(cat "$repo/.cuda/stamp")/bin/cuobjdump" )" \
    "$(command -v cuobjdump 2>/dev/null || true)" /usr/local/cuda/bin/cuobjdump; do
    if [ -n "$c" ] && [ -x "$c" ]; then cuobjdump="$c"; break; fi
done
[ -n "$cuobjdump" ] || die "no cuobjdump (run tools/install-cuda.sh, or set CUDA_HOME)"

shopt -s nullglob
fatbins=("$dir"/*.fatbin)
[ ${#fatbins[@]} -gt 0 ] || die "no fatbins in $dir"

if [ -f "$dir/targets.txt" ]; then
    mapfile -t targets < "$dir/targets.txt"
else
    targets=(sm_80 sm_90a sm_100a sm_120)
fi
echo "check-sass: $dir"
echo "check-sass: targets: ${targets[*]}"

status=0
fail() { echo "check-sass: FAIL: $*" >&2; status=1; }

# (a) images. `-res-usage` names each image's arch after "Fatbin elf code:" or "Fatbin ptx code:".
for fb in "${fatbins[@]}"; do
    usage="$("$cuobjdump" -res-usage "$fb")"
    elf="$(awk '/^Fatbin elf code/{k="elf"} /^Fatbin ptx code/{k="ptx"} /^arch = /{if (k=="elf") print $3}' <<<"$usage")"
    ptx="$(awk '/^Fatbin elf code/{k="elf"} /^Fatbin ptx code/{k="ptx"} /^arch = /{if (k=="ptx") print $3}' <<<"$usage")"
    printf 'check-sass: %-28s %8d bytes; ELF: %s; PTX: %s\n' "$(basename "$fb")" "$(stat -c %s "$fb")" \
        "$(echo $elf)" "$(echo ${ptx:-none})"
    for t in "${targets[@]}"; do
        case "$t" in
            sm_120) grep -qxE 'sm_120[af]?' <<<"$elf" || fail "$(basename "$fb") has no sm_120 image" ;;
            sm_*) grep -qxF "$t" <<<"$elf" || fail "$(basename "$fb") has no $t image (ELF: $(echo $elf))" ;;
            # PTX images are listed by their virtual arch with an sm_ prefix.
            compute_*) grep -qxF "sm_${t#compute_}" <<<"$ptx" || fail "$(basename "$fb") has no $t PTX" ;;
        esac
    done
done

# (b) spills, from ptxas -v: "N bytes stack frame, S bytes spill stores, L bytes spill loads".
if [ -f "$dir/ptxas-report.txt" ]; then
    spills="$(awk '/^== .* ==$/{unit=$0} /Function properties for/{fn=$NF}
        /bytes spill stores/ { if ($5 != 0 || $9 != 0) print "  " fn " (" unit "): " $0 }' "$dir/ptxas-report.txt")"
    if [ -n "$spills" ]; then
        fail "register spills:"
        echo "$spills" >&2
    else
        echo "check-sass: no register spills"
    fi
else
    fail "no ptxas-report.txt in $dir"
fi

# (c) the native sm_120 FP4 MMA.
mma_kernels=0
for fb in "${fatbins[@]}"; do
    names="$("$cuobjdump" -res-usage "$fb" | awk '/^ Function .*:$/{sub(":", "", $2); print $2}' | sort -u |
        grep -i 'sm120' || true)"
    [ -n "$names" ] || continue
    mma_kernels=1
    arch="$("$cuobjdump" -res-usage "$fb" | awk '/^arch = sm_120[af]?$/{print $3; exit}')"
    if [ -z "$arch" ]; then
        fail "$(basename "$fb") has sm120 kernels ($(echo $names)) but no sm_120 image"
        continue
    fi
    if "$cuobjdump" -sass -arch "$arch" "$fb" | grep 'OMMA' | grep -q 'E2M1'; then
        echo "check-sass: $(basename "$fb") $arch: OMMA ... E2M1 present ($(echo $names))"
    else
        fail "$(basename "$fb") $arch: no SASS line with OMMA and E2M1, though it has $(echo $names)"
    fi
done
[ "$mma_kernels" -eq 1 ] || echo "check-sass: skipped the OMMA/E2M1 check: no *sm120* kernel exists yet"

# (d) the sm_90a warpgroup MMA, kernel by kernel.
if printf '%s\n' "${targets[@]}" | grep -qxF sm_90a; then
    for fb in "${fatbins[@]}"; do
        names="$("$cuobjdump" -res-usage "$fb" | awk '/^ Function .*:$/{sub(":", "", $2); print $2}' | sort -u |
            grep -i 'sm90' || true)"
        [ -n "$names" ] || continue
        for fn in $names; do
            if "$cuobjdump" -sass -arch sm_90a -fun "$fn" "$fb" | grep -q 'HGMMA'; then
                echo "check-sass: $(basename "$fb") sm_90a: HGMMA present in $fn"
            else
                fail "$(basename "$fb") sm_90a: no HGMMA in $fn"
            fi
        done
    done
fi

if [ "$status" -eq 0 ]; then echo "check-sass: OK"; fi
exit "$status"
