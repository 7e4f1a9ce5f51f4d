"""Faults during GRPO: a rollout actor, a reward actor and the driver die mid-step; resume equivalence;
pools resized mid-run. Faults are injected deterministically (edit_rlhf.faults, EDIT_RLHF_FAULTS)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cfg):
    from edit_rlhf.pipelines.grpo import GRPOTrainer

    tr = GRPOTrainer(cfg, quiet=True)
    s = tr.run()
    return tr, s


@pytest.mark.parametrize("off_policy", [0, 1])
def test_rollout_actor_killed_mid_step_is_restarted_resynced_and_nothing_is_lost(ray_cluster, grpo_cfg, tmp_path,
                                                                                 off_policy):
    marker = tmp_path / "fired"
    cfg = grpo_cfg("steps=3", "eval_every=0", "save_every=0", "data.eval=null", "rollout.size=2",
                   "rollout.max_restarts=2", "algo.prompts_per_step=4", f"algo.off_policy_steps={off_policy}",
                   f"cluster.actor_env.EDIT_RLHF_FAULTS=rollout-1:rollout:2:{marker}")
    tr, s = _run(cfg)
    assert marker.exists()  # the fault fired: rollout-1 died in the middle of its 2nd generation
    h = tr.history
    assert [m["reward/failed"] for m in h] == [0, 0, 0]  # every prompt of every step was generated and scored
    assert sum(m["faults/generate_retries"] for m in h) >= 1
    assert s["counters"]["samples_trained"] == 3 * 4 * 4 and s["counters"]["prompts_consumed"] == 3 * 4
    assert s["counters"]["actor_resyncs"] >= 1  # the restarted actor came back on policy v0 and was re-synced
    # off-policy, step 3 was sampled during step 2's update: one version behind
    assert h[-1]["pool/rollout_alive"] == 2 and h[-1]["policy/rollout_version_lag"] == off_policy
    assert sum(s["rollout_served"]) == 3 * 4  # the failed call is not counted: each prompt served once


def test_reward_actor_killed_mid_step_work_retried_on_the_other(ray_cluster, grpo_cfg, tmp_path):
    cfg = grpo_cfg("steps=2", "eval_every=0", "save_every=0", "data.eval=null", "reward.size=2",
                   "reward.max_restarts=0", "algo.prompts_per_step=4",
                   f"cluster.actor_env.EDIT_RLHF_FAULTS=reward-0:score:2:{tmp_path / 'fired'}")
    tr, s = _run(cfg)
    h = tr.history
    assert [m["reward/failed"] for m in h] == [0, 0]
    assert sum(m["faults/score_retries"] for m in h) == 1
    assert h[-1]["pool/reward_alive"] == 1  # no restarts allowed: the dead worker stays out
    assert sum(s["reward_served"]) == 2 * 4


def test_no_reward_worker_left_stops_with_a_clear_error(ray_cluster, grpo_cfg, tmp_path):
    from edit_rlhf.cluster.pools import PoolError
    from edit_rlhf.pipelines.grpo import GRPOTrainer

    cfg = grpo_cfg("steps=2", "eval_every=0", "save_every=0", "data.eval=null", "reward.size=1",
                   f"cluster.actor_env.EDIT_RLHF_FAULTS=reward-0:score:1:{tmp_path / 'fired'}")
    with pytest.raises(PoolError, match="reward"):
        GRPOTrainer(cfg, quiet=True).run()


def test_resume_equals_uninterrupted_run(ray_cluster, grpo_cfg, tmp_path):
    keys = ("reward/mean", "train/loss", "train/ratio_mean", "train/policy_loss", "train/grad_norm")
    common = ("eval_every=0", "save_every=2", "data.eval=null", "optim.lr=1e-2")
    full, _ = _run(grpo_cfg("steps=4", f"output_dir={tmp_path}/full", *common))
    part1, _ = _run(grpo_cfg("steps=2", f"output_dir={tmp_path}/resumed", *common))
    part2, s = _run(grpo_cfg("steps=4", f"output_dir={tmp_path}/resumed", "resume=auto", *common))
    assert part2.start_step == 3 and [m["step"] for m in part2.history] == [3, 4]
    assert s["run_id"] == part1.tracker.run_id  # the same MLflow run continues
    for a, b in zip(full.history[2:], part2.history):
        for k in keys:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), (a["step"], k)
    assert s["counters"]["samples_trained"] == full.counters["samples_trained"]


def test_driver_killed_mid_step_then_resumed_in_a_new_process(tiny_models, sandbox_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    from edit_rlhf.checkpoint import Checkpoints, load_state

    args = [sys.executable, "-m", "edit_rlhf", "grpo", "--config", os.path.join(ROOT, "configs", "sandbox_tiny.yaml"),
            "--quiet", f"editor.path={tiny_models['editor']}", f"data.train={sandbox_dir}/prompts_train",
            "data.eval=null", f"output_dir={tmp_path}/out", f"tracking.dir={tmp_path}/mlruns", "steps=4",
            "save_every=1", "prepare.build_missing=false", "algo.prompts_per_step=2", "algo.group_size=4",
            "cluster.num_cpus=8", "sampling.num_steps=4", "sampling.train_timesteps=3", "sampling.sde_steps=0"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(EDIT_RLHF_FAULTS="driver:step:3", RAY_AUTH_MODE="disabled")
    first = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode != 0  # died in step 3
    ck = Checkpoints(f"{tmp_path}/out")
    st = load_state(ck.latest())
    assert st["step"] == 2 and st["counters"]["samples_trained"] == 2 * 2 * 4
    env.pop("EDIT_RLHF_FAULTS")
    second = subprocess.run(args + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    st = load_state(ck.latest())
    assert st["step"] == 4 and st["mlflow_run_id"] == load_state(ck.resolve(f"{tmp_path}/out/checkpoints/step_00000002"))["mlflow_run_id"]
    c = st["counters"]
    assert c["samples_trained"] == 4 * 2 * 4 and c["prompts_consumed"] == 4 * 2  # nothing lost, nothing twice
    client = MlflowClient("sqlite:///" + f"{tmp_path}/mlruns/mlflow.db")
    run = client.get_run(st["mlflow_run_id"])
    steps = sorted({m.step for m in client.get_metric_history(st["mlflow_run_id"], "counters/samples_trained")})
    assert steps == [1, 2, 3, 4], (sorted(run.data.metrics)[:5], run.info)
    assert client.get_run(st["mlflow_run_id"]).info.status == "FINISHED"


def test_learner_killed_mid_step_stops_cleanly_and_the_run_resumes(ray_cluster, grpo_cfg, tmp_path):
    """A learner rank dies in step 3: the run stops with an error naming the step-2 checkpoint and the resume
    command (no half-written checkpoint); resuming from it finishes the run in the same MLflow run."""
    from edit_rlhf.checkpoint import Checkpoints, load_state
    from edit_rlhf.pipelines.grpo import GRPOTrainer, LearnerFailed

    common = ["steps=3", "save_every=1", "eval_every=0", "data.eval=null"]
    cfg = grpo_cfg(*common, "cluster.actor_env.EDIT_RLHF_FAULTS=learner-0:train:3")
    with pytest.raises(LearnerFailed) as e:
        GRPOTrainer(cfg, quiet=True).run()
    ck = Checkpoints(cfg.output_dir)
    assert "learner failed at step 3" in str(e.value) and ck.latest() in str(e.value) and "resume" in str(e.value)
    st = load_state(ck.latest())
    assert st["step"] == 2 and not any(n.startswith(".tmp") for n in os.listdir(ck.root))
    s = GRPOTrainer(grpo_cfg(*common, "resume=auto"), quiet=True).run()
    assert s["policy_version"] == 3 and s["run_id"] == st["mlflow_run_id"]


@pytest.mark.parametrize("off_policy", [0, 1])
def test_pool_resize_mid_run(ray_cluster, grpo_cfg, off_policy):
    """Resize requests are applied between steps; off-policy, the batch sampled during the last update is kept
    and the next one is sampled by the resized pool."""
    from edit_rlhf.cluster.control import request_scale
    from edit_rlhf.pipelines.grpo import GRPOTrainer

    cfg = grpo_cfg("steps=4", "eval_every=0", "data.eval=null", "rollout.size=1", "algo.prompts_per_step=4",
                   f"algo.off_policy_steps={off_policy}")
    tr = GRPOTrainer(cfg, quiet=True)
    try:
        tr.setup()
        m1 = tr.train_step(1)
        request_scale(cfg.output_dir, {"rollout": 2})
        m2 = tr.train_step(2)
        m3 = tr.train_step(3)
        request_scale(cfg.output_dir, {"rollout": 1, "reward": 2})
        m4 = tr.train_step(4)
    finally:
        tr.shutdown()
    assert (m1["pool/rollout_size"], m2["pool/rollout_size"], m4["pool/rollout_size"]) == (1, 2, 1)
    assert m4["pool/reward_size"] == 2
    assert m3["pool/rollout_1_served"] > 0  # the added actor, synced to the current policy, took work
    assert all(m["reward/failed"] == 0 for m in (m1, m2, m3, m4))
    assert [m["policy/rollout_version_lag"] for m in (m1, m2, m3, m4)] == [0] + [off_policy] * 3
    assert all(m["throughput/rollout_samples_per_s"] > 0 for m in (m1, m2, m3, m4))


def test_main_job_settings_keep_ratio_one_and_resume_exactly(ray_cluster, grpo_cfg, tmp_path):
    """The main job's GRPO settings (an SDE window of 2 trained steps, KL to the base, one start noise per group,
    global std, cosine lr): ratio 1 at every step's first minibatch, and an interrupted run resumed from its
    checkpoint repeats the uninterrupted one (the lr schedule continues where it stopped)."""
    from edit_rlhf.pipelines.grpo import LearnerFailed

    keys = ("reward/mean", "train/loss", "train/ratio_mean", "train/kl", "train/grad_norm", "train/lr")
    common = ("eval_every=0", "save_every=2", "data.eval=null", "optim.lr=1e-2", "sampling.num_steps=8",
              "sampling.sde_steps=2", "sampling.train_timesteps=2", "sampling.same_noise_in_group=true",
              "algo.global_std=true", "algo.beta=0.01", "schedule.kind=cosine")
    full, _ = _run(grpo_cfg("steps=4", f"output_dir={tmp_path}/full", *common))
    assert all(m["train/ratio_first_max_dev"] < 1e-5 for m in full.history)
    assert full.history[0]["train/kl"] >= 0 and full.history[-1]["train/lr"] < full.history[0]["train/lr"]
    # interrupted in step 3 of the same 4-step run (a 2-step run would have its own cosine over 2 steps)
    with pytest.raises(LearnerFailed):
        _run(grpo_cfg("steps=4", f"output_dir={tmp_path}/resumed", *common,
                      "cluster.actor_env.EDIT_RLHF_FAULTS=learner-0:train:3"))
    part2, _ = _run(grpo_cfg("steps=4", f"output_dir={tmp_path}/resumed", "resume=auto", *common))
    assert [m["step"] for m in part2.history] == [3, 4]
    for a, b in zip(full.history[2:], part2.history):
        for k in keys:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), (a["step"], k)
