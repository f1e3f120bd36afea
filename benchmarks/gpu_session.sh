#!/usr/bin/env bash
# The GPU checks of issue 7, one step per call so that each fits a 10-minute device command.
# Usage: bash benchmarks/gpu_session.sh STEP [extra args for that step's script]
#   STEP: agreement | layer | model | maxbatch | compile
# Output goes to the terminal and to ${OUT:-benchmarks/gpu_logs}/STEP.txt.
set -euo pipefail
step=${1:?usage: bash benchmarks/gpu_session.sh agreement|layer|model|maxbatch|compile [args]}
shift
here=$(cd "$(dirname "$0")" && pwd)
logs=${OUT:-$here/gpu_logs}
mkdir -p "$logs"
case "$step" in
  agreement) command=(python "$here/device_agreement.py" --device cuda) ;;
  layer)     command=(python "$here/layer_speed.py" --device cuda --repeats 11) ;;
  model)     command=(python "$here/model_speed.py" --device cuda --batch 16 --mem-batch 4) ;;
  maxbatch)  command=(python "$here/max_batch.py" --device cuda) ;;
  compile)   command=(python "$here/compile_speed.py" --device cuda --no-layout-opt-case) ;;
  *) echo "unknown step '$step' (expected agreement, layer, model, maxbatch or compile)" >&2; exit 2 ;;
esac
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; } | tee "$logs/$step.txt"
"${command[@]}" "$@" 2>&1 | tee -a "$logs/$step.txt"
