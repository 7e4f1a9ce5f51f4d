"""The RRM output format (Edit-R1, algorithms.md §1.3): writer and category names.

A verdict is, one part per line:

    <think text>                                   (optional)
    [{"question": "Is the square red?", "score": 1}, ...]
    {"average_score": 0.67}
    <score>7.5</score>

``score`` per principle is 0 or 1; ``average_score`` is the mean of those, with 2 decimals; the final
holistic score is 0-10 with at most one decimal (integers without ".0"). The tolerant parser lives
next to this writer; the writer stays canonical.
"""
from __future__ import annotations

import json

PRINCIPLE_CATEGORIES: tuple[str, ...] = ("follow", "keep", "quality")
# The paper's long names (and our short ones), lower-cased, spaces for _ and -.
CATEGORY_ALIASES: dict[str, str] = {
    "follow": "follow", "instruction following": "follow",
    "keep": "keep", "feature preservation": "keep",
    "quality": "quality", "image quality": "quality",
}


def normalize_category(name: str) -> str:
    """"Instruction Following" / "feature_preservation" / "Quality" ... -> "follow" / "keep" / "quality"."""
    if not isinstance(name, str):
        raise ValueError(f"principle category must be a string, got {name!r}")
    key = " ".join(name.strip().lower().replace("_", " ").replace("-", " ").split())
    if key not in CATEGORY_ALIASES:
        raise ValueError(f"unknown principle category {name!r}; expected one of "
                         f"{sorted(set(CATEGORY_ALIASES))} (case-insensitive)")
    return CATEGORY_ALIASES[key]


def format_score(score: float) -> str:
    """0-10 with at most one decimal: 7 -> "7", 7.25 -> "7.2" (round half even), 10.0 -> "10"."""
    s = round(float(score), 1)
    return str(int(s)) if s == int(s) else f"{s:.1f}"


def format_verdict(checks: list[tuple[str, int]], score: float, think: str = "") -> str:
    """The verdict text for per-principle ``checks`` [(question, 0|1), ...] and a holistic ``score``
    in [0, 10], preceded by ``think`` (stripped; omitted when empty)."""
    if not checks:
        raise ValueError("checks must be a non-empty list of (question, 0|1)")
    items = []
    for i, item in enumerate(checks):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise ValueError(f"checks[{i}] must be a (question, score) pair, got {item!r}")
        q, v = item
        if not isinstance(q, str) or not q:
            raise ValueError(f"checks[{i}] question must be a non-empty string, got {q!r}")
        if isinstance(v, str) or v not in (0, 1):
            raise ValueError(f"checks[{i}] score must be 0 or 1, got {v!r}")
        items.append({"question": q, "score": int(v)})
    score = float(score)
    if not 0.0 <= score <= 10.0:
        raise ValueError(f"score must be in [0, 10], got {score!r}")
    avg = sum(it["score"] for it in items) / len(items)
    lines = [think.strip()] if think and think.strip() else []
    lines += [json.dumps(items, ensure_ascii=False), '{"average_score": %.2f}' % avg,
              f"<score>{format_score(score)}</score>"]
    return "\n".join(lines)
