"""`edit-rlhf grpo`: the Flow-GRPO driver for the Kontext editor, on the driver skeleton (pipelines/driver.py).

Per step (`GRPODriver.advance`): health-check the pools (re-sync restarted actors) and apply pending resize
requests -> draw P prompts -> G SDE edits each on the rollout pool, streamed to the reward pool as they finish
-> group advantages on the driver -> K DeepSpeed learner ranks update the LoRA -> the new LoRA goes to every
rollout actor by object ref (policy version +1) -> metrics and sample grids. With `algo.off_policy_steps=1` the
rollout and reward pools sample and score step k+1 while the learner trains on step k.
The driver handles only indices, seeds, scores and object refs (typed records, edit_rlhf.grpo.records); images
and trajectories stay in the object store between the pools.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edit_rlhf.faults import maybe_fail
from edit_rlhf.grpo.plan import PromptSampler, merge_rank_metrics, rank_plan, sample_seeds
from edit_rlhf.grpo.records import LearnerShard
from edit_rlhf.pipelines.driver import Driver, run_driver
from edit_rlhf.pipelines.streaming import Job, stream


class LearnerFailed(RuntimeError):
    pass


def detail_metrics(jobs: List[Job], prefix: str = "reward_detail") -> Dict[str, float]:
    """Means of the numeric/boolean per-edit details scorers return (e.g. `parse_ok` of the RRM -> the
    parse-failure rate, `mse` of the similarity scorer), keeping MLflow's key space small."""
    vals: Dict[str, List[float]] = {}
    for j in jobs:
        for d in j.score.details:
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


class PendingUpdate:
    """A learner update in flight: the ranks' refs, waited on by a daemon thread that records when they finished,
    so the driver can stream the next batch meanwhile (`algo.off_policy_steps=1`) and still time the learner."""

    def __init__(self, refs: list):
        import threading

        import ray

        self.t0 = time.time()
        self.done_at: Optional[float] = None
        self.value: Any = None
        self.error: Optional[BaseException] = None

        def wait() -> None:
            try:
                self.value = ray.get(refs)
            except BaseException as e:  # re-raised on the driver's thread by result()
                self.error = e
            finally:
                self.done_at = time.time()

        self.thread = threading.Thread(target=wait, name="learner-wait", daemon=True)
        self.thread.start()

    def result(self) -> Tuple[List[Dict[str, float]], float]:
        """(per-rank metrics, learner wall seconds from submission to the last rank's reply)."""
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.value, self.done_at - self.t0


class GRPODriver(Driver):
    """Flow-GRPO on the driver skeleton (pipelines/driver.py). `advance` is the algorithm box."""

    name = "grpo"
    path_keys = ("editor.path", "data.train", "data.eval", "output_dir", "tracking.dir", "reward.rrm.path",
                 "monitor.pq.path")
    final = ("lora", "final_lora")
    release = ("monitor",)
    elastic = ("rollout", "reward")
    keep_history = False  # per-step metrics live in MLflow; the summary's train figures are this process's steps

    def __init__(self, cfg, quiet: bool = False, argv: Optional[List[str]] = None):
        from edit_rlhf.grpo.monitor import HackingMonitor

        super().__init__(cfg, quiet, argv)
        self.monitor = HackingMonitor(cfg.monitor.window, cfg.monitor.threshold)
        self.counters = {"prompts_consumed": 0, "samples_trained": 0, "generate_retries": 0, "score_retries": 0,
                         "score_failures": 0, "stale_generations": 0, "actor_resyncs": 0}
        self.ledger: List[List[int]] = []  # [step, prompt indices...] per trained step: soaks check none is lost/twice
        self.eval_per_prompt: Dict[int, Dict[str, List[float]]] = {}  # step -> per-prompt reward / oracle (matched)
        self.version = 0
        self.prefetched: Optional[Tuple[List[Job], Any]] = None  # the next step's scored groups (off-policy mode)
        self.final_edits: Optional[Dict[str, Any]] = None  # the last evaluation's ODE edits, saved with the checkpoint
        self.start_step = 1

    # ------------------------------------------------------------------ set-up phases
    def check_inputs(self) -> None:
        prepare_inputs(self.cfg)

    def tags(self) -> Dict[str, str]:
        return {"editor": self.cfg.editor.path}

    def start_pools(self) -> None:
        from edit_rlhf.actors.reward import RewardWorker
        from edit_rlhf.actors.rollout import EditorRolloutWorker
        from edit_rlhf.cluster.pools import ActorPool, LearnerGroup
        from edit_rlhf.data.prompts import EditPromptDataset
        from edit_rlhf.grpo.monitor import loud, resolve_judge
        from edit_rlhf.rewards import scorer_columns

        cfg = self.cfg
        need = scorer_columns(cfg.reward)
        self.train_ds = EditPromptDataset(cfg.data.train, require=need, validate=cfg.data.validate)
        self.eval_ds = (EditPromptDataset(cfg.data.eval, require=need, validate=cfg.data.validate)
                        if cfg.data.eval else None)
        self.sampler = PromptSampler(len(self.train_ds), cfg.seed)
        self.judge_mode, no_judge = resolve_judge(cfg.monitor.judge, "oracle" in self.train_ds.ds.column_names,
                                                  cfg.monitor.pq.path)
        if no_judge:
            print(loud(no_judge), flush=True)
        self.tracker.set_tags({"monitor_judge": self.judge_mode, **({"monitor_warning": no_judge} if no_judge else {})})
        splits = {"train": cfg.data.train, **({"eval": cfg.data.eval} if self.eval_ds is not None else {})}
        env = cfg.cluster.runtime_env()
        p = self.pools
        p["rollout"] = self.rollout = ActorPool("rollout", EditorRolloutWorker, cfg.rollout,
                                                lambda i: (cfg, splits, f"rollout-{i}"), runtime_env=env)
        p["reward"] = self.reward = ActorPool("reward", RewardWorker, cfg.reward, lambda i: (
            cfg.reward, splits, f"reward-{i}", cfg.cluster.torch_threads), runtime_env=env)
        p["learner"] = self.learner = LearnerGroup("learner", "edit_rlhf.grpo.learner:GRPOLearner", cfg, cfg.learner,
                                                   cfg.cluster.torch_threads, runtime_env=env)
        self.monitor_pool = None
        if self.judge_mode == "pq":  # the monitor's own judge: VIEScore PQ of the edits (real data)
            from edit_rlhf.actors.evaluation import EvalScorerWorker

            p["monitor"] = self.monitor_pool = ActorPool("monitor", EvalScorerWorker, cfg.monitor.pool, lambda i: (
                "pq", cfg.monitor.pq, {"train": cfg.data.train}, f"monitor-{i}", cfg.cluster.torch_threads),
                runtime_env=env)
        self.learner_info = self.learner.infos
        self.rollout_info = self.rollout.wait_ready()
        self.reward_info = self.reward.wait_ready()
        if self.monitor_pool is not None:
            self.monitor_pool.wait_ready()

    def restore(self, step_dir: str, state: Dict[str, Any]) -> None:
        self.learner.broadcast("load_checkpoint", os.path.join(step_dir, "learner"))
        self.sampler.load(state["sampler"])
        self.ledger = [list(x) for x in state.get("ledger", [])]
        if state.get("monitor"):
            self.monitor.load(state["monitor"])
        self.eval_per_prompt = {int(k): v for k, v in state.get("eval_per_prompt", {}).items()}
        self.start_step = int(state["step"]) + 1

    def started(self) -> None:
        self._sync_weights()  # every rollout actor starts from the learner's exact weights (also after resume)
        self.tracker.set_tags({"trainable_params": self.learner_info[0]["trainable"]})

    def has_eval(self) -> bool:
        return self.eval_ds is not None

    # ------------------------------------------------------------------ pools and weights
    def _sync_weights(self, only: Optional[List[int]] = None) -> float:
        """Push the learner's LoRA to the rollout actors through the weight-sync interface (edit_rlhf.cluster.sync:
        one object ref, fetched by each actor; the LoRA is small, see `edit-rlhf plan`)."""
        from edit_rlhf.cluster.sync import ObjectStoreTransport

        t = time.time()
        self.version = ObjectStoreTransport("lora_snapshot", "set_lora").push(self.learner, self.rollout, only)
        return time.time() - t

    def stale_actors(self, name: str, infos: Dict[int, dict]) -> List[int]:
        if name != "rollout":
            return []
        return [i for i, info in infos.items() if info.get("version") != self.version]

    def on_pool_change(self, name: str, actors: List[int]) -> None:
        if name == "rollout":
            self._sync_weights(only=actors)

    # ------------------------------------------------------------------ the Flow-GRPO step
    def advance(self) -> Dict[str, Any]:
        """One Flow-GRPO step: sample G edits per prompt and score them (or take the batch sampled during the last
        update), group advantages, update the LoRA on the learner ranks, sync it to the rollout pool. With
        `off_policy_steps=1` the next batch is sampled while the learner trains."""
        step = self.step + 1
        t_step = time.time()
        pool_m = self.maintain_pools(self.cfg.reward.timeout_s)
        t_stream = time.time()
        jobs, st = self.prefetched or self.sample(step)  # sample + score (streamed)
        self.prefetched = None
        stream_s = time.time() - t_stream
        maybe_fail("driver", "step")  # drills: the driver dies mid-step (after generation, before the update)
        judging = self._submit_judge(jobs)  # the PQ judge (if any) works while the learner trains
        rewards, adv = self.advantages(jobs)
        update = self.update(jobs, adv, step)
        if self.overlaps(step):  # the rollout pool samples step+1 with this policy while the learner trains
            t_next = time.time()
            self.prefetched = self.sample(step + 1)
            stream_s += time.time() - t_next
        lm, learner_s = self.finish_update(update, step)
        sync_s = self._sync_weights()
        if st.stale_actors:  # actors that generated with an old version (restarted): bring them up to date
            self._sync_weights(only=sorted(st.stale_actors))
            self.counters["actor_resyncs"] += len(st.stale_actors)
        self.step = step
        self.ledger.append([step, *[int(j.index) for j in jobs]])  # what each step trained (saved in state.json)
        self.counters["prompts_consumed"] += len(jobs)
        self.counters["samples_trained"] += rewards.size
        for k in ("generate_retries", "score_retries", "score_failures", "stale_generations"):
            self.counters[k] += getattr(st, k.replace("generate_", "gen_"))
        m = self._step_metrics(jobs, rewards, adv, lm, st, time.time() - t_step, learner_s, sync_s, stream_s)
        m.update(pool_m)
        m.update(self._monitor(step, jobs, rewards, judging))
        if step % self.cfg.tracking.log_images_every == 0 or step == self.cfg.steps:
            self._log_grid(step, jobs)
        self.tracker.log_metrics(m, step)
        return m

    def overlaps(self, step: int) -> bool:
        """Sample step+1 during step's update? Only off-policy, and never across a checkpoint or an evaluation
        (the pipeline drains there, so a resumed run samples exactly what an uninterrupted one does)."""
        cfg = self.cfg
        return (cfg.algo.off_policy_steps > 0 and step < cfg.steps and not self.due(cfg.save_every, step)
                and not (self.has_eval() and self.due(cfg.eval_every, step)))

    def sample(self, step: int) -> Tuple[List[Job], Any]:
        """Draw P prompts; G SDE edits each on the rollout pool, streamed to the reward pool as they finish."""
        cfg, a = self.cfg, self.cfg.algo
        jobs = [Job(slot=s, split="train", index=i, gen_args=(i, sample_seeds(cfg.seed, step, s, a.group_size)))
                for s, i in enumerate(self.sampler.next(a.prompts_per_step))]
        st = stream(jobs, self.rollout, self.reward, _rollout_call, cfg.reward.timeout_s, cfg.reward.max_retries,
                    expected_version=self.version, batch_groups=cfg.reward.batch_groups)
        return jobs, st

    def advantages(self, jobs: List[Job]) -> Tuple[np.ndarray, np.ndarray]:
        """(P, G) rewards and group-relative advantages (failed scores: NaN reward, zero advantage)."""
        from edit_rlhf.algorithms.flow_grpo import group_advantages

        a = self.cfg.algo
        rewards = np.array([j.score.rewards for j in jobs], dtype=np.float64)  # (P, G)
        keys = [(j.rollout.meta["prompt_id"], j.rollout.meta["instruction"]) for j in jobs for _ in range(a.group_size)]
        adv = group_advantages(rewards.reshape(-1), keys, a.std_eps, a.adv_clip_max, a.global_std).numpy()
        return rewards, np.nan_to_num(adv.reshape(rewards.shape), nan=0.0)

    def update(self, jobs: List[Job], adv: np.ndarray, step: int) -> PendingUpdate:
        """Start the learner ranks on their shards of (group, sample, advantage); each fetches only its groups'
        trajectories from the object store."""
        cfg = self.cfg
        plan = rank_plan(len(jobs), cfg.algo.group_size, adv, cfg.learner.size, cfg.algo.num_minibatches, cfg.seed,
                         step)
        shards = [LearnerShard(plan[r], {g: jobs[g].rollout.trajectory for g in {g for mb in plan[r] for g, _, _ in mb}})
                  for r in range(cfg.learner.size)]
        return PendingUpdate([a.call.remote("train_on", s) for a, s in zip(self.learner.actors, shards)])

    def finish_update(self, update: PendingUpdate, step: int) -> Tuple[Dict[str, float], float]:
        try:
            per_rank, seconds = update.result()
        except Exception as e:  # a learner rank died or raised: stop; the last checkpoint stays resumable
            raise LearnerFailed(self._learner_failure(step, e)) from None
        return merge_rank_metrics(per_rank), seconds

    def train_step(self, step: int) -> Dict[str, Any]:
        """Step `step` alone, as `run` would do it (tests and benchmarks drive steps one by one)."""
        self.step = step - 1
        m = self.advance()
        self.history.append({"step": self.step, **m})
        return {"step": self.step, **m}

    def postfix(self, m: Dict[str, Any]) -> Dict[str, str]:
        post = {"reward": f"{m['reward/mean']:.4g}", "v": m["policy_version"], "s/step": f"{m['time/step_s']:.1f}"}
        if "reward/oracle_score" in m:
            post["oracle"] = f"{m['reward/oracle_score']:.2f}"
        return post

    # ------------------------------------------------------------------ the reward-hacking monitor
    def _submit_judge(self, jobs: List[Job]) -> list:
        """PQ judge calls for the edits of this step's first `monitor.groups_per_step` groups (all when 0)."""
        if self.monitor_pool is None:
            return []
        k = self.cfg.monitor.groups_per_step or len(jobs)
        pool = self.monitor_pool
        out = []
        for n, j in enumerate(jobs[:k]):
            i = pool.alive()[n % len(pool.alive())]
            out.append(pool.actors[i].score.remote("train", [j.index] * j.rollout.n, j.rollout.images))
        return out

    def _judge_scores(self, jobs: List[Job], judging: list) -> np.ndarray:
        """(groups judged, G) judge scores; NaN where the judge failed (the monitor skips those)."""
        import ray

        if self.judge_mode == "oracle":
            g = self.cfg.algo.group_size
            return np.array([j.score.oracle_scores or [math.nan] * g for j in jobs], dtype=np.float64)
        rows = []
        ready, _ = ray.wait(judging, num_returns=len(judging), timeout=self.cfg.monitor.timeout_s)
        for ref, j in zip(judging, jobs):
            try:
                res = ray.get(ref) if ref in ready else None
            except ray.exceptions.RayError:
                res = None
            rows.append([r.reward for r in res["results"]] if res else [math.nan] * j.rollout.n)
            if ref not in ready:
                ray.cancel(ref, force=False)
        return np.array(rows, dtype=np.float64)

    def _monitor(self, step: int, jobs: List[Job], rewards: np.ndarray, judging: list) -> Dict[str, float]:
        """Reward vs the independent judge (sandbox oracle or PQ judge): correlation, trend divergence, warning."""
        if self.judge_mode == "none":
            return {}
        judge = self._judge_scores(jobs, judging)
        r = rewards[: len(judge)]
        m = self.monitor.update(r.reshape(-1), judge.reshape(-1), group_size=r.shape[1] if r.ndim == 2 else 0)
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

    # ------------------------------------------------------------------ metrics
    def _step_metrics(self, jobs, rewards, adv, lm, st, step_s, learner_s, sync_s, stream_s) -> Dict[str, float]:
        valid = rewards[~np.isnan(rewards)]
        n = rewards.size
        lags = [self.version - 1 - j.rollout.policy_version for j in jobs]  # versions behind the updated policy
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
            "policy/rollout_version_lag": int(max(lags)), "policy/lag_mean": float(np.mean(lags)),
            "time/generate_s": st.gen_seconds, "time/score_tail_s": st.tail_seconds,
            "time/rollout_stage_s": stream_s, "time/learner_s": learner_s,
            "time/learner_compute_s": lm["learner_seconds"], "time/sync_s": sync_s, "time/step_s": step_s,
            "throughput/samples_per_s": n / step_s,
            "throughput/rollout_samples_per_s": n / max(st.gen_seconds, 1e-9),
            "faults/generate_retries": st.gen_retries, "faults/score_retries": st.score_retries,
            "faults/score_failures": st.score_failures, "faults/stale_generations": st.stale_generations,
            **{f"counters/{k}": v for k, v in self.counters.items()},
        }
        if valid.size:
            m.update({f"reward/p{q}": float(np.percentile(valid, q)) for q in (10, 50, 90)})
        oracle = [j.score.oracle_scores for j in jobs]
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
            checks = j.score.checks()
            rows.append({"source": self.train_ds.image(j.index), "edits": ray.get(j.rollout.images),
                         "rewards": list(j.score.rewards), "checks": checks if any(c for c in checks) else None,
                         "title": f"{j.rollout.meta['prompt_id']}: {j.rollout.meta['instruction']} "
                                  f"(v{j.rollout.policy_version})"})
        self.tracker.log_image(group_grid(rows), f"samples/step_{step:05d}.png")

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, step: int, final: bool = False) -> Dict[str, float]:
        """ODE edits of the held-out prompts scored by the reward pool (and the oracle where the data has one);
        the final one also runs the probes and keeps its edits for the checkpoint (grpo_eval.py)."""
        from edit_rlhf.pipelines.grpo_eval import evaluate_policy

        m, per_prompt, edits = evaluate_policy(self, probes=final and self.cfg.eval_probes)
        self.eval_per_prompt[step] = per_prompt
        if final:
            self.final_edits = edits
        m = self.log_eval(step, m)
        return m

    @property
    def eval_history(self) -> List[Dict[str, Any]]:
        return self.evals

    # ------------------------------------------------------------------ checkpoints
    def save_artifacts(self, tmp: str) -> None:
        """Every rank's DeepSpeed state, the diffusers LoRA, and (after the final evaluation) its ODE edits."""
        import ray

        self.learner.broadcast("save_checkpoint", os.path.join(tmp, "learner"))
        ray.get(self.learner.actors[0].call.remote("save_lora", os.path.join(tmp, "lora")))
        if self.final_edits is not None and self.step >= self.cfg.steps:
            np.savez_compressed(os.path.join(tmp, "eval_edits.npz"), **self.final_edits)

    def state(self) -> Dict[str, Any]:
        return {"policy_version": self.version, "rrm_version": None, "sampler": self.sampler.state(),
                "ledger": self.ledger, "monitor": self.monitor.state(),
                "eval_per_prompt": {str(k): v for k, v in self.eval_per_prompt.items()}}

    # ------------------------------------------------------------------ summary
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

    def summary(self) -> Dict[str, Any]:
        h = self.history
        k = max(1, len(h) // 5)
        s: Dict[str, Any] = {"steps": len(h), "last_step": self.cfg.steps, "policy_version": self.version,
                             "final_lora": os.path.join(self.cfg.output_dir, "final_lora") if self.last_dir else None,
                             "rollout_served": list(self.rollout.served), "reward_served": list(self.reward.served),
                             "off_policy_steps": self.cfg.algo.off_policy_steps}
        if h:
            s.update(reward_first20=float(np.nanmean([m["reward/mean"] for m in h[:k]])),
                     reward_last20=float(np.nanmean([m["reward/mean"] for m in h[-k:]])),
                     failed_rewards=int(sum(m["reward/failed"] for m in h)),
                     ratio_first_max_dev=max(m["train/ratio_first_max_dev"] for m in h),
                     step_seconds_median=float(np.median([m["time/step_s"] for m in h])))
            if "reward/oracle_score" in h[0]:
                s["oracle_first20"] = float(np.mean([m["reward/oracle_score"] for m in h[:k]]))
                s["oracle_last20"] = float(np.mean([m["reward/oracle_score"] for m in h[-k:]]))
        s["hacking_warnings"] = self.monitor.warnings
        s["monitor_judge"] = getattr(self, "judge_mode", None)
        s.update(self._eval_change())
        s["placement"] = self.placement()
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


GRPOTrainer = GRPODriver  # the name tests, benchmarks and scripts use


def _rollout_call(actor, job: Job) -> list:
    """A training rollout on a rollout actor: refs of (meta, images, trajectory)."""
    return actor.rollout.remote(job.split, *job.gen_args)


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
    try:
        return run_driver(GRPODriver(cfg, quiet=quiet), summary_line)
    except LearnerFailed as e:
        print(f"edit-rlhf grpo: {e}", flush=True)
        raise
