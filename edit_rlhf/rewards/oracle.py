"""Sandbox oracle reward: the programmatic verifier's holistic 0-10 score, with per-principle checks."""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from edit_rlhf.rewards.base import BaseScorer, ScoreResult


def oracle_detail(oracle_json: str, image: np.ndarray) -> Dict[str, Any]:
    """Oracle verdict for one edit: {'oracle_score', 'checks'}."""
    from edit_rlhf.sandbox.oracle import verify_json

    res = verify_json(oracle_json, image)
    return {"oracle_score": float(res.score), "checks": [int(c) for c in res.checks]}


class OracleScorer(BaseScorer):
    """The sandbox's programmatic verifier: holistic 0-10 score and per-principle checks from pixels (the reward
    pool's `oracle` scorer and the evaluation's oracle metric)."""

    name = "oracle"
    columns = ("id", "oracle")

    def score(self, row: Dict[str, Any], images: np.ndarray) -> List[ScoreResult]:
        oj = row.get("oracle")
        if not oj:
            why = f"row {row.get('id')!r} has no oracle record (not a sandbox dataset?)"
            return [ScoreResult.failed(why) for _ in images]
        out = []
        for img in images:
            try:
                d = oracle_detail(oj, img)
            except (ValueError, KeyError, TypeError) as e:
                out.append(ScoreResult.failed(f"oracle failed on row {row.get('id')!r}: {e}"))
                continue
            out.append(ScoreResult(reward=d["oracle_score"], detail=d))
        return out
