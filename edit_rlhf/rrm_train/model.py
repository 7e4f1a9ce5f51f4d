"""The trained Edit-RRM inside a learner: loading by path, what trains, HF-format export (the merged weights under
HF names come from `edit_rlhf.models.hf_weights`, which the NCCL transport shares).

The model is a transformers `Qwen2_5_VLForConditionalGeneration` (full fine-tune) or a peft `PeftModel`
around it (LoRA on the language model). Exports and weight syncs always carry plain HF names and *merged*
weights, so vLLM and `from_pretrained` load them like any Qwen2.5-VL checkpoint.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Iterator, Tuple

import torch

from edit_rlhf.models.hf_weights import hf_state, is_peft
from edit_rlhf.runtime import resolve_device, resolve_dtype


def load_rrm(path: str, dtype: str = "float32", device: str = "auto"):
    """(model, processor) from a Qwen2.5-VL folder (HF format), on `device`."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path}: not a model folder (no config.json)")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=resolve_dtype(dtype))
    return model.to(resolve_device(device)), AutoProcessor.from_pretrained(path)


def prepare(model, mcfg, seed: int = 0):
    """Apply `RRMModelConfig` (full/LoRA, frozen vision tower). Returns (model, trainable parameter count)."""
    from edit_rlhf.vlm.sft import prepare_model

    return prepare_model(model, mcfg.mode, mcfg.freeze_vision, mcfg.lora_rank, mcfg.lora_alpha, seed=seed)


def save_hf(model, processor, path: str, extra: Dict = None) -> str:
    """An HF folder (config, safetensors, processor) that vLLM and `from_pretrained` load; LoRA merged."""
    os.makedirs(path, exist_ok=True)
    if is_peft(model):
        model.get_base_model().save_pretrained(path, state_dict=hf_state(model))
    else:
        model.save_pretrained(path)
    processor.save_pretrained(path)
    if extra:
        with open(os.path.join(path, "rrm_train.json"), "w") as f:
            json.dump(extra, f, indent=2, default=str)
    return path


def named_iter(sd: Dict[str, torch.Tensor]) -> Iterator[Tuple[str, torch.Tensor]]:
    return iter(sd.items())
