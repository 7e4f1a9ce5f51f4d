"""Ray shell around one learner rank. The learning logic is a core class in edit_rlhf, named by import path
(e.g. "edit_rlhf.grpo.learner:GRPOLearner"), constructed as Core(cfg, rank, world, master_addr, master_port).

Two-phase start: rank 0 reports a rendezvous address on its own node, then all ranks `setup` together
(the process-group init blocks until every rank has joined).
"""
from __future__ import annotations

import dataclasses
import importlib
import os

import ray

from edit_rlhf.ports import free_port


def _resolve(x):
    """Fetch ObjectRefs nested in lists/tuples/dicts and typed records (dataclasses); Ray resolves only
    top-level arguments."""
    if isinstance(x, ray.ObjectRef):
        return ray.get(x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.replace(x, **{f.name: _resolve(getattr(x, f.name)) for f in dataclasses.fields(x)
                                         if f.init})
    if isinstance(x, dict):
        keys = list(x)
        vals = [_resolve(x[k]) for k in keys]
        return dict(zip(keys, vals))
    if isinstance(x, (list, tuple)):
        return type(x)(_resolve(v) for v in x)
    return x


@ray.remote
class LearnerRank:
    def __init__(self, core: str, cfg, rank: int, world: int, torch_threads: int = 1):
        from edit_rlhf.runtime import setup_process

        setup_process(torch_threads)
        self.core_path, self.cfg, self.rank, self.world = core, cfg, rank, world
        self.core = None

    def rendezvous(self) -> tuple:
        port = getattr(getattr(self.cfg, "learner", None), "master_port", None)
        return ray.util.get_node_ip_address(), port or free_port()

    def free_address(self) -> tuple:
        """(this node's IP, a free port on it): a rendezvous for another group (e.g. an NCCL weight sync)."""
        return ray.util.get_node_ip_address(), free_port()

    def setup(self, master_addr: str, master_port: int) -> dict:
        mod, _, name = self.core_path.partition(":")
        cls = getattr(importlib.import_module(mod), name)
        self.core = cls(self.cfg, self.rank, self.world, master_addr, master_port)
        return self.info()

    def info(self) -> dict:
        out = {"rank": self.rank, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}
        if self.core is not None and hasattr(self.core, "info"):
            out.update(self.core.info())
        return out

    def call(self, method: str, *args, **kwargs):
        """core.method(*args, **kwargs) with nested object refs fetched here (not on the driver)."""
        return getattr(self.core, method)(*_resolve(list(args)), **_resolve(kwargs))

    def put(self, method: str, *args, **kwargs) -> list:
        """Like `call`, but the result goes into the object store once; returns [ref] for fan-out."""
        return [ray.put(self.call(method, *args, **kwargs))]
