"""Per-GPU memory items of one pool and the rules that turn model sizes into bytes (no models here).

Learner state follows the DeepSpeed configuration `edit_rlhf.distributed.deepspeed_engine` builds (torch AdamW,
bf16/fp16 mixed precision when the weights are in that dtype, ZeRO stage from `learner.zero_stage`):
- ZeRO >= 1 partitions the optimizer state over the ranks: Adam's m and v (fp32) and, under mixed precision,
  the fp32 master copy: 12 bytes per trainable parameter / ranks (8 in pure fp32);
- ZeRO >= 2 also partitions the gradients (the 16-bit gradients of a rank's partition, plus one reduce bucket
  of `REDUCE_BUCKET` elements in flight), and mixed precision keeps an fp32 gradient partition for the step;
- ZeRO 3 also partitions the weights (plus a gather buffer for the layers in flight, `STAGE3_LIVE` elements).
vLLM actors get `gpu_memory_utilization` of their GPU: weights of one tensor-parallel shard, the activation
reserve of its profile run, CUDA graphs, and the KV cache in what is left.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

GiB = float(1 << 30)
RUNTIME_BYTES = int(2.5 * GiB)  # CUDA context, NCCL buffers, allocator slack of one torch process
CUDA_GRAPH_BYTES = int(1.0 * GiB)  # vLLM with enforce_eager=false
REDUCE_BUCKET = 500_000_000  # DeepSpeed's default reduce_bucket_size (elements)
STAGE3_LIVE = 1_000_000_000  # DeepSpeed's default stage3_max_live_parameters (elements)


def zero_state(trainable: int, param_bytes: int, world: int, stage: int, mixed: bool) -> Dict[str, int]:
    """Gradient and optimizer bytes per rank for `trainable` parameters held in `param_bytes`-byte weights."""
    shard = world if stage >= 1 else 1
    if stage >= 2:
        grads = math.ceil(trainable / world) * param_bytes + min(trainable, REDUCE_BUCKET) * param_bytes
    else:
        grads = trainable * param_bytes
    if mixed:
        grads += math.ceil(trainable / shard) * 4  # fp32 gradients of the partition the optimizer steps
    optim = math.ceil(trainable / shard) * (12 if mixed else 8)
    return {"grads": int(grads), "optimizer": int(optim)}


def weights_per_rank(total_bytes: int, total_params: int, param_bytes: int, world: int, stage: int) -> int:
    if stage < 3:
        return int(total_bytes)
    return int(math.ceil(total_bytes / world) + min(total_params, STAGE3_LIVE) * param_bytes)


@dataclass
class PoolPlan:
    """One pool: `actors` actors of `gpus_per_actor` GPUs; `items` are bytes per GPU."""

    name: str
    kind: str  # learner | diffusers | vllm | hf | cpu
    actors: int
    gpus_per_actor: float
    gpu_memory_gb: Optional[float]
    items: Dict[str, int] = field(default_factory=dict)
    trainable: int = 0
    notes: List[str] = field(default_factory=list)
    peak: int = 0
    fits: Optional[bool] = None  # None: no GPU (nothing to check)
    why: str = ""

    def finish(self) -> "PoolPlan":
        if self.kind != "vllm":
            self.peak = int(sum(self.items.values()))
        if not self.gpus_per_actor:
            self.fits = None
            return self
        if self.gpu_memory_gb is None:
            self.fits = False
            self.why = f"pool '{self.name}': set {self.name}.gpu_memory_gb (the GPU size of its node type) to check it"
            return self
        cap = self.gpu_memory_gb * GiB
        if self.kind == "vllm":
            return self  # decided by `vllm_budget`
        self.fits = self.peak <= cap
        if not self.fits:
            self.why = (f"pool '{self.name}' needs {self.peak / GiB:.1f} GiB per GPU, more than its "
                        f"gpu_memory_gb={self.gpu_memory_gb:g}")
        return self

    def row(self) -> Dict:
        d = {"pool": self.name, "kind": self.kind, "actors": self.actors, "gpus_per_actor": self.gpus_per_actor,
             "gpu_memory_gb": self.gpu_memory_gb, "trainable_params": self.trainable,
             **{k: v for k, v in self.items.items()}, "peak": self.peak, "fits": self.fits, "notes": self.notes}
        if self.why:
            d["why"] = self.why
        return d


def vllm_budget(plan: PoolPlan, weights_shard: int, reserve: int, kv_per_token: int, max_model_len: int,
                max_num_seqs: int, utilization: float, eager: bool) -> PoolPlan:
    """Fill a vLLM pool's items: what vLLM takes (`utilization` of the GPU), and whether the KV cache left holds
    one `max_model_len` sequence (vLLM refuses to start otherwise)."""
    graphs = 0 if eager else CUDA_GRAPH_BYTES
    plan.items.update(weights=weights_shard, activations=reserve, cuda_graphs=graphs)
    if plan.gpu_memory_gb is None:
        plan.fits = False
        plan.why = f"pool '{plan.name}': set {plan.name}.gpu_memory_gb (the GPU size of its node type) to check it"
        return plan
    budget = int(utilization * plan.gpu_memory_gb * GiB)
    kv = budget - weights_shard - reserve - graphs
    plan.items["kv_cache"] = max(0, kv)
    plan.peak = budget
    need = max_model_len * kv_per_token
    seqs = kv / need if need else 0.0
    plan.notes.append(f"KV cache {max(0, kv) / GiB:.1f} GiB = {max(0, kv) // max(1, kv_per_token):,} tokens "
                      f"({seqs:.1f} x max_model_len={max_model_len}; max_num_seqs={max_num_seqs}); "
                      f"{kv_per_token / 1024:.1f} KiB/token per shard")
    plan.fits = kv >= need
    if not plan.fits:
        plan.why = (f"pool '{plan.name}': vLLM's {utilization:g} x {plan.gpu_memory_gb:g} GiB leaves "
                    f"{kv / GiB:.1f} GiB for the KV cache after {weights_shard / GiB:.1f} GiB of weights per shard; "
                    f"one max_model_len={max_model_len} sequence needs {need / GiB:.2f} GiB")
    return plan
