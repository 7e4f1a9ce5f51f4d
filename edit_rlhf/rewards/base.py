"""The scorer interface of the reward pool.

A scorer turns (dataset row, edited images) into one `ScoreResult` per image. It never raises on a bad
image or model output: a failed score is `ok=False` with `reward=nan` and a reason, which the driver counts
and logs (failed samples are excluded from advantages, never silently scored 0).
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
    columns: Sequence[str]  # dataset columns the scorer reads besides the required ones

    def score(self, row: Dict[str, Any], images: np.ndarray) -> List[ScoreResult]:
        """row: a decoded dataset row; images: uint8 (G, H, W, 3) edits of that row's source."""
