"""Config of `edit-rlhf edit-r1`: an ordered list of stages, each one pipeline command with its own YAML.

Stage overrides and outputs may use placeholders: `{output_dir}` (the edit-r1 run's), `{stage_dir}`
(`<output_dir>/<stage name>`), `{seed}`, and `{stages.<name>.<output>}` (a declared output of an earlier
stage), so each stage hands its results to the next by path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from omegaconf import MISSING

from edit_rlhf.config.schema import TrackingConfig


@dataclass
class StageConfig:
    name: str = MISSING
    command: str = MISSING  # a pipeline command: principles, rrm-traces, rrm-sft, rrm-gcpo, grpo, eval-editor, ...
    config: Optional[str] = None  # the stage's YAML, relative to the edit-r1 YAML's folder (or absolute)
    overrides: List[str] = field(default_factory=list)
    outputs: Dict[str, str] = field(default_factory=dict)  # named paths later stages may reference
    enabled: bool = True

    def check(self) -> None:
        from edit_rlhf.commands import PIPELINES

        if self.command not in PIPELINES:
            raise ValueError(f"command: {self.command!r} is not one of {sorted(PIPELINES)}")
        if not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"name: {self.name!r} must be letters, digits, '_' or '-'")


@dataclass
class EditR1Config:
    seed: int = 0
    output_dir: str = "outputs/edit_r1"
    resume: Optional[str] = None  # "auto": skip finished stages, resume the interrupted one from its checkpoint
    overwrite: bool = False  # stages may delete an earlier run's checkpoints in their folders (else they refuse)
    stages: List[StageConfig] = field(default_factory=list)
    skip: List[str] = field(default_factory=list)  # stage names to skip (their declared outputs must exist)
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="edit_rlhf-edit_r1"))
    report: bool = True  # an HTML report of the parent run and its stages at the end

    def check(self) -> None:
        names = [s.name for s in self.stages]
        if not names:
            raise ValueError("stages: at least one stage is needed")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"stages: duplicate stage names {dup}")
        unknown = [n for n in self.skip if n not in names]
        if unknown:
            raise ValueError(f"skip: unknown stage(s) {unknown}; stages are {names}")
        if self.resume not in (None, "auto"):
            raise ValueError(f"resume: only 'auto' is supported for edit-r1, got {self.resume!r}")
