"""Learning benchmark: does Flow-GRPO raise the reward, and is what it learned *editing*?

Runs the GRPO pipeline twice with identical prompts and noise seeds: the treatment (config lr) and the
control (lr = 0). Prints one JSON line with, for each run, the mean training reward over the first and last
20% of steps, the paired (treatment - control, same step) difference over the last 20% with its standard
error and z, the final ODE evaluation (reward and oracle score), and the probes of what was learned:
the same evaluation with shuffled sources and with shuffled instructions, and the copy-the-source baseline.
If shuffling the instruction costs nothing, the policy ignores the text; if shuffling the source costs nothing,
it ignores the image (a "global shift"); if the reward sits at the copy-source baseline, it learned to copy.

    .venv/bin/python benchmarks/learn_editor_grpo.py --steps 60 [key=value ...]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(cfg) -> dict:
    from edit_rlhf.pipelines.grpo import GRPOTrainer

    tr = GRPOTrainer(cfg, quiet=True)
    s = tr.run()
    s["rewards"] = [m["reward/mean"] for m in tr.history]
    s["oracle"] = [m.get("reward/oracle_score") for m in tr.history]
    s["final_eval"] = tr.eval_history[-1] if tr.eval_history else {}
    return s


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/sandbox_tiny.yaml")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)
    from edit_rlhf.config import GRPOConfig, load_config
    from edit_rlhf.runtime import setup_process
    from edit_rlhf.stats import paired_difference, windows

    setup_process(1)
    import ray

    out_root = tempfile.mkdtemp(prefix="learn_grpo_")
    base = [f"steps={a.steps}", "eval_every=0", "save_every=0", "tracking.experiment=edit_rlhf-bench",
            "tracking.log_images_every=1000"] + list(a.overrides)
    t0 = time.time()
    results = {}
    for name, extra in (("treatment", []), ("control", ["optim.lr=0"])):
        cfg = load_config(GRPOConfig, a.config, base + extra + [f"output_dir={out_root}/{name}",
                                                                f"tracking.run_name=learn-{name}"])
        if not ray.is_initialized():
            from edit_rlhf.cluster.pools import init_ray

            init_ray(cfg.cluster, log_to_driver=False)
        results[name] = run(cfg)
    ray.shutdown()
    tr, ct = results["treatment"], results["control"]
    report = {"benchmark": "learn_editor_grpo",
              "command": " ".join(["python", *sys.argv] if argv is None else ["learn_editor_grpo.main", *argv]),
              "config": a.config, "steps": a.steps, "overrides": a.overrides,
              "scorer": load_config(GRPOConfig, a.config, base).reward.scorer, "lr": None,
              "seconds": round(time.time() - t0, 1)}
    report["lr"] = load_config(GRPOConfig, a.config, base).optim.lr
    for name, s in results.items():
        w = windows(s["rewards"])
        ev = {k.replace("eval/", ""): round(v, 5) for k, v in s["final_eval"].items()
              if k.startswith("eval/") and not k.endswith(("seconds", "failed"))}
        report[name] = {"reward_first20": w["first20"], "reward_last20": w["last20"], "gain": w["gain"],
                        "final_eval": ev, "seconds": s["seconds"]}
        if any(o is not None for o in s["oracle"]):
            wo = windows(s["oracle"])
            report[name].update(oracle_first20=wo["first20"], oracle_last20=wo["last20"])
    report["paired"] = paired_difference(tr["rewards"], ct["rewards"])
    report["learned"] = bool(report["treatment"]["gain"] > report["control"]["gain"] and report["paired"]["z"] > 2)
    te = report["treatment"]["final_eval"]
    if "shuffled_source_reward" in te:
        report["probe_cost"] = {"shuffled_source": te["reward"] - te["shuffled_source_reward"],
                                "shuffled_instruction": te["reward"] - te["shuffled_instruction_reward"],
                                "vs_copy_source": te["reward"] - te.get("copy_source_reward", float("nan"))}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
