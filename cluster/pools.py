"""Actor pools on placement groups: one placement group per pool, sized and resourced from config.

A pool owns `size` actors of one class, one per bundle of {CPU, GPU, custom resources}. It tracks in-flight
requests per actor (least-loaded dispatch) and how much work each actor served.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy


class PoolError(RuntimeError):
    pass


def bundle_of(pool_cfg) -> Dict[str, float]:
    b = {"CPU": float(pool_cfg.num_cpus)}
    if pool_cfg.num_gpus:
        b["GPU"] = float(pool_cfg.num_gpus)
    b.update({k: float(v) for k, v in pool_cfg.resources.items()})
    b = {k: v for k, v in b.items() if v > 0}
    return b or {"CPU": 0.01}  # Ray rejects empty bundles


def make_placement_group(name: str, pool_cfg, timeout_s: float = 120.0):
    """Reserve the pool's bundles, or fail naming what is missing."""
    bundles = [bundle_of(pool_cfg) for _ in range(pool_cfg.size)]
    pg = placement_group(bundles, strategy=pool_cfg.strategy, name=f"edit_rlhf-{name}")
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        raise PoolError(f"pool '{name}': could not reserve {pool_cfg.size} bundle(s) of {bundles[0]} within "
                        f"{timeout_s:.0f}s; cluster resources available: {ray.available_resources()}")
    return pg


class ActorPool:
    """`size` actors created by `factory(index) -> ActorClass.options(...)`-ready remote class args."""

    def __init__(self, name: str, actor_cls, pool_cfg, make_args: Callable[[int], tuple], runtime_env=None):
        self.name = name
        self.cfg = pool_cfg
        self.pg = make_placement_group(name, pool_cfg)
        self.actor_cls = actor_cls
        self.make_args = make_args
        self.runtime_env = runtime_env
        self.actors: List[Any] = [self._spawn(i) for i in range(pool_cfg.size)]
        self.inflight = [0] * pool_cfg.size
        self.served = [0] * pool_cfg.size
        self.dead: set = set()  # actors that died (RayActorError) and are no longer given work

    def _spawn(self, i: int):
        opts = dict(num_cpus=self.cfg.num_cpus, num_gpus=self.cfg.num_gpus,
                    resources={k: v for k, v in self.cfg.resources.items()} or None,
                    max_restarts=self.cfg.max_restarts,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i),
                    name=None)
        if self.runtime_env:
            opts["runtime_env"] = self.runtime_env
        opts = {k: v for k, v in opts.items() if v is not None}
        return self.actor_cls.options(**opts).remote(*self.make_args(i))

    def wait_ready(self, method: str = "info", timeout_s: float = 600.0) -> List[dict]:
        """Block until every actor has finished __init__; surfaces construction errors with the pool name."""
        refs = [getattr(a, method).remote() for a in self.actors]
        try:
            return ray.get(refs, timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise PoolError(f"pool '{self.name}': actors not ready after {timeout_s:.0f}s") from None
        except ray.exceptions.RayActorError as e:
            raise PoolError(f"pool '{self.name}': an actor failed to start: {e}") from None

    def alive(self) -> List[int]:
        return [i for i in range(len(self.actors)) if i not in self.dead]

    def mark_dead(self, i: int) -> None:
        self.dead.add(i)

    def pick(self, exclude: Optional[set] = None) -> int:
        """Index of the least-loaded live actor (ties -> least served), avoiding `exclude` when another
        live actor exists. Raises PoolError when every actor of the pool is dead."""
        live = self.alive()
        if not live:
            raise PoolError(f"pool '{self.name}': no live actor left ({len(self.actors)} died)")
        cands = [i for i in live if not exclude or i not in exclude] or live
        return min(cands, key=lambda i: (self.inflight[i], self.served[i], i))

    def started(self, i: int) -> None:
        self.inflight[i] += 1

    def finished(self, i: int, ok: bool = True) -> None:
        self.inflight[i] -= 1
        if ok:
            self.served[i] += 1

    def call_all(self, method: str, *args, **kwargs) -> list:
        return [getattr(a, method).remote(*args, **kwargs) for a in self.actors]

    def shutdown(self) -> None:
        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:
                pass
        try:
            remove_placement_group(self.pg)
        except Exception:
            pass


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_ray(cluster_cfg, runtime_env: Optional[dict] = None) -> dict:
    """Attach to the cluster (`address`, or RAY_ADDRESS under `ray job submit`) or start a local one."""
    import os

    if ray.is_initialized():
        return ray.cluster_resources()
    kw: Dict[str, Any] = dict(namespace=cluster_cfg.namespace, log_to_driver=True,
                              runtime_env=runtime_env or None)
    address = cluster_cfg.address or os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        kw["address"] = address
    else:
        kw.update(num_cpus=cluster_cfg.num_cpus or max(8, os.cpu_count() or 1),
                  include_dashboard=cluster_cfg.include_dashboard, dashboard_host=cluster_cfg.dashboard_host)
        if cluster_cfg.num_gpus is not None:
            kw["num_gpus"] = cluster_cfg.num_gpus
    t = time.time()
    ray.init(**kw)
    return {"seconds": time.time() - t, **ray.cluster_resources()}


class LearnerGroup(ActorPool):
    """K learner ranks (one placement group) hosting the core class `core` ("module:Class")."""

    def __init__(self, name: str, core: str, cfg, pool_cfg, torch_threads: int = 1):
        from edit_rlhf.actors.learner import LearnerRank

        super().__init__(name, LearnerRank, pool_cfg, lambda i: (core, cfg, i, pool_cfg.size, torch_threads))
        addr, port = ray.get(self.actors[0].rendezvous.remote())
        try:
            self.infos = ray.get(self.call_all("setup", addr, port))
        except ray.exceptions.RayError as e:
            self.shutdown()
            raise PoolError(f"pool '{name}': learner set-up failed: {e}") from None

    def call_ranks(self, method: str, per_rank_args: List[tuple]) -> list:
        """core.method(*per_rank_args[r]) on every rank r at once; returns the results in rank order."""
        return ray.get([a.call.remote(method, *args) for a, args in zip(self.actors, per_rank_args)])

    def broadcast(self, method: str, *args) -> list:
        return ray.get([a.call.remote(method, *args) for a in self.actors])
