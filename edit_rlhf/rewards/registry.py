"""The scorers by name: `build_scorer` makes the one a RewardConfig names, `scorer_columns` the dataset columns it reads.

The scorers import `base` (the interface); this registry imports them, so the interface never imports a scorer."""
from __future__ import annotations

from typing import List, Optional

from edit_rlhf.rewards.base import Scorer


def build_scorer(cfg, threads: Optional[int] = None) -> Scorer:
    """Scorer named by `cfg.scorer` (a RewardConfig); `threads`: CPU threads a model-based scorer may use."""
    if cfg.scorer == "rrm":
        from edit_rlhf.rewards.rrm import RRMScorer

        return RRMScorer(cfg.rrm, threads=threads)
    if cfg.scorer == "similarity":
        from edit_rlhf.rewards.similarity import SimilarityScorer

        return SimilarityScorer(cfg.similarity.metric)
    if cfg.scorer == "oracle":
        from edit_rlhf.rewards.oracle import OracleScorer

        return OracleScorer()
    raise ValueError(f"reward.scorer: unknown scorer {cfg.scorer!r}")


def scorer_columns(cfg) -> List[str]:
    return {"similarity": ["target_image"], "oracle": ["oracle"], "rrm": ["principles"]}.get(cfg.scorer, [])
