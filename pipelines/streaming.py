"""GRPO's generate -> score stream over the rollout and reward pools, on the one streaming scheduler
(pipelines/scheduler.py).

Each job is one prompt: its generation on the rollout pool returns object refs; as soon as one finishes, its
images' ref goes to the least-loaded reward worker (scoring overlaps generation). The driver touches only small
metadata and the scores. A failed call, or one that works longer than `timeout_s` (measured from when its actor
starts it, not from when it was queued behind others), is resubmitted on another actor (bounded); a prompt whose
scoring fails on every attempt gets NaN rewards (counted, excluded from advantages); a generation that fails on
every attempt stops the run with the prompt named. A row that cannot be loaded (a data error, e.g. a corrupt image
under data.validate=schema) stops the run at once as a DatasetError: it would fail on every actor, so it is not
retried as a rollout failure. With `expected_version`, a generation made on another policy version (an actor Ray
restarted and that is not re-synced yet) is discarded and redone elsewhere; its actor gets no more work in this
call and is reported in `stats.stale_actors` for the driver to re-sync.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional

from edit_rlhf.cluster.pools import ActorPool
from edit_rlhf.grpo.records import GroupRollout, GroupScores
from edit_rlhf.pipelines.scheduler import Scheduler, Stage, Task

# A generation call: (rollout actor handle, job) -> the call's object refs, the small metadata ref first
# (e.g. `lambda a, j: a.rollout.remote(j.split, *j.gen_args)`).
Generate = Callable[[Any, "Job"], list]


class RolloutFailed(RuntimeError):
    pass


@dataclass
class Job:
    """One prompt's way through the stream. Its results are typed records: `rollout` (GroupRollout) once
    generated, `score` (GroupScores) once scored; `errors` lists every failed or rejected attempt."""

    slot: int
    split: str
    index: int
    gen_args: tuple  # arguments of the generation call after (split, ...)
    rollout: Optional[GroupRollout] = None
    score: Optional[GroupScores] = None
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
           expected_version: Optional[int] = None, batch_groups: int = 1) -> StreamStats:
    """Run all jobs to completion (in place): each gets `rollout` and `score`. `generate` makes the generation
    call on a rollout actor (training rollouts or evaluation edits); `on_event('generated'|'scored', job)`.
    `batch_groups` > 1: the groups waiting for a reward worker go to it in one call (up to that many), and each
    worker takes one call at a time, so a busy reward pool gets full batches instead of a queue of small ones."""
    stats = StreamStats()

    def stale(task: Task, meta: dict, actor: int) -> Optional[str]:
        if expected_version is None or meta.get("policy_version") == expected_version:
            return None
        stats.stale_actors.add(actor)
        rollout.mark_dead(actor)  # until the driver re-syncs it
        return f"stale policy version {meta.get('policy_version')} != {expected_version}"

    def gave_up(task: Task, why: str) -> RolloutFailed:
        j = task.payload
        return RolloutFailed(f"prompt {j.split}[{j.index}] failed to generate {task.attempts['generate']} times; "
                             f"last error: {why[:500]}")

    def done(task: Task, stage: str) -> None:
        job = task.payload
        job.errors = list(task.errors)
        if stage == "generate":
            refs = task.refs["generate"]
            job.rollout = GroupRollout(job.split, job.index, task.results["generate"], refs[1],
                                       refs[2] if len(refs) > 2 else None)
        else:
            r = task.results["score"]
            job.score = r if isinstance(r, GroupScores) else GroupScores.from_worker(r)
        if on_event is not None:
            on_event("generated" if stage == "generate" else "scored", job)

    stages = [
        Stage("generate", rollout, lambda a, t: generate(a, t.payload), max_retries=max_retries,
              reject=stale, fatal=data_error, error=gave_up),
        Stage("score", reward, lambda a, t: a.score.remote(t.payload.split, t.payload.index, t.refs["generate"][1]),
              max_retries=max_retries, timeout_s=timeout_s,
              on_failure=lambda t, why: GroupScores.failed(t.payload.rollout.n, f"score on {reward.name}: {why}"),
              **({} if batch_groups <= 1 else dict(max_batch=batch_groups, max_inflight=1, batch_call=_score_groups))),
    ]
    t0 = time.time()
    sched = Scheduler(stages, on_stage=done)
    sched.run(jobs)
    g, s = sched.stats["generate"], sched.stats["score"]
    stats.seconds = time.time() - t0
    stats.gen_seconds = g.last_finish_s
    stats.tail_seconds = stats.seconds - stats.gen_seconds
    stats.gen_retries, stats.stale_generations = g.retries, g.rejected
    stats.score_retries, stats.score_failures = s.retries, s.failures
    return stats


def _score_groups(actor, tasks: List[Task]):
    """One reward call for several groups of the same split (RewardWorker.score_groups)."""
    jobs = [t.payload for t in tasks]
    return actor.score_groups.remote(jobs[0].split, [j.index for j in jobs], *[t.refs["generate"][1] for t in tasks])
