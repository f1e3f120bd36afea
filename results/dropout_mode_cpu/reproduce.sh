#!/usr/bin/env bash
# Which scale-channel dropout trains better (docs/design.md §3.10, §7.4): 'score' (single class
# scores of the (B, S, K) tensor dropped and the rest rescaled) or 'channel' (whole scale channels
# of a sample left out of the scale pooling). Chosen on validation images only, on a CPU:
#   1. stage 1 of the CPU experiment, a single scale channel sigma0 = 1 on the training split
#      (recipes/configs/rescaled_fashion_mnist_cpu.yaml, 3 epochs, about 35 minutes on 2 cores);
#   2. stage 2 twice from it, on the paper's six training channels 2**-1.5 ... 2, the configs
#      differing in scale_dropout_mode alone (recipes/configs/rescaled_fashion_mnist_cpu_stage2_dropout_*.yaml,
#      390 steps each; the two run side by side, one thread each, about 55 minutes);
#   3. both evaluated on the first 1000 validation images rescaled to each of the nine size
#      factors (recipes/evaluate.py --split validation), the test images left unseen;
#   4. compare.py: accuracy per size factor, and the paired difference image by image with an
#      exact McNemar test (comparison.json);
#   5. for reference, the earlier two-stage network on the first 500 of those validation images.
# Steps whose output exists are skipped; training resumes after an interruption (rerun this script).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=runs/rescaled_fashion_mnist_cpu
OUT=results/dropout_mode_cpu
CONFIGS=recipes/configs

resume() { [ -d "$1" ] && ls "$1" | grep -q '^checkpoint-' && echo --resume || true; }
train() {  # config, run folder
  [ -f "$2/model/model.safetensors" ] || python recipes/train.py --config "$1" $(resume "$2")
}

train $CONFIGS/rescaled_fashion_mnist_cpu.yaml $RUNS/gaussderresnet10_single
for mode in score channel; do
  OMP_NUM_THREADS=1 train $CONFIGS/rescaled_fashion_mnist_cpu_stage2_dropout_$mode.yaml \
    $RUNS/gaussderresnet10_stage2_dropout_$mode > $RUNS/dropout_$mode.out 2>&1 &
done
wait
if [ ! -f $OUT/evaluation.json ]; then
  python recipes/evaluate.py --dataset rescaled_fashion_mnist --data_dir /usr/share/datasets/fashion-mnist \
    --split validation --max_examples 1000 --save_predictions --output_dir $OUT \
    --model "dropout score=$RUNS/gaussderresnet10_stage2_dropout_score/model" \
    --model "dropout channel=$RUNS/gaussderresnet10_stage2_dropout_channel/model"
fi
cp $RUNS/gaussderresnet10_single/log.jsonl $OUT/training_log_stage1.jsonl
for mode in score channel; do
  cp $RUNS/gaussderresnet10_stage2_dropout_$mode/log.jsonl $OUT/training_log_stage2_$mode.jsonl
done
python $OUT/compare.py
# For reference: the earlier experiment's two-stage network (grid 1/2 ... 2 sqrt2, a whole epoch of
# stage 2; ../rescaled_fashion_mnist_cpu/two_stage_model) on the first 500 of the same validation images.
[ -f $OUT/reference_earlier_two_stage/evaluation.json ] || \
  python recipes/evaluate.py --dataset rescaled_fashion_mnist --data_dir /usr/share/datasets/fashion-mnist \
    --split validation --max_examples 500 --output_dir $OUT/reference_earlier_two_stage \
    --model "earlier two-stage network=results/rescaled_fashion_mnist_cpu/two_stage_model"
