"""Learning benchmark: does GCPO make the sandbox Edit-RRM a better judge than its SFT checkpoint?

Runs `rrm-gcpo` (configs/rrm_gcpo_sandbox.yaml + overrides) from the SFT checkpoint. The held-out pairs
(`data.eval`, first `data.eval_size`) are scored greedily by the same vLLM engine before the first update
(= the SFT checkpoint) and after the last, so both accuracies come from one code path on one set. Prints one
JSON line: parse rate after SFT, held-out pairwise accuracy SFT vs GCPO (strict: ties wrong; with ties: ties
1/2) with chance levels, the paired per-pair change (pairs fixed vs broken, sign-test z), the zero-advantage
group fraction, weighted advantage and trace length (first/last 20% of steps), parse failures, sync and wall
times. `--control` adds the same-seed lr=0 run (its weights never change, so its accuracy must stay at the SFT
figure: a check of the machinery, not of learning).

    .venv/bin/python benchmarks/learn_rrm_gcpo.py --steps 30 [--control] [--out FILE] [key=value ...]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def correct(scores):
    return [s[0] is not None and s[1] is not None and s[0] > s[1] for s in scores]


def strict_change(before, after) -> dict:
    """Pairs the strict verdict fixed and broke between two evaluations of the same pairs, with the sign-test z."""
    b, a = correct(before), correct(after)
    fixed = sum(y and not x for x, y in zip(b, a))
    broken = sum(x and not y for x, y in zip(b, a))
    return {"pairs_fixed": fixed, "pairs_broken": broken,
            "sign_test_z": (fixed - broken) / math.sqrt(fixed + broken) if fixed + broken else 0.0}


def paired_with_ties(before, after) -> dict:
    """Per-pair change of the with-ties credit (win 1, tie 1/2, loss or unscored 0) between two evaluations of
    the same pairs: mean change and its paired z (mean / standard error)."""
    from edit_rlhf.rrm_train.metrics import pair_outcome
    from edit_rlhf.stats import paired_difference

    credit = {"win": 1.0, "tie": 0.5, "loss": 0.0, "unscored": 0.0}
    cb = [credit[pair_outcome(*x)] for x in before]
    ca = [credit[pair_outcome(*x)] for x in after]
    p = paired_difference(ca, cb, frac=1.0)
    return {"pairs": len(ca), "mean_change": p["diff"], "up": sum(y > x for x, y in zip(cb, ca)),
            "down": sum(y < x for x, y in zip(cb, ca)), "z": p["z"]}


def oracle_figures(path: str, size: int) -> dict:
    """The sandbox oracle's pairwise figures on the same held-out pairs (first `size` rows, ties dropped as the
    RRM evaluation drops them); {} when the pairs carry no oracle scores (real data)."""
    from edit_rlhf.data.prompts import load_hf_dataset
    from edit_rlhf.rrm_train.metrics import oracle_pairwise_metrics

    ds = load_hf_dataset(path)
    if not {"score_a", "score_b", "preferred"} <= set(ds.column_names):
        return {}
    ds = ds.select_columns(["preferred", "score_a", "score_b"])
    rows = [ds[i] for i in range(len(ds) if not size else min(size, len(ds)))]
    rows = [r for r in rows if str(r["preferred"]).strip().lower() in ("a", "b")]
    return oracle_pairwise_metrics([dict(r, preferred=str(r["preferred"]).strip().lower()) for r in rows])


def run(cfg) -> dict:
    from edit_rlhf.pipelines.rrm_gcpo import RRMGCPOTrainer

    tr = RRMGCPOTrainer(cfg, quiet=True)
    s = tr.run()
    s["history"] = tr.history
    s["evals"] = tr.evals
    s["eval_scores"] = tr.eval_scores
    return s


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/rrm_gcpo_sandbox.yaml")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--control", action="store_true", help="also run the same-seed lr=0 control")
    ap.add_argument("--out", default=None, help="also write the report (with curves) to this JSON file")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)
    from edit_rlhf.config import load_config
    from edit_rlhf.config.rrm_train import RRMGCPOConfig
    from edit_rlhf.runtime import setup_process
    from edit_rlhf.stats import windows

    setup_process(1)
    import ray

    root = tempfile.mkdtemp(prefix="learn_rrm_gcpo_")
    base = [f"steps={a.steps}", "save_every=0", "tracking.experiment=edit_rlhf-bench"] + list(a.overrides)
    t0 = time.time()
    runs = {}
    for name, extra in [("treatment", [])] + ([("control", ["optim.lr=0"])] if a.control else []):
        cfg = load_config(RRMGCPOConfig, a.config, base + extra + [f"output_dir={root}/{name}",
                                                                   f"tracking.run_name=learn-gcpo-{name}"])
        if not ray.is_initialized():
            from edit_rlhf.cluster.pools import init_ray

            init_ray(cfg.cluster, log_to_driver=False)
        runs[name] = run(cfg)
    ray.shutdown()
    cfg = load_config(RRMGCPOConfig, a.config, base)
    tr = runs["treatment"]
    first, last = tr["evals"][0], tr["evals"][-1]
    h = tr["history"]

    def w(key):
        v = [m[key] for m in h if key in m and not (isinstance(m[key], float) and math.isnan(m[key]))]
        return windows(v) if v else {}

    manifest = {}
    mpath = os.path.join(cfg.model.path, "manifest.json")
    if os.path.isfile(mpath):
        manifest = json.load(open(mpath))
    report = {
        "benchmark": "learn_rrm_gcpo",
        "command": " ".join(["python", *sys.argv] if argv is None else ["learn_rrm_gcpo.main", *argv]),
        "config": a.config, "overrides": a.overrides, "steps": a.steps, "seed": cfg.seed,
        "sft_checkpoint": cfg.model.path, "lr": cfg.optim.lr, "pairs_per_step": cfg.algo.pairs_per_step,
        "group_size": cfg.algo.group_size, "eval_pairs": int(first["eval/pairs"]),
        "sft_parse_rate_eval_traces": (manifest.get("eval_last") or {}).get("eval/traces/parse_rate"),
        "sft_parse_rate": first["eval/parse_rate"], "gcpo_parse_rate": last["eval/parse_rate"],
        "sft_pairwise_accuracy": first["eval/accuracy"], "gcpo_pairwise_accuracy": last["eval/accuracy"],
        "sft_pairwise_accuracy_with_ties": first["eval/accuracy_with_ties"],
        "gcpo_pairwise_accuracy_with_ties": last["eval/accuracy_with_ties"],
        "sft_tie_rate": first["eval/tie_rate"], "gcpo_tie_rate": last["eval/tie_rate"],
        "chance_strict_sft": first.get("eval/chance_strict"), "chance_strict_gcpo": last.get("eval/chance_strict"),
        "chance_with_ties": 0.5,
        **strict_change(tr["eval_scores"][0]["scores"], tr["eval_scores"][-1]["scores"]),
        "with_ties_paired": paired_with_ties(tr["eval_scores"][0]["scores"], tr["eval_scores"][-1]["scores"]),
        "eval_curve": [(e["step"], round(e["eval/accuracy"], 4), round(e["eval/accuracy_with_ties"], 4))
                       for e in tr["evals"]],
        "zero_advantage_group_fraction": tr.get("zero_group_fraction"),
        "zero_advantage_group_fraction_first20": tr.get("zero_group_fraction_first20"),
        "zero_advantage_group_fraction_last20": tr.get("zero_group_fraction_last20"),
        "weighted_advantage": w("adv/weighted"), "trace_length": w("trace/length_mean"),
        "train_parse_failure_rate": w("trace/parse_failure_rate"), "train_sample_pair_accuracy":
            w("pairs/sample_accuracy"),
        "sync_seconds_mean": tr.get("sync_seconds_mean"), "step_seconds_mean": tr.get("step_seconds_mean"),
        "probe_lp_absdiff_max": tr.get("probe_lp_absdiff_max"), "gcpo_seconds": tr["seconds"],
        "seconds": round(time.time() - t0, 1),
    }
    report["accuracy_gain"] = report["gcpo_pairwise_accuracy"] - report["sft_pairwise_accuracy"]
    # every accuracy beside its chance level and the sandbox oracle's own accuracy on the same (noisy) labels
    from edit_rlhf.rrm_train.metrics import against_chance_and_oracle

    orc = oracle_figures(cfg.data.eval, cfg.data.eval_size)
    oracle_acc = orc.get("accuracy")
    report["oracle_pairwise_accuracy"] = oracle_acc  # the oracle never ties here: strict = with ties
    report["accuracy_vs_chance_and_oracle"] = {
        "sft_strict": against_chance_and_oracle(report["sft_pairwise_accuracy"], report["chance_strict_sft"], oracle_acc),
        "gcpo_strict": against_chance_and_oracle(report["gcpo_pairwise_accuracy"], report["chance_strict_gcpo"],
                                                 oracle_acc),
        "sft_with_ties": against_chance_and_oracle(report["sft_pairwise_accuracy_with_ties"], 0.5, oracle_acc),
        "gcpo_with_ties": against_chance_and_oracle(report["gcpo_pairwise_accuracy_with_ties"], 0.5, oracle_acc)}
    k = cfg.eval.avg_k
    if k and f"eval/avg{k}/accuracy" in first:  # Avg@k (same per-pair seeds at both evaluations)
        report[f"avg{k}"] = {
            "temperature": cfg.eval.avg_temperature,
            "sft_pairwise_accuracy": first[f"eval/avg{k}/accuracy"],
            "gcpo_pairwise_accuracy": last[f"eval/avg{k}/accuracy"],
            "sft_pairwise_accuracy_with_ties": first[f"eval/avg{k}/accuracy_with_ties"],
            "gcpo_pairwise_accuracy_with_ties": last[f"eval/avg{k}/accuracy_with_ties"],
            "sft_parse_rate": first[f"eval/avg{k}/parse_rate"], "gcpo_parse_rate": last[f"eval/avg{k}/parse_rate"],
            "sft_tie_rate": first[f"eval/avg{k}/tie_rate"], "gcpo_tie_rate": last[f"eval/avg{k}/tie_rate"],
            "chance_strict_sft": first.get(f"eval/avg{k}/chance_strict"),
            **strict_change(tr["eval_scores"][0]["scores_avg"], tr["eval_scores"][-1]["scores_avg"]),
            "with_ties_paired": paired_with_ties(tr["eval_scores"][0]["scores_avg"],
                                                 tr["eval_scores"][-1]["scores_avg"]),
            "curve": [(e["step"], round(e[f"eval/avg{k}/accuracy"], 4)) for e in tr["evals"]]}
    for tag, e in (("sft", first), ("gcpo", last)):  # the copy-the-source probe (sandbox pairs)
        if "eval/copy_source/margin" in e:
            report[f"copy_source_{tag}"] = {k.split("/")[-1]: e[k] for k in e if k.startswith("eval/copy_source/")}
    report["category_sft"] = {k.split("/")[-1]: round(v, 3) for k, v in first.items() if k.startswith("eval/category/")}
    report["category_gcpo"] = {k.split("/")[-1]: round(v, 3) for k, v in last.items() if k.startswith("eval/category/")}
    if "control" in runs:
        c = runs["control"]
        report["control_lr0_pairwise_accuracy"] = c["evals"][-1]["eval/accuracy"]
        report["control_lr0_pairwise_accuracy_with_ties"] = c["evals"][-1]["eval/accuracy_with_ties"]
    print(json.dumps(report))
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)) or ".", exist_ok=True)
        full = dict(report, curves={k: [m.get(k) for m in h] for k in (
            "adv/zero_group_fraction", "adv/weighted", "trace/length_mean", "trace/parse_failure_rate",
            "score/winner_minus_loser", "pairs/sample_accuracy", "train/loss", "time/sync_s", "time/step_s")},
                    eval_scores=tr["eval_scores"])
        with open(a.out, "w") as f:
            json.dump(full, f, indent=2, default=str)
    return report


if __name__ == "__main__":
    main()
