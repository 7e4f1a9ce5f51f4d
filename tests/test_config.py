"""Config loading: schema defaults <- YAML <- overrides; errors name the key."""
import os

import pytest

from edit_rlhf.config import ConfigError, GRPOConfig, flatten, load_config, to_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "sandbox_tiny.yaml")
PROD = os.path.join(ROOT, "configs", "flux_kontext_dev.yaml")


def test_embedded_default_loads_and_overrides_apply():
    cfg = load_config(GRPOConfig, TINY, ["algo.group_size=4", "optim.lr=0", "reward.scorer=oracle"])
    assert cfg.algo.group_size == 4 and cfg.optim.lr == 0.0 and cfg.reward.scorer == "oracle"
    assert cfg.editor.resolution == 64 and cfg.learner.zero_stage == 2


def test_production_recipe_has_the_paper_settings():
    c = load_config(GRPOConfig, PROD)
    assert (c.lora.rank, c.lora.alpha) == (64, 128)
    assert c.editor.resolution == 512 and c.editor.guidance_scale == 2.5 and c.editor.dtype == "bfloat16"
    assert (c.sampling.num_steps, c.sampling.train_timesteps, c.sampling.eval_num_steps) == (6, 5, 28)
    assert c.sampling.noise_level == 0.9 and c.algo.group_size == 24 and c.algo.beta == 0.04
    assert c.optim.lr == 3e-4


@pytest.mark.parametrize("override,key", [
    (["algo.gruop_size=8"], "algo.gruop_size"),
    (["nonsense=1"], "nonsense"),
    (["algo.group_size=eight"], "algo.group_size"),
    (["algo.group_size=1"], "algo.group_size"),
    (["reward.scorer=magic"], "reward.scorer"),
    (["learner.zero_stage=3"], "learner.zero_stage"),
    (["sampling.train_timesteps=8"], "sampling.train_timesteps"),  # >= num_steps (8)
    (["learner.size=3"], "algo"),
    (["editor.resolution=72"], "editor.resolution"),
])
def test_bad_keys_and_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(GRPOConfig, TINY, override)
    assert f"'{key}" in str(e.value)


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(f"_base_: {TINY}\nalgo:\n  group_sise: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(GRPOConfig, str(p))
    assert "algo.group_sise" in str(e.value) and "bad.yaml" in str(e.value)


def test_base_inheritance_and_missing_required(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"_base_: {TINY}\nsteps: 3\n")
    assert load_config(GRPOConfig, str(child)).steps == 3
    with pytest.raises(ConfigError, match="editor.path"):
        load_config(GRPOConfig, None, ["data.train=x"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(GRPOConfig, TINY, ["steps"])


def test_flatten_for_mlflow():
    flat = flatten(to_dict(load_config(GRPOConfig, TINY)))
    assert flat["algo.group_size"] == 8 and "lora.target_modules" in flat
