"""`edit-rlhf grpo`: the Flow-GRPO driver for the Kontext editor.

Per step: draw P prompts -> G SDE edits each on the rollout pool, streamed to the reward pool as they finish
-> group advantages on the driver -> K DeepSpeed learner ranks update the LoRA -> the new LoRA goes to every
rollout actor by object ref (policy version +1) -> metrics, sample grids, evaluation and checkpoints.
The driver handles only indices, seeds, scores and object refs; images and trajectories stay in the object
store between the pools.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Dict, List, Optional

import numpy as np

from edit_rlhf.config import flatten, to_dict, to_yaml
from edit_rlhf.pipelines.streaming import Job, stream


class PromptSampler:
    """Epoch-wise shuffled prompt order, deterministic in (seed, epoch); resumable from (epoch, pos)."""

    def __init__(self, n: int, seed: int, epoch: int = 0, pos: int = 0):
        self.n, self.seed, self.epoch, self.pos = n, seed, epoch, pos

    def _perm(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def next(self, k: int) -> List[int]:
        out: List[int] = []
        while len(out) < k:
            perm = self._perm()
            take = perm[self.pos: self.pos + k - len(out)]
            out += [int(i) for i in take]
            self.pos += len(take)
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
        return out

    def state(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}


def sample_seeds(seed: int, step: int, slot: int, g: int) -> List[int]:
    """Per-sample noise seeds: a function of (run seed, step, prompt slot) only, never of the actor."""
    return [int(s) for s in np.random.SeedSequence([seed, step, slot]).generate_state(g)]


def eval_seed(seed: int, i: int) -> int:
    """Noise seed of evaluation prompt i (the same at every evaluation of a run)."""
    return int(np.random.SeedSequence([seed, 10 ** 6, i]).generate_state(1)[0])


def rank_plan(n_groups: int, group_size: int, advantages: np.ndarray, ranks: int, minibatches: int,
              seed: int, step: int) -> List[List[List[tuple]]]:
    """Shuffle all (group, sample) pairs and deal them into `minibatches` x `ranks` equal chunks.

    advantages: (n_groups, group_size). Returns plan[rank][minibatch] = [(group, sample, advantage), ...]."""
    pairs = [(g, j) for g in range(n_groups) for j in range(group_size)]
    order = np.random.default_rng([seed, step, 7]).permutation(len(pairs))
    per_mb = len(pairs) // minibatches
    per_rank = per_mb // ranks
    plan: List[List[List[tuple]]] = [[[] for _ in range(minibatches)] for _ in range(ranks)]
    for m in range(minibatches):
        chunk = order[m * per_mb:(m + 1) * per_mb]
        for r in range(ranks):
            for k in chunk[r * per_rank:(r + 1) * per_rank]:
                g, j = pairs[k]
                plan[r][m].append((g, j, float(advantages[g, j])))
    return plan


def merge_rank_metrics(ms: List[Dict[str, float]]) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for k in ms[0]:
        vals = [m[k] for m in ms]
        if k in ("ratio_max", "ratio_max_dev", "ratio_first_max_dev", "learner_seconds"):
            out[k] = max(vals)
        elif k == "ratio_min":
            out[k] = min(vals)
        elif k not in ("rank", "version"):
            out[k] = float(np.mean(vals))
    return out


def detail_metrics(jobs: List[Job], prefix: str = "reward_detail") -> Dict[str, float]:
    """Means of the numeric/boolean per-edit details scorers return (e.g. `parse_ok` of the RRM -> the
    parse-failure rate, `mse` of the similarity scorer), keeping MLflow's key space small."""
    vals: Dict[str, List[float]] = {}
    for j in jobs:
        for d in j.score["details"]:
            for k, v in (d or {}).items():
                if isinstance(v, (bool, int, float)) and not isinstance(v, str):
                    vals.setdefault(k, []).append(float(v))
    out = {f"{prefix}/{k}": float(np.nanmean(v)) for k, v in vals.items() if v}
    if "parse_ok" in vals:
        out["reward/parse_failure_rate"] = 1.0 - float(np.mean(vals["parse_ok"]))
    return out


def prepare_inputs(cfg) -> None:
    """Build the embedded default's tiny models / sandbox data when `prepare.build_missing` and absent."""
    if not cfg.prepare.build_missing:
        return
    if not os.path.exists(os.path.join(cfg.editor.path, "model_index.json")):
        from edit_rlhf.models.tiny import make_tiny_models

        print(f"[prepare] building tiny models in {os.path.dirname(cfg.editor.path)}", flush=True)
        make_tiny_models(os.path.dirname(cfg.editor.path), seed=cfg.prepare.tiny_models_seed)
    for p in (cfg.data.train, cfg.data.eval):
        if p and not os.path.exists(p):
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


class GRPOTrainer:
    def __init__(self, cfg, quiet: bool = False):
        self.cfg = cfg
        self.quiet = quiet
        self.history: List[Dict[str, float]] = []
        self.eval_history: List[Dict[str, float]] = []

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        import ray

        from edit_rlhf.actors.reward import RewardWorker
        from edit_rlhf.actors.rollout import EditorRolloutWorker
        from edit_rlhf.cluster.pools import ActorPool, LearnerGroup, init_ray
        from edit_rlhf.data.prompts import EditPromptDataset
        from edit_rlhf.rewards import scorer_columns
        from edit_rlhf.tracking import Tracker

        cfg = self.cfg
        t0 = time.time()
        prepare_inputs(cfg)
        absolutize(cfg)
        need = scorer_columns(cfg.reward)
        self.train_ds = EditPromptDataset(cfg.data.train, require=need, validate=cfg.data.validate)
        self.eval_ds = (EditPromptDataset(cfg.data.eval, require=need, validate=cfg.data.validate)
                        if cfg.data.eval else None)
        self.sampler = PromptSampler(len(self.train_ds), cfg.seed)
        self.started_ray = not ray.is_initialized()
        self.ray_info = init_ray(cfg.cluster)
        self.tracker = Tracker(cfg.tracking.dir, cfg.tracking.experiment, cfg.tracking.uri, cfg.tracking.run_name,
                               tags={"pipeline": "grpo", "editor": cfg.editor.path})
        self.tracker.log_params(flatten(to_dict(cfg)))
        self.tracker.log_dict(to_dict(cfg), "config.json")
        splits = {"train": cfg.data.train}
        if self.eval_ds is not None:
            splits["eval"] = cfg.data.eval
        self.rollout = ActorPool("rollout", EditorRolloutWorker, cfg.rollout,
                                 lambda i: (cfg, splits, f"rollout-{i}"))
        self.reward = ActorPool("reward", RewardWorker, cfg.reward,
                                lambda i: (cfg.reward, splits, f"reward-{i}", cfg.cluster.torch_threads))
        self.learner = LearnerGroup("learner", "edit_rlhf.grpo.learner:GRPOLearner", cfg, cfg.learner,
                                    cfg.cluster.torch_threads)
        self.learner_info = self.learner.infos
        self.rollout_info = self.rollout.wait_ready()
        self.reward_info = self.reward.wait_ready()
        self.version = 0
        self.setup_seconds = time.time() - t0
        self._sync_weights()  # every rollout actor starts from the learner's exact weights
        self.tracker.set_tags({"trainable_params": self.learner_info[0]["trainable"]})

    def _sync_weights(self) -> float:
        import ray

        t = time.time()
        (ref,) = ray.get(self.learner.actors[0].put.remote("lora_snapshot"))
        version = ray.get(self.learner.actors[0].call.remote("info"))["version"]
        got = ray.get([a.set_lora.remote(ref) for a in self.rollout.actors])
        if any(v != version for v in got):
            raise RuntimeError(f"weight sync: rollout versions {got} != learner version {version}")
        self.version = version
        return time.time() - t

    # ------------------------------------------------------------------ one step
    def step(self, step: int) -> Dict[str, float]:
        import ray

        cfg, a = self.cfg, self.cfg.algo
        t_step = time.time()
        indices = self.sampler.next(a.prompts_per_step)
        jobs = [Job(slot=s, split="train", index=i, gen_args=(i, sample_seeds(cfg.seed, step, s, a.group_size)))
                for s, i in enumerate(indices)]
        st = stream(jobs, self.rollout, self.reward, "rollout", 3, cfg.reward.timeout_s, cfg.reward.max_retries)
        t_gen_done = time.time()
        rewards = np.array([j.score["rewards"] for j in jobs], dtype=np.float64)  # (P, G)
        oracle = [j.score.get("oracle_scores") for j in jobs]
        keys = [(j.meta["prompt_id"], j.meta["instruction"]) for j in jobs for _ in range(a.group_size)]
        from edit_rlhf.algorithms.flow_grpo import group_advantages

        adv = group_advantages(rewards.reshape(-1), keys, a.std_eps, a.adv_clip_max, a.global_std).numpy()
        adv = np.nan_to_num(adv.reshape(rewards.shape), nan=0.0)  # failed scores: no policy gradient
        plan = rank_plan(len(jobs), a.group_size, adv, cfg.learner.size, a.num_minibatches, cfg.seed, step)
        t_learn = time.time()
        args = []
        for r in range(cfg.learner.size):
            groups = {g for mb in plan[r] for g, _, _ in mb}  # each rank fetches only the trajectories it trains on
            args.append((plan[r], {g: jobs[g].refs[2] for g in groups}))
        lm = merge_rank_metrics(self.learner.call_ranks("train_on", args))
        t_sync = time.time()
        sync_s = self._sync_weights()
        step_s = time.time() - t_step
        valid = rewards[~np.isnan(rewards)]
        n_samples = rewards.size
        versions = [j.meta["policy_version"] for j in jobs]
        m = {
            "reward/mean": float(valid.mean()) if valid.size else math.nan,
            "reward/std": float(valid.std()) if valid.size else math.nan,
            **({f"reward/p{q}": float(np.percentile(valid, q)) for q in (10, 50, 90)} if valid.size else {}),
            "reward/group_std_mean": float(np.nanmean(np.nanstd(rewards, axis=1))),
            "reward/failed": int(np.isnan(rewards).sum()),
            "reward/failure_rate": float(np.isnan(rewards).mean()),
            "reward/zero_std_groups": int((np.nanstd(rewards, axis=1) < 1e-12).sum()),
            "adv/abs_mean": float(np.abs(adv).mean()),
            **{f"train/{k}": v for k, v in lm.items() if k != "learner_seconds"},
            "policy_version": self.version,
            "policy/rollout_version_lag": int(self.version - 1 - min(versions)),
            "time/generate_s": st.gen_seconds, "time/score_tail_s": st.tail_seconds,
            "time/learner_s": t_sync - t_learn, "time/learner_compute_s": lm["learner_seconds"],
            "time/sync_s": sync_s, "time/step_s": step_s,
            "throughput/samples_per_s": n_samples / step_s,
            "throughput/rollout_samples_per_s": n_samples / max(st.gen_seconds, 1e-9),
            "faults/generate_retries": st.gen_retries, "faults/score_retries": st.score_retries,
            "faults/score_failures": st.score_failures,
        }
        if all(o is not None for o in oracle):
            o = np.array(oracle, dtype=np.float64)
            m["reward/oracle_score"] = float(np.nanmean(o))
        m.update(detail_metrics(jobs))
        for name, pool in (("rollout", self.rollout), ("reward", self.reward)):
            for i, n in enumerate(pool.served):
                m[f"pool/{name}_{i}_served"] = n
        if step % cfg.tracking.log_images_every == 0 or step == cfg.steps:
            self._log_grid(step, jobs)
        self.tracker.log_metrics(m, step)
        m["step"] = step
        self.history.append(m)
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
        idx = list(range(n))
        other = idx[1:] + idx[:1]  # a derangement: every prompt gets another prompt's source / instruction
        jobs = []
        for i in idx:
            src = [other[i]] if variant == "shuffled_source" else None
            ins = [other[i]] if variant == "shuffled_instruction" else None
            jobs.append(Job(slot=i, split="eval", index=i, gen_args=([i], [eval_seed(self.cfg.seed, i)], src, ins)))
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
            stream(jobs, self.rollout, self.reward, "evaluate", 2, cfg.reward.timeout_s, cfg.reward.max_retries)
            name = "" if variant == "matched" else variant + "_"
            rewards = np.array([j.score["rewards"][0] for j in jobs], dtype=np.float64)
            m[f"eval/{name}reward"] = float(np.nanmean(rewards))
            m[f"eval/{name}failed"] = int(np.isnan(rewards).sum())
            oracle = [j.score.get("oracle_scores") for j in jobs]
            if all(o is not None for o in oracle):
                m[f"eval/{name}oracle_score"] = float(np.nanmean([o[0] for o in oracle]))
            if variant == "matched":
                matched = jobs
        if probes:
            refs = [self.reward.actors[i % len(self.reward.actors)].score.remote(
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
            np.savez_compressed(os.path.join(save_dir, "eval_edits.npz"),
                                images=np.concatenate([ray.get(j.refs[1]) for j in matched]),
                                indices=np.arange(n), seeds=np.array([eval_seed(cfg.seed, i) for i in range(n)]),
                                rewards=np.array([j.score["rewards"][0] for j in matched]),
                                policy_version=self.version, num_steps=cfg.sampling.eval_num_steps)
        self.tracker.log_metrics(m, step)
        m["step"] = step
        self.eval_history.append(m)
        return m

    # ------------------------------------------------------------------ checkpoints
    def save(self, step: int, final: bool = False) -> str:
        import ray

        name = "final" if final else f"step_{step:06d}"
        d = os.path.join(self.cfg.output_dir, "checkpoints", name)
        os.makedirs(d, exist_ok=True)
        ray.get(self.learner.actors[0].call.remote("save_lora", os.path.join(d, "lora")))
        state = {"step": step, "policy_version": self.version, "sampler": self.sampler.state(),
                 "mlflow_run_id": self.tracker.run_id, "time": time.time()}
        with open(os.path.join(d, "state.json"), "w") as f:
            json.dump(state, f, indent=2)
        return d

    # ------------------------------------------------------------------ loop
    def run(self) -> Dict[str, Any]:
        from tqdm import tqdm

        cfg = self.cfg
        status = "FAILED"
        t0 = time.time()
        try:
            self.setup()
            if self.eval_ds is not None:
                self.evaluate(0)
            bar = tqdm(range(1, cfg.steps + 1), desc="grpo", disable=self.quiet, dynamic_ncols=True)
            for step in bar:
                m = self.step(step)
                post = {"reward": f"{m['reward/mean']:.4g}", "v": m["policy_version"],
                        "s/step": f"{m['time/step_s']:.1f}"}
                if "reward/oracle_score" in m:
                    post["oracle"] = f"{m['reward/oracle_score']:.2f}"
                bar.set_postfix(post)
                if self.eval_ds is not None and cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
                    self.evaluate(step)
                if cfg.save_every and step % cfg.save_every == 0 and step != cfg.steps:
                    self.save(step)
            final = self.save(cfg.steps, final=True)
            if self.eval_ds is not None:
                self.evaluate(cfg.steps, probes=cfg.eval_probes, save_dir=final)
            status = "FINISHED"
            summary = self.summary(time.time() - t0, final)
            self.tracker.log_dict(summary, "summary.json")
            return summary
        finally:
            self.shutdown(status)

    def summary(self, seconds: float, final_dir: str) -> Dict[str, Any]:
        h = self.history
        k = max(1, len(h) // 5)
        first = float(np.nanmean([m["reward/mean"] for m in h[:k]]))
        last = float(np.nanmean([m["reward/mean"] for m in h[-k:]]))
        s = {"pipeline": "grpo", "steps": len(h), "seconds": round(seconds, 1),
             "setup_seconds": round(self.setup_seconds, 1),
             "reward_first20": first, "reward_last20": last, "policy_version": self.version,
             "run_id": self.tracker.run_id, "tracking_uri": self.tracker.uri,
             "final_lora": os.path.join(final_dir, "lora"),
             "rollout_served": list(self.rollout.served), "reward_served": list(self.reward.served),
             "failed_rewards": int(sum(m["reward/failed"] for m in h)),
             "ratio_first_max_dev": max(m["train/ratio_first_max_dev"] for m in h)}
        if "reward/oracle_score" in h[0]:
            s["oracle_first20"] = float(np.mean([m["reward/oracle_score"] for m in h[:k]]))
            s["oracle_last20"] = float(np.mean([m["reward/oracle_score"] for m in h[-k:]]))
        if self.eval_history:
            s["eval_first"] = self.eval_history[0]
            s["eval_last"] = self.eval_history[-1]
        return s

    def shutdown(self, status: str = "FINISHED") -> None:
        import ray

        for pool in ("rollout", "reward", "learner"):
            p = getattr(self, pool, None)
            if p is not None:
                p.shutdown()
        if getattr(self, "tracker", None) is not None:
            self.tracker.finish(status)
        if getattr(self, "started_ray", False) and ray.is_initialized():
            ray.shutdown()


def summary_line(s: Dict[str, Any]) -> str:
    parts = [f"grpo: {s['steps']} steps in {s['seconds']:.0f}s (setup {s['setup_seconds']:.0f}s)",
             f"reward {s['reward_first20']:.4g} -> {s['reward_last20']:.4g} (first/last 20%)"]
    if "oracle_first20" in s:
        parts.append(f"oracle {s['oracle_first20']:.2f} -> {s['oracle_last20']:.2f}")
    if "eval_last" in s:
        parts.append(f"eval reward {s['eval_first']['eval/reward']:.4g} -> {s['eval_last']['eval/reward']:.4g}")
    parts += [f"policy v{s['policy_version']}", f"failed rewards {s['failed_rewards']}",
              f"mlflow run {s['run_id']}", f"LoRA {s['final_lora']}"]
    return " | ".join(parts)


def run_grpo(cfg, quiet: bool = False) -> Dict[str, Any]:
    from edit_rlhf.runtime import setup_process

    setup_process(cfg.cluster.torch_threads)
    trainer = GRPOTrainer(cfg, quiet=quiet)
    s = trainer.run()
    print(summary_line(s), flush=True)
    return s
