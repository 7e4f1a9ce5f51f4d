"""The streaming scheduler (pipelines/scheduler.py) on real Ray actors: overlap of stages across items, retries
on another actor, timeouts from the start of work, dead actors, per-actor concurrency, rejected results.

Order and overlap are checked from the timestamps the actors record, never from durations."""
import os
import threading
import time

import pytest


def test_stage_settings_are_validated_and_after_must_name_an_earlier_stage():
    from edit_rlhf.pipelines.scheduler import Scheduler, Stage

    with pytest.raises(ValueError, match="needs distinct_actors"):
        Stage("s", None, lambda a, t: None, max_retries=None)
    with pytest.raises(ValueError, match="max_inflight"):
        Stage("s", None, lambda a, t: None, max_inflight=0)
    with pytest.raises(ValueError, match="not an earlier stage"):
        Scheduler([Stage("a", None, lambda a, t: None), Stage("b", None, lambda a, t: None, after="c")])
    with pytest.raises(ValueError, match="unique"):
        Scheduler([Stage("a", None, lambda a, t: None), Stage("a", None, lambda a, t: None)])


# ------------------------------------------------------------------------------------------------ on Ray
def _worker_class(ray, max_concurrency=1):
    @ray.remote(max_concurrency=max_concurrency)
    class Worker:
        """work(): sleeps `delay` and records (tag, start, end); its behaviour per actor set at construction."""

        def __init__(self, name, fail=False, die=False, version=0):
            self.name, self.fail, self.die, self.version = name, fail, die, version
            self.log = []
            self.lock = threading.Lock()
            self.now = 0
            self.most = 0  # most requests worked on at once

        def info(self):
            return {}

        def work(self, tag, delay, data=None):
            if self.die:
                os._exit(1)
            with self.lock:
                self.now += 1
                self.most = max(self.most, self.now)
            t0 = time.time()
            time.sleep(delay)
            with self.lock:
                self.now -= 1
                self.log.append((tag, t0, time.time()))
            if self.fail:
                raise RuntimeError(f"{self.name} always fails")
            return {"actor": self.name, "tag": tag, "version": self.version, "data": data}

        def two(self, tag, delay):  # num_returns=2: small metadata first, the payload second
            r = self.work(tag, delay)
            return r, f"payload-{tag}"

        def records(self):
            return {"log": self.log, "most": self.most}

    return Worker


def _pool(ray, name, n, behaviours=None, max_concurrency=1):
    from edit_rlhf.cluster.pools import ActorPool
    from edit_rlhf.config.schema import PoolConfig

    behaviours = behaviours or {}
    pool = ActorPool(name, _worker_class(ray, max_concurrency), PoolConfig(size=n, num_cpus=0.1),
                     lambda i: (f"{name}{i}",))
    for i, kw in behaviours.items():  # replace actor i with one that behaves differently
        ray.kill(pool.actors[i])
        pool.actors[i] = _worker_class(ray, max_concurrency).options(num_cpus=0.1).remote(f"{name}{i}", **kw)
    pool.wait_ready()
    return pool


@pytest.mark.integration
def test_stages_overlap_across_items_and_pass_refs_on(ray_cluster):
    """6 items, generate (0.3 s, 2 actors) -> score (1 actor): item 0's score starts before the last item's
    generation ends. Non-blocking use: submit, then poll until nothing is pending."""
    import ray

    from edit_rlhf.pipelines.scheduler import Scheduler, Stage

    gen, score = _pool(ray, "gen", 2), _pool(ray, "score", 1)
    try:
        seen = []
        sched = Scheduler([
            Stage("generate", gen, lambda a, t: a.two.options(num_returns=2).remote(t.payload, 0.3)),
            Stage("score", score, lambda a, t: a.work.remote(t.payload, 0.05, t.refs["generate"][1])),
        ], on_stage=lambda t, s: seen.append((t.id, s)))
        tasks = sched.submit(range(6))
        done = []
        while sched.pending:
            done += sched.poll(0.5)
        assert sorted(t.id for t in done) == list(range(6)) and all(t.done for t in tasks)
        assert [t.results["score"]["data"] for t in tasks] == [f"payload-{i}" for i in range(6)]  # ref resolved
        gen_log = {tag: (s, e) for a in gen.actors for tag, s, e in ray.get(a.records.remote())["log"]}
        score_log = {tag: (s, e) for a in score.actors for tag, s, e in ray.get(a.records.remote())["log"]}
        gen_end = max(e for s, e in gen_log.values())
        assert score_log[0][0] < gen_end  # scoring of the first item overlapped later generations
        assert all(score_log[i][0] >= gen_log[i][1] for i in range(6))  # each score after its own generation
        assert seen.index((0, "score")) < seen.index((5, "generate"))
        st = sched.stats
        assert st["generate"].calls == 6 and st["score"].calls == 6 and st["score"].retries == 0
        assert st["score"].last_finish_s >= st["generate"].last_finish_s
    finally:
        gen.shutdown(), score.shutdown()


@pytest.mark.integration
def test_a_failed_call_is_retried_on_another_actor_and_the_last_failure_follows_the_policy(ray_cluster):
    import ray

    from edit_rlhf.pipelines.scheduler import Scheduler, Stage, StageFailed

    pool = _pool(ray, "flaky", 2, {0: {"fail": True}})
    try:
        call = lambda a, t: a.work.remote(t.payload, 0.0)  # noqa: E731
        tasks = Scheduler([Stage("s", pool, call, max_retries=1)]).run([0])
        t = tasks[0]
        assert t.attempts["s"] == 2 and t.actors["s"] == 1 and t.results["s"]["actor"] == "flaky1"
        assert "flaky0 always fails" in t.errors[0]

        # no retry left: fill a failure result (counted) ...
        only_bad = lambda a, t: pool.actors[0].work.remote(t.payload, 0.0)  # noqa: E731
        sched = Scheduler([Stage("s", pool, only_bad, max_retries=1, on_failure=lambda t, why: {"failed": why})])
        t = sched.run([0])[0]
        assert t.results["s"]["failed"].startswith("RayTaskError") and sched.stats["s"].failures == 1
        assert sched.stats["s"].retries == 1 and "s" in t.failed
        # ... or raise the stage's named error
        class Named(RuntimeError):
            pass

        with pytest.raises(Named, match="item 0 gave up"):
            Scheduler([Stage("s", pool, only_bad, error=lambda t, why: Named(f"item {t.payload} gave up"))]).run([0])
        with pytest.raises(StageFailed, match="stage 's'"):
            Scheduler([Stage("s", pool, only_bad)]).run([0])
    finally:
        pool.shutdown()


@pytest.mark.integration
def test_distinct_actors_tries_each_live_actor_once_then_gives_up(ray_cluster):
    import ray

    from edit_rlhf.pipelines.scheduler import Scheduler, Stage, StageFailed

    pool = _pool(ray, "bad", 3, {0: {"fail": True}, 1: {"fail": True}, 2: {"fail": True}})
    try:
        sched = Scheduler([Stage("s", pool, lambda a, t: a.work.remote(0, 0.0), max_retries=None,
                                 distinct_actors=True)])
        with pytest.raises(StageFailed, match="failed 3 time"):
            sched.run([0])
    finally:
        pool.shutdown()


@pytest.mark.integration
def test_timeouts_count_from_the_start_of_work_not_from_submission(ray_cluster):
    """4 requests of 0.5 s on one actor, timeout 0.9 s: the 3rd and 4th wait 1-1.5 s in the actor's queue and
    are not timed out. A request that itself works 3 s is."""
    import ray

    from edit_rlhf.pipelines.scheduler import Scheduler, Stage

    pool = _pool(ray, "slow", 1)
    try:
        sched = Scheduler([Stage("s", pool, lambda a, t: a.work.remote(t.payload, t.payload[1]), timeout_s=0.9)])
        tasks = sched.run([(k, 0.5) for k in range(4)])
        assert sched.stats["s"].timeouts == 0 and [t.attempts["s"] for t in tasks] == [1] * 4
        log = ray.get(pool.actors[0].records.remote())["log"]
        assert log[-1][1] - min(s for _, s, _ in log) >= 3 * 0.5  # the 4th did wait behind three others

        sched = Scheduler([Stage("s", pool, lambda a, t: a.work.remote(t.payload, 3.0), timeout_s=0.9,
                                 on_failure=lambda t, why: None)])
        t = sched.run(["long"])[0]
        assert sched.stats["s"].timeouts == 1 and sched.stats["s"].failures == 1
        assert t.failed["s"] == "timed out after 1s" and pool.inflight == [0]
    finally:
        pool.shutdown()


@pytest.mark.integration
def test_a_dead_actors_work_goes_elsewhere_and_no_live_actor_is_a_pool_error(ray_cluster):
    import ray

    from edit_rlhf.cluster.pools import PoolError
    from edit_rlhf.pipelines.scheduler import Scheduler, Stage

    pool = _pool(ray, "mortal", 2, {0: {"die": True}})
    try:
        sched = Scheduler([Stage("s", pool, lambda a, t: a.work.remote(t.payload, 0.05), max_retries=1)])
        tasks = sched.run(range(4))
        assert all(t.results["s"]["actor"] == "mortal1" for t in tasks)
        assert pool.dead == {0} and sched.stats["s"].dead_actors == 1
        assert any("RayActorError" in e or "ActorDied" in e for t in tasks for e in t.errors)
    finally:
        pool.shutdown()
    pool = _pool(ray, "doomed", 1, {0: {"die": True}})
    try:
        with pytest.raises(PoolError, match="no live actor left"):
            Scheduler([Stage("s", pool, lambda a, t: a.work.remote(0, 0.0), max_retries=3)]).run([0])
    finally:
        pool.shutdown()


@pytest.mark.integration
def test_per_actor_concurrency_limit_is_respected(ray_cluster):
    """Actors that could run 4 requests at once (threaded) get at most max_inflight=2 from the scheduler."""
    import ray

    from edit_rlhf.pipelines.scheduler import Scheduler, Stage

    pool = _pool(ray, "threaded", 2, max_concurrency=4)
    try:
        sched = Scheduler([Stage("s", pool, lambda a, t: a.work.remote(t.payload, 0.3), max_inflight=2)])
        tasks = sched.run(range(8))
        assert all(t.done for t in tasks)
        most = [ray.get(a.records.remote())["most"] for a in pool.actors]
        assert most == [2, 2], most  # the limit was reached and never passed
        assert pool.inflight == [0, 0] and sum(pool.served) == 8
    finally:
        pool.shutdown()


@pytest.mark.integration
def test_a_rejected_result_is_redone_on_another_actor_and_counted(ray_cluster):
    import ray

    from edit_rlhf.pipelines.scheduler import Scheduler, Stage

    pool = _pool(ray, "ver", 2, {0: {"version": 0}, 1: {"version": 1}})
    try:
        stale = set()

        def reject(task, value, actor):
            if value["version"] != 1:
                stale.add(actor)
                return f"stale policy version {value['version']} != 1"
            return None

        sched = Scheduler([Stage("s", pool, lambda a, t: a.work.remote(t.payload, 0.0), reject=reject),
                           Stage("next", pool, lambda a, t: a.work.remote(t.results["s"]["actor"], 0.0))])
        t = sched.run([0])[0]
        assert t.results["s"]["actor"] == "ver1" and t.attempts["s"] == 2 and stale == {0}
        assert sched.stats["s"].rejected == 1 and sched.stats["s"].retries == 0
        assert "rejected: stale policy version 0 != 1" in t.errors[0]
        assert t.results["next"]["tag"] == "ver1"  # the next stage saw only the accepted result
    finally:
        pool.shutdown()


@pytest.mark.integration
def test_fan_out_stages_and_a_failed_stage_skips_what_follows_it(ray_cluster):
    """generate -> (a, b) in parallel; b -> c. When b fails with a filled result, c is skipped (counted)."""
    import ray

    from edit_rlhf.pipelines.scheduler import Scheduler, Stage

    good, bad = _pool(ray, "good", 1), _pool(ray, "bad", 1, {0: {"fail": True}})
    try:
        w = lambda a, t: a.work.remote(t.payload, 0.0)  # noqa: E731
        sched = Scheduler([Stage("generate", good, w), Stage("a", good, w, after="generate"),
                           Stage("b", bad, w, after="generate", on_failure=lambda t, why: "nan"),
                           Stage("c", good, w, on_failure=lambda t, why: why)])
        tasks = sched.run(range(3))
        assert all(t.done and t.results["a"]["actor"] == "good0" and t.results["b"] == "nan" for t in tasks)
        assert [t.results["c"] for t in tasks] == ["skipped: stage 'b' failed"] * 3
        assert sched.stats["c"].skipped == 3 and sched.stats["c"].calls == 0 and sched.stats["b"].failures == 3
    finally:
        good.shutdown(), bad.shutdown()


@pytest.mark.integration
def test_batched_stage_sends_the_waiting_tasks_together_and_maps_results_back(ray_cluster):
    """A batch stage with max_inflight=1: the first generated item is scored alone; items generated while the
    scorer is busy wait in the scheduler and go to it in calls of at most `max_batch`; each task gets its own
    value back. A batch that fails is retried task by task."""
    import ray

    from edit_rlhf.pipelines.scheduler import Scheduler, Stage

    @ray.remote
    class BatchScorer:
        def __init__(self):
            self.calls = []
            self.failed_once = False

        def info(self):
            return {}

        def score_many(self, tags, fail_tag=None):
            if fail_tag in tags and not self.failed_once:
                self.failed_once = True
                raise RuntimeError("batch failed")
            self.calls.append(list(tags))
            time.sleep(0.5)
            return [{"tag": t} for t in tags]

        def log(self):
            return self.calls

    from edit_rlhf.cluster.pools import ActorPool
    from edit_rlhf.config.schema import PoolConfig

    gen = _pool(ray, "gen", 2)
    score = ActorPool("score", BatchScorer, PoolConfig(size=1, num_cpus=0.1), lambda i: ())
    score.wait_ready()
    try:
        sched = Scheduler([
            Stage("generate", gen, lambda a, t: a.work.remote(t.payload, 0.05)),
            Stage("score", score, lambda a, t: a.score_many.remote([t.payload]), max_inflight=1, max_batch=3,
                  max_retries=1, batch_call=lambda a, ts: a.score_many.remote([t.payload for t in ts], fail_tag=7)),
        ])
        tasks = sched.run(range(8))
        assert [t.results["score"]["tag"] for t in tasks] == list(range(8))  # every task got its own value
        calls = ray.get(score.actors[0].log.remote())
        assert sorted(x for c in calls for x in c) == list(range(8))  # each scored once (the failed batch redone)
        assert max(len(c) for c in calls) > 1 and all(len(c) <= 3 for c in calls)  # batched, never above max_batch
        st = sched.stats["score"]
        assert st.calls == len(calls) + 1 and st.retries >= 1 and st.failures == 0
    finally:
        gen.shutdown(), score.shutdown()
