"""`edit-rlhf eval-editor`: configuration of the editor evaluation (GEdit-Bench protocol, RRM, oracle) and of
the HTML report.

Reuses the component dataclasses of the other pipelines: `EditorConfig`, `LoraConfig` and `SamplingConfig`
(only `eval_num_steps` is used) of GRPO, `VLMEngineConfig` for the judge, `RRMScorerConfig` for the RRM,
`PoolConfig`, `TrackingConfig`, `ClusterConfig`. Each `check()` raises `ValueError("key: message")`; the
loader prefixes the dotted path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING

from edit_rlhf.config.judge import JudgeConfig, JudgePromptConfig, JudgeSamplingConfig  # noqa: F401 (re-exported)
from edit_rlhf.config.rrm import RRMScorerConfig, _at_least, _one_of
from edit_rlhf.config.schema import (
    ClusterConfig, EditorConfig, LoraConfig, PoolConfig, SamplingConfig, TrackingConfig,
)

DATA_FORMATS = ("auto", "edit_prompts", "gedit")
LANGUAGES = ("en", "cn", "all")
SUBSETS = ("fullset", "intersection")
ORACLE_MODES = ("auto", "on", "off")


@dataclass
class EditorSpec:
    """One editor under evaluation: the base editor (`editor.path`) plus, optionally, a trained LoRA. `lora` is a
    diffusers LoRA folder, a GRPO checkpoint step folder (its `lora/`), or a GRPO output_dir / checkpoints root
    (the `latest` step's `lora/`). No `lora` = the base editor."""

    name: str = MISSING
    lora: Optional[str] = None


@dataclass
class EvalDataConfig:
    """The edit prompts. `format=edit_prompts`: our schema (id, source_image, instruction[, principles, oracle,
    edit_type|category]); `format=gedit`: GEdit-Bench's layout (key, task_type, instruction,
    instruction_language, input_image[, input_image_raw, Intersection_exist]), converted once into
    `<output_dir>/data/`; `auto` tells them apart by the columns. The category of a row comes from
    `category_column` (None: the first of category, edit_type, task_type)."""

    path: str = MISSING
    format: str = "auto"
    category_column: Optional[str] = None
    split: Optional[str] = None  # a DatasetDict folder's split (None: its only split)
    language: str = "en"  # gedit: en | cn | all
    subset: str = "fullset"  # gedit: fullset | intersection (rows with Intersection_exist)
    source_column: str = "input_image"  # gedit: the image edited and judged against (input_image | input_image_raw)
    limit: Optional[int] = None  # the first N rows (after the language / subset filter)
    validate: str = "schema"  # full: decode every image at start

    def check(self) -> None:
        _one_of("format", self.format, DATA_FORMATS)
        _one_of("language", self.language, LANGUAGES)
        _one_of("subset", self.subset, SUBSETS)
        _one_of("source_column", self.source_column, ("input_image", "input_image_raw"))
        _at_least("limit", self.limit, 1)
        _one_of("validate", self.validate, ("full", "schema"))


@dataclass
class EvalPoolsConfig:
    """One actor pool per job: ODE edits, the judge, the RRM, the oracle (only those configured start)."""

    rollout: PoolConfig = field(default_factory=PoolConfig)
    judge: PoolConfig = field(default_factory=PoolConfig)
    rrm: PoolConfig = field(default_factory=PoolConfig)
    oracle: PoolConfig = field(default_factory=lambda: PoolConfig(num_cpus=0.5))


@dataclass
class ReportConfig:
    """The HTML report written at the end (`<output_dir>/report/index.html`, also an MLflow artifact)."""

    enabled: bool = True
    grid_rows: int = 8  # prompts shown in the comparison grid (source | each editor | target)
    embed_images: bool = True  # base64 in the HTML (one self-contained file) or PNG files beside it

    def check(self) -> None:
        _at_least("grid_rows", self.grid_rows, 0)


@dataclass
class EvalEditorConfig:
    """`edit-rlhf eval-editor`: ODE edits of every editor in `editors` on the same prompts with the same seeds,
    scored by the same judge / RRM / oracle in one run; a table per editor (overall, per category)."""

    seed: int = 0  # noise seed of prompt i = eval_seed(seed, i), the same for every editor
    output_dir: str = "outputs/eval_editor"
    batch_size: int = 4  # prompts per generation / scoring call
    timeout_s: float = 600.0  # per scoring call; a call that fails or times out is retried elsewhere
    max_retries: int = 2
    save_edits: bool = True  # edited images as PNG under <output_dir>/edits/<editor>/
    oracle: str = "auto"  # auto: when the data has an `oracle` column (sandbox)
    editor: EditorConfig = field(default_factory=EditorConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)  # the rollout actor's own adapter (kept at zero = base)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    editors: List[EditorSpec] = field(default_factory=lambda: [EditorSpec(name="base")])
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    rrm: RRMScorerConfig = field(default_factory=RRMScorerConfig)  # path: null = no RRM score
    pools: EvalPoolsConfig = field(default_factory=EvalPoolsConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    build_missing: bool = False  # build the tiny models / sandbox data named by the paths when absent

    def check(self) -> None:
        _at_least("batch_size", self.batch_size, 1)
        _at_least("timeout_s", self.timeout_s, 0.0, strict=True)
        _at_least("max_retries", self.max_retries, 0)
        # YAML reads a bare `off` / `on` as a boolean: accept those spellings too
        self.oracle = {"false": "off", "true": "on"}.get(str(self.oracle).lower(), self.oracle)
        _one_of("oracle", self.oracle, ORACLE_MODES)
        if not self.editors:
            raise ValueError("editors: name at least one editor (e.g. [{name: base}])")
        names = [e.name for e in self.editors]
        for i, n in enumerate(names):
            if not n or not str(n).replace("-", "").replace("_", "").replace(".", "").isalnum():
                raise ValueError(f"editors: editors[{i}].name must be letters, digits, - _ . only, got {n!r}")
            if names.index(n) != i:
                raise ValueError(f"editors: editors[{i}].name {n!r} is used twice")
        if self.judge.path is None and self.rrm.path is None and self.oracle == "off":
            raise ValueError("judge: nothing would score the edits (judge.path, rrm.path unset and oracle=off)")
