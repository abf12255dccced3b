#!/usr/bin/env bash
# Every GPU check and benchmark of the training engine in one command, for a lent GPU machine's few minutes:
#   bash benchmarks/gpu.sh [CIFAR10_FOLDER]   (train/<class>/*.jpg and test/<class>/*.jpg; default ../shared/datasets/cifar10)
# 1. the CUDA tests; 2. report D's network on the full CIFAR-10 folder, 30 epochs, trainer=fast (bf16 +
# channels_last + compile), data on the GPU (target: <= 15 s of training at test/acc >= 0.86);
# 3. fp32 vs bf16 + channels_last vs trainer=fast, and the bare loop, side by side, 5 epochs;
# 4. GPU slots: 4 report-D jobs of a parallel sweep, one at a time on the GPU (jobs_per_gpu=1) vs all four on
# it (jobs_per_gpu=4): the sweep's total images/s; 5. with 2+ GPUs, one run on 1 GPU vs trainer.devices=auto, and
# one run over two "nodes" (trainer.nodes=2 on the loopback, a GPU each);
# 6. the decode-once cache at 224 px: torchvision's pipeline vs imgexp's first pass and later epochs (batches on
# the GPU), and one ResNet-50 bf16 + channels_last epoch fed from the cache (training images/s).
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
  python -m pytest -q -rs tests/test_trainer.py tests/test_augment.py tests/test_decode_cache.py -k "cuda or compile or gpu"
  python benchmarks/train_speed.py --root "$ROOT" --device cuda --images 45000 --epochs 30 --batch 512 --seeds 0 \
    --no-bare --variants fast --set "${RECIPE[@]}"
  python benchmarks/train_speed.py --root "$ROOT" --device cuda --images 45000 --epochs 5 --batch 512 --seeds 0 \
    --variants fp32 bf16_cl fast --set "${RECIPE[@]}"
  sweep_speed() {  # $1: a name; the rest: overrides. Prints the sweep's training images/s, start-up included
    local start end
    start=$(date +%s.%N)
    python -m imgexp -m "${@:2}" analysis=none progress=false tracking.experiment="$1" > "${OUT:-/tmp}/$1.log" 2>&1 \
      || { echo "$1 failed: tail ${OUT:-/tmp}/$1.log"; return; }
    end=$(date +%s.%N)
    python -c "import sys; n, t = float(sys.argv[1]), float(sys.argv[3]) - float(sys.argv[2]); \
print(f'$1: {n:.0f} training images in {t:.1f} s: {n / t:.0f} images/s')" "$IMAGES_TRAINED" "$start" "$end"
  }
  IMAGES_TRAINED=$((4 * 5 * 45000))
  for share in 1 4; do
    sweep_speed "slots-jobs_per_gpu-$share" hydra/launcher=parallel hydra.launcher.n_jobs=4 jobs_per_gpu=$share \
      seed=0,1,2,3 model=small_cnn data=cifar10 data.root="$ROOT" data.subset=45000 epochs=5 batch=512 trainer=fast
  done
  if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
    IMAGES_TRAINED=$((5 * 45000))
    for devices in 1 auto; do
      sweep_speed "devices-$devices" trainer.devices=$devices model=resnet18 data=cifar10 data.root="$ROOT" \
        data.subset=45000 epochs=5 batch=512 trainer=fast "${RECIPE[@]}"
    done
  else
    echo "one GPU: trainer.devices=auto is one rank here; the multi-GPU comparison needs 2 or more"
  fi
  if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then  # two "nodes" on this machine, a GPU each, meeting on the loopback
    port=$((29400 + RANDOM % 1000)); mkdir -p /tmp/node0 /tmp/node1
    for k in 0 1; do
      (cd /tmp/node$k && CUDA_VISIBLE_DEVICES=$k python -m imgexp trainer.nodes=2 trainer.rendezvous=127.0.0.1:$port \
        model=small_cnn data=cifar10 data.root="$(realpath "$ROOT")" data.subset=45000 epochs=5 batch=512 trainer=fast \
        tracking.uri=sqlite:////tmp/nodes.db tracking.experiment=two-nodes progress=false > "${OUT:-/tmp}/node$k.log" 2>&1; \
        echo "node $k: exit $?") &
    done
    wait
    grep -h "test/acc\|images/s" "${OUT:-/tmp}"/node0.log | tail -3
  else
    echo "one GPU: the two-node check (trainer.nodes=2, a GPU per node) needs 2 or more"
  fi
  python benchmarks/decode_cache.py --images 11000 --workers 8 --device cuda
} 2>&1 | tee "${OUT:-/tmp}/gpu.log"
