#!/usr/bin/env bash
# SimCLR pretraining on a Cloud TPU VM pod slice: every worker runs the same
# `python3 -m simclr_jax.main`, and JAX finds the other workers by itself on TPU VMs
# (simclr_jax/core/distributed.py). Not run by the project (no TPU access): the gcloud commands
# follow the Cloud TPU documentation (gcloud compute tpus tpu-vm create/scp/ssh/delete).
#
# Usage: launch/tpu_pod.sh create|setup|run|logs|stop|delete
#   create  creates the slice
#   setup   copies the repository's committed HEAD to every worker, installs it with jax[tpu]
#   run     starts training on every worker in the background (log: ~/simclr.log on each)
#   logs    streams worker 0's log (process 0 logs the run; the others log warnings only)
#   stop    sends SIGTERM to every worker: all save a checkpoint at the same step and exit;
#           `run` again resumes from it
#   delete  deletes the slice
# Parameters: the variables below, or the same names in the environment, e.g.
#   ZONE=europe-west4-a ACCELERATOR_TYPE=v5p-32 launch/tpu_pod.sh create
# WORKDIR must be storage every worker sees (gs://...): all workers write the checkpoints,
# worker 0 the metrics and config.
set -euo pipefail

NAME=${NAME:-simclr-pod}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-32}  # 16 chips on 4 hosts.
VERSION=${VERSION:-tpu-ubuntu2204-base}
BUCKET=${BUCKET:-gs://YOUR_BUCKET}
WORKDIR=${WORKDIR:-$BUCKET/simclr/imagenet_r50}
CONFIG=${CONFIG:-configs/imagenet.py}
# data_shards=16: the same batches on 1, 2, 4, 8 or 16 hosts (see README).
EXTRA=${EXTRA:-"--config.tfds_data_dir=$BUCKET/tensorflow_datasets --config.data_shards=16"}

tpu_vm() { gcloud compute tpus tpu-vm "$@" --zone="$ZONE"; }
on_all_workers() { tpu_vm ssh "$NAME" --worker=all --command="$1"; }

case "${1:-}" in
  create)
    tpu_vm create "$NAME" --accelerator-type="$ACCELERATOR_TYPE" --version="$VERSION"
    ;;
  setup)
    archive=$(mktemp --suffix=.tar.gz)
    git -C "$(dirname "$0")/.." archive --format=tar.gz --prefix=simclr_jax/ -o "$archive" HEAD
    tpu_vm scp "$archive" "$NAME:simclr_jax.tar.gz" --worker=all
    on_all_workers "rm -rf simclr_jax && tar xzf simclr_jax.tar.gz && \
      python3 -m pip install -e ./simclr_jax 'jax[tpu]==0.10.2'"
    ;;
  run)
    on_all_workers "cd simclr_jax && nohup python3 -m simclr_jax.main --config=$CONFIG \
      --workdir=$WORKDIR $EXTRA > ~/simclr.log 2>&1 < /dev/null & echo \$! > ~/simclr.pid"
    ;;
  logs)
    tpu_vm ssh "$NAME" --worker=0 --command="tail -n +1 -f ~/simclr.log"
    ;;
  stop)
    on_all_workers "kill -TERM \$(cat ~/simclr.pid)"
    ;;
  delete)
    tpu_vm delete "$NAME" --quiet
    ;;
  *)
    sed -n '2,18p' "$0" >&2
    exit 2
    ;;
esac
