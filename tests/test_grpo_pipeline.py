"""The editor Flow-GRPO pipeline on local Ray: rollout pool, reward pool, DeepSpeed learner, MLflow."""
import os

import numpy as np
import pytest

pytestmark = pytest.mark.integration


def test_main_job_end_to_end_mlflow_and_diffusers_lora(ray_cluster, grpo_cfg, tiny_models):
    """The main job (shortened): ratio 1 on each step's first minibatch, MLflow holds params, metric series
    and images, and the saved LoRA reproduces the trained policy's ODE output in plain diffusers."""
    from mlflow.tracking import MlflowClient

    from edit_rlhf.grpo.plan import eval_seed
    from edit_rlhf.pipelines.grpo import run_grpo

    cfg = grpo_cfg("steps=3", "eval_every=2", "save_every=2", "data.eval_repeats=2")
    s = run_grpo(cfg, quiet=True)
    assert s["steps"] == 3 and s["policy_version"] == 3 and s["failed_rewards"] == 0
    assert s["ratio_first_max_dev"] < 1e-5  # learner log-probs == rollout log-probs before any update
    # the run's learning figure: final vs first evaluation, per prompt on the same prompts and seeds
    ch = s["eval_reward_change"]
    assert s["eval_steps"] == [0, 3] and ch["n"] == 4 and s["eval_repeats"] == 2
    assert ch["first"] == pytest.approx(s["eval_first"]["eval/reward"]) and ch["last"] == pytest.approx(
        s["eval_last"]["eval/reward"])
    assert ch["diff"] == pytest.approx(ch["last"] - ch["first"]) and ch["se"] > 0

    client = MlflowClient(s["tracking_uri"])
    run = client.get_run(s["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["algo.group_size"] == "4" and run.data.params["editor.resolution"] == "64"
    for key in ("reward/mean", "reward/std", "reward/oracle_score", "train/kl", "train/clip_frac",
                "train/ratio_mean", "time/generate_s", "time/learner_s", "time/sync_s", "throughput/samples_per_s"):
        assert len(client.get_metric_history(s["run_id"], key)) == 3, key
    assert [m.value for m in client.get_metric_history(s["run_id"], "policy_version")] == [1, 2, 3]
    assert client.get_metric_history(s["run_id"], "monitor/reward_judge_corr")  # reward vs the oracle judge
    # ... and inside each group (what the advantages see): the similarity reward against the oracle
    conc = [m.value for m in client.get_metric_history(s["run_id"], "monitor/within_group_concordance")]
    assert len(conc) == 3 and all(0.0 <= v <= 1.0 for v in conc), conc
    arts = {a.path for d in ("", "samples", "eval") for a in client.list_artifacts(s["run_id"], d or None)}
    assert any(p.startswith("samples/") and p.endswith(".png") for p in arts)
    assert any(p.startswith("eval/") and p.endswith(".png") for p in arts) and "config.json" in arts
    assert os.path.isdir(os.path.join(cfg.output_dir, "checkpoints", "step_00000002", "lora"))

    # The trained LoRA in plain diffusers reproduces the trained policy's ODE edit (eval prompt 0).
    import torch
    from diffusers import FluxKontextPipeline

    from edit_rlhf.data.prompts import EditPromptDataset

    assert s["final_lora"] == os.path.join(cfg.output_dir, "final_lora")  # a stable copy of the last step's LoRA
    saved = np.load(os.path.join(s["checkpoint"], "eval_edits.npz"))
    assert int(saved["policy_version"]) == 3
    assert list(saved["indices"][:4]) == [0, 0, 1, 1] and saved["images"].shape[0] == 8  # 4 prompts x 2 seeds
    ds = EditPromptDataset(cfg.data.eval)
    row = ds.row(0, ["source_image", "instruction"])
    pipe = FluxKontextPipeline.from_pretrained(tiny_models["editor"])
    pipe.set_progress_bar_config(disable=True)

    def edit():
        out = pipe(image=__import__("PIL.Image").Image.fromarray(row["source_image"]), prompt=row["instruction"],
                   height=64, width=64, num_inference_steps=cfg.sampling.eval_num_steps,
                   guidance_scale=cfg.editor.guidance_scale, max_sequence_length=cfg.editor.max_sequence_length,
                   generator=torch.Generator().manual_seed(eval_seed(cfg.seed, 0)), output_type="np",
                   max_area=64 * 64, _auto_resize=False).images[0]
        return (out * 255).round().astype(np.uint8)

    base = edit()
    pipe.load_lora_weights(s["final_lora"])
    trained = edit()
    assert np.abs(trained.astype(int) - saved["images"][0].astype(int)).max() <= 1
    assert np.abs(trained.astype(int) - base.astype(int)).max() > 0  # the LoRA changed the policy


def test_two_of_each_pool_ratio_sync_and_versions(ray_cluster, grpo_cfg, tiny_models):
    """2 rollout + 2 reward workers both serve; 2 learner ranks (ZeRO-2) keep ratio 1 on the first
    minibatch; after an update and a sync the rollout output for a fixed seed changes and the version rises.
    The hacking monitor's judge is the PQ judge on its own pool here (as on real data): it sees the edits of
    the configured groups every step."""
    import ray

    from edit_rlhf.pipelines.grpo import GRPOTrainer

    cfg = grpo_cfg("steps=3", "rollout.size=2", "reward.size=2", "learner.size=2", "algo.prompts_per_step=4",
                   "monitor.judge=pq", f"monitor.pq.path={tiny_models['rrm']}", "monitor.pq.backend=hf",
                   "monitor.pq.prompt.style=compact", "monitor.pq.sampling.max_tokens=8",
                   "monitor.pool.num_cpus=0.5", "monitor.groups_per_step=1")
    tr = GRPOTrainer(cfg, quiet=True)
    try:
        tr.setup()
        assert len({i["rank"] for i in tr.learner_info}) == 2

        def probe():
            meta, imgs = tr.rollout.actors[1].evaluate.options(num_returns=2).remote("eval", [0], [1234])
            return ray.get(meta), ray.get(imgs)

        m0, before = probe()
        assert m0["policy_version"] == 0
        m = tr.train_step(1)
        assert m["train/ratio_first_max_dev"] < 1e-5
        assert m["policy_version"] == 1 and m["train/grad_norm"] > 0
        m1, after = probe()
        assert m1["policy_version"] == 1
        assert np.abs(after.astype(int) - before.astype(int)).max() > 0
        for step in (2, 3):
            tr.train_step(step)
        assert min(tr.rollout.served) > 0 and min(tr.reward.served) > 0, (tr.rollout.served, tr.reward.served)
        assert tr.history[-1]["policy/rollout_version_lag"] == 0
        assert tr.judge_mode == "pq" and "monitor/judge_failed" in tr.history[-1]
        judged = ray.get(tr.monitor_pool.actors[0].info.remote())["scorer_info"]
        assert judged["edits"] == judged["judgements"] == 3 * cfg.algo.group_size  # 1 group per step, PQ only
    finally:
        tr.shutdown()


def test_corrupt_image_row_fails_naming_the_row(grpo_cfg, sandbox_dir, tmp_path):
    import datasets

    from edit_rlhf.data.prompts import DatasetError
    from edit_rlhf.pipelines.grpo import GRPOTrainer

    ds = datasets.load_from_disk(f"{sandbox_dir}/prompts_train").cast_column("source_image", datasets.Image(decode=False))
    rows = ds.to_list()
    rows[5]["source_image"] = {"bytes": b"\x89PNG\r\n\x1a\n not really a png", "path": None}
    bad = datasets.Dataset.from_list(rows, features=ds.features)
    bad.save_to_disk(str(tmp_path / "bad"))
    tr = GRPOTrainer(grpo_cfg(f"data.train={tmp_path}/bad"), quiet=True)
    with pytest.raises(DatasetError) as e:
        tr.setup()
    msg = str(e.value)
    assert "row 5" in msg and rows[5]["id"] in msg and "source_image" in msg


def test_cli_unknown_key_exits_with_the_key_named(capsys):
    from edit_rlhf.cli import main

    from conftest import TINY_CONFIG

    assert main(["grpo", "--config", TINY_CONFIG, "algo.gruop_size=3"]) == 2
    err = capsys.readouterr().err
    assert "algo.gruop_size" in err and "Traceback" not in err
