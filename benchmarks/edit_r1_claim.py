"""The Edit-R1 claim on the sandbox, in one recorded line: is the trained verifier a judge, does GCPO improve it, and
does the editor get better under it? Composes `benchmarks/results/edit_r1_claim.json` from recorded benchmark lines
(it trains nothing) and sets each figure beside the issue's target:

- RRM (after SFT + GCPO) on the 256 held-out sandbox pairs: with-ties accuracy (target >= 0.75), strict accuracy
  beside its strict chance level, the sandbox oracle on the same noisy labels, parse rate (>= 0.98), and the
  copy-the-source margin (mean score of `correct` edits minus the source submitted as its edit; target >= 3);
  from the `learn_rrm_gcpo.py` lines (`--gcpo`, one per seed) or, for an RRM without a GCPO run, an `eval-rrm`
  output (`--rrm-eval`).
- GCPO over its SFT start: with-ties gain and its paired z per seed (target +0.05 with z >= 2 in two seeds).
- Editor Flow-GRPO rewarded by the RRM: ODE-evaluation oracle gain over the same-seed lr=0 control, its paired z
  (the smaller of the seeds; target >= 2 in two seeds), probes and the hacking gap; from `learn_editor_grpo.py`
  lines run with an RRM reward (`--editor`, one per seed). A missing input leaves its keys null and says so.

    python benchmarks/edit_r1_claim.py --gcpo benchmarks/results/learn_rrm_gcpo.json \\
        benchmarks/results/learn_rrm_gcpo_seed1.json [--rrm-eval EVAL.json] [--editor SEED0.json SEED1.json] \\
        [--out benchmarks/results/edit_r1_claim.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the other benchmark scripts (common, learn_rrm_gcpo)

TARGETS = {"rrm_with_ties": 0.75, "rrm_parse_rate": 0.98, "copy_source_margin": 3.0, "gcpo_gain_with_ties": 0.05,
           "gcpo_gain_z": 2.0, "editor_oracle_paired_z": 2.0}


def _load(path: str) -> Dict[str, Any]:
    with open(path) as f:
        text = f.read().strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:  # a .jsonl: its last line
        return json.loads(text.splitlines()[-1])


def _min(vals: List[Optional[float]]) -> Optional[float]:
    v = [x for x in vals if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return min(v) if v else None


def rrm_part(gcpo: List[Dict[str, Any]], rrm_eval: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Figures of the judge. With GCPO lines: the first line's GCPO checkpoint (seed order as given); the gains per
    seed. Without: the eval-rrm output's figures (gains null)."""
    out: Dict[str, Any] = {}
    if gcpo:
        g = gcpo[0]
        out.update(rrm_with_ties=g["gcpo_pairwise_accuracy_with_ties"], rrm_strict=g["gcpo_pairwise_accuracy"],
                   rrm_strict_chance=g.get("chance_strict_gcpo"), rrm_parse_rate=g.get("gcpo_parse_rate"),
                   oracle_with_ties=g.get("oracle_pairwise_accuracy"), rrm_source=g.get("command"))
        cs = g.get("copy_source_gcpo") or {}
        out["copy_source_margin"] = cs.get("margin")
        if cs:
            out["copy_source_of"] = "the GCPO checkpoint of the first --gcpo line"
        gains = [r["gcpo_pairwise_accuracy_with_ties"] - r["sft_pairwise_accuracy_with_ties"] for r in gcpo]
        zs = [(r.get("with_ties_paired") or {}).get("z") for r in gcpo]
        out.update(gcpo_gain_with_ties=_min(gains), gcpo_gain_with_ties_by_seed=gains, gcpo_gain_z=_min(zs),
                   gcpo_gain_z_by_seed=zs, gcpo_seeds=[r.get("seed") for r in gcpo])
    if rrm_eval:
        m = rrm_eval["metrics"]
        if not gcpo:
            out.update(rrm_with_ties=m["accuracy_with_ties"], rrm_strict=m["accuracy"],
                       rrm_strict_chance=m.get("chance_strict"), rrm_parse_rate=m.get("parse_rate"),
                       rrm_source=f"eval-rrm {rrm_eval.get('model')}")
        else:  # also a judge of its own (e.g. a later SFT without a GCPO run): its figures beside the GCPO line's
            out.update(eval_rrm_model=rrm_eval.get("model"), eval_rrm_with_ties=m["accuracy_with_ties"],
                       eval_rrm_strict=m["accuracy"], eval_rrm_strict_chance=m.get("chance_strict"))
        if out.get("copy_source_margin") is None:
            out["copy_source_margin"] = m.get("copy_source/margin")
            out["copy_source_of"] = f"eval-rrm {rrm_eval.get('model')}"
            out["copy_source_score"] = m.get("copy_source/score_mean")
            out["correct_edit_score"] = m.get("copy_source/correct_score_mean")
    return out


def editor_part(editor: List[Dict[str, Any]]) -> Dict[str, Any]:
    if not editor:
        return {"editor_oracle_gain": None, "editor_oracle_paired_z": None, "hacking_gap": None,
                "editor_missing": "no learn_editor_grpo line with an RRM reward was given"}
    bad = [r.get("scorer") for r in editor if r.get("scorer") == "oracle"]
    if bad:
        raise SystemExit("edit_r1_claim: --editor lines must come from runs rewarded by the RRM, not the oracle")
    z = [r["eval_oracle_score_paired"]["z"] for r in editor]
    return {"editor_oracle_gain": _min([r["eval_oracle_score_paired"]["diff"] for r in editor]),
            "editor_oracle_gain_by_seed": [r["eval_oracle_score_paired"]["diff"] for r in editor],
            "editor_oracle_paired_z": _min(z), "editor_oracle_paired_z_by_seed": z,
            "hacking_gap": [r.get("hacking_gap") for r in editor], "probe_cost": [r.get("probe_cost") for r in editor],
            "editor_seeds": [r.get("seed") for r in editor], "editor_steps": editor[0].get("steps"),
            "editor_eval_prompts": editor[0].get("eval_prompts")}


def editor_edits_part(evals: List[str]) -> Dict[str, Any]:
    """Judges on pairs of the editor's own edits (`edit-rlhf sandbox editor-pairs`, oracle labels without noise, so
    the oracle's own accuracy there is 1.0): `name=eval-rrm.json` each, in the order given."""
    from rrm_on_editor_edits import decided, judge_figures, named_evals

    out = {}
    for name, path in named_evals(evals, "edit_r1_claim: --editor-pairs-eval"):
        ev = _load(path)
        out[name] = {**judge_figures(ev["metrics"]), **(decided(ev) if "pairs" in ev else {}), "file": path}
    return {"rrm_on_editor_edits": out} if out else {}


def verdicts(c: Dict[str, Any]) -> Dict[str, Optional[bool]]:
    def ge(key, t):
        return None if c.get(key) is None else bool(c[key] >= t)

    two = lambda key: None if c.get(f"{key}_by_seed") is None else len(c[f"{key}_by_seed"]) >= 2
    out = {k: ge(k, t) for k, t in TARGETS.items()}
    out["rrm_strict_above_chance"] = None if c.get("rrm_strict") is None or c.get("rrm_strict_chance") is None \
        else bool(c["rrm_strict"] > c["rrm_strict_chance"])
    out["gcpo_two_seeds"] = two("gcpo_gain_z")
    out["editor_two_seeds"] = two("editor_oracle_paired_z")
    return out


def compose(gcpo: List[Dict[str, Any]], rrm_eval: Optional[Dict[str, Any]], editor: List[Dict[str, Any]],
            inputs: Dict[str, Any], editor_pairs_eval: Optional[List[str]] = None) -> Dict[str, Any]:
    c: Dict[str, Any] = {"benchmark": "edit_r1_claim"}
    c.update(rrm_part(gcpo, rrm_eval))
    c.update(editor_part(editor))
    c.update(editor_edits_part(editor_pairs_eval or []))
    seeds = sorted({s for s in (c.get("gcpo_seeds") or []) + (c.get("editor_seeds") or []) if s is not None})
    c["seeds"] = seeds
    for k in ("rrm_with_ties", "rrm_strict", "rrm_strict_chance", "oracle_with_ties", "gcpo_gain_with_ties",
              "gcpo_gain_z", "copy_source_margin"):
        c.setdefault(k, None)
    c["targets"] = TARGETS
    c["met"] = verdicts(c)
    c["claim_shown"] = all(v is True for v in c["met"].values())
    c["inputs"] = inputs
    return c


def main(argv=None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gcpo", nargs="*", default=[], help="learn_rrm_gcpo.py JSON lines, one per seed")
    ap.add_argument("--rrm-eval", default=None, help="an eval-rrm output JSON (the judge without a GCPO line, or "
                                                     "for the copy-the-source probe)")
    ap.add_argument("--editor", nargs="*", default=[], help="learn_editor_grpo.py lines (RRM reward), one per seed")
    ap.add_argument("--editor-pairs-eval", nargs="*", default=[],
                    help="NAME=eval-rrm.json on pairs of the editor's own edits (sandbox editor-pairs), e.g. sft=... gcpo=...")
    ap.add_argument("--note", default=None, help="free text recorded with the line (what each input is)")
    ap.add_argument("--pairs", default=".cache/sandbox/pairs_eval", help="the held-out pairs (oracle figure)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    c = compose([_load(p) for p in a.gcpo], _load(a.rrm_eval) if a.rrm_eval else None, [_load(p) for p in a.editor],
                {"gcpo": a.gcpo, "rrm_eval": a.rrm_eval, "editor": a.editor, "editor_pairs_eval": a.editor_pairs_eval,
                 "note": a.note}, a.editor_pairs_eval)
    if c.get("oracle_with_ties") is None and os.path.isdir(a.pairs):  # lines recorded before the oracle figure
        from learn_rrm_gcpo import oracle_figures

        c["oracle_with_ties"] = oracle_figures(a.pairs, 256).get("accuracy")
        c["oracle_with_ties_of"] = f"{a.pairs} (first 256 pairs; the oracle never ties)"
    c["command"] = " ".join(["python", *sys.argv] if argv is None else ["edit_r1_claim.main", *argv])
    from common import emit

    return emit(c, a.out)


if __name__ == "__main__":
    main()
