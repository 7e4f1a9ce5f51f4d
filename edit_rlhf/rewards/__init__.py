"""Reward scorers behind one interface (`Scorer`/`BaseScorer`, in `base`), made by name in `registry`, hosted by
reward-pool actors; the evaluation's judges (evaluation/scorers.py) implement the same interface."""
from edit_rlhf.rewards.base import BaseScorer, ScoreResult, Scorer  # noqa: F401
from edit_rlhf.rewards.registry import build_scorer, scorer_columns  # noqa: F401
