"""Streaming generate -> score over two actor pools, with retries and failure accounting.

Each job is one prompt: a generation call on the rollout pool returns object refs; as soon as one finishes
its images' ref goes to the least-loaded reward worker (scoring overlaps generation). The driver touches only
small metadata and the scores. A failed call, or one that works longer than `timeout_s` (measured from when
its actor starts it, not from when it was queued behind others), is resubmitted on another actor (bounded);
a prompt whose scoring fails on every attempt gets NaN rewards (counted, excluded from advantages); a
generation that fails on every attempt stops the run with the prompt named. A row that cannot be loaded (a
data error, e.g. a corrupt image under data.validate=schema) stops the run at once as a DatasetError: it
would fail on every actor, so it is not retried as a rollout failure.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import ray

from edit_rlhf.cluster.pools import ActorPool, PoolError
from edit_rlhf.grpo.records import GroupRollout, GroupScores

# A generation call: (rollout actor handle, job) -> the call's object refs, the small metadata ref first
# (e.g. `lambda a, j: a.rollout.remote(j.split, *j.gen_args)`).
Generate = Callable[[Any, "Job"], list]


class RolloutFailed(RuntimeError):
    pass


@dataclass
class Job:
    """One prompt's way through the stream (mutable scheduling state). Its results are typed records:
    `rollout` (GroupRollout) once generated, `score` (GroupScores) once scored."""

    slot: int
    split: str
    index: int
    gen_args: tuple  # arguments of the generation call after (split, ...)
    refs: Optional[list] = None  # the generation call's refs while it runs: [meta, images, (trajectory)]
    gen_actor: int = -1
    gen_attempts: int = 0
    rollout: Optional[GroupRollout] = None
    score_ref: Any = None
    score_actor: int = -1
    score_attempts: int = 0
    score: Optional[GroupScores] = None
    failed_scorers: set = field(default_factory=set)
    failed_generators: set = field(default_factory=set)
    errors: List[str] = field(default_factory=list)


@dataclass
class StreamStats:
    seconds: float = 0.0  # the whole stream: generation and scoring
    gen_seconds: float = 0.0  # until the last generation finished
    tail_seconds: float = 0.0  # scoring after the last generation (what overlap did not hide)
    gen_retries: int = 0
    score_retries: int = 0
    score_failures: int = 0  # prompts whose scoring failed on every attempt
    stale_generations: int = 0  # generations by an actor on an old policy version (redone elsewhere)
    stale_actors: set = field(default_factory=set)
    data_errors: int = 0  # rows that failed to load (a data error, never retried as a rollout failure)


def data_error(e: BaseException) -> Optional[Exception]:
    """The DatasetError / ImageError behind an actor's task error (a bad row under data.validate=schema), else
    None. Raised as a DatasetError naming the row, so the CLI prints one line and exits 2."""
    from edit_rlhf.data.images import ImageError
    from edit_rlhf.data.prompts import DatasetError

    cause = getattr(e, "cause", None)
    if isinstance(cause, DatasetError):
        return cause
    if isinstance(cause, ImageError):
        return DatasetError(str(cause))
    return None


def stream(jobs: List[Job], rollout: ActorPool, reward: ActorPool, generate: Generate,
           timeout_s: float, max_retries: int, on_event: Optional[Callable[[str, Job], None]] = None,
           expected_version: Optional[int] = None) -> StreamStats:
    """Run all jobs to completion (in place): each gets `rollout` and `score`. `generate` makes the generation
    call on a rollout actor (training rollouts or evaluation edits).

    Dead actors (RayActorError) are taken out of their pool; their requests go to the others. With
    `expected_version`, a generation made by an actor on another policy version (e.g. one Ray restarted and
    that has not been re-synced yet) is discarded and redone elsewhere; the actor is reported in
    `stats.stale_actors` and gets no more work in this call."""
    stats = StreamStats()
    t0 = time.time()
    gen_pending: Dict[Any, Job] = {}
    score_pending: Dict[Any, Job] = {}

    def submit_gen(job: Job) -> None:
        i = rollout.pick(job.failed_generators)
        job.gen_actor = i
        job.gen_attempts += 1
        rollout.started(i)
        job.refs = list(generate(rollout.actors[i], job))
        gen_pending[job.refs[0]] = job

    def submit_score(job: Job) -> None:
        i = reward.pick(job.failed_scorers)
        job.score_actor = i
        job.score_attempts += 1
        job.score_ref = reward.actors[i].score.remote(job.split, job.index, job.rollout.images)
        reward.started(i, job.score_ref)  # its timeout clock starts when the actor gets to it
        score_pending[job.score_ref] = job

    for job in jobs:
        submit_gen(job)
    while gen_pending or score_pending:
        ready, _ = ray.wait(list(gen_pending) + list(score_pending), num_returns=1, timeout=1.0)
        for ref in ready:
            if ref in gen_pending:
                job = gen_pending.pop(ref)
                try:
                    meta = ray.get(ref)
                    rollout.finished(job.gen_actor, ok=True)
                except ray.exceptions.RayError as e:
                    rollout.finished(job.gen_actor, ok=False)
                    bad = data_error(e)
                    if bad is not None:  # a corrupt row fails the same way on every actor: no retries
                        stats.data_errors += 1
                        raise bad from None
                    if isinstance(e, ray.exceptions.RayActorError):
                        rollout.mark_dead(job.gen_actor)
                    job.failed_generators.add(job.gen_actor)
                    job.errors.append(f"generate on {rollout.name}[{job.gen_actor}]: {type(e).__name__}: {e}")
                    if job.gen_attempts > max_retries:
                        raise RolloutFailed(f"prompt {job.split}[{job.index}] failed to generate "
                                            f"{job.gen_attempts} times; last error: {job.errors[-1][:500]}") from None
                    stats.gen_retries += 1
                    submit_gen(job)
                    continue
                if expected_version is not None and meta.get("policy_version") != expected_version:
                    stats.stale_generations += 1
                    stats.stale_actors.add(job.gen_actor)
                    rollout.mark_dead(job.gen_actor)  # until re-synced by the driver
                    job.failed_generators.add(job.gen_actor)
                    job.errors.append(f"generate on {rollout.name}[{job.gen_actor}]: stale policy version "
                                      f"{meta.get('policy_version')} != {expected_version}")
                    submit_gen(job)
                    continue
                job.rollout = GroupRollout(job.split, job.index, meta, job.refs[1],
                                           job.refs[2] if len(job.refs) > 2 else None)
                if not gen_pending:
                    stats.gen_seconds = time.time() - t0
                if on_event:
                    on_event("generated", job)
                submit_score(job)
            else:
                job = score_pending.pop(ref)
                try:
                    job.score = GroupScores.from_worker(ray.get(ref))
                    reward.finished(job.score_actor, ok=True, key=ref)
                    if on_event:
                        on_event("scored", job)
                except ray.exceptions.RayError as e:
                    reward.finished(job.score_actor, ok=False, key=ref)
                    if isinstance(e, ray.exceptions.RayActorError):
                        reward.mark_dead(job.score_actor)
                    _score_failed(job, f"{type(e).__name__}: {e}", reward, stats, max_retries, submit_score)
        for ref, job in list(score_pending.items()):  # per-request timeout, from the start of its work
            busy = reward.running_for(ref)
            if busy is not None and busy > timeout_s:
                score_pending.pop(ref)
                ray.cancel(ref, force=False)
                reward.finished(job.score_actor, ok=False, key=ref)
                _score_failed(job, f"timed out after {timeout_s:.0f}s", reward, stats, max_retries, submit_score)
    stats.seconds = time.time() - t0
    stats.tail_seconds = stats.seconds - stats.gen_seconds
    return stats


def _score_failed(job: Job, why: str, reward: ActorPool, stats: StreamStats, max_retries: int, resubmit) -> None:
    """Retry elsewhere (bounded); after the last attempt the prompt's rewards are NaN (counted). A pool with
    no live actor left raises PoolError: the run cannot be scored and stops with a clear message."""
    job.failed_scorers.add(job.score_actor)
    job.errors.append(f"score on {reward.name}[{job.score_actor}]: {why}")
    if not reward.alive():
        raise PoolError(f"pool '{reward.name}': every reward worker died; last error: {why[:300]}")
    if job.score_attempts <= max_retries:
        stats.score_retries += 1
        resubmit(job)
        return
    stats.score_failures += 1
    job.score = GroupScores.failed(job.rollout.n if job.rollout else 1, job.errors[-1])
