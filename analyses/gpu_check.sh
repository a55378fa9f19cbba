#!/usr/bin/env bash
# One GPU check, under 5 minutes on an H100/H200: every benchmark on the GPU, all JSON into one folder.
#
# The lent GPU machines have their own Python 3.12 and torch, and no network. What they lack travels as wheels in
# the git-ignored folder .gpu_carry/ (never committed). Prepare it here once:
#   mkdir -p .gpu_carry && python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .gpu_carry open_clip_torch ftfy wcwidth faiss-cpu
#   python3 -m pip download --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .gpu_carry "ray>=2.9"                              # with its dependencies (msgpack, protobuf, jsonschema, ...)
#   python3 -m pip wheel --no-deps -w .gpu_carry .          # embedlab itself
# then run it through the device tool with carry [".gpu_carry"] and the command
#   bash analyses/gpu_check.sh
# Results land in $OUT (the device tool's folder) or analyses/results/gpu/.
#
# `bash analyses/gpu_check.sh --dry-run` (any machine, no GPU): resolves every module and parses every argument
# without running anything (tests/test_architecture.py runs it).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0; FAILED=0
[ "${1:-}" = "--dry-run" ] && DRY=1
RESULTS="${OUT:-analyses/results/gpu}"
[ "$DRY" = 1 ] && RESULTS=$(mktemp -d)
mkdir -p "$RESULTS"
if [ "$DRY" = 0 ] && [ -d .gpu_carry ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu_carry/*.whl && export PYTHONPATH=/tmp/site
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 EMBEDLAB_CACHE=/tmp/embedlab-cache
[ "$DRY" = 1 ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$RESULTS/gpu.txt"
run() {
  echo "== $*"
  if [ "$DRY" = 1 ]; then ANALYSES_DRY_RUN=1 python3 -m "$@" --out "$RESULTS" || FAILED=1; return; fi
  timeout 150 python3 -m "$@" --out "$RESULTS" 2>&1 | tail -15
}
# the GPU-marked extraction tests: nvJPEG + PIL images in one CUDA batch, and torch.cuda.set_sync_debug_mode("error")
# around the batched device preprocessing (a host sync there raises); needs pytest in .gpu_carry
if [ "$DRY" = 1 ]; then
  [ -f tests/runs/test_extract_scale.py ] || { echo "missing tests/runs/test_extract_scale.py"; FAILED=1; }
elif python3 -c "import pytest" 2>/dev/null; then
  echo "== pytest -m gpu tests/runs/test_extract_scale.py"
  timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/runs/test_extract_scale.py 2>&1 | tail -15
fi
# extraction: --decode auto (nvJPEG on the GPU) at 512x384 and 1600x1200, ViT-B-32 and ViT-L-14, vs the naive loop
run analyses.bench.extract --suite naive --models ViT-B-32 ViT-L-14 --n 4096 --naive-n 256 --size 512x384 \
    --batch-size 512 --workers 8 --device cuda --decode auto --tag-size
run analyses.bench.extract --suite naive --models ViT-B-32 ViT-L-14 --n 1024 --naive-n 64 --size 1600x1200 \
    --batch-size 256 --workers 8 --device cuda --decode auto --tag-size
# the same on the Ray engine: a local Ray instance, one actor on the one GPU, vs the local engine (start-up excluded)
run analyses.bench.extract --suite ray-gpu --models ViT-B-32 --scale-n 4096 --size 512x384 --batch-size 512 \
    --device cuda --decode auto --repeats 1
run analyses.bench.train --batch 8 --size 512 --device cuda --iters 10
run analyses.bench.explain --models embedlab-tiny ViT-B-32 --device cuda
run analyses.bench.enhance --device cuda --checkpoints .gpu_carry/checkpoints   # cp -r ../shared/checkpoints .gpu_carry/ first
[ "$DRY" = 1 ] || ls -la "$RESULTS"
[ "$DRY" = 1 ] && { [ "$FAILED" = 0 ] && echo "dry run ok" || { echo "dry run FAILED"; exit 1; }; }
exit 0
