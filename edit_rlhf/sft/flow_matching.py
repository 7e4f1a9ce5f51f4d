"""Rectified-flow (flow-matching) training maths as pure functions on tensors.

Conventions match the sampler (`edit_rlhf.algorithms`): x_t = (1 - t) x_0 + t eps, t = sigma in [0, 1]
(1 = pure noise), velocity v = eps - x_0, and the Kontext transformer is called with timestep = 1000 t.

Timestep distribution. FLUX samples at sigmas shifted towards noise by the resolution-dependent shift
mu (`time_shift`); Flow-GRPO rolls out on those same sigmas. Training draws t from a logit-normal
(SD3's choice: most weight on mid-range t, where the velocity is hardest to predict) and then applies the
same shift, so training density follows where the sampler evaluates the velocity. A small fraction of
uniform draws keeps the ends (t near 0 and near 1, where the first SDE step of a rollout sits) covered.
"""
from __future__ import annotations

import math
from typing import Optional

import torch


def flux_mu(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
            max_shift: float = 1.15) -> float:
    """FLUX's resolution-dependent shift mu (diffusers `calculate_shift`), linear in the token count."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + (base_shift - m * base_seq_len)


def time_shift(t: torch.Tensor, mu: float) -> torch.Tensor:
    """The scheduler's exponential shift: e^mu / (e^mu + 1/t - 1); maps (0, 1) onto (0, 1), identity at mu=0."""
    e = math.exp(mu)
    return e / (e + (1.0 / t.clamp_min(1e-12) - 1.0))


def sample_timesteps(n: int, generator: torch.Generator, dist: str = "logit_normal", mean: float = 0.0,
                     std: float = 1.0, mu: Optional[float] = None, uniform_frac: float = 0.0,
                     eps: float = 1e-4) -> torch.Tensor:
    """n training times t in [eps, 1 - eps] (fp32, CPU): logit-normal(mean, std) or uniform, a fraction
    `uniform_frac` replaced by uniform draws, then FLUX-shifted by `mu` (None: no shift)."""
    if dist == "logit_normal":
        t = torch.sigmoid(mean + std * torch.randn(n, generator=generator))
    elif dist == "uniform":
        t = torch.rand(n, generator=generator)
    else:
        raise ValueError(f"timestep distribution must be 'logit_normal' or 'uniform', got {dist!r}")
    if uniform_frac > 0:
        u = torch.rand(n, generator=generator)
        pick = torch.rand(n, generator=generator) < uniform_frac
        t = torch.where(pick, u, t)
    if mu is not None:
        t = time_shift(t, mu)
    return t.clamp(eps, 1 - eps)


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t noise for x0, noise (B, ...) and t (B,)."""
    tt = t.view(-1, *([1] * (x0.ndim - 1))).to(x0)
    return (1 - tt) * x0 + tt * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The rectified-flow velocity d x_t / dt = noise - x0."""
    return noise - x0


def flow_matching_loss(pred: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None
                       ) -> torch.Tensor:
    """Mean squared error (fp32), the conditional flow-matching objective. pred, target: (B, L, C);
    `weight` (B, L) per token: the weighted mean over tokens of the per-token MSE."""
    se = ((pred.float() - target.float()) ** 2).mean(-1)
    if weight is None:
        return se.mean()
    w = weight.float()
    return (w * se).sum() / w.sum().clamp_min(1e-12)


def edit_region_weights(x0: torch.Tensor, source: torch.Tensor, weight: float, threshold: float) -> torch.Tensor:
    """(B, L) token weights 1 + weight * [mean_c (x0 - source)^2 > threshold]: the tokens an edit changes.
    x0 (target) and source are packed latents of the same layout (B, L, C)."""
    d = ((x0.float() - source.float()) ** 2).mean(-1)
    return 1.0 + weight * (d > threshold).float()
