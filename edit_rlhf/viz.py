"""Sample grids for MLflow: one row per group, `source | edit_1 ... edit_G`, each edit captioned with its
reward (and per-principle checks when the scorer gives them)."""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

CELL = 96  # pixels per image in the grid (small sandbox images are upscaled for legibility)
CAPTION = 24


def _cell(img: np.ndarray, caption: str, size: int) -> Image.Image:
    tile = Image.new("RGB", (size, size + CAPTION), (255, 255, 255))
    tile.paste(Image.fromarray(np.asarray(img, np.uint8)).resize((size, size), Image.NEAREST), (0, 0))
    draw = ImageDraw.Draw(tile)
    for k, line in enumerate(caption.split("\n")[:2]):
        draw.text((2, size + 1 + 11 * k), line[: size // 6], fill=(0, 0, 0))
    return tile


def group_grid(rows: Sequence[dict], size: int = CELL) -> np.ndarray:
    """rows: dicts with `source` (H, W, 3), `edits` (G, H, W, 3), `rewards` (G,), optional `title`,
    optional `checks` (G lists of 0/1). Returns a uint8 (R*(size+CAPTION+title), (G+1)*size, 3) grid."""
    title_h = 14
    g = max(len(r["edits"]) for r in rows)
    grid = Image.new("RGB", ((g + 1) * size, len(rows) * (size + CAPTION + title_h)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, r in enumerate(rows):
        y = i * (size + CAPTION + title_h)
        draw.text((2, y + 1), str(r.get("title", ""))[: (g + 1) * size // 6], fill=(0, 0, 120))
        grid.paste(_cell(r["source"], "source", size), (0, y + title_h))
        checks: Optional[List] = r.get("checks")
        for j, (img, rew) in enumerate(zip(r["edits"], r["rewards"])):
            cap = f"r={rew:.3g}" if rew == rew else "r=failed"
            if checks is not None and checks[j] is not None:
                cap += "\n" + "".join("✓" if c else "x" for c in checks[j]).replace("✓", "+")
            grid.paste(_cell(img, cap, size), ((j + 1) * size, y + title_h))
    return np.asarray(grid)
