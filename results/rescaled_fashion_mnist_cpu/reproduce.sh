#!/usr/bin/env bash
# Reproduces everything in this folder on a CPU (about 3.5 hours on 2 cores): the first CPU
# experiment, trained on the training split only with the grid of earlier versions
# (presets.INITIAL_SCALES_V0 = 1/2 ... 2 sqrt2); train at size factor 1 only, test at every size
# factor. ../rescaled_fashion_mnist_cpu_final/ redoes it as the paper trains its final networks.
#   1. GaussDerResNet-10, single scale channel sigma0 = 1 (3 epochs, 48x48 crops): stage 1 of
#      the two-stage schedule (App. A.4, Table 5)
#   2. stage 2: the same network with the six scale channels 1/2 ... 2 sqrt2 trained jointly from
#      1's weights (one epoch, 781 steps, lr 0.005): two_stage_model/ (the committed checkpoint of
#      earlier versions)
#   3. timm resnet18 on the 72x72 canvas (same optimiser and schedule as 1)
#   4. 1's weights transferred without retraining to the same six scale channels (App. A.4)
#      and to the denser grid of App. A.5 (ratio 2**(1/4) plus a boundary channel sigma0 = 4);
#      2's weights transferred to the same denser grid
#   5. evaluate all six on the first 1000 images of each of the nine test splits
#   6. 2's scale channels at s = 1/2: antialiasing against discretisation
# Training steps resume after an interruption (rerun this script).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=runs/rescaled_fashion_mnist_cpu
OUT=results/rescaled_fashion_mnist_cpu
V0=0.5,0.7071067811865476,1,1.4142135623730951,2,2.8284271247461903
SUMMARY="GaussDerResNet-10 (not the paper's preset), two-stage schedule (App. A.4): stage 1 trained single-scale-channel at sigma0 = 1 on rescaled Fashion-MNIST at size factor 1 only, recipes/configs/rescaled_fashion_mnist_cpu.yaml (3 epochs, batch 64, AdamW lr 0.01 cosine, weight decay 0.025, label smoothing 0.1, 48x48 centre crops, horizontal flips) on a 2-core CPU."

resume() { [ -d "$1" ] && ls "$1" | grep -q '^checkpoint-' && echo --resume || true; }
[ -f $RUNS/gaussderresnet10_single/model/model.safetensors ] || \
  python recipes/train.py --config recipes/configs/rescaled_fashion_mnist_cpu.yaml $(resume $RUNS/gaussderresnet10_single)
[ -f $RUNS/gaussderresnet10_stage2/model/model.safetensors ] || \
  python recipes/train.py --config recipes/configs/rescaled_fashion_mnist_cpu_stage2.yaml $(resume $RUNS/gaussderresnet10_stage2)
[ -f $RUNS/resnet18/model/model.safetensors ] || \
  python recipes/train.py --config recipes/configs/rescaled_fashion_mnist_resnet18_cpu.yaml $(resume $RUNS/resnet18)

python recipes/transfer.py $RUNS/gaussderresnet10_single/model $RUNS/transferred --overwrite --summary "$SUMMARY" \
  --initial_scales $V0
python recipes/transfer.py $RUNS/gaussderresnet10_single/model $RUNS/dense --overwrite --summary "$SUMMARY" \
  --grid 0.5 1.189207115002721 11 --boundary 4
python recipes/transfer.py $RUNS/gaussderresnet10_stage2/model $RUNS/dense_stage2 --overwrite --summary "$SUMMARY" \
  --grid 0.5 1.189207115002721 11 --boundary 4

python recipes/evaluate.py --dataset rescaled_fashion_mnist --data_dir /usr/share/datasets/fashion-mnist \
  --max_examples 1000 --save_predictions --output_dir $OUT \
  --model "multi-scale (6 channels, two-stage)=$RUNS/gaussderresnet10_stage2/model" \
  --model "multi-scale (6 channels, transferred)=$RUNS/transferred" \
  --model "single-scale (1 channel, sigma0 1)=$RUNS/gaussderresnet10_single/model" \
  --model "denser grid (12 channels, A.5)=$RUNS/dense" \
  --model "denser grid (12 channels, A.5, from two-stage)=$RUNS/dense_stage2" \
  --model "resnet18=$RUNS/resnet18/model"

# the two-stage network's weights beside its results (safetensors and config, loadable with
# timm.create_model('local-dir:results/rescaled_fashion_mnist_cpu/two_stage_model', pretrained=True))
mkdir -p $OUT/two_stage_model
cp $RUNS/gaussderresnet10_stage2/model/{model.safetensors,config.json,preprocessor_config.json} $OUT/two_stage_model/

# why the finest channels rarely win at s = 1/2 (docs/design.md §6.1): finest_channels.json
python $OUT/finest_channels.py --num_images 1000 --model $OUT/two_stage_model
