"""Atomic, resumable step checkpoints shared by every training pipeline.

Layout under `<output_dir>/checkpoints/`:

    step_00000010/          one step, complete or absent: written as `.tmp-step_00000010/`, then renamed
        state.json          step, versions, data position, RNG, counters, MLflow run id, config
        learner/            DeepSpeed state of every rank (trainable weights + optimizer partitions)
        lora/ ...           exported weights (e.g. a diffusers LoRA) for use outside edit_rlhf
    latest                  the name of the newest complete step directory, replaced atomically, written last

A crash at any point leaves either the previous `latest` or the new one, never a half-written step.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Dict, Optional, Tuple

STATE = "state.json"
LATEST = "latest"


class CheckpointError(RuntimeError):
    pass


def step_name(step: int) -> str:
    return f"step_{step:08d}"


class Checkpoints:
    def __init__(self, output_dir: str):
        self.root = os.path.join(os.path.abspath(output_dir), "checkpoints")

    def begin(self, step: int) -> str:
        """A fresh temporary directory for step `step` (a stale one from a crash is discarded)."""
        tmp = os.path.join(self.root, ".tmp-" + step_name(step))
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        os.makedirs(tmp)
        return tmp

    def commit(self, step: int, tmp: str, state: Dict[str, Any]) -> str:
        """Write state.json into `tmp`, rename it into place, then move the `latest` pointer."""
        with open(os.path.join(tmp, STATE), "w") as f:
            json.dump(state, f, indent=2, default=str)
        final = os.path.join(self.root, step_name(step))
        if os.path.exists(final):  # the same step saved again after a resume
            shutil.rmtree(final)
        os.replace(tmp, final)
        ptr = os.path.join(self.root, LATEST + ".tmp")
        with open(ptr, "w") as f:
            f.write(step_name(step) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(ptr, os.path.join(self.root, LATEST))
        return final

    def latest(self) -> Optional[str]:
        p = os.path.join(self.root, LATEST)
        if not os.path.exists(p):
            return None
        with open(p) as f:
            name = f.read().strip()
        d = os.path.join(self.root, name)
        if not os.path.exists(os.path.join(d, STATE)):
            raise CheckpointError(f"{p} points at {name}, which has no {STATE}")
        return d

    def resume_state(self, resume: Optional[str]) -> Tuple[Optional[str], Optional[Dict[str, Any]]]:
        """(step directory, its state) for a run's `resume` setting; (None, None) for a fresh run."""
        if not resume:
            return None, None
        step_dir = self.resolve(resume)
        return step_dir, load_state(step_dir)

    def resolve(self, resume: str) -> str:
        """`resume` = 'auto' (latest here), a step directory, or a checkpoints root with a `latest` pointer."""
        if resume == "auto":
            d = self.latest()
            if d is None:
                raise CheckpointError(f"resume=auto: no checkpoint under {self.root}")
            return d
        resume = os.path.abspath(resume)
        if os.path.exists(os.path.join(resume, STATE)):
            return resume
        for root in (resume, os.path.join(resume, "checkpoints")):
            if os.path.exists(os.path.join(root, LATEST)):
                c = Checkpoints.__new__(Checkpoints)
                c.root = root
                return c.latest()
        raise CheckpointError(f"resume={resume}: not a checkpoint (no {STATE}) and no '{LATEST}' pointer there")


def load_state(step_dir: str) -> Dict[str, Any]:
    with open(os.path.join(step_dir, STATE)) as f:
        return json.load(f)


def publish(src: str, dst: str) -> str:
    """Copy a finished artefact (e.g. the last step's LoRA or HF folder) to a stable path such as
    `<output_dir>/final`, replacing an older copy only once the new one is complete."""
    dst = os.path.abspath(dst)
    tmp = dst + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    if os.path.exists(dst):
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    return dst
