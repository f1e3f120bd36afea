#!/usr/bin/env bash
# "Why not just augment?": scale augmentation against scale channels on rescaled Fashion-MNIST, on
# a CPU. Four models, each trained on size factor 1 training images with the same budget (about
# 200,000 training images: 3,124 steps of 64) and tested on the first 1000 images of each of the
# nine test splits (size factors 1/2 ... 2):
#   1. timm resnet18, scale augmentation over [1/2, 2]: it has seen every test size (the ceiling
#      of interpolation)                        recipes/configs/rescaled_fashion_mnist_resnet18_aug_wide_cpu.yaml
#   2. timm resnet18, scale augmentation over [1/sqrt2, sqrt2]: 1/2 and 2 lie outside what it saw
#                                               recipes/configs/rescaled_fashion_mnist_resnet18_aug_narrow_cpu.yaml
#   3. the GaussDerResNet-10 trained at size factor 1 only, with the same two-stage recipe on the
#      training split (../rescaled_fashion_mnist_cpu/two_stage_model, made by that folder's
#      reproduce.sh; its evaluation there is reused: the same model on the same images)
#   4. the same GaussDerResNet-10 recipe (two stages) with the augmentation of 2
#                                               recipes/configs/rescaled_fashion_mnist_cpu_aug_narrow*.yaml
# Each model's evaluation lands in evaluations/<name>/evaluation.json, with its training log; a
# model whose evaluation is there already is neither trained nor evaluated again (training resumes
# after an interruption: rerun this script). The last step merges them into evaluation.json,
# scale_generalisation.png and the printed table. Selection: none on the test splits; every
# setting is fixed in the configs.
# Time on 2 CPU cores: about 40 minutes per resnet18, 95 for the GaussDerResNet's two stages
# (37 + 58), and 2-15 minutes per evaluation.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=runs/scale_augmentation_cpu
OUT=results/scale_augmentation_cpu
CONFIGS=recipes/configs
DATA=/usr/share/datasets/fashion-mnist

resume() { [ -d "$1" ] && ls "$1" | grep -q '^checkpoint-' && echo --resume || true; }
train() {  # config, run folder
  [ -f "$2/model/model.safetensors" ] || python recipes/train.py --config "$1" $(resume "$2")
}
evaluate() {  # label, model folder, evaluation folder
  python recipes/evaluate.py --dataset rescaled_fashion_mnist --data_dir $DATA --max_examples 1000 \
    --save_predictions --output_dir "$3" --model "$1=$2"
}
keep_log() {  # run folder, evaluation folder, file name: the training log (losses, validation accuracy)
  cp "$1/log.jsonl" "$2/$3"
}

for spread in wide narrow; do
  if [ ! -f $OUT/evaluations/resnet18_aug_$spread/evaluation.json ]; then
    train $CONFIGS/rescaled_fashion_mnist_resnet18_aug_${spread}_cpu.yaml $RUNS/resnet18_aug_$spread
    label="resnet18, augmentation [0.5, 2]"; [ $spread = narrow ] && label="resnet18, augmentation [0.71, 1.41]"
    evaluate "$label" $RUNS/resnet18_aug_$spread/model $OUT/evaluations/resnet18_aug_$spread
    keep_log $RUNS/resnet18_aug_$spread $OUT/evaluations/resnet18_aug_$spread training_log.jsonl
  fi
done
if [ ! -f $OUT/evaluations/gaussderresnet10_aug_narrow/evaluation.json ]; then
  train $CONFIGS/rescaled_fashion_mnist_cpu_aug_narrow.yaml $RUNS/gaussderresnet10_aug_narrow_single
  train $CONFIGS/rescaled_fashion_mnist_cpu_aug_narrow_stage2.yaml $RUNS/gaussderresnet10_aug_narrow_stage2
  evaluate "GaussDerResNet-10, augmentation [0.71, 1.41]" $RUNS/gaussderresnet10_aug_narrow_stage2/model \
    $OUT/evaluations/gaussderresnet10_aug_narrow
  keep_log $RUNS/gaussderresnet10_aug_narrow_single $OUT/evaluations/gaussderresnet10_aug_narrow training_log_stage1.jsonl
  keep_log $RUNS/gaussderresnet10_aug_narrow_stage2 $OUT/evaluations/gaussderresnet10_aug_narrow training_log_stage2.jsonl
fi

python - <<'PY'
import json
from pathlib import Path

from gaussder_hf.analysis import write_evaluation

out = Path('results/scale_augmentation_cpu')
committed = json.loads(Path('results/rescaled_fashion_mnist_cpu/evaluation.json').read_text())
results = {'GaussDerResNet-10, size factor 1 only (two-stage, training split)':
           committed['multi-scale (6 channels, two-stage)']}
for name in ('resnet18_aug_wide', 'resnet18_aug_narrow', 'gaussderresnet10_aug_narrow'):
    path = out / 'evaluations' / name / 'evaluation.json'
    if path.exists():
        results.update(json.loads(path.read_text()))
    else:
        print(f'{path} is missing: that model is left out of the merged table')
write_evaluation(results, out, 'rescaled_fashion_mnist')
PY
