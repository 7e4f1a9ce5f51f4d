"""Perception-first stage of the sandbox RRM (pipelines/sandbox_base/perception.py)."""
import json
import os

import numpy as np
import torch
import pytest


def test_observation_scores_split_source_and_edited_parts_per_grade():
    from edit_rlhf.pipelines.sandbox_base.perception import observation_scores, split_observation

    gold = ["source: white background; red circle. edited: white background; blue circle.",
            "source: gray background; red square. edited: gray background; red square; noisy."]
    replies = ["source: white background; red circle. edited: white background; red circle.",
               "source: gray background; red square. edited: gray background; red square; noisy."]
    assert split_observation(gold[1]) == ("gray background; red square", "gray background; red square; noisy")
    assert split_observation("garbage") == (None, None)
    r = observation_scores(replies, gold, ["correct", "degraded"])
    assert r["source_exact"] == 1.0 and r["edited_exact"] == 0.5 and r["exact"] == 0.5
    assert r["edited_exact_by_grade"] == {"correct": 0.0, "degraded": 1.0}


def test_examples_are_seeded_graded_candidates_with_the_trace_observation():
    from edit_rlhf.pipelines.sandbox_base.perception import held_out, train_batch, split_observation
    from edit_rlhf.sandbox.config import SandboxConfig

    sb = SandboxConfig()
    a, b = train_batch(sb, 7, 3, 4), train_batch(sb, 7, 3, 4)
    assert [e.messages[-1]["content"] for e in a] == [e.messages[-1]["content"] for e in b]
    assert all(np.array_equal(x.images[1], y.images[1]) for x, y in zip(a, b))
    c = train_batch(sb, 7, 4, 4)
    assert [e.messages[-1]["content"] for e in a] != [e.messages[-1]["content"] for e in c]
    ev = held_out(sb, 24)
    assert all(split_observation(e.messages[-1]["content"])[1] for e, _ in ev)
    assert len({g for _, g in ev}) >= 4  # several candidate grades, not only correct edits


def test_perception_command_trains_with_more_image_tokens_and_records_its_curve(tiny_models, tmp_path):
    from transformers import AutoProcessor

    from edit_rlhf.cli import main

    out = str(tmp_path / "eyes")
    rc = main(["sandbox", "perception", out, f"init={tiny_models['rrm']}", "steps=4", "eval_every=2", "eval_n=3",
               "batch_size=2", "eval_max_tokens=8", "image_min_pixels=16384", "--quiet"])
    assert rc == 0
    rec = json.load(open(os.path.join(out, "perception.json")))
    assert [c["step"] for c in rec["curve"]] == [0, 2, 4] and rec["curve"][-1]["n"] == 3
    proc = AutoProcessor.from_pretrained(out)
    x = proc.image_processor(images=[np.zeros((64, 64, 3), np.uint8)], return_tensors="pt")
    merge = proc.image_processor.merge_size
    assert int(x["image_grid_thw"].prod()) // merge ** 2 == 64  # 64 visual tokens per 64x64 image (factory: 16)
    with pytest.raises(SystemExit, match="not a model folder"):
        main(["sandbox", "perception", out, f"init={tmp_path}/nope", "--quiet"])


def test_perception_on_a_frozen_tower_trains_the_language_model_only(tiny_models, tmp_path):
    from safetensors.torch import load_file

    from edit_rlhf.cli import main

    out = str(tmp_path / "eyes")
    rc = main(["sandbox", "perception", out, "--config", "configs/sandbox_perception_vision.yaml",
               f"init={tiny_models['rrm']}", "steps=2", "eval_every=0", "eval_n=2", "batch_size=2",
               "eval_max_tokens=4", "--quiet"])
    assert rc == 0
    load = lambda d: {k: v for f in sorted(os.listdir(d)) if f.endswith(".safetensors")
                      for k, v in load_file(os.path.join(d, f)).items()}
    before, after = load(tiny_models["rrm"]), load(out)
    vis = [k for k in before if ".visual." in k or k.startswith("visual.")]
    assert vis and all(torch.equal(before[k], after[k]) for k in vis)
    assert any(not torch.equal(before[k], after[k]) for k in before if k not in vis)
