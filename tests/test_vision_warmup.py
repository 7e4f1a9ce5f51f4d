"""`edit-rlhf sandbox vision`: the vision tower learns from a throwaway attribute head; nothing else changes."""
import json
import os

import numpy as np
import pytest
import torch

from edit_rlhf.pipelines.sandbox_base.vision import (DEFECTS, AttributeHead, attribute_accuracy, attribute_targets,
                                                     run_vision_warmup, sample_images)
from edit_rlhf.sandbox.scene import SHAPE_COLORS, Scene, Shape


def test_targets_name_each_kind_absent_or_its_colour_and_the_defect():
    colors = list(SHAPE_COLORS)
    s = Scene("white", [Shape("circle", "red", 20, 20, 8), Shape("triangle", "blue", 44, 44, 8)])
    y = attribute_targets([s, Scene("black", [Shape("square", "green", 30, 30, 9)])], ["noise", "none"])
    assert y.tolist() == [[1 + colors.index("red"), 0, 1 + colors.index("blue"), DEFECTS.index("noise")],
                          [0, 1 + colors.index("green"), 0, 0]]


def test_sample_images_degrades_about_the_asked_fraction_and_repeats_per_seed():
    ims, scenes, defects = sample_images(np.random.default_rng([0, 3]), 200, 0.5)
    assert 0.35 < np.mean([d != "none" for d in defects]) < 0.65 and set(defects) == set(DEFECTS)
    again = sample_images(np.random.default_rng([0, 3]), 200, 0.5)
    assert np.array_equal(ims[7], again[0][7]) and defects == again[2]
    assert all(d == "none" for d in sample_images(np.random.default_rng(1), 20, 0.0)[2])


def test_accuracy_reports_each_attribute_beside_its_majority():
    y = torch.tensor([[1, 0, 0, 0], [2, 3, 0, 1], [0, 3, 4, 0]])
    head = AttributeHead(4, 3, len(SHAPE_COLORS))
    r = attribute_accuracy(head, torch.randn(3 * 5, 4), y)
    for k in ("circle_present", "square_color", "triangle_present", "defect"):
        assert 0 <= r[f"{k}/accuracy"] <= 1 and 0 < r[f"{k}/majority"] <= 1
    assert r["defect/majority"] == pytest.approx(2 / 3, abs=1e-3) and r["circle_color/majority"] == 0.5
    assert "triangle_color/accuracy" in r and 0 <= r["shapes_exact"] <= 1


def test_warmup_trains_the_vision_tower_only(tiny_models, tmp_path):
    from transformers import AutoModelForImageTextToText

    out = str(tmp_path / "vision")
    rec = run_vision_warmup(out, None, [f"init={tiny_models['rrm']}", "steps=3", "batch_size=4", "eval_n=8",
                                        "eval_every=0", "warmup_steps=1"], quiet=True)
    before = AutoModelForImageTextToText.from_pretrained(tiny_models["rrm"]).state_dict()
    after = AutoModelForImageTextToText.from_pretrained(out).state_dict()
    assert before.keys() == after.keys()
    vis = [k for k in before if ".visual." in f".{k}"]
    assert vis and any(not torch.equal(before[k], after[k]) for k in vis)
    assert all(torch.equal(before[k], after[k]) for k in before if k not in vis)
    assert os.path.isfile(os.path.join(out, "processor_config.json"))
    with open(os.path.join(out, "vision.json")) as f:
        saved = json.load(f)
    assert [c["step"] for c in saved["curve"]] == [0, 3] == [c["step"] for c in rec["curve"]]
    assert saved["curve"][-1]["train_loss"] > 0 and "defect/accuracy" in saved["curve"][-1]


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(Exception, match="degraded_frac"):
        run_vision_warmup(str(tmp_path / "v"), None, ["degraded_frac=1.5"], quiet=True)
    with pytest.raises(SystemExit, match="not a model folder"):
        run_vision_warmup(str(tmp_path / "v"), None, [f"init={tmp_path}"], quiet=True)
