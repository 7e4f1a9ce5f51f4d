"""RRM trace generation on a pool of engines (`actors.rrm_rollout.RRMRolloutWorker`), on the one streaming
scheduler: the requests are cut into one contiguous chunk per live engine, one call each; a chunk whose engine
dies is redone on another engine (at most once per engine), and a pool with no live engine left is a PoolError.
Per-request deadlines are the engines' own (`timeout_s`: a request past it comes back as a 'timeout' completion).
"""
from __future__ import annotations

from typing import Any, List, Sequence, Set, Tuple

import numpy as np

from edit_rlhf.cluster.pools import ActorPool
from edit_rlhf.pipelines.scheduler import Scheduler, Stage
from edit_rlhf.rrm.engine import GenRequest, SamplingSpec


def chunked(n: int, k: int) -> List[range]:
    """k contiguous, nearly equal chunks of range(n) (empty ones dropped)."""
    bounds = np.linspace(0, n, k + 1).astype(int)
    return [range(bounds[i], bounds[i + 1]) for i in range(k) if bounds[i + 1] > bounds[i]]


def generate_on(pool: ActorPool, requests: Sequence[GenRequest], spec: SamplingSpec, timeout_s: float = None
                ) -> Tuple[List[Any], Set[int]]:
    """Per request, spec.n Completions (in request order), and the set of weight versions that produced them."""
    if not requests:
        return [], set()
    parts = [[requests[j] for j in r] for r in chunked(len(requests), len(pool.alive()))]
    stage = Stage("generate", pool, lambda a, t: a.generate.remote(t.payload, spec, timeout_s),
                  max_retries=None, distinct_actors=True)
    out: List[Any] = []
    versions: Set[int] = set()
    for task in Scheduler([stage]).run(parts):
        comps, version = task.results["generate"]
        out += comps
        versions.add(version)
    return out, versions
