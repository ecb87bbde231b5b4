#!/usr/bin/env bash
# The GPU rows of issue 18 in one call on a machine with a CUDA GPU: the Serve benchmark with the model
# replicas on fractional GPUs at concurrency 1, 16 and 64, then the same short Tune sweep on the GPU
# (fractional GPUs per trial) and on the CPU, trials per minute side by side.
#
#   bash bench/gpu_bench.sh [WHEELHOUSE] [OUT_DIR]
#
# Ray must be importable. When it is not (a bare GPU machine without network), its wheels are installed
# from WHEELHOUSE (default /tmp/wheelhouse) with --no-index; wheels too big to carry whole may lie there
# as parts (`split -b 40M ray-X.whl ray-X.whl.part-`), joined here first. Prepare the wheelhouse on a
# machine with the package index:
#   pip download --dest wheelhouse "ray[serve,tune]==$(python -c 'import ray; print(ray.__version__)')" mlflow optuna
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELHOUSE=${1:-/tmp/wheelhouse}
OUT=${2:-${OUT:-reports/gpu}}
PY=${PY:-python}
mkdir -p "$OUT"
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device here'; print('gpu:', torch.cuda.get_device_name(0))"

if ! $PY -c "import ray.serve, ray.tune" 2>/dev/null; then
  for first in "$WHEELHOUSE"/*.whl.part-aa; do
    [ -e "$first" ] || continue
    cat "${first%aa}"* > "${first%.part-aa}"
  done
  $PY -m pip install --quiet --no-index --find-links "$WHEELHOUSE" "ray[serve,tune]" optuna mlflow
fi
$PY -m pip install --quiet --no-deps -e . 2>/dev/null || true

export SPEECHGUIDE_FSDD_DIR=${SPEECHGUIDE_FSDD_DIR:-../shared/data/fsdd}
start=$(date +%s)
# Serve: the split app (Denoiser and Classifier at half a GPU each), step-batched and unbatched.
$PY bench/serve_bench.py --device cuda --gpus-per-replica 0.5 --concurrency 1,16,64 --requests 128 --steps 10 \
  --no-fused --no-colocated --no-in-ingress 2>&1 | tee "$OUT/serve-gpu.txt"

# Tune: the same 8-trial sweep with 4 trials at a quarter GPU each, then on CPUs only.
for where in gpu cpu; do
  if [ $where = gpu ]; then res="--gpus-per-trial 0.25 --max-concurrent 4"; else res="--max-concurrent 2"; fi
  t0=$(date +%s)
  $PY -m speechguide tune --trials 8 --per-class 4 --scheduler fifo --no-mlflow $res \
    --storage-path "$PWD/$OUT/tune-runs" --name "sweep-$where" > "$OUT/tune-$where.log" 2>&1
  t1=$(date +%s)
  echo "tune on $where: 8 trials in $((t1 - t0)) s = $(python3 -c "print(round(8 * 60 / max($t1 - $t0, 1), 2))") trials/min" | tee -a "$OUT/tune.txt"
done
echo "total $(( $(date +%s) - start )) s"
