"""Editor SFT learner rank: supervised flow matching of the Kontext transformer inside a DeepSpeed engine.

K ranks (Ray actors; `edit_rlhf.actors.learner` is the shell, `pipelines/editor_sft.py` the driver) form one
torch.distributed group. Every rank derives the same global batch for a step from (seed, step) - example
indices, times t and noise - and trains on its 1/K slice; DeepSpeed averages the gradients, so K ranks take
the same step as one rank on the whole batch. The velocity is `kontext_velocity` on the condition of
`KontextEditor.condition`: the function Flow-GRPO later samples and trains.
"""
from __future__ import annotations

import math
import time
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from edit_rlhf.distributed import deepspeed_engine, init_process_group, load_engine_state, save_engine_state
from edit_rlhf.models.kontext import KontextCondition, KontextEditor, kontext_velocity
from edit_rlhf.models.lora import add_lora, get_lora_state, lora_metadata, save_lora
from edit_rlhf.models.memory import enable_checkpointing
from edit_rlhf.runtime import resolve_dtype
from edit_rlhf.sft.editor_data import EncodedTriples, encode_triples, load_triples
from edit_rlhf.sft.editor_eval import probe_eval
from edit_rlhf.sft.flow_matching import (
    edit_region_weights, flow_matching_loss, flux_mu, interpolate, sample_timesteps, velocity_target,
)
from edit_rlhf.vlm.sft import lr_factor


def step_generator(seed: int, step: int) -> torch.Generator:
    """The RNG of one global step: the same on every rank and for any number of ranks."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, 17]).generate_state(1)[0]))


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 3]).permutation(n)


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
    """Example indices of global step `step`: consecutive slices of per-epoch shuffles of range(n)."""
    out: List[int] = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, off = divmod(pos, n)
        take = epoch_order(seed, epoch, n)[off: off + batch_size - len(out)]
        out += [int(i) for i in take]
        pos += len(take)
    return np.asarray(out)


class SFTModule(torch.nn.Module):
    """What the DeepSpeed engine trains: the Kontext transformer and, with `train_text_encoders`, the CLIP and
    T5 text encoders (their prompt embeddings are then recomputed with gradients for every batch)."""

    def __init__(self, editor: KontextEditor, train_text_encoders: bool = False):
        super().__init__()
        self.transformer = editor.transformer
        self.train_text = train_text_encoders
        if train_text_encoders:
            self.text_encoder = editor.pipe.text_encoder
            self.text_encoder_2 = editor.pipe.text_encoder_2
        object.__setattr__(self, "_editor", editor)  # not a submodule: the VAE stays out of the engine

    def forward(self, x, timesteps, cond: KontextCondition, guidance: float, instructions=None):
        if self.train_text:
            ed = self._editor
            pe, pooled, text_ids = ed.pipe.encode_prompt(prompt=list(instructions), prompt_2=None, device=ed.device,
                                                         num_images_per_prompt=1,
                                                         max_sequence_length=ed.max_sequence_length)
            cond = KontextCondition(pe, pooled, text_ids, cond.image_latents, cond.img_ids)
        return kontext_velocity(self.transformer, x, timesteps, cond, guidance)


class EditorSFTLearner:
    """One rank. `cfg` is an EditorSFTConfig."""

    def __init__(self, cfg, rank: int, world: int, master_addr: str, master_port: int):
        self.cfg, self.rank, self.world = cfg, rank, world
        self.device = init_process_group(rank, world, master_addr, master_port, cfg.editor.device,
                                         cfg.learner.backend)
        e = cfg.editor
        self.editor = KontextEditor(e.path, e.resolution, e.max_sequence_length, e.guidance_scale, self.device,
                                    resolve_dtype(e.dtype))
        tr = self.transformer = self.editor.transformer
        if cfg.mode == "lora":
            lc = cfg.lora
            add_lora(tr, lc.rank, lc.alpha, lc.target_modules, lc.init, lc.seed)
        else:
            tr.requires_grad_(True)
        if cfg.learner.gradient_checkpointing:
            enable_checkpointing(tr)
        wrapped = SFTModule(self.editor, cfg.train_text_encoders)
        if cfg.train_text_encoders:
            for m in (wrapped.text_encoder, wrapped.text_encoder_2):
                m.requires_grad_(True).train()
        tr.train()
        params = [p for p in wrapped.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in params)
        self.per_rank = cfg.flow.batch_size // world
        self.engine = deepspeed_engine(wrapped, params, cfg.optim, cfg.learner.zero_stage, self.per_rank, 1, e.dtype)
        self.mu = sampler_mu(self.editor.pipe.scheduler.config, self.editor.image_seq_len) if cfg.flow.shift == "flux" else None
        t0 = time.time()
        _, self.src, self.ins, self.tgt = load_triples(cfg.data.train, cfg.data.validate)
        self.n = len(self.src)
        self.cache: Optional[EncodedTriples] = (encode_triples(self.editor, self.src, self.ins, self.tgt)
                                                if cfg.flow.cache_latents else None)
        self.eval_rows = self._load_eval() if cfg.data.eval else None
        self.encode_seconds = time.time() - t0
        self.step = 0

    # ------------------------------------------------------------------ data
    def _load_eval(self) -> Dict[str, Any]:
        from edit_rlhf.data.prompts import EditPromptDataset

        ds = EditPromptDataset(self.cfg.data.eval, require=("target_image",), validate=self.cfg.data.validate)
        n = min(self.cfg.data.eval_size, len(ds))
        cols = ["source_image", "instruction", "target_image"] + [c for c in ("oracle", "edit_type")
                                                                  if c in ds.ds.column_names]
        rows = [ds.row(i, cols) for i in range(n)]
        return {c: [r[c] for r in rows] for c in cols}

    def _batch(self, idx: np.ndarray) -> EncodedTriples:
        if self.cache is not None:
            return self.cache.take(idx, self.device)
        sel = [int(i) for i in idx]
        enc = encode_triples(self.editor, [self.src[i] for i in sel], [self.ins[i] for i in sel],
                             [self.tgt[i] for i in sel])
        return enc.take(torch.arange(len(sel)), self.device)

    def plan(self, step: int):
        """(indices (B,), t (B,), noise (B, L, C)) of global step `step` (identical on every rank)."""
        f = self.cfg.flow
        g = step_generator(self.cfg.seed, step)
        idx = batch_indices(self.cfg.seed, step, f.batch_size, self.n)
        t = sample_timesteps(f.batch_size, g, f.timestep_dist, f.logit_mean, f.logit_std, self.mu, f.uniform_frac)
        shape = (f.batch_size, self.editor.image_seq_len, 4 * self.editor.num_channels)
        return idx, t, torch.randn(shape, generator=g)

    # ------------------------------------------------------------------ training
    def info(self) -> dict:
        return {"rank": self.rank, "world": self.world, "trainable": self.trainable, "examples": self.n,
                "step": self.step, "encode_seconds": round(self.encode_seconds, 2), "mu": self.mu}

    @property
    def module(self):
        """The trained transformer (eval, LoRA state, saving)."""
        return self.transformer

    def _set_train(self, on: bool) -> None:
        self.engine.module.train(on)

    def loss_on(self, idx: np.ndarray, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Flow-matching loss of this rank's examples (idx, t, noise already sliced to the rank)."""
        b = self._batch(idx)
        t = t.to(self.device)
        noise = noise.to(self.device)
        xt = interpolate(b.x0, noise, t)
        ins = [self.ins[int(i)] for i in idx] if self.cfg.train_text_encoders else None
        pred = self.engine(xt, t * 1000.0, b.cond, self.cfg.editor.guidance_scale, ins)
        f = self.cfg.flow
        w = (edit_region_weights(b.x0, b.cond.image_latents, f.edit_region_weight, f.edit_region_threshold)
             if f.edit_region_weight > 0 else None)
        return flow_matching_loss(pred, velocity_target(b.x0, noise), w)

    def _lr(self, step: int) -> float:
        f, lr = self.cfg.flow, self.cfg.optim.lr
        if f.schedule == "constant":
            return lr * min(1.0, (step + 1) / max(1, f.warmup_steps))
        return lr * lr_factor(step, self.cfg.steps, f.warmup_steps, f.min_lr_ratio)

    def train_steps(self, n: int) -> List[Dict[str, float]]:
        """`n` optimizer steps; per step the global mean loss (all-reduced), grad norm and lr."""
        import torch.distributed as dist

        out = []
        lo, hi = self.rank * self.per_rank, (self.rank + 1) * self.per_rank
        for _ in range(n):
            t0 = time.time()
            lr = self._lr(self.step)
            for g in self.engine.optimizer.param_groups:
                g["lr"] = lr
            idx, t, noise = self.plan(self.step)
            loss = self.loss_on(idx[lo:hi], t[lo:hi], noise[lo:hi])
            self.engine.backward(loss)
            self.engine.step()
            red = loss.detach().float().clone()
            if self.world > 1:
                dist.all_reduce(red)
                red /= self.world
            gn = self.engine.get_global_grad_norm()
            self.step += 1
            out.append({"step": self.step, "loss": float(red), "lr": lr, "seconds": time.time() - t0,
                        "grad_norm": float(gn) if gn is not None else float("nan")})
        return out

    @torch.no_grad()
    def eval_loss(self, n_t: int = 8) -> float:
        """Flow-matching loss on the eval rows at `n_t` fixed times (midpoints of [0, 1]) and fixed noise."""
        if not self.eval_rows:
            return float("nan")
        r = self.eval_rows
        enc = encode_triples(self.editor, r["source_image"], r["instruction"], r["target_image"])
        g = torch.Generator().manual_seed(self.cfg.eval.seed)
        losses = []
        self._set_train(False)
        for k in range(n_t):
            t = torch.full((len(enc),), (k + 0.5) / n_t)
            noise = torch.randn(enc.x0.shape, generator=g)
            xt = interpolate(enc.x0, noise, t).to(self.device)
            c = enc.take(torch.arange(len(enc)), self.device).cond
            pred = kontext_velocity(self.module, xt, (t * 1000).to(self.device), c, self.cfg.editor.guidance_scale)
            losses.append(float(flow_matching_loss(pred, velocity_target(enc.x0, noise).to(self.device))))
        self._set_train(True)
        return float(np.mean(losses))

    @torch.no_grad()
    def evaluate(self, probes: bool = False, n_images: int = 4) -> Dict[str, Any]:
        """Held-out ODE edits scored against targets (and the oracle); probes when asked. Returns metrics
        and the first `n_images` (source, edit, target) for a sample grid."""
        if not self.eval_rows:
            return {"metrics": {}, "images": []}
        r = self.eval_rows
        n = len(r["source_image"])
        seeds = [self.cfg.eval.seed + i for i in range(n)]
        self._set_train(False)
        m = probe_eval(self.editor, r["source_image"], r["instruction"], r["target_image"], seeds,
                       self.cfg.eval.num_steps, r.get("oracle"), r.get("edit_type"), probes, transformer=self.module)
        from edit_rlhf.sft.editor_eval import ode_edits

        k = min(n_images, n)
        imgs = ode_edits(self.editor, r["source_image"][:k], r["instruction"][:k], seeds[:k], self.cfg.eval.num_steps,
                         transformer=self.module)
        m["flow_loss"] = self.eval_loss()
        self._set_train(True)
        return {"metrics": m, "images": [(r["source_image"][i], imgs[i], r["target_image"][i], r["instruction"][i])
                                         for i in range(k)]}

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path: str) -> None:
        """Every rank's DeepSpeed state and the step: the batch plan is a pure function of (seed, step), so
        the step is the whole data position."""
        save_engine_state(self.engine, path, {"step": self.step})

    def load_checkpoint(self, path: str) -> Dict[str, Any]:
        self.step = int(load_engine_state(self.engine, path)["step"])
        return {"step": self.step}

    def save(self, path: str) -> str:
        """Rank 0 writes a FluxKontextPipeline folder (full) or a diffusers LoRA folder (lora)."""
        if self.rank == 0:
            self._set_train(False)
            if self.cfg.mode == "lora":
                save_lora(path, get_lora_state(self.module), lora_metadata(self.module))
            else:  # the pipeline's transformer (and text encoders) are the trained modules
                self.editor.pipe.save_pretrained(path)
            self._set_train(True)
        return path


def sampler_mu(sc, image_seq_len: int) -> float:
    """The log-shift the scheduler applies to its sigmas: FLUX's resolution-dependent mu with dynamic
    shifting, log(shift) for a static shift."""
    if sc.get("use_dynamic_shifting", False):
        return flux_mu(image_seq_len, sc.get("base_image_seq_len", 256), sc.get("max_image_seq_len", 4096),
                       sc.get("base_shift", 0.5), sc.get("max_shift", 1.15))
    return math.log(sc.get("shift", 1.0))
