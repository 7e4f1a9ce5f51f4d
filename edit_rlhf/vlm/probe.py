"""Linear probes of a Qwen2.5-VL vision tower: what its visual tokens encode, measured in minutes.

An RRM can only check what its vision tower passes to the language model. `vision_features` runs the tower
(patch embedding, blocks, merger: the tokens the language model receives) on a batch of images with the
model's own processor, and flattens each image's tokens into one vector. `linear_probe` fits a multinomial
logistic regression on part of those vectors and reports held-out accuracy beside the majority-class rate:
a probe near the majority says the information is not linearly readable from the visual tokens, whatever the
language model does afterwards. (The sandbox RRM's diagnosis, benchmarks/vision_probe.py.)
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np
import torch


def visual_tokens(visual, processor, images: Sequence[np.ndarray]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(tokens (sum of the images' merged token counts, hidden), image_grid_thw): one forward of a Qwen2.5-VL vision
    tower (`model.model.visual`) on `images` prepared by the model's processor - what the language model receives."""
    px = processor.image_processor(images=list(images), return_tensors="pt")
    out = visual(px["pixel_values"], grid_thw=px["image_grid_thw"])
    return (out if torch.is_tensor(out) else out.pooler_output), px["image_grid_thw"]


@torch.no_grad()
def vision_features(model, processor, images: Sequence[np.ndarray], batch_size: int = 128) -> np.ndarray:
    """(N, tokens * hidden) float32: the merged visual tokens of each image (all images must give the same token
    count, as same-size images do). The tower runs in eval mode and gets its previous mode back."""
    from edit_rlhf.vlm.attention import batched_vision_attention

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    visual = inner.model.visual
    was = visual.training
    visual.eval()
    out = []
    try:
        with batched_vision_attention(True):
            for i in range(0, len(images), batch_size):
                chunk = list(images[i:i + batch_size])
                emb, grid = visual_tokens(visual, processor, chunk)
                counts = {int(t * h * w) for t, h, w in grid.tolist()}
                if len(counts) != 1:
                    raise ValueError(f"vision_features: images give different patch counts {sorted(counts)}; "
                                     "probe same-size images")
                out.append(emb.reshape(len(chunk), -1).float().numpy())
    finally:
        visual.train(was)
    return np.concatenate(out)


def linear_probe(x_train: np.ndarray, y_train: Sequence, x_eval: np.ndarray, y_eval: Sequence,
                 l2: float = 1e-3, steps: int = 300) -> Dict[str, float]:
    """Multinomial logistic regression (features standardised on the training part, L2 `l2`, full-batch L-BFGS)
    -> {'accuracy' on the eval part, 'majority' (the eval rate of the most frequent training label), 'n_train',
    'n_eval', 'classes'}. Labels are any hashable values; eval labels unseen in training count as errors."""
    if len(x_train) != len(y_train) or len(x_eval) != len(y_eval):
        raise ValueError("linear_probe: features and labels differ in length")
    if not len(y_train) or not len(y_eval):
        raise ValueError("linear_probe: empty training or eval part")
    classes = sorted(set(y_train), key=str)
    index = {c: i for i, c in enumerate(classes)}
    yt = torch.tensor([index[c] for c in y_train])
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    xt = torch.tensor((x_train - mu) / sd, dtype=torch.float32)
    xe = torch.tensor((x_eval - mu) / sd, dtype=torch.float32)
    majority = max(classes, key=lambda c: int((yt == index[c]).sum()))
    maj_rate = float(np.mean([y == majority for y in y_eval]))
    if len(classes) == 1:
        return {"accuracy": maj_rate, "majority": maj_rate, "n_train": len(y_train), "n_eval": len(y_eval),
                "classes": 1}
    g = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(xt.shape[1], len(classes), generator=g) * 1e-3)
    b = torch.nn.Parameter(torch.zeros(len(classes)))
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w + b, yt) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = (xe @ w + b).argmax(1).tolist()
    acc = float(np.mean([classes[p] == y for p, y in zip(pred, y_eval)]))
    return {"accuracy": acc, "majority": maj_rate, "n_train": len(y_train), "n_eval": len(y_eval),
            "classes": len(classes)}
