"""Memory switches shared by the learners, the rollout actors and the memory planner (`edit_rlhf.plan`).

- Gradient checkpointing (`learner.gradient_checkpointing`): each transformer block keeps only its inputs in
  the forward and recomputes its activations in the backward. One function turns it on for a diffusers model
  (the Kontext transformer) or a transformers model (the Qwen2.5-VL RRM, peft-wrapped or not), so the learners
  and the planner (which counts what a checkpointed forward keeps) go through the same switch.
- Where the editor's parts live on a rollout actor (`editor.text_encoders`, `editor.vae_slicing|tiling`):
  `editor_placement` says which components sit on the actor's device; `KontextEditor` places them by it and the
  planner counts the same set.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def checkpointed_modules(model) -> list:
    """The modules whose forward is checkpointed once `enable_checkpointing` ran (those with the flag on)."""
    return [m for m in _base(model).modules() if getattr(m, "gradient_checkpointing", False) is True]


def enable_checkpointing(model, checkpoint_fn: Optional[Callable] = None) -> int:
    """Turn on activation checkpointing of every transformer block of `model` (non-reentrant
    `torch.utils.checkpoint`, or `checkpoint_fn(function, *args)` when given). Returns how many modules
    checkpoint their blocks. Raises ValueError for a model that cannot."""
    base = _base(model)
    if hasattr(base, "enable_gradient_checkpointing"):  # diffusers ModelMixin (FluxTransformer2DModel)
        if checkpoint_fn is None:
            base.enable_gradient_checkpointing()
        else:
            base.enable_gradient_checkpointing(lambda module, *args: checkpoint_fn(module.__call__, *args))
    elif hasattr(base, "gradient_checkpointing_enable"):  # transformers PreTrainedModel (Qwen2.5-VL)
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if checkpoint_fn is not None:
            for m in base.modules():
                if hasattr(m, "_gradient_checkpointing_func"):
                    m._gradient_checkpointing_func = checkpoint_fn
    else:
        raise ValueError(f"{type(base).__name__} does not support gradient checkpointing")
    n = len(checkpointed_modules(base))
    if not n:
        raise ValueError(f"{type(base).__name__}: gradient checkpointing did not reach any block")
    return n


EDITOR_COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2")


def editor_placement(text_encoders: str = "device") -> Dict[str, str]:
    """Component -> 'device' (the actor's GPU, or CPU on a CPU actor) or 'cpu'. `text_encoders: cpu` keeps CLIP
    and T5 (9.5 GB of T5-XXL in bf16) off the GPU: prompts are encoded on the CPU (once each, with
    `editor.prompt_cache`) and only their embeddings go to the device."""
    if text_encoders not in ("device", "cpu"):
        raise ValueError(f"text_encoders must be 'device' or 'cpu', got {text_encoders!r}")
    te = "cpu" if text_encoders == "cpu" else "device"
    return {"transformer": "device", "vae": "device", "text_encoder": te, "text_encoder_2": te}
