"""Learning curves as PNG (matplotlib's Agg canvas: no display, no pyplot global state).

A history is {metric key: [(step, value), ...]}. Panels group keys by glob pattern (`reward/*`, `eval/reward`);
`auto_panels` puts the keys no panel claimed into one panel per top-level prefix.
"""
from __future__ import annotations

import fnmatch
import io
import math
from typing import Dict, List, Optional, Sequence, Tuple

History = Dict[str, List[Tuple[int, float]]]

# Curated panels of the training pipelines' metric names (GRPO, evaluation, RRM stages, the hacking monitor).
DEFAULT_PANELS: List[Tuple[str, List[str]]] = [
    ("Reward (training rollouts)", ["reward/mean", "reward/p10", "reward/p90"]),
    ("Oracle score (sandbox ground truth)", ["reward/oracle_score", "eval/oracle_score", "eval/*_oracle_score"]),
    ("Evaluation reward", ["eval/reward", "eval/*_reward"]),
    ("KL to the reference", ["train/kl", "train/approx_kl"]),
    ("Policy update", ["train/loss", "train/clip_frac", "train/grad_norm"]),
    ("Reward failures", ["reward/failure_rate", "reward/parse_failure_rate"]),
    ("Reward-hacking monitor", ["monitor/*", "*divergence*"]),
]
# Bookkeeping prefixes left out of the automatic panels (timings, counters, pool sizes, ...).
SKIP_PREFIXES = ("time", "throughput", "counters", "pool", "faults", "policy", "policy_version", "adv", "reward_detail")


def match(keys: Sequence[str], patterns: Sequence[str]) -> List[str]:
    """Keys matching any glob pattern, in pattern order then key order (no duplicates)."""
    out: List[str] = []
    for p in patterns:
        for k in sorted(keys):
            if fnmatch.fnmatchcase(k, p) and k not in out:
                out.append(k)
    return out


def auto_panels(history: History, panels: Sequence[Tuple[str, Sequence[str]]] = DEFAULT_PANELS,
                min_points: int = 2, max_lines: int = 6, skip: Sequence[str] = SKIP_PREFIXES,
                max_panels: int = 16) -> List[Tuple[str, List[str]]]:
    """[(title, keys)]: the given panels with the keys they match, then one panel per remaining prefix.
    Only series with at least `min_points` points are plotted; empty panels are dropped."""
    keys = [k for k, v in history.items() if len(v) >= min_points]
    out, used = [], set()
    for title, pats in panels:
        ks = match(keys, pats)[:max_lines]
        used.update(ks)
        if ks:
            out.append((title, ks))
    rest: Dict[str, List[str]] = {}
    for k in sorted(keys):
        prefix = k.split("/")[0] if "/" in k else "other"
        if k not in used and prefix not in skip:
            rest.setdefault(prefix, []).append(k)
    for prefix, ks in rest.items():
        for i in range(0, len(ks), max_lines):
            out.append((prefix if len(ks) <= max_lines else f"{prefix} ({i // max_lines + 1})", ks[i:i + max_lines]))
    return out[:max_panels]


def curves_png(history: History, keys: Sequence[str], title: str = "", xlabel: str = "step",
               size: Tuple[float, float] = (5.6, 3.2), dpi: int = 100, ylabel: Optional[str] = None) -> bytes:
    """One panel: a line (with point markers when short) per key; non-finite values are skipped."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for k in keys:
        pts = sorted((s, v) for s, v in history.get(k, []) if v is not None and math.isfinite(v))
        if not pts:
            continue
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o" if len(pts) <= 40 else None, markersize=3, linewidth=1.5, label=k)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.canvas.print_png(buf)
    return buf.getvalue()


def bars_png(groups: Dict[str, Dict[str, float]], title: str = "", ylabel: str = "",
             size: Tuple[float, float] = (6.4, 3.2), dpi: int = 100) -> bytes:
    """Grouped bars: {series (e.g. editor): {category: value}} -> PNG (NaN bars are left empty)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cats = list(dict.fromkeys(c for g in groups.values() for c in g))
    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    n = max(1, len(groups))
    w = 0.8 / n
    for i, (name, vals) in enumerate(groups.items()):
        xs = [j + (i - (n - 1) / 2) * w for j in range(len(cats))]
        pts = [(x, vals.get(c)) for x, c in zip(xs, cats)]
        pts = [(x, y) for x, y in pts if y is not None and math.isfinite(y)]  # a missing mean: no bar, not 0
        ax.bar([x for x, _ in pts], [y for _, y in pts], width=w, label=name)
    ax.set_xticks(range(len(cats)))
    ax.set_xticklabels(cats, rotation=30, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.canvas.print_png(buf)
    return buf.getvalue()
