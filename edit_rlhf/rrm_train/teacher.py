"""A sandbox stand-in for the paper's pool of teacher VLMs that write candidate CoT traces (T+V data).

Edit-R1 samples several traces per (source, edit) from Seed-VL models with varied system prompts and
temperatures, then keeps the one whose per-principle checks a verifier confirms (selection.py). Here teacher
i re-answers the oracle's principles with its own error rate, sometimes answers everything 1 (a lazy,
sycophantic judge), sometimes stops before the score (an unparsable output), and scores from its own checks.
The oracle's checks are the gold labels the selection verifies against. Pure functions of (row, seed).
"""
from __future__ import annotations

import re
from typing import List, Optional, Sequence

import numpy as np

from edit_rlhf.rrm.format import format_verdict
from edit_rlhf.rrm.parse import parse_verdict

# The oracle's score rule (sandbox/oracle.py `holistic_score`) on hard 0/1 checks: the share of the score a
# failed point of each category removes.
CATEGORY_COST = {"follow": 0.7, "keep": 0.5, "quality": 0.25}
_THINK_RE = re.compile(r"^source: (?P<src>.*?)\. edited: (?P<edt>.*)\.$", re.S)


def checks_score(checks: Sequence[int], categories: Sequence[str]) -> float:
    """10 * prod over failed points of (1 - cost[category]) (the oracle's rule with hard checks)."""
    s = 10.0
    for c, cat in zip(checks, categories):
        if not c:
            s *= 1.0 - CATEGORY_COST.get(cat, 0.5)
    return s


def teacher_candidates(oracle_trace: str, principles: Sequence[dict], gold: Sequence[int], oracle_score: float,
                       error_rates: Sequence[float], rng: np.random.Generator, lazy_prob: float = 0.1,
                       malformed_prob: float = 0.05, score_jitter: float = 0.5) -> List[str]:
    """One candidate trace per teacher (see module docstring). `oracle_trace` supplies the observation text."""
    v = parse_verdict(oracle_trace, n_expected=len(principles))
    think = v.think if v.ok else ""
    questions = [p["question"] for p in principles]
    cats = [p["category"] for p in principles]
    gold = [int(g) for g in gold]
    out = []
    for err in error_rates:
        if rng.random() < lazy_prob:
            checks = [1] * len(gold)
        else:
            flips = rng.random(len(gold)) < err
            checks = [1 - g if f else g for g, f in zip(gold, flips)]
        if checks == gold:
            score = float(oracle_score)
        else:
            score = checks_score(checks, cats) + float(rng.normal(0.0, score_jitter)) if score_jitter else \
                checks_score(checks, cats)
        score = float(np.clip(score, 0.0, 10.0))
        t = think
        follow = [c for c, cat in zip(checks, cats) if cat == "follow"]
        gold_follow = [g for g, cat in zip(gold, cats) if cat == "follow"]
        m = _THINK_RE.match(think) if think else None
        if m and follow and not any(follow) and any(gold_follow):  # it saw no change where there is one
            t = f"source: {m['src']}. edited: {m['src']}."
        text = format_verdict(list(zip(questions, checks)), score, t)
        if rng.random() < malformed_prob:
            text = text[:text.rfind("<score>")].rstrip()  # stopped before the score: unparsable
        out.append(text)
    return out


def candidate_rng(seed: int, index: int, row_id: Optional[str] = None) -> np.random.Generator:
    import zlib

    key = zlib.crc32(row_id.encode()) if row_id else index
    return np.random.default_rng([seed, key, 7])
