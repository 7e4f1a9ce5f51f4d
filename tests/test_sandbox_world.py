"""Sandbox world: scenes, rendering, masks, edits, instructions, principles, vocabulary."""
import json

import numpy as np
import pytest

from edit_rlhf.sandbox.edits import (
    DIRECTION_PHRASES, EDIT_TYPES, MOVE_MIN, EditSpec, apply_edit, instruction_text, move_offset, principles,
    public_principles, sample_edit, vocabulary, words_of,
)
from edit_rlhf.sandbox.scene import (
    BACKGROUNDS, LOCATION_PHRASES, SHAPE_COLORS, SHAPE_KINDS, SIZE_RANGE, Scene, Shape, describe_scene, is_valid,
    location_word, render, sample_scene, shape_area, shape_mask,
)


def _scene():
    return Scene("white", [Shape("square", "blue", 44.0, 40.0, 10.0), Shape("circle", "red", 18.0, 20.0, 9.0)], 64)


def test_render_colours_and_masks():
    sc = _scene()
    img = render(sc)
    assert img.dtype == np.uint8 and img.shape == (64, 64, 3)
    assert tuple(img[20, 18]) == SHAPE_COLORS["red"]          # row = y, column = x
    assert tuple(img[40, 44]) == SHAPE_COLORS["blue"]
    assert tuple(img[0, 0]) == BACKGROUNDS["white"] and tuple(img[63, 63]) == BACKGROUNDS["white"]
    colours = {tuple(c) for c in img.reshape(-1, 3)}
    assert colours == {SHAPE_COLORS["red"], SHAPE_COLORS["blue"], BACKGROUNDS["white"]}   # hard edges only
    for s in sc.shapes:
        m = shape_mask(s, 64)
        assert m.dtype == bool and m.shape == (64, 64)
        assert abs(m.sum() - shape_area(s)) / shape_area(s) < 0.06
        assert (img[m] == SHAPE_COLORS[s.color]).all()
        grown, shrunk = shape_mask(s, 64, grow=1.5), shape_mask(s, 64, grow=-1.5)
        assert shrunk.sum() < m.sum() < grown.sum() and (shrunk <= m).all() and (m <= grown).all()
    tri = Shape("triangle", "green", 32.0, 32.0, 12.0)
    m = shape_mask(tri, 64)
    assert m[24, 32] and not m[24, 24]                          # apex row is narrow: upward triangle
    assert m[36, 24] and m[36, 40]                              # base is wide


@pytest.mark.parametrize("size", [32, 64, 256])
def test_sample_scene_valid_and_deterministic(size):
    for seed in range(25):
        sc = sample_scene(np.random.default_rng(seed), size)
        assert 1 <= len(sc.shapes) <= 3 and len(set(sc.kinds())) == len(sc.shapes)
        assert sc.kinds() == [k for k in SHAPE_KINDS if k in sc.kinds()]    # canonical order
        assert is_valid(sc)
        for s in sc.shapes:
            assert SIZE_RANGE[0] * size <= s.size <= SIZE_RANGE[1] * size
            assert s.size <= s.cx <= size - s.size and s.size <= s.cy <= size - s.size
        assert render(sc).shape == (size, size, 3)
        again = sample_scene(np.random.default_rng(seed), size)
        assert again.to_dict() == sc.to_dict()


def test_scene_roundtrip_and_validation():
    sc = _scene()
    d = json.loads(json.dumps(sc.to_dict()))
    assert Scene.from_dict(d) == sc
    with pytest.raises(ValueError, match="kind"):
        Shape("hexagon", "red", 1, 1, 1)
    with pytest.raises(ValueError, match="color"):
        Shape("circle", "pink", 1, 1, 1)
    with pytest.raises(ValueError, match="background"):
        Scene("pink", [], 64)
    with pytest.raises(ValueError, match="size"):
        Scene("white", [], 16)
    with pytest.raises(ValueError, match="distinct kinds"):
        Scene("white", [Shape("circle", "red", 10, 10, 5), Shape("circle", "blue", 40, 40, 5)], 64)


def test_describe_scene():
    sc = _scene()   # given square first: descriptions use canonical kind order
    assert describe_scene(sc) == "white background; red circle, blue square"
    assert describe_scene(sc, positions=True) == (
        "white background; medium red circle at the top left, medium blue square at the bottom right")
    assert describe_scene(Scene("teal", [], 64)) == "teal background; empty"
    assert location_word(32, 32, 64) == "centre" and location_word(5, 60, 64) == "bottom left"


def _edits(edit_type, n=40, size=64):
    out = []
    rng = np.random.default_rng(EDIT_TYPES.index(edit_type))
    while len(out) < n:
        sc = sample_scene(rng, size)
        try:
            out.append((sc, sample_edit(rng, sc, [edit_type])))
        except ValueError:
            continue
    return out


@pytest.mark.parametrize("edit_type", EDIT_TYPES)
def test_edit_types_feasible_and_change_the_scene(edit_type):
    for sc, e in _edits(edit_type):
        assert e.type == edit_type
        assert EditSpec.from_dict(json.loads(json.dumps(e.to_dict()))) == e
        tgt = apply_edit(sc, e)
        assert is_valid(tgt) and not np.array_equal(render(tgt), render(sc))
        instr = instruction_text(sc, e)
        if edit_type == "add":
            new = Shape.from_dict(e.params["shape"])
            assert sc.shape(new.kind) is None and tgt.shape(new.kind) == new
            assert len(tgt.shapes) == len(sc.shapes) + 1
            assert location_word(new.cx, new.cy, sc.size) == e.params["location"]
            assert new.kind in instr and new.color in instr and LOCATION_PHRASES[e.params["location"]] in instr
            continue
        t = sc.shapes[e.target]
        others = [s for s in sc.shapes if s.kind != t.kind]
        assert t.kind in instr
        assert all(tgt.shape(s.kind) == s for s in others)       # nothing else changes
        after = tgt.shape(t.kind)
        if edit_type == "recolour":
            assert after.color == e.params["color"] != t.color and e.params["color"] in instr
            assert (after.cx, after.cy, after.size) == (t.cx, t.cy, t.size)
        elif edit_type == "remove":
            assert after is None and len(tgt.shapes) == len(sc.shapes) - 1
        elif edit_type == "move":
            dx, dy = move_offset(e)
            assert (after.cx - t.cx, after.cy - t.cy) == pytest.approx((dx, dy))
            assert np.hypot(dx, dy) >= MOVE_MIN * sc.size - 1e-6
            assert DIRECTION_PHRASES[e.params["direction"]] in instr
        elif edit_type == "resize":
            f = after.size / t.size
            assert (f >= 1.4 or f <= 0.65) and (after.cx, after.cy, after.color) == (t.cx, t.cy, t.color)
            assert ("bigger" in instr or "enlarge" in instr or "increase" in instr) == (f > 1)


def test_sample_edit_determinism_and_errors():
    sc = sample_scene(np.random.default_rng(3))
    a = sample_edit(np.random.default_rng(11), sc)
    b = sample_edit(np.random.default_rng(11), sc)
    assert a == b
    full = Scene("white", [Shape("circle", "red", 12, 12, 8), Shape("square", "blue", 50, 12, 8),
                           Shape("triangle", "green", 30, 50, 8)], 64)
    with pytest.raises(ValueError, match="feasible"):
        sample_edit(np.random.default_rng(0), full, ["add"])
    with pytest.raises(ValueError, match="types"):
        sample_edit(np.random.default_rng(0), full, ["explode"])
    with pytest.raises(ValueError, match="type"):
        EditSpec("explode", 0, {})


def test_instruction_paraphrases():
    sc = _scene()
    e = EditSpec("recolour", 1, {"color": "green"})   # shapes are stored circle, square
    texts = {instruction_text(sc, e, np.random.default_rng(i)) for i in range(30)}
    assert len(texts) == 3 and all("square" in t and "green" in t for t in texts)
    assert instruction_text(sc, e) == "make the square green"


@pytest.mark.parametrize("edit_type", EDIT_TYPES)
def test_principles_structure(edit_type):
    for sc, e in _edits(edit_type, n=15):
        pr = principles(sc, e)
        cats = [p["category"] for p in pr]
        assert 5 <= len(pr) <= 8
        assert 1 <= cats.count("follow") <= 3 and 1 <= cats.count("keep") <= 3 and cats.count("quality") == 2
        assert cats == sorted(cats, key=["follow", "keep", "quality"].index)
        assert json.loads(json.dumps(pr)) == pr
        assert all(p["question"].endswith("?") and 0 < p["check"]["min"] <= 1 for p in pr)
        assert public_principles(pr) == [{"question": p["question"], "category": p["category"]} for p in pr]
        kind = (e.params["shape"]["kind"] if edit_type == "add" else sc.shapes[e.target].kind)
        assert all(kind in p["question"] for p in pr if p["category"] == "follow")
        if len(sc.shapes) > 1 or edit_type == "add":
            assert any(p["check"]["op"] == "others" for p in pr)


def test_vocabulary_covers_every_text():
    vocab = set(vocabulary())
    assert len(vocab) == len(vocabulary()) and {"circle", "teal", "Is", "average_score"} <= vocab
    rng = np.random.default_rng(0)
    for edit_type in EDIT_TYPES:
        for sc, e in _edits(edit_type, n=20):
            texts = [instruction_text(sc, e, rng) for _ in range(4)]
            texts += [p["question"] for p in principles(sc, e)]
            texts += [describe_scene(sc), describe_scene(apply_edit(sc, e), positions=True)]
            for t in texts:
                assert set(words_of(t)) <= vocab, (t, set(words_of(t)) - vocab)
