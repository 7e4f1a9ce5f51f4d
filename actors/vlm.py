"""Ray shell around a VLM generation engine (`edit_rlhf.rrm.engine`): vLLM or HF, loaded by path.

Used by the principle-decomposition stage; the same actor serves any (prompt, images) -> text workload.
"""
from __future__ import annotations

import os

import ray


@ray.remote
class VLMWorker:
    def __init__(self, engine_cfg, worker_id: str, torch_threads: int = 1, seed: int = 0):
        from edit_rlhf.runtime import quiet_vllm_worker_logs, setup_process

        setup_process(torch_threads)
        from edit_rlhf.rrm.backend import build_engine

        self.worker_id = worker_id
        self.engine = build_engine(engine_cfg, threads=torch_threads, seed=seed)
        quiet_vllm_worker_logs()  # vLLM (if any) configured its loggers on import
        self.served = 0

    def info(self) -> dict:
        return {"worker": self.worker_id, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                "backend": self.engine.backend, "served": self.served, "version": self.engine.version,
                "engine_start_s": getattr(self.engine, "start_seconds", None)}

    def generate(self, requests, spec, timeout_s=None):
        """list[GenRequest], SamplingSpec -> per request, spec.n Completions."""
        out = self.engine.generate(requests, spec, timeout_s)
        self.served += 1
        return out

    def load_weights(self, named_tensors) -> int:
        return self.engine.load_weights(named_tensors)

    def shutdown(self) -> None:
        self.engine.close()
