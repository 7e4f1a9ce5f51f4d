"""Typed configuration schema (OmegaConf structured dataclasses).

Every pipeline has one top-level dataclass built from the component dataclasses below. Loading
(`edit_rlhf.config.load`) merges YAML and dotted CLI overrides onto the schema, so unknown keys and
values of the wrong type fail with the full dotted key; the `check()` methods here add the value rules
(ranges, choices, divisibility) and are run by the loader with the dotted path prefixed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from omegaconf import MISSING

from edit_rlhf.config.judge import JudgeConfig
from edit_rlhf.config.rrm import RRMScorerConfig


def _choice(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: {value!r} is not one of {sorted(allowed)}")


def _positive(name: str, value, strict: bool = True) -> None:
    if value is None:
        return
    if (value <= 0) if strict else (value < 0):
        raise ValueError(f"{name}: must be {'>' if strict else '>='} 0, got {value}")


# --------------------------------------------------------------------------- cluster and pools
_WARNED = {"actor_env": False}


@dataclass
class ClusterConfig:
    """Where the Ray cluster is. `address=None` attaches to the job's cluster under `ray job submit`
    (RAY_ADDRESS is set there) and otherwise starts a local one."""

    address: Optional[str] = None
    num_cpus: Optional[int] = None  # logical CPUs of a *local* cluster; None = max(8, os.cpu_count())
    num_gpus: Optional[int] = None
    include_dashboard: bool = False
    dashboard_host: str = "127.0.0.1"  # loopback by default; never expose the dashboard by accident
    torch_threads: int = 1  # per actor process; oversubscription made CPU steps 20-30x slower
    namespace: str = "edit_rlhf"
    actor_env: Dict[str, str] = field(default_factory=dict)  # extra environment variables for every actor

    def runtime_env(self) -> Optional[dict]:
        if not self.actor_env:
            return None
        from edit_rlhf.redaction import is_secret_key

        secret = sorted(k for k in self.actor_env if is_secret_key(k))
        if secret and not _WARNED["actor_env"]:
            import sys

            _WARNED["actor_env"] = True
            print(f"[safety] cluster.actor_env holds secret-looking {', '.join(secret)}: edit_rlhf masks them in "
                  f"everything it writes, but Ray's runtime-env agent logs env_vars in its own log files under the "
                  f"Ray temp dir; set them on the cluster nodes or in the image instead (README, Safety)",
                  file=sys.stderr, flush=True)
        return {"env_vars": dict(self.actor_env)}

    def check(self) -> None:
        _positive("num_cpus", self.num_cpus)
        _positive("torch_threads", self.torch_threads)


@dataclass
class PoolConfig:
    """One actor pool (rollout, reward or learner ranks). Each pool gets its own placement group of
    `size` bundles of {CPU: num_cpus, GPU: num_gpus, **resources}."""

    size: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    resources: Dict[str, float] = field(default_factory=dict)  # custom resources pin a pool to a node group
    strategy: str = "PACK"
    max_restarts: int = 0
    placement_timeout_s: float = 1800.0  # wait for the bundles: an autoscaler takes minutes to add GPU nodes
    gpu_memory_gb: Optional[float] = None  # GPU size of the pool's node type (GiB): `edit-rlhf plan` checks it

    def check(self) -> None:
        _positive("size", self.size)
        _positive("placement_timeout_s", self.placement_timeout_s)
        _positive("gpu_memory_gb", self.gpu_memory_gb)
        _positive("num_cpus", self.num_cpus, strict=False)
        _positive("num_gpus", self.num_gpus, strict=False)
        _choice("strategy", self.strategy, {"PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"})
        for k, v in self.resources.items():
            if v < 0:
                raise ValueError(f"resources.{k}: must be >= 0, got {v}")


# --------------------------------------------------------------------------- models
@dataclass
class EditorConfig:
    """The FLUX.1-Kontext editor, loaded with `FluxKontextPipeline.from_pretrained(path)`."""

    path: str = MISSING
    dtype: str = "float32"  # weights; SDE maths and log-probs are always fp32
    device: str = "auto"  # auto = cuda if available else cpu
    resolution: int = 64
    max_sequence_length: int = 32
    guidance_scale: float = 2.5  # Kontext is guidance-distilled: an embedding, no CFG pass
    # memory on a rollout actor (edit_rlhf.models.memory): where CLIP/T5 live, prompt-embedding cache, VAE decode
    text_encoders: str = "device"  # device | cpu (T5-XXL is 9.5 GB in bf16: keep it off the rollout GPU)
    prompt_cache: int = 0  # embeddings of the last N instructions kept (each prompt encoded once); 0 = off
    vae_slicing: bool = False  # decode a group one image at a time
    vae_tiling: bool = False  # decode in overlapping tiles (large resolutions)

    def check(self) -> None:
        _choice("dtype", self.dtype, {"float32", "bfloat16", "float16"})
        _choice("text_encoders", self.text_encoders, {"device", "cpu"})
        _positive("prompt_cache", self.prompt_cache, strict=False)
        _positive("resolution", self.resolution)
        if self.resolution % 16:
            raise ValueError(f"resolution: must be a multiple of 16 (VAE x8, 2x2 packing), got {self.resolution}")
        _positive("max_sequence_length", self.max_sequence_length)


DEFAULT_KONTEXT_LORA_TARGETS = [
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
    "proj_mlp", "proj_out",
]


@dataclass
class LoraConfig:
    """LoRA on the Kontext transformer (peft). The LoRA-disabled model is the KL reference."""

    rank: int = 8
    alpha: float = 16.0
    target_modules: List[str] = field(default_factory=lambda: list(DEFAULT_KONTEXT_LORA_TARGETS))
    init: str = "gaussian"  # peft init_lora_weights; B=0 so the initial policy equals the base model
    seed: int = 0
    fuse_rollout: bool = True  # rollout actors merge the LoRA into the base weights at each sync (faster sampling;
                               # a CPU copy of the adapted base weights per actor); the learner trains unmerged

    def check(self) -> None:
        _positive("rank", self.rank)
        _positive("alpha", self.alpha)
        if not self.target_modules:
            raise ValueError("target_modules: must name at least one module")


# --------------------------------------------------------------------------- algorithm
@dataclass
class SamplingConfig:
    """Flow-GRPO SDE sampling for rollouts, ODE sampling for evaluation."""

    num_steps: int = 4  # SDE sampler steps for training rollouts
    train_timesteps: int = 3  # train on the first k steps (Flow-GRPO: int(num_steps * timestep_fraction))
    sde_steps: int = 0  # stochastic leading steps; 0 = all but the last (Flow-GRPO); k = an SDE window on the
    #                     first k steps and deterministic (ODE) steps after it (Flow-GRPO-Fast / MixGRPO style)
    noise_level: float = 0.9  # a in sigma_t = a * sqrt(t / (1 - t))
    eval_num_steps: int = 8  # ODE (noise 0) steps for evaluation
    same_noise_in_group: bool = True  # one initial noise x_T shared by the G samples of a group

    def check(self) -> None:
        _positive("num_steps", self.num_steps)
        _positive("eval_num_steps", self.eval_num_steps)
        _positive("noise_level", self.noise_level, strict=False)
        _positive("sde_steps", self.sde_steps, strict=False)
        if self.sde_steps > max(1, self.num_steps - 1):
            raise ValueError(f"sde_steps: at most {max(1, self.num_steps - 1)} (num_steps - 1: the last step stays "
                             f"deterministic), got {self.sde_steps}")
        sde_steps = self.stochastic_steps()
        if not 1 <= self.train_timesteps <= sde_steps:
            raise ValueError(f"train_timesteps: must be in [1, {sde_steps}] (the SDE steps of num_steps="
                             f"{self.num_steps}, sde_steps={self.sde_steps}), got {self.train_timesteps}")

    def stochastic_steps(self) -> int:
        """How many leading sampler steps are stochastic (the rest are deterministic Euler steps)."""
        return self.sde_steps or max(1, self.num_steps - 1)


@dataclass
class GRPOAlgoConfig:
    group_size: int = 8  # G edits per (source image, instruction)
    prompts_per_step: int = 4  # groups per step
    clip_range: float = 1e-4  # PPO clip on exp(delta mean-logprob); tiny because log-probs are per-element means
    adv_clip_max: float = 5.0
    std_eps: float = 1e-4
    global_std: bool = True  # normalise by the batch std instead of each group's
    beta: float = 0.0  # KL coefficient to the LoRA-disabled reference
    kl_form: str = "flow_grpo"  # flow_grpo: |dmu|^2/(2 sigma_t^2); exact: |dmu|^2/(2 sigma_t^2 |dt|)
    num_minibatches: int = 2  # optimizer updates per rollout batch
    micro_batch_size: int = 0  # (sample, timestep) rows per forward; 0 = a rank's whole minibatch at once
    # 0: on-policy (sample, then train, then sync). 1: the rollout pool samples step k+1 with the policy of step
    # k-1 while the learner trains on step k (one policy version of lag; the ratio uses the behaviour policy's
    # log-probs). The pipeline drains before every checkpoint and evaluation, so resume stays exact.
    off_policy_steps: int = 0

    def check(self) -> None:
        if self.group_size < 2:
            raise ValueError(f"group_size: GRPO needs at least 2 samples per group, got {self.group_size}")
        _positive("prompts_per_step", self.prompts_per_step)
        _positive("clip_range", self.clip_range)
        _positive("adv_clip_max", self.adv_clip_max)
        _positive("std_eps", self.std_eps)
        _positive("beta", self.beta, strict=False)
        _choice("kl_form", self.kl_form, {"flow_grpo", "exact"})
        _positive("num_minibatches", self.num_minibatches)
        _positive("micro_batch_size", self.micro_batch_size, strict=False)
        _choice("off_policy_steps", self.off_policy_steps, {0, 1})


@dataclass
class OptimConfig:
    lr: float = 3e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-4
    eps: float = 1e-8
    max_grad_norm: float = 1.0

    def check(self) -> None:
        _positive("lr", self.lr, strict=False)  # lr=0 is the control run of every learning claim
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas: need two values in [0, 1), got {list(self.betas)}")
        _positive("weight_decay", self.weight_decay, strict=False)
        _positive("max_grad_norm", self.max_grad_norm)


@dataclass
class ScheduleConfig:
    """Learning-rate schedule on top of `optim.lr`: linear warmup, then cosine to `min_lr_ratio` (or constant)."""

    warmup_steps: int = 50
    kind: str = "cosine"  # cosine | constant
    min_lr_ratio: float = 0.1

    def check(self) -> None:
        _positive("warmup_steps", self.warmup_steps, strict=False)
        _choice("kind", self.kind, {"cosine", "constant"})
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")


@dataclass
class LearnerConfig(PoolConfig):
    """K DeepSpeed ranks in one torch.distributed group (pool size = number of ranks)."""

    zero_stage: int = 2  # 3 also partitions the weights: the RRM learners (full fine-tune) only
    backend: str = "auto"  # auto = nccl on GPU, gloo on CPU
    master_port: Optional[int] = None  # None = pick a free port
    gradient_checkpointing: bool = False  # keep only each block's inputs; recompute activations in backward

    def check(self) -> None:
        super().check()
        _choice("zero_stage", self.zero_stage, {0, 1, 2, 3})
        _choice("backend", self.backend, {"auto", "gloo", "nccl"})


@dataclass
class SimilarityScorerConfig:
    metric: str = "neg_mse"  # reward = -MSE(edit, target) in [0,1] pixels

    def check(self) -> None:
        _choice("metric", self.metric, {"neg_mse", "psnr"})


@dataclass
class RewardConfig(PoolConfig):
    """The reward pool: M actors behind one scorer interface."""

    scorer: str = "similarity"  # similarity | oracle | rrm
    timeout_s: float = 120.0  # per scoring request
    max_retries: int = 2  # resubmissions of a failed request (on another worker when there is one)
    # groups per scoring call: > 1 sends the groups waiting for a reward worker together (one engine run; a
    # worker takes one call at a time), so a vLLM RRM gets full batches when scoring is the slower stage
    batch_groups: int = 1
    similarity: SimilarityScorerConfig = field(default_factory=SimilarityScorerConfig)
    rrm: RRMScorerConfig = field(default_factory=RRMScorerConfig)

    def check(self) -> None:
        super().check()
        _choice("scorer", self.scorer, {"similarity", "oracle", "rrm"})
        if self.scorer == "rrm":
            self.rrm.require_path()
            tp = self.rrm.vllm.tensor_parallel_size
            if self.rrm.backend == "vllm" and self.num_gpus and self.num_gpus != tp:
                raise ValueError(f"num_gpus: a vLLM reward actor needs one GPU per tensor-parallel rank "
                                 f"(rrm.vllm.tensor_parallel_size={tp}), got num_gpus={self.num_gpus}")
        _positive("timeout_s", self.timeout_s)
        _positive("max_retries", self.max_retries, strict=False)
        _positive("batch_groups", self.batch_groups)


# --------------------------------------------------------------------------- data, tracking, run
@dataclass
class DataConfig:
    """Edit-prompt datasets (schema: id, source_image, instruction, principles[, target_image, oracle])."""

    train: str = MISSING
    eval: Optional[str] = None
    eval_size: int = 8  # prompts from `eval` used at each evaluation
    eval_repeats: int = 1  # ODE edits per eval prompt, each from its own noise seed; a prompt scores their mean
    validate: str = "full"  # full: decode every image at start; schema: columns only

    def check(self) -> None:
        _positive("eval_size", self.eval_size)
        _positive("eval_repeats", self.eval_repeats)
        _choice("validate", self.validate, {"full", "schema"})


@dataclass
class TrackingConfig:
    """MLflow. Default: a sqlite store `<dir>/mlflow.db` with artifacts in `<dir>/artifacts`."""

    uri: Optional[str] = None  # a server URL or sqlite URI; MLFLOW_TRACKING_URI also works
    dir: str = "mlruns"
    experiment: str = "edit_rlhf"
    run_name: Optional[str] = None
    log_images_every: int = 5  # steps between sample-grid artifacts
    grid_groups: int = 2  # groups shown per grid
    parent_run_id: Optional[str] = None  # nest this run under another (the edit-r1 pipeline's parent run)

    def check(self) -> None:
        _positive("log_images_every", self.log_images_every)
        _positive("grid_groups", self.grid_groups)


@dataclass
class MonitorConfig:
    """Reward-hacking monitor: the reward beside an independent judge of the same edits (edit_rlhf.grpo.monitor).

    judge: `oracle` (the sandbox oracle, from the data's oracle records), `pq` (a VLM judge's VIEScore
    perceptual-quality score, PQ = min(naturalness, artifacts), on its own `pool` of actors: the judge on real
    data), `auto` (oracle when the data has oracle records, else pq when `pq.path` is set, else off with a loud
    warning at start), `none` (off, deliberately)."""

    judge: str = "auto"
    window: int = 5  # steps per baseline / recent window of the trend divergence
    threshold: float = 1.0  # warn when the reward's gain exceeds the judge's by this many baseline std
    pq: JudgeConfig = field(default_factory=JudgeConfig)  # the PQ judge (path: a Qwen2.5-VL folder)
    pool: PoolConfig = field(default_factory=PoolConfig)  # actors hosting the PQ judge
    groups_per_step: int = 0  # groups of a step the PQ judge sees (0 = all); each edit of a group is judged
    timeout_s: float = 900.0  # per judge call; a call that fails or times out leaves its edits unjudged (NaN)

    def check(self) -> None:
        _choice("judge", self.judge, {"auto", "oracle", "pq", "none"})
        _positive("window", self.window)
        _positive("groups_per_step", self.groups_per_step, strict=False)
        _positive("timeout_s", self.timeout_s)
        if self.judge == "pq" and not self.pq.path:
            raise ValueError("pq.path: monitor.judge=pq needs a judge model (a Qwen2.5-VL folder)")


@dataclass
class CheckpointConfig:
    """Step checkpoints under `<output_dir>/checkpoints` (edit_rlhf.checkpoint)."""

    keep_last: int = 3  # newest step directories kept (0 = all); the one `latest` names is never deleted
    min_free_mb: float = 64.0  # free space required before a save when no earlier checkpoint sizes it

    def check(self) -> None:
        _positive("keep_last", self.keep_last, strict=False)
        _positive("min_free_mb", self.min_free_mb, strict=False)


@dataclass
class PrepareConfig:
    """Build missing embedded-default inputs (tiny models, sandbox data) before the run starts."""

    build_missing: bool = False
    # fail at start when an input path is missing on the driver's machine; false on a cluster whose models and
    # data exist only on the worker nodes (no shared filesystem): the actors then report a missing path themselves
    check_paths: bool = True
    tiny_models_seed: int = 0
    sandbox_seed: int = 0


@dataclass
class GRPOConfig:
    """`edit-rlhf grpo`: Flow-GRPO training of the Kontext editor's LoRA."""

    seed: int = 0
    steps: int = 30
    eval_every: int = 10  # 0: evaluate only at the start and the end
    eval_probes: bool = True  # final eval also with shuffled sources / instructions and the copy-source baseline
    save_every: int = 10  # 0 saves only at the end
    output_dir: str = "outputs/grpo"
    resume: Optional[str] = None  # "auto" (latest checkpoint in output_dir), a step directory, or a checkpoints root
    overwrite: bool = False  # a fresh run may delete another run's checkpoints in output_dir (else it refuses)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    editor: EditorConfig = field(default_factory=EditorConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    algo: GRPOAlgoConfig = field(default_factory=GRPOAlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    # per optimizer update (steps x num_minibatches in all): cosine to 0 (issue 15: constant lr drifted back after
    # its peak); kind=constant is Flow-GRPO's default
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(warmup_steps=0, kind="cosine",
                                                                            min_lr_ratio=0.0))
    rollout: PoolConfig = field(default_factory=PoolConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)

    def check(self) -> None:
        _positive("steps", self.steps)
        _positive("eval_every", self.eval_every, strict=False)
        _positive("save_every", self.save_every, strict=False)
        per_step = self.algo.prompts_per_step * self.algo.group_size
        div = self.learner.size * self.algo.num_minibatches
        if per_step % div:
            raise ValueError(
                f"algo: prompts_per_step*group_size={per_step} must be divisible by "
                f"learner.size*algo.num_minibatches={div} so every rank gets equal minibatches")
        if self.learner.zero_stage == 3:
            raise ValueError("learner.zero_stage: 3 partitions the weights, which the editor's LoRA learner does not "
                             "gather (the frozen base stays replicated); use 2")
        rows = per_step // div * self.sampling.train_timesteps
        if self.algo.micro_batch_size and rows % self.algo.micro_batch_size:
            raise ValueError(f"algo: micro_batch_size={self.algo.micro_batch_size} must divide the "
                             f"{rows} (sample, timestep) rows of a rank's minibatch")
