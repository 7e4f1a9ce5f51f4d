"""Learning-rate schedules of the learners (a `ScheduleConfig` on top of `optim.lr`), as pure functions."""
from __future__ import annotations

from edit_rlhf.vlm.sft import lr_factor


def schedule_lr(base: float, step: int, total: int, sched) -> float:
    """The lr of optimizer update `step` (0-based) of `total`: `constant` (after an optional linear warmup) or
    linear warmup then cosine to `min_lr_ratio * base`."""
    if sched.kind == "constant":
        return base * min(1.0, (step + 1) / max(1, sched.warmup_steps)) if sched.warmup_steps else base
    return base * lr_factor(step, total, sched.warmup_steps, sched.min_lr_ratio)
