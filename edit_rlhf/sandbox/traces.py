"""Oracle-written reasoning traces in the RRM output format (the sandbox's SFT targets).

A trace is a short templated "think" part - what the source shows and what the oracle sees in the
edited image - followed by the verdict (per-principle 0/1 checks, average, ``<score>``) written by
``edit_rlhf.rrm.format.format_verdict``. Example::

    source: white background; red circle, blue square. edited: white background; green circle, blue square.
    [{"question": "Is the circle green?", "score": 1}, ...]
    {"average_score": 1.00}
    <score>10</score>
"""
from __future__ import annotations

from ..rrm.format import format_verdict
from .oracle import OracleResult
from .scene import LOCATION_PHRASES, Scene, describe_scene, location_word, size_word

# check ops that are about where/how big a shape is: their traces describe positions and sizes
POSITIONAL_OPS = frozenset({"moved", "vacated", "appearance", "area_change", "color_place", "added", "added_color"})


def describe_seen(seen: dict, positions: bool = False) -> str:
    """Description of what the oracle saw (``OracleResult.detail["seen"]``), in the grammar of
    ``describe_scene``: absent shapes are left out, a two-coloured shape reads "red and green
    circle", and image defects are appended ("...; noisy")."""
    n = seen["size"]
    parts = []
    for s in seen["shapes"]:
        if s["color"] is None:
            continue
        words = s["color"] if s.get("color2") is None else f"{s['color']} and {s['color2']}"
        words = f"{words} {s['kind']}"
        if positions and s.get("cx") is not None:
            words = f"{size_word(s['size'], n)} {words} {LOCATION_PHRASES[location_word(s['cx'], s['cy'], n)]}"
        parts.append(words)
    text = f"{seen['background']} background; " + (", ".join(parts) if parts else "empty")
    if seen.get("defects"):
        text += "; " + ", ".join(seen["defects"])
    return text


def needs_positions(principles: list[dict]) -> bool:
    return any(p.get("check", {}).get("op") in POSITIONAL_OPS for p in principles)


def oracle_trace(source_scene: Scene, edited: Scene | str | None, principles: list[dict],
                 result: OracleResult) -> str:
    """Trace text for one edited image. ``edited`` is the edited image's known scene, a ready
    description, or None to describe what the oracle saw in its pixels (``result.detail["seen"]``,
    plus a "change: square moved left" sentence for move/resize).
    Positions and sizes are described when a principle is about them (move/resize/add)."""
    if len(principles) != len(result.checks):
        raise ValueError(f"principles ({len(principles)}) and result.checks ({len(result.checks)}) differ in length")
    pos = needs_positions(principles)
    if isinstance(edited, Scene):
        seen = describe_scene(edited, positions=pos)
    elif isinstance(edited, str):
        seen = edited
    elif edited is None:
        if "seen" not in result.detail:
            raise ValueError("edited is None but result.detail has no 'seen' observation")
        seen = describe_seen(result.detail["seen"], positions=pos)
        if result.detail["seen"].get("change"):
            seen += f". change: {result.detail['seen']['change']}"
    else:
        raise ValueError(f"edited must be a Scene, a str or None, got {type(edited).__name__}")
    think = f"source: {describe_scene(source_scene, positions=pos)}. edited: {seen}."
    checks = [(p["question"], int(c)) for p, c in zip(principles, result.checks)]
    return format_verdict(checks, result.score, think)
