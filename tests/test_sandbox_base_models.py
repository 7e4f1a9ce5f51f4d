"""The shipped sandbox base models (models/sandbox): loaded by path through the normal loaders, the quality
gates re-measured on a small held-out set (a sandbox seed no model was trained on)."""
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "models", "sandbox")
N_HELD_OUT = 40  # 8 per edit type

pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(SHIPPED, "manifest.json")),
                                reason="no shipped sandbox models (edit-rlhf sandbox pretrain models/sandbox)")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread (shared 2-core machines: oversubscribed OpenMP made this 10x slower)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def manifest():
    with open(os.path.join(SHIPPED, "manifest.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def gates_cfg(manifest):
    from edit_rlhf.config.sft import GatesConfig

    return GatesConfig(**manifest["config"]["gates"])


@pytest.fixture(scope="module")
def held_out(manifest):
    from edit_rlhf.pipelines.sandbox_base.data import make_triples

    d = manifest["config"]["data"]
    assert d["eval_seed"] != d["train_seed"]
    return make_triples(d["eval_seed"], N_HELD_OUT, d["size"])


def test_manifest_records_the_run_and_sizes_are_small(manifest):
    for k in ("command", "seed", "wall_seconds", "figures", "gates", "vae", "editor", "vlm"):
        assert k in manifest, k
    assert manifest["gates_failed"] == []
    assert manifest["editor"]["steps"] > 0 and manifest["vlm"]["steps"] > 0 and manifest["vae"]["steps"] > 0
    total = sum(os.path.getsize(os.path.join(d, f)) for part in ("editor", "vlm")
                for d, _, fs in os.walk(os.path.join(SHIPPED, part)) for f in fs)
    assert total <= 20e6, f"shipped base models are {total / 1e6:.1f} MB"


def test_vae_reconstructs_held_out_images(held_out, gates_cfg):
    from edit_rlhf.pipelines.sandbox_base.gates import check_gates, measure_vae

    f = measure_vae(os.path.join(SHIPPED, "editor"), held_out)
    g = check_gates({"vae": f}, gates_cfg)
    assert g["vae_recon_mse"]["passed"], (f, g)
    # latents are normalised from data: FluxKontextPipeline's (z - shift) * scale is ~ N(0, 1)
    assert 0.1 < f["scaling_factor"] < 10


def test_editor_edits_beat_copy_source_and_depend_on_image_and_text(held_out, gates_cfg, manifest):
    from edit_rlhf.pipelines.sandbox_base.gates import check_gates, measure_editor

    cfg = manifest["config"]
    f = measure_editor(os.path.join(SHIPPED, "editor"), held_out, gates_cfg.eval_num_steps,
                       resolution=cfg["data"]["size"], max_sequence_length=cfg["editor"]["max_sequence_length"])
    g = check_gates({"editor": f}, gates_cfg)
    assert all(v["passed"] for v in g.values()), (g, f)


def test_vlm_describes_held_out_scenes(held_out, gates_cfg):
    from transformers import AutoProcessor

    from edit_rlhf.models.tiny import make_qwen_vl_processor, sandbox_words
    from edit_rlhf.pipelines.sandbox_base.gates import check_gates, measure_vlm

    path = os.path.join(SHIPPED, "vlm")
    # the saved processor is the factory's: RRM prompts tokenize exactly as with make_qwen_vl_processor
    saved, factory = AutoProcessor.from_pretrained(path), make_qwen_vl_processor(sandbox_words())
    text = "Is the circle red? <score>7</score> Are the other shapes unchanged?"
    assert saved.tokenizer(text)["input_ids"] == factory.tokenizer(text)["input_ids"]
    assert saved.tokenizer.chat_template == factory.tokenizer.chat_template
    f = measure_vlm(path, [(t.source, t.target) for t in held_out], n_one=N_HELD_OUT)
    g = check_gates({"vlm": f}, gates_cfg)
    assert all(v["passed"] for v in g.values()), (g, f)
