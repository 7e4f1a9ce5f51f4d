"""Flow-GRPO learns: treatment vs a same-seed lr=0 control on the sandbox with the target-similarity reward.

A shorter version of benchmarks/learn_editor_grpo.py. The train set is exactly one step's prompts, so every
step sees the same sources and the control's curve is flat up to noise-seed variation; the treatment must
beat its first 20% by a margin the control does not reach, and the paired (same step, same seeds)
difference must be clearly positive.
"""
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def four_prompt_sandbox(tmp_path_factory):
    from edit_rlhf.sandbox.build import build_sandbox
    from edit_rlhf.sandbox.config import SandboxConfig

    out = str(tmp_path_factory.mktemp("sb4"))
    build_sandbox(out, SandboxConfig(seed=3, n_train=4, n_eval=4, n_pairs_train=8, n_pairs_eval=4))
    return out


def test_grpo_beats_lr0_control_on_target_similarity(ray_cluster, grpo_cfg, four_prompt_sandbox):
    from edit_rlhf.pipelines.grpo import GRPOTrainer
    from edit_rlhf.stats import paired_difference, windows

    runs = {}
    for name, lr in (("treatment", "1e-2"), ("control", "0")):
        cfg = grpo_cfg("steps=16", "eval_every=0", "save_every=0", f"optim.lr={lr}", "algo.prompts_per_step=4",
                       "algo.group_size=8", "algo.clip_range=1e-2", "reward.scorer=similarity",
                       f"data.train={four_prompt_sandbox}/prompts_train", "data.eval=null",
                       "tracking.log_images_every=100", f"output_dir={four_prompt_sandbox}/out_{name}")
        tr = GRPOTrainer(cfg, quiet=True)
        tr.run()
        runs[name] = [m["reward/mean"] for m in tr.history]
    t, c = windows(runs["treatment"]), windows(runs["control"])
    paired = paired_difference(runs["treatment"], runs["control"])
    assert runs["treatment"][0] == pytest.approx(runs["control"][0], abs=1e-9)  # same seeds, same start
    assert t["gain"] > c["gain"] + 0.001, (t, c)
    assert paired["diff"] > 0 and paired["z"] > 3, paired
