"""Pool scaling in one run: GRPO steps with 1 rollout actor, then (after `edit-rlhf scale`-style requests)
2 rollout actors, then 2 rollout + 2 reward actors. Prints one JSON line with each phase's median step time,
generation time and rollout throughput, and their ratios to the first phase (same machine, same run).

    .venv/bin/python benchmarks/pool_scaling.py --steps-per-phase 4 [key=value ...]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/sandbox_tiny.yaml")
    ap.add_argument("--steps-per-phase", type=int, default=4)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)
    from edit_rlhf.cluster.control import request_scale
    from edit_rlhf.config import GRPOConfig, load_config
    from edit_rlhf.pipelines.grpo import GRPOTrainer
    from edit_rlhf.runtime import setup_process

    setup_process(1)
    phases = [("rollout1_reward1", None), ("rollout2_reward1", {"rollout": 2}), ("rollout2_reward2", {"reward": 2})]
    n = a.steps_per_phase
    out = tempfile.mkdtemp(prefix="pool_scaling_")
    cfg = load_config(GRPOConfig, a.config, [f"steps={n * len(phases)}", "eval_every=0", "save_every=0",
                                              "data.eval=null", "rollout.size=1", "reward.size=1",
                                              f"output_dir={out}", "tracking.experiment=edit_rlhf-bench",
                                              "tracking.log_images_every=1000"] + a.overrides)
    tr = GRPOTrainer(cfg, quiet=True)
    report = {"benchmark": "pool_scaling", "config": a.config, "steps_per_phase": n, "overrides": a.overrides,
              "cpus": os.cpu_count(), "phases": {}}
    try:
        tr.setup()
        step = 0
        for name, req in phases:
            if req:
                request_scale(cfg.output_dir, req)
            ms = [tr.train_step(step + k + 1) for k in range(n)]
            step += n
            ms = ms[1:] if n > 1 else ms  # the first step after a resize includes actor start-up
            report["phases"][name] = {
                "step_s": statistics.median(m["time/step_s"] for m in ms),
                "generate_s": statistics.median(m["time/generate_s"] for m in ms),
                "rollout_samples_per_s": statistics.median(m["throughput/rollout_samples_per_s"] for m in ms),
                "samples_per_s": statistics.median(m["throughput/samples_per_s"] for m in ms),
                "failed": sum(m["reward/failed"] for m in ms)}
    finally:
        tr.shutdown()
    base = report["phases"]["rollout1_reward1"]
    report["ratios_vs_first"] = {k: {"samples_per_s": v["samples_per_s"] / base["samples_per_s"],
                                     "rollout_samples_per_s": v["rollout_samples_per_s"] / base["rollout_samples_per_s"]}
                                 for k, v in report["phases"].items()}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
