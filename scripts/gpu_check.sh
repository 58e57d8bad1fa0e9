#!/usr/bin/env bash
# GPU check for issue 7, in one call on a lent GPU machine (< 8 min on one GPU):
#   1. install the wheels carried in .whl/ (packages the GPU image lacks) into /tmp/segbench_site;
#   2. build mamba-ssm's selective_scan_cuda from the carried sdist (sm_90 only, C++20 when torch's
#      headers demand it), timed, given up after MAMBA_BUILD_LIMIT_S; the check goes on without it;
#   3. python scripts/gpu_check.py: scan equivalence, VM-UNetV2 training steps, FPS of every model.
# Results: $OUT/gpu_check.md (one table), $OUT/gpu_check.json, $OUT/mamba_build.log.
#
# On the device:  set -o pipefail; bash scripts/gpu_check.sh 2>&1 | tee $OUT/log   (carry .whl)
# Here, no GPU:   bash scripts/gpu_check.sh --cpu-dry-run   (patches the sdist, skips install and compile,
#                 runs every python section on the CPU at toy sizes)
# .whl/ is git-ignored through .git/info/exclude; fill it as reports/gpu_check.md describes.
set -uo pipefail

started=$(date +%s)
total_budget_s=${GPU_CHECK_BUDGET_S:-480}
build_limit_s=${MAMBA_BUILD_LIMIT_S:-240}
python=${PYTHON:-python3}
dry_run=0
[ "${1:-}" = "--cpu-dry-run" ] && dry_run=1
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
repo=$PWD
elapsed() { echo $(( $(date +%s) - started )); }

echo "== gpu_check.sh $(date -u '+%Y-%m-%d %H:%M:%S') UTC, dry run: $dry_run"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv 2>/dev/null || echo "nvidia-smi: not available"
$python -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'

# 1. carried wheels
if [ $dry_run = 1 ]; then
    echo "== wheels: dry run, not installed (the local venv has these packages): $(ls .whl/*.whl 2>/dev/null | wc -l) carried"
else
    $python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/segbench_site .whl/*.whl || { echo "gpu_check.sh: installing .whl/*.whl failed"; exit 1; }
    export PYTHONPATH=/tmp/segbench_site
    echo "== wheels installed ($(elapsed) s)"
fi
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH}

# 2. mamba-ssm selective_scan_cuda
build_status="not attempted"
sdist=$(ls .whl/mamba_ssm-*.tar.gz 2>/dev/null | head -1)
if [ -z "$sdist" ]; then
    build_status="not attempted: no .whl/mamba_ssm-*.tar.gz carried"
else
    rm -rf /tmp/segbench_mamba && mkdir -p /tmp/segbench_mamba && tar xzf "$sdist" -C /tmp/segbench_mamba
    source_dir=$(ls -d /tmp/segbench_mamba/mamba_ssm-*/)
    # setup.py hard-codes -std=c++17 (newer torch headers refuse it) and 8 -gencode targets (slow)
    if $python - "$source_dir/setup.py" <<'EOF'
import pathlib, sys, torch, torch.utils.cpp_extension as ext
path = pathlib.Path(sys.argv[1])
text = path.read_text()
anchor = "    # HACK: The compiler flag -D_GLIBCXX_USE_CXX11_ABI"
if anchor not in text or '"-std=c++17"' not in text:
    sys.exit(f"{path}: the expected -std=c++17 flags or the line {anchor.strip()!r} are missing; patch by hand")
only_sm90 = '    cc_flag = ["-gencode", "arch=compute_90,code=sm_90"]  # segbench: H100/H200 only\n'
text = text.replace(anchor, only_sm90 + anchor, 1)
aten = pathlib.Path(ext.include_paths()[0]) / "ATen" / "ATen.h"
if "C++20 or later" in aten.read_text():
    text = text.replace('"-std=c++17"', '"-std=c++20"')
path.write_text(text)
print(f"patched {path}: sm_90 only; {'C++20' if 'c++20' in text else 'C++17'} ({aten} asks for it)")
EOF
    then
        if [ $dry_run = 1 ]; then
            grep -n 'segbench: H100/H200 only\|-std=c++' "$source_dir/setup.py"
            build_status="dry run: setup.py patched, compile skipped"
        else
            [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ] && export CUDA_HOME=/usr/local/cuda
            build_started=$(date +%s)
            echo "== building selective_scan_cuda (limit ${build_limit_s} s, MAX_JOBS=16, CUDA_HOME=${CUDA_HOME:-unset})"
            (cd "$source_dir" && MAMBA_FORCE_BUILD=TRUE MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 \
                timeout "$build_limit_s" $python setup.py build_ext --inplace) >"$OUT/mamba_build.log" 2>&1
            build_rc=$?
            build_s=$(( $(date +%s) - build_started ))
            if [ $build_rc = 0 ] && (cd /tmp && PYTHONPATH=$source_dir:$PYTHONPATH $python -c \
                    'import torch, selective_scan_cuda; from mamba_ssm.ops.selective_scan_interface import selective_scan_fn') \
                    >>"$OUT/mamba_build.log" 2>&1; then
                export PYTHONPATH=$source_dir:$PYTHONPATH
                build_status="built in ${build_s} s (MAX_JOBS=16, sm_90), imports"
            elif [ $build_rc = 124 ]; then
                build_status="gave up after ${build_s} s (limit ${build_limit_s} s); cuda backend not measured"
            else
                build_status="failed after ${build_s} s (rc ${build_rc}); see mamba_build.log"
                tail -n 25 "$OUT/mamba_build.log"
            fi
        fi
    else
        build_status="setup.py patch failed; see the log"
    fi
fi
echo "== mamba-ssm: $build_status ($(elapsed) s in)"

# 3. the checks, inside what is left of the budget
budget_s=$(( total_budget_s - $(elapsed) ))
dry_flag=""
[ $dry_run = 1 ] && dry_flag=--cpu-dry-run
$python scripts/gpu_check.py $dry_flag --out "$OUT" --budget-s "$budget_s" --mamba-build "$build_status"
rc=$?
echo "== gpu_check.sh done in $(elapsed) s (rc $rc)"
exit $rc
