"""Edits of sandbox scenes: specs, sampling, application, instruction text and principles.

Five edit types: ``recolour`` (a shape gets another colour), ``remove``, ``move`` (left/right/up/down
by a clear distance), ``resize`` (bigger x1.4-1.6 or smaller x0.55-0.65, same centre) and ``add`` (a
shape of a missing kind, a named colour, at a named free location). Samplers only return edits whose
target scene is valid (inside the image, non-overlapping), so every instruction can be carried out.

Principles are the Edit-R1 "evaluation points" (``{question, category}``) plus a sandbox-only
``check`` dict that tells the oracle (oracle.py) what to measure and the pass threshold ``min``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from .scene import (
    BACKGROUNDS, BORDER, LOCATION_PHRASES, LOCATIONS, SHAPE_COLORS, SHAPE_GAP, SHAPE_KINDS, SIZE_RANGE,
    SIZE_WORDS, ZONE_EDGES, Scene, Shape, is_valid, location_word,
)

EDIT_TYPES: tuple[str, ...] = ("recolour", "remove", "move", "resize", "add")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
DIRECTION_PHRASES: dict[str, str] = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}
MOVE_MIN, MOVE_MAX = 0.22, 0.4          # move distance range, fraction of the side
MOVE_MIN_REL = 1.3                      # ... and at least 1.3 shape sizes, so the old place clearly empties
BIGGER, SMALLER = (1.4, 1.6), (0.55, 0.65)
ADD_ZONE_CLEARANCE = 0.04               # an added shape's centre stays this far (fraction) from zone edges

INSTRUCTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "recolour": ("make the {kind} {color}", "change the colour of the {kind} to {color}", "paint the {kind} {color}"),
    "remove": ("remove the {kind}", "delete the {kind}", "take the {kind} out of the image"),
    "move": ("move the {kind} {direction}", "shift the {kind} {direction}", "slide the {kind} {direction}"),
    "resize_bigger": ("make the {kind} bigger", "enlarge the {kind}", "increase the size of the {kind}"),
    "resize_smaller": ("make the {kind} smaller", "shrink the {kind}", "reduce the size of the {kind}"),
    "add": ("add a {color} {kind} {location}", "put a {color} {kind} {location}", "draw a {color} {kind} {location}"),
}

Q_CLEAN = "Is the image sharp and free of noise?"
Q_CAST = "Are the colours clean, without a colour cast?"
Q_BACKGROUND = "Is the background unchanged?"
Q_OTHERS = "Are the other shapes unchanged?"
Q_EXISTING = "Are the existing shapes unchanged?"
PRINCIPLE_TEMPLATES: tuple[str, ...] = (
    "Is the {kind} {color}?", "Is the whole {kind} {color}?", "Are the position and size of the {kind} unchanged?",
    "Is the {kind} removed?", "Is the {kind} completely gone, with no trace left?",
    "Has the {kind} moved {direction}?", "Is the old place of the {kind} now empty?",
    "Are the colour and size of the {kind} unchanged?",
    "Is the {kind} bigger than before?", "Is the {kind} smaller than before?",
    "Is the {kind} still {color} and in the same place?",
    "Is there a {kind} {location}?", "Is the new {kind} {color}?",
    Q_OTHERS, Q_EXISTING, Q_BACKGROUND, Q_CLEAN, Q_CAST,
)


@dataclass
class EditSpec:
    """One edit. ``target`` indexes ``scene.shapes`` (None for ``add``). ``params`` by type:
    recolour ``{color}``; remove ``{}``; move ``{direction, distance}`` (pixels); resize ``{factor}``;
    add ``{shape: Shape.to_dict(), location}`` (location in scene.LOCATIONS)."""

    type: str
    target: int | None
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.type not in EDIT_TYPES:
            raise ValueError(f"EditSpec.type must be one of {EDIT_TYPES}, got {self.type!r}")
        if (self.target is None) != (self.type == "add"):
            raise ValueError(f"EditSpec.target must be None exactly for 'add', got {self.target!r} for {self.type!r}")

    def to_dict(self) -> dict:
        return {"type": self.type, "target": self.target, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, d: dict) -> "EditSpec":
        return cls(type=d["type"], target=d["target"], params=dict(d.get("params", {})))


def target_shape(scene: Scene, edit: EditSpec) -> Shape:
    """The source shape an edit acts on, or the new shape for ``add``."""
    if edit.type == "add":
        return Shape.from_dict(edit.params["shape"])
    if not 0 <= edit.target < len(scene.shapes):
        raise ValueError(f"edit.target {edit.target} out of range for a scene with {len(scene.shapes)} shapes")
    return scene.shapes[edit.target]


def move_offset(edit: EditSpec) -> tuple[float, float]:
    dx, dy = DIRECTIONS[edit.params["direction"]]
    d = float(edit.params["distance"])
    return dx * d, dy * d


def apply_edit(scene: Scene, edit: EditSpec, check: bool = True) -> Scene:
    """The target scene. With ``check`` a result that is not ``is_valid`` raises ValueError."""
    shapes = list(scene.shapes)
    t = target_shape(scene, edit)
    if edit.type == "recolour":
        if edit.params["color"] == t.color:
            raise ValueError(f"recolour to the shape's own colour {t.color!r} is not an edit")
        shapes[edit.target] = t.replace(color=edit.params["color"])
    elif edit.type == "remove":
        shapes.pop(edit.target)
    elif edit.type == "move":
        dx, dy = move_offset(edit)
        shapes[edit.target] = t.replace(cx=t.cx + dx, cy=t.cy + dy)
    elif edit.type == "resize":
        shapes[edit.target] = t.replace(size=t.size * float(edit.params["factor"]))
    else:  # add
        if scene.shape(t.kind) is not None:
            raise ValueError(f"cannot add a {t.kind}: the scene already has one")
        shapes.append(t)
    out = scene.replace_shapes(shapes)
    if check and not is_valid(out):
        raise ValueError(f"edit {edit.to_dict()} gives an invalid scene (outside the image or overlapping)")
    return out


# ----------------------------------------------------------------------------------------------
# Sampling (vectorised feasibility so that every sampled edit is valid)


def _free_centres(scene: Scene, radius: float, xs: np.ndarray, ys: np.ndarray, skip: int | None = None) -> np.ndarray:
    """Bool mask over candidate centres (xs, ys arrays) where a shape of this radius fits."""
    n = scene.size
    ok = (xs >= radius + BORDER) & (xs <= n - radius - BORDER) & (ys >= radius + BORDER) & (ys <= n - radius - BORDER)
    for j, s in enumerate(scene.shapes):
        if j != skip:
            ok &= np.hypot(xs - s.cx, ys - s.cy) >= radius + s.size + SHAPE_GAP * n
    return ok


def move_options(scene: Scene, target: int) -> list[tuple[str, float]]:
    """All valid (direction, distance) moves of a shape, distances on a 1 px grid."""
    s = scene.shapes[target]
    n = scene.size
    lo = max(MOVE_MIN * n, MOVE_MIN_REL * s.size)
    dists = np.arange(np.ceil(lo), MOVE_MAX * n + 1e-6, 1.0)
    out = []
    for name, (ux, uy) in DIRECTIONS.items():
        ok = _free_centres(scene, s.size, s.cx + ux * dists, s.cy + uy * dists, skip=target)
        out += [(name, float(d)) for d in dists[ok]]
    return out


def _sample_recolour(rng, scene):
    t = int(rng.integers(len(scene.shapes)))
    colors = [c for c in SHAPE_COLORS if c != scene.shapes[t].color]
    return EditSpec("recolour", t, {"color": colors[int(rng.integers(len(colors)))]})


def _sample_remove(rng, scene):
    return EditSpec("remove", int(rng.integers(len(scene.shapes))), {})


def _sample_move(rng, scene):
    for t in rng.permutation(len(scene.shapes)):
        opts = move_options(scene, int(t))
        if opts:
            d, dist = opts[int(rng.integers(len(opts)))]
            return EditSpec("move", int(t), {"direction": d, "distance": dist})
    return None


def _sample_resize(rng, scene):
    """Bigger or smaller with equal odds when both are possible for some shape (smaller always is)."""
    options: dict[str, list[EditSpec]] = {"bigger": [], "smaller": []}
    for t in range(len(scene.shapes)):
        for word, rng_range in (("bigger", BIGGER), ("smaller", SMALLER)):
            f = round(float(rng.uniform(*rng_range)), 3)
            e = EditSpec("resize", t, {"factor": f})
            if is_valid(apply_edit(scene, e, check=False)):
                options[word].append(e)
    words = [w for w in ("bigger", "smaller") if options[w]]
    if not words:
        return None
    opts = options[words[int(rng.integers(len(words)))]]
    return opts[int(rng.integers(len(opts)))]


def _zone_clear(v: np.ndarray, n: int) -> np.ndarray:
    f = v / n
    return (np.abs(f - ZONE_EDGES[0]) >= ADD_ZONE_CLEARANCE) & (np.abs(f - ZONE_EDGES[1]) >= ADD_ZONE_CLEARANCE)


def _sample_add(rng, scene):
    missing = [k for k in SHAPE_KINDS if scene.shape(k) is None]
    if not missing:
        return None
    n = scene.size
    c = np.arange(n, dtype=np.float64) + 0.5
    xs, ys = np.meshgrid(c, c)
    for _ in range(4):
        r = float(rng.uniform(*SIZE_RANGE) * n)
        ok = _free_centres(scene, r, xs, ys) & _zone_clear(xs, n) & _zone_clear(ys, n)
        idx = np.flatnonzero(ok)
        if idx.size:
            i = int(idx[int(rng.integers(idx.size))])
            cx, cy = float(xs.flat[i]), float(ys.flat[i])
            kind = missing[int(rng.integers(len(missing)))]
            color = list(SHAPE_COLORS)[int(rng.integers(len(SHAPE_COLORS)))]
            shape = Shape(kind, color, cx, cy, r)
            return EditSpec("add", None, {"shape": shape.to_dict(), "location": location_word(cx, cy, n)})
    return None


_SAMPLERS = {"recolour": _sample_recolour, "remove": _sample_remove, "move": _sample_move,
             "resize": _sample_resize, "add": _sample_add}


def _check_types(types) -> tuple[str, ...]:
    types = tuple(EDIT_TYPES if types is None else types)
    bad = [t for t in types if t not in EDIT_TYPES]
    if bad or not types:
        raise ValueError(f"types must be a non-empty subset of {EDIT_TYPES}, got {types!r}")
    return types


def sample_edit(rng: np.random.Generator, scene: Scene, types=None) -> EditSpec:
    """A random feasible edit of one of ``types`` (default all), uniform over the feasible types.
    Raises ValueError when none of them is feasible for this scene (e.g. ``add`` with 3 shapes)."""
    types = _check_types(types)
    for i in rng.permutation(len(types)):
        e = _SAMPLERS[types[int(i)]](rng, scene)
        if e is not None:
            return e
    raise ValueError(f"no edit of types {types} is feasible for scene {scene.to_dict()}")


# ----------------------------------------------------------------------------------------------
# Text


def _edit_words(scene: Scene, edit: EditSpec) -> dict:
    t = target_shape(scene, edit)
    w = {"kind": t.kind, "color": t.color}
    if edit.type == "recolour":
        w["color"] = edit.params["color"]
    elif edit.type == "move":
        w["direction"] = DIRECTION_PHRASES[edit.params["direction"]]
    elif edit.type == "add":
        w["location"] = LOCATION_PHRASES[edit.params["location"]]
    return w


def instruction_text(scene: Scene, edit: EditSpec, rng: np.random.Generator | None = None) -> str:
    """Instruction from templates; ``rng`` picks one of the paraphrases (None -> the first)."""
    key = edit.type
    if key == "resize":
        key = "resize_bigger" if float(edit.params["factor"]) > 1 else "resize_smaller"
    templates = INSTRUCTION_TEMPLATES[key]
    tpl = templates[0] if rng is None else templates[int(rng.integers(len(templates)))]
    return tpl.format(**_edit_words(scene, edit))


def _p(question: str, category: str, **check) -> dict:
    return {"question": question, "category": category, "check": check}


def principles(scene: Scene, edit: EditSpec) -> list[dict]:
    """Evaluation points for this edit: 1-2 follow, 2-3 keep, 2 quality (5-7 in all).

    Each is ``{question, category, check}``; ``check`` = ``{op, min, ...}`` is read by
    oracle.measure(); the pass threshold ``min`` applies to a measure in [0, 1]."""
    w = _edit_words(scene, edit)
    k = w["kind"]
    target = apply_edit(scene, edit, check=False)
    # Shapes that must stay as they are: every other kind that exists before and after.
    others = [s.kind for s in scene.shapes if s.kind != k and target.shape(s.kind) is not None]
    t = edit.type
    out: list[dict] = []
    if t == "recolour":
        c = edit.params["color"]
        out += [_p(f"Is the {k} {c}?", "follow", op="color_frac", kind=k, color=c, min=0.5),
                _p(f"Is the whole {k} {c}?", "follow", op="color_frac", kind=k, color=c, min=0.9),
                _p(f"Are the position and size of the {k} unchanged?", "keep", op="geometry", kind=k, min=0.85)]
    elif t == "remove":
        out += [_p(f"Is the {k} removed?", "follow", op="removed", kind=k, min=0.6),
                _p(f"Is the {k} completely gone, with no trace left?", "follow", op="no_trace", kind=k, min=0.95)]
    elif t == "move":
        out += [_p(f"Has the {k} moved {w['direction']}?", "follow", op="moved", kind=k,
                   direction=edit.params["direction"], distance=float(edit.params["distance"]), min=0.7),
                _p(f"Is the old place of the {k} now empty?", "follow", op="vacated", kind=k, min=0.8),
                _p(f"Are the colour and size of the {k} unchanged?", "keep", op="appearance", kind=k, min=0.5)]
    elif t == "resize":
        word = "bigger" if float(edit.params["factor"]) > 1 else "smaller"
        out += [_p(f"Is the {k} {word} than before?", "follow", op="area_change", kind=k, min=0.65),
                _p(f"Is the {k} still {w['color']} and in the same place?", "keep", op="color_place", kind=k, min=0.6)]
    else:  # add
        c, loc = w["color"], edit.params["location"]
        out += [_p(f"Is there a {k} {w['location']}?", "follow", op="added", kind=k, location=loc, min=0.5),
                _p(f"Is the new {k} {c}?", "follow", op="added_color", kind=k, color=c, min=0.6)]
    if others:
        out.append(_p(Q_EXISTING if t == "add" else Q_OTHERS, "keep", op="others", kinds=others, min=0.85))
    out += [_p(Q_BACKGROUND, "keep", op="background", min=0.9),
            _p(Q_CLEAN, "quality", op="clean", min=0.5),
            _p(Q_CAST, "quality", op="cast", min=0.5)]
    # follow first, then keep, then quality (the order real decompositions use)
    order = {"follow": 0, "keep": 1, "quality": 2}
    return sorted(out, key=lambda p: order[p["category"]])


def public_principles(principles_: list[dict]) -> list[dict]:
    """The real-data schema ``[{question, category}]`` (drops the sandbox-only ``check``)."""
    return [{"question": p["question"], "category": p["category"]} for p in principles_]


# ----------------------------------------------------------------------------------------------
# Vocabulary

WORD_RE = re.compile(r"[A-Za-z_]+")
TRACE_WORDS = ("source", "edited", "background", "empty", "and", "noisy", "blurry", "colour", "cast", "unclear",
               "change", "moved", "not", "left", "right", "up", "down", "bigger", "smaller", "same", "size", "gone", "a", "little",
               "question", "score", "average_score")


def words_of(text: str) -> list[str]:
    """The world words of a text: maximal runs of letters/underscore (case kept); punctuation,
    digits and spaces are not words."""
    return WORD_RE.findall(text)


def vocabulary() -> list[str]:
    """Sorted list of every word that can appear in instructions, principles, scene descriptions
    and oracle traces (as split by ``words_of``)."""
    fills = {
        "kind": SHAPE_KINDS, "color": tuple(SHAPE_COLORS), "direction": tuple(DIRECTION_PHRASES.values()),
        "location": tuple(LOCATION_PHRASES.values()),
    }
    texts: list[str] = []
    for tpl in [*sum(INSTRUCTION_TEMPLATES.values(), ()), *PRINCIPLE_TEMPLATES]:
        texts.append(re.sub(r"\{\w+\}", " ", tpl))
    texts += [" ".join(v) for v in fills.values()]
    texts += [" ".join(BACKGROUNDS), " ".join(SIZE_WORDS), " ".join(LOCATIONS), " ".join(LOCATION_PHRASES.values()),
              " ".join(TRACE_WORDS)]
    words = set()
    for t in texts:
        words.update(words_of(t))
    return sorted(words)
