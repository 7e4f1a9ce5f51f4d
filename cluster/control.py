"""Run control between steps: pool-size requests written by `edit-rlhf scale` and read by the driver.

A request is a small JSON file in `<output_dir>/control/scale.json` ({"rollout": 4, "reward": 2}), written
atomically; the driver takes it (renames it away) at the start of the next step and resizes the pools
without restarting the run.
"""
from __future__ import annotations

import json
import os
import time
from typing import Dict, Optional

POOLS = ("rollout", "reward")


def _path(output_dir: str) -> str:
    return os.path.join(os.path.abspath(output_dir), "control", "scale.json")


def request_scale(output_dir: str, sizes: Dict[str, int]) -> str:
    bad = [k for k in sizes if k not in POOLS]
    if bad:
        raise ValueError(f"scale: unknown pool(s) {bad}; resizable pools are {list(POOLS)}")
    for k, v in sizes.items():
        if int(v) < 1:
            raise ValueError(f"scale: {k} must be >= 1, got {v}")
    p = _path(output_dir)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    tmp = p + f".{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({k: int(v) for k, v in sizes.items()} | {"time": time.time()}, f)
    os.replace(tmp, p)
    return p


def take_scale_request(output_dir: str) -> Optional[Dict[str, int]]:
    """The pending request (consumed), or None."""
    p = _path(output_dir)
    taken = p + ".taken"
    try:
        os.replace(p, taken)
    except FileNotFoundError:
        return None
    with open(taken) as f:
        req = json.load(f)
    return {k: int(v) for k, v in req.items() if k in POOLS}
