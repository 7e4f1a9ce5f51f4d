"""Flow-GRPO learner rank: the Kontext transformer's LoRA inside a DeepSpeed engine.

K ranks (Ray actors; `edit_rlhf.actors.learner` is the shell) form one torch.distributed group (gloo on CPU,
NCCL on GPU). Each step every rank recomputes the log-probs of its share of the stored SDE transitions with
gradients, applies the clipped-ratio loss (+ beta * KL to the LoRA-disabled reference) and DeepSpeed averages
gradients across ranks. Rank 0 hands the new LoRA weights out for the rollout pool.
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, Dict, List, Sequence, Tuple

import torch

from edit_rlhf.algorithms.flow_grpo import clipped_policy_loss, kl_to_reference, sde_step
from edit_rlhf.models.kontext import KontextCondition, kontext_velocity
from edit_rlhf.models.lora import add_lora, get_lora_state, lora_metadata, save_lora
from edit_rlhf.models.memory import enable_checkpointing
from edit_rlhf.distributed import deepspeed_engine, init_process_group
from edit_rlhf.faults import maybe_fail
from edit_rlhf.runtime import resolve_dtype
from edit_rlhf.schedule import schedule_lr

# One training item: (group trajectory dict, sample index within the group, advantage).
Item = Tuple[Dict[str, Any], int, float]


def transitions(items: Sequence[Item]) -> Dict[str, Any]:
    """Flatten items into their kept SDE transitions, sample-major: M samples x K steps -> M*K rows.

    Returns x, x_next (M*K, L, C); old_log_prob, adv, timestep, sigma, sigma_next, dt (M*K,); cond (M*K rows)."""
    xs, xn, olp, adv, ts, s, sn, conds = [], [], [], [], [], [], [], []
    for traj, j, a in items:
        k = traj["log_probs"].shape[1]
        lat = traj["latents"][j]
        xs.append(lat[:k])
        xn.append(lat[1:k + 1])
        olp.append(traj["log_probs"][j])
        adv.append(torch.full((k,), float(a)))
        ts.append(traj["timesteps"][:k])
        s.append(traj["sigmas"][:k])
        sn.append(traj["sigmas"][1:k + 1])
        conds.append(KontextCondition.from_dict(traj["cond"]).repeat(k))
    t0 = items[0][0]
    return {"x": torch.cat(xs), "x_next": torch.cat(xn), "old_log_prob": torch.cat(olp), "adv": torch.cat(adv),
            "timestep": torch.cat(ts), "sigma": torch.cat(s), "sigma_next": torch.cat(sn),
            "cond": KontextCondition.cat(conds), "sigma_max": float(t0["sigmas"][1]),
            "noise_level": float(t0["noise_level"])}


def grpo_loss(transformer, batch: Dict[str, Any], guidance: float, clip_range: float, beta: float,
              kl_form: str = "flow_grpo", reference=None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Loss on a batch of transitions (see `transitions`).

    `reference()` is a context manager under which `transformer` computes the reference policy (LoRA off)."""
    dev = batch["x"].device
    cond = batch["cond"]
    v = kontext_velocity(transformer, batch["x"], batch["timestep"], cond, guidance)
    _, lp, mean, std_t = sde_step(v, batch["x"], batch["sigma"], batch["sigma_next"], batch["sigma_max"],
                                  batch["noise_level"], x_next=batch["x_next"])
    policy_loss, stats = clipped_policy_loss(lp, batch["old_log_prob"].to(dev), batch["adv"].to(dev), clip_range)
    loss = policy_loss
    kl = torch.zeros((), device=dev)
    if beta > 0:
        with torch.no_grad(), reference():
            v_ref = kontext_velocity(transformer, batch["x"], batch["timestep"], cond, guidance)
            _, _, mean_ref, _ = sde_step(v_ref, batch["x"], batch["sigma"], batch["sigma_next"], batch["sigma_max"],
                                         batch["noise_level"], x_next=batch["x_next"])
        dt = (batch["sigma_next"] - batch["sigma"]).to(dev) if kl_form == "exact" else None
        kl = kl_to_reference(mean, mean_ref, std_t, dt).mean()
        loss = policy_loss + beta * kl
    stats.update(policy_loss=policy_loss.detach(), kl=kl.detach(), loss=loss.detach())
    return loss, stats


class _AdaptersOff:
    def __init__(self, module):
        self.module = module

    def __enter__(self):
        self.module.disable_adapters()

    def __exit__(self, *exc):
        self.module.enable_adapters()


class GRPOLearner:
    """One rank. `cfg` is a GRPOConfig; `rank`/`world` place it in the process group."""

    def __init__(self, cfg, rank: int, world: int, master_addr: str, master_port: int, transformer=None):
        """`transformer`: a built Kontext transformer instead of loading `editor.path` (scripts/gpu_smoke.py)."""
        from diffusers import FluxTransformer2DModel

        self.cfg = cfg
        self.rank, self.world = rank, world
        self.device = init_process_group(rank, world, master_addr, master_port, cfg.editor.device,
                                         cfg.learner.backend)
        tr = transformer if transformer is not None else FluxTransformer2DModel.from_pretrained(
            cfg.editor.path, subfolder="transformer", torch_dtype=resolve_dtype(cfg.editor.dtype))
        lc = cfg.lora
        self.trainable = add_lora(tr, lc.rank, lc.alpha, lc.target_modules, lc.init, lc.seed)
        if cfg.learner.gradient_checkpointing:
            enable_checkpointing(tr)
        tr.to(self.device).train()
        a = cfg.algo
        rows = a.prompts_per_step * a.group_size // (world * a.num_minibatches) * cfg.sampling.train_timesteps
        self.micro = a.micro_batch_size or rows
        self.engine = deepspeed_engine(tr, [p for p in tr.parameters() if p.requires_grad], cfg.optim,
                                       cfg.learner.zero_stage, self.micro, rows // self.micro, cfg.editor.dtype)
        self.version = 0

    def info(self) -> dict:
        return {"rank": self.rank, "world": self.world, "trainable": self.trainable, "version": self.version}

    @property
    def module(self):
        return self.engine.module

    def lora_state(self) -> Dict[str, torch.Tensor]:
        return get_lora_state(self.module)

    def lora_snapshot(self) -> Dict[str, Any]:
        """What the rollout pool loads: {'state': LoRA tensors, 'version': policy version}."""
        return {"state": self.lora_state(), "version": self.version}

    def train_on(self, shard) -> Dict[str, float]:
        """shard: a LearnerShard (edit_rlhf.grpo.records) whose trajectory refs the actor shell has fetched:
        minibatches of (group key, sample index, advantage) and group key -> trajectory."""
        maybe_fail(f"learner-{self.rank}", "train")  # drills: a learner rank dies mid-step
        return self.train_step([[(shard.trajectories[g], j, a) for g, j, a in mb] for mb in shard.minibatches])

    def train_step(self, minibatches: List[List[Item]]) -> Dict[str, float]:
        """One policy update per minibatch (all ranks call with the same number of equal-sized minibatches)."""
        t0 = time.time()
        a = self.cfg.algo
        guidance = self.cfg.editor.guidance_scale
        sums: Dict[str, float] = defaultdict(float)
        first_dev = None
        n = 0
        for k, mb in enumerate(minibatches):
            lr = schedule_lr(self.cfg.optim.lr, self.version * len(minibatches) + k,
                             self.cfg.steps * len(minibatches), self.cfg.schedule)
            for g in self.engine.optimizer.param_groups:
                g["lr"] = lr
            batch = transitions(mb)
            rows = batch["x"].shape[0]
            for lo in range(0, rows, self.micro):
                sl = slice(lo, lo + self.micro)
                micro = {k: (v[sl].to(self.device) if torch.is_tensor(v) else v) for k, v in batch.items()
                         if k != "cond"}
                micro["cond"] = KontextCondition(*(t.to(self.device) for t in (
                    batch["cond"].prompt_embeds[sl], batch["cond"].pooled[sl], batch["cond"].text_ids,
                    batch["cond"].image_latents[sl], batch["cond"].img_ids)))
                loss, stats = grpo_loss(self.engine, micro, guidance, a.clip_range, a.beta, a.kl_form,
                                        lambda: _AdaptersOff(self.module))
                self.engine.backward(loss)
                self.engine.step()
                if first_dev is None:
                    first_dev = float(stats["ratio_max_dev"])
                for k, v in stats.items():
                    sums[k] += float(v)
                n += 1
            gn = self.engine.get_global_grad_norm()
            if gn is not None:
                sums["grad_norm"] += float(gn)
        self.version += 1
        out = {k: v / n for k, v in sums.items() if k != "grad_norm"}
        out["ratio_min"] = out.get("ratio_min", 1.0)
        out["grad_norm"] = sums["grad_norm"] / max(1, len(minibatches))
        out.update(lr=lr, ratio_first_max_dev=first_dev or 0.0, learner_seconds=time.time() - t0, version=self.version,
                   rank=self.rank)
        return out

    def save_lora(self, path: str) -> str:
        if self.rank == 0:
            save_lora(path, self.lora_state(), lora_metadata(self.module))
        return path

    def save_checkpoint(self, path: str, tag: str = "ds") -> None:
        """DeepSpeed state on every rank (a collective call): trainable (LoRA) weights only — the frozen base is
        reloaded from `editor.path` — plus optimizer partitions, the policy version and this rank's RNG."""
        self.engine.save_checkpoint(path, tag=tag, exclude_frozen_parameters=True,
                                    client_state={"version": self.version,
                                                  "torch_rng": torch.random.get_rng_state()})

    def load_checkpoint(self, path: str, tag: str = "ds") -> Dict[str, Any]:
        """Restore what `save_checkpoint` wrote (LoRA, optimizer, version, RNG). Returns the client state."""
        load_path, client = self.engine.load_checkpoint(path, tag=tag, load_module_strict=False,
                                                        load_optimizer_states=True, load_lr_scheduler_states=True)
        if load_path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint '{tag}' under {path}")
        self.version = int(client["version"])
        torch.random.set_rng_state(client["torch_rng"])
        return {"version": self.version}
