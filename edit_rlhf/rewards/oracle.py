"""Sandbox oracle reward: the programmatic verifier's holistic 0-10 score, with per-principle checks."""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from edit_rlhf.rewards.base import ScoreResult


def oracle_detail(oracle_json: str, image: np.ndarray) -> Dict[str, Any]:
    """Oracle verdict for one edit: {'oracle_score', 'checks'}."""
    from edit_rlhf.sandbox.oracle import verify_json

    res = verify_json(oracle_json, image)
    return {"oracle_score": float(res.score), "checks": [int(c) for c in res.checks]}


class OracleScorer:
    name = "oracle"
    columns = ("oracle",)

    def score(self, row: Dict[str, Any], images: np.ndarray) -> List[ScoreResult]:
        oj = row.get("oracle")
        if not oj:
            return [ScoreResult.failed("row has no oracle record (not a sandbox dataset?)")] * len(images)
        out = []
        for img in images:
            try:
                d = oracle_detail(oj, img)
            except (ValueError, KeyError) as e:
                out.append(ScoreResult.failed(f"oracle failed: {e}"))
                continue
            out.append(ScoreResult(reward=d["oracle_score"], detail=d))
        return out
