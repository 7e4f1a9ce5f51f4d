"""Learning benchmark of the whole Edit-R1 recipe on the sandbox, from the shipped sandbox base models.

Runs `edit-rlhf edit-r1` (default configs/edit_r1_sandbox.yaml: data -> principles -> T+V traces -> RRM SFT
from the base VLM -> RRM GCPO -> editor Flow-GRPO rewarded by the GCPO RRM -> evaluation of base vs trained)
and prints one JSON line: the RRM's held-out pairwise accuracy (strict and with ties) after SFT and after
GCPO, the editor's oracle score before and after GRPO (the evaluation stage: same prompts and seeds for both),
the RRM score the evaluation gives both editors, the GRPO probes, and the wall time of every stage.

    .venv/bin/python benchmarks/learn_edit_r1.py [--out FILE] [--output-dir DIR] [key=value ...]

Overrides apply to the edit-r1 config (e.g. `skip=[rrm_sft]`); stage settings are in the stage configs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _pick(d, *keys):
    for k in keys:
        if d and k in d:
            return d[k]
    return None


def collect(summary: dict, root: str) -> dict:
    """The headline figures from the stages' own summaries (each stage's stage.json)."""
    stages = {}
    for name in summary["stages"]:
        p = os.path.join(root, name, "stage.json")
        stages[name] = json.load(open(p)) if os.path.exists(p) else {}
    out = {"seconds_per_stage": {n: r.get("seconds") for n, r in summary["stages"].items()}}
    sft = stages.get("rrm_sft", {}).get("summary", {})
    if sft:
        a, b = sft.get("eval_first", {}), sft.get("eval_last", {})
        out["rrm_sft"] = {"steps": sft.get("steps"), "parse_rate": b.get("eval/traces/parse_rate"),
                          "pairwise_accuracy_before": a.get("eval/pairs/accuracy"),
                          "pairwise_accuracy": b.get("eval/pairs/accuracy"),
                          "pairwise_accuracy_with_ties": b.get("eval/pairs/accuracy_with_ties"),
                          "tie_rate": b.get("eval/pairs/tie_rate"), "eval_pairs": b.get("eval/pairs/pairs")}
    gc = stages.get("rrm_gcpo", {}).get("summary", {})
    if gc:
        a, b = gc.get("eval_first", {}), gc.get("eval_last", {})
        out["rrm_gcpo"] = {"steps": gc.get("steps"), "eval_pairs": b.get("eval/pairs"),
                           "pairwise_accuracy_sft": a.get("eval/accuracy"),
                           "pairwise_accuracy_gcpo": b.get("eval/accuracy"),
                           "with_ties_sft": a.get("eval/accuracy_with_ties"),
                           "with_ties_gcpo": b.get("eval/accuracy_with_ties"),
                           "tie_rate_sft": a.get("eval/tie_rate"), "tie_rate_gcpo": b.get("eval/tie_rate"),
                           "parse_rate_gcpo": b.get("eval/parse_rate"),
                           "zero_advantage_group_fraction": gc.get("zero_group_fraction")}
        for k in sorted(b):
            if k.startswith("eval/avg") and k.endswith("/accuracy"):
                out["rrm_gcpo"][f"{k[5:]}_sft"] = a.get(k)
                out["rrm_gcpo"][f"{k[5:]}_gcpo"] = b.get(k)
    gr = stages.get("grpo", {}).get("summary", {})
    if gr:
        a, b = gr.get("eval_first", {}), gr.get("eval_last", {})
        out["grpo"] = {"steps": gr.get("steps"), "reward_first20": gr.get("reward_first20"),
                       "reward_last20": gr.get("reward_last20"), "oracle_first20": gr.get("oracle_first20"),
                       "oracle_last20": gr.get("oracle_last20"), "failed_rewards": gr.get("failed_rewards"),
                       "hacking_warnings": gr.get("hacking_warnings"),
                       "eval_rrm_before": a.get("eval/reward"), "eval_rrm_after": b.get("eval/reward"),
                       "eval_oracle_before": a.get("eval/oracle_score"),
                       "eval_oracle_after": b.get("eval/oracle_score"),
                       "probe_oracle": {k[5:]: v for k, v in b.items()
                                        if k.startswith("eval/") and k.endswith("oracle_score")},
                       "probe_rrm": {k[5:]: v for k, v in b.items() if k.startswith("eval/") and k.endswith("_reward")}}
    ev = stages.get("eval", {})
    if ev.get("outputs", {}).get("table") and os.path.exists(ev["outputs"]["table"]):
        t = json.load(open(ev["outputs"]["table"]))
        out["eval"] = {"headline": t.get("headline"), "delta_vs_base": t.get("delta_vs_base")}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/edit_r1_sandbox.yaml")
    ap.add_argument("--output-dir", default=None, help="default: a fresh temporary folder")
    ap.add_argument("--out", default=None, help="also write the JSON line to this file")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)
    from edit_rlhf.config import load_config
    from edit_rlhf.config.edit_r1 import EditR1Config
    from edit_rlhf.pipelines.edit_r1 import EditR1
    from edit_rlhf.runtime import setup_process

    setup_process(1)
    out_dir = a.output_dir or tempfile.mkdtemp(prefix="learn_edit_r1_")
    cfg = load_config(EditR1Config, a.config, [f"output_dir={out_dir}", "tracking.experiment=edit_rlhf-bench"]
                      + list(a.overrides))
    t0 = time.time()
    s = EditR1(cfg, os.path.dirname(os.path.abspath(a.config)), quiet=True).run()
    report = {"benchmark": "learn_edit_r1",
              "command": " ".join(["python", *sys.argv] if argv is None else ["learn_edit_r1.main", *argv]),
              "config": a.config, "overrides": a.overrides, "output_dir": out_dir, "run_id": s["run_id"],
              "report": s.get("report"), "seconds": round(time.time() - t0, 1), **collect(s, os.path.abspath(out_dir))}
    line = json.dumps(report, default=str)
    print(line, flush=True)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(line + "\n")
    return report


if __name__ == "__main__":
    main()
