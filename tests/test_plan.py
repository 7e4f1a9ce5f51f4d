"""`edit-rlhf plan`: activation figures checked against real-width FLUX blocks run on the CPU, the shipped production
configs fit their GPUs, and a config that cannot fit exits non-zero naming the pool."""
import json
import os

import pytest
import torch

from conftest import ROOT

PRODUCTION = ["flux_kontext_dev_rrm7b.yaml", "flux_kontext_dev.yaml", "rrm_sft_qwen7b.yaml", "rrm_gcpo_qwen7b.yaml",
              "principles_vlm.yaml", "eval_editor_gedit.yaml"]
IMG, TXT = 96, 32  # few tokens: the blocks are real width (3072, 24 heads), the sequence is short


def _kontext_arch():
    from edit_rlhf.plan.models import ARCH_DIR

    with open(os.path.join(ARCH_DIR, "flux1-kontext-dev", "transformer", "config.json")) as f:
        return json.load(f)


def _allocator_bytes_per_token(fn, tokens: int) -> float:
    """Bytes the CPU allocator hands out during `fn()` and does not get back before it returns (what the forward
    keeps for the backward, plus its output), from the profiler's memory events: independent of autograd's
    saved-tensor bookkeeping that the planner uses."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    kept = sum(e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage and e.cpu_parent is None)
    del out
    return kept / tokens


@pytest.mark.parametrize("kind", ["double", "single"])
def test_real_width_block_activations_match_the_planner(kind):
    """One real-width FLUX.1-Kontext block on the CPU in bf16: the allocator's bytes per token with and without
    checkpointing; checkpointed <= 1/4 of plain, and the planner's meta-device figure within 25 % of each."""
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock
    from torch.utils.checkpoint import checkpoint

    from edit_rlhf.plan.planner import flux_block_per_token

    torch.manual_seed(0)
    arch = _kontext_arch()
    d, heads, hd = arch["num_attention_heads"] * arch["attention_head_dim"], arch["num_attention_heads"], arch[
        "attention_head_dim"]
    with torch.device("meta"):
        block = (FluxTransformerBlock if kind == "double" else FluxSingleTransformerBlock)(d, heads, hd)
    block = block.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.02)
    t = IMG + TXT
    x = torch.randn(1, IMG, d, dtype=torch.bfloat16, requires_grad=True)
    c = torch.randn(1, TXT, d, dtype=torch.bfloat16, requires_grad=True)
    temb = torch.randn(1, d, dtype=torch.bfloat16)
    rope = (torch.randn(t, hd), torch.randn(t, hd))
    plain = _allocator_bytes_per_token(lambda: block(x, c, temb, image_rotary_emb=rope), t)
    ckpt = _allocator_bytes_per_token(lambda: checkpoint(block.__call__, x, c, temb, rope, use_reentrant=False), t)
    planned = flux_block_per_token(arch, kind, IMG, TXT, checkpointing=False)
    planned_ckpt = flux_block_per_token(arch, kind, IMG, TXT, checkpointing=True)
    print(f"\n[{kind} block] measured {plain / 1024:.1f} KiB/token plain, {ckpt / 1024:.1f} checkpointed; planner "
          f"{planned / 1024:.1f} / {planned_ckpt / 1024:.1f}")
    assert ckpt <= plain / 4
    assert abs(planned - plain) <= 0.25 * plain
    assert abs(planned_ckpt - ckpt) <= 0.25 * ckpt
    # the planner's figure does not depend on the sequence length it is measured at (fused attention: O(T))
    assert flux_block_per_token(arch, kind, 4 * IMG, 4 * TXT, checkpointing=False) == pytest.approx(planned, rel=0.02)


def test_production_configs_fit_and_an_unfit_one_names_its_pool(capsys):
    """Every shipped production config plans with every pool under its GPU memory; without gradient
    checkpointing the GRPO learner's micro-batch of 8 does not fit and the plan says so and exits 1."""
    from edit_rlhf.cli import main

    for name in PRODUCTION:
        assert main(["plan", "--config", f"{ROOT}/configs/{name}"]) == 0, capsys.readouterr()
        out = capsys.readouterr().out
        assert "every pool fits" in out and "NO" not in out, out
    rc = main(["plan", "--config", f"{ROOT}/configs/flux_kontext_dev_rrm7b.yaml", "learner.gradient_checkpointing=false"])
    cap = capsys.readouterr()
    assert rc == 1
    assert "pool 'learner' needs" in cap.err and "gpu_memory_gb=80" in cap.err


def test_plan_numbers_follow_the_setup_code(tmp_path):
    """The same set-up code as the pools: LoRA targets change the trainable count, text encoders on CPU leave
    the rollout GPU, ZeRO partitions the optimizer; the RRM weight sync reports bytes and copies."""
    from edit_rlhf.plan.run import run_plan

    cfg = f"{ROOT}/configs/flux_kontext_dev.yaml"
    base = run_plan(cfg)
    pools = {p.name: p for p in base.pools}
    small = run_plan(cfg, ["lora.target_modules=[attn.to_q]", "editor.text_encoders=device", "learner.size=4",
                           "algo.prompts_per_step=24"])
    sp = {p.name: p for p in small.pools}
    assert 0 < sp["learner"].trainable < pools["learner"].trainable
    t5 = 4.76e9 * 2  # T5-XXL encoder parameters x bf16
    assert sp["rollout"].items["weights"] - pools["rollout"].items["weights"] > 0.9 * t5
    ratio = (pools["learner"].items["optimizer"] / pools["learner"].trainable) / (
        sp["learner"].items["optimizer"] / sp["learner"].trainable)
    assert ratio == pytest.approx(0.5, rel=0.01)  # 8 ranks vs 4: half the optimizer state per rank and parameter
    gcpo = run_plan(f"{ROOT}/configs/rrm_gcpo_qwen7b.yaml")
    sync = gcpo.facts["weight_sync"]
    assert sync["chosen"] == "nccl" and 13e9 < sync["weights_bytes"] < 17e9  # 7B language model in bf16
    assert sync["nccl"]["copies"] < sync["object_store"]["copies"]
    assert sync["nccl"]["bytes_moved"] < sync["object_store"]["bytes_moved"]
