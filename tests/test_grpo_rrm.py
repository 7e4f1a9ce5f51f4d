"""Editor GRPO with the Edit-RRM as the reward (`reward.scorer=rrm`): the main job end to end on vLLM reward
workers with MLflow, and reward workers killed mid-step (`ray.kill`) through the GRPO driver."""
import math

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def rrm_cfg(tiny_models, sandbox_dir, tmp_path):
    """A small GRPO config from configs/sandbox_tiny_rrm.yaml on the session's tiny models and sandbox."""
    from edit_rlhf.config import GRPOConfig, load_config

    from conftest import OLD_GRPO, ROOT

    def make(*overrides):
        base = [f"editor.path={tiny_models['editor']}", f"reward.rrm.path={tiny_models['rrm']}",
                f"data.train={sandbox_dir}/prompts_train", f"data.eval={sandbox_dir}/prompts_eval",
                f"output_dir={tmp_path}/out", f"tracking.dir={tmp_path}/mlruns", "prepare.build_missing=false",
                "data.eval_size=2", "algo.prompts_per_step=2", "algo.group_size=4", "tracking.log_images_every=1",
                "reward.rrm.sampling.max_tokens=24", "eval_probes=false", "sampling.num_steps=4",
                "sampling.train_timesteps=3", *OLD_GRPO]
        return load_config(GRPOConfig, f"{ROOT}/configs/sandbox_tiny_rrm.yaml", base + list(overrides))

    return make


def test_grpo_main_job_with_rrm_reward_on_vllm(ray_cluster, rrm_cfg):
    """`reward.scorer=rrm`: the editor is rewarded by the tiny RRM on a vLLM reward worker. The random RRM
    never writes a parsable verdict, so with `unparsed=lowest` every edit gets 0 and counts as a parse
    failure: the run completes and MLflow holds the parse-failure rate, the score distribution and the RRM's
    per-edit details."""
    from mlflow.tracking import MlflowClient

    from edit_rlhf.pipelines.grpo import run_grpo

    cfg = rrm_cfg("steps=2", "eval_every=0", "save_every=0", "reward.rrm.unparsed=lowest")
    s = run_grpo(cfg, quiet=True)
    assert s["steps"] == 2 and s["policy_version"] == 2 and s["failed_rewards"] == 0
    client = MlflowClient(s["tracking_uri"])
    run = client.get_run(s["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["reward.scorer"] == "rrm"
    assert run.data.params["reward.rrm.backend"] == "vllm" and run.data.params["reward.rrm.prompt.style"] == "compact"

    def hist(key):
        return [m.value for m in client.get_metric_history(s["run_id"], key)]

    assert hist("reward/parse_failure_rate") == [1.0, 1.0]
    assert hist("reward_detail/parse_ok") == [0.0, 0.0] and hist("reward_detail/n_samples") == [1.0, 1.0]
    for q in (10, 50, 90):
        assert hist(f"reward/p{q}") == [0.0, 0.0]
    assert hist("reward/mean") == [0.0, 0.0] and hist("reward/zero_std_groups") == [2, 2]
    assert 0 < hist("reward_detail/gen_tokens")[0] <= 24
    assert len(hist("eval/reward")) == 2  # start and end evaluations scored by the RRM too
    arts = {a.path for a in client.list_artifacts(s["run_id"], "samples")}
    assert any(p.endswith(".png") for p in arts)


def test_rrm_reward_worker_killed_mid_step(ray_cluster, rrm_cfg, monkeypatch):
    """Two RRM reward workers (HF backend: the fault path does not depend on the engine). `ray.kill` of a
    worker while it scores: its request is retried on the other and the step completes with every edit
    scored; when the last worker is killed mid-step the run stops with a PoolError naming the pool."""
    import ray

    import edit_rlhf.pipelines.grpo as grpo
    from edit_rlhf.cluster.pools import PoolError

    kill = {"target": None, "killed": []}
    real_stream = grpo.stream

    def stream_with_kill(jobs, rollout, reward, *args, **kwargs):
        def on_event(kind, job):
            t = kill["target"]
            if t is not None and t not in kill["killed"] and reward.inflight[t] > 0:
                ray.kill(reward.actors[t])  # while it holds an unfinished scoring request
                kill["killed"].append(t)
        return real_stream(jobs, rollout, reward, *args, on_event=on_event, **kwargs)

    monkeypatch.setattr(grpo, "stream", stream_with_kill)
    cfg = rrm_cfg("steps=3", "eval_every=0", "save_every=0", "data.eval=null", "reward.size=2",
                  "reward.rrm.backend=hf", "reward.rrm.unparsed=lowest", "reward.rrm.sampling.max_tokens=48",
                  "algo.prompts_per_step=4")
    tr = grpo.GRPOTrainer(cfg, quiet=True)
    try:
        tr.setup()
        m1 = tr.train_step(1)
        assert min(tr.reward.served) > 0  # both workers serve work
        kill["target"] = 0
        m2 = tr.train_step(2)
        assert kill["killed"] == [0]
        assert m2["faults/score_retries"] >= 1 and m2["reward/failed"] == 0  # every edit still scored (0, not NaN)
        assert tr.reward.alive() == [1]
        for m in (m1, m2):
            assert m["reward/parse_failure_rate"] == 1.0 and not math.isnan(m["reward/mean"])
        kill["target"] = 1
        with pytest.raises(PoolError, match="pool 'reward'"):
            tr.train_step(3)
        assert kill["killed"] == [0, 1]
    finally:
        tr.shutdown("FAILED")
