"""GEdit-Bench / VIEScore aggregation as pure functions (algorithms.md §3.1-3.2).

Per sample:  SC = min(instruction success, over-editing)   (the judge's two semantic-consistency scores)
             PQ = min(naturalness, artifacts)              (the judge's two perceptual-quality scores)
             O  = sqrt(SC * PQ)                            (per sample, *not* from category means)
Per category: the mean of each metric over the category's samples.
Benchmark:   the unweighted (macro) mean of the category means, over the categories present.

Failed judgements are NaN. They are excluded *per metric*: a sample whose SC call failed has no SC and no O,
but its PQ still counts. A category with no valid value of a metric has no mean for it (listed in
`categories_missing`) and does not enter that metric's macro mean. Nothing is ever scored 0 for failing.
The same `aggregate` serves the RRM and oracle scores (any per-sample value with a category).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

NAN = float("nan")

# The 11 GEdit-Bench task types, in the benchmark's order (algorithms.md §3.2).
GEDIT_CATEGORIES = ("background_change", "color_alter", "material_alter", "motion_change", "ps_human",
                    "style_change", "subject-add", "subject-remove", "subject-replace", "text_change",
                    "tone_transfer")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def min_score(sub: Optional[Sequence[float]]) -> float:
    """min of a judgement's sub-scores; NaN when the judgement failed (None, empty, or a non-finite entry)."""
    if sub is None or len(sub) == 0 or not all(_finite(s) for s in sub):
        return NAN
    return float(min(sub))


def overall(sc: float, pq: float) -> float:
    """O = sqrt(SC * PQ) of one sample; NaN when either is missing."""
    if not (_finite(sc) and _finite(pq)):
        return NAN
    if sc < 0 or pq < 0:
        raise ValueError(f"SC and PQ must be >= 0, got SC={sc}, PQ={pq}")
    return math.sqrt(sc * pq)


def sample_scores(sc_sub: Optional[Sequence[float]], pq_sub: Optional[Sequence[float]]) -> Tuple[float, float, float]:
    """(SC, PQ, O) of one sample from the judge's sub-scores (None = that judgement failed)."""
    sc, pq = min_score(sc_sub), min_score(pq_sub)
    return sc, pq, overall(sc, pq)


def mean(values: Iterable[float]) -> float:
    """Mean of the finite values; NaN when there are none."""
    v = [float(x) for x in values if _finite(x)]
    return math.fsum(v) / len(v) if v else NAN


def category_order(categories: Iterable[str], preferred: Sequence[str] = GEDIT_CATEGORIES) -> List[str]:
    """Distinct categories: those of `preferred` first (in its order), then the rest sorted."""
    seen = set(categories)
    return [c for c in preferred if c in seen] + sorted(seen - set(preferred))


def aggregate(values: Sequence[float], categories: Sequence[str],
              order: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Per-category means and their macro mean of one per-sample metric (NaN = failed, excluded).

    Returns {'macro', 'micro' (mean over valid samples), 'n', 'n_valid', 'failed',
    'per_category': {cat: {'mean', 'n', 'n_valid', 'failed'}}, 'categories_missing': [...]}.
    Means of categories without a valid value are NaN and left out of the macro mean."""
    if len(values) != len(categories):
        raise ValueError(f"{len(values)} values but {len(categories)} categories")
    cats = list(order) if order is not None else category_order(categories)
    unknown = set(categories) - set(cats)
    if unknown:
        raise ValueError(f"categories {sorted(unknown)} are not in the given order {cats}")
    per: Dict[str, Dict[str, Any]] = {}
    for c in cats:
        vs = [v for v, k in zip(values, categories) if k == c]
        nv = sum(_finite(v) for v in vs)
        per[c] = {"mean": mean(vs), "n": len(vs), "n_valid": nv, "failed": len(vs) - nv}
    present = [per[c]["mean"] for c in cats if per[c]["n_valid"] > 0]
    n_valid = sum(_finite(v) for v in values)
    return {"macro": mean(present), "micro": mean(values), "n": len(values), "n_valid": n_valid,
            "failed": len(values) - n_valid, "per_category": per,
            "categories_missing": [c for c in cats if per[c]["n"] > 0 and per[c]["n_valid"] == 0]}


def gedit_aggregate(sc: Sequence[float], pq: Sequence[float], categories: Sequence[str],
                    order: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, Any]]:
    """{'SC', 'PQ', 'O'}: `aggregate` of each, with O computed per sample from that sample's SC and PQ."""
    o = [overall(s, q) for s, q in zip(sc, pq)]
    cats = list(order) if order is not None else category_order(categories)
    return {"SC": aggregate(sc, categories, cats), "PQ": aggregate(pq, categories, cats),
            "O": aggregate(o, categories, cats)}
