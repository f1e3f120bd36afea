#!/usr/bin/env bash
# Stage 2 of the CPU experiment (../rescaled_fashion_mnist_cpu_final/) run for two epochs instead
# of one, a step towards Table 5's 16 (about 70 minutes of training on 2 cores, then about 40 of
# testing). Same start (that experiment's stage 1, which its reproduce.sh trains), data, grid
# and settings; fixed before it ran, and reported whatever it measured.
#   1. stage 2 for two epochs (1,874 steps)
#                                 recipes/configs/rescaled_fashion_mnist_cpu_final_stage2_2epochs.yaml
#   2. evaluate it on the first 1000 images of each of the nine test splits, as the one-epoch network
#   3. it on all 10,000 test images at s = 1/2, 1/sqrt2, 1 and 2 (../rescaled_fashion_mnist_cpu_final/full_test.py)
#   4. the figure: both networks' accuracy per size factor
# Training steps resume after an interruption (rerun this script).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=runs/rescaled_fashion_mnist_cpu
OUT=results/rescaled_fashion_mnist_cpu_stage2_two_epochs
FINAL=results/rescaled_fashion_mnist_cpu_final
DATA=/usr/share/datasets/fashion-mnist
LABEL='stage 2 for two epochs (6 channels)'

if [ ! -f $RUNS/final_single/model/model.safetensors ]; then
  echo "stage 1 is missing: run $FINAL/reproduce.sh first" >&2
  exit 1
fi
resume() { [ -d "$1" ] && ls "$1" | grep -q '^checkpoint-' && echo --resume || true; }
[ -f $RUNS/final_stage2_2epochs/model/model.safetensors ] || \
  python recipes/train.py --config recipes/configs/rescaled_fashion_mnist_cpu_final_stage2_2epochs.yaml \
    $(resume $RUNS/final_stage2_2epochs)
mkdir -p $OUT
cp $RUNS/final_stage2_2epochs/log.jsonl $OUT/training_log_stage2.jsonl

python recipes/evaluate.py --dataset rescaled_fashion_mnist --data_dir $DATA \
  --max_examples 1000 --save_predictions --output_dir $OUT --model "$LABEL=$RUNS/final_stage2_2epochs/model"

python $FINAL/full_test.py --model $RUNS/final_stage2_2epochs/model --label "$LABEL" \
  --evaluation $OUT/evaluation.json --output $OUT/full_test.json --size_factors 0.5 0.707 1 2

python - <<'PY'
import json
from gaussder_hf.analysis import plot_scale_generalisation
out, final = 'results/rescaled_fashion_mnist_cpu_stage2_two_epochs', 'results/rescaled_fashion_mnist_cpu_final'
curves = {}
for folder, label, name in ((final, 'final, 6 channels (training grid)', 'stage 2 for one epoch (committed checkpoint)'),
                            (out, 'stage 2 for two epochs (6 channels)', 'stage 2 for two epochs')):
    accuracy = json.load(open(f'{folder}/evaluation.json'))[label]['accuracy']
    curves[name] = {float(s): a for s, a in accuracy.items()}
plot_scale_generalisation(curves, f'{out}/scale_generalisation.png',
                          title='Stage 2 for one and two epochs (first 1000 test images)')
PY
