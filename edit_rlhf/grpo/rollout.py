"""Editor rollout: G SDE edits (with log-probs) per prompt, or ODE edits for evaluation.

This is the logic inside an editor-rollout actor (`edit_rlhf.actors.rollout` is the Ray shell). It loads the
editor by path, carries a LoRA adapter whose weights arrive from the learner with a policy version, and reads
source images from the prompt datasets itself, so the driver only ever passes row indices and seeds.
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from edit_rlhf.algorithms.sampler import sample_ode, sample_sde
from edit_rlhf.data.prompts import EditPromptDataset
from edit_rlhf.faults import maybe_fail
from edit_rlhf.models.kontext import KontextEditor
from edit_rlhf.models.lora import ADAPTER, add_lora, fuse_lora, set_lora_state, unfuse_lora
from edit_rlhf.runtime import resolve_device, resolve_dtype


def generators(seeds: Sequence[int]) -> List[torch.Generator]:
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


class EditorRollout:
    def __init__(self, cfg, datasets: Dict[str, str], worker_id: str = "rollout-0", pipe=None):
        """cfg: GRPOConfig (editor, lora, sampling used); datasets: split name -> path; `pipe`: a built
        FluxKontextPipeline instead of loading `editor.path` (scripts/gpu_smoke.py)."""
        self.cfg = cfg
        self.worker_id = worker_id
        self.device = resolve_device(cfg.editor.device)
        e = cfg.editor
        self.editor = KontextEditor(e.path, e.resolution, e.max_sequence_length, e.guidance_scale, self.device,
                                    resolve_dtype(e.dtype), e.text_encoders, e.prompt_cache, e.vae_slicing,
                                    e.vae_tiling, pipe=pipe)
        lc = cfg.lora
        add_lora(self.editor.transformer, lc.rank, lc.alpha, lc.target_modules, lc.init, lc.seed)
        self.editor.transformer.eval()
        self.version = 0  # the initial adapter (B = 0) is policy version 0 on every process
        self.data = {name: EditPromptDataset(p, validate="schema") for name, p in datasets.items()}
        self.served = 0
        self._lora_dirs: Dict[str, str] = {}  # LoRA folder -> adapter name (evaluation)
        self.adapter = ADAPTER  # the active adapter (reported with each evaluation)
        self._base: Optional[Dict[str, torch.Tensor]] = None  # base weights under a fused LoRA (`fuse`)

    def use_lora_dir(self, path: Optional[str]) -> str:
        """Evaluation: edit with a trained LoRA loaded from a diffusers LoRA folder (each folder loaded once, as
        its own adapter), or with `path=None` with this actor's own adapter again (the base editor while it is at
        version 0, B = 0). Returns the active adapter's name."""
        self.unfuse()  # peft merges/unmerges only its own adapters: switch with the base weights in place
        name = ADAPTER
        if path is not None:
            name = self._lora_dirs.get(path) or f"eval_{len(self._lora_dirs)}"
            if path not in self._lora_dirs:
                self.editor.pipe.load_lora_weights(path, adapter_name=name)
                self._lora_dirs[path] = name
        self.editor.transformer.set_adapters([name])
        self.adapter = name
        self.fuse()
        return name

    @property
    def fused(self) -> bool:
        return self._base is not None

    def fuse(self) -> None:
        """With `lora.fuse_rollout`, merge this actor's own adapter into the base weights: rollouts then run the
        base layers alone, without the unmerged LoRA's two extra matmuls per adapted layer (what they cost:
        `sde_over_pipeline` and its unfused twin in benchmarks/perf_step.py). Costs a CPU copy of the adapted base
        weights. The learner always trains unmerged."""
        if self._base is None and self.cfg.lora.fuse_rollout and self.adapter == ADAPTER:
            self._base = fuse_lora(self.editor.transformer)

    def unfuse(self) -> None:
        if self._base is not None:
            unfuse_lora(self.editor.transformer, self._base)
            self._base = None

    def set_lora(self, state: Dict[str, torch.Tensor], version: int) -> int:
        self.unfuse()  # the new weights replace the adapter's, never a merged delta
        set_lora_state(self.editor.transformer, state)
        self.fuse()
        self.version = int(version)
        return self.version

    def _source(self, split: str, index: int) -> Tuple[str, np.ndarray, str]:
        row = self.data[split].row(index, ["id", "source_image", "instruction"])
        return row["id"], row["source_image"], row["instruction"]

    def rollout(self, split: str, index: int, seeds: Sequence[int]) -> Tuple[dict, np.ndarray, dict]:
        """G = len(seeds) SDE edits of prompt `index`.

        Returns (meta, images uint8 (G, H, W, 3), traj) where traj holds latents (G, K+1, L, C), log_probs
        (G, K), timesteps, sigmas, the group's condition (B = 1) and the policy version."""
        maybe_fail(self.worker_id, "rollout")
        t0 = time.time()
        sc = self.cfg.sampling
        pid, src, instr = self._source(split, index)
        cond = self.editor.condition([src], [instr])
        gens = generators(seeds)
        if sc.same_noise_in_group:
            x = self.editor.initial_noise(generators(seeds[:1])).expand(len(seeds), -1, -1).clone()
        else:
            x = self.editor.initial_noise(gens)
        ts, sig = self.editor.schedule(sc.num_steps)
        traj = sample_sde(self.editor.velocity_fn(), x, cond.repeat(len(seeds)), ts, sig, sc.noise_level,
                          sc.stochastic_steps(), sc.train_timesteps, gens)
        images = self.editor.decode(traj.final.to(self.device))
        self.served += 1
        meta = {"prompt_id": pid, "index": int(index), "instruction": instr, "worker": self.worker_id,
                "policy_version": self.version, "seconds": time.time() - t0, "n": len(seeds)}
        data = {"latents": traj.latents, "log_probs": traj.log_probs, "timesteps": traj.timesteps,
                "sigmas": traj.sigmas, "cond": cond.to_cpu_dict(), "policy_version": self.version,
                "noise_level": sc.noise_level}
        return meta, images, data

    @torch.no_grad()
    def evaluate(self, split: str, indices: Sequence[int], seeds: Sequence[int],
                 source_from: Optional[Sequence[int]] = None, instruction_from: Optional[Sequence[int]] = None
                 ) -> Tuple[dict, np.ndarray]:
        """One deterministic (ODE, noise 0) edit per prompt with `eval_num_steps` steps.

        Probes: `source_from` / `instruction_from` take the source image / instruction from other rows
        (the result is still scored against row `indices[i]`), to show what the policy's output depends on."""
        t0 = time.time()
        src_rows = [self._source(split, i) for i in (source_from if source_from is not None else indices)]
        ins_rows = [self._source(split, i) for i in (instruction_from if instruction_from is not None else indices)]
        cond = self.editor.condition([r[1] for r in src_rows], [r[2] for r in ins_rows])
        x = self.editor.initial_noise(generators(seeds))
        ts, sig = self.editor.schedule(self.cfg.sampling.eval_num_steps)
        images = self.editor.decode(sample_ode(self.editor.velocity_fn(), x, cond, ts, sig))
        self.served += 1
        meta = {"prompt_ids": [self.data[split].ids[i] for i in indices], "indices": list(map(int, indices)),
                "worker": self.worker_id, "policy_version": self.version, "adapter": self.adapter,
                "seconds": time.time() - t0, "n": len(indices)}
        return meta, images
