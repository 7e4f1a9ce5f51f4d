"""Measuring what a forward pass keeps in memory, on the meta device (no memory) or on real tensors (tests).

- `saved_bytes(fn, params)`: the bytes autograd saves for the backward while `fn()` runs — what a training
  forward holds as activations — counted once per storage, parameters excluded. Under gradient checkpointing
  the checkpointed blocks save nothing themselves; `CheckpointCounter` is the checkpoint function the planner
  installs (through the same `enable_checkpointing` switch the learners use) to count what each checkpointed
  call keeps instead: its tensor inputs.
- `LivePeak`: the peak of live non-parameter tensor bytes while code runs (an inference forward, a VAE decode),
  from a dispatch mode that tracks every storage an op creates until its last tensor is freed.
- `fused_attention()`: on the meta device `F.scaled_dot_product_attention` falls back to the math path, which
  keeps the (T, T) attention matrix. On a GPU (flash / memory-efficient kernels) and on the CPU (its flash
  kernel) only q, k, v, the output and the log-sum-exp are kept; inside this context meta tensors take the
  fused kernels too, so meta measurements match what real runs keep.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def _storage_key(t: torch.Tensor) -> Optional[Tuple[int, int]]:
    try:
        s = t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    ptr = s.data_ptr() if t.device.type != "meta" else s._cdata
    return (ptr, s.nbytes())


def param_keys(params: Iterable[torch.Tensor]) -> set:
    return {k for k in (_storage_key(p) for p in params) if k is not None}


def saved_bytes(fn: Callable[[], Any], params: Iterable[torch.Tensor] = ()) -> Tuple[int, Any]:
    """(bytes of distinct non-parameter storages autograd saved while `fn()` ran, fn's result)."""
    skip = param_keys(params)
    seen: Dict[Tuple[int, int], int] = {}

    def pack(t):
        k = _storage_key(t) if isinstance(t, torch.Tensor) else None
        if k is not None and k not in skip and k not in seen:
            seen[k] = k[1]
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


class CheckpointCounter:
    """A checkpoint function (`enable_checkpointing(model, checkpoint_fn=...)`) that runs the block as the
    learners' non-reentrant checkpoint does and records, per call, the bytes of its tensor inputs (what the
    checkpoint keeps for the recompute) and the bytes the block would save without checkpointing (what the
    recompute brings back during the backward: the transient peak of one block)."""

    def __init__(self, params: Iterable[torch.Tensor] = ()):
        self.skip_params = list(params)
        self.skip = param_keys(self.skip_params)
        self.inputs = 0
        self.calls = 0
        self.max_block = 0
        self._seen: set = set()

    def __call__(self, function, *args, **kwargs):
        for a in list(args) + list(kwargs.values()):
            for t in (a if isinstance(a, (tuple, list)) else [a]):
                if isinstance(t, torch.Tensor):
                    k = _storage_key(t)
                    if k is not None and k not in self.skip and k not in self._seen:
                        self._seen.add(k)
                        self.inputs += k[1]
        self.calls += 1
        # the block's own saves go to these inner hooks, not to an enclosing `saved_bytes`: a checkpointed block
        # keeps nothing but its inputs, and its saves come back only while the backward recomputes it
        inner, out = saved_bytes(lambda: function(*args, **kwargs), self.skip_params)
        self.max_block = max(self.max_block, inner)
        return out


class LivePeak(TorchDispatchMode):
    """Peak bytes of live tensor storages created inside the context (parameters and pre-existing tensors are
    not counted). Works on meta tensors: it counts shapes, not memory."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        super().__init__()
        self.skip = param_keys(exclude)
        self.refs: Dict[Tuple[int, int], int] = {}
        self.live = 0
        self.peak = 0

    def _release(self, key):
        n = self.refs.get(key, 0) - 1
        if n <= 0:
            if key in self.refs:
                del self.refs[key]
                self.live -= key[1]
        else:
            self.refs[key] = n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat = out if isinstance(out, (tuple, list)) else [out]
        for t in flat:
            if not isinstance(t, torch.Tensor):
                continue
            k = _storage_key(t)
            if k is None or k in self.skip:
                continue
            if k not in self.refs:
                self.refs[k] = 0
                self.live += k[1]
                self.peak = max(self.peak, self.live)
            self.refs[k] += 1
            weakref.finalize(t, self._release, k)
        return out


def _fused_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    q, k, v = query, key, value
    if k.shape[-3] != q.shape[-3]:  # grouped-query attention: the kernels see repeated k/v heads
        r = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(r, dim=-3), v.repeat_interleave(r, dim=-3)
    if attn_mask is None:
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, is_causal, scale=scale)[0]
    if attn_mask.dtype == torch.bool:
        attn_mask = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(~attn_mask, -1e4)
    mask = attn_mask.expand(q.shape[0], q.shape[-3], q.shape[-2], k.shape[-2])
    return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, mask, True, 0.0, is_causal,
                                                                  scale=scale)[0]


@contextlib.contextmanager
def fused_attention():
    """Meta tensors take the fused attention kernels (see the module docstring); real tensors are untouched."""
    import torch.nn.functional as F

    orig = F.scaled_dot_product_attention

    def sdpa(query, key, value, *args, **kwargs):
        if query.device.type == "meta":
            return _fused_sdpa(query, key, value, *args, **kwargs)
        return orig(query, key, value, *args, **kwargs)

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = orig
