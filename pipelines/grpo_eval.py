"""The GRPO driver's held-out evaluation: deterministic (ODE) edits of the eval prompts by the current policy,
scored by the reward pool and, where the data has one, by the sandbox oracle; with probes, the same edits from
shuffled sources / instructions and the copy-the-source baseline, to show what the policy's edits depend on."""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edit_rlhf.grpo.plan import eval_seed
from edit_rlhf.pipelines.streaming import Job, stream

VARIANTS = ("matched", "shuffled_source", "shuffled_instruction")


def eval_jobs(seed: int, n: int, repeats: int, variant: str) -> List[Job]:
    """One job per eval prompt: `repeats` ODE edits of it, each from its own noise seed. The shuffled variants
    give every prompt another prompt's source or instruction (a derangement)."""
    idx = list(range(n))
    other = idx[1:] + idx[:1]
    jobs = []
    for i in idx:
        src = [other[i]] * repeats if variant == "shuffled_source" else None
        ins = [other[i]] * repeats if variant == "shuffled_instruction" else None
        seeds = [eval_seed(seed, i, k) for k in range(repeats)]
        jobs.append(Job(slot=i, split="eval", index=i, gen_args=([i] * repeats, seeds, src, ins)))
    return jobs


def _evaluate_call(actor, job: Job) -> list:
    """ODE edits on a rollout actor: refs of (meta, images)."""
    return actor.evaluate.remote(job.split, *job.gen_args)


def row_means(a: np.ndarray) -> np.ndarray:
    """Per-row mean ignoring NaN (failed scores); an all-NaN row stays NaN, without a warning."""
    ok = ~np.isnan(a)
    n = ok.sum(axis=1)
    return np.where(n > 0, np.where(ok, a, 0.0).sum(axis=1) / np.maximum(n, 1), np.nan)


def evaluate_policy(driver, probes: bool = False) -> Tuple[Dict[str, float], Dict[str, List[float]],
                                                          Optional[Dict[str, Any]]]:
    """Evaluate `driver`'s current policy on its first `data.eval_size` eval prompts x `data.eval_repeats` seeds.

    Returns (metrics, per-prompt {'reward', 'oracle_score'} of the matched edits, the matched edits with their
    indices/seeds/rewards for `eval_edits.npz`)."""
    import ray

    from edit_rlhf.viz import group_grid

    cfg = driver.cfg
    n = min(cfg.data.eval_size, len(driver.eval_ds))
    r = cfg.data.eval_repeats
    t = time.time()
    m: Dict[str, float] = {}
    per_prompt: Dict[str, List[float]] = {}
    matched: List[Job] = []
    for variant in (VARIANTS if probes and n > 1 else VARIANTS[:1]):
        jobs = eval_jobs(cfg.seed, n, r, variant)
        stream(jobs, driver.rollout, driver.reward, _evaluate_call, cfg.reward.timeout_s, cfg.reward.max_retries,
               expected_version=driver.version, batch_groups=cfg.reward.batch_groups)
        name = "" if variant == "matched" else variant + "_"
        per_edit = np.array([j.score.rewards for j in jobs], dtype=np.float64)  # (n, eval_repeats)
        rewards = row_means(per_edit)  # per prompt: the mean over its repeats
        m[f"eval/{name}reward"] = float(np.nanmean(rewards))
        m[f"eval/{name}failed"] = int(np.isnan(per_edit).sum())
        oracle = [j.score.oracle_scores for j in jobs]
        oracle = row_means(np.array(oracle, dtype=np.float64)) if all(o is not None for o in oracle) else None
        if oracle is not None:
            m[f"eval/{name}oracle_score"] = float(np.nanmean(oracle))
        if variant == "matched":
            matched = jobs
            per_prompt = {"reward": rewards.tolist(), **({"oracle_score": oracle.tolist()} if oracle is not None
                                                         else {})}
    if probes:
        pool = driver.reward
        res = ray.get([pool.actors[i % pool.size].score.remote("eval", i, ray.put(driver.eval_ds.image(i)[None]))
                       for i in range(n)])
        m["eval/copy_source_reward"] = float(np.nanmean([x["rewards"][0] for x in res]))
        if all(x.get("oracle_scores") for x in res):
            m["eval/copy_source_oracle_score"] = float(np.nanmean([x["oracle_scores"][0] for x in res]))
    m["eval/seconds"] = time.time() - t
    images = [ray.get(j.rollout.images) for j in matched]
    rows = [{"source": driver.eval_ds.image(j.index), "edits": im, "rewards": list(j.score.rewards),
             "title": driver.eval_ds.instructions[j.index]} for j, im in zip(matched[:4], images)]
    driver.tracker.log_image(group_grid(rows), f"eval/step_{driver.step:05d}.png")
    edits = {"images": np.concatenate(images),  # (n * r, H, W, 3)
             "indices": np.repeat(np.arange(n), r),
             "seeds": np.array([eval_seed(cfg.seed, i, k) for i in range(n) for k in range(r)]),
             "rewards": np.concatenate([np.asarray(j.score.rewards) for j in matched]),
             "policy_version": driver.version, "num_steps": cfg.sampling.eval_num_steps}
    return m, per_prompt, edits
