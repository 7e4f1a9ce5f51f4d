"""Linear probes of a Qwen2.5-VL vision tower (edit_rlhf.vlm.probe) and the benchmark's probe set."""
import os
import sys

import numpy as np
import pytest

from edit_rlhf.vlm.probe import linear_probe, vision_features

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_probe_reads_a_linearly_coded_label_and_not_noise():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    x = rng.normal(size=(600, 40))
    x[:, 7] += 5.0 * y  # the label, linearly coded in one feature among noise
    coded = linear_probe(x[:400], list(y[:400]), x[400:], list(y[400:]))
    assert coded["accuracy"] > 0.9 > coded["majority"]
    noise = rng.normal(size=(600, 40))
    blind = linear_probe(noise[:400], list(y[:400]), noise[400:], list(y[400:]))
    assert blind["accuracy"] < blind["majority"] + 0.12
    assert coded["classes"] == 3 and coded["n_eval"] == 200


def test_probe_labels_may_be_any_value_and_unseen_eval_labels_count_as_errors():
    x = np.array([[0.0], [0.1], [1.0], [1.1]] * 10)
    y = ["red", "red", "blue", "blue"] * 10
    r = linear_probe(x, y, np.array([[0.05], [1.05], [1.0]]), ["red", "blue", "green"])
    assert r["accuracy"] == pytest.approx(2 / 3)
    one = linear_probe(x, ["red"] * 40, x[:4], ["red", "red", "red", "blue"])
    assert one == {"accuracy": 0.75, "majority": 0.75, "n_train": 40, "n_eval": 4, "classes": 1}
    with pytest.raises(ValueError, match="differ in length"):
        linear_probe(x, y[:3], x, y)


def test_vision_features_are_the_merged_visual_tokens(tiny_models):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_models["rrm"])
    proc = AutoProcessor.from_pretrained(tiny_models["rrm"])
    rng = np.random.default_rng(1)
    ims = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    f = vision_features(model, proc, ims, batch_size=2)  # two batches
    px = proc.image_processor(images=ims[:1], return_tensors="pt")
    tokens = int(px["image_grid_thw"].prod()) // model.config.vision_config.spatial_merge_size ** 2
    assert f.shape == (3, tokens * model.config.text_config.hidden_size)
    assert not np.allclose(f[0], f[1])
    np.testing.assert_allclose(vision_features(model, proc, ims[:1]), f[:1], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="different patch counts"):
        vision_features(model, proc, [ims[0], rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)])


def test_probe_set_labels_each_image():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from vision_probe import DEFECTS, probe_set

    images, labels = probe_set(40, seed=3)
    assert len(images) == 40 and all(len(v) == 40 for v in labels.values())
    assert set(labels["defect"]) <= set(DEFECTS) and "none" in labels["defect"] and len(set(labels["defect"])) > 1
    for present, color in zip(labels["square_present"], labels["square_color"]):
        assert (color is not None) == present


@pytest.mark.integration
def test_editor_probe_set_labels_the_editors_edits_with_what_the_oracle_sees(sandbox_dir):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from vision_probe import editor_probe_set

    images, sources, labels, n_train = editor_probe_set(f"{sandbox_dir}/prompts_train", f"{sandbox_dir}/prompts_eval",
                                                        3, 2, samples=2, train_start=0)
    assert n_train == 6 and len(images) == len(sources) == 10 and all(len(v) == 10 for v in labels.values())
    assert images[0].shape == sources[0].shape == (64, 64, 3) and np.array_equal(sources[0], sources[1])
    for k in ("circle", "square", "triangle"):  # a colour exactly where the kind is seen
        assert [c is not None for c in labels[f"{k}_color"]] == labels[f"{k}_present"]
