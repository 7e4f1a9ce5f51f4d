"""Config of `edit-rlhf sandbox-data`: the sandbox datasets as a pipeline stage (edit-r1's first stage)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from omegaconf import MISSING

from edit_rlhf.sandbox.edits import EDIT_TYPES


@dataclass
class SandboxDataConfig:
    output: str = MISSING  # folder receiving prompts_*, pairs_*, traces_*, candidates, manifest.json
    seed: int = 0
    size: int = 64
    n_train: int = 512
    n_eval: int = 64
    edit_types: List[str] = field(default_factory=lambda: list(EDIT_TYPES))
    candidates_per_prompt: int = 4
    label_noise: float = 0.1
    n_pairs_train: int = 1024
    n_pairs_eval: int = 256
    reuse: bool = True  # an existing build with the same settings is kept (same seed -> same data)

    def sandbox(self):
        """The builder's SandboxConfig (which validates every field, naming it)."""
        from edit_rlhf.sandbox.config import SandboxConfig

        return SandboxConfig(seed=self.seed, size=self.size, n_train=self.n_train, n_eval=self.n_eval,
                             edit_types=list(self.edit_types), candidates_per_prompt=self.candidates_per_prompt,
                             label_noise=self.label_noise, n_pairs_train=self.n_pairs_train,
                             n_pairs_eval=self.n_pairs_eval)

    def check(self) -> None:
        try:
            self.sandbox()
        except ValueError as e:  # "SandboxConfig.<field> must be ..." -> "<field>: ..."
            msg = str(e)
            raise ValueError(msg.replace("SandboxConfig.", "", 1).replace(" must", ": must", 1)) from None
