#!/usr/bin/env bash
# GPU smoke test of the production path at real sizes (random weights): one GRPO step of the full-size
# FLUX.1-Kontext-dev transformer (2 prompts x G=4 at 512 px, rollout and learner on one GPU, checkpointing on),
# a random Qwen2.5-VL-7B on vLLM scoring 8 edits, one RRM weight sync over NCCL (needs a 2nd GPU); prints one
# JSON line with seconds and peak memory per phase beside `edit-rlhf plan`'s prediction. Under 8 min on one GPU.
# Run it where the GPU dependency set is installed (the cluster image: Dockerfile / requirements/gpu-lock.txt):
#   docker run --gpus all <image> bash scripts/gpu_smoke.sh --out benchmarks/results/gpu_smoke.jsonl
#   bash scripts/gpu_smoke.sh --cpu-dry-run     # the same script on the CPU with tiny models (no GPU needed)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
export HF_HUB_OFFLINE=1 RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled} TOKENIZERS_PARALLELISM=false
exec timeout "${SMOKE_TIMEOUT_S:-900}" "$PYTHON" scripts/gpu_smoke.py "$@"
