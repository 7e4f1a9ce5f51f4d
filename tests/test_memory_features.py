"""Memory switches of real-scale runs, checked on the tiny models: gradient checkpointing changes no gradient,
text encoders can live on the CPU with a prompt cache, sliced/tiled VAE decoding gives the same images."""
import numpy as np
import pytest
import torch


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_checkpointing_keeps_the_grpo_loss_and_its_gradients(tiny_models):
    """The GRPO learner's loss through the Kontext transformer (LoRA on), with and without checkpointing."""
    from diffusers import FluxTransformer2DModel

    from edit_rlhf.grpo.learner import grpo_loss
    from edit_rlhf.models.kontext import KontextCondition
    from edit_rlhf.models.lora import add_lora
    from edit_rlhf.models.memory import checkpointed_modules, enable_checkpointing

    torch.manual_seed(0)
    tr = FluxTransformer2DModel.from_pretrained(tiny_models["editor"], subfolder="transformer")
    add_lora(tr, 4, 8, ["attn.to_q", "attn.to_k", "ff.net.2", "proj_mlp"], "gaussian", 0)
    for n, p in tr.named_parameters():  # a non-zero B so that the adapters change the output
        if "lora_B" in n:
            p.data.normal_(0, 0.05)
    c_in = tr.config.in_channels
    b, length, s = 3, 16, 8
    batch = {"x": torch.randn(b, length, c_in), "x_next": torch.randn(b, length, c_in),
             "old_log_prob": torch.zeros(b), "adv": torch.tensor([1.0, -0.5, 0.2]),
             "timestep": torch.tensor([900.0, 700.0, 500.0]), "sigma": torch.tensor([0.9, 0.7, 0.5]),
             "sigma_next": torch.tensor([0.7, 0.5, 0.3]), "sigma_max": 0.9, "noise_level": 0.9,
             "cond": KontextCondition(torch.randn(b, s, tr.config.joint_attention_dim),
                                      torch.randn(b, tr.config.pooled_projection_dim), torch.zeros(s, 3),
                                      torch.randn(b, length, c_in), torch.zeros(2 * length, 3))}

    def run():
        tr.zero_grad(set_to_none=True)
        loss, _ = grpo_loss(tr, batch, 2.5, 1e-3, 0.04, reference=lambda: _Off(tr))
        loss.backward()
        return float(loss), _grads(tr)

    class _Off:
        def __init__(self, m):
            self.m = m

        def __enter__(self):
            self.m.disable_adapters()

        def __exit__(self, *a):
            self.m.enable_adapters()

    plain_loss, plain = run()
    n = enable_checkpointing(tr)
    assert n == 1 and len(checkpointed_modules(tr)) == 1  # the transformer checkpoints each of its blocks
    ckpt_loss, ckpt = run()
    assert ckpt_loss == pytest.approx(plain_loss, abs=1e-6) and plain.keys() == ckpt.keys() and plain
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], atol=1e-6, rtol=1e-5)


def test_checkpointing_keeps_the_rrm_gradients(tiny_models):
    """The Qwen2.5-VL RRM (full fine-tune and LoRA, as `prepare` sets them up): the same loss and gradients."""
    from edit_rlhf.models.memory import checkpointed_modules, enable_checkpointing
    from edit_rlhf.rrm_train.model import load_rrm
    from edit_rlhf.vlm.sft import prepare_model

    ids = torch.randint(0, 200, (2, 24))
    for mode in ("full", "lora"):
        torch.manual_seed(0)
        model, _ = load_rrm(tiny_models["rrm"], "float32", "cpu")
        model, _ = prepare_model(model, mode, freeze_vision=True, lora_rank=4, lora_alpha=8)
        model.train()

        def run():
            model.zero_grad(set_to_none=True)
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
            loss.backward()
            return float(loss), _grads(model)

        plain_loss, plain = run()
        assert enable_checkpointing(model) >= model.config.text_config.num_hidden_layers
        assert checkpointed_modules(model)
        ckpt_loss, ckpt = run()
        assert ckpt_loss == pytest.approx(plain_loss, abs=1e-6) and plain.keys() == ckpt.keys() and plain, mode
        for k in plain:
            torch.testing.assert_close(ckpt[k], plain[k], atol=1e-6, rtol=1e-5)


def test_text_encoders_on_cpu_prompt_cache_and_vae_slicing(tiny_models):
    from edit_rlhf.models.kontext import KontextEditor

    src = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    base = KontextEditor(tiny_models["editor"], 64, 32)
    lean = KontextEditor(tiny_models["editor"], 64, 32, text_encoders="cpu", prompt_cache=2, vae_slicing=True)
    assert lean.placement == {"transformer": "device", "vae": "device", "text_encoder": "cpu",
                              "text_encoder_2": "cpu"}
    assert lean.pipe.vae.use_slicing and not base.pipe.vae.use_slicing
    words = ["make the square red", "remove the circle", "make the square red"]
    a = base.condition([src] * 3, words)
    b = lean.condition([src] * 3, words)
    for f in ("prompt_embeds", "pooled", "text_ids", "img_ids"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    torch.testing.assert_close(a.image_latents, b.image_latents, atol=1e-5, rtol=1e-5)  # sliced VAE encode
    assert lean.prompt_stats == {"hits": 1, "misses": 2}
    lean.condition([src], ["remove the circle"])
    assert lean.prompt_stats == {"hits": 2, "misses": 2}
    lean.condition([src], ["move the triangle"])  # a third instruction evicts the least recently used
    assert list(lean._prompts) == ["remove the circle", "move the triangle"]
    z = torch.randn(3, base.image_seq_len, base.num_channels * 4)
    diff = np.abs(base.decode(z).astype(int) - lean.decode(z).astype(int))
    assert diff.max() <= 1  # slicing decodes image by image: the same images (up to float rounding)
    tiled = KontextEditor(tiny_models["editor"], 64, 32, vae_tiling=True)  # tiles approximate: only shapes agree
    assert tiled.pipe.vae.use_tiling and tiled.decode(z).shape == (3, 64, 64, 3)
