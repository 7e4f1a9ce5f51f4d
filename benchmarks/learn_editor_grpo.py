"""Learning benchmark: does Flow-GRPO make the editor better on the deterministic evaluation, and is what it
learned *editing*?

For each seed, runs the GRPO pipeline twice with identical prompts and noise seeds: the treatment (the config's
lr) and the control (lr = 0). The headline is the final ODE evaluation (noise 0, the same held-out prompts and
seeds for both runs), compared per prompt: the mean of (treatment - control) over prompts, its standard error
and z, on the reward and on the sandbox oracle. Beside it: the learning curve of that evaluation, the per-step
training reward of the sampled (SDE) edits (noisy: each step draws new prompts) with its paired difference
over the last 20 % of steps, the reward's agreement with the oracle inside the training groups (the hacking
monitor's within-group concordance, reward ties and correlation, mean over steps), and the probes of what was
learned — the treatment's final evaluation with shuffled sources and with shuffled instructions, and the
copy-the-source baseline. If shuffling the instruction
costs nothing, the policy ignores the text; if shuffling the source costs nothing, it ignores the image; if the
score sits at the copy-source baseline, it learned to copy.

Prints one JSON line per seed (and writes it to --out-dir as learn_editor_grpo_seed<k>.json); with several
seeds also a summary line (editor_grpo_seeds.json) with paired_z_by_seed, paired_z_min, oracle_gain_by_seed,
control_gain_by_seed, steps and seconds.

    .venv/bin/python benchmarks/learn_editor_grpo.py [--seeds 0 1 2] [--steps N] [--control-steps K] [--out-dir DIR]
        [key=value ...]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(cfg) -> Dict[str, Any]:
    from edit_rlhf.pipelines.grpo import GRPOTrainer

    tr = GRPOTrainer(cfg, quiet=True)
    s = tr.run()
    s["rewards"] = [m["reward/mean"] for m in tr.history]
    s["oracle"] = [m.get("reward/oracle_score") for m in tr.history]
    s["within"] = {k: [m[f"monitor/{k}"] for m in tr.history if f"monitor/{k}" in m]
                   for k in ("within_group_concordance", "within_group_reward_ties", "within_group_corr")}
    s["final_eval"] = tr.eval_history[-1] if tr.eval_history else {}
    s["per_prompt"] = {int(k): v for k, v in tr.eval_per_prompt.items()}
    s["curve"] = [{k: m[k] for k in m if k == "step" or k in ("eval/reward", "eval/oracle_score")}
                  for m in tr.eval_history]
    return s


def one_seed(config: str, seed: int, steps: int, overrides: List[str], out_root: str,
             control_steps: int = 0) -> Dict[str, Any]:
    from edit_rlhf.config import GRPOConfig, load_config
    from edit_rlhf.stats import paired_difference, paired_prompts, windows

    base = [f"seed={seed}", "save_every=0", "tracking.experiment=edit_rlhf-bench", "tracking.log_images_every=1000",
            "eval_probes=true"] + ([f"steps={steps}"] if steps else []) + list(overrides)
    t0 = time.time()
    results = {}
    # the control's weights never move: it is evaluated at the start and the end only, without probes; with
    # control_steps it also trains only that many steps (its evaluation cannot change, its training curve is cut)
    control = ["optim.lr=0", "eval_every=0", "eval_probes=false"] + ([f"steps={control_steps}"] if control_steps else [])
    for name, extra in (("treatment", []), ("control", control)):
        cfg = load_config(GRPOConfig, config, base + extra + [f"output_dir={out_root}/seed{seed}_{name}",
                                                              f"tracking.run_name=learn-{name}-seed{seed}"])
        results[name] = run(cfg)
    tr, ct = results["treatment"], results["control"]
    cfg = load_config(GRPOConfig, config, base)
    report: Dict[str, Any] = {
        "benchmark": "learn_editor_grpo", "config": config, "seed": seed, "steps": cfg.steps,
        "overrides": list(overrides), "scorer": cfg.reward.scorer, "lr": cfg.optim.lr,
        "eval_prompts": min(cfg.data.eval_size, len(tr["per_prompt"][max(tr["per_prompt"])]["reward"])),
        "eval_repeats": cfg.data.eval_repeats, "control_steps": len(results["control"]["rewards"]),
        "seconds": round(time.time() - t0, 1)}
    last_t, last_c = tr["per_prompt"][max(tr["per_prompt"])], ct["per_prompt"][max(ct["per_prompt"])]
    first_t, first_c = tr["per_prompt"][min(tr["per_prompt"])], ct["per_prompt"][min(ct["per_prompt"])]
    if cfg.reward.scorer != "oracle" and "oracle_score" in last_t and "oracle_score" in last_c:
        from edit_rlhf.stats import hacking_gap  # the reward is learned (RRM) or a proxy: does the oracle agree?

        report["hacking_gap"] = hacking_gap(last_t["reward"], last_c["reward"], last_t["oracle_score"],
                                            last_c["oracle_score"])
    for key in ("reward", "oracle_score"):
        if key in last_t and key in last_c:
            report[f"eval_{key}_paired"] = paired_prompts(last_t[key], last_c[key])  # the headline
            report[f"eval_{key}_gain"] = paired_prompts(last_t[key], first_t[key])["diff"]
            report[f"control_eval_{key}_gain"] = paired_prompts(last_c[key], first_c[key])["diff"]
    for name, s in results.items():
        w = windows(s["rewards"])
        ev = {k.replace("eval/", ""): round(v, 5) for k, v in s["final_eval"].items()
              if k.startswith("eval/") and not k.endswith(("seconds", "failed"))}
        report[name] = {"train_reward_first20": w["first20"], "train_reward_last20": w["last20"],
                        "final_eval": ev, "eval_curve": s["curve"], "seconds": s["seconds"]}
        # the reward against the oracle inside the training groups, mean over steps (what the advantages saw)
        report[name].update({f"train_{k}": round(float(sum(v) / len(v)), 4) for k, v in s["within"].items() if v})
    # step-by-step pairing needs the control's whole training curve
    report["train_reward_paired_last20"] = (paired_difference(tr["rewards"], ct["rewards"])
                                            if len(ct["rewards"]) == len(tr["rewards"]) else None)
    key = "oracle_score" if "eval_oracle_score_paired" in report else "reward"
    report["learned"] = bool(report[f"eval_{key}_paired"]["z"] >= 2)
    te = report["treatment"]["final_eval"]
    if "shuffled_source_reward" in te:
        k = "oracle_score" if "shuffled_source_oracle_score" in te else "reward"
        report["probe_cost"] = {"measure": k,
                                "shuffled_source": te[k] - te[f"shuffled_source_{k}"],
                                "shuffled_instruction": te[k] - te[f"shuffled_instruction_{k}"],
                                "vs_copy_source": te[k] - te.get(f"copy_source_{k}", float("nan"))}
    return report


def main(argv=None) -> List[Dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/sandbox_tiny.yaml")
    ap.add_argument("--steps", type=int, default=0, help="0: the config's steps")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out-dir", default=None, help="write each JSON line (and the seed summary) here")
    ap.add_argument("--control-steps", type=int, default=0,
                    help="train the lr=0 control this many steps only (0: as many as the treatment). Its weights "
                         "never move, so its evaluation is the same; only the paired training-reward curve is lost")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)
    from edit_rlhf.runtime import setup_process

    setup_process(1)
    out_root = tempfile.mkdtemp(prefix="learn_grpo_")
    command = " ".join(["python", *sys.argv] if argv is None else ["learn_editor_grpo.main", *argv])
    import ray

    from edit_rlhf.cluster.pools import init_ray
    from edit_rlhf.config import GRPOConfig, load_config

    init_ray(load_config(GRPOConfig, a.config, list(a.overrides)).cluster, log_to_driver=False)  # one cluster for all runs
    t0 = time.time()
    reports = []
    for seed in a.seeds:
        rep = one_seed(a.config, seed, a.steps, a.overrides, out_root, a.control_steps)
        rep["command"] = command
        reports.append(rep)
        print(json.dumps(rep), flush=True)
        if a.out_dir:
            os.makedirs(a.out_dir, exist_ok=True)
            with open(os.path.join(a.out_dir, f"learn_editor_grpo_seed{seed}.json"), "w") as f:
                json.dump(rep, f, indent=1)
    if len(reports) > 1:
        key = "oracle_score" if "eval_oracle_score_paired" in reports[0] else "reward"
        summary = {"benchmark": "learn_editor_grpo_seeds", "command": command, "measure": f"eval {key}",
                   "seeds": a.seeds, "steps": reports[0]["steps"],
                   "eval_prompts": reports[0]["eval_prompts"], "eval_repeats": reports[0]["eval_repeats"],
                   "paired_z_by_seed": [r[f"eval_{key}_paired"]["z"] for r in reports],
                   "paired_diff_by_seed": [r[f"eval_{key}_paired"]["diff"] for r in reports],
                   "oracle_gain_by_seed": [r.get("eval_oracle_score_gain") for r in reports],
                   "control_gain_by_seed": [r.get("control_eval_oracle_score_gain") for r in reports],
                   "probe_cost_by_seed": [r.get("probe_cost") for r in reports],
                   "seconds": round(time.time() - t0, 1)}
        summary["paired_z_min"] = min(summary["paired_z_by_seed"])
        print(json.dumps(summary), flush=True)
        if a.out_dir:
            with open(os.path.join(a.out_dir, "editor_grpo_seeds.json"), "w") as f:
                json.dump(summary, f, indent=1)
        reports.append(summary)
    ray.shutdown()
    return reports


if __name__ == "__main__":
    main()
