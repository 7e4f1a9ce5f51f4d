"""The sandbox editor: a tiny FluxKontextPipeline (factory architecture) around the trained sandbox VAE,
warm-started by editor SFT (`pipelines/editor_sft.py`) on sandbox triples."""
from __future__ import annotations

import os
import shutil
from typing import Dict

from edit_rlhf.models.tiny import TinyEditorSpec, build_tiny_kontext, sandbox_words


def editor_spec(ecfg, vcfg) -> TinyEditorSpec:
    """TinyEditorSpec from the pretrain config's `editor` and `vae` sections."""
    return TinyEditorSpec(num_layers=ecfg.num_layers, num_single_layers=ecfg.num_single_layers,
                          attention_head_dim=ecfg.attention_head_dim, num_attention_heads=ecfg.num_attention_heads,
                          text_dim=ecfg.text_dim, latent_channels=vcfg.latent_channels,
                          vae_blocks=tuple(vcfg.blocks), rope_axes=tuple(ecfg.rope_axes))


def assemble_editor(out: str, vae, spec: TinyEditorSpec, seed: int = 0) -> Dict[str, int]:
    """Build the tiny random pipeline at `out` (sandbox-word tokenizers, `spec` sizes) and put the trained
    `vae` (an AutoencoderKL of the same spec, with fitted shift/scale) in its `vae/` folder."""
    if os.path.exists(out):
        shutil.rmtree(out)
    counts = build_tiny_kontext(out, sandbox_words(), seed, spec)
    shutil.rmtree(os.path.join(out, "vae"))
    vae.save_pretrained(os.path.join(out, "vae"))
    return counts
