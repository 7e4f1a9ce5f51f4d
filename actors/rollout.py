"""Ray shell around `edit_rlhf.grpo.rollout.EditorRollout` (one editor per actor, GPU or CPU)."""
from __future__ import annotations

import os

import ray


@ray.remote
class EditorRolloutWorker:
    def __init__(self, cfg, datasets: dict, worker_id: str):
        from edit_rlhf.runtime import setup_process

        setup_process(cfg.cluster.torch_threads)
        from edit_rlhf.grpo.rollout import EditorRollout

        self.core = EditorRollout(cfg, datasets, worker_id)

    def info(self) -> dict:
        return {"worker": self.core.worker_id, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                "version": self.core.version, "served": self.core.served}

    @ray.method(num_returns=3)
    def rollout(self, split: str, index: int, seeds):
        return self.core.rollout(split, index, seeds)

    @ray.method(num_returns=2)
    def evaluate(self, split: str, indices, seeds, source_from=None, instruction_from=None):
        return self.core.evaluate(split, indices, seeds, source_from, instruction_from)

    def use_lora_dir(self, path=None) -> str:
        """Evaluation: a trained LoRA folder (diffusers format) or, with None, the actor's own adapter."""
        return self.core.use_lora_dir(path)

    def set_lora(self, snapshot: dict) -> int:
        """`snapshot` ({'state', 'version'}) arrives resolved from the learner's object ref."""
        return self.core.set_lora(snapshot["state"], snapshot["version"])
