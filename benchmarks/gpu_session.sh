#!/usr/bin/env bash
# The GPU checks (CUDA = CPU, speed, memory, largest batch, compile and bf16) and chunks of the
# paper-preset Fashion-MNIST run, one step per call so that each fits a 10-minute command.
# Usage: bash benchmarks/gpu_session.sh STEP [extra args for that step's script]
#   STEP: agreement | tf32 | layer | model | maxbatch | compile | train | fetch
# Output goes to the terminal and to ${OUT:-benchmarks/gpu_logs}/STEP.txt.
# Packages the GPU image lacks (datasets, and the transformers/timm versions pyproject.toml
# pins) travel as wheels in .whl/ (see benchmarks/README.md, "On a GPU"); Fashion-MNIST's four
# .gz files travel in .data/fashion-mnist/.
set -euo pipefail
step=${1:?usage: bash benchmarks/gpu_session.sh agreement|tf32|layer|model|maxbatch|compile|train|fetch [args]}
shift
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
logs=${OUT:-$here/gpu_logs}
mkdir -p "$logs"
if compgen -G "$root/.whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$root"/.whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
run_dir="$root/runs/rescaled_fashion_mnist_gpu"
if [ "$step" = fetch ]; then
  # The newest complete checkpoint, its config and log (7 files) into the log folder, to be
  # brought back as runs/rescaled_fashion_mnist_gpu on the next machine.
  newest=$(ls -d "$run_dir"/checkpoint-* 2>/dev/null | sort | tail -1)
  [ -n "$newest" ] || { echo "no checkpoint under $run_dir" >&2; exit 1; }
  mkdir -p "$logs/$(basename "$newest")"
  cp "$newest"/* "$logs/$(basename "$newest")/"
  cp "$run_dir/config.yaml" "$run_dir/log.jsonl" "$logs/" 2>/dev/null || true
  ls -la "$logs" "$logs/$(basename "$newest")"
  exit 0
fi
case "$step" in
  agreement) command=(python3 "$here/device_agreement.py" --device cuda) ;;
  tf32)      command=(python3 -m pytest -q -p no:cacheprovider "$root/tests/test_tf32_guard.py") ;;  # the GPU-only test runs
  layer)     command=(python3 "$here/layer_speed.py" --device cuda --repeats 11) ;;
  model)     command=(python3 "$here/model_speed.py" --device cuda --batch 16 --mem-batch 4) ;;
  maxbatch)  command=(python3 "$here/max_batch.py" --device cuda) ;;
  compile)   command=(python3 "$here/compile_speed.py" --device cuda --no-layout-opt-case) ;;
  # One resumable chunk (the recipe checkpoints atomically every save_every steps and --resume
  # continues from the newest complete one); stopped after CHUNK_SECONDS so the command ends in time.
  train)     command=(timeout --signal=INT "${CHUNK_SECONDS:-480}" python3 "$root/recipes/train.py"
                      --config "$root/recipes/configs/rescaled_fashion_mnist.yaml" --resume
                      "data_dir=$root/.data/fashion-mnist" "output_dir=$run_dir"
                      save_every=250) ;;
  *) echo "unknown step '$step' (expected agreement, tf32, layer, model, maxbatch, compile, train or fetch)" >&2; exit 2 ;;
esac
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; } | tee "$logs/$step.txt"
"${command[@]}" "$@" 2>&1 | tee -a "$logs/$step.txt"
