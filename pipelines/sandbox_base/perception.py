"""Perception first: teach the sandbox VLM to see what the RRM must judge, before it learns to judge.

`edit-rlhf sandbox perception OUT` fine-tunes a sandbox VLM (default `models/sandbox/vlm`) to describe a source
image and a *graded candidate edit* of it - the exact observation text the RRM traces start with
(`sandbox.traces.oracle_trace`: colours, a half-recoloured "orange and red circle", positions and sizes for
move/resize/add, "; noisy" / "; blurred" / "; colour cast", "change: square a little smaller"). The RRM SFT
(`rrm-sft`, model.path=OUT) then only has to learn the verdict on top of eyes that already see these things.

The images can be given more visual tokens: `image_min_pixels` is the processor's minimum pixel count, so
16384 upsamples a 64x64 image to 128x128 = 64 tokens (the factory's 256 keeps 16). The architecture is
unchanged (the vision tower's 2D rope and window attention take any grid); the processor saved with OUT
carries the setting to every downstream user (rrm-sft, vLLM, the HF engine).

Examples are drawn fresh every step from the sandbox generator's train split (prompt indices from 200000 on,
disjoint from every built dataset's prompts) with a seeded RNG per step; held-out examples come from the eval
split. Training runs in chunks of `eval_every` steps, each one `vlm.sft.train_vlm` call (its own AdamW, a short
warmup, constant lr), with a held-out evaluation between chunks: the source and edited descriptions' exact
match, per candidate grade. The folder gets `perception.json` (config, curve, command).
"""
from __future__ import annotations

import re
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .vlm import load_init, save_stage

OFFSET_TRAIN = 200000   # on-the-fly prompt indices: far above any built dataset's n_train
OFFSET_EVAL = 5000
_SE = re.compile(r"source: (.*?)\. edited: (.*?)\.?$", re.S)


def perception_example(sandbox_cfg, split: str, index: int, rng: np.random.Generator):
    """(chat example, grade): the prompt's instruction and its (source, graded candidate) images -> the observation
    part of the candidate's oracle trace."""
    from edit_rlhf.sandbox.build import make_prompt
    from edit_rlhf.sandbox.candidates import feasible_grades, make_candidate
    from edit_rlhf.sandbox.oracle import verify
    from edit_rlhf.sandbox.scene import render
    from edit_rlhf.sandbox.traces import oracle_trace
    from edit_rlhf.vlm.chat import user_assistant

    p = make_prompt(sandbox_cfg, split, index)
    scene, edit, prs = p["scene"], p["edit"], p["principles"]
    grades = feasible_grades(scene, edit)
    g = grades[int(rng.integers(len(grades)))]
    img = make_candidate(rng, scene, edit, g)
    think = oracle_trace(scene, None, prs, verify(scene, edit, prs, img)).split("\n", 1)[0]
    return user_assistant([render(scene), img], f"{p['instruction']}. Describe the source and edited images.",
                          think), g


def train_batch(sandbox_cfg, seed: int, step: int, n: int) -> List[Any]:
    rng = np.random.default_rng([seed, step])
    return [perception_example(sandbox_cfg, "train", OFFSET_TRAIN + step * n + i, rng)[0] for i in range(n)]


def held_out(sandbox_cfg, n: int, seed: int = 99) -> List[Tuple[Any, str]]:
    rng = np.random.default_rng(seed)
    return [perception_example(sandbox_cfg, "eval", OFFSET_EVAL + i, rng) for i in range(n)]


def split_observation(text: str) -> Tuple[Optional[str], Optional[str]]:
    """(source description, edited description) of a "source: ... edited: ..." text; (None, None) otherwise."""
    m = _SE.match(text.strip())
    return (m.group(1).strip(), m.group(2).strip().rstrip(".")) if m else (None, None)


def observation_scores(replies: Sequence[str], golds: Sequence[str], grades: Sequence[str]) -> Dict[str, Any]:
    """Exact match of the source part, the edited part and the whole observation; the edited part per grade."""
    src = edt = full = 0
    per: Dict[str, List[bool]] = {}
    for r, g, grade in zip(replies, golds, grades):
        gs, ge = split_observation(g)
        ps, pe = split_observation(r)
        src += ps is not None and ps == gs
        ok = pe is not None and pe == ge
        edt += ok
        full += r.strip() == g.strip()
        per.setdefault(grade, []).append(ok)
    k = max(1, len(golds))
    return {"source_exact": src / k, "edited_exact": edt / k, "exact": full / k,
            "edited_exact_by_grade": {g: float(np.mean(v)) for g, v in sorted(per.items())}, "n": len(golds)}


def set_image_tokens(processor, min_pixels: int) -> None:
    ip = processor.image_processor
    ip.size = {"shortest_edge": int(min_pixels), "longest_edge": max(int(min_pixels), 256 * 256)}
    if hasattr(ip, "min_pixels"):
        ip.min_pixels = int(min_pixels)


def run_perception(out: str, config_path: Optional[str], overrides: List[str], quiet: bool = False,
                   argv: Optional[List[str]] = None) -> Dict[str, Any]:
    import torch

    from edit_rlhf.config import load_config
    from edit_rlhf.config.sft import PerceptionConfig
    from edit_rlhf.runtime import setup_process
    from edit_rlhf.sandbox.config import SandboxConfig
    from edit_rlhf.vlm.generate import generate
    from edit_rlhf.vlm.sft import prepare_model, train_vlm

    cfg = load_config(PerceptionConfig, config_path, overrides)
    setup_process(cfg.torch_threads)
    t0 = time.time()
    model, proc = load_init(cfg.init, "sandbox perception")
    sb = SandboxConfig(seed=cfg.sandbox_seed)
    evals = held_out(sb, cfg.eval_n)
    set_image_tokens(proc, cfg.image_min_pixels)
    torch.manual_seed(cfg.seed)
    model, _ = prepare_model(model, "full", freeze_vision=cfg.freeze_vision)
    say = (lambda *a: None) if quiet else (lambda msg: print(f"[perception] {msg}", flush=True))

    def evaluate(step: int) -> Dict[str, Any]:
        replies = generate(model, proc, [e.prompt() for e, _ in evals], max_new_tokens=cfg.eval_max_tokens)
        r = observation_scores(replies, [e.messages[-1]["content"] for e, _ in evals], [g for _, g in evals])
        r.update(step=step, seconds=round(time.time() - t0, 1), sample=[replies[0], evals[0][0].messages[-1]["content"]])
        say(f"step {step}: edited exact {r['edited_exact']:.3f}, source exact {r['source_exact']:.3f}")
        return r

    curve, losses = [evaluate(0)], []
    done = 0
    while done < cfg.steps:
        k = min(cfg.eval_every or cfg.steps, cfg.steps - done)
        s = cfg.chunk_sft(k, first=done == 0)
        base = done
        hist = train_vlm(model, proc, lambda st, n: train_batch(sb, cfg.seed, base + st, n), s, log_every=100,
                         progress=lambda st, h: say(f"step {base + st} loss {h['loss']:.4f}"))
        losses += [dict(h, step=base + h["step"]) for h in hist]
        done += k
        curve.append(evaluate(done))
    return save_stage(out, "perception", model, proc, cfg, config_path, overrides, argv, curve, t0,
                      train_loss=[{"step": h["step"], "loss": h["loss"]} for h in losses])
