"""Tiny-model factory: randomly initialised models of the *real* architectures, saved in the standard format.

- Editor: a `diffusers.FluxKontextPipeline` (FluxTransformer2DModel + AutoencoderKL + CLIP + T5 +
  FlowMatchEulerDiscreteScheduler), ~0.1 M transformer parameters, `save_pretrained` layout.
- RRM: a `transformers` Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`) with a Qwen2.5-VL processor
  (image processor, tokenizer with chat template, video processor), head_dim 32 so vLLM can serve it.

Everything downstream loads these by path through the same code that loads FLUX.1-Kontext-dev or
Qwen2.5-VL-7B-Instruct from a local folder. Nothing is downloaded.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from edit_rlhf.models.tokenizers import make_clip_tokenizer, make_qwen_tokenizer, make_t5_tokenizer


@dataclass
class TinyEditorSpec:
    """Sizes of the tiny Kontext editor. Constraints (checked by diffusers at run time, here up front):
    in_channels = 4 * latent_channels; joint_attention_dim = T5 d_model; pooled_projection_dim = CLIP hidden;
    sum(axes_dims_rope) = attention_head_dim."""

    num_layers: int = 1
    num_single_layers: int = 1
    attention_head_dim: int = 16
    num_attention_heads: int = 2
    text_dim: int = 32
    latent_channels: int = 16
    vae_blocks: Tuple[int, ...] = (8, 16, 16, 16)  # 4 blocks -> spatial factor 8, as in the real VAE
    vae_shift: float = 0.1159
    vae_scale: float = 0.3611
    rope_axes: Optional[Tuple[int, int, int]] = None  # (condition marker, row, column) dims; None: d/4, d/4, rest

    def axes_dims_rope(self) -> Tuple[int, int, int]:
        if self.rope_axes is not None:
            if sum(self.rope_axes) != self.attention_head_dim or any(a % 2 for a in self.rope_axes):
                raise ValueError(f"rope_axes {self.rope_axes} must be even and sum to attention_head_dim "
                                 f"{self.attention_head_dim}")
            return tuple(self.rope_axes)
        d = self.attention_head_dim
        return (d // 4, d // 4, d - 2 * (d // 4))


@dataclass
class TinyVLMSpec:
    """Sizes of the tiny Qwen2.5-VL (the RRM). head_dim = hidden/heads must be >= 32 for vLLM's CPU attention."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 256
    vision_hidden: int = 64
    vision_depth: int = 2
    vision_heads: int = 2
    patch_size: int = 8
    merge_size: int = 2
    window_size: int = 32
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096

    def mrope_section(self) -> List[int]:
        half = self.hidden // self.heads // 2
        t = half // 4
        h = (half - t) // 2
        return [t, h, half - t - h]


def _count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def build_tiny_vae(spec: TinyEditorSpec = TinyEditorSpec()):
    """The tiny AutoencoderKL of `spec` (random weights): len(vae_blocks) - 1 downsamplings, so 4 blocks give
    the real VAE's x8 and 3 blocks x4. Used by the editor factory and by the sandbox VAE pre-training."""
    from diffusers import AutoencoderKL

    nb = len(spec.vae_blocks)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=spec.latent_channels,
                         down_block_types=["DownEncoderBlock2D"] * nb, up_block_types=["UpDecoderBlock2D"] * nb,
                         block_out_channels=tuple(spec.vae_blocks), layers_per_block=1, norm_num_groups=4,
                         use_quant_conv=False, use_post_quant_conv=False,
                         shift_factor=spec.vae_shift, scaling_factor=spec.vae_scale)


def build_tiny_kontext(out_dir: str, words: Sequence[str] = (), seed: int = 0,
                       spec: TinyEditorSpec = TinyEditorSpec()) -> Dict[str, int]:
    """Build and save a tiny random FluxKontextPipeline at `out_dir`; returns parameter counts."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tok = make_clip_tokenizer(words, 77)
    tok2 = make_t5_tokenizer(words, 512)
    d = spec.text_dim
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=d, intermediate_size=2 * d, num_attention_heads=4, num_hidden_layers=2,
        projection_dim=d, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, max_position_embeddings=77))
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok2), d_model=d, d_kv=d // 4, d_ff=2 * d, num_layers=2,
                                 num_heads=4, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    vae = build_tiny_vae(spec)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * spec.latent_channels, num_layers=spec.num_layers,
        num_single_layers=spec.num_single_layers, attention_head_dim=spec.attention_head_dim,
        num_attention_heads=spec.num_attention_heads, joint_attention_dim=d, pooled_projection_dim=d,
        guidance_embeds=True, axes_dims_rope=spec.axes_dims_rope())
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                                max_image_seq_len=4096)
    pipe = FluxKontextPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=tok, text_encoder_2=t5,
                               tokenizer_2=tok2, transformer=transformer)
    pipe.save_pretrained(out_dir)
    return {"transformer": _count(transformer), "vae": _count(vae), "clip": _count(clip), "t5": _count(t5)}


def make_qwen_vl_processor(words: Sequence[str] = (), patch_size: int = 8, merge_size: int = 2):
    """Qwen2.5-VL processor with the offline tokenizer; 64x64 images give 16 visual tokens."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    tok = make_qwen_tokenizer(words)
    size = {"shortest_edge": 16 * 16, "longest_edge": 256 * 256}  # min/max pixels
    ip = Qwen2VLImageProcessor(patch_size=patch_size, merge_size=merge_size, temporal_patch_size=2, size=size)
    vp = Qwen2VLVideoProcessor(patch_size=patch_size, merge_size=merge_size, temporal_patch_size=2, size=size)
    return Qwen2_5_VLProcessor(image_processor=ip, tokenizer=tok, video_processor=vp,
                               chat_template=tok.chat_template)


def build_tiny_qwen_vl(out_dir: str, words: Sequence[str] = (), seed: int = 0,
                       spec: TinyVLMSpec = TinyVLMSpec()) -> Dict[str, int]:
    """Build and save a tiny random Qwen2.5-VL + processor at `out_dir`; returns parameter counts."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    proc = make_qwen_vl_processor(words, spec.patch_size, spec.merge_size)
    tok = proc.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>", "<|image_pad|>",
                                                      "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    vocab = ((len(tok) + 63) // 64) * 64
    text = dict(vocab_size=vocab, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
                num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
                max_position_embeddings=spec.max_position_embeddings, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta,
                                 "mrope_section": spec.mrope_section()},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    vision = dict(depth=spec.vision_depth, hidden_size=spec.vision_hidden, out_hidden_size=spec.hidden,
                  intermediate_size=2 * spec.vision_hidden, num_heads=spec.vision_heads, patch_size=spec.patch_size,
                  spatial_merge_size=spec.merge_size, temporal_patch_size=2, window_size=spec.window_size,
                  fullatt_block_indexes=[spec.vision_depth - 1])
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True)
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out_dir)
    proc.save_pretrained(out_dir)
    return {"total": _count(model), "vision": _count(model.model.visual), "vocab": vocab}


def sandbox_words() -> List[str]:
    """The sandbox world's vocabulary (instructions, principles, descriptions, traces)."""
    from edit_rlhf.sandbox.edits import vocabulary

    return list(vocabulary())


def make_tiny_models(out: str, seed: int = 0) -> Dict[str, str]:
    """Build the tiny editor (`out/editor`) and tiny RRM (`out/rrm`); write `out/manifest.json`."""
    words = sandbox_words()
    os.makedirs(out, exist_ok=True)
    paths = {"editor": os.path.join(out, "editor"), "rrm": os.path.join(out, "rrm")}
    editor_counts = build_tiny_kontext(paths["editor"], words, seed)
    rrm_counts = build_tiny_qwen_vl(paths["rrm"], words, seed)
    manifest = {"seed": seed, "editor": {"path": "editor", "params": editor_counts, "spec": asdict(TinyEditorSpec())},
                "rrm": {"path": "rrm", "params": rrm_counts, "spec": asdict(TinyVLMSpec())}, "words": len(words)}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    return paths
