"""Ray shell around one DeepSpeed learner rank (`edit_rlhf.grpo.learner.GRPOLearner`)."""
from __future__ import annotations

import os

import ray


@ray.remote
class EditorLearnerRank:
    """Two-phase start: rank 0 reports a rendezvous address on its own node, then all ranks `setup` together
    (init_process_group blocks until the whole group has joined)."""

    def __init__(self, cfg, rank: int, world: int):
        from edit_rlhf.runtime import setup_process

        setup_process(cfg.cluster.torch_threads)
        self.cfg, self.rank, self.world = cfg, rank, world
        self.core = None

    def rendezvous(self) -> tuple:
        from edit_rlhf.cluster.pools import free_port

        return ray.util.get_node_ip_address(), self.cfg.learner.master_port or free_port()

    def setup(self, master_addr: str, master_port: int) -> dict:
        from edit_rlhf.grpo.learner import GRPOLearner

        self.core = GRPOLearner(self.cfg, self.rank, self.world, master_addr, master_port)
        return self.info()

    def info(self) -> dict:
        return {"rank": self.core.rank, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                "trainable": self.core.trainable, "version": self.core.version}

    def train_step(self, plan, trajectories: dict) -> dict:
        """plan: list of minibatches, each a list of (group key, sample index, advantage);
        trajectories: group key -> ObjectRef of that group's trajectory (fetched here, not on the driver)."""
        keys = sorted(trajectories)
        fetched = dict(zip(keys, ray.get([trajectories[k] for k in keys])))
        minibatches = [[(fetched[g], j, a) for g, j, a in mb] for mb in plan]
        return self.core.train_step(minibatches)

    def lora_ref(self):
        """The current LoRA weights, put in the object store once; the driver fans the ref out."""
        return [ray.put(self.core.lora_state()), self.core.version]

    def save_lora(self, path: str) -> str:
        return self.core.save_lora(path)

    def save_checkpoint(self, path: str, tag: str) -> None:
        self.core.save_checkpoint(path, tag)
