"""Editor SFT: flow-matching maths, overfitting a tiny case, 1 vs 2 DeepSpeed ranks, checkpoints, bad input."""
import os

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SFT_CONFIG = os.path.join(ROOT, "configs", "editor_sft_sandbox.yaml")


@pytest.fixture(scope="module", autouse=True)
def one_thread(tiny_models):
    """One torch thread (after the session's tiny-model build, which sets its own): on shared 2-core
    machines oversubscribed OpenMP made these steps 10-50x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------------------- pure maths
def test_flow_matching_path_and_target():
    from edit_rlhf.sft.flow_matching import flow_matching_loss, interpolate, velocity_target

    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    t = torch.tensor([0.0, 0.3, 1.0])
    xt = interpolate(x0, eps, t)
    assert torch.allclose(xt[0], x0[0]) and torch.allclose(xt[2], eps[2])
    h = 1e-3  # the target is the time derivative of the path
    fd = (interpolate(x0, eps, t + h) - interpolate(x0, eps, t)) / h
    assert torch.allclose(fd, velocity_target(x0, eps), atol=1e-3)
    assert flow_matching_loss(velocity_target(x0, eps), velocity_target(x0, eps)) == 0
    w = torch.ones(3, 5)
    p = torch.randn(3, 5, 4, generator=g)
    assert torch.allclose(flow_matching_loss(p, eps, w), flow_matching_loss(p, eps))


def test_timestep_shift_matches_the_pipeline_schedule(tiny_models):
    """Training times are shifted exactly as FluxKontextPipeline shifts its sigmas."""
    from edit_rlhf.models.kontext import KontextEditor
    from edit_rlhf.sft.editor_sft import sampler_mu
    from edit_rlhf.sft.flow_matching import sample_timesteps, time_shift

    ed = KontextEditor(tiny_models["editor"], 64)
    _, sigmas = ed.schedule(4)
    mu = sampler_mu(ed.pipe.scheduler.config, ed.image_seq_len)
    raw = torch.tensor(np.linspace(1.0, 0.25, 4), dtype=torch.float32)
    assert torch.allclose(time_shift(raw, mu), sigmas[:4], atol=1e-6)
    t = sample_timesteps(10000, torch.Generator().manual_seed(0), mu=mu, uniform_frac=0.1)
    assert 0 < float(t.min()) and float(t.max()) < 1
    assert float(t.median()) > 0.5  # the shift moves mass towards noise, like the sampler
    t2 = sample_timesteps(10000, torch.Generator().manual_seed(0), mu=mu, uniform_frac=0.1)
    assert torch.equal(t, t2)
    with pytest.raises(ValueError, match="logit_normal"):
        sample_timesteps(4, torch.Generator(), dist="beta")


def test_edit_region_weights():
    from edit_rlhf.sft.flow_matching import edit_region_weights

    src = torch.zeros(1, 4, 2)
    x0 = src.clone()
    x0[0, 1] = 1.0
    w = edit_region_weights(x0, src, 3.0, 0.1)
    assert w.tolist() == [[1.0, 4.0, 1.0, 1.0]]


def test_batch_plan_is_rank_independent():
    from edit_rlhf.sft.editor_sft import batch_indices

    a = np.concatenate([batch_indices(0, s, 4, 10) for s in range(5)])
    # epochs are permutations: 20 draws from 10 examples cover each exactly twice
    assert sorted(np.bincount(a, minlength=10).tolist()) == [2] * 10
    assert np.array_equal(batch_indices(0, 3, 4, 10), batch_indices(0, 3, 4, 10))


# ----------------------------------------------------------------------------------------- on Ray
@pytest.fixture(scope="module")
def triples_dir(tmp_path_factory):
    from edit_rlhf.pipelines.sandbox_base.data import write_prompts

    d = tmp_path_factory.mktemp("triples")
    write_prompts(str(d / "tiny"), seed=5, n=4)
    write_prompts(str(d / "eval"), seed=6, n=4, split="eval")
    return str(d)


def _cfg(tiny_models, triples_dir, tmp_path, *overrides):
    from edit_rlhf.config import load_config
    from edit_rlhf.config.sft import EditorSFTConfig

    base = [f"editor.path={tiny_models['editor']}", f"data.train={triples_dir}/tiny", f"data.eval={triples_dir}/eval",
            "data.eval_size=4", f"output_dir={tmp_path}/out", f"tracking.dir={tmp_path}/mlruns", "eval.probes=false",
            "eval_every=0"]
    return load_config(EditorSFTConfig, SFT_CONFIG, base + list(overrides))


@pytest.mark.integration
def test_sft_overfits_a_tiny_case(ray_cluster, tiny_models, triples_dir, tmp_path):
    from edit_rlhf.pipelines.editor_sft import EditorSFTTrainer

    cfg = _cfg(tiny_models, triples_dir, tmp_path, "mode=full", "steps=160", "log_every=20", "flow.batch_size=4",
               "optim.lr=5e-3", "flow.schedule=constant", "flow.warmup_steps=5")
    tr = EditorSFTTrainer(cfg, quiet=True)
    s = tr.run()
    losses = [m["train/loss"] for m in tr.history]
    assert s["steps"] == 160 and len(losses) == 8
    # random VAE latents are tiny, so the noise term leaves a floor (~0.55 here); from ~1.0 at the start
    assert np.mean(losses[-2:]) < 0.65 * losses[0], losses
    assert losses[-1] < losses[1] < losses[0], losses


@pytest.mark.integration
def test_resume_continues_the_same_run_with_the_same_steps(ray_cluster, tiny_models, triples_dir, tmp_path):
    """Steps 3-4 after a resume from the step-2 checkpoint equal those of an uninterrupted 4-step run."""
    from edit_rlhf.checkpoint import load_state
    from edit_rlhf.pipelines.editor_sft import EditorSFTTrainer

    common = ["mode=lora", "flow.batch_size=4", "log_every=1", "save_every=2", "optim.lr=1e-2", "data.eval=null"]
    ref = EditorSFTTrainer(_cfg(tiny_models, triples_dir, tmp_path / "a", *common, "steps=4"), quiet=True)
    ref.run()
    first = EditorSFTTrainer(_cfg(tiny_models, triples_dir, tmp_path / "b", *common, "steps=2"), quiet=True)
    first.run()
    state = load_state(os.path.join(first.ckpt.latest()))
    assert state["step"] == 2 and state["mlflow_run_id"] == first.tracker.run_id
    resumed = EditorSFTTrainer(_cfg(tiny_models, triples_dir, tmp_path / "b", *common, "steps=4", "resume=auto"),
                               quiet=True)
    s = resumed.run()
    assert s["steps"] == 4 and resumed.tracker.run_id == first.tracker.run_id
    losses = lambda tr: [m["train/loss"] for m in tr.history]  # noqa: E731
    assert len(losses(resumed)) == 4  # the history before the resume is kept
    assert losses(resumed)[2:] == pytest.approx(losses(ref)[2:], rel=1e-5, abs=1e-7)
    assert losses(resumed)[:2] == pytest.approx(losses(ref)[:2], rel=1e-6)


@pytest.mark.integration
def test_one_and_two_ranks_take_the_same_steps(ray_cluster, tiny_models, triples_dir, tmp_path):
    from edit_rlhf.cluster.pools import LearnerGroup
    from edit_rlhf.pipelines.driver import absolutize
    from edit_rlhf.pipelines.editor_sft import CORE, EditorSFTTrainer

    results = {}
    for k in (1, 2):
        cfg = _cfg(tiny_models, triples_dir, tmp_path, "mode=full", "flow.batch_size=4", f"learner.size={k}",
                   "steps=3", "optim.lr=1e-2")
        absolutize(cfg, EditorSFTTrainer.path_keys)
        group = LearnerGroup(f"sft{k}", CORE, cfg, cfg.learner)
        try:
            per_rank = group.broadcast("train_steps", 3)
        finally:
            group.shutdown()
        assert len(per_rank) == k
        for r in per_rank[1:]:  # the all-reduced loss is the same on every rank
            assert [m["loss"] for m in r] == pytest.approx([m["loss"] for m in per_rank[0]], rel=1e-6)
        results[k] = [m["loss"] for m in per_rank[0]]
    # same global batch, averaged gradients: step 1 (same weights) and steps 2-3 (after updates) agree
    assert results[1] == pytest.approx(results[2], rel=1e-4), results


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_checkpoint_reloads_in_plain_diffusers_and_reproduces_the_trained_editor(
        ray_cluster, tiny_models, triples_dir, tmp_path, mode):
    from diffusers import FluxKontextPipeline

    from edit_rlhf.data.prompts import EditPromptDataset
    from edit_rlhf.models.kontext import KontextEditor
    from edit_rlhf.pipelines.editor_sft import run_editor_sft
    from edit_rlhf.sft.editor_eval import probe_eval

    cfg = _cfg(tiny_models, triples_dir, tmp_path, f"mode={mode}", "steps=10", "log_every=5", "flow.batch_size=4",
               "optim.lr=1e-2")
    s = run_editor_sft(cfg, quiet=True)
    final = s["published"]  # output_dir/final: the last checkpoint's editor folder
    if mode == "full":
        pipe = FluxKontextPipeline.from_pretrained(final)
        base = FluxKontextPipeline.from_pretrained(tiny_models["editor"])
        changed = [not torch.equal(a, b) for a, b in zip(pipe.transformer.parameters(), base.transformer.parameters())]
        assert any(changed)
        ed = KontextEditor(final, 64, cfg.editor.max_sequence_length, cfg.editor.guidance_scale)
    else:
        assert os.path.isfile(os.path.join(final, "pytorch_lora_weights.safetensors"))
        ed = KontextEditor(tiny_models["editor"], 64, cfg.editor.max_sequence_length, cfg.editor.guidance_scale)
        ed.pipe.load_lora_weights(final)
    ds = EditPromptDataset(cfg.data.eval)
    rows = [ds.row(i, ["source_image", "instruction", "target_image"]) for i in range(4)]
    m = probe_eval(ed, [r["source_image"] for r in rows], [r["instruction"] for r in rows],
                   [r["target_image"] for r in rows], [cfg.eval.seed + i for i in range(4)], cfg.eval.num_steps,
                   probes=False)
    # the reloaded checkpoint gives the trained policy's held-out edits (pixel MSE up to rounding)
    assert m["matched/mse"] == pytest.approx(s["eval_last"]["eval/matched/mse"], abs=2e-5)
    assert s["eval_last"]["eval/matched/mse"] != pytest.approx(s["eval_first"]["eval/matched/mse"], abs=1e-7)


def test_cli_errors_name_the_key_or_column(tiny_models, sandbox_dir, tmp_path, capsys):
    from edit_rlhf.cli import main

    assert main(["editor-sft", "--config", SFT_CONFIG, "flow.bogus=1"]) == 2
    assert "flow.bogus" in capsys.readouterr().err
    assert main(["editor-sft", "--config", SFT_CONFIG, "learner.size=3", "--print-config"]) == 2
    assert "flow.batch_size" in capsys.readouterr().err
    # a dataset without target_image (preference pairs) is refused before any actor starts
    rc = main(["editor-sft", "--config", SFT_CONFIG, f"editor.path={tiny_models['editor']}",
               f"data.train={sandbox_dir}/pairs_train", "data.eval=null", f"tracking.dir={tmp_path}/ml"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "target_image" in err and "pairs_train" in err
    rc = main(["editor-sft", "--config", SFT_CONFIG, f"editor.path={tmp_path}/nothing"])
    assert rc == 2 and "editor.path" in capsys.readouterr().err
