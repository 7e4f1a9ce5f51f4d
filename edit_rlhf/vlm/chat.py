"""Chat examples with images -> processor tensors, with labels on the assistant's tokens only.

An example is a list of chat messages in the Hugging Face format (`{"role", "content"}`, content a string
or a list of `{"type": "image"}` / `{"type": "text", "text": ...}` parts) plus its images in order of
appearance. The processor's chat template renders it, the processor expands each image into its visual
tokens, and `assistant_labels` keeps the loss on what the assistant says (its text and closing
`<|im_end|>`), never on the system/user turns, the images or padding.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence

import numpy as np
import torch

IGNORE = -100


@dataclass
class ChatExample:
    """messages: chat turns; images: uint8 (H, W, 3) arrays or PIL images, one per image part."""

    messages: List[Dict[str, Any]]
    images: List[Any] = field(default_factory=list)

    def prompt(self) -> "ChatExample":
        """The example up to (not including) its last assistant turn, for generation."""
        if not self.messages or self.messages[-1]["role"] != "assistant":
            return self
        return ChatExample(self.messages[:-1], self.images)

    def check(self) -> None:
        n = sum(1 for m in self.messages if not isinstance(m["content"], str)
                for c in m["content"] if c.get("type") == "image")
        if n != len(self.images):
            raise ValueError(f"chat example has {n} image parts but {len(self.images)} images")


def user_assistant(images: Sequence[Any], question: str, answer: str = None) -> ChatExample:
    """The common case: one user turn (images first, then the question) and optionally the answer."""
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
    msgs = [{"role": "user", "content": content}]
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    return ChatExample(msgs, list(images))


def assistant_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, header: Sequence[int],
                     end_id: int) -> torch.Tensor:
    """Labels (B, T): input ids inside assistant turns, IGNORE elsewhere.

    An assistant turn starts after the token sequence `header` (`<|im_start|>assistant\\n`) and ends with
    (and includes) the next `end_id` (`<|im_end|>`); an unterminated turn runs to the end of the sequence."""
    labels = torch.full_like(input_ids, IGNORE)
    h = list(header)
    k = len(h)
    for b in range(input_ids.shape[0]):
        ids = input_ids[b].tolist()
        valid = attention_mask[b].tolist()
        i = 0
        while i <= len(ids) - k:
            if ids[i:i + k] == h:
                j = i + k
                while j < len(ids) and valid[j]:
                    labels[b, j] = ids[j]
                    if ids[j] == end_id:
                        break
                    j += 1
                i = j + 1
            else:
                i += 1
    return labels


def _as_rgb(im):
    from PIL import Image

    return im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im, dtype=np.uint8)).convert("RGB")


def collate(processor, examples: Sequence[ChatExample], generation: bool = False) -> Dict[str, torch.Tensor]:
    """Processor tensors for a batch: input_ids, attention_mask, mm_token_type_ids, pixel_values,
    image_grid_thw; plus `labels` (assistant tokens only) unless `generation`, where the last assistant
    turn is dropped, a generation prompt added and padding goes left (as `generate` needs)."""
    tok = processor.tokenizer
    texts, images = [], []
    for ex in examples:
        ex.check()
        msgs = ex.prompt().messages if generation else ex.messages
        texts.append(processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation))
        images += [_as_rgb(im) for im in ex.images]
    side = tok.padding_side
    tok.padding_side = "left" if generation else "right"
    try:
        enc = processor(text=texts, images=images or None, return_tensors="pt", padding=True)
    finally:
        tok.padding_side = side
    batch = dict(enc)
    if "mm_token_type_ids" not in batch:  # transformers 5.x needs it whenever images are passed
        image_id = tok.convert_tokens_to_ids("<|image_pad|>")
        batch["mm_token_type_ids"] = (batch["input_ids"] == image_id).long()
    if not generation:
        header = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
        batch["labels"] = assistant_labels(batch["input_ids"], batch["attention_mask"], header,
                                           tok.convert_tokens_to_ids("<|im_end|>"))
    return batch
