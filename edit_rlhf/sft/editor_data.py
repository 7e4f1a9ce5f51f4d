"""Edit triples (source, instruction, target) -> the tensors editor SFT trains on.

The condition comes from `KontextEditor.condition` (the exact path rollouts use) and the target x_0 is the
target image through the same VAE encode, shift/scale and 2x2 packing that the source goes through, so
`KontextEditor.decode(x_0)` gives the target back (up to VAE error) and the SFT velocity is the one the
Flow-GRPO sampler integrates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
import torch

from edit_rlhf.data.prompts import EditPromptDataset
from edit_rlhf.models.kontext import KontextCondition, KontextEditor


@dataclass
class EncodedTriples:
    """x0: (N, L, C) packed scaled target latents; cond: N rows of KontextCondition (CPU)."""

    x0: torch.Tensor
    cond: KontextCondition

    def __len__(self) -> int:
        return self.x0.shape[0]

    def take(self, idx, device=None) -> "EncodedTriples":
        idx = torch.as_tensor(idx, dtype=torch.long)
        c = self.cond.index(idx)
        if device is not None:
            c = KontextCondition(*(t.to(device) for t in (c.prompt_embeds, c.pooled, c.text_ids, c.image_latents,
                                                          c.img_ids)))
            return EncodedTriples(self.x0[idx].to(device), c)
        return EncodedTriples(self.x0[idx], c)


@torch.no_grad()
def encode_images(editor: KontextEditor, images: Sequence[np.ndarray]) -> torch.Tensor:
    """Packed, scaled VAE latents of uint8 images (resized to the editor resolution): (B, L, C).

    Identical to the `image_latents` of `editor.condition` (the source path), used here for targets."""
    from PIL import Image

    pipe, r = editor.pipe, editor.resolution
    pil = [Image.fromarray(np.asarray(im, dtype=np.uint8)).convert("RGB") for im in images]
    img_t = pipe.image_processor.preprocess(pipe.image_processor.resize(pil, r, r), r, r)
    _, lat, _, _ = pipe.prepare_latents(img_t, len(pil), editor.num_channels, r, r, pipe.vae.dtype, editor.device,
                                        None)
    return lat.float().cpu()


def encode_triples(editor: KontextEditor, sources: Sequence[np.ndarray], instructions: Sequence[str],
                   targets: Sequence[np.ndarray], batch_size: int = 64) -> EncodedTriples:
    """Encode triples in batches (frozen VAE and text encoders, no gradients)."""
    if not (len(sources) == len(instructions) == len(targets)):
        raise ValueError(f"{len(sources)} sources, {len(instructions)} instructions, {len(targets)} targets")
    x0s: List[torch.Tensor] = []
    conds: List[KontextCondition] = []
    for lo in range(0, len(sources), batch_size):
        sl = slice(lo, lo + batch_size)
        c = editor.condition(list(sources[sl]), list(instructions[sl]))
        conds.append(KontextCondition(*(t.float().cpu() for t in (c.prompt_embeds, c.pooled, c.text_ids,
                                                                  c.image_latents, c.img_ids))))
        x0s.append(encode_images(editor, list(targets[sl])))
    return EncodedTriples(torch.cat(x0s), KontextCondition.cat(conds))


def load_triples(path: str, validate: str = "schema", limit: int = 0):
    """(dataset, sources, instructions, targets) of an edit-prompt dataset with a `target_image` column.

    Bad rows raise `DatasetError` naming the file, row and column (the dataset loader's checks)."""
    ds = EditPromptDataset(path, require=("target_image",), validate=validate)
    n = len(ds) if not limit else min(limit, len(ds))
    rows = [ds.row(i, ["source_image", "instruction", "target_image"]) for i in range(n)]
    return ds, [r["source_image"] for r in rows], [r["instruction"] for r in rows], [r["target_image"] for r in rows]
