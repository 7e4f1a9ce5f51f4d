"""Scene descriptions for the sandbox VLM: chat examples, parsing, per-attribute accuracy.

One image: "Describe the image." -> `describe_scene` ("white background; red circle, blue square").
Two images (source, edited - the layout the RRM judges): "Describe the source and edited images." ->
"source: <description>. edited: <description>." (the "think" part of the sandbox RRM traces).
Scenes come from `sample_scene` (background, shape count, kinds and colours drawn independently and
uniformly: balanced, nearly independent labels) and edited scenes from `sample_edit`/`apply_edit`.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from edit_rlhf.sandbox.edits import apply_edit, sample_edit
from edit_rlhf.sandbox.scene import BACKGROUNDS, SHAPE_COLORS, SHAPE_KINDS, Scene, describe_scene, render, sample_scene
from edit_rlhf.vlm.chat import ChatExample, user_assistant

Q_ONE = "Describe the image."
Q_TWO = "Describe the source and edited images."


def one_image_example(scene: Scene, with_answer: bool = True) -> ChatExample:
    return user_assistant([render(scene)], Q_ONE, describe_scene(scene) if with_answer else None)


def two_image_example(source: Scene, edited: Scene, with_answer: bool = True) -> ChatExample:
    ans = f"source: {describe_scene(source)}. edited: {describe_scene(edited)}."
    return user_assistant([render(source), render(edited)], Q_TWO, ans if with_answer else None)


def sample_pair(rng: np.random.Generator, size: int) -> Tuple[Scene, Scene]:
    """A scene and an edit of it (any feasible edit type)."""
    s = sample_scene(rng, size)
    return s, apply_edit(s, sample_edit(rng, s))


def sample_examples(rng: np.random.Generator, n: int, size: int = 64, two_image_frac: float = 0.5
                    ) -> List[ChatExample]:
    out = []
    for _ in range(n):
        if rng.random() < two_image_frac:
            out.append(two_image_example(*sample_pair(rng, size)))
        else:
            out.append(one_image_example(sample_scene(rng, size)))
    return out


_SHAPE_RE = re.compile(r"\b(" + "|".join(SHAPE_COLORS) + r")\s+(" + "|".join(SHAPE_KINDS) + r")\b")
_BG_RE = re.compile(r"\b(" + "|".join(BACKGROUNDS) + r")\s+background\b")


def parse_description(text: str) -> Dict[str, object]:
    """{'background': name or None, 'shapes': {kind: colour}} from a description (lenient: first match)."""
    bg = _BG_RE.search(text)
    shapes: Dict[str, str] = {}
    for color, kind in _SHAPE_RE.findall(text):
        shapes.setdefault(kind, color)
    return {"background": bg.group(1) if bg else None, "shapes": shapes}


def parse_two(text: str) -> Tuple[Dict[str, object], Dict[str, object]]:
    """(source, edited) parses of a "source: ... edited: ..." reply; a missing part parses as empty."""
    m = re.search(r"source:(.*?)(?:edited:(.*))?$", text, flags=re.S)
    src, edt = (m.group(1), m.group(2) or "") if m else ("", "")
    return parse_description(src), parse_description(edt)


def truth(scene: Scene) -> Dict[str, object]:
    return {"background": scene.background, "shapes": {s.kind: s.color for s in scene.shapes}}


def attribute_table(pred: Sequence[Dict[str, object]], gold: Sequence[Dict[str, object]]) -> Dict[str, float]:
    """Per-attribute accuracy and its majority baseline (the most frequent gold value of that attribute):
    background; per kind presence; per kind colour (over images where the kind is present); exact match."""
    rows: Dict[str, List[Tuple[object, object]]] = {"background": []}
    for k in SHAPE_KINDS:
        rows[f"{k}_present"], rows[f"{k}_color"] = [], []
    exact = []
    for p, g in zip(pred, gold):
        rows["background"].append((p["background"], g["background"]))
        for k in SHAPE_KINDS:
            rows[f"{k}_present"].append((k in p["shapes"], k in g["shapes"]))
            if k in g["shapes"]:
                rows[f"{k}_color"].append((p["shapes"].get(k), g["shapes"][k]))
        exact.append(p == g)
    out: Dict[str, float] = {}
    for name, pairs in rows.items():
        if not pairs:
            continue
        golds = [g for _, g in pairs]
        out[f"{name}/accuracy"] = float(np.mean([a == b for a, b in pairs]))
        out[f"{name}/majority"] = Counter(golds).most_common(1)[0][1] / len(golds)
        out[f"{name}/n"] = len(pairs)
    out["exact_match"] = float(np.mean(exact))
    return out


def eval_sets(pairs: Sequence[Tuple[Scene, Scene]], n_one: Optional[int] = None
              ) -> Tuple[List[ChatExample], List[List[Dict[str, object]]]]:
    """Held-out prompts (no answers) and gold parses: one-image examples of the sources (first `n_one`),
    two-image examples of every (source, edited) pair. gold[i] lists one truth per described image."""
    n_one = len(pairs) if n_one is None else n_one
    exs, gold = [], []
    for s, _ in pairs[:n_one]:
        exs.append(one_image_example(s, with_answer=False))
        gold.append([truth(s)])
    for s, e in pairs:
        exs.append(two_image_example(s, e, with_answer=False))
        gold.append([truth(s), truth(e)])
    return exs, gold


def score_replies(replies: Sequence[str], gold: Sequence[List[Dict[str, object]]]) -> Dict[str, float]:
    """Attribute table over every described image ('all/...'), and separately over one-image replies
    ('one/...') and the edited image of two-image replies ('edited/...', what an RRM must see)."""
    preds: Dict[str, List] = {"all": [], "one": [], "edited": []}
    golds: Dict[str, List] = {"all": [], "one": [], "edited": []}
    for r, g in zip(replies, gold):
        if len(g) == 1:
            p = [parse_description(r)]
            preds["one"] += p
            golds["one"] += g
        else:
            p = list(parse_two(r))
            preds["edited"].append(p[1])
            golds["edited"].append(g[1])
        preds["all"] += p
        golds["all"] += g
    out: Dict[str, float] = {}
    for k in preds:
        if preds[k]:
            out.update({f"{k}/{name}": v for name, v in attribute_table(preds[k], golds[k]).items()})
    return out
