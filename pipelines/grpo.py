"""`edit-rlhf grpo`: the Flow-GRPO driver for the Kontext editor.

Per step: health-check the pools (re-sync restarted actors) and apply pending resize requests -> draw P
prompts -> G SDE edits each on the rollout pool, streamed to the reward pool as they finish -> group
advantages on the driver -> K DeepSpeed learner ranks update the LoRA -> the new LoRA goes to every rollout
actor by object ref (policy version +1) -> metrics, sample grids, evaluation, atomic checkpoints.
The driver handles only indices, seeds, scores and object refs; images and trajectories stay in the object
store between the pools. `resume` continues a run from its latest checkpoint, in the same MLflow run.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from typing import Any, Dict, List, Optional

import numpy as np

from edit_rlhf.checkpoint import publish
from edit_rlhf.config import to_dict
from edit_rlhf.redaction import scrub
from edit_rlhf.faults import maybe_fail
from edit_rlhf.grpo.plan import PromptSampler, eval_seed, merge_rank_metrics, rank_plan, sample_seeds
from edit_rlhf.pipelines.streaming import Job, stream


class LearnerFailed(RuntimeError):
    pass


def detail_metrics(jobs: List[Job], prefix: str = "reward_detail") -> Dict[str, float]:
    """Means of the numeric/boolean per-edit details scorers return (e.g. `parse_ok` of the RRM -> the
    parse-failure rate, `mse` of the similarity scorer), keeping MLflow's key space small."""
    vals: Dict[str, List[float]] = {}
    for j in jobs:
        for d in j.score["details"]:
            for k, v in (d or {}).items():
                if isinstance(v, (bool, int, float)):
                    vals.setdefault(k, []).append(float(v))
    out = {f"{prefix}/{k}": float(np.nanmean(v)) for k, v in vals.items() if not np.all(np.isnan(v))}
    if "parse_ok" in vals:
        out["reward/parse_failure_rate"] = 1.0 - float(np.mean(vals["parse_ok"]))
    return out


def prepare_inputs(cfg) -> None:
    """Check every input path (edit_rlhf.paths: a missing one fails now, naming the closest existing path), then
    build the embedded default's tiny models / sandbox data when `prepare.build_missing` and the missing path is
    that default's own (never beside a user's mistyped path)."""
    from edit_rlhf.paths import PathError, buildable_data, buildable_models, check_inputs

    build = cfg.prepare.build_missing
    rrm = cfg.reward.rrm.path if cfg.reward.scorer == "rrm" else None
    if cfg.prepare.check_paths:
        try:
            check_inputs([("editor.path", cfg.editor.path, "model_index.json", "model"),
                          ("reward.rrm.path", rrm, "config.json", "model"),
                          ("monitor.pq.path", cfg.monitor.pq.path or None, "config.json", "model"),
                          ("data.train", cfg.data.train, None, "data"), ("data.eval", cfg.data.eval, None, "data")],
                         build)
        except PathError as e:
            raise PathError(f"{e} (if it exists only on the worker nodes, set prepare.check_paths=false)") from None
    if not build:
        return
    wanted = ((cfg.editor.path, "model_index.json"), (rrm, "config.json"), (cfg.monitor.pq.path or None, "config.json"))
    models = [p for p, m in wanted if p and not os.path.exists(os.path.join(p, m))]
    if models and all(buildable_models(p) for p in models):
        from edit_rlhf.models.tiny import make_tiny_models

        print(f"[prepare] building tiny models in {os.path.dirname(models[0])}", flush=True)
        make_tiny_models(os.path.dirname(models[0]), seed=cfg.prepare.tiny_models_seed)
    for p in (cfg.data.train, cfg.data.eval):
        if p and not os.path.exists(p) and buildable_data(p):
            from edit_rlhf.sandbox.build import build_sandbox
            from edit_rlhf.sandbox.config import SandboxConfig

            root = os.path.dirname(p)
            print(f"[prepare] building sandbox data in {root}", flush=True)
            build_sandbox(root, SandboxConfig(seed=cfg.prepare.sandbox_seed, size=cfg.editor.resolution))


def absolutize(cfg) -> None:
    """Make paths absolute so actors (whose working directory may differ) see the same files."""
    cfg.editor.path = os.path.abspath(cfg.editor.path)
    cfg.data.train = os.path.abspath(cfg.data.train)
    if cfg.data.eval:
        cfg.data.eval = os.path.abspath(cfg.data.eval)
    cfg.output_dir = os.path.abspath(cfg.output_dir)
    cfg.tracking.dir = os.path.abspath(cfg.tracking.dir)
    if cfg.reward.rrm.path:
        cfg.reward.rrm.path = os.path.abspath(cfg.reward.rrm.path)
    if cfg.monitor.pq.path:
        cfg.monitor.pq.path = os.path.abspath(cfg.monitor.pq.path)


class GRPOTrainer:
    def __init__(self, cfg, quiet: bool = False):
        self.cfg = cfg
        self.quiet = quiet
        self.history: List[Dict[str, float]] = []
        self.eval_history: List[Dict[str, float]] = []
        self.eval_per_prompt: Dict[int, Dict[str, List[float]]] = {}  # step -> per-prompt reward / oracle (matched)
        self.start_step = 1
        from edit_rlhf.grpo.monitor import HackingMonitor

        self.monitor = HackingMonitor(cfg.monitor.window, cfg.monitor.threshold)
        self.counters = {"prompts_consumed": 0, "samples_trained": 0, "generate_retries": 0, "score_retries": 0,
                         "score_failures": 0, "stale_generations": 0, "actor_resyncs": 0}
        self.ledger: List[List[int]] = []  # [step, prompt indices...] per trained step: soaks check none is lost/twice

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        import ray

        from edit_rlhf.actors.reward import RewardWorker
        from edit_rlhf.actors.rollout import EditorRolloutWorker
        from edit_rlhf.checkpoint import Checkpoints
        from edit_rlhf.cluster.pools import ActorPool, LearnerGroup, init_ray
        from edit_rlhf.data.prompts import EditPromptDataset
        from edit_rlhf.rewards import scorer_columns
        from edit_rlhf.tracking import Tracker

        cfg = self.cfg
        t0 = time.time()
        prepare_inputs(cfg)
        absolutize(cfg)
        self.ckpt = Checkpoints.for_run(cfg)
        resume_dir, state = self.ckpt.resume_state(cfg.resume, cfg.overwrite)
        need = scorer_columns(cfg.reward)
        self.train_ds = EditPromptDataset(cfg.data.train, require=need, validate=cfg.data.validate)
        self.eval_ds = (EditPromptDataset(cfg.data.eval, require=need, validate=cfg.data.validate)
                        if cfg.data.eval else None)
        self.sampler = PromptSampler(len(self.train_ds), cfg.seed)
        from edit_rlhf.grpo.monitor import loud, resolve_judge

        self.judge_mode, no_judge = resolve_judge(cfg.monitor.judge, "oracle" in self.train_ds.ds.column_names,
                                                  cfg.monitor.pq.path)
        if no_judge:
            print(loud(no_judge), flush=True)
        self.started_ray = not ray.is_initialized()
        self.ray_info = init_ray(cfg.cluster)
        self.tracker = Tracker.for_run(cfg, state, {"pipeline": "grpo", "editor": cfg.editor.path})
        self.tracker.set_tags({"monitor_judge": self.judge_mode, **({"monitor_warning": no_judge} if no_judge else {})})
        splits = {"train": cfg.data.train}
        if self.eval_ds is not None:
            splits["eval"] = cfg.data.eval
        env = cfg.cluster.runtime_env()
        self.rollout = ActorPool("rollout", EditorRolloutWorker, cfg.rollout,
                                 lambda i: (cfg, splits, f"rollout-{i}"), runtime_env=env)
        self.reward = ActorPool("reward", RewardWorker, cfg.reward,
                                lambda i: (cfg.reward, splits, f"reward-{i}", cfg.cluster.torch_threads),
                                runtime_env=env)
        self.learner = LearnerGroup("learner", "edit_rlhf.grpo.learner:GRPOLearner", cfg, cfg.learner,
                                    cfg.cluster.torch_threads, runtime_env=env)
        self.monitor_pool = None
        if self.judge_mode == "pq":  # the monitor's own judge: VIEScore PQ of the edits (real data)
            from edit_rlhf.actors.evaluation import EvalScorerWorker

            self.monitor_pool = ActorPool("monitor", EvalScorerWorker, cfg.monitor.pool,
                                          lambda i: ("pq", cfg.monitor.pq, {"train": cfg.data.train}, f"monitor-{i}",
                                                     cfg.cluster.torch_threads), runtime_env=env)
        self.learner_info = self.learner.infos
        self.rollout_info = self.rollout.wait_ready()
        self.reward_info = self.reward.wait_ready()
        if self.monitor_pool is not None:
            self.monitor_pool.wait_ready()
        if state is not None:
            self._restore(resume_dir, state)
        self.setup_seconds = time.time() - t0
        self._sync_weights()  # every rollout actor starts from the learner's exact weights (also after resume)
        self.tracker.set_tags({"trainable_params": self.learner_info[0]["trainable"]})

    def _restore(self, step_dir: str, state: Dict[str, Any]) -> None:
        self.learner.broadcast("load_checkpoint", os.path.join(step_dir, "learner"))
        self.sampler.load(state["sampler"])
        self.counters.update(state.get("counters", {}))
        self.ledger = [list(x) for x in state.get("ledger", [])]
        if state.get("monitor"):
            self.monitor.load(state["monitor"])
        self.eval_per_prompt = {int(k): v for k, v in state.get("eval_per_prompt", {}).items()}
        self.start_step = int(state["step"]) + 1
        np.random.set_state(tuple(state["numpy_rng"]) if isinstance(state["numpy_rng"], list) else state["numpy_rng"])
        random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python_rng"]))
        self.tracker.set_tags({f"resumed_at_step_{self.start_step}": step_dir})
        if not self.quiet:
            print(f"[resume] from {step_dir}: continuing at step {self.start_step} "
                  f"(policy v{state['policy_version']}, MLflow run {state['mlflow_run_id']})", flush=True)

    def _sync_weights(self, only: Optional[List[int]] = None) -> float:
        """Push the learner's LoRA to the rollout actors through the weight-sync interface (edit_rlhf.cluster.sync:
        one object ref, fetched by each actor; the LoRA is small, see `edit-rlhf plan`)."""
        from edit_rlhf.cluster.sync import ObjectStoreTransport

        t = time.time()
        self.version = ObjectStoreTransport("lora_snapshot", "set_lora").push(self.learner, self.rollout, only)
        return time.time() - t

    def _maintain_pools(self, step: int) -> Dict[str, float]:
        """Between steps: apply resize requests, health-check, re-sync restarted or stale rollout actors."""
        from edit_rlhf.cluster.control import take_scale_request
        from edit_rlhf.cluster.pools import PoolError

        m: Dict[str, float] = {}
        req = take_scale_request(self.cfg.output_dir)
        if req:
            for name, n in req.items():
                pool = getattr(self, name)
                if n != pool.size:
                    added = pool.resize(n)
                    if name == "rollout" and added:
                        self._sync_weights(only=added)
                    if not self.quiet:
                        print(f"[scale] step {step}: pool '{name}' -> {n} actors", flush=True)
            self.tracker.set_tags({f"scaled_at_step_{step}": str(req)})
        for pool in (self.rollout, self.reward):
            h = pool.health_check(timeout_s=self.cfg.reward.timeout_s)
            if not pool.alive():
                raise PoolError(f"pool '{pool.name}': no actor answers the health check")
            if pool is self.rollout:
                stale = [i for i, info in h["infos"].items() if info.get("version") != self.version]
                if stale:
                    self._sync_weights(only=stale)
                    self.counters["actor_resyncs"] += len(stale)
            m[f"pool/{pool.name}_size"] = pool.size
            m[f"pool/{pool.name}_alive"] = len(pool.alive())
        return m

    # ------------------------------------------------------------------ one step
    def step(self, step: int) -> Dict[str, float]:
        from edit_rlhf.algorithms.flow_grpo import group_advantages

        cfg, a = self.cfg, self.cfg.algo
        t_step = time.time()
        pool_m = self._maintain_pools(step)
        indices = self.sampler.next(a.prompts_per_step)
        jobs = [Job(slot=s, split="train", index=i, gen_args=(i, sample_seeds(cfg.seed, step, s, a.group_size)))
                for s, i in enumerate(indices)]
        st = stream(jobs, self.rollout, self.reward, "rollout", 3, cfg.reward.timeout_s, cfg.reward.max_retries,
                    expected_version=self.version)
        maybe_fail("driver", "step")  # drills: the driver dies mid-step (after generation, before the update)
        if st.stale_actors:
            self._sync_weights(only=sorted(st.stale_actors))
            self.counters["actor_resyncs"] += len(st.stale_actors)
        judging = self._submit_judge(jobs)  # the PQ judge (if any) works while the learner trains
        rewards = np.array([j.score["rewards"] for j in jobs], dtype=np.float64)  # (P, G)
        keys = [(j.meta["prompt_id"], j.meta["instruction"]) for j in jobs for _ in range(a.group_size)]
        adv = group_advantages(rewards.reshape(-1), keys, a.std_eps, a.adv_clip_max, a.global_std).numpy()
        adv = np.nan_to_num(adv.reshape(rewards.shape), nan=0.0)  # failed scores: no policy gradient
        plan = rank_plan(len(jobs), a.group_size, adv, cfg.learner.size, a.num_minibatches, cfg.seed, step)
        t_learn = time.time()
        args = []
        for r in range(cfg.learner.size):
            groups = {g for mb in plan[r] for g, _, _ in mb}  # each rank fetches only the trajectories it trains on
            args.append((plan[r], {g: jobs[g].refs[2] for g in groups}))
        try:
            lm = merge_rank_metrics(self.learner.call_ranks("train_on", args))
        except Exception as e:  # a learner rank died or raised: stop; the last checkpoint stays resumable
            raise LearnerFailed(self._learner_failure(step, e)) from None
        t_sync = time.time()
        sync_s = self._sync_weights()
        step_s = time.time() - t_step
        self.ledger.append([step, *[int(j.index) for j in jobs]])  # what each step trained (saved in state.json)
        self.counters["prompts_consumed"] += len(jobs)
        self.counters["samples_trained"] += rewards.size
        for k in ("generate_retries", "score_retries", "score_failures", "stale_generations"):
            self.counters[k] += getattr(st, k.replace("generate_", "gen_"))
        m = self._step_metrics(jobs, rewards, adv, lm, st, step_s, t_sync - t_learn, sync_s)
        m.update(pool_m)
        m.update(self._monitor(step, jobs, rewards, judging))
        if step % cfg.tracking.log_images_every == 0 or step == cfg.steps:
            self._log_grid(step, jobs)
        self.tracker.log_metrics(m, step)
        m["step"] = step
        self.history.append(m)
        return m

    def _submit_judge(self, jobs: List[Job]) -> list:
        """PQ judge calls for the edits of this step's first `monitor.groups_per_step` groups (all when 0)."""
        if self.monitor_pool is None:
            return []
        k = self.cfg.monitor.groups_per_step or len(jobs)
        pool = self.monitor_pool
        out = []
        for n, j in enumerate(jobs[:k]):
            i = pool.alive()[n % len(pool.alive())]
            out.append(pool.actors[i].score.remote("train", [j.index] * j.meta["n"], j.refs[1]))
        return out

    def _judge_scores(self, jobs: List[Job], judging: list) -> np.ndarray:
        """(groups judged, G) judge scores; NaN where the judge failed (the monitor skips those)."""
        import ray

        if self.judge_mode == "oracle":
            g = self.cfg.algo.group_size
            return np.array([j.score.get("oracle_scores") or [math.nan] * g for j in jobs], dtype=np.float64)
        rows = []
        ready, _ = ray.wait(judging, num_returns=len(judging), timeout=self.cfg.monitor.timeout_s)
        for ref, j in zip(judging, jobs):
            try:
                res = ray.get(ref) if ref in ready else None
            except ray.exceptions.RayError:
                res = None
            rows.append([r.reward for r in res["results"]] if res else [math.nan] * j.meta["n"])
            if ref not in ready:
                ray.cancel(ref, force=False)
        return np.array(rows, dtype=np.float64)

    def _monitor(self, step: int, jobs: List[Job], rewards: np.ndarray, judging: list) -> Dict[str, float]:
        """Reward vs the independent judge (sandbox oracle or PQ judge): correlation, trend divergence, warning."""
        if self.judge_mode == "none":
            return {}
        judge = self._judge_scores(jobs, judging)
        m = self.monitor.update(rewards[: len(judge)].reshape(-1), judge.reshape(-1))
        if self.judge_mode == "pq":
            m["monitor/judge_mean"] = float(np.nanmean(judge)) if np.isfinite(judge).any() else math.nan
            m["monitor/judge_failed"] = int((~np.isfinite(judge)).sum())
            m = {k: v for k, v in m.items() if not (isinstance(v, float) and math.isnan(v))}
        if m.get("monitor/warning"):
            msg = (f"reward-hacking warning at step {step}: the reward rose {m['monitor/divergence']:.2f} baseline "
                   f"std more than the judge (threshold {self.cfg.monitor.threshold})")
            print(f"[monitor] {msg}", flush=True)
            self.tracker.set_tags({f"warning_step_{step}": msg})
        return m

    def _learner_failure(self, step: int, err: Exception) -> str:
        latest = self.ckpt.latest()
        hint = (f"resume from {latest} with `edit-rlhf grpo --config <same config> resume=auto`" if latest else
                "no checkpoint was written yet (set save_every to checkpoint more often)")
        return f"learner failed at step {step}: {type(err).__name__}: {str(err)[:500]}; {hint}"

    def _step_metrics(self, jobs, rewards, adv, lm, st, step_s, learner_s, sync_s) -> Dict[str, float]:
        valid = rewards[~np.isnan(rewards)]
        n = rewards.size
        versions = [j.meta["policy_version"] for j in jobs]
        m: Dict[str, float] = {
            "reward/mean": float(valid.mean()) if valid.size else math.nan,
            "reward/std": float(valid.std()) if valid.size else math.nan,
            "reward/group_std_mean": float(np.nanmean(np.nanstd(rewards, axis=1))) if valid.size else math.nan,
            "reward/failed": int(np.isnan(rewards).sum()),
            "reward/failure_rate": float(np.isnan(rewards).mean()),
            "reward/zero_std_groups": int((np.nanstd(rewards, axis=1) < 1e-12).sum()),
            "adv/abs_mean": float(np.abs(adv).mean()),
            **{f"train/{k}": v for k, v in lm.items() if k != "learner_seconds"},
            "policy_version": self.version,
            "policy/rollout_version_lag": int(self.version - 1 - min(versions)),
            "time/generate_s": st.gen_seconds, "time/score_tail_s": st.tail_seconds, "time/learner_s": learner_s,
            "time/learner_compute_s": lm["learner_seconds"], "time/sync_s": sync_s, "time/step_s": step_s,
            "throughput/samples_per_s": n / step_s,
            "throughput/rollout_samples_per_s": n / max(st.gen_seconds, 1e-9),
            "faults/generate_retries": st.gen_retries, "faults/score_retries": st.score_retries,
            "faults/score_failures": st.score_failures, "faults/stale_generations": st.stale_generations,
            **{f"counters/{k}": v for k, v in self.counters.items()},
        }
        if valid.size:
            m.update({f"reward/p{q}": float(np.percentile(valid, q)) for q in (10, 50, 90)})
        oracle = [j.score.get("oracle_scores") for j in jobs]
        if all(o is not None for o in oracle):
            m["reward/oracle_score"] = float(np.nanmean(np.array(oracle, dtype=np.float64)))
        m.update(detail_metrics(jobs))
        for name, pool in (("rollout", self.rollout), ("reward", self.reward)):
            for i, k in enumerate(pool.served):
                m[f"pool/{name}_{i}_served"] = k
        return m

    def _log_grid(self, step: int, jobs: List[Job]) -> None:
        import ray

        from edit_rlhf.viz import group_grid

        rows = []
        for j in jobs[: self.cfg.tracking.grid_groups]:
            checks = [d.get("checks") for d in j.score["details"]]
            rows.append({"source": self.train_ds.image(j.index), "edits": ray.get(j.refs[1]),
                         "rewards": j.score["rewards"], "checks": checks if any(c for c in checks) else None,
                         "title": f"{j.meta['prompt_id']}: {j.meta['instruction']} (v{j.meta['policy_version']})"})
        self.tracker.log_image(group_grid(rows), f"samples/step_{step:05d}.png")

    # ------------------------------------------------------------------ evaluation
    def _eval_jobs(self, n: int, variant: str) -> List[Job]:
        """One job per eval prompt: `data.eval_repeats` ODE edits of it, each from its own noise seed."""
        idx = list(range(n))
        other = idx[1:] + idx[:1]  # a derangement: every prompt gets another prompt's source / instruction
        r = self.cfg.data.eval_repeats
        jobs = []
        for i in idx:
            src = [other[i]] * r if variant == "shuffled_source" else None
            ins = [other[i]] * r if variant == "shuffled_instruction" else None
            seeds = [eval_seed(self.cfg.seed, i, k) for k in range(r)]
            jobs.append(Job(slot=i, split="eval", index=i, gen_args=([i] * r, seeds, src, ins)))
        return jobs

    def evaluate(self, step: int, probes: bool = False, save_dir: Optional[str] = None) -> Dict[str, float]:
        """ODE edits of the first `eval_size` eval prompts, scored by the reward pool (and the oracle when
        the data has one). With `probes`: the same with shuffled sources / instructions and the
        copy-the-source baseline, to show what the policy's edits depend on."""
        import ray

        from edit_rlhf.viz import group_grid

        cfg = self.cfg
        n = min(cfg.data.eval_size, len(self.eval_ds))
        t = time.time()
        m: Dict[str, float] = {}
        matched: List[Job] = []
        for variant in (["matched", "shuffled_source", "shuffled_instruction"] if probes and n > 1 else ["matched"]):
            jobs = self._eval_jobs(n, variant)
            stream(jobs, self.rollout, self.reward, "evaluate", 2, cfg.reward.timeout_s, cfg.reward.max_retries,
                   expected_version=self.version)
            name = "" if variant == "matched" else variant + "_"
            per_edit = np.array([j.score["rewards"] for j in jobs], dtype=np.float64)  # (n, eval_repeats)
            rewards = _row_means(per_edit)  # per prompt: the mean over its repeats
            m[f"eval/{name}reward"] = float(np.nanmean(rewards))
            m[f"eval/{name}failed"] = int(np.isnan(per_edit).sum())
            oracle = [j.score.get("oracle_scores") for j in jobs]
            if all(o is not None for o in oracle):
                oracle = _row_means(np.array(oracle, dtype=np.float64))
                m[f"eval/{name}oracle_score"] = float(np.nanmean(oracle))
            else:
                oracle = None
            if variant == "matched":
                matched = jobs
                self.eval_per_prompt[step] = {"reward": rewards.tolist()}
                if oracle is not None:
                    self.eval_per_prompt[step]["oracle_score"] = oracle.tolist()
        if probes:
            refs = [self.reward.actors[i % self.reward.size].score.remote(
                "eval", i, ray.put(self.eval_ds.image(i)[None])) for i in range(n)]
            res = ray.get(refs)
            m["eval/copy_source_reward"] = float(np.nanmean([r["rewards"][0] for r in res]))
            if all(r.get("oracle_scores") for r in res):
                m["eval/copy_source_oracle_score"] = float(np.nanmean([r["oracle_scores"][0] for r in res]))
        m["eval/seconds"] = time.time() - t
        rows = [{"source": self.eval_ds.image(j.index), "edits": ray.get(j.refs[1]), "rewards": j.score["rewards"],
                 "title": self.eval_ds.instructions[j.index]} for j in matched[:4]]
        self.tracker.log_image(group_grid(rows), f"eval/step_{step:05d}.png")
        if save_dir:  # the trained policy's ODE outputs, for inspection and exact reproduction checks
            r = cfg.data.eval_repeats
            np.savez_compressed(os.path.join(save_dir, "eval_edits.npz"),
                                images=np.concatenate([ray.get(j.refs[1]) for j in matched]),  # (n * r, H, W, 3)
                                indices=np.repeat(np.arange(n), r),
                                seeds=np.array([eval_seed(cfg.seed, i, k) for i in range(n) for k in range(r)]),
                                rewards=np.concatenate([j.score["rewards"] for j in matched]),
                                policy_version=self.version, num_steps=cfg.sampling.eval_num_steps)
        self.tracker.log_metrics(m, step)
        m["step"] = step
        self.eval_history.append(m)
        return m

    # ------------------------------------------------------------------ checkpoints
    def save(self, step: int) -> str:
        """One atomic step directory: learner (DeepSpeed, all ranks), diffusers LoRA, state.json; then `latest`."""
        import ray

        tmp = self.ckpt.begin(step)
        with self.ckpt.guard(tmp):  # a failed save leaves no temporary directory
            self.learner.broadcast("save_checkpoint", os.path.join(tmp, "learner"))
            ray.get(self.learner.actors[0].call.remote("save_lora", os.path.join(tmp, "lora")))
            maybe_fail("driver", "checkpoint")  # drills: the driver dies with a half-written step directory
            np_state = np.random.get_state()
            state = {"step": step, "policy_version": self.version, "rrm_version": None,
                     "sampler": self.sampler.state(), "counters": dict(self.counters), "ledger": self.ledger,
                     "monitor": self.monitor.state(),
                     "eval_per_prompt": {str(k): v for k, v in self.eval_per_prompt.items()},
                     "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]],
                     "python_rng": random.getstate(), "mlflow_run_id": self.tracker.run_id,
                     "config": to_dict(self.cfg), "time": time.time()}
            return self.ckpt.commit(step, tmp, state)

    # ------------------------------------------------------------------ loop
    def run(self) -> Dict[str, Any]:
        from tqdm import tqdm

        cfg = self.cfg
        status = "FAILED"
        t0 = time.time()
        try:
            self.setup()
            if self.eval_ds is not None and self.start_step == 1:
                self.evaluate(0)
            bar = tqdm(range(self.start_step, cfg.steps + 1), desc="grpo", disable=self.quiet, dynamic_ncols=True,
                       initial=self.start_step - 1, total=cfg.steps)
            last_dir = self.ckpt.latest()
            for step in bar:
                m = self.step(step)
                post = {"reward": f"{m['reward/mean']:.4g}", "v": m["policy_version"],
                        "s/step": f"{m['time/step_s']:.1f}"}
                if "reward/oracle_score" in m:
                    post["oracle"] = f"{m['reward/oracle_score']:.2f}"
                bar.set_postfix(post)
                if self.eval_ds is not None and cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
                    self.evaluate(step)
                if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps:
                    last_dir = self.save(step)
            if self.eval_ds is not None:
                self.evaluate(cfg.steps, probes=cfg.eval_probes, save_dir=last_dir)
            if last_dir:  # a stable path for later stages and users: <output_dir>/final_lora
                publish(os.path.join(last_dir, "lora"), os.path.join(cfg.output_dir, "final_lora"))
            status = "FINISHED"
            summary = self.summary(time.time() - t0, last_dir)
            summary["placement"] = self.placement()
            self.tracker.log_dict(summary, "summary.json")
            with open(os.path.join(cfg.output_dir, "summary.json"), "w") as f:
                json.dump(scrub(summary), f, indent=2, default=str)
            return summary
        finally:
            self.shutdown(status)

    def placement(self) -> Dict[str, List[Dict[str, Any]]]:
        """Where each pool's actors run: node id and that node's custom resources (for multi-node checks)."""
        import ray

        nodes = {n["NodeID"]: n for n in ray.nodes()}

        def where(info):
            n = nodes.get(info.get("node"), {})
            custom = sorted(k for k in n.get("Resources", {}) if k not in ("CPU", "GPU", "memory",
                                                                           "object_store_memory")
                            and not k.startswith("node:") and not k.startswith("accelerator_type"))
            return {"node": info.get("node"), "address": n.get("NodeManagerAddress"), "custom": custom}

        out = {"learner": [where(i) for i in self.learner.infos]}
        for name in ("rollout", "reward"):
            out[name] = [where(i) for i in getattr(self, name).health_check()["infos"].values()]
        return out

    def summary(self, seconds: float, final_dir: Optional[str]) -> Dict[str, Any]:
        h = self.history
        k = max(1, len(h) // 5)
        s: Dict[str, Any] = {"pipeline": "grpo", "steps": len(h), "last_step": self.cfg.steps,
                             "seconds": round(seconds, 1), "setup_seconds": round(self.setup_seconds, 1),
                             "policy_version": self.version, "run_id": self.tracker.run_id,
                             "tracking_uri": self.tracker.uri, "checkpoint": final_dir,
                             "final_lora": os.path.join(self.cfg.output_dir, "final_lora") if final_dir else None,
                             "rollout_served": list(self.rollout.served), "reward_served": list(self.reward.served),
                             "counters": dict(self.counters)}
        if h:
            s.update(reward_first20=float(np.nanmean([m["reward/mean"] for m in h[:k]])),
                     reward_last20=float(np.nanmean([m["reward/mean"] for m in h[-k:]])),
                     failed_rewards=int(sum(m["reward/failed"] for m in h)),
                     ratio_first_max_dev=max(m["train/ratio_first_max_dev"] for m in h))
            if "reward/oracle_score" in h[0]:
                s["oracle_first20"] = float(np.mean([m["reward/oracle_score"] for m in h[:k]]))
                s["oracle_last20"] = float(np.mean([m["reward/oracle_score"] for m in h[-k:]]))
        s["hacking_warnings"] = self.monitor.warnings
        s["monitor_judge"] = getattr(self, "judge_mode", None)
        if self.eval_history:
            s["eval_first"] = self.eval_history[0]
            s["eval_last"] = self.eval_history[-1]
            s.update(self._eval_change())
        return s

    def _eval_change(self) -> Dict[str, Any]:
        """The final evaluation against the first on the same prompts and seeds (per-prompt paired), for the
        reward and, where the data has one, the oracle: the run's learning figure with its noise."""
        from edit_rlhf.stats import paired_prompts

        steps = sorted(self.eval_per_prompt)
        if len(steps) < 2:
            return {}
        a, b = self.eval_per_prompt[steps[0]], self.eval_per_prompt[steps[-1]]
        out: Dict[str, Any] = {"eval_steps": [steps[0], steps[-1]], "eval_prompts": len(b["reward"]),
                               "eval_repeats": self.cfg.data.eval_repeats}
        for key, name in (("reward", "eval_reward_change"), ("oracle_score", "eval_oracle_change")):
            if key in a and key in b:
                out[name] = {"first": float(np.nanmean(a[key])), "last": float(np.nanmean(b[key])),
                             **paired_prompts(b[key], a[key])}
        return out

    def shutdown(self, status: str = "FINISHED") -> None:
        from edit_rlhf.cluster.pools import close_run

        close_run(status, [(p, getattr(self, p, None)) for p in ("rollout", "reward", "learner")]
                  + [("monitor", getattr(self, "monitor_pool", None))],
                  getattr(self, "tracker", None), getattr(self, "started_ray", False), release=("monitor",))


def _row_means(a: np.ndarray) -> np.ndarray:
    """Per-row mean ignoring NaN (failed scores); an all-NaN row stays NaN, without a warning."""
    ok = ~np.isnan(a)
    n = ok.sum(axis=1)
    return np.where(n > 0, np.where(ok, a, 0.0).sum(axis=1) / np.maximum(n, 1), np.nan)


def _change(name: str, ch: Dict[str, float]) -> str:
    txt = f"{name} {ch['first']:.4g} -> {ch['last']:.4g}"
    if ch.get("n", 0) >= 2:
        txt += f" ({ch['diff']:+.3g} ± {ch['se']:.2g} paired SE, z {ch['z']:+.1f})"
    return txt


def summary_line(s: Dict[str, Any]) -> str:
    """The run in one line: the evaluation before/after with its noise first (same prompts and seeds, per-prompt
    paired), then the per-step training means (noisy: each step draws new prompts), then bookkeeping."""
    parts = [f"grpo: {s['steps']} steps in {s['seconds']:.0f}s (setup {s['setup_seconds']:.0f}s)"]
    if "eval_reward_change" in s:
        ev = [_change("eval reward", s["eval_reward_change"])]
        oracle = s.get("eval_oracle_change")
        if oracle is not None and oracle != s["eval_reward_change"]:  # the reward is not the oracle itself
            ev.append(_change("oracle", oracle))
        parts.append(", ".join(ev) + f" on {s['eval_prompts']} held-out prompts x {s['eval_repeats']} seeds")
    if "reward_first20" in s:
        parts.append(f"train reward {s['reward_first20']:.4g} -> {s['reward_last20']:.4g} (per-step mean, first/last "
                     f"20%, noisy)")
    if "oracle_first20" in s and s.get("oracle_first20") != s.get("reward_first20"):
        parts.append(f"train oracle {s['oracle_first20']:.2f} -> {s['oracle_last20']:.2f}")
    parts += [f"policy v{s['policy_version']}", f"failed rewards {s.get('failed_rewards', 0)}",
              f"mlflow run {s['run_id']}", f"LoRA {s['final_lora']}"]
    return " | ".join(parts)


def run_grpo(cfg, quiet: bool = False) -> Dict[str, Any]:
    from edit_rlhf.runtime import setup_process

    setup_process(cfg.cluster.torch_threads)
    trainer = GRPOTrainer(cfg, quiet=quiet)
    try:
        s = trainer.run()
    except LearnerFailed as e:
        print(f"edit-rlhf grpo: {e}", flush=True)
        raise
    print(summary_line(s), flush=True)
    return s
