"""Typed configs of the supervised stages: editor SFT (`edit-rlhf editor-sft`), VLM SFT settings, and the
sandbox base-model pre-training (`edit-rlhf sandbox pretrain`). Component dataclasses (editor, LoRA,
optimiser, learner pool, data, tracking, cluster) are those of `config.schema`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from edit_rlhf.config.schema import (
    CheckpointConfig, ClusterConfig, DataConfig, EditorConfig, LearnerConfig, LoraConfig, OptimConfig, TrackingConfig,
    _choice, _positive,
)


# --------------------------------------------------------------------------- editor SFT
@dataclass
class FlowMatchingConfig:
    """Supervised flow matching on packed target latents: x_t = (1-t) x0 + t eps, target eps - x0.

    t ~ logit-normal(logit_mean, logit_std) (SD3), a fraction `uniform_frac` uniform (covers the ends: the
    first rollout step sits at t = 1), then the FLUX resolution shift (`shift: flux`) so training density
    follows the sampler's sigmas."""

    batch_size: int = 16  # global batch, split evenly over the learner ranks
    timestep_dist: str = "logit_normal"  # logit_normal | uniform
    logit_mean: float = 0.0
    logit_std: float = 1.0
    uniform_frac: float = 0.1
    shift: str = "flux"  # flux | none
    warmup_steps: int = 50
    schedule: str = "cosine"  # cosine | constant (after warmup)
    min_lr_ratio: float = 0.1
    cache_latents: bool = True  # encode every triple once at start (frozen VAE/text encoders) vs per batch
    # Tokens the edit changes (target latent far from the source latent at the same place) get weight
    # 1 + edit_region_weight in the MSE: in an edit most of the image is a copy, which would dominate the loss.
    edit_region_weight: float = 0.0
    edit_region_threshold: float = 0.1  # mean squared latent difference per channel that marks a changed token

    def check(self) -> None:
        _positive("batch_size", self.batch_size)
        _choice("timestep_dist", self.timestep_dist, {"logit_normal", "uniform"})
        _positive("logit_std", self.logit_std)
        if not 0 <= self.uniform_frac <= 1:
            raise ValueError(f"uniform_frac: must be in [0, 1], got {self.uniform_frac}")
        _choice("shift", self.shift, {"flux", "none"})
        _positive("warmup_steps", self.warmup_steps, strict=False)
        _choice("schedule", self.schedule, {"cosine", "constant"})
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        _positive("edit_region_weight", self.edit_region_weight, strict=False)
        _positive("edit_region_threshold", self.edit_region_threshold, strict=False)


@dataclass
class EditorEvalConfig:
    """Held-out evaluation: ODE edits of `data.eval` (first `data.eval_size` rows), scored against the target
    (pixel MSE) and by the oracle when the data has an `oracle` column; probes on the final evaluation."""

    num_steps: int = 8  # Euler (noise 0) steps
    probes: bool = True  # final eval also with shuffled sources / instructions and the copy-source baseline
    seed: int = 1234  # noise seeds of eval prompt i: seed + i

    def check(self) -> None:
        _positive("num_steps", self.num_steps)


@dataclass
class EditorSFTConfig:
    """`edit-rlhf editor-sft`: supervised flow-matching fine-tuning of a FLUX.1-Kontext editor on
    (source_image, instruction, target_image) triples, full or LoRA, on DeepSpeed learner ranks."""

    seed: int = 0
    steps: int = 1000
    mode: str = "lora"  # lora | full
    train_text_encoders: bool = False  # full mode: also train CLIP and T5 (the sandbox's random ones need it)
    log_every: int = 10  # optimizer steps per learner call (one MLflow point, one progress-bar tick)
    eval_every: int = 0  # 0: evaluate at the start and the end only
    save_every: int = 0  # 0: save only at the end
    output_dir: str = "outputs/editor_sft"
    resume: Optional[str] = None  # auto | a step directory | a checkpoints root
    overwrite: bool = False  # a fresh run may delete another run's checkpoints in output_dir (else it refuses)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    editor: EditorConfig = field(default_factory=EditorConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    flow: FlowMatchingConfig = field(default_factory=FlowMatchingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EditorEvalConfig = field(default_factory=EditorEvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def check(self) -> None:
        _positive("steps", self.steps)
        _choice("mode", self.mode, {"lora", "full"})
        if self.train_text_encoders and self.mode != "full":
            raise ValueError("train_text_encoders: only with mode=full (LoRA trains the transformer only)")
        _positive("log_every", self.log_every)
        _positive("eval_every", self.eval_every, strict=False)
        _positive("save_every", self.save_every, strict=False)
        if self.flow.batch_size % self.learner.size:
            raise ValueError(f"flow.batch_size: {self.flow.batch_size} must be divisible by "
                             f"learner.size={self.learner.size} (every rank gets an equal share)")
        if self.learner.zero_stage == 3:
            raise ValueError("learner.zero_stage: 3 partitions the weights, but evaluation and export read them on "
                             "rank 0 only; use 2")
        for k in ("eval_every", "save_every"):
            v = getattr(self, k)
            if v and v % self.log_every:
                raise ValueError(f"{k}: must be a multiple of log_every={self.log_every}, got {v}")


# --------------------------------------------------------------------------- VLM SFT
@dataclass
class VLMSFTConfig:
    """One Qwen2.5-VL SFT run (measured recipe, derisk_rrm.md: batch 16, lr 2e-3, warmup 50, cosine,
    one torch thread per process)."""

    steps: int = 1000
    batch_size: int = 16
    lr: float = 2e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    mode: str = "full"  # full | lora (on the language model's projections)
    freeze_vision: bool = False
    lora_rank: int = 16
    lora_alpha: float = 32.0
    vision_patch: bool = True  # batched vision attention (same output, far fewer SDPA calls on CPU)
    seed: int = 0

    def check(self) -> None:
        for k in ("steps", "batch_size", "lr", "max_grad_norm", "lora_rank", "lora_alpha"):
            _positive(k, getattr(self, k))
        _choice("mode", self.mode, {"full", "lora"})
        _positive("warmup_steps", self.warmup_steps, strict=False)
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas: need two values in [0, 1), got {list(self.betas)}")


# --------------------------------------------------------------------------- sandbox pretrain
@dataclass
class PretrainDataConfig:
    """Sandbox data of the pre-training: train and held-out builds use different seeds."""

    size: int = 64
    train_seed: int = 1
    eval_seed: int = 2  # held-out (gates)
    n_train: int = 4000  # edit triples (editor SFT; their images train the VAE)
    n_eval: int = 100  # held-out triples for the gates

    def check(self) -> None:
        _positive("size", self.size)
        _positive("n_train", self.n_train)
        _positive("n_eval", self.n_eval)
        if self.train_seed == self.eval_seed:
            raise ValueError("eval_seed: must differ from train_seed (held-out data)")


@dataclass
class VAEPretrainConfig:
    """The tiny AutoencoderKL: len(blocks) - 1 downsamplings (3 blocks: x4, 64 tokens per 64 px image)."""

    blocks: List[int] = field(default_factory=lambda: [16, 32, 32])
    latent_channels: int = 8
    steps: int = 1500
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 50
    kl_weight: float = 1e-5
    l1_weight: float = 1.0
    edge_weight: float = 1.0  # L1 on pixel differences: sharp edges (the oracle checks sharpness)

    def check(self) -> None:
        if len(self.blocks) < 2:
            raise ValueError("blocks: need at least 2 blocks (one downsampling)")
        for k in ("latent_channels", "steps", "batch_size", "lr"):
            _positive(k, getattr(self, k))


@dataclass
class EditorPretrainConfig:
    """The tiny Kontext transformer (TinyEditorSpec sizes) and its warm-start by editor SFT (full FT)."""

    num_layers: int = 2
    num_single_layers: int = 2
    attention_head_dim: int = 32
    num_attention_heads: int = 2
    rope_axes: List[int] = field(default_factory=lambda: [4, 14, 14])  # (condition marker, row, column)
    text_dim: int = 32
    max_sequence_length: int = 32
    train_text_encoders: bool = True  # the factory's CLIP/T5 are random: train them with the transformer
    steps: int = 4000
    log_every: int = 25
    flow: FlowMatchingConfig = field(default_factory=FlowMatchingConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=0.0))
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    eval: EditorEvalConfig = field(default_factory=EditorEvalConfig)

    def check(self) -> None:
        for k in ("num_layers", "num_single_layers", "attention_head_dim", "num_attention_heads", "text_dim",
                  "max_sequence_length", "steps", "log_every"):
            _positive(k, getattr(self, k))
        if len(self.rope_axes) != 3 or sum(self.rope_axes) != self.attention_head_dim or any(a % 2 for a in self.rope_axes):
            raise ValueError(f"rope_axes: three even sizes summing to attention_head_dim={self.attention_head_dim}, "
                             f"got {list(self.rope_axes)}")


@dataclass
class VLMPretrainConfig:
    """The tiny Qwen2.5-VL (TinyVLMSpec sizes; head_dim = hidden/heads >= 32 for vLLM) and its description
    pre-training on sandbox scenes."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 256
    vision_hidden: int = 64
    vision_depth: int = 2
    vision_heads: int = 2
    two_image_frac: float = 0.5  # "source: ... edited: ..." examples (the RRM judges source/edit pairs)
    sft: VLMSFTConfig = field(default_factory=VLMSFTConfig)

    def check(self) -> None:
        if self.hidden % self.heads or self.hidden // self.heads < 32:
            raise ValueError(f"heads: head_dim = hidden/heads must be an integer >= 32 (vLLM), got "
                             f"{self.hidden}/{self.heads}")
        if not 0 <= self.two_image_frac <= 1:
            raise ValueError(f"two_image_frac: must be in [0, 1], got {self.two_image_frac}")


@dataclass
class VisionWarmupConfig:
    """`edit-rlhf sandbox vision OUT` (pipelines/sandbox_base/vision.py): train a sandbox VLM's vision tower with a
    linear attribute head that is then discarded (per shape kind: absent or its colour; the image defect), on
    scenes drawn fresh every step, a `degraded_frac` of them blurred / noisy / colour-cast. The language model and
    the processor are left as they are. Cosine lr after `warmup_steps`, floor `min_lr_ratio`."""

    init: str = "models/sandbox/rrm_sft"  # configs/sandbox_vision.yaml: the stage-3 SFT output
    seed: int = 0  # the data stream (per-step RNG [seed, step]) and the head's initialisation
    steps: int = 12000
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    degraded_frac: float = 0.5  # of the fresh scenes
    candidate_frac: float = 0.0  # of each batch: graded candidate edits (partial, over-edit, moved, ...) from a pool
    candidate_pool: int = 4000  # candidate edits generated once (the oracle's `seen` of each is its target)
    # The editor's own SDE edits (a GRPO group per prompt, `editor_config`'s editor), targets = what the oracle sees:
    # the images the RRM rewards in Flow-GRPO, unlike rendered candidates (pipelines/sandbox_base/editor_pairs.py).
    editor_frac: float = 0.0  # of each batch
    editor_config: str = "configs/sandbox_tiny.yaml"
    editor_prompts: str = ".cache/sandbox_big/prompts_train"  # training pool: rows editor_start .. + editor_n_prompts
    editor_start: int = 512  # the default GRPO data uses rows 0-511
    editor_n_prompts: int = 512
    editor_samples: int = 8  # edits per prompt
    editor_eval_prompts: str = ".cache/sandbox/prompts_eval"  # held-out: its first eval_n / editor_samples prompts
    eval_every: int = 2000  # 0: evaluate at the start and the end only
    eval_n: int = 500
    eval_seed: int = 5
    torch_threads: int = 1

    def check(self) -> None:
        for k in ("steps", "batch_size", "lr", "eval_n", "torch_threads"):
            _positive(k, getattr(self, k))
        for k in ("warmup_steps", "eval_every", "weight_decay"):
            _positive(k, getattr(self, k), strict=False)
        _positive("candidate_pool", self.candidate_pool)
        for k in ("editor_n_prompts", "editor_samples"):
            _positive(k, getattr(self, k))
        _positive("editor_start", self.editor_start, strict=False)
        if self.candidate_frac + self.editor_frac > 1:
            raise ValueError(f"candidate_frac + editor_frac: must be <= 1, got {self.candidate_frac} + "
                             f"{self.editor_frac}")
        for k in ("degraded_frac", "min_lr_ratio", "candidate_frac", "editor_frac"):
            if not 0 <= getattr(self, k) <= 1:
                raise ValueError(f"{k}: must be in [0, 1], got {getattr(self, k)}")


@dataclass
class GatesConfig:
    """Quality gates on held-out data (recorded in the manifest; the pre-training fails if one is missed)."""

    vae_recon_mse_max: float = 0.003  # [0, 1] pixel units
    editor_oracle_margin_min: float = 1.5  # oracle points (0-10) above copy-the-source (which scores 0)
    editor_probe_cost_min: float = 0.5  # oracle points lost when shuffling the source / the instruction
    vlm_margin_min: float = 0.15  # per-attribute accuracy above the majority baseline
    eval_num_steps: int = 8
    vlm_n_eval: int = 200


@dataclass
class PerceptionConfig:
    """`edit-rlhf sandbox perception OUT` (pipelines/sandbox_base/perception.py): describe (source, graded candidate)
    pairs with the RRM traces' observation text, from a sandbox VLM, with `image_min_pixels` per image (16384:
    64 visual tokens per 64x64 image; 256: the factory's 16). Chunks of `eval_every` steps, each a fresh AdamW
    (warmup `warmup_steps` for the first chunk, `rewarmup_steps` after), constant lr."""

    seed: int = 7  # the data stream (per-step RNG [seed, step])
    init: str = "models/sandbox/vlm"
    image_min_pixels: int = 16384
    freeze_vision: bool = False  # keep a warmed-up tower (`sandbox vision`) as it is: only the language model learns
    steps: int = 3500
    eval_every: int = 500  # 0: evaluate at the start and the end only
    eval_n: int = 256
    eval_max_tokens: int = 96
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 50
    rewarmup_steps: int = 20
    sandbox_seed: int = 0
    torch_threads: int = 1

    def chunk_sft(self, steps: int, first: bool) -> VLMSFTConfig:
        return VLMSFTConfig(steps=steps, batch_size=self.batch_size, lr=self.lr, min_lr_ratio=1.0,
                            warmup_steps=self.warmup_steps if first else self.rewarmup_steps)

    def check(self) -> None:
        for k in ("steps", "eval_n", "eval_max_tokens", "batch_size", "lr", "image_min_pixels", "torch_threads"):
            _positive(k, getattr(self, k))
        for k in ("eval_every", "warmup_steps", "rewarmup_steps"):
            _positive(k, getattr(self, k), strict=False)
        if self.image_min_pixels > 256 * 256:
            raise ValueError(f"image_min_pixels: at most {256 * 256} (a 256x256 image), got {self.image_min_pixels}")


@dataclass
class SandboxPretrainConfig:
    """`edit-rlhf sandbox pretrain OUT`: tiny VAE, Kontext editor (editor SFT) and Qwen2.5-VL (descriptions)."""

    seed: int = 0
    work_dir: str = ".cache/sandbox_pretrain"  # data and intermediate models (not shipped)
    parts: List[str] = field(default_factory=lambda: ["editor", "vlm"])  # editor = VAE + editor SFT
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    vae: VAEPretrainConfig = field(default_factory=VAEPretrainConfig)
    editor: EditorPretrainConfig = field(default_factory=EditorPretrainConfig)
    vlm: VLMPretrainConfig = field(default_factory=VLMPretrainConfig)
    gates: GatesConfig = field(default_factory=GatesConfig)
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="edit_rlhf-pretrain"))
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def check(self) -> None:
        bad = [p for p in self.parts if p not in ("editor", "vlm")]
        if bad or not self.parts:
            raise ValueError(f"parts: a non-empty subset of ['editor', 'vlm'], got {list(self.parts)}")
