"""`edit-rlhf rrm-gcpo`: GCPO of the Edit-RRM on human (here: oracle-labelled, noisy) preference pairs.

Per step: draw P pairs -> the reward pool (vLLM engines, `actors.rrm_rollout`) samples N traces for the
preferred image and N for the other (temperature > 0, vision/special tokens suppressed) -> the driver parses
scores and computes the cross-group win/loss-ratio rewards and group-centred advantages (`rrm_train.gcpo`)
-> K DeepSpeed learner ranks recompute the traces' token log-probs on the same prompt tokens and apply
PPO-clip with a per-trace token mean (+ optional KL to the SFT reference) -> rank 0 packs the new weights
into buckets, the driver puts them once and every engine loads them in one call; each engine's reported
version must equal the learner's. Held-out pairwise accuracy at each eval; atomic checkpoints with the data
position, RNG and MLflow run id; `resume=auto` continues in the same run and re-syncs the engines first.
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np

from edit_rlhf.checkpoint import publish
from edit_rlhf.cluster.sync import SyncError  # noqa: F401 (a weight sync whose engines disagree)
from edit_rlhf.faults import maybe_fail
from edit_rlhf.config import to_dict
from edit_rlhf.redaction import scrub

CORE = "edit_rlhf.rrm_train.gcpo_learner:GCPOLearner"


class PairSampler:
    """Pairs per step: consecutive slices of per-epoch shuffles (state = the position)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.pos = n, seed, 0

    def next(self, k: int) -> List[int]:
        out = []
        while len(out) < k:
            epoch, off = divmod(self.pos, self.n)
            order = np.random.default_rng([self.seed, epoch, 5]).permutation(self.n)
            take = order[off: off + k - len(out)]
            out += [int(i) for i in take]
            self.pos += len(take)
        return out


def absolutize(cfg) -> None:
    cfg.model.path = os.path.abspath(cfg.model.path)
    cfg.rollout.engine.path = os.path.abspath(cfg.rollout.engine.path or cfg.model.path)
    cfg.data.train = os.path.abspath(cfg.data.train)
    if cfg.data.eval:
        cfg.data.eval = os.path.abspath(cfg.data.eval)
    cfg.output_dir = os.path.abspath(cfg.output_dir)
    cfg.tracking.dir = os.path.abspath(cfg.tracking.dir)


class RRMGCPOTrainer:
    def __init__(self, cfg, quiet: bool = False, argv: Optional[List[str]] = None):
        self.cfg = cfg
        self.quiet = quiet
        self.argv = argv
        self.history: List[Dict[str, float]] = []
        self.evals: List[Dict[str, float]] = []
        self.eval_scores: List[Dict[str, Any]] = []  # per eval: step and (winner, loser) scores per held-out pair
        self.start_step = 1
        self.version = 0
        self.counters = {"pairs_consumed": 0, "traces_sampled": 0, "parse_failures": 0, "syncs": 0,
                         "skipped_updates": 0, "actor_resyncs": 0}

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        import ray

        from edit_rlhf.actors.rrm_rollout import RRMRolloutWorker
        from edit_rlhf.checkpoint import Checkpoints
        from edit_rlhf.cluster.pools import ActorPool, LearnerGroup, init_ray
        from edit_rlhf.config import ConfigError
        from edit_rlhf.rrm.prompt import RRMPrompt
        from edit_rlhf.rrm_train.data import load_pairs
        from edit_rlhf.tracking import Tracker

        cfg = self.cfg
        t0 = time.time()
        absolutize(cfg)
        if not os.path.isfile(os.path.join(cfg.model.path, "config.json")):
            raise ConfigError(f"config key 'model.path': {cfg.model.path} is not a model folder (no config.json)")
        self.train = load_pairs(cfg.data.train, cfg.data.category_column)
        self.eval = (load_pairs(cfg.data.eval, cfg.data.category_column, cfg.data.eval_size)
                     if cfg.data.eval else None)
        self.prompt = RRMPrompt.from_path(cfg.model.path, cfg.prompt.style, cfg.prompt.system)
        self.sampler = PairSampler(len(self.train), cfg.seed)
        self.ckpt = Checkpoints.for_run(cfg)
        resume_dir, state = self.ckpt.resume_state(cfg.resume, cfg.overwrite)
        self.started_ray = not ray.is_initialized()
        init_ray(cfg.cluster)
        self.tracker = Tracker.for_run(cfg, state, {"pipeline": "rrm-gcpo", "model": cfg.model.path},
                                       default_name="rrm-gcpo")
        if state is None:
            self.tracker.set_tags({"train_pairs": len(self.train), "ties_dropped": self.train.stats["ties_dropped"]})
        env = cfg.cluster.runtime_env()
        ecfg = cfg.rollout.engine
        from edit_rlhf.cluster.sync import make_transport
        from edit_rlhf.transport import choose_transport

        on_gpu = bool(cfg.rollout.num_gpus and cfg.learner.num_gpus and ecfg.backend == "vllm")
        kind = choose_transport(cfg.sync.transport, on_gpu)
        if kind == "nccl":
            ecfg.vllm.weight_transfer = "nccl"
        self.transport = make_transport(kind, "weight_buckets", "load_weights", ecfg.vllm.tensor_parallel_size)
        self.rollout = ActorPool("rrm_rollout", RRMRolloutWorker, cfg.rollout,
                                 lambda i: (ecfg, f"rrm-rollout-{i}", cfg.cluster.torch_threads, cfg.seed + i),
                                 runtime_env=env)
        self.learner = LearnerGroup("rrm_gcpo", CORE, cfg, cfg.learner, cfg.cluster.torch_threads, runtime_env=env)
        self.learner_info = self.learner.infos
        self.rollout_info = self.rollout.wait_ready()
        self.transport.setup(self.learner, self.rollout)
        if state is not None:
            self._restore(resume_dir, state)
        self.setup_seconds = time.time() - t0
        self.last_sync = self._sync()  # engines hold exactly the learner's weights (also after a resume)
        self.probe = self._probe_trace()

    def _restore(self, step_dir: str, state: Dict[str, Any]) -> None:
        self.learner.broadcast("load_checkpoint", os.path.join(step_dir, "learner"))
        self.sampler.pos = int(state["sampler_pos"])
        self.counters.update(state.get("counters", {}))
        self.history = list(state.get("history", []))
        self.evals = list(state.get("evals", []))
        self.start_step = int(state["step"]) + 1
        np_state = state["numpy_rng"]
        np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
        random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python_rng"]))
        self.tracker.set_tags({f"resumed_at_step_{self.start_step}": step_dir})
        if not self.quiet:
            print(f"[resume] from {step_dir}: continuing at step {self.start_step} (RRM v{state['rrm_version']}, "
                  f"MLflow run {state['mlflow_run_id']})", flush=True)

    # ------------------------------------------------------------------ weight sync
    def _sync(self, only: Optional[List[int]] = None) -> Dict[str, float]:
        """The learner's weights into the engines through `sync.transport` (edit_rlhf.cluster.sync): one bucketed
        object put once and loaded by every engine in one call (object_store), or one NCCL broadcast (nccl)."""
        t = time.time()
        self.version = self.transport.push(self.learner, self.rollout, only)
        self.counters["syncs"] += 1
        return {"time/sync_s": time.time() - t, "sync/version": self.version}

    def _probe_trace(self):
        """A fixed trace for sync checks: the first eval (or train) pair's winner, greedy, sampled once now."""
        import ray

        from edit_rlhf.rrm.engine import SamplingSpec
        from edit_rlhf.rrm_train.evaluate import pair_eval_requests

        if not self.cfg.sync.probe:
            return None
        src = self.eval if self.eval is not None else self.train
        req = pair_eval_requests(self.prompt, src.head(1), self.cfg.seed)[0]
        comps, _ = ray.get(self.rollout.actors[0].generate.remote([req], SamplingSpec(max_tokens=
                                                                                      self.cfg.rollout.max_tokens)))
        ids = comps[0][0].token_ids
        return (req, ids) if ids else None

    def _probe(self) -> Dict[str, float]:
        """Log-probs of the fixed trace on engine 0 and on the learner (same weights after a sync)."""
        import ray

        if self.probe is None:
            return {}
        req, ids = self.probe
        try:
            e = ray.get(self.rollout.actors[0].score_completion.remote(req, ids))
        except ray.exceptions.RayTaskError as err:  # e.g. a trace that re-tokenizes differently
            return {"sync/probe_error": 1.0} if "re-tokenizes" in str(err) else {}
        lr = ray.get(self.learner.actors[0].call.remote("score_completion", req, ids))
        d = np.abs(np.asarray(e) - np.asarray(lr))
        m = {"sync/probe_lp_absdiff_max": float(d.max()), "sync/probe_lp_mean_engine": float(np.mean(e)),
             "sync/probe_lp_mean_learner": float(np.mean(lr))}
        if getattr(self, "_probe_prev", None) is not None:
            m["sync/probe_lp_change"] = float(np.abs(np.asarray(e) - self._probe_prev).max())
        self._probe_prev = np.asarray(e)
        return m

    def _engines(self) -> List[Any]:
        """Live engines holding the learner's weights: health-check the pool and re-sync restarted ones."""
        from edit_rlhf.cluster.pools import PoolError

        h = self.rollout.health_check(timeout_s=self.cfg.rollout.timeout_s)
        if not self.rollout.alive():
            raise PoolError("pool 'rrm_rollout': no engine answers the health check")
        stale = [i for i, info in h["infos"].items() if info.get("version") != self.version]
        if stale:
            self._sync(only=stale)
            self.counters["actor_resyncs"] = self.counters.get("actor_resyncs", 0) + len(stale)
        return [self.rollout.actors[i] for i in self.rollout.alive()]

    # ------------------------------------------------------------------ one step
    def step(self, step: int) -> Dict[str, float]:
        import ray

        from edit_rlhf.rrm.engine import SamplingSpec
        from edit_rlhf.rrm_train.evaluate import generate_on
        from edit_rlhf.rrm_train.gcpo import (
            PairRollout, pair_requests, rank_plan, score_pair, step_diagnostics, trace_items,
        )

        cfg, a = self.cfg, self.cfg.algo
        t_step = time.time()
        idx = self.sampler.next(a.pairs_per_step)
        pairs = [self.train[i] for i in idx]
        reqs = []
        for p in pairs:
            reqs += list(pair_requests(self.prompt.text(p.instruction, p.principles), p.source, p.winner, p.loser,
                                       cfg.seed, step, p.id))
        r = cfg.rollout
        spec = SamplingSpec(n=a.group_size, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                            max_tokens=r.max_tokens, logprobs=True)
        t_gen = time.time()
        comps, versions = generate_on(self._engines(), reqs, spec, r.timeout_s)
        gen_s = time.time() - t_gen
        if versions != {self.version}:
            raise SyncError(f"step {step}: traces from engine versions {sorted(versions)}, learner v{self.version}")
        maybe_fail("driver", "step")
        rolls = [score_pair(PairRollout(k, p.category, 2 * k, 2 * k + 1, comps[2 * k], comps[2 * k + 1]),
                            len(p.principles), a.failure, a.std_norm) for k, p in enumerate(pairs)]
        items = trace_items(rolls)
        m = step_diagnostics(rolls, items)
        plan, totals = rank_plan(items, a.pairs_per_step // a.num_minibatches, cfg.learner.size, a.micro_batch_size,
                                 a.skip_zero_advantage and a.beta == 0)
        lm: Dict[str, float] = {}
        sync_m: Dict[str, float] = {}
        t_learn = time.time()
        if totals:
            req_ref = ray.put(reqs)
            lm = self.learner.call_ranks("train_step", [(req_ref, plan[k], totals) for k in range(cfg.learner.size)])[0]
            learn_s = time.time() - t_learn
            sync_m = self._sync()
            sync_m.update(self._probe())
        else:  # every group had zero advantage: nothing to learn, weights (and version) unchanged
            learn_s = 0.0
            self.counters["skipped_updates"] += 1
        self.counters["pairs_consumed"] += len(pairs)
        self.counters["traces_sampled"] += len(items)
        self.counters["parse_failures"] += int(round(m["trace/parse_failure_rate"] * len(items)))
        m.update({f"train/{k}": v for k, v in lm.items() if k not in ("version", "learner_seconds")})
        m.update(sync_m)
        step_s = time.time() - t_step
        m.update({"time/generate_s": gen_s, "time/learner_s": learn_s, "time/step_s": step_s,
                  "throughput/traces_per_s": len(items) / max(gen_s, 1e-9), "rrm_version": self.version,
                  **{f"counters/{k}": v for k, v in self.counters.items()}})
        if lm:
            m["time/learner_compute_s"] = lm["learner_seconds"]
        self.tracker.log_metrics(m, step)
        m["step"] = step
        self.history.append(m)
        return m

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, step: int) -> Dict[str, float]:
        from edit_rlhf.rrm_train.evaluate import evaluate_pairs

        res = evaluate_pairs(self._engines(), self.prompt, self.eval, self.cfg.eval.sampling,
                             self.cfg.eval.unparsed, self.cfg.seed, self.cfg.rollout.timeout_s)
        if res["versions"] != [self.version]:
            raise SyncError(f"eval at step {step}: engine versions {res['versions']} != learner v{self.version}")
        m = {f"eval/{k}": v for k, v in res["metrics"].items()}
        rec = {"step": step, "scores": res["scores"]}
        e = self.cfg.eval
        if e.avg_k:  # Avg@k of sampled verdicts, with the same per-pair seeds at every evaluation
            import dataclasses

            sc = dataclasses.replace(e.sampling, n=e.avg_k, temperature=e.avg_temperature)
            avg = evaluate_pairs(self._engines(), self.prompt, self.eval, sc, e.unparsed, self.cfg.seed,
                                 self.cfg.rollout.timeout_s)
            m.update({f"eval/avg{e.avg_k}/{k}": v for k, v in avg["metrics"].items()})
            rec["scores_avg"] = avg["scores"]
        self.eval_scores.append(rec)
        self.tracker.log_metrics(m, step)
        self.tracker.log_dict({"step": step, "samples": res["samples"]}, f"eval/samples_{step:05d}.json")
        m["step"] = step
        self.evals.append(m)
        return m

    # ------------------------------------------------------------------ checkpoints
    def save(self, step: int) -> str:
        import ray

        tmp = self.ckpt.begin(step)
        with self.ckpt.guard(tmp):  # a failed save leaves no temporary directory
            self.learner.broadcast("save_checkpoint", os.path.join(tmp, "learner"))
            ray.get(self.learner.actors[0].call.remote("save_hf", os.path.join(tmp, "hf"),
                                                       {"step": step, "rrm_version": self.version,
                                                        "sft": self.cfg.model.path}))
            np_state = np.random.get_state()
            state = {"step": step, "rrm_version": self.version, "policy_version": None, "sampler_pos": self.sampler.pos,
                     "counters": dict(self.counters), "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]],
                     "python_rng": random.getstate(), "mlflow_run_id": self.tracker.run_id, "history": self.history,
                     "evals": self.evals, "config": to_dict(self.cfg), "time": time.time()}
            return self.ckpt.commit(step, tmp, state)

    # ------------------------------------------------------------------ loop
    def run(self) -> Dict[str, Any]:
        from tqdm import tqdm

        cfg = self.cfg
        status, t0 = "FAILED", time.time()
        try:
            self.setup()
            if self.eval is not None and self.start_step == 1:
                self.evaluate(0)
            bar = tqdm(range(self.start_step, cfg.steps + 1), desc="rrm-gcpo", disable=self.quiet, dynamic_ncols=True,
                       initial=self.start_step - 1, total=cfg.steps)
            last = self.ckpt.latest()
            for step in bar:
                m = self.step(step)
                bar.set_postfix({"adv0": f"{m['adv/zero_group_fraction']:.2f}", "v": self.version,
                                 "s/step": f"{m['time/step_s']:.0f}"})
                if self.eval is not None and cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
                    e = self.evaluate(step)
                    if not self.quiet:
                        bar.write(f"[eval] step {step}: pairwise {e['eval/accuracy']:.3f} "
                                  f"(with ties {e['eval/accuracy_with_ties']:.3f})")
                if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps:
                    if step == cfg.steps and self.eval is not None:
                        self.evaluate(step)
                    last = self.save(step)
            bar.close()
            if last:  # a stable path for later stages and users: <output_dir>/final (HF folder)
                publish(os.path.join(last, "hf"), os.path.join(cfg.output_dir, "final"))
            status = "FINISHED"
            s = self.summary(time.time() - t0, last)
            self.tracker.log_dict(s, "summary.json")
            with open(os.path.join(cfg.output_dir, "summary.json"), "w") as f:
                json.dump(scrub(s), f, indent=2, default=str)
            return s
        finally:
            self.shutdown(status)

    def summary(self, seconds: float, last: Optional[str]) -> Dict[str, Any]:
        h = self.history
        k = max(1, len(h) // 5)

        def mean(key, rows):
            v = [r[key] for r in rows if key in r and not (isinstance(r[key], float) and math.isnan(r[key]))]
            return float(np.mean(v)) if v else None

        s: Dict[str, Any] = {
            "pipeline": "rrm-gcpo", "command": "edit-rlhf " + " ".join(self.argv[1:]) if self.argv else None,
            "steps": self.cfg.steps,
            "seconds": round(seconds, 1), "setup_seconds": round(self.setup_seconds, 1), "rrm_version": self.version,
            "run_id": self.tracker.run_id, "tracking_uri": self.tracker.uri, "checkpoint": last,
            "final_hf": os.path.join(self.cfg.output_dir, "final") if last else None, "counters": dict(self.counters),
            "zero_group_fraction_first20": mean("adv/zero_group_fraction", h[:k]),
            "zero_group_fraction_last20": mean("adv/zero_group_fraction", h[-k:]),
            "zero_group_fraction": mean("adv/zero_group_fraction", h),
            "weighted_advantage_first20": mean("adv/weighted", h[:k]),
            "weighted_advantage_last20": mean("adv/weighted", h[-k:]),
            "trace_length_first20": mean("trace/length_mean", h[:k]),
            "trace_length_last20": mean("trace/length_mean", h[-k:]),
            "parse_failure_rate": mean("trace/parse_failure_rate", h),
            "sync_seconds_mean": mean("time/sync_s", h), "step_seconds_mean": mean("time/step_s", h),
            "probe_lp_absdiff_max": max([r.get("sync/probe_lp_absdiff_max", 0.0) for r in h], default=None),
        }
        if self.evals:
            s["eval_first"], s["eval_last"] = self.evals[0], self.evals[-1]
        return s

    def shutdown(self, status: str = "FINISHED") -> None:
        from edit_rlhf.cluster.pools import close_run

        close_run(status, [(p, getattr(self, p, None)) for p in ("rollout", "learner")],
                  getattr(self, "tracker", None), getattr(self, "started_ray", False), release=("rollout",))


def summary_line(s: Dict[str, Any]) -> str:
    parts = [f"rrm-gcpo: {s['steps']} steps in {s['seconds']:.0f}s (setup {s['setup_seconds']:.0f}s)"]
    if "eval_last" in s:
        a, b = s["eval_first"], s["eval_last"]
        parts.append(f"held-out pairwise {a['eval/accuracy']:.3f} -> {b['eval/accuracy']:.3f} "
                     f"(with ties {a['eval/accuracy_with_ties']:.3f} -> {b['eval/accuracy_with_ties']:.3f})")
    if s.get("zero_group_fraction") is not None:
        parts.append(f"zero-advantage groups {s['zero_group_fraction']:.2f}")
    if s.get("weighted_advantage_first20") is not None:
        parts.append(f"weighted adv {s['weighted_advantage_first20']:.2g} -> {s['weighted_advantage_last20']:.2g}")
    if s.get("sync_seconds_mean") is not None:
        parts.append(f"sync {s['sync_seconds_mean']:.2f}s")
    parts += [f"RRM v{s['rrm_version']}", f"mlflow run {s['run_id']}", f"checkpoint {s['final_hf']}"]
    return " | ".join(parts)


def run_rrm_gcpo(cfg, quiet: bool = False) -> Dict[str, Any]:
    from edit_rlhf.runtime import setup_process

    setup_process(cfg.cluster.torch_threads)
    s = RRMGCPOTrainer(cfg, quiet=quiet, argv=sys.argv).run()
    print(summary_line(s), flush=True)
    return s
