"""GRPO step performance in one run (issue 13): how close a step is to its slowest stage (pipelined and
on-policy), what Ray costs against the same work in one process, the SDE rollout sampler against the stock
FluxKontextPipeline, the LoRA sync against a memcpy bound, vLLM vs HF RRM scoring throughput, and step time as
prompts per step grow. Prints one JSON line and appends it to benchmarks/results/perf_step.jsonl.

    .venv/bin/python benchmarks/perf_step.py [--steps 4] [--quick] [--skip vllm local ...] [key=value ...]

Ratios are taken inside one run (the 2-core machines are shared: absolute seconds move by +-30 % between runs).
Every measurement is the median over `--steps` steps after one warm-up step. Keys: benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

PARTS = ("offpolicy", "onpolicy", "prompts", "local", "sde", "sync", "vllm")
PROMPTS = (2, 4, 8)


# ------------------------------------------------------------------ pure helpers (tests/test_perf_step.py)
def rollout_stage_s(m: Dict[str, float]) -> float:
    """Generation + scoring of the step's batch: `time/rollout_stage_s`, or (before the pipelined driver)
    `time/generate_s + time/score_tail_s`."""
    if "time/rollout_stage_s" in m:
        return float(m["time/rollout_stage_s"])
    return float(m["time/generate_s"]) + float(m["time/score_tail_s"])


def step_over_slowest(history: Sequence[Dict[str, float]]) -> Dict[str, float]:
    """median step time / median over steps of the slowest stage, max(rollout stage, learner).

    1.0 means a step costs no more than its slowest stage (perfect pipelining); on-policy it is about
    (rollout + learner + sync) / max(rollout, learner)."""
    if not history:
        raise ValueError("step_over_slowest: no steps")
    step = statistics.median(float(m["time/step_s"]) for m in history)
    slowest = statistics.median(max(rollout_stage_s(m), float(m["time/learner_s"])) for m in history)
    return {"ratio": step / slowest, "step_s": step, "slowest_stage_s": slowest,
            "rollout_stage_s": statistics.median(rollout_stage_s(m) for m in history),
            "learner_s": statistics.median(float(m["time/learner_s"]) for m in history),
            "sync_s": statistics.median(float(m["time/sync_s"]) for m in history)}


def sync_bound_s(nbytes: int, bandwidth: float) -> float:
    """The time to copy `nbytes` once at `bandwidth` bytes/s: a lower bound for moving the LoRA anywhere."""
    if nbytes < 0 or bandwidth <= 0:
        raise ValueError(f"sync_bound_s: need nbytes >= 0 and bandwidth > 0 (got {nbytes}, {bandwidth})")
    return nbytes / bandwidth


def tensor_bytes(state: Dict[str, Any]) -> int:
    return int(sum(v.numel() * v.element_size() for v in state.values()))


def memcpy_bandwidth(nbytes: int = 1 << 28, repeats: int = 5) -> float:
    """Bytes/s of `torch.clone` of one large fp32 tensor (median of `repeats`): the bytes copied over the time."""
    import torch

    x = torch.ones(nbytes // 4, dtype=torch.float32)
    x.clone()  # first touch of the allocator's pages is not the copy
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        y = x.clone()
        ts.append(time.perf_counter() - t)
        del y
    return nbytes / statistics.median(ts)


def has_off_policy() -> bool:
    from edit_rlhf.config import GRPOConfig

    return hasattr(GRPOConfig().algo, "off_policy_steps")


# ------------------------------------------------------------------ measurements
def _cfg(config: str, overrides: Sequence[str], tmp: str, name: str, steps: int):
    from edit_rlhf.config import GRPOConfig, load_config

    base = [f"steps={steps + 2}", "eval_every=0", "save_every=0", "data.eval=null",
            f"output_dir={os.path.join(tmp, name)}", f"tracking.dir={os.path.join(tmp, 'mlruns')}",
            "tracking.experiment=edit_rlhf-perf", "tracking.log_images_every=100000"]
    return load_config(GRPOConfig, config, base + list(overrides))


def ray_steps(config: str, overrides: Sequence[str], tmp: str, name: str, steps: int) -> List[Dict[str, float]]:
    """The driver's per-step metrics (its history) of `steps` steps after one warm-up step, through
    `GRPODriver.run` (the job's own loop). One more step runs after them and is not counted: the last step of a run
    never samples ahead (the pipeline drains), so a pipelined run's last step would show no rollout stage."""
    from edit_rlhf.pipelines.grpo import GRPODriver

    cfg = _cfg(config, overrides, tmp, name, steps)
    tr = GRPODriver(cfg, quiet=True)
    tr.run()
    return tr.history[1:steps + 1]


class LocalGRPO:
    """The on-policy step's work in this process, without Ray: EditorRollout core, the reward worker's scoring,
    GRPOLearner (world size 1, gloo), the LoRA handed to the rollout by reference - the same prompts, seeds,
    group size and sampler steps as the driver."""

    def __init__(self, cfg):
        from edit_rlhf.actors.reward import RewardWorker
        from edit_rlhf.ports import free_port
        from edit_rlhf.grpo.learner import GRPOLearner
        from edit_rlhf.grpo.plan import PromptSampler
        from edit_rlhf.grpo.rollout import EditorRollout
        from edit_rlhf.pipelines.driver import absolutize
        from edit_rlhf.pipelines.grpo import GRPODriver, prepare_inputs

        prepare_inputs(cfg)
        absolutize(cfg, GRPODriver.path_keys)
        self.cfg = cfg
        splits = {"train": cfg.data.train}
        self.rollout = EditorRollout(cfg, splits, "rollout-local")
        # the reward actor's own class body (its `score` is the work the driver waits for), built without Ray
        self.reward = RewardWorker.__ray_metadata__.modified_class(cfg.reward, splits, "reward-local",
                                                                   cfg.cluster.torch_threads)
        self.learner = GRPOLearner(cfg, 0, 1, "127.0.0.1", free_port())
        self.sampler = PromptSampler(len(self.rollout.data["train"]), cfg.seed)
        self.rollout.set_lora(self.learner.lora_state(), self.learner.version)

    def step(self, step: int) -> float:
        import numpy as np

        from edit_rlhf.algorithms.flow_grpo import group_advantages
        from edit_rlhf.grpo.plan import rank_plan, sample_seeds
        from edit_rlhf.grpo.records import LearnerShard

        cfg, a = self.cfg, self.cfg.algo
        t = time.time()
        indices = self.sampler.next(a.prompts_per_step)
        out = []
        for s, i in enumerate(indices):
            meta, images, data = self.rollout.rollout("train", i, sample_seeds(cfg.seed, step, s, a.group_size))
            out.append((meta, data, self.reward.score("train", i, images)))
        rewards = np.array([sc["rewards"] for _, _, sc in out], dtype=np.float64)
        keys = [(m["prompt_id"], m["instruction"]) for m, _, _ in out for _ in range(a.group_size)]
        adv = group_advantages(rewards.reshape(-1), keys, a.std_eps, a.adv_clip_max, a.global_std).numpy()
        adv = np.nan_to_num(adv.reshape(rewards.shape), nan=0.0)
        plan = rank_plan(len(out), a.group_size, adv, 1, a.num_minibatches, cfg.seed, step)
        self.learner.train_on(LearnerShard(plan[0], {g: out[g][1] for mb in plan[0] for g, _, _ in mb}))
        self.rollout.set_lora(self.learner.lora_state(), self.learner.version)
        return time.time() - t

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def sde_vs_pipeline(rollout, repeats: int) -> Dict[str, float]:
    """Median seconds of one group of G edits through EditorRollout.rollout (SDE + log-probs, the LoRA as trained
    so far, fused when `lora.fuse_rollout`) and through a plain FluxKontextPipeline (no LoRA) at the same steps,
    resolution and batch; also the rollout with the LoRA unfused (the state before fusing) and with the adapter
    switched off, to tell what the LoRA itself costs. Repeats interleaved, after one warm-up each."""
    import torch
    from diffusers import FluxKontextPipeline
    from PIL import Image

    cfg = rollout.cfg
    g, r = cfg.algo.group_size, cfg.editor.resolution
    pipe = FluxKontextPipeline.from_pretrained(cfg.editor.path, torch_dtype=rollout.editor.transformer.dtype)
    pipe.set_progress_bar_config(disable=True)
    _, src, instr = rollout._source("train", 0)
    seeds = list(range(g))
    tr = rollout.editor.transformer
    fused = rollout.fused

    def sde():
        t = time.perf_counter()
        rollout.rollout("train", 0, seeds)
        return time.perf_counter() - t

    def stock():
        t = time.perf_counter()
        with torch.no_grad():  # max_area: else the pipeline scales height x width up to its default 1024^2 area
            pipe(image=Image.fromarray(src), prompt=instr, height=r, width=r, num_inference_steps=cfg.sampling.num_steps,
                 guidance_scale=cfg.editor.guidance_scale, num_images_per_prompt=g,
                 generator=[torch.Generator().manual_seed(s) for s in seeds],
                 max_sequence_length=cfg.editor.max_sequence_length, output_type="np", _auto_resize=False,
                 max_area=r * r)
        return time.perf_counter() - t

    def unfused(adapters_off=False):
        rollout.unfuse()
        if adapters_off:
            tr.disable_adapters()
        try:
            return sde()
        finally:
            if adapters_off:
                tr.enable_adapters()
            if fused:
                rollout.fuse()

    fns = {"sde_s": sde, "pipeline_s": stock, "sde_unfused_s": unfused,
           "sde_adapters_off_s": lambda: unfused(adapters_off=True)}
    for f in fns.values():
        f()  # warm-up
    ts: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            ts[k].append(f())
    out = {k: statistics.median(v) for k, v in ts.items()}
    out.update(fused=fused, repeats=repeats, unfused_over_pipeline=out["sde_unfused_s"] / out["pipeline_s"],
               adapters_off_over_pipeline=out["sde_adapters_off_s"] / out["pipeline_s"])
    return out


def vllm_vs_hf(rrm: str, sandbox: str, groups: Sequence[int], prompts: int, max_tokens: int) -> Dict[str, Any]:
    """Edits per second of RRM scoring on vLLM and HF at each group size (benchmarks/rrm_inference.py's
    `scoring`: `prompts` batches after one warm-up batch, greedy, compact prompt)."""
    from rrm_inference import load_inputs, scoring

    ds, cands = load_inputs(sandbox, prompts)
    out: Dict[str, Any] = {}
    for g in groups:
        for backend in ("vllm", "hf"):
            r = scoring(backend, rrm, ds, cands, prompts, g, max_tokens)
            out[f"{backend}_{g}_edits_per_s"] = g / r["latency_s_mean"]
            out[f"{backend}_{g}_latency_s"] = r["latency_s_mean"]
        out[f"ratio_{g}"] = out[f"vllm_{g}_edits_per_s"] / out[f"hf_{g}_edits_per_s"]
    return out


def git_commit() -> Optional[str]:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return None


# ------------------------------------------------------------------ the run
def main(argv=None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/sandbox_tiny.yaml")
    ap.add_argument("--steps", type=int, default=4, help="measured steps per setting (after 1 warm-up step)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 step, G=2, 4 sampler steps, short RRM output")
    ap.add_argument("--skip", nargs="*", default=[], choices=PARTS, help="parts not to run (their keys are null)")
    ap.add_argument("--rrm", default="models/sandbox/rrm_sft")
    ap.add_argument("--sandbox", default=".cache/sandbox")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "perf_step.jsonl"),
                    help="file the line is appended to ('' for none)")
    ap.add_argument("--note", default="", help="free text recorded with the line (e.g. machine load)")
    ap.add_argument("overrides", nargs="*", help="config overrides for every setting, key=value")
    a = ap.parse_args(argv)
    import ray

    from edit_rlhf.cluster.pools import init_ray
    from edit_rlhf.runtime import setup_process

    setup_process(1)
    steps = 1 if a.quick else a.steps
    over = list(a.overrides)
    if a.quick:
        over = ["algo.group_size=2", "sampling.num_steps=4", "sampling.eval_num_steps=4"] + over
    skip = set(a.skip)
    tmp = tempfile.mkdtemp(prefix="perf_step_")
    cfg = _cfg(a.config, over, tmp, "cfg", steps)
    p_cfg = int(cfg.algo.prompts_per_step)
    line: Dict[str, Any] = {
        "benchmark": "perf_step", "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(), "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], "config": a.config,
        "overrides": over, "quick": a.quick, "steps_per_measurement": steps, "warmup_steps": 1,
        "prompts_per_step": p_cfg, "group_size": int(cfg.algo.group_size), "sampler_steps": int(cfg.sampling.num_steps),
        "note": a.note, "raw": {}}
    keys = ("step_over_slowest", "step_over_slowest_onpolicy", "overhead", "sde_over_pipeline", "lora_sync_s",
            "lora_sync_bound_s", "vllm_over_hf_16", "vllm_over_hf_32", "step_s_by_prompts")
    line.update({k: None for k in keys})
    raw = line["raw"]
    t_all = time.time()
    init_ray(cfg.cluster, log_to_driver=False)
    try:
        if "offpolicy" not in skip:
            if has_off_policy():
                h = ray_steps(a.config, over + ["algo.off_policy_steps=1"], tmp, "offpolicy", steps)
                raw["offpolicy"] = step_over_slowest(h)
                line["step_over_slowest"] = raw["offpolicy"]["ratio"]
            else:
                raw["offpolicy"] = "algo.off_policy_steps is not in this branch's GRPOConfig"
        # the on-policy run at the config's prompts per step also gives overhead's numerator and the sync time
        need_on = not {"onpolicy", "local", "sync"} <= skip or ("prompts" not in skip and p_cfg in PROMPTS)
        on = ray_steps(a.config, over, tmp, "onpolicy", steps) if need_on else []
        if on:
            raw["onpolicy"] = step_over_slowest(on)
            line["step_over_slowest_onpolicy"] = raw["onpolicy"]["ratio"]
        if "prompts" not in skip:
            by = {}
            for p in PROMPTS:
                h = on if (p == p_cfg and on) else ray_steps(a.config, over + [f"algo.prompts_per_step={p}"], tmp,
                                                             f"prompts{p}", steps)
                by[str(p)] = statistics.median(m["time/step_s"] for m in h)
            line["step_s_by_prompts"] = by
        if "sync" not in skip and on:
            line["lora_sync_s"] = raw["lora_sync_s"] = statistics.median(m["time/sync_s"] for m in on)
    finally:
        ray.shutdown()
    local = None
    if "local" not in skip or "sde" not in skip or "sync" not in skip:
        local = LocalGRPO(_cfg(a.config, over, tmp, "local", steps))
    try:
        if "local" not in skip:
            local.step(1)  # warm-up
            ts = [local.step(s) for s in range(2, steps + 2)]
            raw["local_step_s"] = statistics.median(ts)
            if on:
                line["overhead"] = raw["onpolicy"]["step_s"] / raw["local_step_s"] - 1.0
        if "sync" not in skip:
            nbytes = tensor_bytes(local.learner.lora_state())
            bw = memcpy_bandwidth()
            raw.update(lora_bytes=nbytes, memcpy_bytes_per_s=bw)
            line["lora_sync_bound_s"] = sync_bound_s(nbytes, bw)
        if "sde" not in skip:
            raw["sde"] = sde_vs_pipeline(local.rollout, 2 if a.quick else 8)
            line["sde_over_pipeline"] = raw["sde"]["sde_s"] / raw["sde"]["pipeline_s"]
    finally:
        if local is not None:
            local.close()
    if "vllm" not in skip:
        raw["vllm"] = vllm_vs_hf(a.rrm, a.sandbox, (16, 32), 1 if a.quick else 2, 32 if a.quick else 256)
        line["vllm_over_hf_16"], line["vllm_over_hf_32"] = raw["vllm"]["ratio_16"], raw["vllm"]["ratio_32"]
    shutil.rmtree(tmp, ignore_errors=True)  # the runs' checkpoints and MLflow store: only the line is kept
    line["seconds"] = round(time.time() - t_all, 1)
    print(json.dumps(line), flush=True)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "a") as f:
            f.write(json.dumps(line) + "\n")
    return line


if __name__ == "__main__":
    main()
