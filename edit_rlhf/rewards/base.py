"""The one scorer interface: training rewards (this package) and evaluation judges (evaluation/scorers.py).

A scorer turns dataset rows and edited images into one `ScoreResult` per image:
- `score(row, images)`: G edits of one row (the reward pool: a prompt's group);
- `score_batch(rows, images)`: one edit per row (the evaluation: a chunk of prompts).
`BaseScorer` derives either from the other, so a scorer writes the one natural to it. `columns` names every
dataset column the scorer reads; `info()` reports its counters; `close()` releases its engine. A scorer never
raises on a bad image or model output: a failed score is `ok=False` with `reward=nan` and a reason, which the
driver counts and logs (failed samples are excluded from advantages, never silently scored 0).
Model-based scorers sample, parse and re-sample unparsable replies with `sample_parsed` (rewards/sampling.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Protocol, Sequence

import numpy as np


@dataclass
class ScoreResult:
    reward: float
    ok: bool = True
    detail: Dict[str, Any] = field(default_factory=dict)  # per-principle checks, oracle score, trace ...
    error: str = ""

    @staticmethod
    def failed(reason: str) -> "ScoreResult":
        return ScoreResult(reward=math.nan, ok=False, error=reason)


class Scorer(Protocol):
    name: str
    columns: Sequence[str]  # every dataset column the scorer reads

    def score(self, row: Dict[str, Any], images: np.ndarray) -> List[ScoreResult]:
        """row: a decoded dataset row; images: uint8 (G, H, W, 3) edits of that row's source."""

    def score_batch(self, rows: Sequence[Dict[str, Any]], images: np.ndarray) -> List[ScoreResult]:
        """rows[b]: a decoded dataset row; images: uint8 (B, H, W, 3), images[b] an edit of rows[b]'s source."""

    def info(self) -> Dict[str, Any]: ...

    def close(self) -> None: ...


class BaseScorer:
    """Defaults of the `Scorer` protocol: `score` and `score_batch` each in terms of the other (a subclass
    overrides at least one), no counters, nothing to release."""

    name = "scorer"
    columns: Sequence[str] = ()

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.score is BaseScorer.score and cls.score_batch is BaseScorer.score_batch:
            raise TypeError(f"{cls.__name__} must define score() or score_batch()")

    def score(self, row: Dict[str, Any], images: np.ndarray) -> List[ScoreResult]:
        return self.score_batch([row] * len(images), images)

    def score_batch(self, rows: Sequence[Dict[str, Any]], images: np.ndarray) -> List[ScoreResult]:
        return [r for row, img in zip(rows, images) for r in self.score(row, np.asarray(img)[None])]

    def score_groups(self, rows: Sequence[Dict[str, Any]], groups: Sequence[np.ndarray]) -> List[List[ScoreResult]]:
        """Several rows' groups of edits at once (the reward pool batches groups across prompts); by default one
        `score` per group. Each group's results equal what `score(row, group)` gives."""
        return [self.score(row, imgs) for row, imgs in zip(rows, groups)]

    def info(self) -> Dict[str, Any]:
        return {}

    def close(self) -> None:
        pass
