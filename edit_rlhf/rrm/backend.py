"""Engine selection: `build_engine` makes the vLLM or transformers engine a `VLMEngineConfig` names (`auto` = vLLM
when it is installed). The engines import `engine` (the shared request/response shapes), never this module."""
from __future__ import annotations

import importlib.util
from typing import Optional


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve_backend(name: str) -> str:
    if name == "auto":
        return "vllm" if vllm_available() else "hf"
    if name == "vllm" and not vllm_available():
        raise RuntimeError("backend 'vllm' requested but vllm is not installed; use backend=hf (or auto)")
    if name not in ("vllm", "hf"):
        raise ValueError(f"backend must be vllm | hf | auto, got {name!r}")
    return name


def build_engine(cfg, threads: Optional[int] = None, seed: int = 0):
    """The engine of a `VLMEngineConfig` (path + backend + backend settings)."""
    if not cfg.path:
        raise ValueError("engine: no model path given")
    backend = resolve_backend(cfg.backend)
    if backend == "vllm":
        from edit_rlhf.rrm.vllm_engine import VLLMEngine

        return VLLMEngine(cfg.path, cfg.vllm, threads=threads, seed=seed)
    from edit_rlhf.rrm.hf_engine import HFEngine

    return HFEngine(cfg.path, cfg.hf)
