"""Tiny AutoencoderKL pre-training on sandbox images, and latent normalisation from data.

The VAE is trained to reconstruct (MSE + L1 in [-1, 1] pixels, plus a small KL so the posterior stays a
smooth, roughly Gaussian code). Afterwards `shift_factor` / `scaling_factor` are set from the encoded data
(mean and std over every latent element) so the editor's flow matching sees latents ~ N(0, 1), as the
FLUX VAE's published factors give for natural images. A random VAE's decoded pixels are meaningless
(derisk_grpo.md): a trained one is what makes pixel rewards and the oracle measure edits.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import torch


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1] (the VAE's input range)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3), rounded as the pipeline's postprocess does."""
    x = ((x.detach().float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
    return (x * 255).round().astype(np.uint8)


def lr_at(step: int, total: int, lr: float, warmup: int, final_frac: float = 0.1) -> float:
    """Linear warmup then cosine decay to `final_frac * lr` (step counts from 0)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return lr * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def train_vae(vae, images: np.ndarray, steps: int, batch_size: int = 16, lr: float = 2e-3, warmup: int = 50,
              kl_weight: float = 1e-5, l1_weight: float = 1.0, edge_weight: float = 0.0, seed: int = 0,
              progress: Optional[Callable[[int, Dict[str, float]], None]] = None) -> List[Dict[str, float]]:
    """Train `vae` in place on uint8 images (N, H, W, 3) for `steps` AdamW steps; returns the loss history
    (every 50 steps). Batches are drawn with a generator seeded by `seed`, so runs are repeatable."""
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    hist: List[Dict[str, float]] = []
    t0 = time.time()
    run = {"mse": 0.0, "l1": 0.0, "kl": 0.0, "edge": 0.0}
    for step in range(steps):
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step, steps, lr, warmup)
        x = to_tensor(images[rng.integers(0, len(images), batch_size)])
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        mse = ((rec - x) ** 2).mean()
        l1 = (rec - x).abs().mean()
        kl = post.kl().mean() / post.mean[0].numel()  # per latent element
        edge = edge_loss(rec, x)
        loss = mse + l1_weight * l1 + kl_weight * kl + edge_weight * edge
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        for k, v in (("mse", mse), ("l1", l1), ("kl", kl), ("edge", edge)):
            run[k] += float(v.detach())
        if (step + 1) % 50 == 0 or step + 1 == steps:
            n = 50 if (step + 1) % 50 == 0 else (step + 1) % 50
            h = {"step": step + 1, "seconds": time.time() - t0, **{k: v / n for k, v in run.items()}}
            hist.append(h)
            run = {k: 0.0 for k in run}
            if progress:
                progress(step + 1, h)
    vae.eval()
    return hist


def edge_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 between horizontal and vertical pixel differences: penalises blurred edges, which MSE/L1 on
    piecewise-constant images tolerate (the oracle's "sharp" check does not)."""
    dx = lambda a: a[..., :, 1:] - a[..., :, :-1]  # noqa: E731
    dy = lambda a: a[..., 1:, :] - a[..., :-1, :]  # noqa: E731
    return (dx(rec) - dx(x)).abs().mean() + (dy(rec) - dy(x)).abs().mean()


@torch.no_grad()
def encode_mode(vae, images: np.ndarray, batch_size: int = 64) -> torch.Tensor:
    """Posterior means (unscaled) of uint8 images: (N, C, h, w)."""
    return torch.cat([vae.encode(to_tensor(images[i:i + batch_size])).latent_dist.mean
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def fit_latent_normalisation(vae, images: np.ndarray) -> Dict[str, float]:
    """Set vae.config shift_factor = mean, scaling_factor = 1/std of the data's latents (all elements), so
    (z - shift) * scale ~ N(0, 1) as FluxKontextPipeline applies it. Returns the statistics."""
    z = encode_mode(vae, images)
    mean, std = float(z.mean()), float(z.std())
    vae.register_to_config(shift_factor=mean, scaling_factor=1.0 / std)
    zn = (z - mean) / std
    return {"latent_mean": mean, "latent_std": std, "shift_factor": mean, "scaling_factor": 1.0 / std,
            "normalised_channel_std_min": float(zn.std(dim=(0, 2, 3)).min()),
            "normalised_channel_std_max": float(zn.std(dim=(0, 2, 3)).max())}


@torch.no_grad()
def reconstruct(vae, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """decode(encode_mode(x)) as uint8 images, the path an edit's latents take to pixels."""
    out = []
    for i in range(0, len(images), batch_size):
        z = vae.encode(to_tensor(images[i:i + batch_size])).latent_dist.mean
        out.append(to_uint8(vae.decode(z).sample))
    return np.concatenate(out)


def recon_mse(vae, images: np.ndarray) -> float:
    """Mean squared reconstruction error in [0, 1] pixel units (the similarity reward's scale)."""
    rec = reconstruct(vae, images).astype(np.float64) / 255.0
    return float(((rec - images.astype(np.float64) / 255.0) ** 2).mean())
