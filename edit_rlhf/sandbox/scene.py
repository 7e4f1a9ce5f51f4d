"""Scenes of the sandbox world: 1-3 solid-colour shapes on a plain background.

A scene is a small square RGB image (``size`` x ``size`` pixels, 32..256) described exactly by a
``Scene``: a named background colour and up to three ``Shape``s, each of a different kind (circle,
square, triangle), so "the square" always names one shape. Geometry is in pixels (floats), with
pixel centres at ``(x + 0.5, y + 0.5)``; every shape is inscribed in the circle of radius ``size``
around its centre, so "inside the image" and "non-overlapping" are circle tests.

Rendering is hard-edged (no anti-aliasing) so the clean images hold palette colours only; the oracle
is built to tolerate the soft edges and colour shifts of learned editors.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SHAPE_KINDS: tuple[str, ...] = ("circle", "square", "triangle")
# Shape colours and backgrounds: every pair of the 10 palette colours is >= 100 apart in RGB, so a
# pixel within ~50 of a palette colour is unambiguous (the oracle's classification threshold).
SHAPE_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 45),
    "green": (35, 165, 55),
    "blue": (40, 75, 225),
    "yellow": (245, 230, 40),
    "purple": (150, 50, 205),
    "orange": (250, 130, 20),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "gray": (120, 120, 120),
    "black": (20, 20, 20),
    "teal": (25, 185, 180),
}
PALETTE_NAMES: tuple[str, ...] = tuple(SHAPE_COLORS) + tuple(BACKGROUNDS)
PALETTE: np.ndarray = np.array([SHAPE_COLORS.get(n, BACKGROUNDS.get(n)) for n in PALETTE_NAMES], np.float32)

MIN_SIZE, MAX_SIZE = 32, 256
SIZE_RANGE = (0.12, 0.2)          # shape size (circumradius) as a fraction of the side
SQUARE_HALF = 0.7                 # square half-side / size: corners just inside the circumcircle
SHAPE_GAP = 0.07                  # min free gap between two shapes' circumcircles, fraction of side
BORDER = 1.0                      # min free pixels between a shape's circumcircle and the border

# Coarse words for positions and sizes (used by descriptions and "add" locations).
LOCATIONS: tuple[str, ...] = ("top left", "top", "top right", "left", "centre", "right",
                              "bottom left", "bottom", "bottom right")
LOCATION_PHRASES: dict[str, str] = {
    "top left": "at the top left", "top": "at the top", "top right": "at the top right",
    "left": "on the left", "centre": "in the centre", "right": "on the right",
    "bottom left": "at the bottom left", "bottom": "at the bottom", "bottom right": "at the bottom right",
}
ZONE_EDGES = (0.4, 0.6)           # thirds-like split of each axis: [0, .4) low, [.4, .6] mid, (.6, 1] high
SIZE_WORDS = ("small", "medium", "large")
SIZE_WORD_EDGES = (0.12, 0.2)     # size/side below -> small, above -> large


@dataclass
class Shape:
    """One solid shape: ``kind`` in SHAPE_KINDS, ``color`` in SHAPE_COLORS, centre ``(cx, cy)`` and
    circumradius ``size`` in pixels."""

    kind: str
    color: str
    cx: float
    cy: float
    size: float

    def __post_init__(self) -> None:
        if self.kind not in SHAPE_KINDS:
            raise ValueError(f"Shape.kind must be one of {SHAPE_KINDS}, got {self.kind!r}")
        if self.color not in SHAPE_COLORS:
            raise ValueError(f"Shape.color must be one of {tuple(SHAPE_COLORS)}, got {self.color!r}")
        if not self.size > 0:
            raise ValueError(f"Shape.size must be > 0, got {self.size!r}")
        self.cx, self.cy, self.size = float(self.cx), float(self.cy), float(self.size)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "color": self.color, "cx": self.cx, "cy": self.cy, "size": self.size}

    @classmethod
    def from_dict(cls, d: dict) -> "Shape":
        return cls(kind=d["kind"], color=d["color"], cx=d["cx"], cy=d["cy"], size=d["size"])

    def replace(self, **kw) -> "Shape":
        return Shape(**{**self.to_dict(), **kw})


@dataclass
class Scene:
    """A background name, shapes (distinct kinds, kept in canonical SHAPE_KINDS order) and the
    image side ``size`` in pixels."""

    background: str
    shapes: list[Shape] = field(default_factory=list)
    size: int = 64

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(f"Scene.background must be one of {tuple(BACKGROUNDS)}, got {self.background!r}")
        check_size(self.size)
        kinds = [s.kind for s in self.shapes]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"Scene.shapes must have distinct kinds, got {kinds}")
        self.shapes = sorted(self.shapes, key=lambda s: SHAPE_KINDS.index(s.kind))
        self.size = int(self.size)

    def to_dict(self) -> dict:
        return {"background": self.background, "size": self.size, "shapes": [s.to_dict() for s in self.shapes]}

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        return cls(background=d["background"], shapes=[Shape.from_dict(s) for s in d["shapes"]], size=d["size"])

    def shape(self, kind: str) -> Shape | None:
        """The shape of this kind, or None."""
        for s in self.shapes:
            if s.kind == kind:
                return s
        return None

    def kinds(self) -> list[str]:
        return [s.kind for s in self.shapes]

    def replace_shapes(self, shapes: list[Shape], background: str | None = None) -> "Scene":
        return Scene(background=background or self.background, shapes=list(shapes), size=self.size)


def check_size(size: int) -> int:
    if not isinstance(size, (int, np.integer)) or not MIN_SIZE <= int(size) <= MAX_SIZE:
        raise ValueError(f"size must be an int in [{MIN_SIZE}, {MAX_SIZE}], got {size!r}")
    return int(size)


def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(xx, yy)``, each float32 (size, size); x is the column."""
    c = np.arange(size, dtype=np.float32) + 0.5
    return c[None, :].repeat(size, 0), c[:, None].repeat(size, 1)


def shape_sdf(shape: Shape, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Signed distance in pixels to the shape outline (negative inside), float32 like ``xx``.

    Exact for circles, Chebyshev for squares and the max over edge half-planes for triangles; all
    exact in sign, which is what masks and "grow/shrink by e pixels" need."""
    dx, dy = xx - shape.cx, yy - shape.cy
    s = shape.size
    if shape.kind == "circle":
        return np.sqrt(dx * dx + dy * dy) - s
    if shape.kind == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - SQUARE_HALF * s
    # Upward equilateral triangle inscribed in the circle of radius s: apex (0, -s),
    # base corners (+-s*sqrt(3)/2, s/2). Edge normals point outward; inradius = s/2.
    r3 = np.float32(np.sqrt(3.0) / 2.0)
    base = dy - 0.5 * s
    right = r3 * dx - 0.5 * dy - 0.5 * s
    left = -r3 * dx - 0.5 * dy - 0.5 * s
    return np.maximum(base, np.maximum(right, left))


def shape_mask(shape: Shape, size: int, grow: float = 0.0) -> np.ndarray:
    """Bool (size, size) mask of the pixels whose centre lies inside the shape grown by ``grow``
    pixels (negative shrinks)."""
    xx, yy = pixel_grid(check_size(size))
    return shape_sdf(shape, xx, yy) <= grow


def shape_area(shape: Shape) -> float:
    """Exact area in pixels^2 of the continuous shape."""
    s = shape.size
    if shape.kind == "circle":
        return float(np.pi * s * s)
    if shape.kind == "square":
        return float((2 * SQUARE_HALF * s) ** 2)
    return float(3 * np.sqrt(3) / 4 * s * s)


def shape_perimeter(shape: Shape) -> float:
    s = shape.size
    if shape.kind == "circle":
        return float(2 * np.pi * s)
    if shape.kind == "square":
        return float(8 * SQUARE_HALF * s)
    return float(3 * np.sqrt(3) * s)


def label_map(scene: Scene) -> np.ndarray:
    """Int (size, size) map of PALETTE indices of the clean render."""
    lab = np.full((scene.size, scene.size), PALETTE_NAMES.index(scene.background), np.int64)
    xx, yy = pixel_grid(scene.size)
    for s in scene.shapes:
        lab[shape_sdf(s, xx, yy) <= 0] = PALETTE_NAMES.index(s.color)
    return lab


def render(scene: Scene) -> np.ndarray:
    """Clean hard-edged render: uint8 (size, size, 3), values are palette colours."""
    return PALETTE[label_map(scene)].astype(np.uint8)


def is_valid(scene: Scene) -> bool:
    """All shapes inside the image (with a 1 px border) and pairwise apart by SHAPE_GAP*side."""
    n = scene.size
    gap = SHAPE_GAP * n
    for s in scene.shapes:
        if s.size < 1.5:
            return False
        lo, hi = s.size + BORDER, n - s.size - BORDER
        if not (lo <= s.cx <= hi and lo <= s.cy <= hi):
            return False
    for i, a in enumerate(scene.shapes):
        for b in scene.shapes[:i]:
            if np.hypot(a.cx - b.cx, a.cy - b.cy) < a.size + b.size + gap:
                return False
    return True


def sample_scene(rng: np.random.Generator, size: int = 64, n_shapes: tuple[int, int] = (1, 3),
                 max_tries: int = 200) -> Scene:
    """A random valid scene: ``n_shapes`` = inclusive (min, max) number of shapes, distinct kinds,
    random colours (repeats allowed), random background, sizes in SIZE_RANGE * side."""
    size = check_size(size)
    lo, hi = n_shapes
    if not 1 <= lo <= hi <= len(SHAPE_KINDS):
        raise ValueError(f"n_shapes must satisfy 1 <= min <= max <= {len(SHAPE_KINDS)}, got {n_shapes!r}")
    for _ in range(max_tries):
        n = int(rng.integers(lo, hi + 1))
        kinds = [SHAPE_KINDS[i] for i in sorted(rng.choice(len(SHAPE_KINDS), n, replace=False))]
        colors = [list(SHAPE_COLORS)[i] for i in rng.integers(0, len(SHAPE_COLORS), n)]
        bg = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
        shapes = []
        for k, c in zip(kinds, colors):
            r = float(rng.uniform(*SIZE_RANGE) * size)
            cx, cy = rng.uniform(r + BORDER, size - r - BORDER, 2)
            shapes.append(Shape(k, c, float(cx), float(cy), r))
        scene = Scene(bg, shapes, size)
        if is_valid(scene):
            return scene
    raise RuntimeError(f"could not place {n_shapes} shapes in a {size}px scene in {max_tries} tries")


def location_word(x: float, y: float, size: int) -> str:
    """Coarse location of a point: one of LOCATIONS (x is the column, y grows downwards)."""
    def band(v: float) -> int:
        f = v / size
        return 0 if f < ZONE_EDGES[0] else (2 if f > ZONE_EDGES[1] else 1)

    col, row = band(x), band(y)
    vert = ("top", "", "bottom")[row]
    horiz = ("left", "", "right")[col]
    return (f"{vert} {horiz}".strip()) or "centre"


def size_word(shape_size: float, side: int) -> str:
    f = shape_size / side
    return SIZE_WORDS[0] if f < SIZE_WORD_EDGES[0] else (SIZE_WORDS[2] if f > SIZE_WORD_EDGES[1] else SIZE_WORDS[1])


def shape_phrase(color: str, kind: str, loc: str | None = None, size: str | None = None) -> str:
    """"red circle", or with position "large red circle at the top left"."""
    words = f"{color} {kind}"
    if size:
        words = f"{size} {words}"
    if loc:
        words = f"{words} {LOCATION_PHRASES[loc]}"
    return words


def describe_scene(scene: Scene, positions: bool = False) -> str:
    """Canonical short description, shapes in SHAPE_KINDS order:
    ``"white background; red circle, blue square"``; with ``positions=True`` each shape also gets a
    size word and a location (``"medium red circle at the top left"``). No shapes -> ``"...; empty"``."""
    parts = []
    for s in scene.shapes:
        if positions:
            parts.append(shape_phrase(s.color, s.kind, location_word(s.cx, s.cy, scene.size),
                                      size_word(s.size, scene.size)))
        else:
            parts.append(shape_phrase(s.color, s.kind))
    return f"{scene.background} background; " + (", ".join(parts) if parts else "empty")
