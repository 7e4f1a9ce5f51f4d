"""`edit-rlhf sandbox vision`: the vision tower learns from a throwaway attribute head; nothing else changes."""
import json
import os

import numpy as np
import pytest
import torch

from edit_rlhf.pipelines.sandbox_base.vision import (DEFECTS, AttributeHead, attribute_accuracy, attribute_targets,
                                                     candidate_pool, head_loss, run_vision_warmup, sample_images,
                                                     scene_seen, target_sizes)
from edit_rlhf.sandbox.scene import BACKGROUNDS, LOCATIONS, SHAPE_COLORS, Scene, Shape


def test_targets_name_each_kind_absent_or_its_colours_and_place_then_background_and_defect():
    colors, bgs = list(SHAPE_COLORS), list(BACKGROUNDS)
    s = Scene("white", [Shape("circle", "red", 12, 12, 8), Shape("triangle", "blue", 50, 50, 8)])
    half = {"background": "black", "defects": ["noisy"],
            "shapes": [{"kind": "square", "color": "green", "color2": "red", "cx": 32, "cy": 32},
                       {"kind": "circle", "color": None, "color2": None, "cx": None, "cy": None}]}  # circle gone
    y = attribute_targets([scene_seen(s, "blur"), half])
    assert y.shape == (2, len(target_sizes())) and len(target_sizes()) == 11
    assert y[0].tolist() == [1 + colors.index("red"), 0, 1 + LOCATIONS.index("top left"), 0, 0, 0,
                             1 + colors.index("blue"), 0, 1 + LOCATIONS.index("bottom right"),
                             bgs.index("white"), DEFECTS.index("blur")]
    assert y[1].tolist() == [0, 0, 0, 1 + colors.index("green"), 1 + colors.index("red"), 1 + LOCATIONS.index("centre"),
                             0, 0, 0, bgs.index("black"), DEFECTS.index("noise")]


def test_sample_images_degrades_about_the_asked_fraction_and_repeats_per_seed():
    ims, seens = sample_images(np.random.default_rng([0, 3]), 200, 0.5)
    defects = attribute_targets(seens)[:, -1]
    assert 0.35 < float((defects > 0).float().mean()) < 0.65 and set(defects.tolist()) == {0, 1, 2, 3}
    again = sample_images(np.random.default_rng([0, 3]), 200, 0.5)
    assert np.array_equal(ims[7], again[0][7]) and seens == again[1]
    assert all(not s["defects"] for s in sample_images(np.random.default_rng(1), 20, 0.0)[1])


def test_candidate_pool_targets_come_from_what_the_oracle_sees():
    images, seens = candidate_pool(200, seed=0)
    assert len(images) == 200 and images[0].shape == (64, 64, 3) and images[0].dtype == np.uint8
    y = attribute_targets(seens)
    assert (y[:, [1, 4, 7]] > 0).any(), "some half-recoloured shape among 200 graded edits (6 with seed 0)"
    assert (y[:, -1] > 0).any(), "some degraded edit"
    assert candidate_pool(3, seed=0)[1] == seens[:3]


def test_accuracy_reports_each_attribute_beside_its_majority():
    y = attribute_targets([scene_seen(Scene("white", [Shape("circle", "red", 12, 12, 8)]), "none"),
                           scene_seen(Scene("gray", [Shape("circle", "blue", 12, 12, 8)]), "noise"),
                           scene_seen(Scene("white", [Shape("square", "red", 40, 40, 8)]), "none")])
    head = AttributeHead(4, target_sizes())
    r = attribute_accuracy(head, torch.randn(3 * 5, 4), y)
    for k in ("circle_present", "circle_color", "circle_place", "square_present", "background", "defect"):
        assert 0 <= r[f"{k}/accuracy"] <= 1 and 0 < r[f"{k}/majority"] <= 1
    assert r["defect/majority"] == pytest.approx(2 / 3, abs=1e-3) and r["circle_color/majority"] == 0.5
    assert "triangle_color/accuracy" not in r and 0 <= r["shapes_exact"] <= 1


def test_warmup_trains_the_vision_tower_only(tiny_models, tmp_path):
    from transformers import AutoModelForImageTextToText

    out = str(tmp_path / "vision")
    rec = run_vision_warmup(out, None, [f"init={tiny_models['rrm']}", "steps=3", "batch_size=4", "eval_n=8",
                                        "eval_every=0", "warmup_steps=1", "candidate_frac=0.5",
                                        "candidate_pool=8"], quiet=True)
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
    assert "candidates/shapes_exact" in saved["curve"][-1]


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(Exception, match="degraded_frac"):
        run_vision_warmup(str(tmp_path / "v"), None, ["degraded_frac=1.5"], quiet=True)
    with pytest.raises(SystemExit, match="not a model folder"):
        run_vision_warmup(str(tmp_path / "v"), None, [f"init={tmp_path}"], quiet=True)


@pytest.mark.integration
def test_editor_pool_labels_the_editors_own_edits_with_what_the_oracle_sees(sandbox_dir):
    from edit_rlhf.config.sft import VisionWarmupConfig
    from edit_rlhf.pipelines.sandbox_base.editor_pairs import scored_edits
    from edit_rlhf.pipelines.sandbox_base.vision import editor_pool

    cfg = VisionWarmupConfig(editor_samples=3)
    images, seens, sources = editor_pool(cfg, f"{sandbox_dir}/prompts_train", 4, 2, seed=0)
    assert len(images) == len(seens) == len(sources) == 6 and images[0].shape == sources[0].shape == (64, 64, 3)
    assert np.array_equal(sources[0], sources[2]) and not np.array_equal(sources[0], sources[3])  # 3 edits a prompt
    # the same edits and verdicts as the editor-pairs builder samples (same editor, seeds and oracle)
    groups = list(scored_edits(f"{sandbox_dir}/prompts_train", cfg.editor_config, None, 4, 2, 3, 0, {}))
    assert [np.array_equal(a, b) for a, b in zip(images, [im for g in groups for im in g["images"]])] == [True] * 6
    assert seens == [r.detail["seen"] for g in groups for r in g["results"]]
    assert attribute_targets(seens).shape == (6, len(target_sizes()))


@pytest.mark.integration
def test_warmup_with_editor_edits_evaluates_them_held_out(tiny_models, sandbox_dir, tmp_path):
    rec = run_vision_warmup(str(tmp_path / "v"), None, [
        f"init={tiny_models['rrm']}", "steps=2", "batch_size=8", "eval_n=4", "eval_every=0", "warmup_steps=1",
        "editor_frac=1.0", f"editor_prompts={sandbox_dir}/prompts_train", "editor_start=0", "editor_n_prompts=2",
        "editor_samples=2", f"editor_eval_prompts={sandbox_dir}/prompts_eval"], quiet=True)
    last = rec["curve"][-1]
    assert [c["step"] for c in rec["curve"]] == [0, 2]
    assert "editor/shapes_exact" in last and "editor/defect/accuracy" in last and last["train_loss"] > 0


def test_editor_and_candidate_fractions_may_not_exceed_a_batch(tmp_path):
    with pytest.raises(Exception, match="candidate_frac \\+ editor_frac"):
        run_vision_warmup(str(tmp_path / "v"), None, ["candidate_frac=0.6", "editor_frac=0.6"], quiet=True)
    with pytest.raises(Exception, match="editor_samples"):
        run_vision_warmup(str(tmp_path / "v"), None, ["editor_samples=0"], quiet=True)


def test_pair_head_reads_source_and_edit_tokens_at_the_same_position():
    from edit_rlhf.pipelines.sandbox_base.vision import PairHead

    torch.manual_seed(0)
    head = PairHead(4, target_sizes())
    src, edit = torch.randn(2 * 3, 4), torch.randn(2 * 3, 4)
    out = head((src, edit), 2)
    assert [o.shape for o in out] == [(2, n) for n in target_sizes()]
    # the same edit with another source gives other logits: the source is read
    assert not torch.allclose(out[0], head((torch.randn(2 * 3, 4), edit), 2)[0])
    y = attribute_targets([scene_seen(Scene("white", [Shape("circle", "red", 12, 12, 8)]))] * 2)
    assert float(head_loss(head, (src, edit), y)) > 0
