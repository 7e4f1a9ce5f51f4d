"""Per-request timeouts count a request's own work, not the time it waited behind others on a busy actor."""
import time

import numpy as np
import pytest


def test_work_clock_starts_a_request_when_the_one_before_it_on_its_actor_ends():
    from edit_rlhf.cluster.pools import WorkClock

    c = WorkClock()
    c.submit(0, "a", now=0.0)
    c.submit(0, "b", now=0.1)  # queued behind a on actor 0
    c.submit(1, "x", now=0.2)  # another actor: starts at once
    assert c.running_for("a", now=5.0) == 5.0 and c.running_for("b", now=5.0) is None
    assert c.running_for("x", now=5.0) == pytest.approx(4.8)
    c.done(0, "a", now=6.0)
    assert c.running_for("b", now=7.5) == 1.5  # from the end of a, not from its own submission at 0.1
    c.done(0, "b", now=8.0)
    assert c.running_for("b", now=9.0) is None and c.queues[0] == []
    c.submit(0, "c", now=10.0)  # idle actor: starts at submission
    c.submit(0, "d", now=10.0)
    c.done(0, "d", now=11.0)  # a queued request removed (e.g. its actor died): c is still the one running
    assert c.running_for("c", now=12.0) == 2.0


# ------------------------------------------------------------------------------------------------ on Ray
def _pools(ray, work_s: float):
    from edit_rlhf.cluster.pools import ActorPool
    from edit_rlhf.config.schema import PoolConfig

    @ray.remote
    class Generator:
        def rollout(self, split, index, seeds):
            return {"policy_version": 0, "n": 1, "prompt_id": str(index)}, np.zeros((1, 4, 4, 3), np.uint8), None

        def info(self):
            return {}

    @ray.remote
    class SlowScorer:  # a reward worker whose every request takes `work_s` of work
        def score(self, split, index, images):
            time.sleep(work_s)
            return {"rewards": [1.0], "ok": [True], "errors": [""], "details": [{}], "oracle_scores": None}

        def info(self):
            return {}

    cfg = PoolConfig(size=1, num_cpus=0.1)
    gen = ActorPool("gen", Generator, cfg, lambda i: ())
    rew = ActorPool("score", SlowScorer, cfg, lambda i: ())
    gen.wait_ready(), rew.wait_ready()
    return gen, rew


def ROLLOUT(actor, job):
    """The generation call of a training rollout (its three refs: meta, images, trajectory)."""
    return actor.rollout.options(num_returns=3).remote(job.split, *job.gen_args)


@pytest.mark.integration
def test_requests_queued_behind_others_do_not_time_out(ray_cluster):
    """5 requests of 0.6 s each on one reward actor with a 1.5 s timeout: the 3rd to 5th wait 1.2-2.4 s in the
    actor's queue. Timed from submission (the old behaviour) they would fail; timed from the start of their
    work none does."""
    from edit_rlhf.pipelines.streaming import Job, stream

    gen, rew = _pools(ray_cluster, 0.6)
    try:
        jobs = [Job(slot=s, split="train", index=s, gen_args=(s, [s])) for s in range(5)]
        st = stream(jobs, gen, rew, ROLLOUT, timeout_s=1.5, max_retries=0)
        assert st.score_failures == 0 and st.score_retries == 0, [j.errors for j in jobs]
        assert [j.score.rewards for j in jobs] == [(1.0,)] * 5
        assert st.gen_seconds + st.tail_seconds >= 5 * 0.6  # they did run one after another
    finally:
        gen.shutdown(), rew.shutdown()


@pytest.mark.integration
def test_a_request_that_works_too_long_still_times_out(ray_cluster):
    from edit_rlhf.pipelines.streaming import Job, stream

    gen, rew = _pools(ray_cluster, 4.0)
    try:
        jobs = [Job(slot=0, split="train", index=0, gen_args=(0, [0]))]
        st = stream(jobs, gen, rew, ROLLOUT, timeout_s=1.0, max_retries=0)
        assert st.score_failures == 1 and np.isnan(jobs[0].score.rewards[0])
        assert "timed out after 1s" in jobs[0].errors[-1]
    finally:
        gen.shutdown(), rew.shutdown()
