"""Clean stops and one-line errors for the CLI.

SIGINT / SIGTERM in a driver raise `Stopped` where the driver is (abandoning the current step: nothing of it is
written), except inside `critical()` sections (a checkpoint save), which finish first. The pipeline's own
`finally` then shuts its pools and Ray down and marks the MLflow run KILLED (`Tracker.finish` asks `stop_status`),
and the CLI prints one line with the resume command and exits 130 (SIGINT) or 143 (SIGTERM).

Expected errors (config, data, checkpoint, authentication, pools) print one line and exit 2 (config / data) or 1
without a traceback; `--debug` or EDIT_RLHF_DEBUG=1 shows it.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
from typing import Iterator, List, Optional

_STATE = {"signal": None, "depth": 0, "pending": None, "installed": False}


class Stopped(KeyboardInterrupt):
    """The driver was asked to stop (SIGINT / SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _handler(signum, frame) -> None:
    if _STATE["signal"] is not None:  # a stop is already under way: let its clean-up finish
        print("edit-rlhf: already stopping, cleaning up (kill -9 to force)", file=sys.stderr, flush=True)
        return
    _STATE["signal"] = signum
    if _STATE["depth"] > 0:  # inside a checkpoint save: let it finish, stop right after
        _STATE["pending"] = signum
        return
    raise Stopped(signum)


def install() -> dict:
    """Route SIGINT and SIGTERM of this (main-thread) driver through `Stopped`; returns the previous handlers
    (for `uninstall`, when the CLI runs inside another program such as a test)."""
    previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    _STATE.update(installed=True, signal=None, pending=None)
    return previous


def uninstall(previous: dict) -> None:
    for s, h in previous.items():
        signal.signal(s, h)
    _STATE["installed"] = False


def after_ray_init() -> None:
    """ray.init() sets its own SIGTERM handler (sys.exit) in the driver: put ours back where we had one."""
    import threading

    if _STATE["installed"] and threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, _handler)


def stopped_by() -> Optional[int]:
    return _STATE["signal"]


def stop_status(status: str) -> str:
    """The MLflow status a run ends with: KILLED instead of FAILED when a stop signal ended it."""
    return "KILLED" if status == "FAILED" and _STATE["signal"] is not None else status


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """A section a stop signal must not cut in half (a checkpoint save); the stop takes effect at its end."""
    _STATE["depth"] += 1
    try:
        yield
    finally:
        _STATE["depth"] -= 1
        if _STATE["depth"] == 0 and _STATE["pending"] is not None:
            signum, _STATE["pending"] = _STATE["pending"], None
            raise Stopped(signum)


def exit_code(signum: int) -> int:
    return 128 + int(signum)


def resume_command(argv: List[str]) -> str:
    """The command that continues this run: the same arguments with `--resume` (and without `--overwrite`)."""
    args = [a for a in argv if a != "--overwrite"]
    cut = args.index("--") if "--" in args else len(args)
    if not any(a == "--resume" or a.startswith("--resume=") for a in args[:cut]):
        args.insert(cut, "--resume")
    return "edit-rlhf " + " ".join(shlex.quote(a) for a in args)


def debug_requested(argv: List[str]) -> bool:
    return "--debug" in argv or os.environ.get("EDIT_RLHF_DEBUG", "") not in ("", "0", "false")


def one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg if len(msg) < 2000 else msg[:2000] + " ..."


def say(command: str, text: str) -> None:
    print(f"edit-rlhf {command}: {text}", file=sys.stderr, flush=True)
