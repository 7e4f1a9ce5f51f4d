"""Candidate edited images of known, graded quality for a (scene, edit).

Grades (in rough order of quality):
  correct       render of the target scene
  degraded      correct, then Gaussian blur, noise or a colour cast
  over_edit     correct, plus an unrequested change (another shape recoloured/removed, or the background)
  partial       the edit half done: part of the shape recoloured/removed, a too-short move, a too-small
                resize, or the added shape in the wrong colour
  wrong_object  the edit applied to another shape (add: a shape of another missing kind)
  no_edit       the source image

Images are uint8 (size, size, 3).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from .edits import EditSpec, apply_edit, move_options, target_shape
from .scene import BACKGROUNDS, SHAPE_COLORS, SHAPE_KINDS, Scene, is_valid, pixel_grid, render, shape_sdf

GRADES: tuple[str, ...] = ("correct", "partial", "over_edit", "wrong_object", "degraded", "no_edit")


def _wrong_object_edits(scene: Scene, edit: EditSpec) -> list[EditSpec]:
    """Valid edits of the same type and parameters applied to another shape (or another kind for add)."""
    out = []
    t = edit.type
    if t == "add":
        new = edit.params["shape"]
        for k in SHAPE_KINDS:
            if k != new["kind"] and scene.shape(k) is None:
                e = EditSpec("add", None, {**edit.params, "shape": {**new, "kind": k}})
                if is_valid(apply_edit(scene, e, check=False)):
                    out.append(e)
        return out
    for j, s in enumerate(scene.shapes):
        if j == edit.target:
            continue
        if t == "recolour":
            if s.color != edit.params["color"]:
                out.append(EditSpec(t, j, dict(edit.params)))
        elif t == "remove":
            out.append(EditSpec(t, j, {}))
        elif t == "move":
            e = EditSpec(t, j, dict(edit.params))
            if is_valid(apply_edit(scene, e, check=False)):
                out.append(e)
            else:  # same direction, another valid distance
                opts = [d for name, d in move_options(scene, j) if name == edit.params["direction"]]
                if opts:
                    out.append(EditSpec(t, j, {"direction": edit.params["direction"], "distance": opts[0]}))
        elif t == "resize":
            e = EditSpec(t, j, dict(edit.params))
            if is_valid(apply_edit(scene, e, check=False)):
                out.append(e)
    return out


def feasible_grades(scene: Scene, edit: EditSpec) -> list[str]:
    """The grades ``make_candidate`` can produce for this (scene, edit), in GRADES order."""
    return [g for g in GRADES if g != "wrong_object" or _wrong_object_edits(scene, edit)]


def _partial_pixels(rng: np.random.Generator, scene: Scene, target: Scene, edit: EditSpec) -> np.ndarray:
    """Target render with part (30-60%) of the edited shape's pixels showing the source instead."""
    src, tgt = render(scene), render(target)
    s = target_shape(scene, edit)
    xx, yy = pixel_grid(scene.size)
    inside = shape_sdf(s, xx, yy) <= 0
    # keep the source on one side of a random cut line through the shape
    axis = xx if rng.random() < 0.5 else yy
    vals = np.sort(axis[inside])
    keep = float(rng.uniform(0.3, 0.6))
    if rng.random() < 0.5:
        cut = vals[int(keep * (vals.size - 1))]
        m = inside & (axis <= cut)
    else:
        cut = vals[int((1 - keep) * (vals.size - 1))]
        m = inside & (axis >= cut)
    out = tgt.copy()
    out[m] = src[m]
    return out


def _partial(rng: np.random.Generator, scene: Scene, edit: EditSpec) -> np.ndarray:
    t = edit.type
    target = apply_edit(scene, edit)
    if t in ("recolour", "remove"):
        return _partial_pixels(rng, scene, target, edit)
    if t == "move":
        u = float(rng.uniform(0.25, 0.45))
        e = EditSpec("move", edit.target, {"direction": edit.params["direction"],
                                            "distance": u * float(edit.params["distance"])})
        return render(apply_edit(scene, e, check=False))
    if t == "resize":
        f = float(edit.params["factor"]) ** float(rng.uniform(0.25, 0.4))   # a barely visible change
        return render(apply_edit(scene, EditSpec("resize", edit.target, {"factor": f}), check=False))
    new = edit.params["shape"]  # add, in the wrong colour
    colors = [c for c in SHAPE_COLORS if c != new["color"]]
    wrong = colors[int(rng.integers(len(colors)))]
    return render(apply_edit(scene, EditSpec("add", None, {**edit.params, "shape": {**new, "color": wrong}})))


def _over_edit(rng: np.random.Generator, scene: Scene, edit: EditSpec) -> np.ndarray:
    target = apply_edit(scene, edit)
    edited_kind = target_shape(scene, edit).kind
    others = [s for s in target.shapes if s.kind != edited_kind]
    opts = ["background"] + (["recolour_other", "remove_other"] if others else [])
    what = opts[int(rng.integers(len(opts)))]
    if what == "background":
        bgs = [b for b in BACKGROUNDS if b != scene.background]
        return render(target.replace_shapes(target.shapes, background=bgs[int(rng.integers(len(bgs)))]))
    victim = others[int(rng.integers(len(others)))]
    if what == "remove_other":
        return render(target.replace_shapes([s for s in target.shapes if s.kind != victim.kind]))
    colors = [c for c in SHAPE_COLORS if c != victim.color]
    shapes = [s.replace(color=colors[int(rng.integers(len(colors)))]) if s.kind == victim.kind else s
              for s in target.shapes]
    return render(target.replace_shapes(shapes))


def degrade(rng: np.random.Generator, image: np.ndarray, kind: str | None = None) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (H, W, 3) with one clear quality defect: ``blur`` (Gaussian, sigma
    1.3-2 px at 64 px), ``noise`` (Gaussian, sigma 14-22) or ``cast`` (offset of 25-35 in a random
    colour direction). ``kind`` None picks one at random."""
    kinds = ("blur", "noise", "cast")
    kind = kinds[int(rng.integers(3))] if kind is None else kind
    n = image.shape[0]
    if kind == "blur":
        r = float(rng.uniform(1.3, 2.0)) * n / 64
        return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius=r)))
    if kind == "noise":
        sig = float(rng.uniform(14, 22))
        return np.clip(image + rng.normal(0, sig, image.shape), 0, 255).round().astype(np.uint8)
    if kind == "cast":
        v = rng.normal(size=3)
        v *= float(rng.uniform(25, 35)) / np.linalg.norm(v)
        return np.clip(image + v, 0, 255).round().astype(np.uint8)
    raise ValueError(f"kind must be one of {kinds} or None, got {kind!r}")


def make_candidate(rng: np.random.Generator, scene: Scene, edit: EditSpec, grade: str) -> np.ndarray:
    """An edited image of the given grade: uint8 (size, size, 3). Raises ValueError for an unknown
    or infeasible grade (see ``feasible_grades``)."""
    if grade not in GRADES:
        raise ValueError(f"grade must be one of {GRADES}, got {grade!r}")
    if grade == "correct":
        return render(apply_edit(scene, edit))
    if grade == "no_edit":
        return render(scene)
    if grade == "degraded":
        target = apply_edit(scene, edit)
        # blur is invisible on an empty image: pick a defect that shows
        kind = None if target.shapes else ("noise", "cast")[int(rng.integers(2))]
        return degrade(rng, render(target), kind)
    if grade == "partial":
        return _partial(rng, scene, edit)
    if grade == "over_edit":
        return _over_edit(rng, scene, edit)
    opts = _wrong_object_edits(scene, edit)
    if not opts:
        raise ValueError(f"grade 'wrong_object' is infeasible for this scene/edit ({edit.type}, "
                         f"{len(scene.shapes)} shapes)")
    return render(apply_edit(scene, opts[int(rng.integers(len(opts)))], check=False))
