#!/usr/bin/env bash
# Issue 15 item 3 on a CUDA machine: the GPU test and benchmark, nothing else.
#
# For a machine whose python3 already holds torch, numpy and pytest (the project's device
# machine, with pillow) and that reaches no package registry: the packages Radpipe runs with
# beyond those travel as CPython 3.12 wheels, fetched here first with `make gpu-wheels`.
#
#     bash scripts/gpu_check.sh [WHEEL_DIR] [OUT_DIR]
#
# Runs tests/integration/test_gpu_inference.py (the demo bundle's predict, the worker's
# analyze and result objects, and zoo bundles, each against the CPU),
# tests/e2e/test_gpu_workers.py (`radpipe up` + `radpipe demo` unconfigured: the real Celery
# inference worker reads inference-gpu and analyses on CUDA; a prefork worker's child can use
# the GPU its parent checked for), both failing, not skipping,
# when no GPU is seen (this script exists to prove the CUDA path), and bench/gpu.py, and
# writes the outputs to OUT_DIR (default: test-artifacts/gpu). Copy the benchmark's row into
# docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=${1:-.cache/gpu-wheels}
out=${2:-test-artifacts/gpu}
mkdir -p "$out"
if ! ls "$wheels"/*.whl > /dev/null 2>&1; then
    echo "no wheels in $wheels: run 'make gpu-wheels' on a machine that reaches the package index" >&2
    exit 2
fi
site=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl
# The package is the services/ folder under the name radpipe (pyproject's package-dir).
ln -sfn "$PWD/services" "$site/radpipe"
export PYTHONPATH="$site" PYTHONUNBUFFERED=1
python3 - <<'PY' | tee "$out/device.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0))
PY
status=0
# --noconftest: the suite's conftest starts Redis and S3 servers this check does not need.
RADPIPE_REQUIRE_GPU=true python3 -m pytest -q -s -rs -p no:cacheprovider --noconftest \
    tests/integration/test_gpu_inference.py tests/e2e/test_gpu_workers.py 2>&1 | tee "$out/test.txt" || status=1
# GPU_CHECK_BENCH=false: the tests only (a rerun after a fix; device time is scarce).
if [ "${GPU_CHECK_BENCH:-true}" != "false" ]; then
    python3 bench/gpu.py 2>&1 | tee "$out/bench.txt" || status=1
fi
exit $status
