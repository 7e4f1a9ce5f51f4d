"""Configuration of the sandbox dataset build (an OmegaConf-compatible structured dataclass)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .edits import EDIT_TYPES
from .scene import MAX_SIZE, MIN_SIZE


@dataclass
class SandboxConfig:
    """What ``build_sandbox`` writes. Counts are edit prompts and preference pairs per split;
    ``label_noise`` is the probability that a pair's preference label is flipped (imitating
    annotator disagreement). ``trace_compare`` adds the side-by-side "source to edited:" line to every
    oracle trace (``edit_rlhf.sandbox.traces.compare_line``)."""

    seed: int = 0
    size: int = 64
    n_train: int = 512
    n_eval: int = 64
    edit_types: list[str] = field(default_factory=lambda: list(EDIT_TYPES))
    candidates_per_prompt: int = 4
    label_noise: float = 0.1
    n_pairs_train: int = 1024
    n_pairs_eval: int = 256
    trace_compare: bool = False

    def __post_init__(self) -> None:
        def _int(name: str, lo: int, hi: int | None = None) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
                rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
                raise ValueError(f"SandboxConfig.{name} must be an int {rng}, got {v!r}")

        _int("seed", 0)
        _int("size", MIN_SIZE, MAX_SIZE)
        _int("n_train", 1)
        _int("n_eval", 1)
        _int("candidates_per_prompt", 2)
        _int("n_pairs_train", 0)
        _int("n_pairs_eval", 0)
        try:  # any sequence of names (list, tuple, OmegaConf ListConfig), but not a bare string
            types = None if isinstance(self.edit_types, str) else [str(t) for t in self.edit_types]
        except TypeError:
            types = None
        if not types or any(t not in EDIT_TYPES for t in types) or len(set(types)) != len(types):
            raise ValueError(f"SandboxConfig.edit_types must be a non-empty list of distinct values from "
                             f"{list(EDIT_TYPES)}, got {self.edit_types!r}")
        self.edit_types = types
        if not isinstance(self.trace_compare, bool):
            raise ValueError(f"SandboxConfig.trace_compare must be true or false, got {self.trace_compare!r}")
        ln = self.label_noise
        if isinstance(ln, bool) or not isinstance(ln, (int, float)) or not 0.0 <= float(ln) <= 0.5:
            raise ValueError(f"SandboxConfig.label_noise must be a float in [0, 0.5], got {ln!r}")
        self.label_noise = float(ln)

    def to_dict(self) -> dict:
        return asdict(self)
