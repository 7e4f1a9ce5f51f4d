"""Sandbox dataset build: columns, counts, ties, label noise, determinism, config validation."""
import json

import datasets as ds
import numpy as np
import pytest

from edit_rlhf.sandbox.build import TIE_MARGIN, build_sandbox, make_candidates, make_pairs, make_prompt
from edit_rlhf.sandbox.candidates import GRADES
from edit_rlhf.sandbox.config import SandboxConfig
from edit_rlhf.sandbox.edits import EDIT_TYPES
from edit_rlhf.sandbox.oracle import verify_json

COLUMNS = {
    "prompts_train": ["id", "source_image", "instruction", "principles", "target_image", "edit_type", "oracle"],
    "candidates": ["id", "prompt_id", "split", "edited_image", "grade", "checks", "oracle_score"],
    "pairs_train": ["id", "prompt_id", "source_image", "instruction", "principles", "image_a", "image_b", "preferred",
                    "score_a", "score_b", "grade_a", "grade_b", "label_flipped"],
    "traces_train": ["id", "prompt_id", "source_image", "instruction", "principles", "edited_image", "grade",
                     "trace_text", "checks", "oracle_score"],
}
COLUMNS["prompts_eval"], COLUMNS["pairs_eval"], COLUMNS["traces_eval"] = (
    COLUMNS["prompts_train"], COLUMNS["pairs_train"], COLUMNS["traces_train"])
TINY = dict(n_train=8, n_eval=4, n_pairs_train=16, n_pairs_eval=8, candidates_per_prompt=4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("sandbox")
    manifest = build_sandbox(out, SandboxConfig(seed=3, **TINY))
    return out, manifest, {n: ds.load_from_disk(str(out / n)) for n in COLUMNS}


def test_columns_and_counts(tiny):
    out, manifest, d = tiny
    assert {n: d[n].column_names for n in COLUMNS} == COLUMNS
    expect = {"prompts_train": 8, "prompts_eval": 4, "candidates": 48, "pairs_train": 16, "pairs_eval": 8,
              "traces_train": 32, "traces_eval": 16}
    assert {n: len(d[n]) for n in COLUMNS} == expect == manifest["counts"]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["config"]["n_train"] == 8 and manifest["version"]
    assert sum(manifest["grades"].values()) == 48 and set(manifest["grades"]) <= set(GRADES)
    assert manifest["edit_types"]["train"] == {t: (2 if t in ("recolour", "remove", "move") else 1) for t in EDIT_TYPES}
    for n in COLUMNS:
        assert len(set(d[n]["id"])) == len(d[n])


def test_rows(tiny):
    _, manifest, d = tiny
    p = d["prompts_train"][0]
    assert p["id"] == "train-000000" and p["source_image"].size == (64, 64) and p["target_image"].mode == "RGB"
    assert all(set(q) == {"question", "category"} for q in p["principles"])
    assert p["edit_type"] in EDIT_TYPES and any(w in p["instruction"] for w in ("the", "a"))
    # the stored oracle record re-scores the stored target image as perfect
    assert verify_json(p["oracle"], np.asarray(p["target_image"])).score == 10.0
    eval_ids = set(d["prompts_eval"]["id"])
    assert set(d["pairs_eval"]["prompt_id"]) <= eval_ids
    assert set(d["pairs_train"]["prompt_id"]) <= set(d["prompts_train"]["id"])
    assert set(d["candidates"]["split"]) == {"train", "eval"}
    for split in ("train", "eval"):
        for r in d[f"pairs_{split}"]:
            assert abs(r["score_a"] - r["score_b"]) >= TIE_MARGIN            # no tied pairs
            better = "a" if r["score_a"] > r["score_b"] else "b"
            assert (r["preferred"] == better) != r["label_flipped"]
        assert sum(d[f"pairs_{split}"]["label_flipped"]) == manifest["flipped_labels"][split]
    t = d["traces_train"][0]
    assert t["trace_text"].startswith("source: ") and t["trace_text"].endswith("</score>")
    assert len(t["checks"]) == len(t["principles"])


def _raw(path):
    """A dataset as plain Python rows, images as PNG bytes."""
    d = ds.load_from_disk(str(path))
    for col, f in d.features.items():
        if isinstance(f, ds.Image):
            d = d.cast_column(col, ds.Image(decode=False))
    return d.to_list()


def test_deterministic(tiny, tmp_path):
    out, manifest, _ = tiny
    again = build_sandbox(tmp_path / "a", SandboxConfig(seed=3, **TINY))
    for n in COLUMNS:
        assert _raw(out / n) == _raw(tmp_path / "a" / n), n
    drop = lambda m: {k: v for k, v in m.items() if k != "wall_time_s"}   # noqa: E731
    assert drop(again) == drop(manifest)
    build_sandbox(tmp_path / "b", SandboxConfig(seed=4, **TINY))
    assert _raw(out / "prompts_train") != _raw(tmp_path / "b" / "prompts_train")
    with pytest.raises(ValueError, match="overwrite"):
        build_sandbox(tmp_path / "b", SandboxConfig(seed=4, **TINY))
    build_sandbox(tmp_path / "b", SandboxConfig(seed=3, **TINY), overwrite=True)
    assert _raw(out / "pairs_eval") == _raw(tmp_path / "b" / "pairs_eval")


def test_label_noise_rate_and_no_ties():
    cfg = SandboxConfig(seed=1, n_train=100, n_eval=1, label_noise=0.3, n_pairs_train=500)
    prompts = [make_prompt(cfg, "train", i) for i in range(cfg.n_train)]
    cands = {p["id"]: make_candidates(cfg, p) for p in prompts}
    pairs, ties, flipped = make_pairs(cfg, "train", prompts, cands, cfg.n_pairs_train)
    assert len(pairs) == 500 and flipped == sum(p["label_flipped"] for p in pairs)
    assert abs(flipped / 500 - 0.3) < 0.07
    assert all(abs(p["score_a"] - p["score_b"]) >= TIE_MARGIN for p in pairs)
    assert np.mean([p["preferred"] == "a" for p in pairs]) == pytest.approx(0.5, abs=0.1)
    with pytest.raises(ValueError, match="n_pairs_train"):
        make_pairs(cfg, "train", prompts[:2], cands, 50)


@pytest.mark.parametrize("field,value", [
    ("seed", -1), ("size", 16), ("size", 300), ("n_train", 0), ("n_eval", 0), ("edit_types", []),
    ("edit_types", ["recolour", "explode"]), ("edit_types", ["move", "move"]), ("candidates_per_prompt", 1),
    ("label_noise", 0.7), ("label_noise", "high"), ("n_pairs_train", -5), ("n_pairs_eval", 1.5),
])
def test_config_validation(field, value):
    with pytest.raises(ValueError, match=field):
        SandboxConfig(**{field: value})
