"""Pipelined GRPO steps (`algo.off_policy_steps=1`): the rollout pool samples step k+1 while the learner trains on
step k. The batch is one policy version old (its own behaviour log-probs in the ratio); the pipeline drains at
checkpoints and evaluations, so an interrupted run resumes exactly."""
import pytest

pytestmark = pytest.mark.integration


def _run(cfg):
    from edit_rlhf.pipelines.grpo import GRPOTrainer

    tr = GRPOTrainer(cfg, quiet=True)
    return tr, tr.run()


def test_off_policy_lags_one_version_drains_at_checkpoints_and_resumes_exactly(ray_cluster, grpo_cfg, tmp_path):
    from edit_rlhf.pipelines.grpo import LearnerFailed

    keys = ("reward/mean", "train/loss", "train/ratio_mean", "train/ratio_first_max_dev", "train/grad_norm")
    common = ("eval_every=0", "save_every=2", "data.eval=null", "optim.lr=1e-2", "algo.off_policy_steps=1")
    full, s = _run(grpo_cfg("steps=4", f"output_dir={tmp_path}/full", *common))
    h = full.history
    # steps 2 and 4 were sampled during the update before them; step 3 comes after the checkpoint at step 2
    assert [m["policy/rollout_version_lag"] for m in h] == [0, 1, 0, 1]
    assert [m["policy/lag_mean"] for m in h] == [0.0, 1.0, 0.0, 1.0]
    on_policy = [h[0], h[2]]
    assert all(m["train/ratio_first_max_dev"] < 1e-5 for m in on_policy)  # learner log-probs == behaviour's
    assert all(m["train/ratio_first_max_dev"] > 1e-5 for m in (h[1], h[3]))  # one update behind: ratio != 1
    assert s["failed_rewards"] == 0 and s["policy_version"] == 4 and s["off_policy_steps"] == 1
    assert s["counters"]["prompts_consumed"] == 4 * full.cfg.algo.prompts_per_step
    # a learner rank dies in step 3 while step 4 is being sampled; the run resumes from the step-2 checkpoint
    with pytest.raises(LearnerFailed, match="step 3"):
        _run(grpo_cfg("steps=4", f"output_dir={tmp_path}/resumed", *common,
                      "cluster.actor_env.EDIT_RLHF_FAULTS=learner-0:train:3"))
    part2, s2 = _run(grpo_cfg("steps=4", f"output_dir={tmp_path}/resumed", "resume=auto", *common))
    assert [m["step"] for m in part2.history] == [3, 4]
    for a, b in zip(h[2:], part2.history):
        for k in keys:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), (a["step"], k)
    assert s2["counters"]["samples_trained"] == s["counters"]["samples_trained"]


def test_off_policy_evaluation_sees_the_synced_policy(ray_cluster, grpo_cfg, tmp_path):
    """An evaluation step drains the pipeline: the evaluation runs on the policy the learner just produced, and
    the step after it is sampled on-policy."""
    _, s = _run(grpo_cfg("steps=3", "eval_every=1", "save_every=0", "data.eval_repeats=1", "data.eval_size=2",
                         "algo.off_policy_steps=1", f"output_dir={tmp_path}/out"))
    assert s["eval_steps"] == [0, 3] and s["policy_version"] == 3
    assert s["ratio_first_max_dev"] < 1e-5  # every step came after an evaluation: nothing was sampled early
