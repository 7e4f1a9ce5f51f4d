"""Does a judge see the edits it will reward? Scores of RRM checkpoints on pairs of the *editor's own* edits.

Input: `eval-rrm` outputs (NAME=JSON, each run with `data.path` = a pairs set from `edit-rlhf sandbox editor-pairs`,
label noise 0) and that pairs set. Per judge: pairwise accuracy on the pairs (strict, with ties, chance: two edits
of the same prompt, the ranking a GRPO group's advantages need), and per edit (across prompts) the Pearson r of the
RRM score with the oracle score and the mean RRM score per oracle band. A judge can follow the oracle across
prompts (r > 0) and still be at chance within a prompt. Prints one JSON line.

    python benchmarks/rrm_on_editor_edits.py --pairs .cache/editor_pairs/eval sft=EVAL1.json gcpo=EVAL2.json \\
        [--out benchmarks/results/rrm_on_editor_edits.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

BANDS: Tuple[Tuple[float, float], ...] = ((0.0, 0.5), (0.5, 3.0), (3.0, 6.0), (6.0, 10.01))


def per_edit(oracle: Sequence[float], rrm: Sequence[float]) -> Dict[str, Any]:
    """Pearson r of RRM vs oracle scores over edits, and the mean RRM score per oracle band [lo, hi)."""
    o, r = np.asarray(oracle, dtype=float), np.asarray(rrm, dtype=float)
    if o.size != r.size:
        raise ValueError(f"per_edit: {o.size} oracle scores but {r.size} RRM scores")
    out: Dict[str, Any] = {"edits": int(o.size)}
    out["pearson_r"] = float(np.corrcoef(o, r)[0, 1]) if o.size > 2 and o.std() > 0 and r.std() > 0 else None
    out["rrm_mean_by_oracle_band"] = {f"{lo:g}-{min(hi, 10):g}": (round(float(r[(o >= lo) & (o < hi)].mean()), 3)
                                                                 if ((o >= lo) & (o < hi)).any() else None)
                                      for lo, hi in BANDS}
    return out


def decided(ev: Dict[str, Any]) -> Dict[str, Any]:
    """Sign test over the pairs the judge decides (different scores): right, wrong and z = (right - wrong) /
    sqrt(right + wrong). Within a prompt the judge ties far more often than its score marginal predicts (edits of one
    prompt look alike), so eval-rrm's `chance_strict` (independent draws from that marginal) overstates the strict
    chance there; right vs wrong among the decided pairs is the fair reference."""
    from collections import Counter

    from edit_rlhf.rrm_train.metrics import pair_outcome

    c = Counter(pair_outcome(p.get("score_preferred"), p.get("score_other")) for p in ev["pairs"])
    right, wrong = c["win"], c["loss"]
    n = right + wrong
    return {"decided": n, "decided_right": right, "decided_wrong": wrong,
            "decided_z": float((right - wrong) / np.sqrt(n)) if n else None}


def named_evals(items: Sequence[str], flag: str) -> List[Tuple[str, str]]:
    """`NAME=eval.json` arguments -> [(name, path)], in order; anything else stops with the flag named."""
    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"{flag} takes NAME=EVAL.json, got {item!r}")
        out.append((name, path))
    return out


def judge_figures(metrics: Dict[str, Any]) -> Dict[str, Any]:
    """The pairwise figures of one eval-rrm output's metrics, beside their chance level."""
    m = metrics
    return {"with_ties": m["accuracy_with_ties"], "strict": m["accuracy"], "strict_chance": m.get("chance_strict"),
            "pairs": m.get("pairs"), "tie_rate": m.get("tie_rate"), "parse_rate": m.get("parse_rate")}


def edits_of(ev: Dict[str, Any], rows: Dict[str, Dict[str, Any]]) -> Tuple[List[float], List[float]]:
    """(oracle, rrm) score per scored edit of an eval-rrm output, matched to the pairs set by pair id."""
    oracle, rrm = [], []
    for p in ev["pairs"]:
        r = rows.get(p["id"])
        if r is None:
            raise ValueError(f"pair {p['id']!r} of the eval-rrm output is not in the pairs set")
        won, lost = (r["score_a"], r["score_b"]) if r["preferred"] == "a" else (r["score_b"], r["score_a"])
        for s, o in ((p["score_preferred"], won), (p["score_other"], lost)):
            if s is not None:
                oracle.append(float(o))
                rrm.append(float(s))
    return oracle, rrm


def main(argv=None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", default=".cache/editor_pairs/eval")
    ap.add_argument("--out", default=None)
    ap.add_argument("evals", nargs="+", help="NAME=eval-rrm.json")
    a = ap.parse_args(argv)
    from datasets import load_from_disk

    d = load_from_disk(a.pairs)
    d = d.remove_columns([c for c in ("source_image", "image_a", "image_b") if c in d.column_names])
    rows = {r["id"]: r for r in d}
    man_p = os.path.join(a.pairs, "editor_pairs.json")
    rec: Dict[str, Any] = {"benchmark": "rrm_on_editor_edits", "pairs_set": a.pairs, "pairs": len(rows),
                           "pairs_manifest": json.load(open(man_p)) if os.path.exists(man_p) else None,
                           "oracle_with_ties": 1.0 if all(not r.get("label_flipped") for r in rows.values()) else None,
                           "judges": {}}
    for name, path in named_evals(a.evals, "rrm_on_editor_edits"):
        ev = json.load(open(path))
        rec["judges"][name] = {"model": ev.get("model"), **judge_figures(ev["metrics"]), **decided(ev),
                               **per_edit(*edits_of(ev, rows)), "file": path}
    rec["command"] = " ".join(["python", *sys.argv] if argv is None else ["rrm_on_editor_edits.main", *argv])
    from common import emit

    return emit(rec, a.out)


if __name__ == "__main__":
    main()
