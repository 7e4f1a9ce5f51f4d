"""One streaming scheduler over actor pools: every item runs through a few stages, each on its own pool.

A `Stage` names its pool, a typed call `(actor_handle, task) -> ObjectRef | [ObjectRef, ...]` and the stage
it follows (`after`, by default the stage before it in the list; None for a stage that starts at submission).
A stage starts for an item as soon as the stage it follows has finished for that item, so stages overlap
across items (item 1 is scored while item 7 is still generated); several stages may follow the same one
(fan-out: one generation scored by a judge, an RRM and an oracle at once). When a call returns several refs
(`num_returns > 1`) the scheduler waits on the first (small: metadata) and keeps the rest untouched in
`task.refs[stage]` (large: images), for the next stage to pass on as object refs.

Per stage: least-loaded dispatch (`ActorPool.pick`), at most `max_inflight` requests per actor (the rest wait
in the scheduler, not in the actor's queue), a per-request timeout counted from the start of the request's
*work* (`ActorPool.running_for`: a request queued behind others on its actor is not timed out), bounded
retries on another actor, dead actors (RayActorError) taken out of the pool (no live actor left: PoolError),
a `reject` hook that sends a result back to be redone elsewhere (e.g. made on a stale policy version), a
`fatal` hook for errors no retry can fix (a corrupt row), and a policy for the last failure: raise (the
stage's `error`, default StageFailed) or fill a failure result (`on_failure`) and count it. Counted per stage
in `StageStats`.

Blocking: `Scheduler(stages).run(payloads) -> tasks`. Non-blocking: `submit(payloads)`, then `poll(timeout)`
(returns the tasks finished meanwhile) until `pending == 0`, or `drain()`; the driver can do other work
(a learner step) between polls. Only the driver's thread may use a Scheduler.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Sequence, Set, Union

import ray

from edit_rlhf.cluster.pools import ActorPool, PoolError

PREVIOUS = "<previous>"  # Stage.after default: the stage before it in the list (none for the first)
Refs = Union[Any, Sequence[Any]]  # an ObjectRef, or the list of a call with num_returns > 1


class StageFailed(RuntimeError):
    """A stage failed on every attempt and has no `on_failure` result to fill in."""


@dataclass(eq=False)
class Task:
    """One item on its way through the stages. `payload` is the caller's; the rest is filled in."""

    id: int  # submission order within its scheduler
    payload: Any
    results: Dict[str, Any] = field(default_factory=dict)  # stage -> value of its first ref (or filled failure)
    refs: Dict[str, list] = field(default_factory=dict)  # stage -> all refs of its successful call
    actors: Dict[str, Optional[int]] = field(default_factory=dict)  # stage -> index of the actor that answered
    attempts: Dict[str, int] = field(default_factory=dict)  # stage -> calls made (retries and redos included)
    failed: Dict[str, str] = field(default_factory=dict)  # stage -> why, for filled failures and skipped stages
    errors: List[str] = field(default_factory=list)  # every failure and rejection, in order
    done: bool = False
    tried: Dict[str, Set[int]] = field(default_factory=dict)  # stage -> actors that failed / were rejected
    rejects: Dict[str, int] = field(default_factory=dict)
    left: Set[str] = field(default_factory=set)  # stages still to finish


@dataclass
class Stage:
    name: str
    pool: ActorPool
    call: Callable[[Any, Task], Refs]  # (actor handle, task) -> ObjectRef(s); submit only, never ray.get
    after: Optional[str] = PREVIOUS
    max_retries: Optional[int] = 0  # extra calls after a failure; None: until every live actor failed it
    timeout_s: Optional[float] = None  # per request (per task of a batch), from the start of its work; None: none
    max_inflight: Optional[int] = None  # per actor; None: no limit (the actor queues them itself)
    distinct_actors: bool = False  # True: never retry on an actor that failed this item (none left: last failure)
    on_failure: Optional[Callable[[Task, str], Any]] = None  # the result filled in after the last failure
    error: Optional[Callable[[Task, str], BaseException]] = None  # raised after the last failure (no on_failure)
    reject: Optional[Callable[[Task, Any, int], Optional[str]]] = None  # (task, value, actor) -> why, or None
    fatal: Optional[Callable[[BaseException], Optional[BaseException]]] = None  # error -> raise it now, no retry
    # Batching: with `max_batch` > 1 and `batch_call(actor, tasks) -> one ObjectRef` (whose value is one value per
    # task), the tasks waiting for this stage go to an actor together, up to `max_batch` per call. With
    # `max_inflight=1` that batches dynamically: single tasks while the pool keeps up, full batches once work
    # queues behind a busy actor (a vLLM reward worker then gets many groups in one engine run).
    max_batch: int = 1
    batch_call: Optional[Callable[[Any, List["Task"]], Any]] = None

    def __post_init__(self) -> None:
        if self.max_retries is None and not self.distinct_actors:
            raise ValueError(f"stage {self.name!r}: max_retries=None (unbounded) needs distinct_actors=True")
        if self.max_retries is not None and self.max_retries < 0:
            raise ValueError(f"stage {self.name!r}: max_retries must be >= 0, got {self.max_retries}")
        if self.max_inflight is not None and self.max_inflight < 1:
            raise ValueError(f"stage {self.name!r}: max_inflight must be >= 1, got {self.max_inflight}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError(f"stage {self.name!r}: timeout_s must be > 0, got {self.timeout_s}")
        if self.max_batch < 1 or (self.max_batch > 1 and self.batch_call is None):
            raise ValueError(f"stage {self.name!r}: max_batch={self.max_batch} needs max_batch >= 1 and, above 1, "
                             f"a batch_call")


@dataclass
class StageStats:
    calls: int = 0  # requests submitted
    retries: int = 0  # resubmissions after a failure or timeout
    failures: int = 0  # items whose last attempt failed and got the on_failure result
    timeouts: int = 0  # requests that worked longer than timeout_s (cancelled; counted in retries/failures too)
    rejected: int = 0  # results the reject hook sent back (redone elsewhere)
    dead_actors: int = 0  # actors this stage marked dead (RayActorError)
    skipped: int = 0  # items not run because the stage they follow failed
    last_finish_s: float = 0.0  # seconds from the scheduler's start to this stage's last finish

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class _Request:
    task: Task
    stage: Stage
    actor: int
    refs: list
    batch: Optional[List[Task]] = None  # a batched call: its tasks (task is the first), one value each

    @property
    def tasks(self) -> List[Task]:
        return self.batch or [self.task]


class Scheduler:
    """Runs tasks through `stages`. `on_stage(task, stage_name)` is called when a stage finishes for a task
    (also for filled failures and skipped stages), before the stages that follow it are submitted."""

    def __init__(self, stages: Sequence[Stage], on_stage: Optional[Callable[[Task, str], None]] = None,
                 tick_s: float = 1.0):
        self.stages: Dict[str, Stage] = {}
        self.children: Dict[Optional[str], List[str]] = {None: []}
        prev: Optional[str] = None
        for st in stages:
            if st.name in self.stages:
                raise ValueError(f"stage names must be unique: {st.name!r} twice")
            after = prev if st.after == PREVIOUS else st.after
            if after is not None and after not in self.stages:
                raise ValueError(f"stage {st.name!r}: after={after!r} is not an earlier stage "
                                 f"(have {list(self.stages)})")
            self.stages[st.name] = st
            self.children.setdefault(after, []).append(st.name)
            self.children[st.name] = []
            prev = st.name
        if not self.stages:
            raise ValueError("a scheduler needs at least one stage")
        timeouts = [st.timeout_s for st in stages if st.timeout_s]
        self.tick_s = min([tick_s] + [t / 4 for t in timeouts])  # timeouts are checked at least this often
        self.on_stage = on_stage
        self.queues: Dict[str, Deque[Task]] = {n: deque() for n in self.stages}
        self.inflight: Dict[Any, _Request] = {}
        self.finished: List[Task] = []
        self.open = 0
        self.next_id = 0
        self.reset_stats()

    # ------------------------------------------------------------------ public
    def reset_stats(self) -> None:
        """Zero the counters; `last_finish_s` counts from now."""
        self.t0 = time.time()
        self.stats: Dict[str, StageStats] = {n: StageStats() for n in self.stages}

    @property
    def pending(self) -> int:
        """Tasks submitted and not finished yet."""
        return self.open

    def submit(self, payloads: Iterable[Any]) -> List[Task]:
        tasks = []
        for p in payloads:
            t = Task(id=self.next_id, payload=p, left=set(self.stages))
            self.next_id += 1
            self.open += 1
            tasks.append(t)
            for name in self.children[None]:
                self._enqueue(t, name)
        self._dispatch()
        return tasks

    def poll(self, timeout: float = 1.0) -> List[Task]:
        """Process results for up to `timeout` seconds, returning early once a task has finished every stage.
        Returns the tasks finished since the last poll (each once). Raises what a stage's failure policy raises
        (after cancelling the requests still in flight)."""
        deadline = time.time() + max(0.0, timeout)
        while True:
            self._dispatch()
            if self.finished or not self.inflight:
                break
            wait = max(0.0, min(deadline - time.time(), self.tick_s))
            refs = list(self.inflight)
            ready, rest = ray.wait(refs, num_returns=1, timeout=wait)
            if ready and rest:  # everything else already done too
                more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
                ready += more
            for ref in ready:
                self._complete(ref)
            self._check_timeouts()
            if time.time() >= deadline:
                self._dispatch()
                break
        if self.open and not self.inflight and any(self.queues.values()):
            raise PoolError("scheduler: tasks wait but nothing is in flight (no actor can take them)")
        out, self.finished = self.finished, []
        return out

    def drain(self) -> List[Task]:
        """Block until every submitted task has finished; returns those not yet returned by `poll`."""
        out: List[Task] = []
        while self.open or self.finished:
            out += self.poll(self.tick_s)
        return out

    def run(self, payloads: Iterable[Any]) -> List[Task]:
        """Submit `payloads` and block until all are done; their tasks in submission order."""
        tasks = self.submit(payloads)
        self.drain()
        return tasks

    def cancel(self) -> None:
        """Cancel every request in flight and forget the queued tasks (their pools' bookkeeping is released)."""
        for ref, req in list(self.inflight.items()):
            try:
                ray.cancel(ref, force=False)
            except Exception:  # already finished or its actor is gone: nothing to cancel
                pass
            req.stage.pool.finished(req.actor, ok=False, key=ref)
        self.inflight.clear()
        for q in self.queues.values():
            q.clear()
        self.open = 0

    # ------------------------------------------------------------------ dispatch
    def _enqueue(self, task: Task, name: str) -> None:
        task.tried.setdefault(name, set())
        task.attempts.setdefault(name, 0)
        self.queues[name].append(task)

    def _dispatch(self) -> None:
        for name, q in self.queues.items():
            st = self.stages[name]
            waiting: Deque[Task] = deque()
            while q:
                task = q.popleft()
                i = st.pool.pick(task.tried[name], st.max_inflight)
                if i is None:  # every candidate actor is at max_inflight
                    waiting.append(task)
                    continue
                if st.max_batch > 1:
                    batch = [task]
                    for other in list(q):  # the next waiting tasks this actor has not failed, up to max_batch
                        if len(batch) == st.max_batch:
                            break
                        if i not in other.tried[name]:
                            q.remove(other)
                            batch.append(other)
                    self._submit_batch(batch, st, i)
                    continue
                self._submit(task, st, i)
            self.queues[name] = waiting

    def _submit(self, task: Task, st: Stage, i: int) -> None:
        out = st.call(st.pool.actors[i], task)
        refs = list(out) if isinstance(out, (list, tuple)) else [out]
        st.pool.started(i, refs[0])  # its timeout clock starts when the actor gets to it
        task.attempts[st.name] += 1
        self.stats[st.name].calls += 1
        self.inflight[refs[0]] = _Request(task, st, i, refs)

    def _submit_batch(self, tasks: List[Task], st: Stage, i: int) -> None:
        ref = st.batch_call(st.pool.actors[i], tasks)
        st.pool.started(i, ref)
        for t in tasks:
            t.attempts[st.name] += 1
        self.stats[st.name].calls += 1
        self.inflight[ref] = _Request(tasks[0], st, i, [ref], batch=list(tasks))

    # ------------------------------------------------------------------ results
    def _complete(self, ref) -> None:
        req = self.inflight.pop(ref)
        st, i = req.stage, req.actor
        try:
            value = ray.get(ref)
        except ray.exceptions.RayError as e:
            st.pool.finished(i, ok=False, key=ref)
            bad = st.fatal(e) if st.fatal is not None else None
            if bad is not None:  # fails the same way on every actor: no retries
                self.cancel()
                raise bad from None
            if isinstance(e, ray.exceptions.RayActorError):
                if i not in st.pool.dead:  # its other requests in flight fail the same way: count it once
                    self.stats[st.name].dead_actors += 1
                st.pool.mark_dead(i)
            for task in req.tasks:
                self._failed(task, st, i, f"{type(e).__name__}: {e}")
            return
        st.pool.finished(i, ok=True, key=ref)
        if req.batch is not None:
            if not isinstance(value, (list, tuple)) or len(value) != len(req.batch):
                for task in req.batch:
                    self._failed(task, st, i, f"batch call returned {type(value).__name__} for {len(req.batch)} tasks")
                return
            for task, v in zip(req.batch, value):
                self._result(task, st, i, v, [])
            return
        self._result(req.task, st, i, value, req.refs)

    def _result(self, task: Task, st: Stage, i: int, value: Any, refs: list) -> None:
        why = st.reject(task, value, i) if st.reject is not None else None
        if why:
            self.stats[st.name].rejected += 1
            task.tried[st.name].add(i)
            task.errors.append(f"{st.name} on {st.pool.name}[{i}]: rejected: {why}")
            task.rejects[st.name] = task.rejects.get(st.name, 0) + 1
            if task.rejects[st.name] > st.pool.size:  # rejected by more actors than the pool has: give up
                self._give_up(task, st, f"rejected {task.rejects[st.name]} times: {why}")
            else:
                self._enqueue(task, st.name)
            return
        self._stage_done(task, st.name, value, refs, i)

    def _check_timeouts(self) -> None:
        for ref, req in list(self.inflight.items()):
            st = req.stage
            if st.timeout_s is None:
                continue
            busy = st.pool.running_for(ref)
            if busy is not None and busy > st.timeout_s * len(req.tasks):  # a batched call: timeout_s per task
                del self.inflight[ref]
                try:
                    ray.cancel(ref, force=False)
                except Exception:
                    pass
                st.pool.finished(req.actor, ok=False, key=ref)
                self.stats[st.name].timeouts += 1
                for task in req.tasks:
                    self._failed(task, st, req.actor, f"timed out after {st.timeout_s:.0f}s")

    def _failed(self, task: Task, st: Stage, i: int, why: str) -> None:
        """Retry elsewhere while the stage's budget allows, else apply its last-failure policy."""
        task.tried[st.name].add(i)
        task.errors.append(f"{st.name} on {st.pool.name}[{i}]: {why}")
        live = st.pool.alive()
        if not live:
            self.cancel()
            raise PoolError(f"pool '{st.pool.name}': no live actor left ({st.pool.size} died); "
                            f"last error: {why[:300]}")
        budget = st.max_retries is None or task.attempts[st.name] <= st.max_retries
        untried = not st.distinct_actors or any(j not in task.tried[st.name] for j in live)
        if budget and untried:
            self.stats[st.name].retries += 1
            self._enqueue(task, st.name)
            return
        self._give_up(task, st, why)

    def _give_up(self, task: Task, st: Stage, why: str) -> None:
        if st.on_failure is None:
            exc = st.error(task, why) if st.error is not None else StageFailed(
                f"stage '{st.name}' (pool '{st.pool.name}'): task {task.id} failed {task.attempts[st.name]} "
                f"time(s); last error: {why[:500]}")
            self.cancel()
            raise exc
        self.stats[st.name].failures += 1
        task.failed[st.name] = why
        self._stage_done(task, st.name, st.on_failure(task, why), [], None, failed=True)

    def _stage_done(self, task: Task, name: str, value: Any, refs: list, actor: Optional[int],
                    failed: bool = False) -> None:
        task.results[name] = value
        task.refs[name] = refs
        task.actors[name] = actor
        task.left.discard(name)
        self.stats[name].last_finish_s = time.time() - self.t0
        if self.on_stage is not None:
            self.on_stage(task, name)
        for child in self.children[name]:
            if failed:
                self._skip(task, child, f"skipped: stage '{name}' failed")
            else:
                self._enqueue(task, child)
        if not task.left and not task.done:
            task.done = True
            self.open -= 1
            self.finished.append(task)

    def _skip(self, task: Task, name: str, why: str) -> None:
        st = self.stages[name]
        self.stats[name].skipped += 1
        task.failed[name] = why
        value = st.on_failure(task, why) if st.on_failure is not None else None
        self._stage_done(task, name, value, [], None, failed=True)
