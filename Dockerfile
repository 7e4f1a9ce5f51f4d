# The cluster image: CUDA, Python 3.11 and exactly the pinned GPU dependency set (requirements/gpu-lock.txt,
# hash-checked, no resolver at build time), then edit_rlhf itself without dependencies.
#   docker build -t <registry>/edit-rlhf:gpu-$(sha256sum requirements/gpu-lock.txt | cut -c1-12) .
# cluster/manifests/*.yaml run this image on every node (head and GPU workers).
ARG BASE_IMAGE=nvidia/cuda:13.0.0-devel-ubuntu22.04
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    PATH=/opt/venv/bin:$PATH

# Python 3.11 (the lock is resolved for CPython 3.11 / linux x86_64); a compiler and libaio for DeepSpeed's JIT ops
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common ca-certificates curl git \
      build-essential ninja-build libaio-dev \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv

COPY requirements/gpu-lock.txt /tmp/gpu-lock.txt
RUN pip install --no-deps --require-hashes -r /tmp/gpu-lock.txt

COPY . /opt/edit_rlhf
WORKDIR /opt/edit_rlhf
RUN pip install --no-deps --no-build-isolation -e . \
 && python -c "import torch, vllm, diffusers, transformers, deepspeed, ray, mlflow, peft; import edit_rlhf.cli"
