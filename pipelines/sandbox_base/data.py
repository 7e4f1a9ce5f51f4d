"""Sandbox data for the base models: edit triples in the real edit-prompt schema, and in-memory scenes.

`make_prompt` (sandbox.build) is the one generator: the same (seed, split, index) gives the same scene, edit,
instruction and images whether they end up in a dataset folder (editor SFT reads those, like users' own
edit pairs) or in memory (VAE images, VLM description examples). Held-out data uses another seed.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

import numpy as np
from PIL import Image

from edit_rlhf.sandbox.build import _features, make_prompt
from edit_rlhf.sandbox.config import SandboxConfig
from edit_rlhf.sandbox.edits import EDIT_TYPES, apply_edit, public_principles
from edit_rlhf.sandbox.oracle import oracle_record
from edit_rlhf.sandbox.scene import Scene


@dataclass
class Triple:
    """One sandbox edit in memory: source/target scenes and uint8 (H, W, 3) images, instruction, edit type."""

    id: str
    source: Scene
    target: Scene
    source_image: np.ndarray
    target_image: np.ndarray
    instruction: str
    edit_type: str
    oracle: str


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def make_triples(seed: int, n: int, size: int = 64, split: str = "train",
                 edit_types: Sequence[str] = EDIT_TYPES) -> List[Triple]:
    """`n` edits (edit types balanced, as the sandbox build does) from `np.random` streams of (seed, split)."""
    cfg = SandboxConfig(seed=seed, size=size, n_train=max(n, 1), n_eval=max(n, 1), edit_types=list(edit_types),
                        n_pairs_train=0, n_pairs_eval=0)
    out = []
    for i in range(n):
        p = make_prompt(cfg, split, i)
        out.append(Triple(p["id"], p["scene"], apply_edit(p["scene"], p["edit"]), _decode(p["source_png"]),
                          _decode(p["target_png"]), p["instruction"], p["edit"].type,
                          oracle_record(p["scene"], p["edit"], p["principles"])))
    return out


def write_prompts(path: str | Path, seed: int, n: int, size: int = 64, split: str = "train",
                  edit_types: Sequence[str] = EDIT_TYPES) -> str:
    """An edit-prompt dataset (`datasets.save_to_disk`) with the columns of the sandbox build's
    prompts_train: id, source_image, instruction, principles, target_image, edit_type, oracle."""
    import datasets as ds

    cfg = SandboxConfig(seed=seed, size=size, n_train=max(n, 1), n_eval=max(n, 1), edit_types=list(edit_types),
                        n_pairs_train=0, n_pairs_eval=0)
    rows = []
    for i in range(n):
        p = make_prompt(cfg, split, i)
        rows.append({"id": p["id"], "source_image": {"bytes": p["source_png"], "path": None},
                     "instruction": p["instruction"], "principles": public_principles(p["principles"]),
                     "target_image": {"bytes": p["target_png"], "path": None}, "edit_type": p["edit"].type,
                     "oracle": oracle_record(p["scene"], p["edit"], p["principles"])})
    feats = _features("prompts")
    ds.Dataset.from_dict({k: [r[k] for r in rows] for k in feats}, features=feats).save_to_disk(str(path))
    return str(path)


def images_of(triples: Sequence[Triple]) -> np.ndarray:
    """Sources and targets stacked: uint8 (2N, H, W, 3)."""
    return np.stack([im for t in triples for im in (t.source_image, t.target_image)])
