"""Chaos soak: the main job (`edit-rlhf grpo`, tiny settings) for N steps while faults fire at random sites,
resumed whenever the driver dies, against the same run without faults.

Faults (edit_rlhf.faults, EDIT_RLHF_FAULT_RATES): each arrival at a site kills its process with the site's
probability — a rollout actor generating (`rollout`), a reward actor scoring (`score`), a learner rank training
(`train`), the driver mid-step (`step`) and the driver half-way through writing a checkpoint (`checkpoint`).
Rollout and reward actors are restarted by Ray; a learner or driver death ends the driver process, and the soak
starts it again with `--resume` (a fresh start with `--overwrite` when no checkpoint exists yet).

Prints one JSON line: faults fired by kind, resumes, steps completed, prompts consumed and samples trained
beside the fault-free run's, duplicate and lost steps/samples from the per-step ledger in state.json (which
prompts each step trained), and whether the final LoRA equals the fault-free run's (bitwise, and max |diff|).

    python benchmarks/chaos_soak.py --steps 60 --record benchmarks/results/chaos_soak.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATES = "rollout=0.025,score=0.025,train=0.015,step=0.02,checkpoint=0.02"


def job_args(config: str, out: str, steps: int, overrides: List[str]) -> List[str]:
    return [sys.executable, "-m", "edit_rlhf", "grpo", "--config", config, "--quiet",
            f"output_dir={out}/out", f"tracking.dir={out}/mlruns", f"steps={steps}", "save_every=1", "eval_every=0",
            "data.eval=null", "algo.prompts_per_step=2", "algo.group_size=4", "sampling.num_steps=4",
            "sampling.train_timesteps=3", "sampling.sde_steps=0", "rollout.size=2", "reward.size=2",
            "rollout.max_restarts=1000", "reward.max_restarts=1000", "reward.max_retries=4", "learner.size=1",
            "cluster.num_cpus=8", "tracking.log_images_every=100000", "checkpoint.keep_last=2", *overrides]


def run_until_done(args: List[str], out: str, env: Dict[str, str], max_launches: int) -> Dict[str, Any]:
    """Launch the driver; relaunch with --resume after every death, until it exits 0."""
    launches, codes = 0, []
    t0 = time.time()
    while launches < max_launches:
        has_ckpt = os.path.exists(os.path.join(out, "out", "checkpoints", "latest"))
        extra = ["--resume"] if has_ckpt else ["--overwrite"]
        launches += 1
        with open(os.path.join(out, f"driver_{launches}.log"), "w") as log:
            p = subprocess.run(args + extra, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        codes.append(p.returncode)
        if p.returncode == 0:
            break
    return {"launches": launches, "exit_codes": codes, "seconds": round(time.time() - t0, 1)}


def final_state(out: str) -> Dict[str, Any]:
    from edit_rlhf.checkpoint import Checkpoints, load_state

    return load_state(Checkpoints(os.path.join(out, "out")).latest())


def lora(out: str) -> Dict[str, Any]:
    from safetensors.torch import load_file

    d = os.path.join(out, "out", "final_lora")
    tensors = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(d, f)))
    return tensors


def ledger_check(ledger: List[List[int]], steps: int) -> Dict[str, int]:
    seen = Counter(int(x[0]) for x in ledger)
    return {"duplicate_steps": sum(n - 1 for n in seen.values() if n > 1),
            "lost_steps": sum(1 for s in range(1, steps + 1) if s not in seen)}


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "sandbox_tiny.yaml"))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rates", default=RATES, help="site=probability per arrival, comma-separated")
    ap.add_argument("--max-launches", type=int, default=30)
    ap.add_argument("--record", default=None, help="append the JSON line to this file")
    ap.add_argument("--keep", action="store_true", help="keep the run folders")
    ap.add_argument("overrides", nargs="*", help="more grpo overrides (e.g. data.train=..., editor.path=...)")
    a = ap.parse_args(argv)
    from edit_rlhf.runtime import setup_process

    setup_process(1)
    root = tempfile.mkdtemp(prefix="chaos_soak_")
    base_env = {k: v for k, v in os.environ.items()
                if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "EDIT_RLHF_FAULTS", "EDIT_RLHF_FAULT_RATES")}
    base_env.setdefault("RAY_AUTH_MODE", "disabled")
    t0 = time.time()
    runs: Dict[str, Dict[str, Any]] = {}
    for name, rates in (("fault_free", None), ("chaos", a.rates)):
        out = os.path.join(root, name)
        os.makedirs(out)
        env = dict(base_env)
        log = os.path.join(out, "faults.log")
        if rates:
            env.update(EDIT_RLHF_FAULT_RATES=rates, EDIT_RLHF_FAULT_LOG=log)
        r = run_until_done(job_args(a.config, out, a.steps, a.overrides), out, env, a.max_launches)
        if r["exit_codes"][-1] != 0:
            tail = open(os.path.join(out, f"driver_{r['launches']}.log")).read()[-3000:]
            raise SystemExit(f"{name}: no successful finish in {r['launches']} launches; last log:\n{tail}")
        faults = Counter(line.split()[1] for line in open(log)) if os.path.exists(log) else Counter()
        runs[name] = {**r, "state": final_state(out), "faults": dict(faults), "dir": out}
    ff, ch = runs["fault_free"], runs["chaos"]
    la, lb = lora(ff["dir"]), lora(ch["dir"])
    same_keys = sorted(la) == sorted(lb)
    max_diff = max(float((la[k].double() - lb[k].double()).abs().max()) for k in la) if same_keys else None
    bitwise = same_keys and all(bool((la[k] == lb[k]).all()) for k in la)
    c_ff, c_ch = ff["state"]["counters"], ch["state"]["counters"]
    led = ledger_check(ch["state"].get("ledger", []), a.steps)
    per_step = a.steps and c_ff["samples_trained"] // a.steps
    rep = {"benchmark": "chaos_soak", "steps": a.steps, "rates": a.rates,
           "faults_by_kind": ch["faults"], "faults_total": sum(ch["faults"].values()),
           "resumes": ch["launches"] - 1, "driver_exit_codes": ch["exit_codes"],
           "steps_completed": ch["state"]["step"], "fault_free_steps_completed": ff["state"]["step"],
           "prompts_consumed": c_ch["prompts_consumed"], "fault_free_prompts_consumed": c_ff["prompts_consumed"],
           "samples_trained": c_ch["samples_trained"], "fault_free_samples_trained": c_ff["samples_trained"],
           "duplicate_steps": led["duplicate_steps"], "lost_steps": led["lost_steps"],
           "duplicate_samples": led["duplicate_steps"] * per_step, "lost_samples": led["lost_steps"] * per_step,
           "ledger_equal_to_fault_free": ch["state"].get("ledger") == ff["state"].get("ledger"),
           "retries": {k: c_ch.get(k, 0) for k in ("generate_retries", "score_retries", "score_failures",
                                                   "stale_generations", "actor_resyncs")},
           "final_lora_bitwise_equal": bitwise, "final_lora_max_abs_diff": max_diff,
           "seconds": {"fault_free": ff["seconds"], "chaos": ch["seconds"], "total": round(time.time() - t0, 1)},
           "cpus": os.cpu_count(), "overrides": a.overrides,
           "command": " ".join(["python", "benchmarks/chaos_soak.py", *(argv if argv is not None else sys.argv[1:])])}
    print(json.dumps(rep), flush=True)
    if a.record:
        os.makedirs(os.path.dirname(os.path.abspath(a.record)), exist_ok=True)
        with open(a.record, "a") as f:
            f.write(json.dumps(rep) + "\n")
    if not a.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"run folders kept in {root}", file=sys.stderr)
    return rep


if __name__ == "__main__":
    main()
