"""Typed records the GRPO driver passes between its pools: what one prompt's group is at each stage.

Images and trajectories stay in Ray's object store; the records hold their refs (owned by the driver, which
made the calls, so they outlive a rollout actor that dies later) and the small metadata beside them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple


@dataclass(frozen=True)
class GroupRollout:
    """One prompt's G edits from a rollout actor.

    meta: {'prompt_id', 'instruction', 'policy_version', 'n', 'seconds', 'worker', ...} (small, on the driver);
    images: ref to uint8 (G, H, W, 3); trajectory: ref to the SDE transitions the learner trains on (training
    rollouts only; ODE evaluation edits have none)."""

    split: str
    index: int
    meta: Dict[str, Any]
    images: Any
    trajectory: Any = None

    @property
    def policy_version(self) -> int:
        return int(self.meta["policy_version"])

    @property
    def n(self) -> int:
        return int(self.meta.get("n", 1))


@dataclass(frozen=True)
class GroupScores:
    """A reward worker's scores of one group's edits (NaN rewards where scoring failed for good)."""

    rewards: Tuple[float, ...]
    ok: Tuple[bool, ...]
    errors: Tuple[str, ...]
    details: Tuple[Dict[str, Any], ...]
    oracle_scores: Optional[Tuple[float, ...]] = None  # the sandbox oracle beside the reward (a monitor)
    worker: Optional[str] = None
    seconds: float = 0.0

    @classmethod
    def from_worker(cls, d: Dict[str, Any]) -> "GroupScores":
        """From `RewardWorker.score`'s reply."""
        o = d.get("oracle_scores")
        return cls(tuple(d["rewards"]), tuple(d["ok"]), tuple(d["errors"]), tuple(d["details"]),
                   tuple(o) if o is not None else None, d.get("worker"), float(d.get("seconds", 0.0)))

    @classmethod
    def failed(cls, n: int, why: str) -> "GroupScores":
        """Every attempt failed: NaN rewards (counted, and no policy gradient from them)."""
        return cls((math.nan,) * n, (False,) * n, (why,) * n, ({},) * n)

    def checks(self) -> List[Any]:
        return [d.get("checks") for d in self.details]


@dataclass(frozen=True)
class LearnerShard:
    """What one learner rank trains on in a step: minibatches of (group key, sample index, advantage) and the
    refs of exactly the trajectories those minibatches use (each rank fetches only its own)."""

    minibatches: List[List[Tuple[int, int, float]]]
    trajectories: Dict[int, Any] = field(default_factory=dict)
