#!/bin/sh
# docker/imgexp-worker.sh, installed as /usr/local/bin/imgexp-worker: the entrypoint of the compose
# `worker` service. It claims one GPU for this worker, then runs `imgexp "$@"` on it.
#
# Docker hands every replica of a `count: N` device reservation the same GPUs (0 .. N-1), so with
# `--scale worker=4` and `count: 1` all four would share GPU 0. The workers therefore reserve all GPUs
# (`count: all`) and each takes the first one no other worker holds: a lock file per GPU in the shared /work
# volume (/work/.gpu-claims/<index>.lock), held until this worker exits, however it exits. Workers beyond
# the number of GPUs wait for one to free. Without GPUs (no nvidia-smi) imgexp runs as is.
#   WORKER_GPU_IDS=0,1   the GPUs to choose from (default: every GPU nvidia-smi lists)
set -eu
ids=${WORKER_GPU_IDS:-$(nvidia-smi --query-gpu=index --format=csv,noheader 2> /dev/null || true)}
if [ -z "$ids" ]; then
    exec imgexp "$@"
fi
mkdir -p /work/.gpu-claims
while :; do
    for id in $(echo "$ids" | tr ',' ' '); do
        exec 9> "/work/.gpu-claims/$id.lock"
        if flock -n 9; then
            echo "imgexp-worker: GPU $id (CUDA_VISIBLE_DEVICES=$id)"
            export CUDA_VISIBLE_DEVICES="$id"
            exec imgexp "$@"   # fd 9, and so the lock, stays open in imgexp until it exits
        fi
        exec 9>&-
    done
    echo "imgexp-worker: every GPU ($ids) has a worker; waiting for one"
    sleep 15
done
