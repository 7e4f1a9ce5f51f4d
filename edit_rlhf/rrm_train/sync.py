"""Weight sync learner -> generation engines: named tensors packed into a few flat buckets.

Lessons from OpenRLHF/verl/slime (orchestration.md §1.3, §4 #1): per-tensor RPCs dominate sync time, so the
learner packs every tensor that changed into flat buffers (one per dtype, split at `bucket_bytes`), the driver
puts that one object into the object store once, and each engine loads it in *one* call. Iterating a
`WeightBuckets` yields (HF name, view) pairs, which is what `VLLMEngine.load_weights` / `HFEngine.load_weights`
consume, so the engines need no bucket-specific code. `version` travels with the weights: the engine reports
it back and the driver checks it against the learner's.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Tuple

import torch


class WeightBuckets:
    """Flat per-dtype buffers of named tensors. buckets[k] = (flat 1-D tensor, [(name, shape, offset, numel)])."""

    def __init__(self, named: Dict[str, torch.Tensor], bucket_bytes: int = 64 << 20, version: int = 0):
        self.version = int(version)
        self.buckets: List[Tuple[torch.Tensor, List[Tuple[str, Tuple[int, ...], int, int]]]] = []
        by_dtype: Dict[torch.dtype, List[Tuple[str, torch.Tensor]]] = {}
        for name, t in named.items():
            by_dtype.setdefault(t.dtype, []).append((name, t.detach().to("cpu")))
        for dtype, items in by_dtype.items():
            cur: List[Tuple[str, torch.Tensor]] = []
            size = 0
            for name, t in items:
                nb = t.numel() * t.element_size()
                if cur and size + nb > bucket_bytes:
                    self._pack(cur, dtype)
                    cur, size = [], 0
                cur.append((name, t))
                size += nb
            if cur:
                self._pack(cur, dtype)

    def _pack(self, items: List[Tuple[str, torch.Tensor]], dtype: torch.dtype) -> None:
        flat = torch.cat([t.reshape(-1) for _, t in items]).to(dtype)
        meta, off = [], 0
        for name, t in items:
            meta.append((name, tuple(t.shape), off, t.numel()))
            off += t.numel()
        self.buckets.append((flat, meta))

    def __iter__(self) -> Iterator[Tuple[str, torch.Tensor]]:
        for flat, meta in self.buckets:
            for name, shape, off, n in meta:
                yield name, flat[off:off + n].view(shape)

    def __len__(self) -> int:
        return sum(len(m) for _, m in self.buckets)

    @property
    def nbytes(self) -> int:
        return sum(f.numel() * f.element_size() for f, _ in self.buckets)

    def names(self) -> List[str]:
        return [n for _, m in self.buckets for n, *_ in m]

    def to_dict(self) -> Dict[str, torch.Tensor]:
        return {n: t.clone() for n, t in self}
