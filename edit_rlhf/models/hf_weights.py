"""Weights of a transformers model (or a peft model around one) under plain HF names, LoRA merged: what the
RRM learner exports and syncs to vLLM engines (`rrm_train.model`, `transport`)."""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Tuple

import torch


def is_peft(model) -> bool:
    return hasattr(model, "get_base_model") and hasattr(model, "merge_adapter")


def tied_lm_head(model) -> bool:
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
                names.append(hf_name(n.split(".lora_A")[0] + ".weight"))
            elif p.requires_grad and "lora_" not in n:
                names.append(hf_name(n))
        return sorted(set(names))
    return [n for n, p in model.named_parameters() if p.requires_grad]


def hf_name(name: str) -> str:
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
            name = hf_name(k) if peft else k
            if names is not None and name not in names:
                continue
            out[name] = v.detach().to("cpu").clone()
    finally:
        if peft:
            model.unmerge_adapter()
    if tied_lm_head(model):
        out.pop("lm_head.weight", None)
    return out


def sync_weights(model, trainable_only: bool = True) -> Dict[str, torch.Tensor]:
    """What the engines need after an update: the trainable weights (merged), or everything."""
    names = set(trainable_names(model)) if trainable_only else None
    return hf_state(model, names)


def hf_named_tensors(model, names: Optional[set] = None) -> Iterator[Tuple[str, torch.Tensor]]:
    """(HF name, tensor on the model's device) of the merged weights - what `hf_state` returns,
    without the host copies. A LoRA model is merged while iterating (each merged weight handed out as a copy on
    the device) and unmerged after."""
    peft = is_peft(model)
    if peft:
        model.merge_adapter()
    try:
        tied = tied_lm_head(model)
        for k, v in model.state_dict().items():
            if peft and "lora_" in k:
                continue
            name = hf_name(k) if peft else k
            if (names is not None and name not in names) or (tied and name == "lm_head.weight"):
                continue
            # merged LoRA weights are read before the adapters are unmerged at the end: the consumer may hold a
            # tensor past the next step (vLLM packs several into one buffer), so hand it a copy
            yield name, v.detach().clone() if peft else v.detach()
    finally:
        if peft:
            model.unmerge_adapter()
