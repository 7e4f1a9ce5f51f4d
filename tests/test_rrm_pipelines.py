"""`edit-rlhf rrm-sft`, `rrm-gcpo` and `eval-rrm` end to end on local Ray (small settings): MLflow metrics,
HF-format checkpoints that load by path, resume in the same MLflow run yielding the same next steps as an
uninterrupted run, the GCPO diagnostics and version-checked syncs, and EditReward-Bench's layout.

GCPO starts from the shipped sandbox SFT checkpoint (models/sandbox/rrm_sft) so its traces parse; its rollout
engines use the HF backend here (the vLLM path is covered by test_rrm_learners.py, engines are slow to start).
"""
import json
import os

import numpy as np
import pytest

from conftest import ROOT

pytestmark = pytest.mark.integration

SFT_CKPT = os.environ.get("EDIT_RLHF_RRM_SFT", os.path.join(ROOT, "models", "sandbox", "rrm_sft"))


def mlflow_metric(tracking_dir, run_id, key):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tracking_dir}/mlflow.db")
    return [(m.step, m.value) for m in c.get_metric_history(run_id, key)]


def sft_cfg(tiny_models, sandbox_dir, tmp_path, *extra):
    from edit_rlhf.config import load_config
    from edit_rlhf.config.rrm_train import RRMSFTConfig

    return load_config(RRMSFTConfig, f"{ROOT}/configs/rrm_sft_sandbox.yaml", [
        f"model.path={tiny_models['rrm']}", f"data.train={sandbox_dir}/traces_train",
        f"data.eval={sandbox_dir}/traces_eval", f"data.pairs_eval={sandbox_dir}/pairs_eval", "data.eval_size=2",
        "data.pairs_eval_size=2", "eval.max_tokens=8", "batch_size=4", "log_every=2", "save_every=2",
        f"tracking.dir={tmp_path}/mlruns", "export_dir=null", *extra])


def test_rrm_sft_trains_exports_hf_and_resumes_like_an_uninterrupted_run(ray_cluster, tiny_models, sandbox_dir,
                                                                          tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from edit_rlhf.pipelines.rrm_sft import RRMSFTTrainer

    full = RRMSFTTrainer(sft_cfg(tiny_models, sandbox_dir, tmp_path, "steps=4", f"output_dir={tmp_path}/a",
                                 f"export_dir={tmp_path}/export"), quiet=True).run()
    assert full["steps"] == 4 and full["loss_last20"] < full["loss_first20"]
    for k in ("eval/traces/parse_rate", "eval/pairs/accuracy", "eval/pairs/accuracy_with_ties"):
        assert k in full["eval_last"]
    m = Qwen2_5_VLForConditionalGeneration.from_pretrained(f"{tmp_path}/export")  # HF format, by path
    assert m is not None and os.path.isfile(f"{tmp_path}/export/manifest.json")
    assert os.path.isfile(f"{tmp_path}/export/preprocessor_config.json") or \
        os.path.isfile(f"{tmp_path}/export/processor_config.json")
    # interrupted after step 2, then resumed: same MLflow run, same steps 3-4
    RRMSFTTrainer(sft_cfg(tiny_models, sandbox_dir, tmp_path, "steps=2", f"output_dir={tmp_path}/b"), quiet=True).run()
    res = RRMSFTTrainer(sft_cfg(tiny_models, sandbox_dir, tmp_path, "steps=4", f"output_dir={tmp_path}/b",
                                "resume=auto"), quiet=True).run()
    first = json.load(open(f"{tmp_path}/b/checkpoints/step_00000002/state.json"))
    assert res["run_id"] == first["mlflow_run_id"]
    la = mlflow_metric(f"{tmp_path}/mlruns", full["run_id"], "train/loss")
    lb = mlflow_metric(f"{tmp_path}/mlruns", res["run_id"], "train/loss")
    assert [s for s, _ in lb] == [2, 4]
    np.testing.assert_allclose([v for _, v in lb], [v for _, v in la], rtol=1e-5)


def gcpo_cfg(sandbox_dir, tmp_path, *extra):
    from edit_rlhf.config import load_config
    from edit_rlhf.config.rrm_train import RRMGCPOConfig

    return load_config(RRMGCPOConfig, f"{ROOT}/configs/rrm_gcpo_sandbox.yaml", [
        f"model.path={SFT_CKPT}", f"data.train={sandbox_dir}/pairs_train", f"data.eval={sandbox_dir}/pairs_eval",
        "data.eval_size=4", "algo.pairs_per_step=2", "algo.group_size=3", "algo.micro_batch_size=4",
        "rollout.engine.backend=hf", "rollout.max_tokens=320", "eval.sampling.max_tokens=320", "eval_every=0",
        "save_every=1", "optim.lr=1e-4", f"tracking.dir={tmp_path}/mlruns", *extra])


@pytest.mark.skipif(not os.path.isdir(SFT_CKPT), reason="needs the shipped SFT checkpoint models/sandbox/rrm_sft")
def test_rrm_gcpo_steps_syncs_logs_and_resumes(ray_cluster, sandbox_dir, tmp_path):
    from edit_rlhf.pipelines.rrm_gcpo import RRMGCPOTrainer

    full = RRMGCPOTrainer(gcpo_cfg(sandbox_dir, tmp_path, "steps=3", f"output_dir={tmp_path}/a"), quiet=True)
    s = full.run()
    h = full.history
    assert len(h) == 3 and s["eval_first"]["eval/pairs"] == 4
    for k in ("adv/zero_group_fraction", "adv/weighted", "trace/length_mean", "trace/parse_failure_rate",
              "reward/winner_mean", "reward/loser_mean", "adv/abs_mean", "score/winner_minus_loser"):
        assert k in h[0], k
    assert all(0 <= m["adv/zero_group_fraction"] <= 1 for m in h)
    trained = [m for m in h if "train/loss" in m]
    if trained:  # a step whose groups all had zero advantage skips the update (and the sync)
        m = trained[0]
        assert m["sync/version"] == m["rrm_version"] and m["time/sync_s"] > 0
        assert m["sync/probe_lp_absdiff_max"] < 2e-4  # HF engine and learner hold the same weights
        assert m["train/rollout_lp_absdiff_max"] < 2e-4  # ... and scored the sampled traces alike
    for k in ("eval/accuracy", "eval/accuracy_with_ties", "eval/parse_rate", "eval/accuracy_macro"):
        assert k in s["eval_last"]
    # the copy-the-source probe: each distinct held-out source scored once as its own edit
    assert 1 <= s["eval_last"]["eval/copy_source/n"] <= 4
    assert os.path.isfile(os.path.join(s["final_hf"], "config.json"))
    # interrupted after step 1, resumed: same MLflow run, steps 2-3 as in the uninterrupted run
    RRMGCPOTrainer(gcpo_cfg(sandbox_dir, tmp_path, "steps=1", f"output_dir={tmp_path}/b"), quiet=True).run()
    res = RRMGCPOTrainer(gcpo_cfg(sandbox_dir, tmp_path, "steps=3", f"output_dir={tmp_path}/b", "resume=auto"),
                         quiet=True)
    s2 = res.run()
    first = json.load(open(f"{tmp_path}/b/checkpoints/step_00000001/state.json"))
    assert s2["run_id"] == first["mlflow_run_id"] and s2["rrm_version"] == s["rrm_version"]
    for a, b in zip(h[1:], res.history[1:]):
        assert a["step"] == b["step"]
        for k in ("score/mean", "adv/abs_mean", "trace/length_mean"):
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9, nan_ok=True), k
        if "train/loss" in a:
            assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-4, abs=1e-7)


@pytest.mark.skipif(not os.path.isdir(SFT_CKPT), reason="needs the shipped SFT checkpoint models/sandbox/rrm_sft")
def test_rrm_gcpo_compares_groups_on_soft_scores(ray_cluster, sandbox_dir, tmp_path):
    """`algo.score_from=expected`: the rollout engine returns each trace's top log-probs and the groups are compared
    on the probability-weighted score: every parsed trace is soft-scored (`score/soft_rate` 1)."""
    from edit_rlhf.pipelines.rrm_gcpo import RRMGCPOTrainer

    tr = RRMGCPOTrainer(gcpo_cfg(sandbox_dir, tmp_path, "steps=1", "save_every=0", f"output_dir={tmp_path}/s",
                                 "algo.score_from=expected", "algo.top_logprobs=5", "data.eval=null"), quiet=True)
    tr.run()
    m = tr.history[0]
    assert m["trace/parse_failure_rate"] < 1 and m["score/soft_rate"] == pytest.approx(1.0)
    assert "adv/zero_group_fraction" in m and m["counters/traces_sampled"] == 12


def test_eval_rrm_on_editreward_bench_layout_with_the_hf_backend(ray_cluster, tiny_models, tmp_path):
    from test_dataset_dict_folders import editreward_bench_table

    from edit_rlhf.config import load_config
    from edit_rlhf.config.rrm_train import RRMEvalConfig
    from edit_rlhf.pipelines.eval_rrm import run_eval_rrm

    n = 8  # 4 pairs, each in two dimensions (the benchmark's one row per (pair, dimension))
    editreward_bench_table(64, key=[[f"a{i % 4}", f"b{i % 4}"] for i in range(n)],
                           instruction=["make the square red"] * n,
                           task_type=["color_alter", "subject-remove"] * 4,
                           dimension=["overall"] * 4 + ["consistency"] * 4, input_image=[30] * n,
                           output_images=[[200, 90]] * n).save_to_disk(str(tmp_path / "bench"))
    cfg = load_config(RRMEvalConfig, f"{ROOT}/configs/eval_rrm_sandbox.yaml", [
        f"engine.path={tiny_models['rrm']}", "engine.backend=hf", f"data.path={tmp_path}/bench",
        "data.format=editreward_bench", "eval.sampling.max_tokens=8", "eval.sampling.n=2",
        "eval.sampling.temperature=1.0", "eval.unparsed=lowest", f"output={tmp_path}/out.json",
        "data.dimensions=[overall,consistency]",
        f"tracking.dir={tmp_path}/mlruns"])
    out = run_eval_rrm(cfg, quiet=True)
    m = out["metrics"]
    # the random tiny RRM never parses: every image gets the lowest score, every pair ties
    assert m["pairs"] == 8 and m["k"] == 2 and m["parse_rate"] == 0.0
    assert m["images_scored"] == 8  # 4 pairs x 2 images, each scored once for both dimensions
    assert m["accuracy"] == 0.0 and m["accuracy_with_ties"] == 0.5 and m["tie_rate"] == 1.0
    assert m["category/overall/color_alter"] == 0.0 and m["category_n/consistency/subject-remove"] == 2
    bench = out["editreward_bench"]["dimensions"]  # the authors' metric: per dimension, mean over task types
    assert out["editreward_bench"]["headline_dimension"] == "overall" and list(bench) == ["consistency", "overall"]
    assert bench["overall"]["accuracy"] == 0.0 and bench["overall"]["task_types"] == 2
    saved = json.load(open(f"{tmp_path}/out.json"))
    assert len(saved["pairs"]) == 8 and saved["pairs"][0]["score_preferred"] == 0.0
    assert saved["pairs"][1]["dimension"] == "overall" and saved["pairs"][1]["task_type"] == "subject-remove"
