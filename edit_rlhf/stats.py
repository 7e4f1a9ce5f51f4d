"""Small statistics for learning claims: first/last windows and paired treatment-vs-control differences.

Every learning claim pairs a treatment run with a same-seed lr=0 control (identical prompts and noise per
step), so per-step differences cancel the prompt-to-prompt variance that swamps unpaired comparisons.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence

import numpy as np


def windows(values: Sequence[float], frac: float = 0.2) -> Dict[str, float]:
    """Mean of the first and last `frac` of a series (NaNs/None ignored) and their difference ('gain')."""
    x = np.asarray([v for v in values if v is not None], float)
    k = max(1, int(round(len(x) * frac)))
    first, last = float(np.nanmean(x[:k])), float(np.nanmean(x[-k:]))
    return {"first20": first, "last20": last, "gain": last - first}


def paired_difference(treatment: Sequence[float], control: Sequence[float], frac: float = 0.2) -> Dict[str, float]:
    """Mean of (treatment - control) over the last `frac` of steps, with its standard error and z."""
    t, c = np.asarray(treatment, float), np.asarray(control, float)
    if t.shape != c.shape:
        raise ValueError(f"treatment ({t.shape}) and control ({c.shape}) must have the same number of steps")
    k = max(2, int(round(len(t) * frac)))
    d = t[-k:] - c[-k:]
    se = float(d.std(ddof=1) / math.sqrt(k))
    mean = float(d.mean())
    return {"diff": mean, "se": se, "z": mean / se if se > 0 else (math.inf if mean > 0 else 0.0), "steps": k}


def paired_prompts(treatment: Sequence[float], control: Sequence[float]) -> Dict[str, float]:
    """Per-prompt paired comparison of two evaluations on the same prompts and noise seeds: the mean of
    (treatment - control) over prompts, its standard error and z, and the number of prompts compared
    (prompts where either side is NaN - a failed score - are left out and counted in `dropped`)."""
    t, c = np.asarray(treatment, float), np.asarray(control, float)
    if t.shape != c.shape or t.ndim != 1:
        raise ValueError(f"treatment ({t.shape}) and control ({c.shape}) must be equal-length 1-D per-prompt scores")
    ok = ~(np.isnan(t) | np.isnan(c))
    d = t[ok] - c[ok]
    n = int(d.size)
    if n < 2:
        return {"diff": float(d.mean()) if n else math.nan, "se": math.nan, "z": math.nan, "n": n,
                "dropped": int((~ok).sum())}
    se = float(d.std(ddof=1) / math.sqrt(n))
    mean = float(d.mean())
    z = mean / se if se > 0 else (0.0 if mean == 0 else math.copysign(math.inf, mean))
    return {"diff": mean, "se": se, "z": z, "n": n, "dropped": int((~ok).sum())}


def hacking_gap(reward_t: Sequence[float], reward_c: Sequence[float], oracle_t: Sequence[float],
                oracle_c: Sequence[float]) -> Dict[str, float]:
    """How much of a learned reward's gain the independent judge (the oracle) does not confirm: the per-prompt
    paired gains of the treatment over the control on the reward and on the oracle, each in units of the
    control's own per-prompt std of that score, and their difference `gap` (reward gain - oracle gain).
    A gap near 0: the judge agrees; a large positive gap: the policy found what the reward likes and the
    judge does not (reward hacking)."""
    out: Dict[str, float] = {}
    for name, t, c in (("reward", reward_t, reward_c), ("oracle", oracle_t, oracle_c)):
        p = paired_prompts(t, c)
        sd = float(np.nanstd(np.asarray(c, float), ddof=1))
        out[f"{name}_gain"] = p["diff"]
        out[f"{name}_control_std"] = sd
        out[f"{name}_gain_std_units"] = p["diff"] / sd if sd > 0 else math.nan
    out["gap"] = out["reward_gain_std_units"] - out["oracle_gain_std_units"]
    return out
