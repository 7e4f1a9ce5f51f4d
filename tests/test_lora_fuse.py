"""Rollout actors merge the LoRA into the base weights at each sync (`lora.fuse_rollout`): the SDE rollout must
give the same images, latents and log-probs as the unmerged adapter, and every sync must start from the exact
base weights (no drift from merge/unmerge rounding)."""
import torch


def _state(rollout, seed):
    from edit_rlhf.models.lora import get_lora_state

    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * 0.05 for k, v in get_lora_state(rollout.editor.transformer).items()}


def test_fused_rollout_matches_the_unfused_one(grpo_cfg):
    from edit_rlhf.grpo.rollout import EditorRollout
    from edit_rlhf.models.lora import _lora_layers

    def make(fuse):
        cfg = grpo_cfg(f"lora.fuse_rollout={str(fuse).lower()}")
        return EditorRollout(cfg, {"train": cfg.data.train})

    plain, fused = make(False), make(True)
    base = {n: m.get_base_layer().weight.detach().clone() for n, m in _lora_layers(fused.editor.transformer)}
    for version, seed in ((1, 1), (2, 2)):  # two syncs: the second must replace the first delta, not add to it
        st = _state(plain, seed)
        plain.set_lora(st, version)
        fused.set_lora(st, version)
        assert fused.fused and not plain.fused and fused.version == version
        assert all(m.merged for _, m in _lora_layers(fused.editor.transformer))
        seeds = [11, 12, 13]
        m_a, img_a, a = plain.rollout("train", 0, seeds)
        m_b, img_b, b = fused.rollout("train", 0, seeds)
        assert (abs(img_a.astype(int) - img_b.astype(int))).max() <= 1
        torch.testing.assert_close(b["latents"], a["latents"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(b["log_probs"], a["log_probs"], atol=1e-4, rtol=1e-4)
        assert m_a["policy_version"] == m_b["policy_version"] == version
    fused.unfuse()
    for n, m in _lora_layers(fused.editor.transformer):
        assert torch.equal(m.get_base_layer().weight, base[n]), n  # the base is back bit for bit
        assert not m.merged
    # unmerged again, the same adapter weights: the same output as the actor that never fused
    _, img_c, c = fused.rollout("train", 0, [11, 12, 13])
    torch.testing.assert_close(c["log_probs"], a["log_probs"], atol=1e-4, rtol=1e-4)
