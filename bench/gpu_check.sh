#!/usr/bin/env bash
# One-GPU check: ~1B Llama, FSDP2, bf16 on synthetic data: a bare loop, then dapt's loop in five variants
# (eager, compile, compile+document, compile+selective_ac, compile+float8); prints tokens/s, MFU, peak memory
# and the planner's prediction. Needs only this repo, torch and transformers. Finishes within 8 minutes.
#   bench/gpu_check.sh                      # on a CUDA machine
#   bench/gpu_check.sh --tiny --device cpu  # a seconds-long CPU run of the same code path
# Writes $OUT/gpu_check.json when OUT is set.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && ! command -v nvidia-smi >/dev/null 2>&1; then PY=.venv/bin/python; fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout --signal=TERM --kill-after=20 470 "$PY" bench/gpu_check.py "$@"
