"""Vision warm-up: teach the sandbox VLM's vision tower to see shapes and image defects, with a throwaway head.

`benchmarks/vision_probe.py` showed that the sandbox VLMs' visual tokens barely encode what an RRM must check:
linear probes read square / triangle presence near their majority rate and image defects (blur, noise, colour
cast) at chance, in the base VLM, in the shipped RRM after 4700 SFT steps, in a 4x larger tower and with 64
tokens per image. Text targets (scene descriptions, the RRM's observations and checks) train the tower through a
few answer tokens per example, and it learns slowly. Trained directly, the same tower learns quickly: in a few
thousand steps its shape presence and defect readings come close to the labels.

`edit-rlhf sandbox vision OUT` does that, as a vision encoder is pre-trained before a VLM is assembled: a linear
head on every visual token (the merger's output, what the language model receives), max-pooled over the image's
tokens, predicts per shape kind "absent" or its colour, and the image's defect (none / blur / noise / cast). Scenes
are drawn fresh every step (`sandbox.scene.sample_scene`, a `degraded_frac` of them degraded by
`sandbox.candidates.degrade`). Only the vision tower and the head train; the head is discarded, and OUT is the
init model with its new vision tower - same architecture, same processor, the language model bit for bit.
The RRM SFT (`rrm-sft`, model.path=OUT) then teaches the language model to read the new visual tokens.
OUT/vision.json records the held-out attribute accuracies (beside their majority rates) along the way.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

DEFECTS = ("none", "blur", "noise", "cast")


def attribute_targets(scenes: Sequence[Any], defects: Sequence[str]) -> torch.Tensor:
    """(N, kinds + 1) long: per shape kind (SHAPE_KINDS order) 0 = absent, else 1 + its SHAPE_COLORS index;
    the last column the DEFECTS index."""
    from edit_rlhf.sandbox.scene import SHAPE_COLORS, SHAPE_KINDS

    colors = list(SHAPE_COLORS)
    y = torch.zeros(len(scenes), len(SHAPE_KINDS) + 1, dtype=torch.long)
    for i, (s, d) in enumerate(zip(scenes, defects)):
        for sh in s.shapes:
            y[i, SHAPE_KINDS.index(sh.kind)] = 1 + colors.index(sh.color)
        y[i, -1] = DEFECTS.index(d)
    return y


def sample_images(rng: np.random.Generator, n: int, degraded_frac: float, size: int = 64
                  ) -> Tuple[List[np.ndarray], List[Any], List[str]]:
    """`n` fresh scenes, rendered; each degraded (a random defect) with probability `degraded_frac`."""
    from edit_rlhf.sandbox.candidates import degrade
    from edit_rlhf.sandbox.scene import render, sample_scene

    images, scenes, defects = [], [], []
    for _ in range(n):
        s = sample_scene(rng, size)
        d = DEFECTS[1 + int(rng.integers(3))] if rng.random() < degraded_frac else "none"
        img = render(s)
        images.append(img if d == "none" else degrade(rng, img, d))
        scenes.append(s)
        defects.append(d)
    return images, scenes, defects


class AttributeHead(torch.nn.Module):
    """Linear per visual token, max-pooled over each image's tokens: (N*T, D) -> per kind (N, kinds, colours+1)
    and defect (N, len(DEFECTS)) logits."""

    def __init__(self, hidden: int, kinds: int, colors: int):
        super().__init__()
        self.kinds, self.classes = kinds, colors + 1
        self.linear = torch.nn.Linear(hidden, kinds * self.classes + len(DEFECTS))

    def forward(self, tokens: torch.Tensor, n_images: int) -> Tuple[torch.Tensor, torch.Tensor]:
        pooled = self.linear(tokens.reshape(n_images, -1, tokens.shape[-1])).max(1).values
        k = self.kinds * self.classes
        return pooled[:, :k].reshape(n_images, self.kinds, self.classes), pooled[:, k:]


def visual_tokens(visual, processor, images: Sequence[np.ndarray]) -> torch.Tensor:
    px = processor.image_processor(images=list(images), return_tensors="pt")
    out = visual(px["pixel_values"], grid_thw=px["image_grid_thw"])
    return out if torch.is_tensor(out) else out.pooler_output


def head_loss(head: AttributeHead, tokens: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    shapes, defect = head(tokens, len(y))
    ce = torch.nn.functional.cross_entropy
    return ce(shapes.reshape(-1, head.classes), y[:, :-1].reshape(-1)) + ce(defect, y[:, -1])


def attribute_accuracy(head: AttributeHead, tokens: torch.Tensor, y: torch.Tensor) -> Dict[str, float]:
    """Held-out accuracy per attribute beside its majority rate: `<kind>_present`, `<kind>_color` (over images
    with that kind), `defect`, and `shapes_exact` (every kind's presence and colour right)."""
    from edit_rlhf.sandbox.scene import SHAPE_KINDS

    with torch.no_grad():
        shapes, defect = head(tokens, len(y))
    ps, pd = shapes.argmax(-1), defect.argmax(-1)
    out: Dict[str, float] = {}

    def put(name: str, pred: torch.Tensor, gold: torch.Tensor) -> None:
        if len(gold):
            out[f"{name}/accuracy"] = round(float((pred == gold).float().mean()), 4)
            out[f"{name}/majority"] = round(float(torch.bincount(gold).max()) / len(gold), 4)

    for i, k in enumerate(SHAPE_KINDS):
        put(f"{k}_present", (ps[:, i] > 0).long(), (y[:, i] > 0).long())
        has = y[:, i] > 0
        put(f"{k}_color", ps[has, i], y[has, i])
    put("defect", pd, y[:, -1])
    out["shapes_exact"] = round(float((ps == y[:, :-1]).all(1).float().mean()), 4)
    return out


def lr_at(step: int, cfg) -> float:
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    cos = 0.5 * (1 + np.cos(np.pi * step / cfg.steps))
    return cfg.lr * warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos)


def train_vision(model, processor, cfg, say=lambda msg: None) -> List[Dict[str, Any]]:
    """Train `model`'s vision tower (and a fresh AttributeHead) for `cfg.steps` steps; returns the held-out curve.
    Every parameter outside the tower keeps requires_grad as it was and receives no update."""
    from edit_rlhf.sandbox.scene import SHAPE_COLORS, SHAPE_KINDS
    from edit_rlhf.vlm.attention import batched_vision_attention
    from edit_rlhf.vlm.sft import vision_tower

    visual = vision_tower(model)
    torch.manual_seed(cfg.seed)
    head = AttributeHead(model.config.text_config.hidden_size, len(SHAPE_KINDS), len(SHAPE_COLORS))
    params = list(visual.parameters()) + list(head.parameters())
    for p in visual.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    ev_images, ev_scenes, ev_defects = sample_images(np.random.default_rng([cfg.eval_seed, 1]), cfg.eval_n,
                                                     cfg.degraded_frac)
    y_ev = attribute_targets(ev_scenes, ev_defects)
    t0 = time.time()
    curve: List[Dict[str, Any]] = []

    def evaluate(step: int, loss: Optional[float]) -> None:
        visual.eval()
        with torch.no_grad():
            tok = torch.cat([visual_tokens(visual, processor, ev_images[i:i + 128]) for i in range(0, cfg.eval_n, 128)])
        visual.train()
        r = {"step": step, "seconds": round(time.time() - t0, 1), "train_loss": loss,
             **attribute_accuracy(head, tok, y_ev)}
        curve.append(r)
        say(f"step {step}: shapes exact {r['shapes_exact']:.3f}, defect {r['defect/accuracy']:.3f} "
            f"(majority {r['defect/majority']:.3f})")

    visual.train()
    running: List[float] = []
    with batched_vision_attention(True):
        evaluate(0, None)
        for step in range(cfg.steps):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            images, scenes, defects = sample_images(np.random.default_rng([cfg.seed, step]), cfg.batch_size,
                                                    cfg.degraded_frac)
            loss = head_loss(head, visual_tokens(visual, processor, images), attribute_targets(scenes, defects))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            running.append(float(loss.detach()))
            if (cfg.eval_every and (step + 1) % cfg.eval_every == 0) or step + 1 == cfg.steps:
                evaluate(step + 1, round(float(np.mean(running)), 4))
                running = []
    visual.eval()
    return curve


def run_vision_warmup(out: str, config_path: Optional[str], overrides: List[str], quiet: bool = False,
                      argv: Optional[List[str]] = None) -> Dict[str, Any]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from edit_rlhf.config import load_config
    from edit_rlhf.config.sft import VisionWarmupConfig
    from edit_rlhf.redaction import redacted_config
    from edit_rlhf.runtime import setup_process
    from edit_rlhf.vlm.sft import save_vlm

    cfg = load_config(VisionWarmupConfig, config_path, overrides)
    setup_process(cfg.torch_threads)
    if not os.path.isfile(os.path.join(cfg.init, "config.json")):
        raise SystemExit(f"sandbox vision: init={cfg.init!r} is not a model folder (no config.json)")
    t0 = time.time()
    model = AutoModelForImageTextToText.from_pretrained(cfg.init, torch_dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(cfg.init)
    say = (lambda msg: None) if quiet else (lambda msg: print(f"[vision] {msg}", flush=True))
    curve = train_vision(model, processor, cfg, say)
    save_vlm(model, processor, out)
    record = {"command": " ".join(argv or sys.argv), "config_file": config_path, "overrides": list(overrides),
              "config": redacted_config(cfg), "init": cfg.init, "steps": cfg.steps, "curve": curve,
              "seconds": round(time.time() - t0, 1)}
    with open(os.path.join(out, "vision.json"), "w") as f:
        json.dump(record, f, indent=1)
    return record
