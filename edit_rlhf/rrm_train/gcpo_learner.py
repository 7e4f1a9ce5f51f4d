"""GCPO learner rank: the Edit-RRM inside a DeepSpeed engine, PPO-clip with a per-trace token mean.

K ranks (Ray actors; `pipelines/rrm_gcpo.py` drives them) form one torch.distributed group. For each
rollout batch the driver sends every rank its share of the sampled traces (`gcpo.rank_plan`): equal numbers
of micro-batches per rank, and per minibatch the count T of participating traces. The learner rebuilds each
trace's input exactly as the engines saw it - the processor's tokens for the rendered prompt and the two
images, then the sampled token ids - and teacher-forces its token log-probs. The loss of a micro-batch is
sum over its traces of (token-mean PPO-clip surrogate [+ beta KL to the SFT reference]) * K / T; DeepSpeed
averages over ranks, so the update is the paper's mean over the 2N traces of every pair, whatever K is.
Rank 0 packs the updated weights into `WeightBuckets` for the engines.
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from edit_rlhf.algorithms.gcpo import token_mean_clip_loss
from edit_rlhf.distributed import deepspeed_engine, init_process_group, load_engine_state, save_engine_state
from edit_rlhf.models.memory import enable_checkpointing
from edit_rlhf.rrm.engine import GenRequest, to_pil
from edit_rlhf.models.hf_weights import sync_weights
from edit_rlhf.rrm_train.model import load_rrm, prepare, save_hf
from edit_rlhf.rrm_train.sync import WeightBuckets
from edit_rlhf.vlm.attention import batched_vision_attention


class PromptCache:
    """Processor outputs of each request's prompt + images (computed once per rollout batch)."""

    def __init__(self, processor, requests: Sequence[GenRequest]):
        self.processor = processor
        self.requests = requests
        self.enc: Dict[int, Dict[str, torch.Tensor]] = {}

    def __call__(self, i: int) -> Dict[str, torch.Tensor]:
        if i not in self.enc:
            r = self.requests[i]
            enc = self.processor(text=[r.prompt], images=[to_pil(im) for im in r.images] or None, return_tensors="pt")
            enc = dict(enc)
            if "mm_token_type_ids" not in enc:
                pad = self.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
                enc["mm_token_type_ids"] = (enc["input_ids"] == pad).long()
            self.enc[i] = enc
        return self.enc[i]


def trace_batch(cache: PromptCache, items: Sequence[Dict[str, Any]], pad_id: int, device) -> Dict[str, torch.Tensor]:
    """Right-padded model inputs for items (prompt tokens + completion ids), plus `comp_pos` (B, C): the
    positions whose logits predict each completion token, `comp_ids` (B, C) and `comp_mask` (B, C)."""
    rows, pix, grids, mm = [], [], [], []
    plens, comps = [], []
    for it in items:
        e = cache(it["req"])
        ids = e["input_ids"][0].tolist()
        plens.append(len(ids))
        comps.append(list(it["ids"]))
        rows.append(ids + list(it["ids"]))
        mm.append(e["mm_token_type_ids"][0].tolist() + [0] * len(it["ids"]))
        if "pixel_values" in e:
            pix.append(e["pixel_values"])
            grids.append(e["image_grid_thw"])
    L = max(len(r) for r in rows)
    C = max(1, max(len(c) for c in comps))
    B = len(rows)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attn = torch.zeros((B, L), dtype=torch.long)
    mmt = torch.zeros((B, L), dtype=torch.long)
    pos = torch.zeros((B, C), dtype=torch.long)
    cid = torch.zeros((B, C), dtype=torch.long)
    cmask = torch.zeros((B, C), dtype=torch.float32)
    for b, (r, m, p, c) in enumerate(zip(rows, mm, plens, comps)):
        input_ids[b, :len(r)] = torch.tensor(r)
        attn[b, :len(r)] = 1
        mmt[b, :len(m)] = torch.tensor(m)
        if c:
            pos[b, :len(c)] = torch.arange(p - 1, p - 1 + len(c))
            cid[b, :len(c)] = torch.tensor(c)
            cmask[b, :len(c)] = 1.0
    out = {"input_ids": input_ids, "attention_mask": attn, "mm_token_type_ids": mmt}
    if pix:
        out["pixel_values"] = torch.cat(pix)
        out["image_grid_thw"] = torch.cat(grids)
    out = {k: v.to(device) for k, v in out.items()}
    out.update(comp_pos=pos.to(device), comp_ids=cid.to(device), comp_mask=cmask.to(device))
    return out


def completion_logprobs(model, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, C) log-probs of the completion tokens under `model` (raw distribution), 0 where masked."""
    inputs = {k: v for k, v in batch.items() if not k.startswith("comp_")}
    hidden = model(**inputs, use_cache=False).logits  # (B, L, V)
    sel = torch.gather(hidden, 1, batch["comp_pos"][..., None].expand(-1, -1, hidden.shape[-1])).float()
    lp = torch.log_softmax(sel, -1).gather(-1, batch["comp_ids"][..., None])[..., 0]
    return lp * batch["comp_mask"]


class GCPOLearner:
    """One rank. `cfg` is an RRMGCPOConfig."""

    def __init__(self, cfg, rank: int, world: int, master_addr: str, master_port: int):
        self.cfg, self.rank, self.world = cfg, rank, world
        self.device = init_process_group(rank, world, master_addr, master_port, cfg.model.device, cfg.learner.backend)
        torch.manual_seed(cfg.seed)
        model, self.processor = load_rrm(cfg.model.path, cfg.model.dtype, cfg.model.device)
        model, self.trainable = prepare(model, cfg.model, cfg.seed)
        if cfg.learner.gradient_checkpointing:
            enable_checkpointing(model)
        model.train()
        self.micro = cfg.algo.micro_batch_size
        params = [p for p in model.parameters() if p.requires_grad]
        self.engine = deepspeed_engine(model, params, cfg.optim, cfg.learner.zero_stage, self.micro, 1, cfg.model.dtype)
        self.ref = None
        if cfg.algo.beta > 0:  # the SFT checkpoint, frozen
            self.ref, _ = load_rrm(cfg.model.path, cfg.model.dtype, cfg.model.device)
            self.ref.eval().requires_grad_(False)
        self.pad_id = self.processor.tokenizer.pad_token_id or 0
        self.version = 0
        self.updates = 0

    def info(self) -> dict:
        return {"rank": self.rank, "world": self.world, "trainable": self.trainable, "version": self.version,
                "updates": self.updates}

    @property
    def module(self):
        return self.engine.module

    def _lr(self) -> float:
        s, lr = self.cfg.schedule, self.cfg.optim.lr
        from edit_rlhf.schedule import schedule_lr

        return schedule_lr(lr, self.version, self.cfg.steps, s)

    # ------------------------------------------------------------------ log-probs
    @torch.no_grad()
    def score(self, requests: Sequence[GenRequest], items: Sequence[Dict[str, Any]], model=None) -> List[List[float]]:
        """Teacher-forced log-probs of items' completions (current weights, or `model`)."""
        cache = PromptCache(self.processor, requests)
        m = model if model is not None else self.module
        was = m.training
        m.eval()
        out: List[List[float]] = []
        with batched_vision_attention(self.cfg.model.vision_patch):
            for lo in range(0, len(items), self.micro):
                chunk = items[lo:lo + self.micro]
                lp = completion_logprobs(m, trace_batch(cache, chunk, self.pad_id, self.device))
                out += [lp[b, :len(it["ids"])].tolist() for b, it in enumerate(chunk)]
        m.train(was)
        return out

    def score_completion(self, request: GenRequest, ids: Sequence[int]) -> List[float]:
        return self.score([request], [{"req": 0, "ids": list(ids)}])[0]

    # ------------------------------------------------------------------ update
    def train_step(self, requests: Sequence[GenRequest], plan: List[List[List[Dict[str, Any]]]],
                   totals: Sequence[int]) -> Dict[str, float]:
        """plan[minibatch][micro] -> items (this rank's share); totals[minibatch] = participating traces of the
        minibatch over all ranks. One optimizer step per minibatch; the version goes up by one."""
        import torch.distributed as dist

        t0 = time.time()
        a = self.cfg.algo
        cache = PromptCache(self.processor, requests)
        real = [it for mb in plan for mic in mb for it in mic if not it.get("dummy")]
        sums: Dict[str, float] = defaultdict(float)
        # the PPO ratio's denominator: this learner's log-probs before the update, or the rollout engine's
        if a.old_logprobs == "learner":
            old = self.score(requests, real)
            for it, lp in zip(real, old):
                it["old"] = lp
                if it.get("lp") is not None and len(it["lp"]) == len(lp) and lp:
                    d = np.abs(np.asarray(lp) - np.asarray(it["lp"]))
                    sums["rollout_lp_absdiff_max"] = max(sums["rollout_lp_absdiff_max"], float(d.max()))
                    sums["rollout_lp_absdiff_sum"] += float(d.sum())
                    sums["rollout_lp_tokens"] += len(lp)
        else:
            for it in real:
                if it.get("lp") is None:
                    raise ValueError("algo.old_logprobs=rollout needs the engines' sampling log-probs")
                it["old"] = it["lp"]
        refs: Dict[int, List[float]] = {}
        if self.ref is not None:
            for it, lp in zip(real, self.score(requests, real, model=self.ref)):
                refs[id(it)] = lp
        n_mb = 0
        loss_sum = torch.zeros((), dtype=torch.float64)
        with batched_vision_attention(self.cfg.model.vision_patch):
            for mb, total in zip(plan, totals):
                lr = self._lr()
                for g in self.engine.optimizer.param_groups:
                    g["lr"] = lr
                for k, mic in enumerate(mb):
                    self.engine.set_gradient_accumulation_boundary(k == len(mb) - 1)
                    batch = trace_batch(cache, mic, self.pad_id, self.device)
                    lp = completion_logprobs(self.engine, batch)
                    C = lp.shape[1]
                    old = torch.zeros_like(lp)
                    ref = torch.zeros_like(lp)
                    w = torch.zeros(len(mic), device=lp.device)
                    adv = torch.zeros(len(mic), device=lp.device)
                    for b, it in enumerate(mic):
                        src = it if not it.get("dummy") else None
                        n = len(it["ids"])
                        if src is not None:
                            old[b, :n] = torch.tensor(src["old"][:n], device=lp.device)
                            if self.ref is not None:
                                ref[b, :n] = torch.tensor(refs[id(src)][:n], device=lp.device)
                            w[b] = 1.0
                            adv[b] = src["adv"]
                    mask = batch["comp_mask"] * w[:, None]
                    loss, st = token_mean_clip_loss(lp, old, mask, adv, a.clip, ref if self.ref is not None else None,
                                                    a.beta)
                    n_live = float(st["traces"])
                    scaled = loss * (n_live * self.world / max(1, total))
                    self.engine.backward(scaled)
                    loss_sum += float(loss.detach()) * n_live / max(1, total)
                    if n_live:
                        sums["clip_frac"] += float(st["clip_frac"]) * n_live
                        sums["ratio_max_dev"] = max(sums["ratio_max_dev"], float(st["ratio_max_dev"]))
                        sums["kl"] += float(st["kl"]) * n_live
                        sums["traces"] += n_live
                        sums["tokens"] += float(mask.sum())
                self.engine.step()
                gn = self.engine.get_global_grad_norm()
                sums["grad_norm"] += float(gn) if gn is not None else 0.0
                n_mb += 1
                self.updates += 1
        red = torch.tensor([float(loss_sum), sums["traces"], sums["clip_frac"], sums["kl"], sums["tokens"]],
                           dtype=torch.float64)
        if self.world > 1:
            dist.all_reduce(red)
        self.version += 1
        tr = max(1.0, float(red[1]))
        out = {"loss": float(red[0]) / max(1, n_mb), "traces_trained": float(red[1]), "clip_frac": float(red[2]) / tr,
               "kl": float(red[3]) / tr, "tokens_trained": float(red[4]), "ratio_max_dev": sums["ratio_max_dev"],
               "grad_norm": sums["grad_norm"] / max(1, n_mb), "minibatches": n_mb, "lr": self._lr(),
               "learner_seconds": time.time() - t0, "version": self.version}
        if sums["rollout_lp_tokens"]:
            out["rollout_lp_absdiff_mean"] = sums["rollout_lp_absdiff_sum"] / sums["rollout_lp_tokens"]
            out["rollout_lp_absdiff_max"] = sums["rollout_lp_absdiff_max"]
        return out

    # ------------------------------------------------------------------ weights out
    def weight_buckets(self) -> WeightBuckets:
        """The weights the engines need (merged, HF names), packed, tagged with the current version."""
        return WeightBuckets(sync_weights(self.module, self.cfg.sync.trainable_only),
                             int(self.cfg.sync.bucket_mb * (1 << 20)), self.version)

    def nccl_sync_init(self, handles, tp: int, master_addr: str, master_port: int) -> bool:
        """Open (or reopen) the NCCL weight sync to the vLLM engines `handles` (rank 0 sends; the other ranks
        hold full replicas under ZeRO <= 2 and take no part)."""
        if getattr(self, "_nccl", None) is not None:
            self._nccl.close()
            self._nccl = None
        if self.rank != 0:
            return False
        from edit_rlhf.models.hf_weights import trainable_names
        from edit_rlhf.transport import NCCLSender

        names = set(trainable_names(self.module)) if self.cfg.sync.trainable_only else None
        self._nccl = NCCLSender(self.module, names, handles, tp, self.rank, master_addr, master_port)
        return True

    def nccl_sync(self) -> List[int]:
        """Broadcast the current weights (version `self.version`); the engines' versions (rank 0) or []."""
        if getattr(self, "_nccl", None) is None:
            return []
        return self._nccl.send(self.version)

    def weights_digest(self) -> float:
        """A cheap fingerprint of the trainable weights (equivalence checks across rank counts)."""
        with torch.no_grad():
            return float(sum(p.double().abs().sum() for p in self.module.parameters() if p.requires_grad))

    def save_hf(self, path: str, extra: Optional[Dict] = None) -> str:
        if self.rank == 0:
            save_hf(self.module, self.processor, path, extra)
        return path

    def save_checkpoint(self, path: str) -> None:
        save_engine_state(self.engine, path, {"version": self.version, "updates": self.updates})

    def load_checkpoint(self, path: str) -> Dict[str, Any]:
        client = load_engine_state(self.engine, path)
        self.version = int(client["version"])
        self.updates = int(client.get("updates", 0))
        return {"version": self.version}
