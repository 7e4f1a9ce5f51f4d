"""FLUX.1-Kontext editor: loading by path, conditioning, the transformer call, schedule and decoding.

Everything mirrors `diffusers.FluxKontextPipeline.__call__` so that our sampler and the stock pipeline give
the same output for the same weights and seed: source-image latents are appended to the noisy latents on the
*sequence* dimension (their img_ids carry a 1 in channel 0), the transformer's prediction for them is sliced
off, the guidance scale goes in as an embedding (Kontext is guidance-distilled), and timesteps are the
scheduler's with FLUX's resolution-dependent shift.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image


@dataclass
class KontextCondition:
    """Conditioning of a batch of B edits.

    prompt_embeds: (B, S, D) T5 states; pooled: (B, Dp) CLIP pooled; text_ids: (S, 3) zeros;
    image_latents: (B, L, C) packed, scaled source latents; img_ids: (2L, 3) = [latent ids; source ids]."""

    prompt_embeds: torch.Tensor
    pooled: torch.Tensor
    text_ids: torch.Tensor
    image_latents: torch.Tensor
    img_ids: torch.Tensor

    def index(self, idx) -> "KontextCondition":
        """Rows `idx` (a LongTensor or list) of the per-sample tensors; ids are shared."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        return KontextCondition(self.prompt_embeds[idx], self.pooled[idx], self.text_ids,
                                self.image_latents[idx], self.img_ids)

    def repeat(self, n: int) -> "KontextCondition":
        """Repeat every row n times (row-major: a0 a0 ... a1 a1 ...)."""
        return self.index(torch.arange(self.prompt_embeds.shape[0]).repeat_interleave(n))

    def to_cpu_dict(self) -> dict:
        return {k: getattr(self, k).detach().cpu() for k in
                ("prompt_embeds", "pooled", "text_ids", "image_latents", "img_ids")}

    @staticmethod
    def from_dict(d: dict, device=None) -> "KontextCondition":
        return KontextCondition(*(d[k].to(device) if device is not None else d[k] for k in
                                  ("prompt_embeds", "pooled", "text_ids", "image_latents", "img_ids")))

    @staticmethod
    def cat(conds: Sequence["KontextCondition"]) -> "KontextCondition":
        c0 = conds[0]
        return KontextCondition(torch.cat([c.prompt_embeds for c in conds]), torch.cat([c.pooled for c in conds]),
                                c0.text_ids, torch.cat([c.image_latents for c in conds]), c0.img_ids)


def kontext_velocity(transformer, x: torch.Tensor, timesteps: torch.Tensor, cond: KontextCondition,
                     guidance_scale: float) -> torch.Tensor:
    """Velocity for noisy packed latents x (B, L, C) at scheduler timesteps (B,) (sigma * 1000).

    The source tokens are concatenated on the sequence dim and their predictions dropped. Returns (B, L, C)."""
    b = x.shape[0]
    dtype = transformer.dtype
    guidance = torch.full([1], guidance_scale, device=x.device, dtype=torch.float32).expand(b)
    hidden = torch.cat([x.to(dtype), cond.image_latents.to(dtype)], dim=1)
    out = transformer(hidden_states=hidden, timestep=timesteps.to(dtype) / 1000, guidance=guidance,
                      pooled_projections=cond.pooled.to(dtype), encoder_hidden_states=cond.prompt_embeds.to(dtype),
                      txt_ids=cond.text_ids, img_ids=cond.img_ids, return_dict=False)[0]
    return out[:, : x.shape[1]]


def flow_schedule(scheduler, num_steps: int, image_seq_len: int, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Timesteps (N,) and sigmas (N+1,, last 0) exactly as FluxKontextPipeline computes them."""
    from diffusers.pipelines.flux.pipeline_flux_kontext import calculate_shift, retrieve_timesteps

    cfg = scheduler.config
    mu = calculate_shift(image_seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                         cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
    sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
    timesteps, _ = retrieve_timesteps(scheduler, num_steps, device, sigmas=sigmas, mu=mu)
    return timesteps.float().cpu(), scheduler.sigmas.float().cpu()


def to_uint8(images) -> np.ndarray:
    """Float images in [0, 1] (B, 3, H, W) torch -> uint8 (B, H, W, 3) numpy."""
    x = images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return (x * 255).round().astype(np.uint8)


class KontextEditor:
    """A FluxKontextPipeline loaded by path, with the pieces Flow-GRPO needs.

    Text encoders and VAE are frozen; only `transformer` is trained (through LoRA). Memory switches (defaults
    keep everything on `device`): `text_encoders="cpu"` keeps CLIP and T5 on the CPU (`editor_placement`);
    `prompt_cache=N` keeps the embeddings of the last N instructions (each prompt is encoded once);
    `vae_slicing` decodes a batch one image at a time, `vae_tiling` in overlapping tiles."""

    def __init__(self, path: str, resolution: int, max_sequence_length: int = 32, guidance_scale: float = 2.5,
                 device=None, dtype=torch.float32, text_encoders: str = "device", prompt_cache: int = 0,
                 vae_slicing: bool = False, vae_tiling: bool = False, pipe=None):
        """`pipe`: an already built FluxKontextPipeline instead of loading `path` (scripts/gpu_smoke.py)."""
        from diffusers import FluxKontextPipeline

        from edit_rlhf.models.memory import editor_placement

        self.pipe = pipe if pipe is not None else FluxKontextPipeline.from_pretrained(path, torch_dtype=dtype)
        self.device = torch.device(device or "cpu")
        self.placement = editor_placement(text_encoders)
        for name, where in self.placement.items():  # component by component: T5 never visits the GPU if 'cpu'
            getattr(self.pipe, name).to(self.device if where == "device" else torch.device("cpu"))
        self.text_device = self.device if self.placement["text_encoder_2"] == "device" else torch.device("cpu")
        self.pipe.set_progress_bar_config(disable=True)
        if vae_slicing:
            self.pipe.vae.enable_slicing()
        if vae_tiling:
            self.pipe.vae.enable_tiling()
        self.prompt_cache = int(prompt_cache)
        self._prompts: "OrderedDict[str, tuple]" = OrderedDict()
        self.prompt_stats = {"hits": 0, "misses": 0}
        for m in (self.pipe.vae, self.pipe.text_encoder, self.pipe.text_encoder_2):
            m.requires_grad_(False).eval()
        self.transformer.requires_grad_(False)
        self.path = path
        self.resolution = resolution
        self.max_sequence_length = max_sequence_length
        self.guidance_scale = guidance_scale
        self.num_channels = self.transformer.config.in_channels // 4

    @property
    def transformer(self):
        return self.pipe.transformer

    @property
    def image_seq_len(self) -> int:
        f = self.pipe.vae_scale_factor * 2
        return (self.resolution // f) ** 2

    def schedule(self, num_steps: int) -> Tuple[torch.Tensor, torch.Tensor]:
        return flow_schedule(self.pipe.scheduler, num_steps, self.image_seq_len)

    @torch.no_grad()
    def condition(self, images: Sequence[np.ndarray], instructions: Sequence[str]) -> KontextCondition:
        """Encode B sources (uint8 (H, W, 3), any size: `editor_view` resizes them to resolution x resolution as the
        pipeline does) and B instructions."""
        if len(images) != len(instructions):
            raise ValueError(f"{len(images)} images but {len(instructions)} instructions")
        pe, pooled, text_ids = self.encode_prompts(instructions)
        from edit_rlhf.data.images import editor_view

        r = self.resolution
        # the same function the reward scorers use to show the judge this exact view of the source
        pil = [Image.fromarray(editor_view(im, r, r)).convert("RGB") for im in images]
        img_t = self.pipe.image_processor.preprocess(pil, r, r)
        _, image_latents, latent_ids, image_ids = self.pipe.prepare_latents(
            img_t, len(pil), self.num_channels, r, r, pe.dtype, self.device, None)
        return KontextCondition(pe, pooled, text_ids, image_latents, torch.cat([latent_ids, image_ids], dim=0))

    @torch.no_grad()
    def encode_prompts(self, instructions: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(prompt_embeds (B, S, D), pooled (B, Dp), text_ids (S, 3)) on `device`, encoded where the text encoders
        live; with `prompt_cache` each distinct instruction is encoded once (kept on the CPU)."""
        instructions = list(instructions)
        if not self.prompt_cache:
            pe, pooled, ids = self.pipe.encode_prompt(prompt=instructions, prompt_2=None, device=self.text_device,
                                                      num_images_per_prompt=1,
                                                      max_sequence_length=self.max_sequence_length)
            return pe.to(self.device), pooled.to(self.device), ids.to(self.device)
        todo = [s for s in dict.fromkeys(instructions) if s not in self._prompts]
        self.prompt_stats["hits"] += len(instructions) - len(todo)
        self.prompt_stats["misses"] += len(todo)
        if todo:
            pe, pooled, ids = self.pipe.encode_prompt(prompt=todo, prompt_2=None, device=self.text_device,
                                                      num_images_per_prompt=1,
                                                      max_sequence_length=self.max_sequence_length)
            for k, s in enumerate(todo):
                self._prompts[s] = (pe[k].cpu(), pooled[k].cpu(), ids.cpu())
        for s in instructions:
            self._prompts.move_to_end(s)
        while len(self._prompts) > self.prompt_cache:
            self._prompts.popitem(last=False)
        rows = [self._prompts[s] for s in instructions]
        return (torch.stack([r[0] for r in rows]).to(self.device), torch.stack([r[1] for r in rows]).to(self.device),
                rows[0][2].to(self.device))

    def initial_noise(self, generators: List[torch.Generator]) -> torch.Tensor:
        """x_T for B samples, one generator each (as the pipeline draws it): (B, L, C) fp32."""
        from diffusers.utils.torch_utils import randn_tensor

        r = self.resolution
        h = 2 * (r // (self.pipe.vae_scale_factor * 2))
        shape = (len(generators), self.num_channels, h, h)
        lat = randn_tensor(shape, generator=generators, device=self.device, dtype=torch.float32)
        return self.pipe._pack_latents(lat, len(generators), self.num_channels, h, h)

    def velocity_fn(self, transformer=None):
        """A closure v(x, timesteps, cond) over `transformer` (default: the pipeline's)."""
        tr = transformer if transformer is not None else self.transformer
        return lambda x, t, cond: kontext_velocity(tr, x, t, cond, self.guidance_scale)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Packed latents (B, L, C) -> uint8 images (B, H, W, 3), as the pipeline's postprocess does."""
        vae = self.pipe.vae
        r = self.resolution
        z = self.pipe._unpack_latents(latents.to(vae.dtype), r, r, self.pipe.vae_scale_factor)
        z = z / vae.config.scaling_factor + vae.config.shift_factor
        img = vae.decode(z, return_dict=False)[0]
        return to_uint8(self.pipe.image_processor.postprocess(img, output_type="pt"))
