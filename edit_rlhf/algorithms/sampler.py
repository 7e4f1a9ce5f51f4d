"""Flow-GRPO sampling loops over any velocity function v(x, timesteps, cond) -> (B, L, C).

`sample_sde` is the rollout sampler: Euler-Maruyama SDE steps with per-step Gaussian log-probs on the first
`sde_steps` steps, deterministic Euler steps after that (the last step is deterministic so the final image
carries no injected noise; only SDE steps are ever trained). `sample_ode` is the evaluation sampler
(noise 0), identical to FluxKontextPipeline's Euler loop.

Randomness comes only from one torch.Generator per sample, so a sample's trajectory depends on its seed and
not on which actor ran it or what else was in the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List

import torch

from edit_rlhf.algorithms.flow_grpo import ode_step, sde_step

Velocity = Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]


@dataclass
class Trajectory:
    """latents: (B, K+1, L, C) states x_0..x_K entering/leaving the K kept SDE steps (fp32, cpu);
    log_probs: (B, K) per-step mean log-probs; final: (B, L, C) last latents; timesteps (N,), sigmas (N+1,)."""

    latents: torch.Tensor
    log_probs: torch.Tensor
    final: torch.Tensor
    timesteps: torch.Tensor
    sigmas: torch.Tensor


def _noise_like(x: torch.Tensor, generators: List[torch.Generator]) -> torch.Tensor:
    # Drawn on the CPU from each sample's own generator: identical on CPU and GPU, independent of batching.
    return torch.stack([torch.randn(x.shape[1:], generator=g, dtype=torch.float32) for g in generators]).to(x.device)


@torch.no_grad()
def sample_sde(velocity: Velocity, x: torch.Tensor, cond, timesteps: torch.Tensor, sigmas: torch.Tensor,
               noise_level: float, sde_steps: int, keep_steps: int, generators: List[torch.Generator]) -> Trajectory:
    """Roll out B samples from x_T = `x` (B, L, C).

    sde_steps: number of leading stochastic steps (<= N); keep_steps: how many of those to keep for training."""
    n = len(timesteps)
    if not 0 < keep_steps <= sde_steps <= n:
        raise ValueError(f"need 0 < keep_steps ({keep_steps}) <= sde_steps ({sde_steps}) <= num_steps ({n})")
    if noise_level <= 0:
        raise ValueError("sample_sde needs noise_level > 0; use sample_ode for deterministic sampling")
    b = x.shape[0]
    x = x.float()
    sigma_max = float(sigmas[1])
    states = [x.cpu()]
    log_probs = []
    for i in range(n):
        v = velocity(x, timesteps[i].expand(b).to(x.device), cond)
        if i < sde_steps:
            x, lp, _, _ = sde_step(v, x, sigmas[i], sigmas[i + 1], sigma_max, noise_level,
                                   noise=_noise_like(x, generators))
            if i < keep_steps:
                states.append(x.cpu())
                log_probs.append(lp.cpu())
        else:
            x = ode_step(v, x, sigmas[i], sigmas[i + 1])
    return Trajectory(torch.stack(states, 1), torch.stack(log_probs, 1), x.cpu(), timesteps.cpu(), sigmas.cpu())


@torch.no_grad()
def sample_ode(velocity: Velocity, x: torch.Tensor, cond, timesteps: torch.Tensor, sigmas: torch.Tensor
               ) -> torch.Tensor:
    """Deterministic Euler sampling (noise 0). Returns final latents (B, L, C)."""
    b = x.shape[0]
    x = x.float()
    for i in range(len(timesteps)):
        v = velocity(x, timesteps[i].expand(b).to(x.device), cond)
        x = ode_step(v, x, sigmas[i], sigmas[i + 1])
    return x
