"""Atomic, resumable step checkpoints shared by every training pipeline.

Layout under `<output_dir>/checkpoints/`:

    step_00000010/          one step, complete or absent: written as `.tmp-step_00000010/`, then renamed
        state.json          step, versions, data position, RNG, counters, MLflow run id, config
        learner/            DeepSpeed state of every rank (trainable weights + optimizer partitions)
        lora/ ...           exported weights (e.g. a diffusers LoRA) for use outside edit_rlhf
    latest                  the name of the newest complete step directory, replaced atomically, written last

A crash at any point leaves either the previous `latest` or the new one, never a half-written step.

Safety (issue 14): directories are 0700 and files 0600 (a state holds the run's config), `state.json` is
scrubbed of secrets (edit_rlhf.redaction); a fresh run refuses an output_dir that already holds checkpoints
unless told to resume or overwrite; free space is checked before each save (about the previous step's size, at
least `min_free_mb`) and a failed save removes its temporary directory and says "no space left" when that is
the cause; only the newest `keep_last` step directories are kept (never the one `latest` names).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from typing import Any, Dict, Iterator, Optional, Tuple

STATE = "state.json"
LATEST = "latest"


class CheckpointError(RuntimeError):
    pass


def step_name(step: int) -> str:
    return f"step_{step:08d}"


# what a full disk looks like when the writer is torch.save / safetensors / DeepSpeed (often inside a Ray actor,
# so only the message survives): "[enforce fail at inline_container.cc:672] unexpected pos ..." is torch's
_NO_SPACE_SIGNS = ("no space left", "enospc", "errno 28", "unexpected pos", "disk quota exceeded",
                   "file write failed")


def _mb(n: float) -> str:
    return f"{n / 2 ** 20:.0f}"


def dir_bytes(path: str) -> int:
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(d, f)).st_size
            except OSError:
                pass
    return total


def is_no_space(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(s in str(e).lower() for s in _NO_SPACE_SIGNS)


def harden(path: str) -> None:
    """Owner-only: directories 0700, files 0600 (a checkpoint holds the run's config and its weights)."""
    os.chmod(path, 0o700)
    for d, dirs, files in os.walk(path):
        for x in dirs:
            os.chmod(os.path.join(d, x), 0o700)
        for x in files:
            p = os.path.join(d, x)
            if not os.path.islink(p):
                os.chmod(p, 0o600)


class Checkpoints:
    def __init__(self, output_dir: str, keep_last: int = 0, min_free_mb: float = 0.0):
        """`keep_last`: step directories kept (0 = all); `min_free_mb`: free space required before a save
        even when there is no earlier checkpoint to size it by."""
        self.root = os.path.join(os.path.abspath(output_dir), "checkpoints")
        self.keep_last = int(keep_last or 0)
        self.min_free_mb = float(min_free_mb or 0.0)

    @classmethod
    def for_run(cls, cfg) -> "Checkpoints":
        """Checkpoints of a pipeline config (`output_dir`, optional `checkpoint.keep_last / min_free_mb`)."""
        c = getattr(cfg, "checkpoint", None)
        return cls(cfg.output_dir, getattr(c, "keep_last", 0), getattr(c, "min_free_mb", 0.0))

    def steps(self) -> list:
        """Complete step directories, oldest first."""
        if not os.path.isdir(self.root):
            return []
        return sorted(n for n in os.listdir(self.root) if n.startswith("step_")
                      and os.path.isdir(os.path.join(self.root, n)))

    # ------------------------------------------------------------------ saving
    def need_bytes(self) -> int:
        """Free space a save needs: about the newest checkpoint's size (+10%), at least `min_free_mb`."""
        prev = 0
        try:
            d = self.latest()
        except CheckpointError:
            d = None
        if d is None and self.steps():
            d = os.path.join(self.root, self.steps()[-1])
        if d is not None:
            prev = int(dir_bytes(d) * 1.1)
        return max(prev, int(self.min_free_mb * 2 ** 20))

    def _no_space(self, need: int, free: int, what_now: str) -> "CheckpointError":
        return CheckpointError(f"no space left: need ~{_mb(need)} MB at {self.root}, {_mb(free)} MB free ({what_now})")

    def check_space(self) -> None:
        need = self.need_bytes()
        if not need:
            return
        free = shutil.disk_usage(self.root).free
        if free < need:
            raise self._no_space(need, free, "free some space, lower checkpoint.keep_last, or move output_dir")

    def begin(self, step: int) -> str:
        """A fresh temporary directory for step `step` (a stale one from a crash is discarded), after checking
        that the disk has room for it."""
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)
        for n in os.listdir(self.root):  # leftovers of a crashed save: never resumable, only taking space
            if n.startswith(".tmp-step_"):
                shutil.rmtree(os.path.join(self.root, n), ignore_errors=True)
        self.check_space()
        tmp = os.path.join(self.root, ".tmp-" + step_name(step))
        os.makedirs(tmp, mode=0o700)
        return tmp

    @contextlib.contextmanager
    def guard(self, tmp: str) -> Iterator[None]:
        """Around the writes into `tmp`: on any failure the temporary directory is removed, and a full disk
        becomes one CheckpointError saying so (with the sizes) instead of the writer's cryptic message."""
        from edit_rlhf.stops import critical

        try:
            with critical():  # a stop signal lets the save finish (or fail) first, then takes effect
                yield
        except BaseException as e:
            written = dir_bytes(tmp) if os.path.isdir(tmp) else 0
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, Exception) and is_no_space(e):
                need = max(self.need_bytes(), written)
                free = shutil.disk_usage(self.root).free if os.path.isdir(self.root) else 0
                raise self._no_space(need, free, "the save was abandoned; the previous checkpoint is intact") from None
            raise

    def commit(self, step: int, tmp: str, state: Dict[str, Any]) -> str:
        """Write state.json into `tmp` (secrets masked), rename it into place, then move the `latest` pointer and
        drop step directories beyond `keep_last`."""
        from edit_rlhf.redaction import scrub

        with open(os.path.join(tmp, STATE), "w") as f:
            json.dump(scrub(state), f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        harden(tmp)
        final = os.path.join(self.root, step_name(step))
        if os.path.exists(final):  # the same step saved again after a resume
            shutil.rmtree(final)
        os.replace(tmp, final)
        ptr = os.path.join(self.root, LATEST + ".tmp")
        with open(ptr, "w") as f:
            f.write(step_name(step) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(ptr, 0o600)
        os.replace(ptr, os.path.join(self.root, LATEST))
        self.prune()
        return final

    def prune(self) -> list:
        """Delete the oldest step directories beyond `keep_last`; never the one `latest` points to."""
        if self.keep_last <= 0:
            return []
        keep_name = None
        p = os.path.join(self.root, LATEST)
        if os.path.exists(p):
            with open(p) as f:
                keep_name = f.read().strip()
        steps = self.steps()
        gone = []
        for n in steps[:max(0, len(steps) - self.keep_last)]:
            if n != keep_name:
                shutil.rmtree(os.path.join(self.root, n), ignore_errors=True)
                gone.append(n)
        return gone

    # ------------------------------------------------------------------ starting a run
    def claim(self, resume: Optional[str], overwrite: bool = False) -> None:
        """A fresh run (no `resume`) in an output_dir holding another run's checkpoints: refuse unless
        `overwrite`, which deletes them first (never silently mixing two runs in one folder)."""
        if resume:
            return
        held = self.steps() + ([LATEST] if os.path.exists(os.path.join(self.root, LATEST)) else [])
        if not held:
            return
        if not overwrite:
            last = self.steps()[-1] if self.steps() else LATEST
            raise CheckpointError(f"{os.path.dirname(self.root)} already holds checkpoints of another run (up to "
                                  f"{last}): pass --resume to continue it, or --overwrite (overwrite=true) to delete "
                                  f"them and start over")
        for n in os.listdir(self.root):
            q = os.path.join(self.root, n)
            if n.startswith(("step_", ".tmp-step_")) and os.path.isdir(q):
                shutil.rmtree(q)
            elif n in (LATEST, LATEST + ".tmp"):
                os.remove(q)

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

    def resume_state(self, resume: Optional[str], overwrite: bool = False
                     ) -> Tuple[Optional[str], Optional[Dict[str, Any]]]:
        """(step directory, its state) for a run's `resume` setting; (None, None) for a fresh run (which must
        not find another run's checkpoints here unless `overwrite`, see `claim`)."""
        self.claim(resume, overwrite)
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
