"""Reward-hacking monitor: the training reward beside an independent judge of the same edits.

Reward hacking shows as the reward rising while an independent judge (the sandbox oracle; a quality judge on
real data) stays flat or falls. Per step the monitor logs the across-sample correlation of reward and judge,
the same inside each group (what the advantages see: `within_groups`), and a trend divergence over a sliding
window:

    divergence = (mean_r(last W) - mean_r(first W)) / sd_r(first W) - (mean_j(last W) - mean_j(first W)) / sd_j(first W)

i.e. how many baseline standard deviations the reward improved beyond the judge. A warning is raised when it
crosses `threshold` (once per crossing).

The judge: the sandbox oracle where the data carries oracle records; on real data a VLM judge's perceptual-
quality score (VIEScore PQ, on its own actor pool); a run with neither says so loudly at start (`resolve_judge`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    """Correlation over pairs where both are finite; NaN when fewer than 3 pairs or no variance."""
    x = np.asarray(a, float)
    y = np.asarray(b, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 3 or x.std() == 0 or y.std() == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def within_groups(rewards: np.ndarray, judge: np.ndarray, min_gap: float = 1e-6) -> Dict[str, float]:
    """What GRPO's advantages see: the reward against the judge *inside* each group (rows = groups). Across
    samples (`reward_judge_corr`) a reward can follow the judge through prompt difficulty alone and still rank a
    group's edits at random. `within_group_corr`: mean over groups (where both vary) of the Pearson correlation;
    `within_group_concordance`: of the within-group pairs the judge separates (by more than `min_gap`) and the
    reward does too, the fraction ordered the same way (0.5 = no signal); `within_group_reward_ties`: of the
    pairs the judge separates, the fraction the reward ties."""
    r, j = np.asarray(rewards, float), np.asarray(judge, float)
    if r.shape != j.shape or r.ndim != 2:
        raise ValueError(f"within_groups: rewards {r.shape} and judge {j.shape} must be the same (groups, G) shape")
    corrs, agree, differ, ties = [], 0, 0, 0
    for rr, jj in zip(r, j):
        ok = np.isfinite(rr) & np.isfinite(jj)
        rr, jj = rr[ok], jj[ok]
        c = pearson(rr, jj)
        if not math.isnan(c):
            corrs.append(c)
        for a in range(rr.size):
            for b in range(a + 1, rr.size):
                dj = jj[a] - jj[b]
                if abs(dj) <= min_gap:
                    continue
                dr = rr[a] - rr[b]
                if abs(dr) <= 1e-12:
                    ties += 1
                    continue
                differ += 1
                agree += (dr > 0) == (dj > 0)
    out: Dict[str, float] = {}
    if corrs:
        out["monitor/within_group_corr"] = float(np.mean(corrs))
    if differ:
        out["monitor/within_group_concordance"] = agree / differ
    if differ + ties:
        out["monitor/within_group_reward_ties"] = ties / (differ + ties)
    return out


@dataclass
class HackingMonitor:
    window: int = 5
    threshold: float = 1.0
    steps: int = 0
    base_r: List[List[float]] = field(default_factory=list)  # per-sample values of the first `window` steps
    base_j: List[List[float]] = field(default_factory=list)
    recent_r: List[List[float]] = field(default_factory=list)  # ... and of the last `window` steps
    recent_j: List[List[float]] = field(default_factory=list)
    warned: bool = False
    warnings: int = 0

    def update(self, rewards: Sequence[float], judge: Sequence[float], group_size: int = 0) -> Dict[str, float]:
        """Add one step's per-sample rewards and judge scores; returns the monitor metrics (and
        'monitor/warning' = 1.0 on the step a crossing happens). With `group_size` (samples in group order) also
        the within-group figures (`within_groups`)."""
        r, j = [float(v) for v in rewards], [float(v) for v in judge]
        self.steps += 1
        if len(self.base_r) < self.window:
            self.base_r.append(r)
            self.base_j.append(j)
        self.recent_r = (self.recent_r + [r])[-self.window:]
        self.recent_j = (self.recent_j + [j])[-self.window:]
        m: Dict[str, float] = {"monitor/reward_judge_corr": pearson(r, j)}
        if group_size > 1 and len(r) % group_size == 0 and r:
            m.update(within_groups(np.reshape(r, (-1, group_size)), np.reshape(j, (-1, group_size))))
        div = self.divergence()
        if div is not None:
            m["monitor/divergence"] = div
            crossing = div > self.threshold
            m["monitor/warning"] = float(crossing and not self.warned)
            if crossing and not self.warned:
                self.warnings += 1
            self.warned = crossing
        return {k: v for k, v in m.items() if not (isinstance(v, float) and math.isnan(v))}

    def divergence(self) -> Optional[float]:
        if self.steps < 2 * self.window:
            return None

        def trend(base: List[List[float]], last: List[List[float]]) -> Optional[float]:
            b = np.asarray([v for s in base for v in s], float)
            l_ = np.asarray([v for s in last for v in s], float)
            b, l_ = b[np.isfinite(b)], l_[np.isfinite(l_)]
            if b.size < 2 or l_.size == 0:
                return None
            sd = b.std()
            return float((l_.mean() - b.mean()) / (sd if sd > 0 else 1.0))

        tr, tj = trend(self.base_r, self.recent_r), trend(self.base_j, self.recent_j)
        if tr is None or tj is None:
            return None
        return tr - tj

    def state(self) -> Dict:
        return {k: getattr(self, k) for k in ("steps", "base_r", "base_j", "recent_r", "recent_j", "warned",
                                               "warnings")}

    def load(self, st: Dict) -> None:
        for k, v in st.items():
            setattr(self, k, v)


NO_JUDGE_WARNING = ("REWARD-HACKING MONITOR IS OFF: the training data has no oracle records and no judge is "
                    "configured, so nothing checks the reward against an independent judge. Set "
                    "monitor.pq.path to a Qwen2.5-VL judge (monitor.judge=pq) to watch for reward hacking, or "
                    "monitor.judge=none to turn the monitor off deliberately.")


def resolve_judge(judge: str, has_oracle: bool, pq_path: Optional[str]) -> Tuple[str, str]:
    """(mode, warning): mode is 'oracle', 'pq' or 'none'; warning is non-empty when the monitor is off without
    having been turned off (`auto` on data without oracle records and no PQ judge configured).
    Raises ValueError for a judge the run cannot have."""
    if judge == "none":
        return "none", ""
    if judge == "oracle":
        if not has_oracle:
            raise ValueError("monitor.judge=oracle: the dataset has no oracle records (use auto, pq or none)")
        return "oracle", ""
    if judge == "pq":
        if not pq_path:
            raise ValueError("monitor.judge=pq: set monitor.pq.path to a judge model")
        return "pq", ""
    if has_oracle:
        return "oracle", ""
    if pq_path:
        return "pq", ""
    return "none", NO_JUDGE_WARNING


def loud(message: str) -> str:
    """A boxed multi-line banner for a warning that must not be missed in a long log."""
    import textwrap

    lines = textwrap.wrap(message, 96)
    bar = "!" * 100
    return "\n".join([bar] + [f"! {ln:<96} !" for ln in lines] + [bar])
