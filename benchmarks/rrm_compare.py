"""Which RRM judges better? Held-out pairwise figures of several RRM checkpoints on the same pairs, each against
the first (the baseline): with-ties accuracy and its paired per-pair change (z), strict accuracy beside its chance
level, tie rate, parse rate, the copy-the-source margin. Each checkpoint is scored by `eval-rrm` (greedy, the
config's engine), or its recorded `eval-rrm` output JSON is read (`name=path.json`).

    .venv/bin/python benchmarks/rrm_compare.py [--config configs/eval_rrm_sandbox.yaml] [--out FILE] \\
        stage2=models/old_rrm stage3=models/sandbox/rrm_sft eyes=outputs/rrm_sft_eyes/final.json ...
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/common.py

KEYS = ("pairs", "accuracy_with_ties", "accuracy", "chance_strict", "tie_rate", "parse_rate", "accuracy_macro",
        "copy_source/margin", "copy_source/score_mean", "copy_source/correct_score_mean")


def credits(out: Dict[str, Any]) -> List[float]:
    from edit_rlhf.rrm_train.metrics import pair_outcome

    c = {"win": 1.0, "tie": 0.5, "loss": 0.0, "unscored": 0.0}
    return [c[pair_outcome(p["score_preferred"], p["score_other"])] for p in out["pairs"]]


def evaluate(config: str, path: str, overrides: List[str]) -> Dict[str, Any]:
    if path.endswith(".json"):
        with open(path) as f:
            return json.load(f)
    from edit_rlhf.config import load_config
    from edit_rlhf.config.rrm_train import RRMEvalConfig
    from edit_rlhf.pipelines.eval_rrm import run_eval_rrm

    out = os.path.join(tempfile.mkdtemp(prefix="rrm_compare_"), "eval.json")
    run_eval_rrm(load_config(RRMEvalConfig, config, [f"engine.path={path}", f"output={out}"] + overrides), quiet=True)
    with open(out) as f:
        return json.load(f)


def compare(named: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Figures per checkpoint and, for every one after the first, the paired with-ties change against the first."""
    from edit_rlhf.stats import paired_difference

    names = list(named)
    base = credits(named[names[0]])
    rows = {}
    for n in names:
        m = named[n]["metrics"]
        r = {k: m.get(k) for k in KEYS}
        r["model"] = named[n].get("model")
        if n != names[0]:
            c = credits(named[n])
            if len(c) != len(base):
                raise SystemExit(f"rrm_compare: {n} scored {len(c)} pairs, {names[0]} {len(base)}: not the same set")
            d = paired_difference(c, base, frac=1.0)
            r["with_ties_vs_first"] = {"diff": d["diff"], "z": d["z"], "up": sum(y > x for x, y in zip(base, c)),
                                       "down": sum(y < x for x, y in zip(base, c))}
        rows[n] = r
    return {"benchmark": "rrm_compare", "baseline": names[0], "rrms": rows}


def main(argv=None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/eval_rrm_sandbox.yaml")
    ap.add_argument("--out", default=None)
    ap.add_argument("--note", default=None)
    ap.add_argument("rrms", nargs="+", help="name=path (a checkpoint folder, or an eval-rrm output .json); first = baseline")
    ap.add_argument("--override", action="append", default=[], help="eval-rrm config override (repeatable)")
    a = ap.parse_args(argv)
    named = {}
    for item in a.rrms:
        if "=" not in item:
            raise SystemExit(f"rrm_compare: {item!r}: expected name=path")
        name, path = item.split("=", 1)
        named[name] = evaluate(a.config, path, a.override)
    rep = compare(named)
    rep.update(command=" ".join(["python", *sys.argv] if argv is None else ["rrm_compare.main", *argv]),
               config=a.config, note=a.note)
    from common import emit

    return emit(rep, a.out)


if __name__ == "__main__":
    main()
