"""EditReward-Bench's published metric, as a pure function (checked against the authors' scripts).

The benchmark (EditScore's, HF `EditScore/EditReward-Bench`; the one the Edit-R1 paper reports) holds one row
per (pair, preference dimension): `dimension` is prompt_following | consistency | overall, `task_type` one of 13
edit kinds, `output_images` = [human-preferred, other]. The authors' `evaluation.py` writes each row's two
scores to `<task_type>/<dimension>.jsonl`; their `calculate_statistics.py` then computes, separately for each
dimension, per task type the fraction of rows with score[0] > score[1] (strict: a tie is wrong) and reports the
unweighted mean over the task types. The three dimensions are never pooled, and a task type with few rows
weighs as much as one with many. The published headline (EditScore-7B 0.659, Edit-RRM 7B 0.733 -> 0.782) is
the `overall` dimension.

Here a row whose score is missing (no parsable verdict) counts as wrong, as in `rrm_train.metrics`.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Dict, Iterable, List, Mapping

DIMENSIONS = ("prompt_following", "consistency", "overall")
HEADLINE_DIMENSION = "overall"
METRIC_NAME = "EditReward-Bench accuracy (authors' metric: per dimension, strict, mean over task types)"


def _scored(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def editreward_bench_accuracy(rows: Iterable[Mapping[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """rows: dicts with `dimension`, `task_type`, `score_preferred`, `score_other` (None / NaN = unscored).

    Returns, per dimension present (in DIMENSIONS order, then any other name sorted):
      accuracy     the authors' figure: mean over task types of the strict per-task accuracy
      per_task     {task_type: strict accuracy}, task_n {task_type: rows}
      rows         rows of this dimension
      pooled_accuracy, with_ties_pooled, tie_rate: per-row means within the dimension (not the published figure;
                   kept so a reader can see how much the task-type weighting moves it)
    """
    by: Dict[str, Dict[str, List[str]]] = defaultdict(lambda: defaultdict(list))
    for i, r in enumerate(rows):
        dim, task = r.get("dimension"), r.get("task_type")
        if not dim or not task:
            raise ValueError(f"row {i}: needs 'dimension' and 'task_type', got {dim!r} / {task!r}")
        a, b = r.get("score_preferred"), r.get("score_other")
        out = "unscored" if not (_scored(a) and _scored(b)) else ("win" if a > b else "tie" if a == b else "loss")
        by[str(dim)][str(task)].append(out)
    order = [d for d in DIMENSIONS if d in by] + sorted(d for d in by if d not in DIMENSIONS)
    res: Dict[str, Dict[str, Any]] = {}
    for dim in order:
        tasks = by[dim]
        per_task = {t: sum(o == "win" for o in outs) / len(outs) for t, outs in sorted(tasks.items())}
        allo = [o for outs in tasks.values() for o in outs]
        n = len(allo)
        res[dim] = {"accuracy": sum(per_task.values()) / len(per_task), "task_types": len(per_task),
                    "per_task": per_task, "task_n": {t: len(o) for t, o in sorted(tasks.items())}, "rows": n,
                    "pooled_accuracy": sum(o == "win" for o in allo) / n,
                    "with_ties_pooled": (sum(o == "win" for o in allo) + 0.5 * sum(o == "tie" for o in allo)) / n,
                    "tie_rate": sum(o == "tie" for o in allo) / n}
    return res


def headline_dimension(res: Mapping[str, Any]) -> str:
    """`overall` when present (the published headline), else the first dimension evaluated."""
    return HEADLINE_DIMENSION if HEADLINE_DIMENSION in res else next(iter(res))


def flat_metrics(res: Mapping[str, Mapping[str, Any]], prefix: str = "editreward_bench") -> Dict[str, float]:
    """MLflow-friendly names: `<prefix>/<dimension>` (the authors' figure), `<prefix>/<dimension>/<task_type>`,
    `<prefix>/<dimension>/pooled`."""
    m: Dict[str, float] = {}
    for dim, r in res.items():
        m[f"{prefix}/{dim}"] = r["accuracy"]
        m[f"{prefix}/{dim}/pooled"] = r["pooled_accuracy"]
        for t, v in r["per_task"].items():
            m[f"{prefix}/{dim}/{t}"] = v
    return m


def summary_text(res: Mapping[str, Mapping[str, Any]]) -> str:
    """'<METRIC_NAME>: overall 0.733 (13 task types, 1000 rows), prompt_following ...' (headline dimension first)."""
    head = headline_dimension(res)
    dims = [head] + [d for d in res if d != head]
    return METRIC_NAME + ": " + ", ".join(
        f"{d} {res[d]['accuracy']:.3f} ({res[d]['task_types']} task types, {res[d]['rows']} rows)" for d in dims)
