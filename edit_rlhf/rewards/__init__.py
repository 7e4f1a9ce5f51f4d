"""Reward scorers behind one interface (`Scorer`, in `base`), made by name in `registry`, hosted by reward-pool actors."""
from edit_rlhf.rewards.base import ScoreResult, Scorer  # noqa: F401
from edit_rlhf.rewards.registry import build_scorer, scorer_columns  # noqa: F401
