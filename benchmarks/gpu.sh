#!/usr/bin/env bash
# Every GPU check and benchmark of the training engine in one command, for a lent GPU machine's few minutes:
#   bash benchmarks/gpu.sh [CIFAR10_FOLDER]   (train/<class>/*.jpg and test/<class>/*.jpg; default ../shared/datasets/cifar10)
# 1. the CUDA tests; 2. report D's network on the full CIFAR-10 folder, 30 epochs, trainer=fast (bf16 +
# channels_last + compile), data on the GPU (target: <= 15 s of training at test/acc >= 0.86);
# 3. fp32 vs bf16 + channels_last vs trainer=fast, and the bare loop, side by side, 5 epochs.
# The log goes to stdout and to $OUT/gpu.log when OUT is set (the device tool's output folder).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-../shared/datasets/cifar10}
RECIPE=(optimizer=sgd optimizer.lr=0.1 optimizer.momentum=0.9 optimizer.nesterov=true optimizer.weight_decay=5e-4
        scheduler=onecycle augmentation=crop_flip loss.label_smoothing=0.1)
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
  python -m pytest -q -rs tests/test_trainer.py tests/test_augment.py -k "cuda or compile"
  python benchmarks/train_speed.py --root "$ROOT" --device cuda --images 45000 --epochs 30 --batch 512 --seeds 0 \
    --no-bare --variants fast --set "${RECIPE[@]}"
  python benchmarks/train_speed.py --root "$ROOT" --device cuda --images 45000 --epochs 5 --batch 512 --seeds 0 \
    --variants fp32 bf16_cl fast --set "${RECIPE[@]}"
} 2>&1 | tee "${OUT:-/tmp}/gpu.log"
