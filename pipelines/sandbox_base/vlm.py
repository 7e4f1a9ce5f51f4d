"""The sandbox VLM: a tiny Qwen2.5-VL (factory architecture and processor) pre-trained to describe sandbox
scenes from one or two images, with the general VLM SFT core (`edit_rlhf.vlm.sft`)."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from edit_rlhf.models.tiny import TinyVLMSpec, build_tiny_qwen_vl, sandbox_words
from edit_rlhf.sandbox.scene import Scene

from .describe import eval_sets, sample_examples, score_replies


def vlm_spec(c) -> TinyVLMSpec:
    return TinyVLMSpec(hidden=c.hidden, layers=c.layers, heads=c.heads, kv_heads=c.kv_heads,
                       intermediate=c.intermediate, vision_hidden=c.vision_hidden, vision_depth=c.vision_depth,
                       vision_heads=c.vision_heads)


def load_vlm(path: str):
    """(model, processor) through the standard Auto classes, as every downstream user loads them."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoModelForImageTextToText.from_pretrained(path), AutoProcessor.from_pretrained(path)


def load_init(path: str, command: str):
    """`load_vlm(path)` for a stage's `init`; a path that is not a model folder stops `command` with one line."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise SystemExit(f"{command}: init={path!r} is not a model folder (no config.json)")
    return load_vlm(path)


def save_stage(out: str, name: str, model, processor, cfg, config_path: Optional[str], overrides: List[str],
               argv: Optional[List[str]], curve: List[Dict], t0: float, **extra) -> Dict[str, object]:
    """Save a stage's model folder (`vlm.sft.save_vlm`) and its record `OUT/<name>.json`: command, config (secrets
    redacted), init, steps, held-out curve, `extra` fields and wall seconds since `t0`. Returns the record."""
    import json
    import sys

    from edit_rlhf.redaction import redacted_config
    from edit_rlhf.vlm.sft import save_vlm

    save_vlm(model, processor, out)
    record = {"command": " ".join(argv or sys.argv), "config_file": config_path, "overrides": list(overrides),
              "config": redacted_config(cfg), "init": cfg.init, "steps": cfg.steps, "curve": curve, **extra,
              "seconds": round(time.time() - t0, 1)}
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(record, f, indent=1)
    return record


def evaluate_describer(model, processor, pairs: Sequence[Tuple[Scene, Scene]], n_one: Optional[int] = None
                       ) -> Dict[str, float]:
    """Greedy descriptions of held-out scenes, scored per attribute against their majority baselines."""
    from edit_rlhf.vlm.generate import generate

    exs, gold = eval_sets(pairs, n_one)
    replies = generate(model, processor, exs, max_new_tokens=48)
    return score_replies(replies, gold)


def train_describer(out: str, c, size: int, seed: int, eval_pairs: Sequence[Tuple[Scene, Scene]],
                    progress: Optional[Callable[[int, Dict[str, float]], None]] = None) -> Dict[str, object]:
    """Build the tiny Qwen2.5-VL (`c`: VLMPretrainConfig), train it on freshly sampled description
    examples (per-step RNG from (seed, step): repeatable), save it with the factory's processor at `out`,
    and evaluate it on `eval_pairs`. Returns params, history, wall time and the accuracy table."""
    from edit_rlhf.vlm.sft import prepare_model, save_vlm, train_vlm

    t0 = time.time()
    tmp = tempfile.mkdtemp(prefix="tiny_vlm_")
    try:
        counts = build_tiny_qwen_vl(tmp, sandbox_words(), seed, vlm_spec(c))
        model, processor = load_vlm(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    s = c.sft
    torch.manual_seed(s.seed)
    model, trainable = prepare_model(model, s.mode, s.freeze_vision, s.lora_rank, s.lora_alpha, seed=s.seed)

    def batch(step: int, n: int):
        return sample_examples(np.random.default_rng([seed, step, 11]), n, size, c.two_image_frac)

    hist = train_vlm(model, processor, batch, s, progress=progress)
    train_s = time.time() - t0
    if os.path.exists(out):
        shutil.rmtree(out)
    save_vlm(model, processor, out)
    model, processor = load_vlm(out)  # measure what was saved
    acc = evaluate_describer(model, processor, eval_pairs)
    return {"params": counts, "trainable": trainable, "steps": s.steps, "train_seconds": round(train_s, 1),
            "history": hist, "eval": acc}
