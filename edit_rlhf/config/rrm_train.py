"""Typed configs of Edit-RRM training: T+V trace selection (`edit-rlhf rrm-traces`), cold-start SFT
(`edit-rlhf rrm-sft`), GCPO (`edit-rlhf rrm-gcpo`) and pairwise evaluation (`edit-rlhf eval-rrm`).

Component dataclasses come from `config.schema` (optimiser, learner pool, reward-pool sizing, tracking,
cluster) and `config.rrm` (prompt, vLLM/HF engines, sampling); the classes here only add what these stages
need. Each `check()` raises `ValueError("key: message")`; the loader prefixes the dotted path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING

from edit_rlhf.config.rrm import (SCORE_SOURCES, RRMPromptConfig, RRMSamplingConfig, VLMEngineConfig, _at_least,
                                  _one_of)
from edit_rlhf.config.schema import (
    CheckpointConfig, ClusterConfig, LearnerConfig, OptimConfig, PoolConfig, ScheduleConfig, TrackingConfig, _choice,
    _positive,
)


# --------------------------------------------------------------------------- shared
@dataclass
class RRMModelConfig:
    """The Qwen2.5-VL being trained, loaded by path (`Qwen2_5_VLForConditionalGeneration.from_pretrained`).

    `mode`: full fine-tune or a peft LoRA on the language model's projections (merged into the weights for
    checkpoints and for vLLM). `freeze_vision`: keep the vision tower fixed (it is then never synced)."""

    path: str = MISSING
    dtype: str = "float32"
    device: str = "auto"
    mode: str = "full"  # full | lora
    freeze_vision: bool = False
    lora_rank: int = 16
    lora_alpha: float = 32.0
    vision_patch: bool = True  # batched vision attention: same output, far fewer SDPA calls on CPU

    def check(self) -> None:
        _choice("dtype", self.dtype, {"float32", "bfloat16", "float16"})
        _choice("mode", self.mode, {"full", "lora"})
        _positive("lora_rank", self.lora_rank)
        _positive("lora_alpha", self.lora_alpha)


# --------------------------------------------------------------------------- T+V trace selection
@dataclass
class TeacherPoolConfig:
    """The sandbox's stand-in for a pool of teacher VLMs writing candidate traces (Edit-R1 uses Seed-VL with
    varied system prompts and temperatures). Teacher i re-answers every principle of the oracle's trace and
    gets each one wrong with probability `error_rates[i]`; with `lazy_prob` it answers every point 1 (a
    sycophantic judge), with `malformed_prob` its output is cut before the score (unparsable). Its final score
    follows its own checks (the oracle's cost rule on hard checks, plus N(0, score_jitter)); a teacher whose
    checks all agree with the oracle keeps the oracle's holistic score. Its think text is the oracle's
    observation, with the edited image described as unchanged when it (wrongly) fails every follow point."""

    error_rates: List[float] = field(default_factory=lambda: [0.05, 0.15, 0.3, 0.45])
    lazy_prob: float = 0.1
    malformed_prob: float = 0.05
    score_jitter: float = 0.5
    seed: int = 0

    def check(self) -> None:
        if not self.error_rates:
            raise ValueError("error_rates: need at least one teacher")
        for r in self.error_rates:
            if not 0 <= r <= 1:
                raise ValueError(f"error_rates: each must be in [0, 1], got {r}")
        for k in ("lazy_prob", "malformed_prob"):
            if not 0 <= getattr(self, k) <= 1:
                raise ValueError(f"{k}: must be in [0, 1], got {getattr(self, k)}")
        _positive("score_jitter", self.score_jitter, strict=False)


@dataclass
class RRMTraceSelectConfig:
    """`edit-rlhf rrm-traces`: candidate traces per (source, edit) -> the T+V-selected SFT dataset.

    `source: teacher` writes candidates with the sandbox teacher pool from a traces dataset (oracle traces and
    gold `checks`); `source: column` reads them from `candidates_column` (a list of trace texts per row, e.g.
    a real VLM pool's outputs) with gold per-principle labels in `gold_column` (a verifier pass)."""

    input: str = MISSING
    output: str = MISSING
    source: str = "teacher"  # teacher | column
    candidates_column: str = "candidate_traces"
    gold_column: str = "checks"
    keep_candidates: bool = True  # write the candidate texts next to the selection (audit; 'T' ablation)
    min_accuracy: float = 0.0  # drop rows whose selected trace agrees with gold on fewer points (counted)
    overwrite: bool = False
    teacher: TeacherPoolConfig = field(default_factory=TeacherPoolConfig)

    def check(self) -> None:
        _choice("source", self.source, {"teacher", "column"})
        if not 0 <= self.min_accuracy <= 1:
            raise ValueError(f"min_accuracy: must be in [0, 1], got {self.min_accuracy}")


# --------------------------------------------------------------------------- SFT
@dataclass
class RRMSFTDataConfig:
    """Trace datasets (schema: id, source_image, instruction, principles, edited_image, trace_text; optional
    checks / oracle_score for evaluation). `pairs_eval`: preference pairs for a pairwise accuracy at the end."""

    train: str = MISSING
    eval: Optional[str] = None
    eval_size: int = 64
    pairs_eval: Optional[str] = None
    pairs_eval_size: int = 64
    validate: str = "schema"  # schema | full (decode every image at start)

    def check(self) -> None:
        _positive("eval_size", self.eval_size)
        _positive("pairs_eval_size", self.pairs_eval_size)
        _choice("validate", self.validate, {"schema", "full"})


@dataclass
class RRMSFTEvalConfig:
    """Held-out evaluation on learner rank 0 with HF greedy generation: parse rate, per-principle agreement
    with the gold checks, score error, and pairwise accuracy on `data.pairs_eval`."""

    max_tokens: int = 256
    batch_size: int = 32

    def check(self) -> None:
        _positive("max_tokens", self.max_tokens)
        _positive("batch_size", self.batch_size)


@dataclass
class RRMSFTConfig:
    """`edit-rlhf rrm-sft`: cold-start SFT of the Edit-RRM on (selected) traces, loss on assistant tokens only."""

    seed: int = 0
    steps: int = 1000
    batch_size: int = 16  # global; split evenly over the learner ranks
    micro_batch_size: int = 0  # sequences per forward/backward on a rank (0: the rank's whole share at once)
    verdict_weight: float = 1.0  # loss weight of the decision tokens (each check's 0/1, the score) vs the rest
    log_every: int = 25  # optimizer steps per learner call (one MLflow point, one progress-bar tick)
    eval_every: int = 0  # 0: evaluate at the start and the end only
    save_every: int = 0  # 0: checkpoint only at the end
    output_dir: str = "outputs/rrm_sft"
    export_dir: Optional[str] = None  # also write the final HF checkpoint here (e.g. models/sandbox/rrm_sft)
    resume: Optional[str] = None  # auto | a step directory | a checkpoints root
    overwrite: bool = False  # a fresh run may delete another run's checkpoints in output_dir (else it refuses)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    model: RRMModelConfig = field(default_factory=RRMModelConfig)
    prompt: RRMPromptConfig = field(default_factory=RRMPromptConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-3, betas=[0.9, 0.98], weight_decay=0.01))
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    data: RRMSFTDataConfig = field(default_factory=RRMSFTDataConfig)
    eval: RRMSFTEvalConfig = field(default_factory=RRMSFTEvalConfig)
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="edit_rlhf-rrm"))
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def check(self) -> None:
        _positive("steps", self.steps)
        _positive("batch_size", self.batch_size)
        _positive("log_every", self.log_every)
        _positive("eval_every", self.eval_every, strict=False)
        _positive("save_every", self.save_every, strict=False)
        _positive("verdict_weight", self.verdict_weight)
        if self.batch_size % self.learner.size:
            raise ValueError(f"batch_size: {self.batch_size} must be divisible by learner.size={self.learner.size}")
        per_rank = self.batch_size // self.learner.size
        if self.micro_batch_size < 0 or (self.micro_batch_size and per_rank % self.micro_batch_size):
            raise ValueError(f"micro_batch_size: must divide the {per_rank} sequences per rank, got {self.micro_batch_size}")
        if self.learner.zero_stage == 3:
            raise ValueError("learner.zero_stage: 3 partitions the weights, but evaluation and export read them on "
                             "rank 0 only; use 2 (a 7B RRM fits: see `edit-rlhf plan`)")
        for k in ("eval_every", "save_every"):
            v = getattr(self, k)
            if v and v % self.log_every:
                raise ValueError(f"{k}: must be a multiple of log_every={self.log_every}, got {v}")


# --------------------------------------------------------------------------- GCPO
@dataclass
class GCPOAlgoConfig:
    """GCPO (algorithms.md §1.5). Per step `pairs_per_step` human pairs; `group_size` (N) traces per image.

    `failure`: how a trace whose verdict does not parse is treated (the paper is silent): `lowest` = it earns
    no reward and counts as the bottom score for the other group, `drop` = no reward, no gradient, no
    opponent. `std_norm`: divide advantages by the group std (a deviation from the paper, off by default).
    `old_logprobs`: the PPO ratio's denominator, recomputed by the learner before the update (`learner`,
    default: exact ratio 1 on the first minibatch) or the rollout engine's sampling log-probs (`rollout`).
    `skip_zero_advantage`: traces with A = 0 contribute exactly nothing when beta = 0, so the learner skips
    them (the loss is still averaged over every participating trace, as in the paper).
    `score_from`: what a sampled trace's score is when the groups are compared - `text` (the paper: the written
    `<score>`), or a soft score read from the rollout engine's `top_logprobs` (`expected` | `checks`, rrm/soft.py):
    two traces that write the same score rarely tie, so fewer groups lose their advantages to ties."""

    pairs_per_step: int = 8
    group_size: int = 4
    clip: float = 0.2
    beta: float = 0.0  # KL to the SFT reference (k3 estimate, token-averaged per trace)
    std_norm: bool = False
    failure: str = "lowest"  # lowest | drop
    num_minibatches: int = 1  # optimizer updates per rollout batch
    micro_batch_size: int = 16  # traces per forward/backward on a rank
    old_logprobs: str = "learner"  # learner | rollout
    skip_zero_advantage: bool = True
    score_from: str = "text"  # text | expected | checks
    top_logprobs: int = 20  # alternatives per sampled token that a soft score_from reads

    def check(self) -> None:
        _positive("pairs_per_step", self.pairs_per_step)
        _one_of("score_from", self.score_from, SCORE_SOURCES)  # as RRMSamplingConfig checks its own pair
        _at_least("top_logprobs", self.top_logprobs, 2)
        if self.group_size < 2:
            raise ValueError(f"group_size: GCPO needs N >= 2 traces per image, got {self.group_size}")
        _positive("clip", self.clip)
        _positive("beta", self.beta, strict=False)
        _choice("failure", self.failure, {"lowest", "drop"})
        _positive("num_minibatches", self.num_minibatches)
        _positive("micro_batch_size", self.micro_batch_size)
        _choice("old_logprobs", self.old_logprobs, {"learner", "rollout"})
        if self.pairs_per_step % self.num_minibatches:
            raise ValueError(f"num_minibatches: must divide pairs_per_step={self.pairs_per_step}")


@dataclass
class GCPORolloutConfig(PoolConfig):
    """The reward pool that samples the traces: `size` vLLM (or HF) engines, each loading `engine.path`
    (default: `model.path`) and receiving the learner's weights after every update."""

    engine: VLMEngineConfig = field(default_factory=VLMEngineConfig)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 256
    timeout_s: float = 600.0  # per generate call

    def check(self) -> None:
        super().check()
        _positive("temperature", self.temperature)
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        _positive("top_k", self.top_k, strict=False)
        _positive("max_tokens", self.max_tokens)
        _positive("timeout_s", self.timeout_s)


@dataclass
class WeightSyncConfig:
    """Learner -> engines after each update (`transport`, edit_rlhf.transport): one object (flat per-dtype
    buckets of <= bucket_mb) put once and loaded by every engine in one call (object_store), or a GPU-to-GPU
    NCCL broadcast through vLLM's weight-transfer engine (nccl); the engines' reported versions must equal the
    learner's.
    `probe`: re-score one fixed trace on engine 0 and the learner after each sync (log-prob agreement)."""

    bucket_mb: float = 64.0
    trainable_only: bool = True  # a frozen vision tower is never sent
    probe: bool = True
    transport: str = "auto"  # auto: nccl when learner and vLLM engines are on GPUs, else object_store

    def check(self) -> None:
        _positive("bucket_mb", self.bucket_mb)
        _choice("transport", self.transport, {"auto", "object_store", "nccl"})


@dataclass
class PairDataConfig:
    """Preference pairs (schema: id, source_image, instruction, principles, image_a, image_b, preferred a|b;
    optional category). `train` for GCPO; `eval` held out for pairwise accuracy."""

    train: str = MISSING
    eval: Optional[str] = None
    eval_size: int = 128  # first rows of `eval` (0 = all)
    category_column: Optional[str] = "category"  # falls back to the loser's grade on sandbox pairs, else "all"

    def check(self) -> None:
        _positive("eval_size", self.eval_size, strict=False)


@dataclass
class PairEvalConfig:
    """Pairwise evaluation with the reward pool: k = sampling.n samples per image (Avg@k: the mean parsed
    score); greedy when n = 1 and temperature = 0. An image without any parsable sample gets `unparsed`:
    `lowest` = score 0, `drop` = the pair counts as wrong (and as a tie in the with-ties accuracy)."""

    sampling: RRMSamplingConfig = field(default_factory=lambda: RRMSamplingConfig(max_tokens=256))
    unparsed: str = "drop"
    avg_k: int = 0  # > 0: each evaluation also reports Avg@k of `avg_temperature` samples (eval/avg<k>/...)
    avg_temperature: float = 1.0
    copy_source: bool = True  # pairs with sandbox grades: also score each source as its own edit (copy-the-source probe)

    def check(self) -> None:
        _choice("unparsed", self.unparsed, {"drop", "lowest"})
        _positive("avg_k", self.avg_k, strict=False)
        if self.avg_k:
            _positive("avg_temperature", self.avg_temperature)


@dataclass
class RRMGCPOConfig:
    """`edit-rlhf rrm-gcpo`: GCPO on preference pairs, starting from an SFT checkpoint."""

    seed: int = 0
    steps: int = 30
    eval_every: int = 10  # 0: evaluate only at the start and the end
    save_every: int = 10  # 0: checkpoint only at the end
    output_dir: str = "outputs/rrm_gcpo"
    resume: Optional[str] = None
    overwrite: bool = False  # a fresh run may delete another run's checkpoints in output_dir (else it refuses)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    model: RRMModelConfig = field(default_factory=RRMModelConfig)
    prompt: RRMPromptConfig = field(default_factory=RRMPromptConfig)
    algo: GCPOAlgoConfig = field(default_factory=GCPOAlgoConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, weight_decay=0.0))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(warmup_steps=0, kind="constant"))
    rollout: GCPORolloutConfig = field(default_factory=GCPORolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    sync: WeightSyncConfig = field(default_factory=WeightSyncConfig)
    data: PairDataConfig = field(default_factory=PairDataConfig)
    eval: PairEvalConfig = field(default_factory=PairEvalConfig)
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="edit_rlhf-rrm"))
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def check(self) -> None:
        _positive("steps", self.steps)
        _positive("eval_every", self.eval_every, strict=False)
        _positive("save_every", self.save_every, strict=False)
        if self.learner.zero_stage == 3:
            raise ValueError("learner.zero_stage: 3 partitions the weights, but evaluation, export and weight sync "
                             "read them on rank 0 only; use 2 (a 7B RRM fits: see `edit-rlhf plan`)")
        if self.sync.transport == "nccl" and self.rollout.engine.backend != "vllm":
            raise ValueError("sync.transport: nccl needs the vLLM backend (rollout.engine.backend=vllm)")
        if self.rollout.engine.backend == "vllm" and self.rollout.num_gpus:
            tp = self.rollout.engine.vllm.tensor_parallel_size
            if self.rollout.num_gpus != tp:
                raise ValueError(f"rollout: num_gpus={self.rollout.num_gpus} must equal "
                                 f"engine.vllm.tensor_parallel_size={tp}")


# --------------------------------------------------------------------------- evaluation
@dataclass
class EvalDataConfig:
    """The preference data. `format: pairs` = our schema (PairDataConfig); `format: editreward_bench` =
    EditScore's EditReward-Bench layout: `key` [id1, id2], `instruction`, `input_image`, `output_images`
    [preferred, other], `task_type` (the category), `dimension` (prompt_following | consistency | overall),
    optional `principles`. `dimensions` filters EditReward-Bench rows. Principles: the row's `principles`
    column when present, else `generic_principles` (or run `edit-rlhf principles` on the data first)."""

    path: str = MISSING
    format: str = "pairs"  # pairs | editreward_bench
    split: Optional[str] = None  # the split of a DatasetDict folder (None: its only split) or of parquet shards (None: train)
    size: int = 0  # first rows (0 = all)
    category_column: Optional[str] = "category"
    dimensions: List[str] = field(default_factory=lambda: ["overall"])
    generic_principles: bool = True

    def check(self) -> None:
        _choice("format", self.format, {"pairs", "editreward_bench"})
        _positive("size", self.size, strict=False)
        bad = [d for d in self.dimensions if d not in ("prompt_following", "consistency", "overall")]
        if bad:
            raise ValueError(f"dimensions: unknown {bad}; use prompt_following | consistency | overall")


@dataclass
class RRMEvalConfig:
    """`edit-rlhf eval-rrm`: pairwise accuracy of an RRM (strict and with ties, per category, Avg@k)."""

    seed: int = 0
    output: Optional[str] = None  # JSON file for the metrics and per-pair scores
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    engine: VLMEngineConfig = field(default_factory=VLMEngineConfig)
    prompt: RRMPromptConfig = field(default_factory=RRMPromptConfig)
    eval: PairEvalConfig = field(default_factory=PairEvalConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="edit_rlhf-rrm"))
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def check(self) -> None:
        if not self.engine.path:
            raise ValueError("engine: engine.path (the RRM folder) is required")
