"""GRPO evaluation and training knobs as pure functions: per-prompt paired comparison, evaluation seeds with
repeats, the SDE window, the lr schedule, and a summary line that leads with the evaluation and its noise."""

import numpy as np
import pytest
import torch


def test_paired_prompts_mean_se_z_and_nan_prompts():
    from edit_rlhf.stats import paired_prompts

    r = paired_prompts([3.0, 5.0, 4.0, 6.0], [2.0, 5.0, 3.0, 4.0])  # differences 1, 0, 1, 2
    assert r["diff"] == pytest.approx(1.0) and r["n"] == 4 and r["dropped"] == 0
    assert r["se"] == pytest.approx(np.std([1, 0, 1, 2], ddof=1) / 2)
    assert r["z"] == pytest.approx(1.0 / r["se"])
    r = paired_prompts([1.0, float("nan"), 2.0, 4.0], [0.0, 1.0, 2.0, 1.0])  # a failed score drops its prompt
    assert r["n"] == 3 and r["dropped"] == 1 and r["diff"] == pytest.approx(4 / 3)
    assert paired_prompts([1.0, 1.0], [1.0, 1.0])["z"] == 0.0
    with pytest.raises(ValueError, match="equal-length"):
        paired_prompts([1.0, 2.0], [1.0])


def test_eval_seed_repeat_zero_is_the_single_seed_and_repeats_differ():
    from edit_rlhf.grpo.plan import eval_seed

    assert eval_seed(0, 5) == int(np.random.SeedSequence([0, 10 ** 6, 5]).generate_state(1)[0])  # unchanged
    assert eval_seed(0, 5, 0) == eval_seed(0, 5)
    seeds = {eval_seed(0, i, k) for i in range(8) for k in range(4)}
    assert len(seeds) == 32


def test_sde_window_config_and_steps_after_the_window_are_deterministic():
    from edit_rlhf.algorithms.sampler import sample_sde
    from edit_rlhf.config import GRPOConfig, load_config
    from edit_rlhf.config.load import ConfigError

    from conftest import TINY_CONFIG

    cfg = load_config(GRPOConfig, TINY_CONFIG, ["sampling.num_steps=8", "sampling.sde_steps=2",
                                                "sampling.train_timesteps=2"])
    assert cfg.sampling.stochastic_steps() == 2
    assert load_config(GRPOConfig, TINY_CONFIG, ["sampling.num_steps=8", "sampling.sde_steps=0"]
                       ).sampling.stochastic_steps() == 7  # 0 = Flow-GRPO: all but the last step
    with pytest.raises(ConfigError, match="train_timesteps"):
        load_config(GRPOConfig, TINY_CONFIG, ["sampling.sde_steps=2", "sampling.train_timesteps=3"])
    with pytest.raises(ConfigError, match="sde_steps"):
        load_config(GRPOConfig, TINY_CONFIG, ["sampling.num_steps=4", "sampling.sde_steps=4"])

    ts = torch.tensor([1000.0, 750.0, 500.0, 250.0])
    sig = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])

    def vel(x, t, cond):
        return x * 0.5 + 0.1

    x0 = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(0))
    gens = lambda s: [torch.Generator().manual_seed(s + i) for i in range(2)]  # noqa: E731
    a = sample_sde(vel, x0, None, ts, sig, 0.9, 2, 2, gens(1))
    b = sample_sde(vel, x0, None, ts, sig, 0.9, 2, 2, gens(1))
    assert torch.equal(a.final, b.final) and a.log_probs.shape == (2, 2)
    # the window's last state determines the final latent: the steps after it add no noise
    from edit_rlhf.algorithms.flow_grpo import ode_step

    x = a.latents[:, -1]
    for i in (2, 3):
        x = ode_step(vel(x, None, None), x, sig[i], sig[i + 1])
    assert torch.allclose(x, a.final)


def test_schedule_constant_cosine_and_zero_lr_control():
    from edit_rlhf.config.schema import ScheduleConfig
    from edit_rlhf.schedule import schedule_lr

    const = ScheduleConfig(warmup_steps=0, kind="constant", min_lr_ratio=0.0)
    assert [schedule_lr(1e-3, i, 10, const) for i in (0, 9)] == [1e-3, 1e-3]
    cos = ScheduleConfig(warmup_steps=0, kind="cosine", min_lr_ratio=0.0)
    assert schedule_lr(1e-3, 0, 100, cos) == pytest.approx(1e-3)
    assert schedule_lr(1e-3, 50, 100, cos) == pytest.approx(0.5e-3)
    assert schedule_lr(1e-3, 100, 100, cos) == pytest.approx(0.0, abs=1e-12)
    assert schedule_lr(0.0, 3, 100, cos) == 0.0  # the lr=0 control stays at 0


def test_summary_line_leads_with_the_evaluation_and_its_noise():
    from edit_rlhf.pipelines.grpo import summary_line

    ch = {"first": 2.64, "last": 2.90, "diff": 0.26, "se": 0.09, "z": 2.9, "n": 64}
    s = {"steps": 60, "seconds": 200.0, "setup_seconds": 20.0, "eval_prompts": 64, "eval_repeats": 4,
         "eval_reward_change": dict(ch), "eval_oracle_change": dict(ch), "reward_first20": 2.9,
         "reward_last20": 2.7, "oracle_first20": 2.9, "oracle_last20": 2.7, "policy_version": 60, "run_id": "r",
         "final_lora": "x"}
    line = summary_line(s)
    parts = line.split(" | ")
    assert parts[1].startswith("eval reward 2.64 -> 2.9 (+0.26 ± 0.09 paired SE, z +2.9)") and "64 held-out" in parts[1]
    assert parts[2].startswith("train reward") and "noisy" in parts[2]
    assert "oracle" not in parts[1].replace("eval reward", "")  # the reward is the oracle: not said twice
    s["eval_oracle_change"] = {**ch, "first": 2.5, "last": 2.4, "diff": -0.1, "z": -1.1}  # e.g. an RRM reward
    assert "oracle 2.5 -> 2.4 (-0.1" in summary_line(s).split(" | ")[1]


def test_hacking_gap_is_reward_gain_minus_oracle_gain_in_control_std_units():
    from edit_rlhf.stats import hacking_gap

    rc, oc = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0]          # control std: reward 1.29, oracle 2.58
    rt = [r + 1.29099 for r in rc]                                 # reward +1 control std on every prompt
    g = hacking_gap(rt, rc, oc, oc)                                # oracle unchanged: the reward's gain is not real
    assert g["reward_gain_std_units"] == pytest.approx(1.0, abs=1e-4) and g["oracle_gain_std_units"] == 0.0
    assert g["gap"] == pytest.approx(1.0, abs=1e-4)
    ot = [o + 2.58199 for o in oc]                                 # the oracle confirms the same gain: no gap
    assert hacking_gap(rt, rc, ot, oc)["gap"] == pytest.approx(0.0, abs=1e-4)
