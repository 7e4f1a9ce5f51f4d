"""`edit-rlhf principles`: the principle-decomposition stage's configuration."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING

from edit_rlhf.config.rrm import VLMEngineConfig, _at_least, _one_of
from edit_rlhf.config.schema import ClusterConfig, PoolConfig


@dataclass
class PrincipleRulesConfig:
    """Accepted answers: total count and per-category counts (inclusive [lo, hi]). Defaults are the paper's
    10 points = 3-4 follow + 3-4 keep + 2-3 quality (with 8-11 tolerated)."""

    min_count: int = 8
    max_count: int = 11
    follow: List[int] = field(default_factory=lambda: [3, 4])
    keep: List[int] = field(default_factory=lambda: [3, 4])
    quality: List[int] = field(default_factory=lambda: [2, 3])

    def check(self) -> None:
        _at_least("min_count", self.min_count, 1)
        if self.max_count < self.min_count:
            raise ValueError(f"max_count: must be >= min_count={self.min_count}, got {self.max_count}")
        for name in ("follow", "keep", "quality"):
            r = list(getattr(self, name))
            if len(r) != 2 or r[0] < 0 or r[1] < r[0]:
                raise ValueError(f"{name}: need [lo, hi] with 0 <= lo <= hi, got {r}")


@dataclass
class PrinciplePromptConfig:
    num_examples: int = 4  # few-shot decompositions per query, drawn per row from the pool
    examples_path: Optional[str] = None  # JSON pool [{instruction, principles}]; None = the built-in pool

    def check(self) -> None:
        _at_least("num_examples", self.num_examples, 0)


@dataclass
class PrincipleSamplingConfig:
    temperature: float = 0.7  # > 0 so that a retry can give a different answer
    top_p: float = 0.95
    max_tokens: int = 1024
    seed: int = 0

    def check(self) -> None:
        _at_least("temperature", self.temperature, 0.0)
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        _at_least("max_tokens", self.max_tokens, 1)


@dataclass
class PrinciplesConfig:
    """Adds a `principles` column to an edit-prompt dataset (id, source_image, instruction).

    generator=oracle: the sandbox's programmatic generator (needs the `oracle` column); generator=vlm: a
    VLM on `workers` Ray actors with a few-shot prompt; an answer that fails the rules is retried (new seed)
    up to `max_attempts` in all, then reported. `on_invalid`: drop such rows from the output (listed in
    the report) or fail the stage."""

    input: str = MISSING
    output: str = MISSING
    generator: str = "oracle"
    max_attempts: int = 3
    on_invalid: str = "drop"
    limit: Optional[int] = None  # only the first N rows
    batch_size: int = 16  # requests per worker call
    timeout_s: float = 600.0  # per worker call
    overwrite: bool = False
    vlm: VLMEngineConfig = field(default_factory=VLMEngineConfig)
    prompt: PrinciplePromptConfig = field(default_factory=PrinciplePromptConfig)
    sampling: PrincipleSamplingConfig = field(default_factory=PrincipleSamplingConfig)
    rules: PrincipleRulesConfig = field(default_factory=PrincipleRulesConfig)
    workers: PoolConfig = field(default_factory=PoolConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def check(self) -> None:
        _one_of("generator", self.generator, ("oracle", "vlm"))
        _one_of("on_invalid", self.on_invalid, ("drop", "fail"))
        _at_least("max_attempts", self.max_attempts, 1)
        _at_least("limit", self.limit, 1)
        _at_least("batch_size", self.batch_size, 1)
        _at_least("timeout_s", self.timeout_s, 0.0, strict=True)
        if self.generator == "vlm" and not self.vlm.path:
            raise ValueError("vlm.path: required when generator=vlm (a Qwen2.5-VL folder)")
