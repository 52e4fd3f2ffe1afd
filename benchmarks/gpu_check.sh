#!/usr/bin/env bash
# The GPU measurements in one prepared run, for a session that is lent a GPU machine (the
# workplace's `device` tool: about 15 minutes of device time, no internet there, an image with
# python3 3.12 + torch + torchvision + triton + pytest but without pydantic / SQLAlchemy):
#
#   1. the CUDA-only tests (the augmentation on CUDA, the fused optimizer);
#   2. benchmarks/throughput.py on CUDA: (a) augmentation, eager and compiled, vs the usual
#      per-sample torchvision pipeline with DataLoader workers; (b) SimCLR ResNet-18 training,
#      ours vs usual; (c) the ceiling;
#   3. benchmarks/epoch_time.py: the real trainer, SimCLR ResNet-18 (CIFAR stem), 50,000 32x32
#      images, batch 512, bf16, eager and with compile: true (target: an epoch under 3 s);
#   4. benchmarks/reporting.py on CUDA with SQLite (no PostgreSQL there): the sink's share of a
#      GPU step.
#   5. benchmarks/scaling.py on CUDA (NCCL): data-parallel images/s at 1, 2, 4, 8 processes (as many
#      as the host has GPUs), ResNet-50 at 224 px, 64 images per GPU (weak scaling); target >= 90 %
#      efficiency on one 8-GPU node. On a 1-GPU host only the 1-process row runs. On 2+ GPUs the
#      SyncBatchNorm path runs too (SimCLR's method.sync_bn is on for multi-GPU runs).
#
# Here, once per session (wheels for the device's Python 3.12, git-ignored):
#   bash benchmarks/gpu_check.sh --fetch-wheels
# Then, with the device tool:
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600)
# The JSON results and the log come back under $OUT; put the numbers into docs/performance.md
# with the GPU's name from the log. Each step has its own time limit (500 s in all, inside the
# tool's 600 s per run) so that a slow one cannot take the whole run; never run yet: no GPU
# has been lent to this project's sessions so far.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch-wheels" ]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  py=${PYTHON:-.venv/bin/python}
  pins=$($py - <<'EOF'
import importlib.metadata as md
# what ssl_core and the benchmarks import that the device image lacks (traced 2026-11-27 against
# its package list); typing_extensions too: pydantic_core needs a newer one than the image may have
print(" ".join(f"{d}=={md.version(d)}" for d in (
    "pydantic", "pydantic_core", "annotated-types", "typing-inspection", "typing_extensions", "pydantic-settings",
    "python-dotenv", "SQLAlchemy", "alembic", "Mako", "fastapi", "starlette", "opentelemetry-api")))
EOF
)
  # shellcheck disable=SC2086
  exec $py -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl $pins
fi

OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__,
  "cuda", torch.version.cuda, torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())'
nproc

step() {  # step NAME SECONDS CMD...: run with a time limit, note the exit status, go on
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@"
  echo "=== $name: exit $? after $((SECONDS - t0)) s"
}

step cuda-tests 60 python3 -m pytest -q -p no:cacheprovider tests/core/test_augment.py tests/core/test_fastpath.py -k cuda
step throughput 150 python3 benchmarks/throughput.py --device cuda --backbone resnet18 --batch-size 512 \
  --steps 30 --warmup 5 --rounds 3 --aug-images 50000 --workers "$(nproc)" --compile augment \
  --out "$OUT/throughput_cuda_resnet18.json"
step epoch-eager 80 python3 benchmarks/epoch_time.py --device cuda --epochs 3 --out "$OUT/epoch_cuda_eager.json"
step epoch-compiled 150 python3 benchmarks/epoch_time.py --device cuda --epochs 3 --compile \
  --out "$OUT/epoch_cuda_compiled.json"
step reporting 60 python3 benchmarks/reporting.py --device cuda --backbone resnet18 --batch-size 128 --steps 15 \
  --epochs 4 --repeats 2 --stores null,sqlite --out "$OUT/reporting_cuda.json"
ngpu=$(nvidia-smi --list-gpus | wc -l)
counts=$(python3 -c "print(','.join(str(n) for n in (1, 2, 4, 8) if n <= $ngpu))")
step scaling 150 python3 benchmarks/scaling.py --device cuda --nproc "$counts" --rounds 1 --backbone resnet50 \
  --image-size 224 --batch-size 64 --weak --subset 1280 --epochs 2 --log-every 5 --out "$OUT/scaling_cuda.json"
echo "=== done"
