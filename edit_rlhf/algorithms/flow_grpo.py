"""Flow-GRPO maths as pure functions on tensors (no models, no Ray). See reference/algorithms.md §4.1.

Conventions: rectified flow x_t = (1 - t) x_0 + t eps; sigmas run 1 -> 0; velocity v ~ eps - x_0;
dt = sigma_next - sigma < 0. Latents are packed Kontext tokens of shape (B, L, C). All maths in fp32.
"""
from __future__ import annotations

import math
from typing import Dict, Hashable, List, Optional, Sequence, Tuple

import torch

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _col(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample (B,) or scalar sigma against `like` (B, ...)."""
    s = torch.as_tensor(s, dtype=torch.float32, device=like.device)
    if s.ndim == 0:
        s = s.expand(like.shape[0])
    return s.view(-1, *([1] * (like.ndim - 1)))


def sde_std(sigma: torch.Tensor, sigma_max: float, noise_level: float) -> torch.Tensor:
    """Flow-GRPO noise schedule sigma_t = a * sqrt(t / (1 - t)); at t = 1 the denominator uses sigma_max
    (= sigmas[1]) to avoid dividing by zero."""
    denom = 1 - torch.where(sigma == 1, torch.as_tensor(sigma_max, dtype=sigma.dtype, device=sigma.device), sigma)
    return torch.sqrt(sigma / denom) * noise_level


def sde_step_mean(v: torch.Tensor, x: torch.Tensor, sigma, sigma_next, sigma_max: float,
                  noise_level: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Euler-Maruyama mean of the marginal-preserving SDE step.

    mu = x (1 + s_t^2 dt / (2t)) + v (1 + s_t^2 (1 - t) / (2t)) dt.
    Args: v, x: (B, L, C) fp32; sigma, sigma_next: (B,) or scalars.
    Returns: mean (B, L, C); std_t = s_t (B, 1, 1); scale = s_t sqrt(-dt) (B, 1, 1), the step's noise std.
    """
    x = x.float()
    v = v.float()
    s = _col(sigma, x)
    s_next = _col(sigma_next, x)
    dt = s_next - s
    std_t = sde_std(s, sigma_max, noise_level)
    mean = x * (1 + std_t ** 2 / (2 * s) * dt) + v * (1 + std_t ** 2 * (1 - s) / (2 * s)) * dt
    return mean, std_t, std_t * torch.sqrt(-dt)


def ode_step(v: torch.Tensor, x: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """Deterministic Euler step x + (sigma_next - sigma) v, exactly as FlowMatchEulerDiscreteScheduler.step."""
    x = x.float()
    return x + (_col(sigma_next, x) - _col(sigma, x)) * v.float()


def gaussian_log_prob(x_next: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-sample log N(x_next; mean, scale^2), **averaged** (not summed) over all non-batch elements.

    x_next is treated as data (detached). Shapes: x_next, mean (B, L, C); scale (B, 1, 1). Returns (B,)."""
    x_next = x_next.detach().float()
    lp = -((x_next - mean) ** 2) / (2 * scale ** 2) - torch.log(scale) - _LOG_SQRT_2PI
    return lp.mean(dim=tuple(range(1, lp.ndim)))


def sde_step(v: torch.Tensor, x: torch.Tensor, sigma, sigma_next, sigma_max: float, noise_level: float,
             noise: Optional[torch.Tensor] = None, x_next: Optional[torch.Tensor] = None
             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One SDE step with its log-prob. Pass `noise` (B, L, C) to sample, or `x_next` to score a stored step.

    Returns (x_next, log_prob (B,), mean (B, L, C), std_t (B, 1, 1))."""
    mean, std_t, scale = sde_step_mean(v, x, sigma, sigma_next, sigma_max, noise_level)
    if x_next is None:
        if noise is None:
            raise ValueError("sde_step needs either `noise` (to sample) or `x_next` (to score)")
        x_next = mean + scale * noise.float()
    return x_next, gaussian_log_prob(x_next, mean, scale), mean, std_t


def kl_to_reference(mean: torch.Tensor, mean_ref: torch.Tensor, std_t: torch.Tensor, dt: Optional[torch.Tensor] = None
                    ) -> torch.Tensor:
    """Closed-form KL between the policy's and the reference's Gaussian step (same std), per sample (B,).

    Flow-GRPO code form: mean(|mu - mu_ref|^2) / (2 s_t^2). With `dt` (B,) the exact form divides by
    2 s_t^2 |dt| instead (the step's real variance)."""
    var = std_t.float() ** 2
    if dt is not None:
        var = var * _col(dt, mean).abs()
    kl = (mean.float() - mean_ref.float()) ** 2 / (2 * var)
    return kl.mean(dim=tuple(range(1, kl.ndim)))


def group_advantages(rewards: Sequence[float], keys: Sequence[Hashable], std_eps: float = 1e-4,
                     clip: float = 5.0, global_std: bool = False) -> torch.Tensor:
    """GRPO advantages: (r - mean_group) / (std + eps), clipped to [-clip, clip].

    Groups are formed by `keys` (for editing: (source id, instruction), so the same instruction on two
    images is never merged). NaN rewards (failed scoring) get NaN advantages and do not enter any mean or
    std; a group whose rewards are all NaN is all NaN. Std is the population std (ddof=0), per group or,
    with `global_std`, over all valid rewards of the batch. Returns (N,) float32.
    """
    r = torch.as_tensor(list(rewards), dtype=torch.float64)
    if r.ndim != 1 or len(keys) != r.numel():
        raise ValueError(f"rewards ({r.numel()}) and keys ({len(keys)}) must be 1-D and of equal length")
    valid = ~torch.isnan(r)
    adv = torch.full_like(r, float("nan"))
    gstd = r[valid].std(unbiased=False) if (global_std and valid.any()) else None
    groups: Dict[Hashable, List[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    for idx in groups.values():
        idx_t = torch.tensor(idx)
        ok = idx_t[valid[idx_t]]
        if ok.numel() == 0:
            continue
        g = r[ok]
        std = gstd if gstd is not None else g.std(unbiased=False)
        # a zero-variance group carries no signal: advantage 0 (never 0/0)
        adv[ok] = (g - g.mean()) / (std + std_eps) if float(std + std_eps) > 0 else torch.zeros_like(g)
    return adv.clamp(-clip, clip).float()


def clipped_policy_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, adv: torch.Tensor,
                        clip_range: float) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """PPO-clip surrogate to *minimise*: mean(max(-A rho, -A clip(rho, 1-eps, 1+eps))).

    Shapes: log_prob, old_log_prob, adv all (N,) (one entry per (sample, timestep)). Returns the loss and
    detached stats: ratio mean/min/max, clip fraction (|rho - 1| > eps), approx KL (mean 0.5 (log rho)^2)."""
    log_ratio = log_prob - old_log_prob.detach()
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        stats = {
            "ratio_mean": ratio.mean(), "ratio_min": ratio.min(), "ratio_max": ratio.max(),
            "ratio_max_dev": (ratio - 1).abs().max(),
            "clip_frac": ((ratio - 1).abs() > clip_range).float().mean(),
            "approx_kl": (0.5 * log_ratio ** 2).mean(),
        }
    return loss, stats


def num_train_timesteps(num_steps: int, fraction: float) -> int:
    """Flow-GRPO's count of trained steps: int(num_steps * fraction), at least 1 (6 steps x 0.99 -> 5)."""
    return max(1, int(num_steps * fraction))
