"""Batched greedy (or sampled) generation from chat examples with images."""
from __future__ import annotations

from typing import List, Sequence

import torch

from edit_rlhf.vlm.attention import batched_vision_attention
from edit_rlhf.vlm.chat import ChatExample, collate

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def suppressed_ids(tokenizer) -> List[int]:
    """Ids a reply must never contain: a sampled `<|image_pad|>` makes the re-scoring forward fail
    ("Image features and image tokens do not match")."""
    return [tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS]


@torch.no_grad()
def generate(model, processor, examples: Sequence[ChatExample], max_new_tokens: int = 64, batch_size: int = 64,
             do_sample: bool = False, temperature: float = 1.0, vision_patch: bool = True) -> List[str]:
    """Reply text (special tokens removed) to each example's prompt (its last assistant turn, if any, dropped)."""
    tok = processor.tokenizer
    out: List[str] = []
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with batched_vision_attention(vision_patch):
        for lo in range(0, len(examples), batch_size):
            batch = {k: v.to(dev) for k, v in collate(processor, examples[lo:lo + batch_size], generation=True).items()}
            kw = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, suppress_tokens=suppressed_ids(tok),
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"))
            if do_sample:
                kw["temperature"] = temperature
            ids = model.generate(**batch, **kw)
            new = ids[:, batch["input_ids"].shape[1]:]
            out += [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
    model.train(was_training)
    return out
