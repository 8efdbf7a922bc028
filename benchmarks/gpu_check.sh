#!/usr/bin/env bash
# GPU check for a short lease (<= 8 minutes on one H100/H200, no network, nothing installed
# beyond the README's `pip install -e '.[test]'`): the CUDA tests, model-only Mpx/s of the
# reference U-Net-R18 on the GPU, and `geoseg run --device cuda` end to end on a 16384² mosaic
# without and with vectors, GPU utilisation sampled by nvidia-smi. One JSON line per step on
# stdout and in ${OUT:-/tmp/geoseg-gpu-check}/gpu_check.jsonl; see benchmarks/gpu_check.py.
#   benchmarks/gpu_check.sh [--size 16384] [--budget 420] [-- extra geoseg run flags]
# A GPU host with its own PyTorch but no network or geoseg install: pack the rest with
# benchmarks/gpu_wheels.sh here, unpack it there and put it on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
for arg in "$@"; do
  case "$arg" in
    --) break ;;
    -h|--help) exec "${PYTHON:-python3}" -m benchmarks.gpu_check --help ;;
  esac
done
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "error: nvidia-smi not found: this needs an NVIDIA GPU host (a CPU dry run:" \
       "python -m benchmarks.gpu_check --device cpu)" >&2
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
exec "${PYTHON:-python3}" -m benchmarks.gpu_check "$@"
