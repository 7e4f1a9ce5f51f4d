"""Edit-RRM SFT learner rank: Qwen2.5-VL inside a DeepSpeed engine, cross-entropy on the assistant tokens.

K ranks (Ray actors; `edit_rlhf.actors.learner` is the shell, `pipelines/rrm_sft.py` the driver) form one
torch.distributed group. Every rank derives the same global batch for a step from (seed, step) and trains on
its 1/K slice. The loss is the mean over the *global* batch's assistant tokens: each rank scales its token
sum by K / (global token count) and DeepSpeed averages the gradients, so K ranks take exactly the step one
rank takes on the whole batch. Examples are the RRM conversation (`rrm.prompt`, the inference prompt) with
the trace as the assistant turn (`vlm.chat.collate` masks everything else).
"""
from __future__ import annotations

import time
from typing import Any, Dict, List

import numpy as np
import torch

from edit_rlhf.distributed import deepspeed_engine, init_process_group, load_engine_state, save_engine_state
from edit_rlhf.models.memory import enable_checkpointing
from edit_rlhf.rrm_train.data import TraceDataset, chat_example, load_pairs, verdict_token_weights
from edit_rlhf.rrm_train.model import load_rrm, prepare, save_hf
from edit_rlhf.vlm.attention import batched_vision_attention
from edit_rlhf.vlm.chat import IGNORE, collate
from edit_rlhf.schedule import schedule_lr


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
    """Example indices of global step `step`: consecutive slices of per-epoch shuffles of range(n), so the
    data position is the step alone (a resumed run draws the same next batch)."""
    out: List[int] = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, off = divmod(pos, n)
        order = np.random.default_rng([seed, epoch, 3]).permutation(n)
        take = order[off: off + batch_size - len(out)]
        out += [int(i) for i in take]
        pos += len(take)
    return np.asarray(out)


def token_ce(model, batch: Dict[str, torch.Tensor]):
    """(weighted sum of CE over assistant tokens - the loss to back-propagate, their count, greedy hits, plain sum
    of CE - the loss to log) of one batch; `loss_weights` (optional, `verdict_token_weights`) weight the tokens."""
    labels = batch["labels"]
    weights = batch.get("loss_weights")
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "loss_weights")}
    logits = model(**inputs, use_cache=False).logits[:, :-1].float()
    target = labels[:, 1:]
    mask = target != IGNORE
    ce_tok = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                               ignore_index=IGNORE, reduction="none")
    ce = ce_tok.sum()
    with torch.no_grad():
        hits = ((logits.argmax(-1) == target) & mask).sum()
    weighted = ce if weights is None else (ce_tok * weights[:, 1:].reshape(-1)).sum()
    return weighted, mask.sum(), hits, ce


def loss_mass(batch: Dict[str, torch.Tensor]) -> torch.Tensor:
    """What a batch's loss is normalised by: its assistant-token count, or their weights' sum when weighted."""
    if batch.get("loss_weights") is not None:
        return batch["loss_weights"][:, 1:].sum()
    return (batch["labels"][:, 1:] != IGNORE).sum()


class RRMSFTLearner:
    """One rank. `cfg` is an RRMSFTConfig."""

    def __init__(self, cfg, rank: int, world: int, master_addr: str, master_port: int):
        self.cfg, self.rank, self.world = cfg, rank, world
        self.device = init_process_group(rank, world, master_addr, master_port, cfg.model.device, cfg.learner.backend)
        torch.manual_seed(cfg.seed)
        model, self.processor = load_rrm(cfg.model.path, cfg.model.dtype, cfg.model.device)
        model, self.trainable = prepare(model, cfg.model, cfg.seed)
        if cfg.learner.gradient_checkpointing:
            enable_checkpointing(model)
        model.train()
        self.per_rank = cfg.batch_size // world
        self.micro = cfg.micro_batch_size or self.per_rank  # sequences per forward/backward
        params = [p for p in model.parameters() if p.requires_grad]
        self.engine = deepspeed_engine(model, params, cfg.optim, cfg.learner.zero_stage, self.micro,
                                       self.per_rank // self.micro, cfg.model.dtype)
        self.data = TraceDataset(cfg.data.train, cfg.data.validate)
        self.eval_data = TraceDataset(cfg.data.eval) if cfg.data.eval else None
        self.pairs = load_pairs(cfg.data.pairs_eval).head(cfg.data.pairs_eval_size) if cfg.data.pairs_eval else None
        self.step = 0

    # ------------------------------------------------------------------ data
    def example(self, row: Dict[str, Any], with_answer: bool = True):
        p = self.cfg.prompt
        return chat_example(row["instruction"], row["principles"], row["source_image"], row["edited_image"],
                            row["trace_text"] if with_answer else None, p.style, p.system)

    def rank_batch(self, step: int, part: slice = slice(None)) -> Dict[str, torch.Tensor]:
        """This rank's share of step `step`'s global batch (its `part`, a micro-batch, when given)."""
        idx = batch_indices(self.cfg.seed, step, self.cfg.batch_size, len(self.data))
        mine = idx[self.rank * self.per_rank:(self.rank + 1) * self.per_rank][part]
        batch = collate(self.processor, [self.example(self.data.row(int(i))) for i in mine])
        if self.cfg.verdict_weight != 1.0:
            batch["loss_weights"] = verdict_token_weights(self.processor.tokenizer, batch["labels"],
                                                          self.cfg.verdict_weight)
        return {k: v.to(self.device) for k, v in batch.items()}

    # ------------------------------------------------------------------ training
    def info(self) -> dict:
        return {"rank": self.rank, "world": self.world, "trainable": self.trainable, "examples": len(self.data),
                "step": self.step}

    @property
    def module(self):
        return self.engine.module

    def _all_sum(self, *xs: torch.Tensor) -> List[torch.Tensor]:
        t = torch.stack([x.detach().double().cpu() for x in xs])
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(t)
        return list(t)

    def train_steps(self, n: int) -> List[Dict[str, float]]:
        """`n` optimizer steps; per step the global token-mean loss, token accuracy, grad norm and lr."""
        out = []
        with batched_vision_attention(self.cfg.model.vision_patch):
            for _ in range(n):
                t0 = time.time()
                lr = schedule_lr(self.cfg.optim.lr, self.step, self.cfg.steps, self.cfg.schedule)
                for g in self.engine.optimizer.param_groups:
                    g["lr"] = lr
                if self.micro == self.per_rank:
                    batch = self.rank_batch(self.step)
                    n_tok = (batch["labels"][:, 1:] != IGNORE).sum()
                    g_tok, g_mass = self._all_sum(n_tok, loss_mass(batch))
                    wce, tok, hits, ce = token_ce(self.engine, batch)
                    # sum over this rank's tokens, scaled so DeepSpeed's mean over ranks is the global token mean
                    self.engine.backward(wce * (self.world / max(1.0, float(g_mass))))
                    self.engine.step()
                else:  # micro-batches accumulate into one optimizer step (DeepSpeed steps on the last one)
                    parts = [self.rank_batch(self.step, slice(s, s + self.micro))
                             for s in range(0, self.per_rank, self.micro)]
                    n_tok = sum((b["labels"][:, 1:] != IGNORE).sum() for b in parts)
                    g_tok, g_mass = self._all_sum(n_tok, sum(loss_mass(b) for b in parts))
                    ce = hits = 0
                    for b in parts:
                        wc, _, h, c = token_ce(self.engine, b)
                        self.engine.backward(wc * (self.world / max(1.0, float(g_mass))), scale_wrt_gas=False)
                        self.engine.step()
                        ce, hits = ce + c.detach(), hits + h
                s_ce, s_hits = self._all_sum(ce, hits)
                gn = self.engine.get_global_grad_norm()
                self.step += 1
                out.append({"step": self.step, "loss": float(s_ce / g_tok), "token_accuracy": float(s_hits / g_tok),
                            "tokens": int(g_tok), "lr": lr, "seconds": time.time() - t0,
                            "grad_norm": float(gn) if gn is not None else float("nan")})
        return out

    # ------------------------------------------------------------------ evaluation (rank 0)
    @torch.no_grad()
    def generate(self, examples, max_tokens: int) -> List[str]:
        from edit_rlhf.vlm.generate import generate

        return generate(self.module, self.processor, examples, max_new_tokens=max_tokens,
                        batch_size=self.cfg.eval.batch_size, vision_patch=self.cfg.model.vision_patch)

    @torch.no_grad()
    def evaluate(self) -> Dict[str, Any]:
        """Greedy verdicts on the held-out traces (parse rate, agreement with gold checks, score error) and
        on both images of the held-out pairs (pairwise accuracy)."""
        from edit_rlhf.rrm.parse import parse_verdict
        from edit_rlhf.rrm_train.metrics import pairwise_metrics, verdict_metrics

        t0 = time.time()
        m: Dict[str, Any] = {}
        samples: List[str] = []
        mt = self.cfg.eval.max_tokens
        if self.eval_data is not None:
            rows = [self.eval_data.row(i) for i in range(min(self.cfg.data.eval_size, len(self.eval_data)))]
            replies = self.generate([self.example(r, with_answer=False) for r in rows], mt)
            vs = [parse_verdict(t, n_expected=len(r["principles"])) for t, r in zip(replies, rows)]
            golds = [r.get("checks") for r in rows] if all("checks" in r for r in rows) else None
            scores = [r.get("oracle_score") for r in rows] if all("oracle_score" in r for r in rows) else None
            m.update({f"traces/{k}": v for k, v in verdict_metrics(vs, golds, scores).items()})
            samples = replies[:2]
        if self.pairs is not None:
            ps = [self.pairs[i] for i in range(len(self.pairs))]
            p = self.cfg.prompt
            exs = [chat_example(q.instruction, q.principles, q.source, img, None, p.style, p.system)
                   for q in ps for img in (q.winner, q.loser)]
            replies = self.generate(exs, mt)
            vs = [parse_verdict(t, n_expected=len(ps[k // 2].principles)) for k, t in enumerate(replies)]
            sc = [v.score if v.ok else None for v in vs]
            pm = pairwise_metrics(sc[0::2], sc[1::2], [q.category for q in ps])
            m.update({f"pairs/{k}": v for k, v in pm.items()})
            m["pairs/parse_rate"] = float(np.mean([v.ok for v in vs]))
        m["seconds"] = time.time() - t0
        return {"metrics": m, "samples": samples}

    # ------------------------------------------------------------------ checkpoints
    def save_hf(self, path: str, extra: Dict = None) -> str:
        if self.rank == 0:
            save_hf(self.module, self.processor, path, extra)
        return path

    def save_checkpoint(self, path: str) -> None:
        save_engine_state(self.engine, path, {"step": self.step})

    def load_checkpoint(self, path: str) -> Dict[str, Any]:
        self.step = int(load_engine_state(self.engine, path)["step"])
        return {"step": self.step}
