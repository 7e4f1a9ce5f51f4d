"""Quality gates of the sandbox base models, measured on held-out sandbox data through the normal loaders.

- VAE: reconstruction MSE (pixels in [0, 1]) and the oracle score of reconstructed *targets* (the ceiling
  any editor on this VAE can reach);
- editor: ODE edits scored by the oracle against copy-the-source, with shuffled-source and
  shuffled-instruction probes (both must cost score: the edit depends on the image and on the text),
  overall and per edit type;
- VLM: greedy descriptions, accuracy per attribute (background, each shape's presence and colour) against
  the majority baseline of that attribute.
"""
from __future__ import annotations

import os
from typing import Dict, List, Sequence, Tuple

import numpy as np

from edit_rlhf.sandbox.scene import SHAPE_KINDS

from .data import Triple

VLM_ATTRIBUTES = ["background"] + [f"{k}_{a}" for k in SHAPE_KINDS for a in ("present", "color")]


def measure_vae(editor_path: str, triples: Sequence[Triple]) -> Dict[str, float]:
    from diffusers import AutoencoderKL

    from edit_rlhf.sandbox.oracle import verify_json

    from .vae import reconstruct

    vae = AutoencoderKL.from_pretrained(os.path.join(editor_path, "vae"))
    tg = np.stack([t.target_image for t in triples])
    imgs = np.concatenate([np.stack([t.source_image for t in triples]), tg])
    rec = reconstruct(vae, imgs)
    mse = float((((rec.astype(np.float64) - imgs.astype(np.float64)) / 255.0) ** 2).mean())
    oracle = [verify_json(t.oracle, r).score for t, r in zip(triples, rec[len(triples):])]
    return {"recon_mse": mse, "recon_target_oracle": float(np.mean(oracle)),
            "shift_factor": float(vae.config.shift_factor), "scaling_factor": float(vae.config.scaling_factor)}


def measure_editor(editor_path: str, triples: Sequence[Triple], num_steps: int = 8, seed: int = 1234,
                   resolution: int = 64, max_sequence_length: int = 32, guidance_scale: float = 2.5
                   ) -> Dict[str, float]:
    from edit_rlhf.models.kontext import KontextEditor
    from edit_rlhf.sft.editor_eval import probe_eval

    ed = KontextEditor(editor_path, resolution, max_sequence_length, guidance_scale)
    return probe_eval(ed, [t.source_image for t in triples], [t.instruction for t in triples],
                      [t.target_image for t in triples], [seed + i for i in range(len(triples))], num_steps,
                      [t.oracle for t in triples], [t.edit_type for t in triples], probes=True)


def measure_vlm(vlm_path: str, pairs: Sequence[Tuple], n_one=None) -> Dict[str, float]:
    from .vlm import evaluate_describer, load_vlm

    model, proc = load_vlm(vlm_path)
    return evaluate_describer(model, proc, pairs, n_one)


def check_gates(fig: Dict[str, Dict[str, float]], g) -> Dict[str, Dict[str, object]]:
    """{gate name: {value, threshold, passed}} for whichever of 'vae', 'editor', 'vlm' `fig` holds."""
    out: Dict[str, Dict[str, object]] = {}

    def gate(name: str, value: float, threshold: float, higher: bool = True) -> None:
        ok = value >= threshold if higher else value <= threshold
        out[name] = {"value": round(float(value), 4), "threshold": threshold, "passed": bool(ok)}

    if "vae" in fig:
        gate("vae_recon_mse", fig["vae"]["recon_mse"], g.vae_recon_mse_max, higher=False)
    if "editor" in fig:
        e = fig["editor"]
        gate("editor_oracle_minus_copy_source", e["matched/oracle"] - e["copy_source/oracle"],
             g.editor_oracle_margin_min)
        gate("editor_shuffled_source_cost", e["matched/oracle"] - e["shuffled_source/oracle"],
             g.editor_probe_cost_min)
        gate("editor_shuffled_instruction_cost", e["matched/oracle"] - e["shuffled_instruction/oracle"],
             g.editor_probe_cost_min)
    if "vlm" in fig:
        v = fig["vlm"]
        for a in VLM_ATTRIBUTES:
            if f"all/{a}/accuracy" in v:
                gate(f"vlm_{a}_minus_majority", v[f"all/{a}/accuracy"] - v[f"all/{a}/majority"], g.vlm_margin_min)
    return out


def failed(gates: Dict[str, Dict[str, object]]) -> List[str]:
    return [k for k, v in gates.items() if not v["passed"]]
