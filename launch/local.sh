#!/usr/bin/env bash
# Multi-process runs on this machine: N processes of `python -m simclr_jax.main` (or of the
# program $MODULE names, e.g. simclr_jax.embed) with D CPU devices each, joined by
# jax.distributed on localhost (CPU collectives: gloo). Each output line starts with its
# process id. If a process fails, the others are killed and the script exits with its status;
# SIGINT or SIGTERM is passed on to every process, which then saves a checkpoint at the same
# step and exits (rerun the command to resume).
#
# Usage (from the repository root):
#   launch/local.sh N D --config=CONFIG --workdir=WORKDIR [--config.KEY=VALUE ...]
# e.g. 2 processes of 2 devices; with data_shards=2 the run equals one process's:
#   launch/local.sh 2 2 --config=configs/cifar10_cpu.py --workdir=/tmp/simclr_2x2 \
#       --config.dataset=../shared/data/cifar10-jpeg --config.data_shards=2
# or a folder embedded by 2 processes of 1 device into one OUT (a folder both can write):
#   MODULE=simclr_jax.embed launch/local.sh 2 1 --workdir=W --images=DIR --output=OUT
# Environment: PYTHON (default: python), PORT (coordinator port; default: a free one), MODULE
# (default: simclr_jax.main).
set -euo pipefail

if (( $# < 2 )); then
  sed -n '2,17p' "$0" >&2
  exit 2
fi
num_processes=$1
devices=$2
shift 2
python=${PYTHON:-python}
module=${MODULE:-simclr_jax.main}
port=${PORT:-$("$python" -c 'import socket
s = socket.socket()
s.bind(("localhost", 0))
print(s.getsockname()[1])')}

declare -A running  # pid -> process id
for (( i = 0; i < num_processes; i++ )); do
  XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices" JAX_PLATFORMS=cpu \
    "$python" -m "$module" "$@" --coordinator_address="localhost:$port" \
    --num_processes="$num_processes" --process_id="$i" > >(sed -u "s/^/[$i] /") 2>&1 &
  running[$!]=$i
done
trap 'kill -TERM "${!running[@]}" 2>/dev/null || true' INT TERM

status=0
while (( ${#running[@]} )); do
  sleep 1 & wait $! || true  # A trapped signal interrupts `wait` (not `sleep`) at once.
  for pid in "${!running[@]}"; do
    kill -0 "$pid" 2>/dev/null && continue
    code=0
    wait "$pid" || code=$?
    i=${running[$pid]}
    unset "running[$pid]"
    if (( code != 0 && status == 0 )); then
      status=$code
      echo "local.sh: process $i exited with status $code; killing the others." >&2
      # They cannot finish without it: their next collective would wait for it forever.
      kill -KILL "${!running[@]}" 2>/dev/null || true
    fi
  done
done
exit "$status"
