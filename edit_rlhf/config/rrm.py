"""Configuration of the Edit-RRM at inference: prompt, generation backends (vLLM / HF) and the reward scorer.

`RRMScorerConfig` is `RewardConfig.rrm` (used when `reward.scorer=rrm`); `VLMEngineConfig` is shared with the
principle-decomposition stage (`edit_rlhf.config.principles`) and, later, the GCPO rollouts. Each `check()`
raises `ValueError("key: message")`; the loader prefixes the dotted path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

PROMPT_STYLES = ("full", "compact")
BACKENDS = ("vllm", "hf", "auto")
UNPARSED_POLICIES = ("drop", "lowest")
DTYPES = ("auto", "float32", "bfloat16", "float16")
SCORE_SOURCES = ("text", "expected", "checks")  # RRMSamplingConfig.score_from (edit_rlhf/rrm/soft.py)


def _one_of(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: {value!r} is not one of {sorted(allowed)}")


def _at_least(name: str, value, lo, strict: bool = False) -> None:
    if value is None:
        return
    if value < lo or (strict and value == lo):
        raise ValueError(f"{name}: must be {'>' if strict else '>='} {lo}, got {value}")


@dataclass
class RRMPromptConfig:
    """The RRM's system text. `full` = the paper-structured scoring rules (real Qwen2.5-VL RRMs); `compact` =
    a few lines for the tiny sandbox RRM, whose byte-level tokenizer turns the full rules into ~1.7k tokens.
    The user turn (two images, instruction, evaluation points) is the same in both. `system` replaces the
    style's text verbatim when set."""

    style: str = "full"
    system: Optional[str] = None

    def check(self) -> None:
        _one_of("style", self.style, PROMPT_STYLES)


@dataclass
class VLLMEngineConfig:
    """`vllm.LLM(model=path, ...)` arguments plus the CPU-backend environment it needs."""

    dtype: str = "auto"  # auto = the checkpoint's dtype
    max_model_len: int = 4096
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9  # on the CPU backend vLLM reads this as a fraction of RAM
    enforce_eager: bool = True  # no graph capture / compile (required on CPU, faster start on GPU)
    max_num_seqs: int = 64
    max_images: int = 2  # limit_mm_per_prompt["image"]: source + edited
    enable_prefix_caching: bool = True  # N samples of one request share the prompt's KV
    distributed_executor_backend: Optional[str] = None  # None = vLLM's choice; "mp" | "ray" for TP > 1
    in_process: bool = True  # engine core in the calling process (no extra process; VLLM_ENABLE_V1_MULTIPROCESSING=0)
    cpu_kvcache_gb: int = 1  # VLLM_CPU_KVCACHE_SPACE (CPU backend only)
    cpu_threads: Optional[int] = None  # OpenMP threads of the CPU backend (None = the actor's torch threads)
    weight_transfer: Optional[str] = None  # nccl: engine joins the learner's NCCL weight sync (set by the pipeline)
    load_format: Optional[str] = None  # vLLM load_format; "dummy" = random weights from config.json (smoke tests)

    def check(self) -> None:
        _one_of("dtype", self.dtype, DTYPES)
        _at_least("max_model_len", self.max_model_len, 1)
        _at_least("tensor_parallel_size", self.tensor_parallel_size, 1)
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization: must be in (0, 1], got {self.gpu_memory_utilization}")
        _at_least("max_num_seqs", self.max_num_seqs, 1)
        if self.weight_transfer is not None:
            _one_of("weight_transfer", self.weight_transfer, ("nccl",))
        _at_least("max_images", self.max_images, 2)
        if self.distributed_executor_backend is not None:
            _one_of("distributed_executor_backend", self.distributed_executor_backend, ("mp", "ray", "uni"))
        _at_least("cpu_kvcache_gb", self.cpu_kvcache_gb, 1)
        _at_least("cpu_threads", self.cpu_threads, 1)


@dataclass
class HFEngineConfig:
    """transformers `Qwen2_5_VLForConditionalGeneration.from_pretrained(path)` + `generate()`."""

    dtype: str = "float32"
    device: str = "auto"  # auto = cuda if available else cpu
    batch_size: int = 8  # requests per generate() call (left-padded)
    attn_implementation: Optional[str] = None  # None = transformers' default (sdpa)

    def check(self) -> None:
        _one_of("dtype", self.dtype, DTYPES)
        _at_least("batch_size", self.batch_size, 1)


@dataclass
class VLMEngineConfig:
    """A Qwen2.5-VL loaded by path on one of two backends with the same prompts and outputs."""

    path: Optional[str] = None
    backend: str = "vllm"  # vllm | hf | auto (vllm when importable, else hf)
    vllm: VLLMEngineConfig = field(default_factory=VLLMEngineConfig)
    hf: HFEngineConfig = field(default_factory=HFEngineConfig)

    def check(self) -> None:
        _one_of("backend", self.backend, BACKENDS)


@dataclass
class RRMSamplingConfig:
    """Sampling of RRM verdicts. `n` > 1 is Avg@k: the reward is the mean score of the parsable samples.

    `score_from`: what a verdict's score is - `text`: the written `<score>`; `expected`: the probability-weighted
    score at the score's first token; `checks`: 10 x the mean probability of 1 at each check (rrm/soft.py). The soft
    ones break the ties of greedy verdicts and need the engines' `top_logprobs` most likely tokens per position."""

    n: int = 1
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_tokens: int = 1024
    seed: int = 0  # sample seeds derive from (seed, prompt id, edit index, sample index)
    score_from: str = "text"  # text | expected | checks
    top_logprobs: int = 20  # alternatives per generated token read by a soft score_from (vLLM's logprobs=k)

    def check(self) -> None:
        _at_least("n", self.n, 1)
        _at_least("temperature", self.temperature, 0.0)
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        _at_least("top_k", self.top_k, 0)
        _at_least("max_tokens", self.max_tokens, 1)
        _one_of("score_from", self.score_from, SCORE_SOURCES)
        _at_least("top_logprobs", self.top_logprobs, 2)
        if self.n > 1 and self.temperature == 0.0:
            raise ValueError("n: Avg@k with n > 1 needs temperature > 0 (greedy samples are identical)")


@dataclass
class RRMScorerConfig(VLMEngineConfig):
    """`reward.rrm`: the Edit-RRM as the reward (`reward.scorer=rrm`). Reward = the parsed `<score>` (0-10).

    `unparsed`: what an edit whose samples all fail to parse gets: `drop` = NaN reward, ok=False (excluded
    from advantages, counted in reward/failure_rate); `lowest` = reward 0 (the scale's minimum), counted as a
    parse failure in reward/parse_failure_rate. `resample`: extra tries for unparsable samples (new seeds),
    bounded. `timeout_s`: engine-side deadline of one scoring call; unfinished samples are aborted and count
    as failures (0 = none; the pool's `reward.timeout_s` / `reward.max_retries` still apply on top)."""

    prompt: RRMPromptConfig = field(default_factory=RRMPromptConfig)
    sampling: RRMSamplingConfig = field(default_factory=RRMSamplingConfig)
    unparsed: str = "drop"
    require_checks: bool = True  # a verdict needs one 0/1 check per principle, not only a <score>
    resample: int = 0
    timeout_s: float = 0.0

    def check(self) -> None:
        super().check()
        _one_of("unparsed", self.unparsed, UNPARSED_POLICIES)
        _at_least("resample", self.resample, 0)
        _at_least("timeout_s", self.timeout_s, 0.0)

    def require_path(self) -> None:
        """Called when `reward.scorer=rrm`: the model folder must be named."""
        if not self.path:
            raise ValueError("rrm.path: required when reward.scorer=rrm (a Qwen2.5-VL folder)")
