"""Per-process set-up shared by the driver and every actor: offline hub, quiet libraries, thread count, device.

Call `setup_process()` first thing in every process (actors included) before importing diffusers,
transformers or deepspeed: it sets the environment those libraries read at import time.
"""
from __future__ import annotations

import logging
import os
import warnings
from typing import Optional, Sequence

_DONE = False


class _DropVLLMThreadNotice(logging.Filter):
    """vLLM's CPU worker warns on every multimodal request that torch.set_num_threads is disabled (its own
    threads are set once at start-up): hundreds of identical lines per evaluation."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "doesn't allow to use `torch.set_num_threads`" not in record.getMessage()


def quiet_vllm_worker_logs() -> None:
    """Install the filter on vLLM's CPU-worker logger (idempotent; call again after vLLM configured logging)."""
    lg = logging.getLogger("vllm.v1.worker.cpu_worker")
    if not any(isinstance(f, _DropVLLMThreadNotice) for f in lg.filters):
        lg.addFilter(_DropVLLMThreadNotice())


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def setup_process(torch_threads: Optional[int] = 1, quiet: bool = True) -> None:
    """Idempotent: offline hub, no progress bars, DeepSpeed CPU accelerator when no GPU, `torch_threads` threads.

    One torch thread per actor process is the default: on a 2-core machine, several actors each using
    all cores made steps 20-30x slower (oversubscription)."""
    global _DONE
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    set_extensions_dir()
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if torch_threads:
        torch.set_num_threads(int(torch_threads))
    if quiet and not _DONE:
        for name in ("deepspeed", "DeepSpeed", "diffusers", "transformers", "peft", "datasets", "filelock",
                     "urllib3", "alembic", "mlflow"):
            logging.getLogger(name).setLevel(logging.ERROR)
        quiet_vllm_worker_logs()
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"(diffusers|transformers|peft|torch)\..*")
        try:
            from diffusers.utils import logging as dlog

            dlog.set_verbosity_error()
            dlog.disable_progress_bar()
            from transformers.utils import logging as tlog

            tlog.set_verbosity_error()
            tlog.disable_progress_bar()
        except ImportError:
            pass
    _DONE = True


def cuda_index(ray_gpu_ids: Sequence, visible_devices: Optional[str], local_rank: Optional[str],
               device_count: int) -> int:
    """The CUDA device index (as torch numbers the devices this process sees) that this process should use.

    - A Ray actor with GPUs (`ray_gpu_ids` = `ray.get_gpu_ids()`): Ray sets CUDA_VISIBLE_DEVICES to the ids it
      assigned, so the first assigned id is at its position in that list (0 for a 1-GPU actor). With
      RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES (every GPU visible) the id is the index itself.
    - A process started by torchrun / the deepspeed launcher: LOCAL_RANK.
    - Otherwise device 0.
    Raises ValueError naming the numbers when the choice is not a visible device."""
    if device_count < 1:
        raise ValueError(f"CUDA requested but no CUDA device is visible (CUDA_VISIBLE_DEVICES={visible_devices!r})")
    if ray_gpu_ids:
        gid = str(ray_gpu_ids[0]).strip()
        visible = [v.strip() for v in visible_devices.split(",")] if visible_devices else []
        if gid in visible:
            idx = visible.index(gid)
        else:
            try:
                idx = int(gid)
            except ValueError:
                raise ValueError(f"Ray assigned GPU {gid!r}, which is not in CUDA_VISIBLE_DEVICES="
                                 f"{visible_devices!r}") from None
        where = f"Ray-assigned GPU {gid} (CUDA_VISIBLE_DEVICES={visible_devices!r})"
    elif local_rank not in (None, ""):
        idx, where = int(local_rank), f"LOCAL_RANK={local_rank}"
    else:
        idx, where = 0, "default"
    if not 0 <= idx < device_count:
        raise ValueError(f"CUDA device index {idx} from {where} is not one of the {device_count} visible device(s)")
    return idx


def ray_gpu_ids() -> list:
    """GPU ids Ray assigned to this worker ([] outside a Ray worker or without GPUs)."""
    try:
        import ray

        return list(ray.get_gpu_ids()) if ray.is_initialized() else []
    except Exception:  # not a Ray worker / Ray not installed
        return []


def set_extensions_dir() -> str:
    """JIT-compiled ops (DeepSpeed's CPU comm op) are cached per environment, not in the shared
    ~/.cache/torch_extensions: two virtualenvs on one machine otherwise rebuild each other's op on every
    switch (their include paths differ), and a process killed mid-build leaves a lock file that makes
    every later learner wait forever. TORCH_EXTENSIONS_DIR set by the user wins."""
    import sys

    return os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))


def resolve_device(spec: str = "auto"):
    """'auto' -> this process's CUDA device when CUDA is available, else cpu; 'cuda' -> this process's CUDA
    device (see `cuda_index`); 'cuda:N' / 'cpu' as given. A CUDA device always carries an index:
    `torch.cuda.set_device` rejects `torch.device("cuda")`. Never hard-codes a device."""
    import torch

    if spec == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if spec in ("auto", "cuda"):
        return torch.device("cuda", cuda_index(ray_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"),
                                               os.environ.get("LOCAL_RANK"), torch.cuda.device_count()))
    return torch.device(spec)


def resolve_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
