"""Principle decomposition (Edit-R1 §A.1, algorithms.md §1.2): a VLM turns (source image, instruction) into
~10 evaluation points `{question, category}` - 3-4 "follow" (instruction following), 3-4 "keep" (what must
not change), 2-3 "quality" - with a few-shot prompt. Here: the prompt and the answer parser/validator (the
sandbox's oracle generator is `edit_rlhf.sandbox.oracle.oracle_principles`). The Ray stage that runs them is
pipelines/principles.py.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edit_rlhf.rrm.format import PRINCIPLE_CATEGORIES, normalize_category
from edit_rlhf.rrm.parse import find_object_list

# A small pool of decompositions written for this project (the paper samples 4 of 60 expert-written ones
# per query). A JSON file of the same shape replaces it (`prompt.examples_path`).
EXAMPLES: List[Dict[str, Any]] = [
    {"instruction": "Turn the photo into an anime-style illustration", "principles": [
        ("Is the whole image rendered in an anime style (flat colours, clean line art)?", "follow"),
        ("Are faces drawn with typical anime features?", "follow"),
        ("Is the style applied consistently to the background as well as the people?", "follow"),
        ("Are the number and placement of people the same as in the source?", "keep"),
        ("Are the poses and expressions preserved?", "keep"),
        ("Is the composition (framing, viewpoint) unchanged?", "keep"),
        ("Are key objects of the scene still present and recognisable?", "keep"),
        ("Is the result free of artefacts such as broken lines or smeared areas?", "quality"),
        ("Are the colours clean and free of unwanted casts or oversaturation?", "quality"),
        ("Is the image sharp, without blur or noise?", "quality")]},
    {"instruction": "Remove the red car parked on the left", "principles": [
        ("Is the red car on the left gone?", "follow"),
        ("Is the car removed completely, with no remnants or shadow left?", "follow"),
        ("Is the area where the car stood filled with plausible street and background?", "follow"),
        ("Are the other vehicles unchanged?", "keep"),
        ("Are the buildings and the street layout unchanged?", "keep"),
        ("Are the people in the scene unchanged?", "keep"),
        ("Is the lighting of the scene unchanged?", "keep"),
        ("Is the filled region free of blur, smears or repeated patterns?", "quality"),
        ("Is the overall image free of noise and compression artefacts?", "quality")]},
    {"instruction": "Make the woman's dress blue", "principles": [
        ("Is the woman's dress blue?", "follow"),
        ("Is the whole dress blue, not only part of it?", "follow"),
        ("Does the blue dress keep its fabric texture and folds?", "follow"),
        ("Are the woman's face, hair and skin unchanged?", "keep"),
        ("Are the shape and length of the dress unchanged?", "keep"),
        ("Is the background unchanged?", "keep"),
        ("Are other people or objects unchanged in colour?", "keep"),
        ("Are the edges between the dress and the body clean, without colour bleeding?", "quality"),
        ("Is the image sharp and free of artefacts?", "quality"),
        ("Do the colours look natural, without a cast over the whole image?", "quality")]},
    {"instruction": "Add a small dog sitting next to the bench", "principles": [
        ("Is there a dog in the image?", "follow"),
        ("Is the dog small relative to the bench?", "follow"),
        ("Is the dog sitting?", "follow"),
        ("Is the dog placed next to the bench?", "follow"),
        ("Is the bench unchanged?", "keep"),
        ("Are the other objects and people unchanged?", "keep"),
        ("Is the background unchanged?", "keep"),
        ("Does the dog match the scene's lighting and perspective, with a plausible shadow?", "quality"),
        ("Is the dog free of anatomical errors (extra legs, merged body parts)?", "quality"),
        ("Is the image sharp and free of artefacts?", "quality")]},
    {"instruction": "Replace the sky with a sunset", "principles": [
        ("Is the sky replaced by a sunset?", "follow"),
        ("Does the sunset cover the whole sky region?", "follow"),
        ("Is the foreground lit consistently with a sunset?", "follow"),
        ("Are the buildings and their outlines unchanged?", "keep"),
        ("Are the trees and the ground unchanged in shape?", "keep"),
        ("Is the composition unchanged?", "keep"),
        ("Is the skyline boundary clean, without halos?", "quality"),
        ("Is the image free of banding, noise or blur?", "quality")]},
    {"instruction": "Change the text on the sign to 'OPEN'", "principles": [
        ("Does the sign read 'OPEN'?", "follow"),
        ("Is the old text fully gone?", "follow"),
        ("Is the new text spelled correctly, with no extra characters?", "follow"),
        ("Are the font style and colour similar to the original sign?", "keep"),
        ("Is the sign's shape and position unchanged?", "keep"),
        ("Is the rest of the storefront unchanged?", "keep"),
        ("Are the letters crisp and legible?", "quality"),
        ("Is the image free of artefacts around the sign?", "quality")]},
]


@dataclass
class PrincipleRules:
    """How many points an answer must have, in all and per category (inclusive ranges)."""

    min_count: int = 8
    max_count: int = 11
    follow: Tuple[int, int] = (3, 4)
    keep: Tuple[int, int] = (3, 4)
    quality: Tuple[int, int] = (2, 3)

    @classmethod
    def from_config(cls, cfg) -> "PrincipleRules":
        return cls(cfg.min_count, cfg.max_count, tuple(cfg.follow), tuple(cfg.keep), tuple(cfg.quality))

    def describe(self) -> str:
        def rng(r):
            return f"{r[0]}" if r[0] == r[1] else f"{r[0]}-{r[1]}"

        total = rng((self.min_count, self.max_count))
        return (f"{total} points: {rng(self.follow)} about following the instruction (category \"follow\"), "
                f"{rng(self.keep)} about what must stay unchanged (\"keep\"), and {rng(self.quality)} about image "
                f"quality (\"quality\")")


def load_examples(path: Optional[str] = None) -> List[Dict[str, Any]]:
    """The example pool: built-in, or a JSON list of {instruction, principles: [{question, category}]}."""
    if not path:
        return [{"instruction": e["instruction"],
                 "principles": [{"question": q, "category": c} for q, c in e["principles"]]} for e in EXAMPLES]
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: must hold a non-empty JSON list of examples")
    for i, e in enumerate(data):
        if not isinstance(e, dict) or not isinstance(e.get("instruction"), str) or not e.get("principles"):
            raise ValueError(f"{path}: example {i} needs 'instruction' (str) and 'principles' (list)")
        for j, p in enumerate(e["principles"]):
            if not isinstance(p, dict) or not isinstance(p.get("question"), str):
                raise ValueError(f"{path}: example {i} principles[{j}] needs a 'question' string")
            try:
                normalize_category(p.get("category"))
            except ValueError as err:
                raise ValueError(f"{path}: example {i} principles[{j}].category: {err}") from None
    return data


def pick_examples(pool: Sequence[Dict[str, Any]], k: int, seed: int) -> List[Dict[str, Any]]:
    """k examples drawn without replacement, deterministic in `seed` (per row)."""
    k = min(k, len(pool))
    idx = np.random.default_rng(seed).permutation(len(pool))[:k]
    return [pool[int(i)] for i in idx]


def system_text(rules: PrincipleRules, examples: Sequence[Dict[str, Any]]) -> str:
    parts = [
        "You are an expert evaluator of instruction-based image edits. Given a source image and an edit "
        "instruction, write the evaluation points a judge should check on the edited result.",
        f"Write {rules.describe()}. Each point is a short yes/no question that can be answered by comparing the "
        "source image with an edited image. Follow points check that every part of the instruction was carried "
        "out; keep points check that what the instruction does not mention stays as it was; quality points "
        "check for artefacts, blur, noise and unnatural colours.",
        'Answer with a JSON list only: [{"question": "...", "category": "follow"}, ...].',
    ]
    for e in examples:
        parts.append(f"Example instruction: {e['instruction']}\nExample answer:\n"
                     + json.dumps([{"question": p["question"], "category": normalize_category(p["category"])}
                                   for p in e["principles"]], ensure_ascii=False))
    return "\n\n".join(parts)


def build_messages(instruction: str, rules: PrincipleRules, examples: Sequence[Dict[str, Any]]) -> List[dict]:
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(f"instruction must be a non-empty string, got {instruction!r}")
    return [{"role": "system", "content": system_text(rules, examples)},
            {"role": "user", "content": [{"type": "text", "text": "Source image: "}, {"type": "image"},
                                         {"type": "text", "text": f"\nInstruction: {instruction.strip()}\nAnswer:"}]}]


def parse_principles(text: Any, rules: PrincipleRules) -> Tuple[Optional[List[Dict[str, str]]], str]:
    """(principles, "") for a valid answer, else (None, reason). Never raises on model output."""
    try:
        return _parse_principles(text, rules)
    except Exception as e:  # the contract: model output never raises
        return None, f"parser error: {type(e).__name__}: {e}"


def _parse_principles(text: Any, rules: PrincipleRules) -> Tuple[Optional[List[Dict[str, str]]], str]:
    if not isinstance(text, str) or not text.strip():
        return None, "empty answer"
    items, _, err = find_object_list(text, what="principles")
    if items is None:
        return None, err
    return validate_principles(items, rules)


def validate_principles(items: Any, rules: PrincipleRules) -> Tuple[Optional[List[Dict[str, str]]], str]:
    """Normalised [{question, category}] if `items` meets the rules, else (None, reason)."""
    if not isinstance(items, list) or not items:
        return None, "no principles (empty list)"
    out: List[Dict[str, str]] = []
    seen = set()
    for i, p in enumerate(items):
        if not isinstance(p, dict):
            return None, f"item {i} is not an object"
        q = p.get("question")
        if not isinstance(q, str) or not q.strip():
            return None, f"item {i} has no question"
        try:
            cat = normalize_category(p.get("category"))
        except ValueError as e:
            return None, f"item {i}: {e}"
        key = " ".join(q.lower().split())
        if key in seen:
            return None, f"item {i} repeats the question {q.strip()!r}"
        seen.add(key)
        out.append({"question": q.strip(), "category": cat})
    if not rules.min_count <= len(out) <= rules.max_count:
        return None, f"{len(out)} principles, expected {rules.min_count}-{rules.max_count}"
    for cat in PRINCIPLE_CATEGORIES:
        lo, hi = getattr(rules, cat)
        n = sum(p["category"] == cat for p in out)
        if not lo <= n <= hi:
            return None, f"{n} '{cat}' principles, expected {lo}-{hi}"
    return out, ""
