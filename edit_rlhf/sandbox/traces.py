"""Oracle-written reasoning traces in the RRM output format (the sandbox's SFT targets).

A trace is a short templated "think" part - what the source shows and what the oracle sees in the
edited image - followed by the verdict (per-principle 0/1 checks, average, ``<score>``) written by
``edit_rlhf.rrm.format.format_verdict``. Example::

    source: white background; red circle, blue square. edited: white background; green circle, blue square.
    [{"question": "Is the circle green?", "score": 1}, ...]
    {"average_score": 1.00}
    <score>10</score>

With ``compare=True`` a second think line sets the two descriptions side by side, one item per
background and shape kind, each ending in the comparison a check needs ("same" / "not same"); a
check then reads one item instead of matching two descriptions written far apart::

    source to edited: background white to white, same; circle red to green, not same; square blue to blue, same.

An absent shape reads "empty" (added: "circle empty to orange"; removed: "circle red to empty").
"""
from __future__ import annotations

from ..rrm.format import format_verdict
from .oracle import OracleResult
from .scene import LOCATION_PHRASES, SHAPE_KINDS, Scene, describe_scene, location_word, size_word

# check ops that are about where/how big a shape is: their traces describe positions and sizes
POSITIONAL_OPS = frozenset({"moved", "vacated", "appearance", "area_change", "color_place", "added", "added_color"})


def _item_phrase(color: str | None, color2: str | None, size: float | None, cx: float | None,
                 cy: float | None, side: int, positions: bool, kind: str | None = None) -> str:
    """One shape as the traces name it: "red", "red and green" (a two-coloured shape), with ``kind``
    "red circle", with ``positions`` "medium red circle at the top left"; an absent shape is "empty"."""
    if color is None:
        return "empty"
    words = color if color2 is None else f"{color} and {color2}"
    if kind:
        words = f"{words} {kind}"
    if positions and cx is not None:
        words = f"{size_word(size, side)} {words} {LOCATION_PHRASES[location_word(cx, cy, side)]}"
    return words


def describe_seen(seen: dict, positions: bool = False) -> str:
    """Description of what the oracle saw (``OracleResult.detail["seen"]``), in the grammar of
    ``describe_scene``: absent shapes are left out, a two-coloured shape reads "red and green
    circle", and image defects are appended ("...; noisy")."""
    n = seen["size"]
    parts = [_item_phrase(s["color"], s.get("color2"), s.get("size"), s.get("cx"), s.get("cy"), n, positions, s["kind"])
             for s in seen["shapes"] if s["color"] is not None]
    text = f"{seen['background']} background; " + (", ".join(parts) if parts else "empty")
    if seen.get("defects"):
        text += "; " + ", ".join(seen["defects"])
    return text


def _scene_seen(scene: Scene) -> dict:
    """A known scene in the shape of the oracle's ``seen`` observation."""
    return {"background": scene.background, "size": scene.size, "defects": [],
            "shapes": [{"kind": s.kind, "color": s.color, "color2": None, "cx": s.cx, "cy": s.cy, "size": s.size}
                       for s in scene.shapes]}


def compare_line(source_scene: Scene, seen: dict, positions: bool = False) -> str:
    """The "source to edited: ..." think line: background, then every shape kind of the source or of the edited
    observation (``OracleResult.detail["seen"]`` or ``_scene_seen``) in SHAPE_KINDS order, as
    "<kind> <source> to <edited>, same|not same"."""
    n = source_scene.size
    items = [f"background {source_scene.background} to {seen['background']}, "
             f"{'same' if source_scene.background == seen['background'] else 'not same'}"]
    edited = {}
    for s in seen["shapes"]:
        if s.get("color") is not None and s["kind"] not in edited:
            edited[s["kind"]] = _item_phrase(s["color"], s.get("color2"), s.get("size"), s.get("cx"), s.get("cy"), n, positions)
    for kind in SHAPE_KINDS:
        src = source_scene.shape(kind)
        if src is None and kind not in edited:
            continue
        a = _item_phrase(src.color, None, src.size, src.cx, src.cy, n, positions) if src is not None else "empty"
        b = edited.get(kind, "empty")
        items.append(f"{kind} {a} to {b}, {'same' if a == b else 'not same'}")
    return "source to edited: " + "; ".join(items) + "."


def needs_positions(principles: list[dict]) -> bool:
    return any(p.get("check", {}).get("op") in POSITIONAL_OPS for p in principles)


def oracle_trace(source_scene: Scene, edited: Scene | str | None, principles: list[dict],
                 result: OracleResult, compare: bool = False) -> str:
    """Trace text for one edited image. ``edited`` is the edited image's known scene, a ready
    description, or None to describe what the oracle saw in its pixels (``result.detail["seen"]``,
    plus a "change: square moved left" sentence for move/resize).
    Positions and sizes are described when a principle is about them (move/resize/add).
    ``compare=True`` adds the ``compare_line`` (not possible for a ready-made description)."""
    if len(principles) != len(result.checks):
        raise ValueError(f"principles ({len(principles)}) and result.checks ({len(result.checks)}) differ in length")
    pos = needs_positions(principles)
    if compare and isinstance(edited, str):
        raise ValueError("oracle_trace: compare=True needs the edited Scene or the oracle's observation, not a ready description")
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
    if compare:
        observed = _scene_seen(edited) if isinstance(edited, Scene) else result.detail["seen"]
        think += "\n" + compare_line(source_scene, observed, positions=pos)
    checks = [(p["question"], int(c)) for p, c in zip(principles, result.checks)]
    return format_verdict(checks, result.score, think)
