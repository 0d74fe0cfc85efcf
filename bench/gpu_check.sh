#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU, in at most about 5 minutes,
#   1. set-up: the machine's python with a CUDA build of torch (PY, default python3); this package and the wheels in
#      .whl/ installed without touching torch (offline machines: run `bench/gpu_wheels.sh` on a connected one first);
#   2. the machine as `finsight info` shows it (finsight.hardware.machine_info);
#   3. the CUDA tests (tests/cuda: precision plan, fp16 + scaler, bf16, fused AdamW, memory fraction);
#   4. bench/train.py and bench/inference.py on the GPU, short settings; both append their table to
#      docs/benchmarks.md under a heading with the card's name.
# Usage: bash bench/gpu_check.sh   (OUT=<folder> also copies the log and docs/benchmarks.md there)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
LOG=${OUT:-/tmp}/gpu_check.log
exec > >(tee "$LOG") 2>&1
step() { echo; echo "== $* ($(date -u +%H:%M:%S))"; }

step "set-up"
"$PY" -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda); sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "gpu_check: torch sees no CUDA GPU with $PY; nothing to check"; exit 1; }
SITE=/tmp/finsight-site; mkdir -p "$SITE"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" .whl/*.whl || exit 1
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export MLFLOW_DISABLE_TELEMETRY=true TOKENIZERS_PARALLELISM=false FINSIGHT_DEVICE=cuda
"$PY" -c "import finsight.training, finsight.export" || { echo "gpu_check: the package does not import (missing wheels? see bench/gpu_wheels.sh)"; exit 1; }

step "the machine (what finsight info shows)"
"$PY" -c "import json; from finsight.hardware import machine_info; print(json.dumps(machine_info(), indent=1, default=str))"

step "CUDA tests"
"$PY" -m pytest tests/cuda -q -p no:cacheprovider -p no:randomly; tests=$?

step "training throughput on the GPU"
timeout 150 "$PY" bench/train.py --device cuda --windows 4096 --epochs 3 --repeat 2 --seeds 0 --no-compile; train=$?

step "inference on the GPU"
timeout 90 "$PY" bench/inference.py --device cuda --seconds 1; infer=$?

step "done: tests rc=$tests, train rc=$train, inference rc=$infer"
[ -n "${OUT:-}" ] && cp docs/benchmarks.md "$OUT/"
exit $(( tests || train || infer ))
