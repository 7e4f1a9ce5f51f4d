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

import math
import os
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np

from edit_rlhf.cluster.sync import SyncError  # a weight sync whose engines disagree
from edit_rlhf.faults import maybe_fail
from edit_rlhf.pipelines.driver import Driver, first_last, run_driver

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


class RRMGCPOTrainer(Driver):
    name = "rrm-gcpo"
    path_keys = ("model.path", "rollout.engine.path", "data.train", "data.eval", "output_dir", "tracking.dir")
    final = ("hf", "final")  # the last checkpoint's HF folder as output_dir/final
    release = ("rollout",)  # vLLM engines
    elastic = ("rollout",)  # `edit-rlhf scale rollout=N`; restarted or stale engines are re-synced

    def __init__(self, cfg, quiet: bool = False, argv: Optional[List[str]] = None):
        super().__init__(cfg, quiet, argv)
        self.eval_scores: List[Dict[str, Any]] = []  # per eval: step and (winner, loser) scores per held-out pair
        self.version = 0
        self.probe_prev = None
        self.counters = {"pairs_consumed": 0, "traces_sampled": 0, "parse_failures": 0, "syncs": 0,
                         "skipped_updates": 0, "actor_resyncs": 0}

    # ------------------------------------------------------------------ set-up
    def check_inputs(self) -> None:
        """The model folder, and the train/eval pairs and the prompt (loaded here, before any actor starts)."""
        from edit_rlhf.config import ConfigError
        from edit_rlhf.rrm.prompt import RRMPrompt
        from edit_rlhf.rrm_train.data import load_pairs

        cfg = self.cfg
        if not os.path.isfile(os.path.join(cfg.model.path, "config.json")):
            raise ConfigError(f"config key 'model.path': {cfg.model.path} is not a model folder (no config.json)")
        cfg.rollout.engine.path = cfg.rollout.engine.path or cfg.model.path
        self.train = load_pairs(cfg.data.train, cfg.data.category_column)
        self.eval = (load_pairs(cfg.data.eval, cfg.data.category_column, cfg.data.eval_size)
                     if cfg.data.eval else None)
        self.prompt = RRMPrompt.from_path(cfg.model.path, cfg.prompt.style, cfg.prompt.system)
        self.sampler = PairSampler(len(self.train), cfg.seed)

    def tags(self) -> Dict[str, str]:
        return {"model": self.cfg.model.path, "train_pairs": str(len(self.train)),
                "ties_dropped": str(self.train.stats["ties_dropped"])}

    def start_pools(self) -> None:
        from edit_rlhf.actors.rrm_rollout import RRMRolloutWorker
        from edit_rlhf.cluster.pools import ActorPool, LearnerGroup
        from edit_rlhf.cluster.sync import make_transport
        from edit_rlhf.transport import choose_transport

        cfg, env, ecfg = self.cfg, self.cfg.cluster.runtime_env(), self.cfg.rollout.engine
        on_gpu = bool(cfg.rollout.num_gpus and cfg.learner.num_gpus and ecfg.backend == "vllm")
        kind = choose_transport(cfg.sync.transport, on_gpu)
        if kind == "nccl":
            ecfg.vllm.weight_transfer = "nccl"
        self.transport = make_transport(kind, "weight_buckets", "load_weights", ecfg.vllm.tensor_parallel_size)
        self.rollout = ActorPool("rrm_rollout", RRMRolloutWorker, cfg.rollout,
                                 lambda i: (ecfg, f"rrm-rollout-{i}", cfg.cluster.torch_threads, cfg.seed + i),
                                 runtime_env=env)
        self.pools["rollout"] = self.rollout
        self.learner = LearnerGroup("rrm_gcpo", CORE, cfg, cfg.learner, cfg.cluster.torch_threads, runtime_env=env)
        self.pools["learner"] = self.learner
        self.learner_info = self.learner.infos
        self.rollout_info = self.rollout.wait_ready()
        self.transport.setup(self.learner, self.rollout)

    def restore(self, step_dir: str, state: Dict[str, Any]) -> None:
        self.learner.broadcast("load_checkpoint", os.path.join(step_dir, "learner"))
        self.sampler.pos = int(state["sampler_pos"])

    def started(self) -> None:
        self.last_sync = self._sync()  # engines hold exactly the learner's weights (also after a resume)
        self.probe = self._probe_trace()

    # ------------------------------------------------------------------ one step: the algorithm
    def advance(self) -> Dict[str, Any]:
        """Sample pairs -> generate traces -> score the groups, advantages -> learner update -> weight sync."""
        from edit_rlhf.rrm_train.gcpo import step_diagnostics, trace_items

        step, t_step = self.step + 1, time.time()
        m = self.maintain_pools(self.cfg.rollout.timeout_s)  # resize requests; restarted engines re-synced
        pairs = [self.train[i] for i in self.sampler.next(self.cfg.algo.pairs_per_step)]
        reqs, comps, gen_s = self._generate(pairs, step)  # N traces per image, all from the learner's version
        maybe_fail("driver", "step")
        rolls = self._score(pairs, comps)  # parsed scores, cross-group rewards, group-centred advantages
        items = trace_items(rolls)
        m.update(step_diagnostics(rolls, items))
        lm = self._learn(reqs, items)  # PPO-clip on the learner ranks; None: every advantage was zero
        if lm is None:
            m["time/learner_s"] = 0.0  # weights (and version) unchanged: no sync
        else:
            m.update(lm)
            m.update(self._sync())
            m.update(self._probe())
        self._count(len(pairs), items, m["trace/parse_failure_rate"])
        m.update({"time/generate_s": gen_s, "time/step_s": time.time() - t_step,
                  "throughput/traces_per_s": len(items) / max(gen_s, 1e-9), "rrm_version": self.version,
                  **{f"counters/{k}": v for k, v in self.counters.items()}})
        self.tracker.log_metrics(m, step)
        self.step = step
        return m

    def _generate(self, pairs, step: int):
        """Sampling requests (the winner and the loser image of each pair), `group_size` traces each, from
        engines that all hold the learner's version."""
        from edit_rlhf.rrm.engine import SamplingSpec
        from edit_rlhf.rrm_train.gcpo import pair_requests

        cfg, r = self.cfg, self.cfg.rollout
        reqs = []
        for p in pairs:
            reqs += list(pair_requests(self.prompt.text(p.instruction, p.principles), p.source, p.winner, p.loser,
                                       cfg.seed, step, p.id))
        spec = SamplingSpec(n=cfg.algo.group_size, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                            max_tokens=r.max_tokens, logprobs=True,
                            top_logprobs=cfg.algo.top_logprobs if cfg.algo.score_from != "text" else 0)
        t = time.time()
        comps, versions = self._generate_on(reqs, spec, r.timeout_s)
        if versions != {self.version}:
            raise SyncError(f"step {step}: traces from engine versions {sorted(versions)}, learner v{self.version}")
        return reqs, comps, time.time() - t

    def _score(self, pairs, comps) -> List[Any]:
        from edit_rlhf.rrm_train.gcpo import PairRollout, score_pair

        a = self.cfg.algo
        return [score_pair(PairRollout(k, p.category, 2 * k, 2 * k + 1, comps[2 * k], comps[2 * k + 1]),
                           len(p.principles), a.failure, a.std_norm, a.score_from) for k, p in enumerate(pairs)]

    def _learn(self, reqs, items) -> Optional[Dict[str, float]]:
        """One update, each learner rank on its share of the traces; None (a skipped update) when no trace
        has an advantage to learn from."""
        import ray

        from edit_rlhf.rrm_train.gcpo import rank_plan

        cfg, a = self.cfg, self.cfg.algo
        plan, totals = rank_plan(items, a.pairs_per_step // a.num_minibatches, cfg.learner.size, a.micro_batch_size,
                                 a.skip_zero_advantage and a.beta == 0)
        if not totals:
            self.counters["skipped_updates"] += 1
            return None
        t = time.time()
        req_ref = ray.put(reqs)
        lm = self.learner.call_ranks("train_step", [(req_ref, plan[k], totals) for k in range(cfg.learner.size)])[0]
        m = {f"train/{k}": v for k, v in lm.items() if k not in ("version", "learner_seconds")}
        m.update({"time/learner_s": time.time() - t, "time/learner_compute_s": lm["learner_seconds"]})
        return m

    def _count(self, pairs: int, items, parse_failure_rate: float) -> None:
        self.counters["pairs_consumed"] += pairs
        self.counters["traces_sampled"] += len(items)
        self.counters["parse_failures"] += int(round(parse_failure_rate * len(items)))

    def postfix(self, m: Dict[str, Any]) -> Dict[str, str]:
        return {"adv0": f"{m['adv/zero_group_fraction']:.2f}", "v": str(self.version),
                "s/step": f"{m['time/step_s']:.0f}"}

    # ------------------------------------------------------------------ engines and weight sync
    def _generate_on(self, requests, spec, timeout_s):
        """Requests on the live engines (`maintain_pools` health-checks them and re-syncs stale ones between
        steps), on the streaming scheduler."""
        from edit_rlhf.pipelines.rrm_generate import generate_on

        return generate_on(self.rollout, requests, spec, timeout_s)

    def stale_actors(self, name: str, infos: Dict[int, dict]) -> List[int]:
        return [i for i, info in infos.items() if info.get("version") != self.version]

    def on_pool_change(self, name: str, actors: List[int]) -> None:
        self._sync(only=actors)

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
        if self.probe_prev is not None:
            m["sync/probe_lp_change"] = float(np.abs(np.asarray(e) - self.probe_prev).max())
        self.probe_prev = np.asarray(e)
        return m

    # ------------------------------------------------------------------ evaluation
    def has_eval(self) -> bool:
        return self.eval is not None

    def evaluate(self, step: int, final: bool = False) -> Dict[str, Any]:
        """Held-out pairwise accuracy (greedy verdicts; Avg@k of sampled ones if `eval.avg_k`)."""
        from edit_rlhf.rrm_train.evaluate import copy_source_probe, evaluate_pairs

        e, timeout = self.cfg.eval, self.cfg.rollout.timeout_s
        self.maintain_pools(timeout)  # every engine alive and on the learner's version
        res = evaluate_pairs(self._generate_on, self.prompt, self.eval, e.sampling, e.unparsed, self.cfg.seed, timeout)
        if res["versions"] != [self.version]:
            raise SyncError(f"eval at step {step}: engine versions {res['versions']} != learner v{self.version}")
        m = {f"eval/{k}": v for k, v in res["metrics"].items()}
        rec = {"step": step, "scores": res["scores"]}
        if e.copy_source:  # sandbox pairs: the unedited source as its own edit, against the correct edits' scores
            probe = copy_source_probe(self._generate_on, self.prompt, self.eval, res["scores"], e.sampling,
                                      e.unparsed, self.cfg.seed, timeout)
            m.update({f"eval/{k}": v for k, v in probe.items()})
        if e.avg_k:  # Avg@k of sampled verdicts, with the same per-pair seeds at every evaluation
            import dataclasses

            sc = dataclasses.replace(e.sampling, n=e.avg_k, temperature=e.avg_temperature)
            avg = evaluate_pairs(self._generate_on, self.prompt, self.eval, sc, e.unparsed, self.cfg.seed, timeout)
            m.update({f"eval/avg{e.avg_k}/{k}": v for k, v in avg["metrics"].items()})
            rec["scores_avg"] = avg["scores"]
        self.eval_scores.append(rec)
        m = self.log_eval(step, m)
        self.tracker.log_dict({"step": step, "samples": res["samples"]}, f"eval/samples_{step:05d}.json")
        if step and not final and not self.quiet:
            from tqdm import tqdm

            tqdm.write(f"[eval] step {step}: pairwise {m['eval/accuracy']:.3f} "
                       f"(with ties {m['eval/accuracy_with_ties']:.3f})")
        return m

    # ------------------------------------------------------------------ checkpoints and summary
    def save_artifacts(self, tmp: str) -> None:
        """DeepSpeed state of every rank, and the HF folder (what `final` publishes)."""
        import ray

        self.learner.broadcast("save_checkpoint", os.path.join(tmp, "learner"))
        ray.get(self.learner.actors[0].call.remote("save_hf", os.path.join(tmp, "hf"),
                                                   {"step": self.step, "rrm_version": self.version,
                                                    "sft": self.cfg.model.path}))

    def state(self) -> Dict[str, Any]:
        return {"rrm_version": self.version, "policy_version": None, "sampler_pos": self.sampler.pos}

    def summary(self) -> Dict[str, Any]:
        h = self.history

        def mean(key):
            v = [r[key] for r in h if key in r and not (isinstance(r[key], float) and math.isnan(r[key]))]
            return float(np.mean(v)) if v else None

        s: Dict[str, Any] = {"rrm_version": self.version,
                             "final_hf": os.path.join(self.cfg.output_dir, "final") if self.last_dir else None,
                             "zero_group_fraction": mean("adv/zero_group_fraction"),
                             "parse_failure_rate": mean("trace/parse_failure_rate"),
                             "sync_seconds_mean": mean("time/sync_s"), "step_seconds_mean": mean("time/step_s"),
                             "probe_lp_absdiff_max": max([r.get("sync/probe_lp_absdiff_max", 0.0) for r in h],
                                                         default=None)}
        for name, key in (("zero_group_fraction", "adv/zero_group_fraction"), ("weighted_advantage", "adv/weighted"),
                          ("trace_length", "trace/length_mean")):
            fl = first_last(h, key)
            s[f"{name}_first20"], s[f"{name}_last20"] = fl if fl else (None, None)
        return s


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
    parts += [f"RRM v{s['rrm_version']}", f"mlflow run {s['run_id']}", f"final {s['final_hf']}"]
    return " | ".join(parts)


def run_rrm_gcpo(cfg, quiet: bool = False) -> Dict[str, Any]:
    return run_driver(RRMGCPOTrainer(cfg, quiet=quiet, argv=sys.argv), summary_line)
