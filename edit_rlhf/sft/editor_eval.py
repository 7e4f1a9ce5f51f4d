"""Evaluation of an editor on held-out edit triples: deterministic (ODE) edits, scored against the target
(pixel MSE) and, on sandbox data, by the oracle verifier; with the probes that show what an edit depends on.

- matched: each prompt's own source and instruction;
- shuffled_source: another prompt's source image with this prompt's instruction (scored for this prompt):
  an editor that ignores the image is not hurt by it;
- shuffled_instruction: this source with another prompt's instruction: an editor that ignores the text
  (e.g. copies the source or applies a "typical" edit) is not hurt by it;
- copy_source: the source image itself as the edit (the oracle scores "no edit" as 0).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from edit_rlhf.algorithms.sampler import sample_ode
from edit_rlhf.models.kontext import KontextEditor

VARIANTS = ("matched", "shuffled_source", "shuffled_instruction")


@torch.no_grad()
def ode_edits(editor: KontextEditor, sources: Sequence[np.ndarray], instructions: Sequence[str],
              seeds: Sequence[int], num_steps: int, transformer=None, batch_size: int = 32) -> np.ndarray:
    """Deterministic edits (noise 0, `num_steps` Euler steps, the pipeline's schedule): uint8 (B, H, W, 3).
    `transformer` overrides the pipeline's (e.g. a training engine's module)."""
    out = []
    ts, sig = editor.schedule(num_steps)
    vel = editor.velocity_fn(transformer)
    for lo in range(0, len(sources), batch_size):
        sl = slice(lo, lo + batch_size)
        cond = editor.condition(list(sources[sl]), list(instructions[sl]))
        x = editor.initial_noise([torch.Generator().manual_seed(int(s)) for s in seeds[sl]])
        out.append(editor.decode(sample_ode(vel, x, cond, ts, sig)))
    return np.concatenate(out)


def score_edits(images: np.ndarray, targets: Sequence[np.ndarray], oracles: Optional[Sequence[str]] = None
                ) -> Dict[str, np.ndarray]:
    """Per-edit scores: 'mse' to the target in [0, 1] pixels; 'oracle' (0-10) and 'oracle_pass' (every
    principle's check passed) when oracle records are given."""
    from edit_rlhf.rewards.similarity import pixel_mse

    out = {"mse": np.array([pixel_mse(im, t) for im, t in zip(images, targets)])}
    if oracles is not None:
        from edit_rlhf.sandbox.oracle import verify_json

        res = [verify_json(o, im) for o, im in zip(oracles, images)]
        out["oracle"] = np.array([r.score for r in res])
        out["oracle_pass"] = np.array([float(all(r.checks)) for r in res])
    return out


def derangement(n: int) -> List[int]:
    """Index i -> i+1 (mod n): every item gets another's source/instruction."""
    return [(i + 1) % n for i in range(n)]


def _summ(scores: Dict[str, np.ndarray], prefix: str, types: Optional[Sequence[str]]) -> Dict[str, float]:
    m = {f"{prefix}{k}": float(v.mean()) for k, v in scores.items()}
    if "oracle" in scores and len(scores["oracle"]) > 1:
        m[f"{prefix}oracle_se"] = float(scores["oracle"].std(ddof=1) / np.sqrt(len(scores["oracle"])))
    if types is not None and "oracle" in scores:
        by = defaultdict(list)
        for t, s in zip(types, scores["oracle"]):
            by[t].append(s)
        m.update({f"{prefix}oracle/{t}": float(np.mean(v)) for t, v in sorted(by.items())})
    return m


def probe_eval(editor: KontextEditor, sources: Sequence[np.ndarray], instructions: Sequence[str],
               targets: Sequence[np.ndarray], seeds: Sequence[int], num_steps: int,
               oracles: Optional[Sequence[str]] = None, edit_types: Optional[Sequence[str]] = None,
               probes: bool = True, transformer=None) -> Dict[str, float]:
    """Flat metrics: '<variant>/mse', '<variant>/oracle', '<variant>/oracle_pass', '<variant>/oracle/<type>'
    for variant in matched, shuffled_source, shuffled_instruction (probes), copy_source (probes)."""
    n = len(sources)
    perm = derangement(n)
    variants = VARIANTS if probes and n > 1 else VARIANTS[:1]
    m: Dict[str, float] = {}
    for v in variants:
        src = [sources[perm[i]] for i in range(n)] if v == "shuffled_source" else list(sources)
        ins = [instructions[perm[i]] for i in range(n)] if v == "shuffled_instruction" else list(instructions)
        imgs = ode_edits(editor, src, ins, seeds, num_steps, transformer)
        m.update(_summ(score_edits(imgs, targets, oracles), f"{v}/", edit_types))
    if probes:
        m.update(_summ(score_edits(np.stack(sources), targets, oracles), "copy_source/", edit_types))
    return m
