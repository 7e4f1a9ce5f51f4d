"""Reward scorers behind one interface (`Scorer`), hosted by reward-pool actors."""
from edit_rlhf.rewards.base import ScoreResult, Scorer, build_scorer, scorer_columns  # noqa: F401
