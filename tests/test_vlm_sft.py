"""The reusable VLM SFT core: assistant-only labels, mm_token_type_ids, batched vision attention, training."""
import numpy as np
import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread(tiny_models):
    """One torch thread (after the session's tiny-model build, which sets its own): on shared 2-core
    machines oversubscribed OpenMP made these steps 10-50x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def vlm(tiny_models):
    from edit_rlhf.pipelines.sandbox_base.vlm import load_vlm

    torch.manual_seed(0)
    return load_vlm(tiny_models["rrm"])


def _img(seed, size=64):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_labels_cover_only_assistant_tokens(vlm):
    from edit_rlhf.vlm.chat import IGNORE, ChatExample, collate, user_assistant

    _, proc = vlm
    tok = proc.tokenizer
    one = user_assistant([_img(0)], "Describe the image.", "white background; red circle")
    multi = ChatExample([
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Is the circle red?"}]},
        {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "and the square?"},
        {"role": "assistant", "content": "blue square"},
    ], [_img(1), _img(2)])
    b = collate(proc, [one, multi])
    assert b["mm_token_type_ids"].shape == b["input_ids"].shape
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    assert torch.equal(b["mm_token_type_ids"].bool(), b["input_ids"] == image_id)
    lab = b["labels"]
    # labelled positions hold their input ids; everything else is ignored
    keep = lab != IGNORE
    assert torch.equal(lab[keep], b["input_ids"][keep])
    assert not (keep & (b["attention_mask"] == 0)).any()  # never padding
    assert not (keep & (b["input_ids"] == image_id)).any()  # never image tokens
    assert tok.decode(b["input_ids"][0][keep[0]]) == "white background; red circle<|im_end|>"
    assert tok.decode(b["input_ids"][1][keep[1]]) == "yes<|im_end|>blue square<|im_end|>"
    # generation batches: no labels, left padding, the prompt ends with the assistant header
    g = collate(proc, [one, multi], generation=True)
    assert "labels" not in g
    assert g["attention_mask"][:, -1].all()
    assert tok.decode(g["input_ids"][0]).endswith("<|im_start|>assistant\n")


def test_assistant_labels_pure_function():
    from edit_rlhf.vlm.chat import IGNORE, assistant_labels

    ids = torch.tensor([[5, 1, 2, 9, 9, 3, 7, 1, 2, 8, 3, 0]])
    mask = torch.tensor([[1] * 11 + [0]])
    lab = assistant_labels(ids, mask, header=[1, 2], end_id=3)
    want = [IGNORE, IGNORE, IGNORE, 9, 9, 3, IGNORE, IGNORE, IGNORE, 8, 3, IGNORE]
    assert lab[0].tolist() == want


def test_batched_vision_attention_equals_stock(vlm):
    from edit_rlhf.vlm.attention import batched_vision_attention, is_patched

    model, proc = vlm
    model.eval()
    # equal chunks (the batched path) and mixed image sizes (ragged: falls back to the stock forward)
    for sizes in ([64, 64, 64], [64, 96, 128]):
        enc = proc.image_processor(images=[_img(i, s) for i, s in enumerate(sizes)], return_tensors="pt")
        with torch.no_grad():
            with batched_vision_attention(False):
                assert not is_patched()
                ref = model.model.visual(enc["pixel_values"], grid_thw=enc["image_grid_thw"]).pooler_output
            with batched_vision_attention(True):
                assert is_patched()
                got = model.model.visual(enc["pixel_values"], grid_thw=enc["image_grid_thw"]).pooler_output
        assert torch.allclose(ref, got, atol=1e-5, rtol=1e-5), (sizes, float((ref - got).abs().max()))
    assert not is_patched()  # the context manager restores the stock forward


def test_train_loop_reduces_loss_full_and_lora_with_frozen_vision(tiny_models):
    from edit_rlhf.config.sft import VLMSFTConfig
    from edit_rlhf.pipelines.sandbox_base.vlm import load_vlm
    from edit_rlhf.vlm.chat import user_assistant
    from edit_rlhf.vlm.sft import prepare_model, sft_loss, train_vlm, vision_tower
    from edit_rlhf.vlm.chat import collate

    exs = [user_assistant([_img(i)], "Describe the image.", ans)
           for i, ans in enumerate(["red circle", "blue square", "green triangle", "gray background"])]
    for mode, freeze in (("full", False), ("lora", True)):
        torch.manual_seed(0)
        model, proc = load_vlm(tiny_models["rrm"])
        vis0 = {k: v.clone() for k, v in vision_tower(model).state_dict().items()}
        model, n = prepare_model(model, mode, freeze_vision=freeze, lora_rank=8, lora_alpha=16)
        total = sum(p.numel() for p in model.parameters())
        assert 0 < n < total if (mode == "lora" or freeze) else n == total
        before = float(sft_loss(model, collate(proc, exs))["loss"])
        s = VLMSFTConfig(steps=40, batch_size=4, lr=5e-3 if mode == "full" else 2e-2, warmup_steps=5, mode=mode)
        train_vlm(model, proc, lambda step, k: exs, s)
        with torch.no_grad():
            after = float(sft_loss(model, collate(proc, exs))["loss"])
        # full FT memorises 4 answers; LoRA on a random base (tied embeddings frozen) moves slower
        assert after < (0.5 if mode == "full" else 0.9) * before, (mode, before, after)
        if freeze:
            for k, v in vision_tower(model).state_dict().items():
                if "lora" not in k:
                    assert torch.equal(v, vis0[k.replace("base_layer.", "")]), k


def test_describe_parse_and_attribute_table():
    from edit_rlhf.pipelines.sandbox_base.describe import attribute_table, parse_description, parse_two, truth
    from edit_rlhf.sandbox.scene import Scene, Shape

    s = Scene("white", [Shape("circle", "red", 20, 20, 8), Shape("square", "blue", 44, 44, 8)])
    assert parse_description("white background; red circle, blue square") == truth(s)
    src, edt = parse_two("source: gray background; red circle. edited: gray background; empty.")
    assert src == {"background": "gray", "shapes": {"circle": "red"}} and edt == {"background": "gray", "shapes": {}}
    assert parse_two("garbage")[1] == {"background": None, "shapes": {}}
    t = attribute_table([parse_description("white background; red circle")], [truth(s)])
    assert t["background/accuracy"] == 1.0 and t["square_present/accuracy"] == 0.0 and t["circle_color/accuracy"] == 1.0
    assert t["exact_match"] == 0.0
