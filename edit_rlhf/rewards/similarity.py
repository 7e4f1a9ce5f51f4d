"""Target-similarity reward: how close the edit is to the dataset's target image, in pixels."""
from __future__ import annotations

import math
from typing import Any, Dict, List

import numpy as np
from PIL import Image

from edit_rlhf.rewards.base import BaseScorer, ScoreResult


def _resize(img: np.ndarray, hw) -> np.ndarray:
    if img.shape[:2] == tuple(hw):
        return img
    return np.asarray(Image.fromarray(img).resize((hw[1], hw[0]), Image.BICUBIC))


def pixel_mse(a: np.ndarray, b: np.ndarray) -> float:
    """MSE between two uint8 images in [0, 1] units (a is resized to b's size)."""
    a = _resize(a, b.shape[:2]).astype(np.float64) / 255.0
    return float(((a - b.astype(np.float64) / 255.0) ** 2).mean())


class SimilarityScorer(BaseScorer):
    """reward = -MSE(edit, target) (metric 'neg_mse', in [-1, 0]) or PSNR in dB (metric 'psnr')."""

    name = "similarity"
    columns = ("target_image",)

    def __init__(self, metric: str = "neg_mse"):
        if metric not in ("neg_mse", "psnr"):
            raise ValueError(f"similarity metric must be 'neg_mse' or 'psnr', got {metric!r}")
        self.metric = metric

    def score(self, row: Dict[str, Any], images: np.ndarray) -> List[ScoreResult]:
        target = row.get("target_image")
        if target is None:
            return [ScoreResult.failed("row has no target_image")] * len(images)
        out = []
        for img in images:
            mse = pixel_mse(img, target)
            r = -mse if self.metric == "neg_mse" else 10 * math.log10(1.0 / max(mse, 1e-10))
            out.append(ScoreResult(reward=r, detail={"mse": mse}))
        return out
