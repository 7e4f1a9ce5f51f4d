"""The driver skeleton every training pipeline shares: a pipeline supplies its phases, the skeleton runs them.

`Driver.run()` owns what used to be written out once per pipeline:
  paths made absolute -> input checks -> resume-or-start (`Checkpoints.resume_state`: a re-run without
  `resume`/`overwrite` is refused) -> Ray start-up -> the MLflow run (the same one on resume) -> pools ->
  restore from the checkpoint -> first evaluation -> the step loop with evaluation and checkpoint cadence ->
  the final evaluation and checkpoint -> the published artifact -> summary (MLflow + summary.json) ->
  shutdown (pools, MLflow status, Ray if this run started it), on success, error or stop alike.

A pipeline subclasses `Driver` and fills in the phases below; it never repeats the skeleton. The RL pipelines'
`advance` is their algorithm box (sample, score, advantage, update, sync); the SFT ones train a chunk of steps.
Between steps the skeleton also applies pool resize requests (`edit-rlhf scale`) and health checks through
`maintain_pools`, for the pools a pipeline lists in `elastic`.
"""
from __future__ import annotations

import json
import os
import random
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edit_rlhf.checkpoint import publish
from edit_rlhf.config import to_dict
from edit_rlhf.redaction import scrub


def absolutize(cfg, keys: Tuple[str, ...]) -> None:
    """Make the dotted config `keys` absolute (empty values stay empty), so actors whose working directory
    differs see the same files."""
    for key in keys:
        node, _, leaf = key.rpartition(".")
        obj = cfg
        for part in node.split(".") if node else ():
            obj = getattr(obj, part)
        value = getattr(obj, leaf)
        if value:
            setattr(obj, leaf, os.path.abspath(value))


def first_last(history: List[Dict[str, Any]], key: str) -> Optional[Tuple[float, float]]:
    """Means of `key` over the first and the last 20 % of the logged steps (NaN ignored); None if never logged."""
    rows = [h[key] for h in history if key in h and h[key] is not None and not (isinstance(h[key], float)
                                                                            and np.isnan(h[key]))]
    if not rows:
        return None
    k = max(1, len(rows) // 5)
    return float(np.mean(rows[:k])), float(np.mean(rows[-k:]))


class Driver:
    """One pipeline run. Subclasses set the class attributes and implement the phases."""

    name = "driver"  # the command: MLflow `pipeline` tag, progress bar, summary
    path_keys: Tuple[str, ...] = ("output_dir", "tracking.dir")  # config keys made absolute first
    final: Optional[Tuple[str, str]] = None  # (subfolder of the last checkpoint, its stable name under output_dir)
    release: Tuple[str, ...] = ()  # pools that release an engine before they are killed (vLLM)
    elastic: Tuple[str, ...] = ()  # pools resized by `edit-rlhf scale` and health-checked between steps
    keep_history = True  # the step metrics go into each checkpoint's state.json (and come back on resume)

    def __init__(self, cfg, quiet: bool = False, argv: Optional[List[str]] = None):
        self.cfg = cfg
        self.quiet = quiet
        self.argv = argv
        self.step = 0  # the last finished step
        self.history: List[Dict[str, Any]] = []
        self.evals: List[Dict[str, Any]] = []
        self.pools: Dict[str, Any] = {}  # name -> ActorPool / LearnerGroup, shut down in this order
        self.counters: Dict[str, int] = {}
        self.setup_seconds = 0.0
        self.last_dir: Optional[str] = None

    # ------------------------------------------------------------------ phases a pipeline supplies
    def check_inputs(self) -> None:
        """Before Ray starts and before paths are made absolute: fail on a bad input path or file, naming its key
        (or build what the embedded default is missing)."""

    def tags(self) -> Dict[str, str]:
        """Extra MLflow tags of the run (the skeleton adds `pipeline`)."""
        return {}

    def start_pools(self) -> None:
        """Create the pools in `self.pools` (learners and actors, waiting until they are ready)."""
        raise NotImplementedError

    def restore(self, step_dir: str, state: Dict[str, Any]) -> None:
        """Load what `save_artifacts` and `state` wrote (the skeleton restores step, history, evals, counters, RNG)."""

    def started(self) -> None:
        """After pools and restore, before the first step (e.g. the first weight sync)."""

    def advance(self) -> Dict[str, Any]:
        """Train from `self.step` on: one step (RL) or a chunk of steps (SFT); set `self.step`, return its metrics."""
        raise NotImplementedError

    def has_eval(self) -> bool:
        return False

    def evaluate(self, step: int, final: bool = False) -> Dict[str, Any]:
        """Held-out evaluation at `step` (`final`: the last one, with probes where the pipeline has them)."""
        return {}

    def save_artifacts(self, tmp: str) -> None:
        """Write the step's files into the checkpoint's temporary directory (learner state, model folders)."""
        raise NotImplementedError

    def state(self) -> Dict[str, Any]:
        """The pipeline's own resumable state (JSON), saved beside what the skeleton saves."""
        return {}

    def on_pool_change(self, name: str, actors: List[int]) -> None:
        """Actors of an `elastic` pool that were added, restarted or left on an old version: bring them up to
        date (e.g. re-sync the policy weights)."""

    def postfix(self, m: Dict[str, Any]) -> Dict[str, str]:
        """The progress bar's figures for one step's metrics."""
        return {}

    def summary(self) -> Dict[str, Any]:
        """Pipeline-specific summary fields (the skeleton adds the common ones)."""
        return {}

    # ------------------------------------------------------------------ the skeleton
    def setup(self) -> None:
        import ray

        from edit_rlhf.checkpoint import Checkpoints
        from edit_rlhf.cluster.pools import init_ray
        from edit_rlhf.tracking import Tracker

        cfg = self.cfg
        t0 = time.time()
        self.check_inputs()  # on the paths as the user wrote them (its errors quote them)
        absolutize(cfg, self.path_keys)
        self.ckpt = Checkpoints.for_run(cfg)
        resume_dir, state = self.ckpt.resume_state(cfg.resume, cfg.overwrite)
        self.started_ray = not ray.is_initialized()
        self.ray_info = init_ray(cfg.cluster)
        self.tracker = Tracker.for_run(cfg, state, {"pipeline": self.name, **self.tags()}, default_name=self.name)
        self.start_pools()
        if state is not None:
            self._restore(resume_dir, state)
        self.setup_seconds = time.time() - t0
        self.started()

    def _restore(self, step_dir: str, state: Dict[str, Any]) -> None:
        self.restore(step_dir, state)
        self.step = int(state["step"])
        if self.keep_history:
            self.history = list(state.get("history", []))
        self.evals = list(state.get("evals", []))
        self.counters.update(state.get("counters", {}))
        if "numpy_rng" in state:
            s = state["numpy_rng"]
            np.random.set_state((s[0], np.array(s[1], dtype=np.uint32), *s[2:]))
            random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python_rng"]))
        self.tracker.set_tags({f"resumed_at_step_{self.step + 1}": step_dir})
        if not self.quiet:
            print(f"[resume] from {step_dir}: continuing at step {self.step + 1} "
                  f"(MLflow run {state['mlflow_run_id']})", flush=True)

    def save(self) -> str:
        """One atomic step directory (the pipeline's artifacts + state.json), then `latest`."""
        from edit_rlhf.faults import maybe_fail

        tmp = self.ckpt.begin(self.step)
        with self.ckpt.guard(tmp):  # a failed save leaves no temporary directory
            self.save_artifacts(tmp)
            maybe_fail("driver", "checkpoint")  # drills: the driver dies with a half-written step directory
            np_state = np.random.get_state()
            state = {"step": self.step, "mlflow_run_id": self.tracker.run_id,
                     "history": self.history if self.keep_history else [], "evals": self.evals,
                     "counters": dict(self.counters),
                     "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]],
                     "python_rng": random.getstate(), "config": to_dict(self.cfg), "time": time.time(),
                     **self.state()}
            self.last_dir = self.ckpt.commit(self.step, tmp, state)
            return self.last_dir

    def due(self, every: int, step: Optional[int] = None) -> bool:
        return bool(every) and (self.step if step is None else step) % every == 0

    def run(self) -> Dict[str, Any]:
        from tqdm import tqdm

        cfg = self.cfg
        status, t0 = "FAILED", time.time()
        try:
            self.setup()
            self.last_dir = self.ckpt.latest()
            if self.has_eval() and self.step == 0:
                self.evaluate(0)
            bar = tqdm(total=cfg.steps, initial=self.step, desc=self.name, disable=self.quiet, dynamic_ncols=True)
            while self.step < cfg.steps:
                before = self.step
                m = self.advance()
                self.history.append({"step": self.step, **m})
                bar.update(self.step - before)
                bar.set_postfix(self.postfix(m))
                last = self.step >= cfg.steps
                if not last and self.has_eval() and self.due(cfg.eval_every):
                    self.evaluate(self.step)
                if last:
                    if self.has_eval():
                        self.evaluate(self.step, final=True)
                    self.save()
                elif self.due(cfg.save_every):
                    self.save()
            bar.close()
            s = self.finish(time.time() - t0)
            status = "FINISHED"
            return s
        finally:
            self.shutdown(status)

    def finish(self, seconds: float) -> Dict[str, Any]:
        """Publish the final artifact, then write the summary to MLflow and `output_dir/summary.json`."""
        published = None
        if self.final and self.last_dir:
            sub, stable = self.final
            published = publish(os.path.join(self.last_dir, sub), os.path.join(self.cfg.output_dir, stable))
        s: Dict[str, Any] = {
            "pipeline": self.name, "command": "edit-rlhf " + " ".join(self.argv[1:]) if self.argv else None,
            "seed": getattr(self.cfg, "seed", None), "steps": self.step, "seconds": round(seconds, 1),
            "setup_seconds": round(self.setup_seconds, 1), "run_id": self.tracker.run_id,
            "tracking_uri": self.tracker.uri, "checkpoint": self.last_dir, "published": published,
            "counters": dict(self.counters)}
        if self.evals:
            s["eval_first"], s["eval_last"] = self.evals[0], self.evals[-1]
        s.update(self.summary())
        self.tracker.log_dict(s, "summary.json")
        with open(os.path.join(self.cfg.output_dir, "summary.json"), "w") as f:
            json.dump(scrub(s), f, indent=2, default=str)
        return s

    def log_eval(self, step: int, m: Dict[str, Any]) -> Dict[str, Any]:
        """Log an evaluation's metrics at `step` and keep them (first/last go into the summary)."""
        self.tracker.log_metrics(m, step)
        m = {**m, "step": step}
        self.evals.append(m)
        return m

    def maintain_pools(self, timeout_s: float) -> Dict[str, float]:
        """Between steps, for the `elastic` pools: apply a pending resize request, health-check, and hand added,
        restarted or stale actors to `on_pool_change`. A pool with no live actor stops the run (PoolError)."""
        from edit_rlhf.cluster.control import take_scale_request
        from edit_rlhf.cluster.pools import PoolError

        m: Dict[str, float] = {}
        req = take_scale_request(self.cfg.output_dir)
        for name, n in (req or {}).items():
            if name not in self.elastic:
                print(f"[scale] {self.name}: pool '{name}' cannot be resized here (resizable: "
                      f"{list(self.elastic)}); request ignored", flush=True)
                continue
            pool = self.pools[name]
            if n != pool.size:
                added = pool.resize(n)
                if added:
                    self.on_pool_change(name, added)
                if not self.quiet:
                    print(f"[scale] step {self.step + 1}: pool '{name}' -> {n} actors", flush=True)
        if req:
            self.tracker.set_tags({f"scaled_at_step_{self.step + 1}": str(req)})
        for name in self.elastic:
            pool = self.pools[name]
            h = pool.health_check(timeout_s=timeout_s)
            if not pool.alive():
                raise PoolError(f"pool '{pool.name}': no actor answers the health check")
            stale = self.stale_actors(name, h["infos"])
            if stale:
                self.on_pool_change(name, stale)
                self.counters["actor_resyncs"] = self.counters.get("actor_resyncs", 0) + len(stale)
            m[f"pool/{pool.name}_size"] = pool.size
            m[f"pool/{pool.name}_alive"] = len(pool.alive())
        return m

    def stale_actors(self, name: str, infos: Dict[int, dict]) -> List[int]:
        """Actors of pool `name` whose health info says they need `on_pool_change` (e.g. an old policy version)."""
        return []

    def shutdown(self, status: str = "FINISHED") -> None:
        from edit_rlhf.cluster.pools import close_run

        close_run(status, list(self.pools.items()), getattr(self, "tracker", None),
                  getattr(self, "started_ray", False), release=self.release)


def run_driver(driver: Driver, line) -> Dict[str, Any]:
    """Run `driver` in this process (torch threads set first) and print its summary line."""
    from edit_rlhf.runtime import setup_process

    setup_process(driver.cfg.cluster.torch_threads)
    s = driver.run()
    print(line(s), flush=True)
    return s
