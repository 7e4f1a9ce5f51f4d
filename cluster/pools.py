"""Actor pools on placement groups, sized and resourced from config; health checks and resizing.

A pool owns actors of one class, one per bundle of {CPU, GPU, custom resources}. Its actors live in the
pool's own placement group(s): the one reserved at start and one more per scale-up (removed again on
scale-down). The pool tracks in-flight requests (least-loaded dispatch), work served, and dead actors.
"""
from __future__ import annotations

import copy
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

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


DEFAULT_PLACEMENT_TIMEOUT_S = 1800.0  # an autoscaling cluster takes minutes to bring up GPU nodes


def make_placement_group(name: str, pool_cfg, n: int, timeout_s: Optional[float] = None, report_every_s: float = 60.0):
    """Reserve n bundles for a pool, or fail naming what is missing. Waits `timeout_s` (default: the pool's
    `placement_timeout_s`), saying every `report_every_s` what it still waits for."""
    if timeout_s is None:
        timeout_s = float(getattr(pool_cfg, "placement_timeout_s", DEFAULT_PLACEMENT_TIMEOUT_S))
    bundles = [bundle_of(pool_cfg) for _ in range(n)]
    pg = placement_group(bundles, strategy=pool_cfg.strategy, name=f"edit_rlhf-{name}")
    t0 = time.time()
    ready: list = []
    while not ready:
        left = timeout_s - (time.time() - t0)
        if left <= 0:
            break
        ready, _ = ray.wait([pg.ready()], timeout=min(left, report_every_s))
        if not ready and time.time() - t0 < timeout_s:
            print(f"[pool] '{name}': waiting for {n} bundle(s) of {bundles[0]} ({time.time() - t0:.0f}s of "
                  f"{timeout_s:.0f}s; available: {ray.available_resources()})", flush=True)
    if not ready:
        remove_placement_group(pg)
        raise PoolError(f"pool '{name}': could not reserve {n} bundle(s) of {bundles[0]} within "
                        f"{timeout_s:.0f}s (placement_timeout_s); cluster resources available: "
                        f"{ray.available_resources()}")
    return pg


class WorkClock:
    """When each request on each actor started *work*, for per-request timeouts.

    Ray runs a plain actor's calls from one caller one at a time, in submission order, so a request starts
    when the one before it on the same actor finishes (or when it is submitted, if the actor is idle). A
    timeout measured from submission would count the queue, failing requests that waited behind others on a
    busy actor; `running_for` counts only the request's own work."""

    def __init__(self) -> None:
        self.queues: Dict[int, List[Any]] = {}
        self.since: Dict[Any, float] = {}

    def submit(self, actor: int, key: Any, now: Optional[float] = None) -> None:
        q = self.queues.setdefault(actor, [])
        q.append(key)
        if len(q) == 1:
            self.since[key] = time.time() if now is None else now

    def done(self, actor: int, key: Any, now: Optional[float] = None) -> None:
        """`key` finished, failed or was cancelled: the next request on the actor starts now."""
        q = self.queues.get(actor, [])
        if key in q:
            q.remove(key)
        self.since.pop(key, None)
        if q and q[0] not in self.since:
            self.since[q[0]] = time.time() if now is None else now

    def running_for(self, key: Any, now: Optional[float] = None) -> Optional[float]:
        """Seconds `key` has been worked on; None while it is still queued behind others."""
        s = self.since.get(key)
        return None if s is None else (time.time() if now is None else now) - s


class ActorPool:
    """Actors of `actor_cls`, actor i built with `actor_cls.remote(*make_args(i))`."""

    def __init__(self, name: str, actor_cls, pool_cfg, make_args: Callable[[int], tuple], runtime_env=None):
        self.name = name
        self.cfg = copy.deepcopy(pool_cfg)
        self.actor_cls = actor_cls
        self.make_args = make_args
        self.runtime_env = runtime_env
        self.pgs: List[Any] = [make_placement_group(name, pool_cfg, pool_cfg.size)]
        self.slots: List[Tuple[Any, int]] = [(self.pgs[0], i) for i in range(pool_cfg.size)]
        self.actors: List[Any] = [self._spawn(i) for i in range(pool_cfg.size)]
        self.inflight = [0] * pool_cfg.size
        self.served = [0] * pool_cfg.size
        self.dead: set = set()  # actors that died (RayActorError) and are not given work until they answer again
        self.clock = WorkClock()  # when each keyed request started work (per-request timeouts)

    def _spawn(self, i: int):
        pg, bundle = self.slots[i]
        opts = dict(num_cpus=self.cfg.num_cpus, num_gpus=self.cfg.num_gpus,
                    resources={k: v for k, v in self.cfg.resources.items()} or None,
                    max_restarts=self.cfg.max_restarts, max_task_retries=0,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=bundle))
        if self.runtime_env:
            opts["runtime_env"] = self.runtime_env
        return self.actor_cls.options(**{k: v for k, v in opts.items() if v is not None}).remote(*self.make_args(i))

    @property
    def size(self) -> int:
        return len(self.actors)

    def wait_ready(self, method: str = "info", timeout_s: float = 600.0, indices: Optional[List[int]] = None
                   ) -> List[dict]:
        """Block until the actors have finished __init__; surfaces construction errors with the pool name."""
        idx = list(range(self.size)) if indices is None else indices
        try:
            return ray.get([getattr(self.actors[i], method).remote() for i in idx], timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise PoolError(f"pool '{self.name}': actors not ready after {timeout_s:.0f}s") from None
        except ray.exceptions.RayError as e:
            raise PoolError(f"pool '{self.name}': an actor failed to start: {e}") from None

    # ------------------------------------------------------------------ dispatch bookkeeping
    def alive(self) -> List[int]:
        return [i for i in range(self.size) if i not in self.dead]

    def mark_dead(self, i: int) -> None:
        self.dead.add(i)

    def pick(self, exclude: Optional[set] = None, max_inflight: Optional[int] = None) -> Optional[int]:
        """Index of the least-loaded live actor (ties -> least served), avoiding `exclude` when another
        live actor exists. Raises PoolError when every actor of the pool is dead. With `max_inflight`, only
        actors with fewer requests in flight are candidates: None when all of them are that busy (wait)."""
        live = self.alive()
        if not live:
            raise PoolError(f"pool '{self.name}': no live actor left ({self.size} died)")
        cands = [i for i in live if not exclude or i not in exclude] or live
        if max_inflight is not None:
            cands = [i for i in cands if self.inflight[i] < max_inflight]
            if not cands:
                return None
        return min(cands, key=lambda i: (self.inflight[i], self.served[i], i))

    def started(self, i: int, key: Any = None) -> None:
        """A request was submitted to actor i; with `key` (e.g. its object ref) its work time is tracked."""
        self.inflight[i] += 1
        if key is not None:
            self.clock.submit(i, key)

    def finished(self, i: int, ok: bool = True, key: Any = None) -> None:
        self.inflight[i] -= 1
        if ok:
            self.served[i] += 1
        if key is not None:
            self.clock.done(i, key)

    def running_for(self, key: Any) -> Optional[float]:
        """Seconds the request `key` has been worked on (None while queued behind others on its actor)."""
        return self.clock.running_for(key)

    def call_all(self, method: str, *args, **kwargs) -> list:
        return [getattr(a, method).remote(*args, **kwargs) for a in self.actors]

    # ------------------------------------------------------------------ health and size
    def health_check(self, method: str = "info", timeout_s: float = 60.0) -> Dict[str, Any]:
        """Ping every actor. Those that answer are live (an actor Ray is restarting answers once it is back:
        pings that meet `ActorUnavailableError` are repeated until `timeout_s`); those that do not, or that
        Ray reports dead for good (`ActorDiedError`), are marked dead.
        Returns {'infos': {i: info}, 'died': [...], 'revived': [...]}."""
        deadline = time.time() + timeout_s
        infos: Dict[int, dict] = {}
        gone: set = set()
        todo = list(range(self.size))
        while todo and time.time() < deadline:
            refs = {getattr(self.actors[i], method).remote(): i for i in todo}
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=max(0.1, deadline - time.time()))
            retry = []
            for r in ready:
                i = refs[r]
                try:
                    infos[i] = ray.get(r)
                except ray.exceptions.ActorUnavailableError:
                    retry.append(i)  # restarting: ask again
                except ray.exceptions.RayError:
                    gone.add(i)
            todo = retry
            if todo:
                time.sleep(0.5)
        died = [i for i in range(self.size) if i not in infos and i not in self.dead]
        revived = [i for i in infos if i in self.dead]
        self.dead = {i for i in range(self.size) if i not in infos}
        return {"infos": infos, "died": died, "revived": revived, "gone": sorted(gone)}

    def resize(self, n: int, timeout_s: float = 600.0) -> List[int]:
        """Grow (a new placement group for the added bundles) or shrink (newest actors first) to n actors.
        Call between steps (nothing in flight). Returns the indices of added actors."""
        if n < 1:
            raise PoolError(f"pool '{self.name}': size must be >= 1, got {n}")
        added: List[int] = []
        if n > self.size:
            k = n - self.size
            pg = make_placement_group(f"{self.name}-scale{len(self.pgs)}", self.cfg, k)
            self.pgs.append(pg)
            for b in range(k):
                i = self.size
                self.slots.append((pg, b))
                self.actors.append(self._spawn(i))
                self.inflight.append(0)
                self.served.append(0)
                added.append(i)
            self.wait_ready(indices=added, timeout_s=timeout_s)
        while self.size > n:
            i = self.size - 1
            try:
                ray.kill(self.actors[i], no_restart=True)
            except Exception:
                pass
            pg, _ = self.slots.pop()
            self.actors.pop()
            self.inflight.pop()
            self.served.pop()
            self.dead.discard(i)
            if pg is not self.pgs[0] and all(p is not pg for p, _ in self.slots):
                remove_placement_group(pg)
                self.pgs.remove(pg)
        self.cfg.size = self.size
        return added

    def shutdown(self, release: bool = False) -> None:
        """Kill the actors and free the placement groups; `release` first asks each actor to release what it
        hosts (its `shutdown()`, e.g. a vLLM engine), waiting at most a minute."""
        if release and self.actors:
            try:
                ray.get([a.shutdown.remote() for a in self.actors], timeout=60)
            except Exception:
                pass
        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                pass
        for pg in self.pgs:
            try:
                remove_placement_group(pg)
            except Exception:
                pass


class LearnerGroup(ActorPool):
    """K learner ranks (one placement group) hosting the core class `core` ("module:Class")."""

    def __init__(self, name: str, core: str, cfg, pool_cfg, torch_threads: int = 1, runtime_env=None):
        from edit_rlhf.actors.learner import LearnerRank

        super().__init__(name, LearnerRank, pool_cfg, lambda i: (core, cfg, i, pool_cfg.size, torch_threads),
                         runtime_env=runtime_env)
        try:  # a failure anywhere here releases the group's placement group (its name is reused on a retry)
            addr, port = ray.get(self.actors[0].rendezvous.remote())
            self.infos = ray.get(self.call_all("setup", addr, port))
        except ray.exceptions.RayError as e:
            self.shutdown()
            raise PoolError(f"pool '{name}': learner set-up failed: {e}") from None

    def _spawn(self, i: int):  # a learner rank is not restarted by Ray: the group fails and the run resumes
        pg, bundle = self.slots[i]
        opts = dict(num_cpus=self.cfg.num_cpus, num_gpus=self.cfg.num_gpus,
                    resources={k: v for k, v in self.cfg.resources.items()} or None, max_restarts=0,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=bundle),
                    runtime_env=self.runtime_env)
        return self.actor_cls.options(**{k: v for k, v in opts.items() if v is not None}).remote(*self.make_args(i))

    def call_ranks(self, method: str, per_rank_args: List[tuple]) -> list:
        """core.method(*per_rank_args[r]) on every rank r at once; returns the results in rank order."""
        return ray.get([a.call.remote(method, *args) for a, args in zip(self.actors, per_rank_args)])

    def broadcast(self, method: str, *args) -> list:
        return ray.get([a.call.remote(method, *args) for a in self.actors])


def close_run(status: str, pools=(), tracker=None, started_ray: bool = False, release=()) -> None:
    """End a pipeline run: stop its pools (those named in `release` release their engines first), mark its
    MLflow run `status`, and stop Ray if the run started it. Pools may be None (set-up failed early)."""
    for name, pool in pools:
        if pool is not None:
            pool.shutdown(release=name in release)
    if tracker is not None:
        tracker.finish(status)
    if started_ray and ray.is_initialized():
        ray.shutdown()


def init_ray(cluster_cfg, runtime_env: Optional[dict] = None, log_to_driver: bool = True) -> dict:
    """Attach to the cluster (`address`, or RAY_ADDRESS under `ray job submit`) or start a local one."""
    import os

    if ray.is_initialized():
        return ray.cluster_resources()
    kw: Dict[str, Any] = dict(namespace=cluster_cfg.namespace, log_to_driver=log_to_driver)
    if runtime_env:  # never pass None: under `ray job submit` that would drop the job's own runtime_env
        kw["runtime_env"] = runtime_env
    address = cluster_cfg.address or os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        kw["address"] = address
    else:
        # address="local" always starts this run's own cluster: without it ray.init() silently joins a `ray start`
        # cluster found on this machine and then rejects num_cpus ("must not be provided") with a traceback
        kw.update(address="local", num_cpus=cluster_cfg.num_cpus or max(8, os.cpu_count() or 1),
                  include_dashboard=cluster_cfg.include_dashboard, dashboard_host=cluster_cfg.dashboard_host)
        if cluster_cfg.num_gpus is not None:
            kw["num_gpus"] = cluster_cfg.num_gpus
        running = _running_local_cluster()
        if running:
            print(f"[ray] a Ray cluster is already running on this machine ({running}); this run starts its own "
                  f"local Ray (cluster.address=auto joins that one instead)", flush=True)
    t = time.time()
    ray.init(**kw)
    from edit_rlhf.stops import after_ray_init

    after_ray_init()  # ray.init replaced the driver's SIGTERM handler with a bare sys.exit
    return {"seconds": time.time() - t, **ray.cluster_resources()}


def _running_local_cluster() -> Optional[str]:
    """The address of a `ray start` cluster recorded on this machine (its bootstrap file), if any."""
    try:
        from ray._private.services import find_bootstrap_address

        return find_bootstrap_address(None)
    except Exception:  # a Ray-internal helper: its absence only costs the explanatory line
        return None
