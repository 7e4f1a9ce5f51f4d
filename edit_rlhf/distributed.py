"""torch.distributed + DeepSpeed set-up shared by every learner core (editor GRPO, editor SFT, RRM SFT/GCPO).

A learner rank is a Ray actor; K of them form one process group: gloo on CPU, NCCL on GPU.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, Optional

import torch

from edit_rlhf.runtime import resolve_device


def init_process_group(rank: int, world: int, master_addr: str, master_port: int, device: str = "auto",
                       backend: str = "auto") -> torch.device:
    """Join the learner group (DeepSpeed's comm layer over torch.distributed). Returns this rank's device."""
    dev = bind_device(device)
    # DeepSpeed places the engine on `cuda:LOCAL_RANK`: it must name the device chosen above
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(dev.index or 0), WORLD_SIZE=str(world),
                      MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
    import deepspeed

    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return dev


def bind_device(device: str = "auto") -> torch.device:
    """This rank's device (`resolve_device`: the Ray-assigned GPU or LOCAL_RANK, always with an index on CUDA),
    made the current CUDA device."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def deepspeed_engine(model: torch.nn.Module, params: Iterable[torch.nn.Parameter], optim_cfg, zero_stage: int,
                     micro_batch: int, grad_accum: int = 1, dtype: str = "float32",
                     extra: Optional[Dict[str, Any]] = None):
    """A DeepSpeed engine around `model` with a torch AdamW over `params` (no JIT-compiled optimizer)."""
    import deepspeed

    params = list(params)
    opt = torch.optim.AdamW(params, lr=optim_cfg.lr, betas=tuple(optim_cfg.betas), weight_decay=optim_cfg.weight_decay,
                            eps=optim_cfg.eps)
    cfg = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": optim_cfg.max_grad_norm,
        "zero_optimization": {"stage": zero_stage},
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16"},
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }
    cfg.update(extra or {})
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, optimizer=opt, config=cfg)
    return engine


def save_engine_state(engine, path: str, state: Dict[str, Any], tag: str = "ds") -> None:
    """Every rank's DeepSpeed state (weights, optimizer partitions) plus `state` and this rank's torch RNG."""
    engine.save_checkpoint(path, tag=tag, client_state={**state, "torch_rng": torch.random.get_rng_state()})


def load_engine_state(engine, path: str, tag: str = "ds") -> Dict[str, Any]:
    """Restore what `save_engine_state` wrote (and the torch RNG); returns the saved `state`."""
    load_path, client = engine.load_checkpoint(path, tag=tag, load_optimizer_states=True,
                                               load_lr_scheduler_states=True)
    if load_path is None:
        raise FileNotFoundError(f"no DeepSpeed checkpoint '{tag}' under {path}")
    torch.random.set_rng_state(client["torch_rng"])
    return client
