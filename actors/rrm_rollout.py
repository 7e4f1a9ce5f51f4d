"""Ray shell around an Edit-RRM generation engine for GCPO (vLLM or HF, loaded by path): samples traces,
takes versioned weight syncs in one call, and scores a fixed trace (sync checks)."""
from __future__ import annotations

import os
import time

import ray


@ray.remote
class RRMRolloutWorker:
    def __init__(self, engine_cfg, worker_id: str, torch_threads: int = 1, seed: int = 0):
        from edit_rlhf.runtime import setup_process

        setup_process(torch_threads)
        from edit_rlhf.rrm.backend import build_engine

        self.worker_id = worker_id
        self.engine = build_engine(engine_cfg, threads=torch_threads, seed=seed)
        self.version = 0  # the learner version whose weights the engine holds
        self.served = 0
        self.sync_seconds = 0.0

    def info(self) -> dict:
        return {"worker": self.worker_id, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                "backend": self.engine.backend, "served": self.served, "version": self.version,
                "engine_start_s": getattr(self.engine, "start_seconds", None), "sync_seconds": self.sync_seconds}

    def generate(self, requests, spec, timeout_s=None):
        """list[GenRequest], SamplingSpec -> (per request, spec.n Completions; the weight version used)."""
        out = self.engine.generate(requests, spec, timeout_s)
        self.served += 1
        return out, self.version

    def load_weights(self, buckets) -> int:
        """A `WeightBuckets` (or any iterable of (name, tensor) with a `version`) -> the version now held."""
        t = time.time()
        self.engine.load_weights(buckets)
        self.version = int(getattr(buckets, "version", self.version + 1))
        self.sync_seconds = time.time() - t
        return self.version

    def weight_transfer(self, method: str, *args):
        """The engine's NCCL weight-sync calls (edit_rlhf.transport); `finish_weight_update(version)` records the
        learner version the broadcast carried and returns it."""
        if method == "finish_weight_update":
            t = time.time()
            self.engine.weight_transfer(method)
            self.version = int(args[0]) if args and args[0] is not None else self.version + 1
            self.sync_seconds = time.time() - t
            return self.version
        return self.engine.weight_transfer(method, *args)

    def score_completion(self, request, completion_ids):
        return self.engine.score_completion(request, completion_ids)

    def shutdown(self) -> None:
        self.engine.close()
