"""The Edit-RRM prompt: system rules + one user turn with the source image, the edited image, the instruction
and the evaluation points, rendered by the processor's chat template (Edit-R1, algorithms.md §1.3).

Two system texts share one user turn:
- ``full``: the paper's scoring rules, in our words (point scoring, holistic 0-10 score, anchors, output
  format). For real Qwen2.5-VL RRMs.
- ``compact``: the same contract in three lines, for the tiny sandbox RRM (its byte-level tokenizer has
  merges only for sandbox words, so the full rules cost ~1.7k tokens per prompt).

User turn (both styles)::

    Source image: <image>
    Edited image: <image>
    Instruction: make the square red
    Evaluation points:
    {"question": "Is the square red?"}
    ...

The points are written as the JSON objects the verdict repeats with a score (format.py), one per line.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence

from edit_rlhf.rrm.format import format_verdict

SYSTEM_FULL = """You are a meticulous judge of instruction-based image edits. You are given the original image, the edited image, the edit instruction and a list of evaluation points. Check every point against the two images, then give the edit one overall rating.

Scoring the evaluation points:
- Each point gets 1 (clearly satisfied) or 0 (not satisfied). No other values.
- Edits along a range (far to near, left to right, thin to wide, small to large, and so on) earn 1 only when the change is clearly visible; a slight shift is not enough.
- If you are unsure, answer 0.
- Left and right are seen from the viewer: for an object facing the camera, its own left is the viewer's right.

The overall rating:
- Rate from 0 to 10; one decimal is allowed. It is a holistic judgement, not the mean of the points: ignore a point that contradicts the instruction, and a full set of satisfied points does not by itself earn 10.
- If nothing was edited, or the edited image is practically identical to the original, the rating is 0.
- Judge the main subject first. 3D structure and materials must stay consistent, and a removal must be complete, with no remnants.
- For edits that move or place objects, give the objects' bounding boxes in your reasoning; a barely visible move does not count.
- Deduct in proportion to the effort a further edit would need to fix each unmet point.
- Changes to anything the instruction does not mention (background, other subjects) are hallucinations: penalise them heavily.
- Deduct for image defects such as over-sharpening, oversaturation, colour casts and added borders.
- Before you settle, re-check in this order of importance: counts, actions and states, negations and comparisons, structure and function, material, position, layout, the main subject, the surroundings.
- Anchors: 0 = unusable, 5 = partly usable, 8 = nearly usable with small fixable flaws, 10 = flawless.

Output: first reason briefly about what you see. Then write every evaluation point with its score as one JSON list, then their average, then the rating in a score tag, exactly like this:
"""

SYSTEM_COMPACT = """Compare the edited image with the source image. Score each question 1 or 0, then give the average and a score from 0 to 10:
"""

# The format example both system texts end with (written by the canonical writer).
FORMAT_EXAMPLE = format_verdict([("<point 1>", 1), ("<point 2>", 0)], 6.5)
SYSTEM_TEXTS: Dict[str, str] = {"full": SYSTEM_FULL + FORMAT_EXAMPLE, "compact": SYSTEM_COMPACT + FORMAT_EXAMPLE}


def system_text(style: str = "full", custom: Optional[str] = None) -> str:
    """The system text of `style` ('full' | 'compact'), or `custom` verbatim."""
    if custom:
        return custom
    if style not in SYSTEM_TEXTS:
        raise ValueError(f"prompt style must be one of {sorted(SYSTEM_TEXTS)}, got {style!r}")
    return SYSTEM_TEXTS[style]


def _question(p: Any, i: int) -> str:
    q = p.get("question") if isinstance(p, dict) else p
    if not isinstance(q, str) or not q.strip():
        raise ValueError(f"principles[{i}] needs a non-empty question, got {p!r}")
    return q.strip()


def points_text(principles: Sequence[Any]) -> str:
    """One `{"question": ...}` line per principle (dicts with 'question', or plain strings)."""
    if not principles:
        raise ValueError("the RRM needs at least one evaluation point (principles is empty)")
    return "\n".join(json.dumps({"question": _question(p, i)}, ensure_ascii=False) for i, p in enumerate(principles))


def user_content(instruction: str, principles: Sequence[Any]) -> List[Dict[str, str]]:
    """Chat content parts of the user turn: text, source image, text, edited image, text."""
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(f"instruction must be a non-empty string, got {instruction!r}")
    return [{"type": "text", "text": "Source image: "}, {"type": "image"},
            {"type": "text", "text": "\nEdited image: "}, {"type": "image"},
            {"type": "text", "text": f"\nInstruction: {instruction.strip()}\nEvaluation points:\n"
                                     f"{points_text(principles)}"}]


def build_messages(instruction: str, principles: Sequence[Any], style: str = "full",
                   system: Optional[str] = None) -> List[Dict[str, Any]]:
    return [{"role": "system", "content": system_text(style, system)},
            {"role": "user", "content": user_content(instruction, principles)}]


def render(processor, messages: List[Dict[str, Any]]) -> str:
    """Prompt text through the processor's (or tokenizer's) chat template, ending with the assistant header."""
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class RRMPrompt:
    """Prompt texts for one RRM's processor (loaded from its folder: `AutoProcessor.from_pretrained(path)`)."""

    def __init__(self, processor, style: str = "full", system: Optional[str] = None):
        self.processor = processor
        self.style = style
        self.system = system_text(style, system)

    @classmethod
    def from_path(cls, path: str, style: str = "full", system: Optional[str] = None) -> "RRMPrompt":
        from transformers import AutoProcessor

        return cls(AutoProcessor.from_pretrained(path), style, system)

    def text(self, instruction: str, principles: Sequence[Any]) -> str:
        return render(self.processor, [{"role": "system", "content": self.system},
                                       {"role": "user", "content": user_content(instruction, principles)}])

    def token_counts(self, instruction: str, principles: Sequence[Any], image_hw=(64, 64)) -> Dict[str, int]:
        """{'system', 'user_text', 'images', 'total'} prompt tokens for one request with two images of
        `image_hw` (the processor expands each image placeholder to its visual tokens)."""
        import numpy as np

        tok = self.processor.tokenizer
        img = np.zeros((*image_hw, 3), np.uint8)
        full = self.processor(text=[self.text(instruction, principles)], images=[img, img], return_tensors="np")
        total = int(full["input_ids"].shape[1])
        image_id = tok.convert_tokens_to_ids("<|image_pad|>")
        images = int((full["input_ids"][0] == image_id).sum())
        system = len(tok(self.system, add_special_tokens=False)["input_ids"])
        return {"system": system, "images": images, "user_text": total - images - system, "total": total}
