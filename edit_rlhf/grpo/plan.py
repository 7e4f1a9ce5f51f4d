"""Pure planning helpers of the GRPO driver: prompt order, seeds, rank assignment, metric merging."""
from __future__ import annotations

from typing import Dict, List

import numpy as np


class PromptSampler:
    """Epoch-wise shuffled prompt order, deterministic in (seed, epoch); resumable from (epoch, pos)."""

    def __init__(self, n: int, seed: int, epoch: int = 0, pos: int = 0):
        if n <= 0:
            raise ValueError("PromptSampler needs at least one prompt")
        self.n, self.seed, self.epoch, self.pos = n, seed, epoch, pos

    def _perm(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def next(self, k: int) -> List[int]:
        out: List[int] = []
        while len(out) < k:
            take = self._perm()[self.pos: self.pos + k - len(out)]
            out += [int(i) for i in take]
            self.pos += len(take)
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
        return out

    def state(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load(self, state: Dict[str, int]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


def sample_seeds(seed: int, step: int, slot: int, g: int) -> List[int]:
    """Per-sample noise seeds: a function of (run seed, step, prompt slot) only, never of the actor."""
    return [int(s) for s in np.random.SeedSequence([seed, step, slot]).generate_state(g)]


def eval_seed(seed: int, i: int, repeat: int = 0) -> int:
    """Noise seed of evaluation prompt i's `repeat`-th edit (the same at every evaluation of a run)."""
    key = [seed, 10 ** 6, i] + ([repeat] if repeat else [])
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def rank_plan(n_groups: int, group_size: int, advantages: np.ndarray, ranks: int, minibatches: int,
              seed: int, step: int) -> List[List[List[tuple]]]:
    """Shuffle all (group, sample) pairs and deal them into `minibatches` x `ranks` equal chunks.

    advantages: (n_groups, group_size). Returns plan[rank][minibatch] = [(group, sample, advantage), ...]."""
    pairs = [(g, j) for g in range(n_groups) for j in range(group_size)]
    if len(pairs) % (ranks * minibatches):
        raise ValueError(f"{len(pairs)} samples do not split into {minibatches} minibatches x {ranks} ranks")
    order = np.random.default_rng([seed, step, 7]).permutation(len(pairs))
    per_mb = len(pairs) // minibatches
    per_rank = per_mb // ranks
    plan: List[List[List[tuple]]] = [[[] for _ in range(minibatches)] for _ in range(ranks)]
    for m in range(minibatches):
        chunk = order[m * per_mb:(m + 1) * per_mb]
        for r in range(ranks):
            for k in chunk[r * per_rank:(r + 1) * per_rank]:
                g, j = pairs[k]
                plan[r][m].append((g, j, float(advantages[g, j])))
    return plan


_MAX_KEYS = ("ratio_max", "ratio_max_dev", "ratio_first_max_dev", "learner_seconds")


def merge_rank_metrics(ms: List[Dict[str, float]]) -> Dict[str, float]:
    """Per-rank learner metrics -> one dict: extremes for ratio bounds and time, means otherwise."""
    out: Dict[str, float] = {}
    for k in ms[0]:
        vals = [m[k] for m in ms]
        if k in _MAX_KEYS:
            out[k] = max(vals)
        elif k == "ratio_min":
            out[k] = min(vals)
        elif k not in ("rank", "version"):
            out[k] = float(np.mean(vals))
    return out
