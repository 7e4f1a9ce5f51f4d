"""Oracle verifier, graded candidates, RRM verdict format and oracle traces."""
import json
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image, ImageFilter

from edit_rlhf.rrm.format import PRINCIPLE_CATEGORIES, format_verdict, normalize_category
from edit_rlhf.sandbox.candidates import GRADES, degrade, feasible_grades, make_candidate
from edit_rlhf.sandbox.edits import EDIT_TYPES, EditSpec, apply_edit, principles, sample_edit, vocabulary, words_of
from edit_rlhf.sandbox.oracle import oracle_record, verify, verify_json
from edit_rlhf.sandbox.scene import Scene, Shape, render, sample_scene
from edit_rlhf.sandbox.traces import oracle_trace


def _tasks(n, seed=0, size=64, types=None):
    """n random (scene, edit, principles), edit types balanced."""
    rng = np.random.default_rng(seed)
    types = types or EDIT_TYPES
    out = []
    while len(out) < n:
        sc = sample_scene(rng, size)
        try:
            e = sample_edit(rng, sc, [types[len(out) % len(types)]])
        except ValueError:
            continue
        out.append((sc, e, principles(sc, e)))
    return out


@pytest.fixture(scope="module")
def graded():
    """Oracle results for every feasible grade of 150 random tasks."""
    rows = []
    rng = np.random.default_rng(1)
    for sc, e, pr in _tasks(150):
        for g in feasible_grades(sc, e):
            rows.append((sc, e, pr, g, verify(sc, e, pr, make_candidate(rng, sc, e, g))))
    return rows


def test_feasible_grades():
    one = Scene("white", [Shape("circle", "red", 32, 32, 10)], 64)
    e = EditSpec("recolour", 0, {"color": "blue"})
    assert feasible_grades(one, e) == [g for g in GRADES if g != "wrong_object"]
    with pytest.raises(ValueError, match="wrong_object"):
        make_candidate(np.random.default_rng(0), one, e, "wrong_object")
    with pytest.raises(ValueError, match="grade"):
        make_candidate(np.random.default_rng(0), one, e, "excellent")
    two = Scene("white", [Shape("circle", "red", 16, 16, 9), Shape("square", "green", 46, 46, 9)], 64)
    assert "wrong_object" in feasible_grades(two, e)


def test_grade_ordering(graded):
    by = defaultdict(list)
    for *_, g, r in graded:
        by[g].append(r.score)
    mean = {g: float(np.mean(v)) for g, v in by.items()}
    assert set(mean) == set(GRADES)
    assert mean["correct"] >= 9.8 and max(mean.values()) == mean["correct"]
    assert max(by["no_edit"]) == 0.0
    low = max(mean["wrong_object"], mean["no_edit"])
    for g in ("partial", "degraded", "over_edit"):
        assert low + 0.5 < mean[g] < mean["correct"] - 1.0, (g, mean)
    assert mean["wrong_object"] < 1.5


def test_correct_passes_everything_and_no_edit_fails_follow(graded):
    for sc, e, pr, g, r in graded:
        follow = [c for c, p in zip(r.checks, pr) if p["category"] == "follow"]
        if g == "correct":
            assert all(r.checks) and r.score == 10.0, (e.to_dict(), r.checks, r.measures)
        elif g == "no_edit":
            assert not any(follow), (e.to_dict(), r.checks)
        elif g == "wrong_object":
            assert not all(follow)
        elif g == "over_edit":   # the edit is right, something else changed
            keep = [c for c, p in zip(r.checks, pr) if p["category"] == "keep"]
            assert all(follow) and not all(keep)
        elif g == "partial":
            assert not all(follow)
        assert len(r.checks) == len(r.measures) == len(pr)
        assert all(0.0 <= m <= 1.0 for m in r.measures) and 0.0 <= r.score <= 10.0
        assert all(c == int(m >= p["check"]["min"]) for c, m, p in zip(r.checks, r.measures, pr))


def _blur_noise(img, rng, radius, sigma):
    out = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius))).astype(float)
    return np.clip(out + rng.normal(0, sigma, out.shape), 0, 255).astype(np.uint8)


def test_robust_to_mild_blur_noise_and_resizing():
    rng = np.random.default_rng(2)
    for sc, e, pr in _tasks(40, seed=3):
        tgt = apply_edit(sc, e)
        soft = _blur_noise(render(tgt), rng, 0.7, 4.0)
        r = verify(sc, e, pr, soft)
        assert all(c for c, p in zip(r.checks, pr) if p["category"] == "follow"), (e.to_dict(), r.measures)
        assert r.score >= 6.0
        # a 2x render, and float input in [0, 1], are read at the scene size
        big = Scene(tgt.background, [s.replace(cx=2 * s.cx, cy=2 * s.cy, size=2 * s.size) for s in tgt.shapes], 128)
        assert all(verify(sc, e, pr, render(big)).checks)
        assert verify(sc, e, pr, render(tgt).astype(np.float32) / 255.0).score == 10.0


def test_quality_checks_catch_degradations():
    rng = np.random.default_rng(4)
    sc = Scene("white", [Shape("circle", "red", 20, 22, 10), Shape("square", "blue", 46, 42, 10)], 64)
    e = EditSpec("recolour", 0, {"color": "green"})
    pr = principles(sc, e)
    qi = {p["check"]["op"]: i for i, p in enumerate(pr) if p["category"] == "quality"}
    clean = render(apply_edit(sc, e))
    noisy = np.clip(clean + rng.normal(0, 40, clean.shape), 0, 255).astype(np.uint8)
    r = verify(sc, e, pr, noisy)
    assert r.checks[qi["clean"]] == 0 and r.score < 8
    r = verify(sc, e, pr, degrade(rng, clean, "blur"))
    assert r.checks[qi["clean"]] == 0 and r.checks[qi["cast"]] == 1
    r = verify(sc, e, pr, np.clip(clean.astype(int) + [0, 0, 35], 0, 255).astype(np.uint8))
    assert r.checks[qi["cast"]] == 0 and r.checks[qi["clean"]] == 1
    assert verify(sc, e, pr, clean).score == 10.0


def test_score_is_graded_along_a_move():
    sc = Scene("gray", [Shape("circle", "yellow", 14, 32, 9), Shape("square", "purple", 50, 12, 8)], 64)
    e = EditSpec("move", 0, {"direction": "right", "distance": 24.0})
    pr = principles(sc, e)
    scores = []
    for u in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        part = Scene("gray", [sc.shapes[0].replace(cx=14 + 24 * u), sc.shapes[1]], 64)
        scores.append(verify(sc, e, pr, render(part)).score)
    assert scores[0] == 0.0 and scores[-1] == 10.0
    assert all(a <= b for a, b in zip(scores, scores[1:])) and len(set(scores)) >= 4, scores


def test_verify_json_roundtrip_and_errors():
    for sc, e, pr in _tasks(10, seed=5):
        img = make_candidate(np.random.default_rng(0), sc, e, "partial")
        rec = oracle_record(sc, e, pr)
        assert isinstance(rec, str) and json.loads(rec)["edit"] == e.to_dict()
        a, b = verify(sc, e, pr, img), verify_json(rec, img)
        assert a == b
        assert json.loads(json.dumps(a.to_dict())) == a.to_dict()
    with pytest.raises(ValueError, match="check"):
        verify(sc, e, [{"question": "Is it nice?", "category": "quality"}], img)
    with pytest.raises(ValueError, match="shape"):
        verify(sc, e, pr, np.zeros((4, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="oracle_json"):
        verify_json("not json", img)


def test_format_verdict_exact():
    text = format_verdict([("Is the square red?", 1), ("Is the background unchanged?", 0), ("Is it sharp?", 1)],
                          7.0, think="  source: white background; blue square.  ")
    assert text == (
        "source: white background; blue square.\n"
        '[{"question": "Is the square red?", "score": 1}, {"question": "Is the background unchanged?", "score": 0}, '
        '{"question": "Is it sharp?", "score": 1}]\n'
        '{"average_score": 0.67}\n'
        "<score>7</score>")
    assert format_verdict([("q?", 1)], 7.46).endswith('{"average_score": 1.00}\n<score>7.5</score>')
    assert format_verdict([("q?", 0)], 0).startswith('[{"question": "q?", "score": 0}]')
    for bad in ([], [("q?", 2)], [("", 1)]):
        with pytest.raises(ValueError):
            format_verdict(bad, 5)
    with pytest.raises(ValueError, match="score"):
        format_verdict([("q?", 1)], 11)


def test_normalize_category():
    assert PRINCIPLE_CATEGORIES == ("follow", "keep", "quality")
    assert normalize_category("Instruction Following") == "follow"
    assert normalize_category("feature preservation") == "keep"
    assert normalize_category("IMAGE QUALITY") == "quality"
    assert normalize_category(" keep ") == "keep"
    with pytest.raises(ValueError, match="Aesthetics"):
        normalize_category("Aesthetics")


def test_oracle_trace():
    vocab = set(vocabulary())
    rng = np.random.default_rng(6)
    for sc, e, pr in _tasks(25, seed=7):
        for g in ("correct", "partial", "degraded"):
            r = verify(sc, e, pr, make_candidate(rng, sc, e, g))
            t = oracle_trace(sc, None, pr, r)
            head, listing, avg, score = t.split("\n")
            assert head.startswith("source: ") and " edited: " in head
            assert [d["score"] for d in json.loads(listing)] == r.checks
            assert score.startswith("<score>") and score.endswith("</score>")
            assert set(words_of(t)) <= vocab, set(words_of(t)) - vocab
            if g == "correct":
                assert score == "<score>10</score>"
                if e.type in ("recolour", "remove"):   # what it sees = the known target scene
                    assert oracle_trace(sc, apply_edit(sc, e), pr, r) == t
    sc = Scene("white", [Shape("circle", "red", 20, 20, 9), Shape("square", "blue", 46, 44, 9)], 64)
    e = EditSpec("recolour", 0, {"color": "green"})
    pr = principles(sc, e)
    r = verify(sc, e, pr, render(apply_edit(sc, e)))
    assert oracle_trace(sc, None, pr, r).startswith(
        "source: white background; red circle, blue square. edited: white background; green circle, blue square.\n")


def test_oracle_trace_compare_line():
    """compare=True sets source and edited side by side, one item per background/shape kind, each ending in the
    comparison a check needs; the verdict lines are unchanged and every word stays in the sandbox vocabulary."""
    vocab = set(vocabulary())
    sc = Scene("white", [Shape("circle", "red", 20, 20, 9), Shape("square", "blue", 46, 44, 9)], 64)
    e = EditSpec("recolour", 0, {"color": "green"})
    pr = principles(sc, e)
    r = verify(sc, e, pr, render(apply_edit(sc, e)))
    plain, cmp = oracle_trace(sc, None, pr, r), oracle_trace(sc, None, pr, r, compare=True)
    head, line, rest = cmp.split("\n", 2)
    assert line == "source to edited: background white to white, same; circle red to green, not same; square blue to blue, same."
    assert plain == head + "\n" + rest
    # a removal, a changed background: "empty" and "not same"; a known edited Scene gives the same line
    e = EditSpec("remove", 1, {})
    pr = principles(sc, e)
    bad = Scene("black", [Shape("circle", "red", 20, 20, 9)], 64)
    r = verify(sc, e, pr, render(bad))
    line = oracle_trace(sc, None, pr, r, compare=True).split("\n")[1]
    assert line == "source to edited: background white to black, not same; circle red to red, same; square blue to empty, not same."
    assert oracle_trace(sc, bad, pr, r, compare=True).split("\n")[1] == line
    with pytest.raises(ValueError, match="compare=True"):
        oracle_trace(sc, "white background; red circle", pr, r, compare=True)
    # random tasks and grades: positions appear when the principles need them; the vocabulary holds
    rng = np.random.default_rng(11)
    for sc, e, pr in _tasks(20, seed=12):
        for g in ("correct", "over_edit", "no_edit"):
            r = verify(sc, e, pr, make_candidate(rng, sc, e, g))
            t = oracle_trace(sc, None, pr, r, compare=True)
            head, line, listing, _avg, _score = t.split("\n")
            assert line.startswith("source to edited: background ") and line.endswith(".")
            assert [d["score"] for d in json.loads(listing)] == r.checks
            assert set(words_of(t)) <= vocab, set(words_of(t)) - vocab
            if g == "no_edit" and e.type in ("recolour", "remove"):
                assert "not same" not in line, line


def test_sandbox_config_trace_compare_is_a_bool():
    from edit_rlhf.sandbox.config import SandboxConfig

    assert SandboxConfig(trace_compare=True).trace_compare is True
    with pytest.raises(ValueError, match="trace_compare"):
        SandboxConfig(trace_compare="yes")
