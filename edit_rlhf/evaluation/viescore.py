"""The VIEScore-style judge of the GEdit-Bench protocol: prompts (written in our own words) and a tolerant
parser of its replies (algorithms.md §3.1).

Two judgements per edit, each answered with JSON `{"reasoning": "...", "score": [s1, s2]}` on a 0..score_max
scale (10 by default; EditScore-style judges use 25 and are rescaled to 0-10 here):
- SC (semantic consistency), two images (original, edited) + the instruction:
  s1 = instruction success, s2 = over-editing (high = only the requested change was made).
- PQ (perceptual quality), the edited image only: s1 = naturalness, s2 = artifacts (high = none).

`parse_judgement` never raises on model output: anything unusable gives `Judgement(ok=False, reason=...)`.
Tolerated: text or code fences around the JSON, single quotes / Python literals, trailing commas, numbers
written as strings, extra keys, a `score` list outside any object; the *last* object carrying a score wins.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from edit_rlhf.rrm.parse import _load, _matching_close  # the RRM parser's bracket matcher and lenient loader

KINDS = ("sc", "pq")
STYLES = ("full", "compact")

CONTEXT = ("You are an experienced digital artist who rates AI-generated images. Every image you are shown was "
           "produced by an AI model. Follow the rating rules exactly and reply with the requested JSON only.")

_REPLY = 'Reply with one JSON object and nothing else: {{"reasoning": "<one or two sentences>", "score": [{a}, {b}]}}'

TASKS: Dict[str, Dict[str, str]] = {
    "full": {
        "sc": ("Two images are shown: the original, and the result of editing it with the instruction below. "
               "Rate the edit with two scores from 0 to {max}.\n"
               "Score 1, instruction success: how completely and accurately the edit carries out the instruction. "
               "0 = the instruction was not followed at all; {max} = it was carried out perfectly. An unchanged "
               "image does not succeed.\n"
               "Score 2, over-editing: how well the result keeps everything the instruction does not ask to change. "
               "0 = the edited image has nothing left in common with the original; {max} = only the requested "
               "change was made.\nRate each score on its own.\n" + _REPLY.format(a="score 1", b="score 2")),
        "pq": ("One AI-generated image is shown. Rate its visual quality with two scores from 0 to {max}.\n"
               "Score 1, naturalness: does the scene look plausible and natural (lighting, shadows, perspective, "
               "proportions, physical sense)? 0 = completely unnatural; {max} = entirely natural.\n"
               "Score 2, artifacts: how free the image is of defects such as distortion, blur, noise, broken "
               "shapes, malformed body parts, garbled text or watermarks. 0 = severe artifacts everywhere; "
               "{max} = no visible artifact.\n" + _REPLY.format(a="score 1", b="score 2")),
    },
    "compact": {
        "sc": ("Rate the edit from 0 to {max}: score 1 = instruction done, score 2 = nothing else changed.\n"
               + _REPLY.format(a="s1", b="s2")),
        "pq": ("Rate the image from 0 to {max}: score 1 = natural look, score 2 = free of artifacts.\n"
               + _REPLY.format(a="s1", b="s2")),
    },
}

SCORE_LIST_RE = re.compile(r"""["']?score["']?\s*:\s*\[([^\[\]]*)\]""", re.I)
NUMBER_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")


def task_text(kind: str, style: str = "full", score_max: int = 10) -> str:
    if kind not in KINDS:
        raise ValueError(f"judgement kind must be one of {KINDS}, got {kind!r}")
    if style not in STYLES:
        raise ValueError(f"judge prompt style must be one of {STYLES}, got {style!r}")
    return TASKS[style][kind].replace("{max}", f"{score_max:g}")


def build_messages(kind: str, instruction: Optional[str], style: str = "full", score_max: int = 10,
                   system: Optional[str] = None) -> List[Dict[str, Any]]:
    """Chat messages of one judgement. SC: two image placeholders (original, edited) and the instruction;
    PQ: one image placeholder (edited). Images are passed to the engine in the same order."""
    if kind == "sc":
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError(f"instruction must be a non-empty string, got {instruction!r}")
        content = [{"type": "text", "text": "Original image: "}, {"type": "image"},
                   {"type": "text", "text": "\nEdited image: "}, {"type": "image"},
                   {"type": "text",
                    "text": f"\nInstruction: {instruction.strip()}\n{task_text('sc', style, score_max)}"}]
    else:
        content = [{"type": "text", "text": "Image: "}, {"type": "image"},
                   {"type": "text", "text": "\n" + task_text(kind, style, score_max)}]
    return [{"role": "system", "content": system or CONTEXT}, {"role": "user", "content": content}]


@dataclass
class Judgement:
    """One parsed judge reply. `scores` are rescaled to 0-10; `raw` as written; `reason` says why not ok."""

    ok: bool
    reason: str = ""
    scores: List[float] = field(default_factory=list)
    raw: List[float] = field(default_factory=list)
    reasoning: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _num(v: Any) -> Optional[float]:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        f = float(v)
    elif isinstance(v, str) and NUMBER_RE.fullmatch(v.strip()):
        f = float(v.strip())
    else:
        return None
    return f if math.isfinite(f) else None


def _score_objects(text: str) -> List[dict]:
    """Every top-level {...} in `text` that loads (JSON or Python literal) into a dict with a `score` key."""
    out, i = [], 0
    while True:
        i = text.find("{", i)
        if i < 0:
            return out
        end = _matching_close(text, i)
        if end < 0:
            i += 1
            continue
        try:
            obj = _load(text[i:end + 1])
        except ValueError:
            i += 1
            continue
        if isinstance(obj, dict) and any(str(k).strip().lower() == "score" for k in obj):
            out.append(obj)
            i = end + 1
        else:
            i += 1


def parse_judgement(text: Any, n_expected: int = 2, score_max: float = 10.0) -> Judgement:
    """Parse one judge reply into `n_expected` scores in [0, score_max] (returned rescaled to 0-10)."""
    try:
        return _parse(text, n_expected, score_max)
    except Exception as e:  # the contract: model output never raises
        return Judgement(ok=False, reason=f"parser error: {type(e).__name__}: {e}")


def _parse(text: Any, n_expected: int, score_max: float) -> Judgement:
    if not isinstance(text, str):
        return Judgement(ok=False, reason=f"output is not text ({type(text).__name__})")
    if not text.strip():
        return Judgement(ok=False, reason="empty output")
    objs = _score_objects(text)
    reasoning = ""
    if objs:
        obj = objs[-1]
        value = next(v for k, v in obj.items() if str(k).strip().lower() == "score")
        r = next((v for k, v in obj.items() if str(k).strip().lower() == "reasoning"), "")
        reasoning = r if isinstance(r, str) else str(r)
    else:
        m = list(SCORE_LIST_RE.finditer(text))
        if not m:
            return Judgement(ok=False, reason='no "score" list in the reply')
        value = [s.strip().strip("\"'") for s in m[-1].group(1).split(",") if s.strip()]
    if not isinstance(value, (list, tuple)):
        value = [value]
    raw = [_num(v) for v in value]
    if any(v is None for v in raw):
        return Judgement(ok=False, reason=f"score entries must be numbers, got {list(value)[:4]!r}",
                         reasoning=reasoning)
    if len(raw) != n_expected:
        return Judgement(ok=False, reason=f"expected {n_expected} scores, got {len(raw)}", raw=raw, reasoning=reasoning)
    bad = [v for v in raw if not 0.0 <= v <= score_max]
    if bad:
        return Judgement(ok=False, reason=f"score {bad[0]:g} is outside [0, {score_max:g}]", raw=raw,
                         reasoning=reasoning)
    return Judgement(ok=True, scores=[v * 10.0 / score_max for v in raw], raw=raw, reasoning=reasoning)
