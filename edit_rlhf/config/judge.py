"""The VIEScore-style VLM judge (GEdit-Bench protocol): prompt, sampling and engine.

Used by `edit-rlhf eval-editor` (`EvalEditorConfig.judge`) and by the GRPO reward-hacking monitor, whose
independent judge on real data is this judge's perceptual-quality (PQ) half (`GRPOConfig.monitor.pq`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from edit_rlhf.config.rrm import VLMEngineConfig, _at_least, _one_of


@dataclass
class JudgePromptConfig:
    """`full`: the VIEScore-structured rules (real judges); `compact`: two lines (tiny sandbox VLMs).
    `score_max`: the scale written in the prompt (10 = VIEScore/GEdit; 25 = EditScore), rescaled to 0-10."""

    style: str = "full"
    score_max: int = 10
    system: Optional[str] = None  # replaces the judge's context line verbatim

    def check(self) -> None:
        _one_of("style", self.style, ("full", "compact"))
        _at_least("score_max", self.score_max, 1)


@dataclass
class JudgeSamplingConfig:
    """Greedy by default (reproducible tables). `n` > 1 with temperature > 0 = Avg@k: each sub-score is the mean
    over the parsable samples of that judgement."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 512
    seed: int = 0  # request seeds derive from (seed, row id, judgement kind), the same for every editor
    resample: int = 0  # extra draws (new seeds) of unparsable judgements, as the RRM's `resample`; not when greedy

    def check(self) -> None:
        _at_least("n", self.n, 1)
        _at_least("temperature", self.temperature, 0.0)
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        _at_least("max_tokens", self.max_tokens, 1)
        _at_least("resample", self.resample, 0)
        if self.n > 1 and self.temperature == 0.0:
            raise ValueError("n: Avg@k with n > 1 needs temperature > 0 (greedy samples are identical)")


@dataclass
class JudgeConfig(VLMEngineConfig):
    """The VLM judge of the GEdit-Bench protocol (a Qwen2.5-VL folder on vLLM or HF). `path: null` = no judge
    (no SC / PQ / O columns). `resize_to_source`: the edited image is resized to the source's size before
    judging, as GEdit-Bench does."""

    prompt: JudgePromptConfig = field(default_factory=JudgePromptConfig)
    sampling: JudgeSamplingConfig = field(default_factory=JudgeSamplingConfig)
    resize_to_source: bool = True
