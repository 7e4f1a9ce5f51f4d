"""The trained Edit-RRM inside a learner: loading by path, what trains, HF-format export, weights for sync.

The model is a transformers `Qwen2_5_VLForConditionalGeneration` (full fine-tune) or a peft `PeftModel`
around it (LoRA on the language model). Exports and weight syncs always carry plain HF names and *merged*
weights, so vLLM and `from_pretrained` load them like any Qwen2.5-VL checkpoint.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Iterator, List, Tuple

import torch

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


def is_peft(model) -> bool:
    return hasattr(model, "get_base_model") and hasattr(model, "merge_adapter")


def _tied(model) -> bool:
    base = model.get_base_model() if is_peft(model) else model
    cfg = base.config
    return bool(getattr(cfg, "tie_word_embeddings", False) or getattr(getattr(cfg, "text_config", None),
                                                                       "tie_word_embeddings", False))


def trainable_names(model) -> List[str]:
    """HF names of the weights that change in training (LoRA: the base weights the adapters modify)."""
    if is_peft(model):
        names = []
        for n, p in model.named_parameters():
            if p.requires_grad and "lora_A" in n:
                names.append(_clean(n.split(".lora_A")[0] + ".weight"))
            elif p.requires_grad and "lora_" not in n:
                names.append(_clean(n))
        return sorted(set(names))
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _clean(name: str) -> str:
    """peft name -> HF name: drop the `base_model.model.` prefix and the `.base_layer` hop."""
    if name.startswith("base_model.model."):
        name = name[len("base_model.model."):]
    return name.replace(".base_layer.", ".")


@torch.no_grad()
def hf_state(model, names=None) -> Dict[str, torch.Tensor]:
    """Merged weights under HF names (all, or `names`), detached on CPU; a tied lm_head is left out.

    For a LoRA model the adapters are merged in place, read and unmerged again (the model is unchanged)."""
    peft = is_peft(model)
    if peft:
        model.merge_adapter()
    try:
        sd = model.state_dict()
        out = {}
        for k, v in sd.items():
            if peft and "lora_" in k:
                continue
            name = _clean(k) if peft else k
            if names is not None and name not in names:
                continue
            out[name] = v.detach().to("cpu").clone()
    finally:
        if peft:
            model.unmerge_adapter()
    if _tied(model):
        out.pop("lm_head.weight", None)
    return out


def sync_weights(model, trainable_only: bool = True) -> Dict[str, torch.Tensor]:
    """What the engines need after an update: the trainable weights (merged), or everything."""
    names = set(trainable_names(model)) if trainable_only else None
    return hf_state(model, names)


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
