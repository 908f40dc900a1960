#!/usr/bin/env bash
# A GPU session in one command: everything only a GPU can show, in one results file (JSON).
#
#   bash benchmarks/gpu_check.sh [--install] [--dry_run] [OUT_FILE] [DATASET_DIR]
#
# OUT_FILE: the results (default $OUT/gpu_check.json when $OUT is set, else ./gpu_check.json).
# DATASET_DIR: the CIFAR-10 image folder <split>/<class>/<image> (default
#   ../shared/data/cifar10-jpeg).
# --install (or INSTALL=1): first `pip install -e .`, then the CUDA build of the jax version
#   setup.py pins; needs the internet, and a failure is recorded, not fatal.
# --dry_run (or DRY_RUN=1): the same parts on the CPU at tiny sizes, on a small DATASET_DIR.
# BUDGET_SEC: wall-clock seconds of the whole check, install included (default 470; the parts
#   run most telling first, and those the budget cannot fit are recorded as skipped).
# PYTHON: the interpreter (default python).
#
# Each part (device, throughput, 3-epoch pretraining, linear evaluation, memory) runs with a
# time limit and the next one starts whatever happened; see benchmarks/gpu_check.py.

set -uo pipefail
start=$SECONDS

install=${INSTALL:-0}
dry_run=${DRY_RUN:-0}
positional=()
for arg in "$@"; do
  case "$arg" in
    --install) install=1 ;;
    --dry_run) dry_run=1 ;;
    *) positional+=("$arg") ;;
  esac
done
# Paths given are relative to where the script is called from, the defaults to the repository.
absolute() { [[ "$1" == /* ]] && echo "$1" || echo "$PWD/$1"; }
out=${positional[0]:-${OUT:+$OUT/gpu_check.json}}
out=$(absolute "${out:-gpu_check.json}")
dataset=${positional[1]:+$(absolute "${positional[1]}")}
cd "$(dirname "$0")/.." || exit 1
dataset=${dataset:-../shared/data/cifar10-jpeg}
budget=${BUDGET_SEC:-470}
python=${PYTHON:-python}

install_status="not requested"
if [[ "$install" == 1 ]]; then
  jax_version=$(sed -n "s/.*'jax==\([^']*\)'.*/\1/p" setup.py)
  # Few retries and a time limit each: without the internet pip fails instead of waiting.
  pip_install=(timeout 150 "$python" -m pip install --quiet --retries 1 --timeout 15)
  if "${pip_install[@]}" -e .; then
    install_status="pip install -e . ok"
  else
    install_status="pip install -e . failed"
  fi
  if "${pip_install[@]}" "jax[cuda12]==$jax_version"; then
    install_status+="; installed jax[cuda12]==$jax_version"
  else
    install_status+="; install of jax[cuda12]==$jax_version failed, running with what is installed"
  fi
  echo "[gpu_check] $install_status"
fi

if command -v nvidia-smi > /dev/null; then
  timeout 20 nvidia-smi -L
fi

flags=()
if [[ "$dry_run" == 1 ]]; then
  flags+=(--dry_run)
fi
exec "$python" benchmarks/gpu_check.py --out="$out" --dataset="$dataset" \
    --budget_sec=$((budget - (SECONDS - start))) --install="$install_status" "${flags[@]}"
