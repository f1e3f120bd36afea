#!/usr/bin/env bash
# Stage 2 of the CPU experiment (../rescaled_fashion_mnist_cpu_final/) continued for three more
# epochs from the committed one-epoch network, four epochs of stage 2 in all with a warm restart
# (about 2 hours of training on 2 cores, then about 40 minutes of testing). Same data, grid and
# settings; fixed before it ran, and reported whatever it measured.
#   1. three more epochs (2,811 steps)
#                             recipes/configs/rescaled_fashion_mnist_cpu_final_stage2_continued.yaml;
#      the weights are copied to model/
#   2. evaluate it on the first 1000 images of each of the nine test splits, as the one-epoch network,
#      on its training grid and on the evaluation grid that adds 2 sqrt2
#   3. it on all 10,000 test images at s = 1/2, 1/sqrt2, 1 and 2 (../rescaled_fashion_mnist_cpu_final/full_test.py)
#   4. the figure: the one-, two- and four-epoch networks' accuracy per size factor
# Training steps resume after an interruption (rerun this script).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=runs/rescaled_fashion_mnist_cpu/final_stage2_continued
OUT=results/rescaled_fashion_mnist_cpu_stage2_continued
FINAL=results/rescaled_fashion_mnist_cpu_final
DATA=/usr/share/datasets/fashion-mnist
LABEL='stage 2 continued, four epochs (6 channels)'

resume() { [ -d "$1" ] && ls "$1" | grep -q '^checkpoint-' && echo --resume || true; }
[ -f $RUN/model/model.safetensors ] || \
  python recipes/train.py --config recipes/configs/rescaled_fashion_mnist_cpu_final_stage2_continued.yaml \
    $(resume $RUN)
mkdir -p $OUT/model
cp $RUN/log.jsonl $OUT/training_log.jsonl
# Its weights, committed beside the results (timm.create_model('local-dir:' + $OUT/model, pretrained=True)).
cp $RUN/model/{model.safetensors,config.json,preprocessor_config.json} $OUT/model/

# The same weights on the evaluation grid, which adds the large boundary channel 2 sqrt2 (App. A.4, A.5)
python recipes/transfer.py $OUT/model ${RUN}_evaluation_grid --overwrite \
  --initial_scales 0.3535533905932738,0.5,0.7071067811865476,1,1.4142135623730951,2,2.8284271247461903

python recipes/evaluate.py --dataset rescaled_fashion_mnist --data_dir $DATA \
  --max_examples 1000 --save_predictions --output_dir $OUT --model "$LABEL=$OUT/model" \
  --model "stage 2 continued, four epochs, 7 channels (evaluation grid)=${RUN}_evaluation_grid"

python $FINAL/full_test.py --model $OUT/model --label "$LABEL" \
  --evaluation $OUT/evaluation.json --output $OUT/full_test.json --size_factors 0.5 0.707 1 2

python - <<'PY'
import json
from gaussder_hf.analysis import plot_scale_generalisation
out = 'results/rescaled_fashion_mnist_cpu_stage2_continued'
curves = {}
for folder, label, name in (
        ('results/rescaled_fashion_mnist_cpu_final', 'final, 6 channels (training grid)',
         'stage 2 for one epoch (committed checkpoint)'),
        ('results/rescaled_fashion_mnist_cpu_stage2_two_epochs', 'stage 2 for two epochs (6 channels)',
         'stage 2 for two epochs'),
        (out, 'stage 2 continued, four epochs (6 channels)', 'stage 2 continued, four epochs')):
    accuracy = json.load(open(f'{folder}/evaluation.json'))[label]['accuracy']
    curves[name] = {float(s): a for s, a in accuracy.items()}
plot_scale_generalisation(curves, f'{out}/scale_generalisation.png',
                          title='Stage 2 for one, two and four epochs (first 1000 test images)')
PY
