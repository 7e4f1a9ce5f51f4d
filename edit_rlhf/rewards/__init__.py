"""Reward scorers behind one interface (`Scorer`, base.py), hosted by reward-pool actors; the evaluation's
judges (evaluation/scorers.py) implement the same interface."""
from edit_rlhf.rewards.base import BaseScorer, ScoreResult, Scorer, build_scorer, scorer_columns  # noqa: F401
