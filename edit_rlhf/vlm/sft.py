"""Supervised fine-tuning of a Qwen2.5-VL on chat examples with images: the reusable core.

Pieces (each usable alone, e.g. inside a DeepSpeed learner core):
- `prepare_model`: freeze the vision tower or not, full fine-tune or a peft LoRA on the language model;
- `sft_loss`: next-token cross-entropy on the assistant tokens only (labels from `vlm.chat.collate`),
  averaged over those tokens, with `mm_token_type_ids` passed as transformers 5.x requires;
- `train_vlm`: a single-process AdamW loop (linear warmup, cosine decay) over batches drawn per step, with
  the batched vision-attention patch (`vlm.attention`) on;
- `save_vlm`: `save_pretrained` of the model (LoRA: the adapter, or merged weights) and the processor, so
  the folder loads with `AutoModelForImageTextToText` / `AutoProcessor` and serves in vLLM.
"""
from __future__ import annotations

import math
import os
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from edit_rlhf.config.sft import VLMSFTConfig
from edit_rlhf.vlm.attention import batched_vision_attention
from edit_rlhf.vlm.chat import IGNORE, ChatExample, collate

# LoRA on the language model's attention and MLP projections only (the vision MLP uses the same names).
LM_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based): linear warmup, cosine to min_ratio."""
    if step < warmup:
        return (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))


def prepare_model(model, mode: str = "full", freeze_vision: bool = False, lora_rank: int = 16,
                  lora_alpha: float = 32.0, lora_targets=LM_LORA_TARGETS, seed: int = 0):
    """Set what trains. Returns (model, trainable parameter count); with LoRA the model is a PeftModel."""
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            model = get_peft_model(model, LoraConfig(r=lora_rank, lora_alpha=lora_alpha, target_modules=lora_targets,
                                                     lora_dropout=0.0))
        finally:
            torch.random.set_rng_state(state)
    elif mode != "full":
        raise ValueError(f"mode must be 'full' or 'lora', got {mode!r}")
    else:
        model.requires_grad_(True)
    if freeze_vision:
        visual = vision_tower(model)
        visual.requires_grad_(False)
    return model, sum(p.numel() for p in model.parameters() if p.requires_grad)


def vision_tower(model):
    """The vision encoder of a (possibly peft-wrapped) Qwen2.5-VL."""
    m = model.get_base_model() if hasattr(model, "get_base_model") else model
    return m.model.visual


def sft_loss(model, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """{'loss': mean CE over assistant tokens, 'tokens': their count, 'accuracy': greedy token accuracy}."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False).logits[:, :-1].float()
    target = labels[:, 1:]
    mask = target != IGNORE
    n = mask.sum().clamp_min(1)
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                           ignore_index=IGNORE, reduction="sum") / n
    with torch.no_grad():
        acc = ((logits.argmax(-1) == target) & mask).sum().float() / n
    return {"loss": ce, "tokens": mask.sum(), "accuracy": acc}


def train_vlm(model, processor, sample_batch: Callable[[int, int], Sequence[ChatExample]], s: VLMSFTConfig,
              progress: Optional[Callable[[int, Dict[str, float]], None]] = None, log_every: int = 50,
              device=None) -> List[Dict[str, float]]:
    """Train `model` (prepared by `prepare_model`) for `s.steps` steps on `sample_batch(step, batch_size)`.

    Returns the history of mean loss / token accuracy per `log_every` steps."""
    s.check()
    device = device or next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, betas=tuple(s.betas), weight_decay=s.weight_decay)
    model.train()
    hist: List[Dict[str, float]] = []
    acc_l, acc_a, t0 = 0.0, 0.0, time.time()
    with batched_vision_attention(s.vision_patch):
        for step in range(s.steps):
            for g in opt.param_groups:
                g["lr"] = s.lr * lr_factor(step, s.steps, s.warmup_steps, s.min_lr_ratio)
            batch = {k: v.to(device) for k, v in collate(processor, sample_batch(step, s.batch_size)).items()}
            out = sft_loss(model, batch)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
            opt.step()
            acc_l += float(out["loss"].detach())
            acc_a += float(out["accuracy"])
            if (step + 1) % log_every == 0 or step + 1 == s.steps:
                k = (step % log_every) + 1
                h = {"step": step + 1, "loss": acc_l / k, "token_accuracy": acc_a / k, "seconds": time.time() - t0,
                     "lr": opt.param_groups[0]["lr"]}
                hist.append(h)
                acc_l = acc_a = 0.0
                if progress:
                    progress(step + 1, h)
    model.eval()
    return hist


def save_vlm(model, processor, path: str, merge_lora: bool = True) -> str:
    """Write a folder that `from_pretrained` (transformers) and vLLM load: weights + config + processor.

    A LoRA model is merged into its base weights (`merge_lora`) or saved as a peft adapter."""
    os.makedirs(path, exist_ok=True)
    if hasattr(model, "merge_and_unload") and merge_lora:
        model = model.merge_and_unload()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
