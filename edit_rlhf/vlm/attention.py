"""Batched Qwen2.5-VL vision attention (a CPU / no-flash-attention speed patch).

Without flash-attention the stock `Qwen2_5_VLVisionAttention.forward` splits the packed patch sequence at
`cu_seqlens` and runs one attention call per window and per image: hundreds of tiny SDPA calls per batch,
the top entry of the CPU profile in the de-risk runs. When every chunk has the same length (fixed-size
images, as in the sandbox: equal windows, equal images) the chunks are reshaped to a batch and attended in
one SDPA call, which is the same computation. Anything else (ragged chunks, flash attention, attention
weights requested) falls through to the stock forward.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

_STOCK = None


def _module():
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl

    return modeling_qwen2_5_vl


def batched_vision_attention_forward(self, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor,
                                     position_embeddings=None, max_seqlen=None, **kwargs) -> torch.Tensor:
    """Drop-in for `Qwen2_5_VLVisionAttention.forward`: hidden_states (N, D), cu_seqlens (c+1,) -> (N, D)."""
    qm = _module()
    stock = _STOCK or qm.Qwen2_5_VLVisionAttention.forward
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    impl = getattr(self.config, "_attn_implementation", None) or "sdpa"
    if (lengths.numel() == 0 or bool((lengths != lengths[0]).any()) or "flash" in str(impl)
            or position_embeddings is None or kwargs.get("output_attentions")):
        return stock(self, hidden_states, cu_seqlens, position_embeddings=position_embeddings,
                     max_seqlen=max_seqlen, **kwargs)
    n = hidden_states.shape[0]
    c, length = lengths.numel(), int(lengths[0])
    q, k, v = self.qkv(hidden_states).reshape(n, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    q, k = qm.apply_rotary_pos_emb_vision(q, k, cos, sin)
    q, k, v = (x.reshape(c, length, self.num_heads, -1).transpose(1, 2) for x in (q, k, v))  # (c, H, L, Dh)
    p = self.attention_dropout if self.training else 0.0
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=self.scaling)
    return self.proj(o.transpose(1, 2).reshape(n, -1).contiguous())


def patch_vision_attention() -> None:
    """Install the batched forward on the Qwen2.5-VL vision attention class (idempotent, process-wide)."""
    global _STOCK
    qm = _module()
    if _STOCK is None:
        _STOCK = qm.Qwen2_5_VLVisionAttention.forward
    qm.Qwen2_5_VLVisionAttention.forward = batched_vision_attention_forward


def unpatch_vision_attention() -> None:
    global _STOCK
    if _STOCK is not None:
        _module().Qwen2_5_VLVisionAttention.forward = _STOCK
        _STOCK = None


def is_patched() -> bool:
    return _module().Qwen2_5_VLVisionAttention.forward is batched_vision_attention_forward


@contextmanager
def batched_vision_attention(enabled: bool = True):
    """Context manager: the patch inside, the previous state restored after."""
    was = is_patched()
    if enabled and not was:
        patch_vision_attention()
    elif not enabled and was:
        unpatch_vision_attention()
    try:
        yield
    finally:
        if was and not is_patched():
            patch_vision_attention()
        elif not was and is_patched():
            unpatch_vision_attention()
