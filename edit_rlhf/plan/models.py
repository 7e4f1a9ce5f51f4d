"""The production models at their real size on the meta device: architecture from config files only.

A model path in a config names where the weights are on the cluster (`/models/FLUX.1-Kontext-dev`); the
planning machine usually has none of them. `resolve_arch(path)` finds the architecture: the folder itself when
it exists here (its config.json files; weights are never read), else one of the architecture folders shipped in
`edit_rlhf/plan/arch/` matched by name (`kontext` -> FLUX.1-Kontext-dev, `72b` / `7b` -> Qwen2.5-VL-72B / 7B),
else an error naming the path. Every builder reads those files with the same classes `from_pretrained` uses and
builds the model under `torch.device("meta")`: shapes and dtypes without memory.
"""
from __future__ import annotations

import json
import os
import re
from typing import Dict, Optional

import torch

ARCH_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "arch")
ALIASES = (  # (pattern in the lower-cased path, shipped architecture folder)
    (r"kontext", "flux1-kontext-dev"),
    (r"72b", "qwen2.5-vl-72b-instruct"),
    (r"7b", "qwen2.5-vl-7b-instruct"),
)


class ArchError(ValueError):
    pass


def resolve_arch(path: Optional[str], key: str) -> str:
    """The folder whose config.json files describe the model at `path` (see the module docstring)."""
    if not path:
        raise ArchError(f"{key}: no model path configured")
    if os.path.isfile(os.path.join(path, "config.json")) or os.path.isfile(os.path.join(path, "model_index.json")):
        return path
    low = path.lower()
    for pat, name in ALIASES:
        if re.search(pat, low):
            return os.path.join(ARCH_DIR, name)
    raise ArchError(f"{key}: {path!r} is not a model folder here and matches no shipped architecture "
                    f"({', '.join(sorted(os.listdir(ARCH_DIR)))}); pass --arch {key}=<folder with config.json>")


def quantized(path: Optional[str]) -> Optional[str]:
    """'awq' / 'gptq' when the path names a 4-bit checkpoint (weights are then counted at ~4.25 bits)."""
    low = (path or "").lower()
    return next((q for q in ("awq", "gptq") if q in low), None)


def _read(folder: str, sub: str = "") -> Dict:
    with open(os.path.join(folder, sub, "config.json")) as f:
        return json.load(f)


def flux_transformer(folder: str, dtype=torch.bfloat16):
    from diffusers import FluxTransformer2DModel

    cfg = {k: v for k, v in _read(folder, "transformer").items() if not k.startswith("_")}
    with torch.device("meta"):
        return FluxTransformer2DModel.from_config(cfg).to(dtype)


def flux_vae(folder: str, dtype=torch.bfloat16):
    from diffusers import AutoencoderKL

    cfg = {k: v for k, v in _read(folder, "vae").items() if not k.startswith("_")}
    with torch.device("meta"):
        return AutoencoderKL.from_config(cfg).to(dtype)


def flux_text_encoders(folder: str, dtype=torch.bfloat16):
    """(CLIP-L text model, T5-XXL encoder) of a Kontext folder."""
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    with torch.device("meta"):
        clip = CLIPTextModel(CLIPTextConfig(**_read(folder, "text_encoder"))).to(dtype)
        t5 = T5EncoderModel(T5Config(**_read(folder, "text_encoder_2"))).to(dtype)
    return clip, t5


def qwen_vl(folder: str, dtype=torch.bfloat16):
    """Qwen2_5_VLForConditionalGeneration (what the RRM learner and the HF engine load)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = Qwen2_5_VLConfig(**_read(folder))
    with torch.device("meta"):
        return Qwen2_5_VLForConditionalGeneration(cfg).to(dtype)


def qwen_text_config(folder: str):
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(**_read(folder)).text_config


def nbytes(module, only_trainable: bool = False) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad or not only_trainable)


def nparams(module, only_trainable: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not only_trainable)
