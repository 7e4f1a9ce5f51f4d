"""One weight-sync interface between a learner group and a pool of engines, two transports behind it
(`edit_rlhf.transport` has what each moves and copies):

- `ObjectStoreTransport(snapshot, load)`: learner rank 0's `snapshot` method (a WeightBuckets of the RRM, or the
  editor's LoRA snapshot) goes into Ray's object store once; each target's `load` method gets the ref. Used on
  CPU, for small models, and for the editor's LoRA to the rollout actors.
- `NCCLTransport(tp)`: learner rank 0 broadcasts the RRM's weights GPU to GPU into the vLLM engines with vLLM's
  weight-transfer engine (the engines must be built with `vllm.weight_transfer: nccl`).

`push(learner, targets, indices)` returns the version every target now holds and raises `SyncError` when one
reports another version than the learner's.
"""
from __future__ import annotations

from typing import List, Optional

import ray


class SyncError(RuntimeError):
    pass


def _check(got: List[int], version: int, what: str) -> int:
    if any(int(v) != int(version) for v in got):
        raise SyncError(f"weight sync ({what}): engine versions {got} != learner version {version}")
    return int(version)


class ObjectStoreTransport:
    name = "object_store"

    def __init__(self, snapshot: str, load: str):
        self.snapshot, self.load = snapshot, load
        self.last_bytes = 0

    def setup(self, learner, targets) -> None:
        pass

    def push(self, learner, targets, indices: Optional[List[int]] = None) -> int:
        (ref,) = ray.get(learner.actors[0].put.remote(self.snapshot))
        version = ray.get(learner.actors[0].call.remote("info"))["version"]
        idx = targets.alive() if indices is None else indices
        got = ray.get([getattr(targets.actors[i], self.load).remote(ref) for i in idx])
        return _check(got, version, self.name)


class NCCLTransport:
    """Learner rank 0 -> every vLLM engine of `targets` over one NCCL group (set up once, then one broadcast of
    packed buckets per sync; every engine gets every sync). An engine that restarts or joins cannot enter an
    existing NCCL group, so a change of membership rebuilds the group before the next broadcast."""

    name = "nccl"

    def __init__(self, tp: int):
        self.tp = int(tp)
        self.members: List[int] = []

    def setup(self, learner, targets) -> None:
        """(Re)build the NCCL group: learner rank 0 + every live engine's workers."""
        self.members = sorted(targets.alive())
        handles = [targets.actors[i] for i in self.members]
        addr, port = ray.get(learner.actors[0].free_address.remote())
        ray.get([a.call.remote("nccl_sync_init", handles, self.tp, addr, port) for a in learner.actors])

    def push(self, learner, targets, indices: Optional[List[int]] = None) -> int:
        if sorted(targets.alive()) != self.members:  # an engine restarted or joined: a new group
            self.setup(learner, targets)
        outs = ray.get([a.call.remote("nccl_sync") for a in learner.actors])
        version = ray.get(learner.actors[0].call.remote("info"))["version"]
        return _check(outs[0], version, self.name)


def make_transport(kind: str, snapshot: str, load: str, tp: int = 1):
    """`kind` from `edit_rlhf.transport.choose_transport`; `snapshot`/`load`: the object-store methods."""
    return NCCLTransport(tp) if kind == "nccl" else ObjectStoreTransport(snapshot, load)
