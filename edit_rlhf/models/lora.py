"""LoRA on the Kontext transformer via peft, in the layout diffusers itself uses.

Learner and rollout workers both call `add_lora` (diffusers' `PeftAdapterMixin.add_adapter`), so their
parameter names agree and a state dict moves between them unchanged. `save_lora` writes the diffusers LoRA
format (`pytorch_lora_weights.safetensors` + adapter metadata with rank/alpha), which a plain
`FluxKontextPipeline.load_lora_weights(path)` loads.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import torch

ADAPTER = "default"


def lora_config(rank: int, alpha: float, target_modules, init: str = "gaussian"):
    from peft import LoraConfig

    init_w = True if init in ("default", "true", "kaiming") else init
    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules), init_lora_weights=init_w,
                      lora_dropout=0.0)


def add_lora(transformer, rank: int, alpha: float, target_modules, init: str = "gaussian", seed: int = 0) -> int:
    """Inject a LoRA adapter (B = 0, so the model is unchanged) and make only its weights trainable.

    `seed` fixes the A-matrix init so every process builds the same adapter. Returns the trainable count."""
    transformer.requires_grad_(False)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        transformer.add_adapter(lora_config(rank, alpha, target_modules, init), adapter_name=ADAPTER)
    except ValueError as e:  # peft: "Target modules {...} not found in the base model"
        raise ValueError(f"lora.target_modules: {e}") from None
    finally:
        torch.random.set_rng_state(state)
    n = 0
    for name, p in transformer.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)
            n += p.numel()
    return n


def get_lora_state(transformer) -> Dict[str, torch.Tensor]:
    """Adapter weights on the CPU, keys without the adapter name (peft's portable layout)."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(transformer, adapter_name=ADAPTER).items()}


def set_lora_state(transformer, state: Dict[str, torch.Tensor]) -> None:
    """Load adapter weights produced by `get_lora_state`; every adapter key must be present."""
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(transformer, state, adapter_name=ADAPTER)
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    unexpected = list(getattr(result, "unexpected_keys", []))
    if missing or unexpected:
        raise ValueError(f"LoRA state does not match the adapter: missing {missing[:3]}, unexpected {unexpected[:3]}")


def lora_metadata(transformer) -> dict:
    return transformer.peft_config[ADAPTER].to_dict()


def save_lora(path: str, state: Dict[str, torch.Tensor], metadata: Optional[dict] = None) -> str:
    """Write a diffusers-format LoRA directory loadable by `FluxKontextPipeline.load_lora_weights(path)`."""
    from diffusers import FluxKontextPipeline

    os.makedirs(path, exist_ok=True)
    meta = dict(metadata or {})
    for k, v in list(meta.items()):  # sets are not JSON-serialisable
        if isinstance(v, set):
            meta[k] = sorted(v)
    FluxKontextPipeline.save_lora_weights(path, transformer_lora_layers=state,
                                          transformer_lora_adapter_metadata=meta or None)
    return path


def _lora_layers(transformer):
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in transformer.named_modules() if isinstance(m, LoraLayer) and ADAPTER in m.lora_A]


def fuse_lora(transformer) -> Dict[str, torch.Tensor]:
    """Merge the adapter into the base weights (W <- W + scale * B @ A) for inference: the forward is then the
    base layer's alone, without the two extra low-rank matmuls per adapted layer.

    Returns the base weights it overwrote, on the CPU, for `unfuse_lora` to put back exactly (peft's own unmerge
    subtracts the delta again, which drifts by rounding at every sync: a bf16 base would change over a run)."""
    saved = {}
    for name, m in _lora_layers(transformer):
        if m.merged:
            raise RuntimeError(f"fuse_lora: {name} is already merged (unfuse_lora first)")
        w = m.get_base_layer().weight
        saved[name] = w.detach().to("cpu", copy=True)
        m.merge(adapter_names=[ADAPTER])
    return saved


def unfuse_lora(transformer, saved: Dict[str, torch.Tensor]) -> None:
    """Put back the base weights `fuse_lora` returned; the adapter is then applied unmerged again."""
    for name, m in _lora_layers(transformer):
        if name not in saved:
            raise KeyError(f"unfuse_lora: no saved base weight for {name}")
        with torch.no_grad():
            m.get_base_layer().weight.copy_(saved[name])
        m.merged_adapters.clear()
