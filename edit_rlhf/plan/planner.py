"""`edit-rlhf plan`: GPU memory per pool and per GPU for a pipeline config, computed before renting GPUs.

Every model of the config is built at its real size on the meta device (`plan.models`) and set up by the same
code the pools run: `add_lora` with the config's LoRA, `prepare` (full / LoRA, frozen vision) for the RRM,
`enable_checkpointing` when `learner.gradient_checkpointing`, `editor_placement` for what a rollout actor keeps
on its GPU. Activations are measured, not typed in: the learners' own loss functions (`grpo_loss`, `token_ce`,
`completion_logprobs`) run on meta inputs of the configured micro-batch and sequence sizes while
`plan.measure.saved_bytes` counts what autograd keeps (and, under checkpointing, what each checkpointed block
keeps plus the largest block's recompute); inference peaks (a rollout's transformer call on the whole group,
the VAE decode, vLLM's profile run) come from `plan.measure.LivePeak`. Learner optimizer and gradient state
follow the ZeRO partition (`plan.budget`). Nothing is allocated: every tensor is on the meta device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from edit_rlhf.plan.budget import GiB, RUNTIME_BYTES, PoolPlan, vllm_budget, weights_per_rank, zero_state
from edit_rlhf.plan.measure import CheckpointCounter, LivePeak, fused_attention, saved_bytes
from edit_rlhf.plan import models as M

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}
QWEN_PATCH = 28  # pixels per merged Qwen2.5-VL image token side (14 px patches, 2x2 merge)
RRM_PROMPT_TOKENS = 900  # system rules + instruction + ~10 evaluation points of the `full` RRM prompt
RRM_SFT_TRACE_TOKENS = 1024  # a trace of the SFT data (the teacher's output budget)


def _dtype(name: str) -> torch.dtype:
    from edit_rlhf.runtime import resolve_dtype

    return resolve_dtype("bfloat16" if name == "auto" else name)


def image_tokens(px: int) -> int:
    """Merged Qwen2.5-VL tokens of a px x px image (the processor rounds to 28-px multiples)."""
    side = max(1, round(px / QWEN_PATCH))
    return side * side


@dataclass
class Plan:
    config: str
    pipeline: str
    archs: Dict[str, str] = field(default_factory=dict)
    pools: List[PoolPlan] = field(default_factory=list)
    facts: Dict[str, Any] = field(default_factory=dict)  # per-token figures, sequence sizes, sync costs

    @property
    def ok(self) -> bool:
        return all(p.fits is not False for p in self.pools)

    def failures(self) -> List[str]:
        return [p.why for p in self.pools if p.fits is False]

    def to_dict(self) -> Dict:
        return {"config": self.config, "pipeline": self.pipeline, "archs": self.archs, "ok": self.ok,
                "pools": [p.row() for p in self.pools], "facts": self.facts, "failures": self.failures()}


# --------------------------------------------------------------------------- the editor (FLUX.1-Kontext)
class _AdaptersOff:
    def __init__(self, m):
        self.m = m

    def __enter__(self):
        self.m.disable_adapters()

    def __exit__(self, *exc):
        self.m.enable_adapters()


def kontext_batch(b: int, image_tokens_: int, text_tokens: int, cfg) -> Dict[str, Any]:
    """Meta inputs of the GRPO loss for b (sample, timestep) rows (shapes as `grpo.learner.transitions`)."""
    from edit_rlhf.models.kontext import KontextCondition

    c, d = cfg["in_channels"], cfg["joint_attention_dim"]
    z = dict(device="meta")
    return {"x": torch.zeros(b, image_tokens_, c, **z), "x_next": torch.zeros(b, image_tokens_, c, **z),
            "old_log_prob": torch.zeros(b, **z), "adv": torch.zeros(b, **z), "timestep": torch.zeros(b, **z),
            "sigma": torch.zeros(b, **z), "sigma_next": torch.zeros(b, **z), "sigma_max": 0.9, "noise_level": 0.9,
            "cond": KontextCondition(torch.zeros(b, text_tokens, d, **z),
                                     torch.zeros(b, cfg["pooled_projection_dim"], **z), torch.zeros(text_tokens, 3, **z),
                                     torch.zeros(b, image_tokens_, c, **z), torch.zeros(2 * image_tokens_, 3, **z))}


def editor_learner_activations(tr, micro: int, lat_tokens: int, text_tokens: int, guidance: float, beta: float,
                               checkpointing: bool) -> Dict[str, int]:
    """Bytes a GRPO learner rank holds for one micro-batch: kept by the forward (+ the checkpointed blocks'
    inputs), and the transient of recomputing one block in the backward (checkpointing)."""
    from edit_rlhf.grpo.learner import grpo_loss
    from edit_rlhf.models.memory import enable_checkpointing

    params = list(tr.parameters())
    counter = CheckpointCounter(params) if checkpointing else None
    if checkpointing:
        enable_checkpointing(tr, counter)
    tr.train()
    batch = kontext_batch(micro, lat_tokens, text_tokens, tr.config)
    with fused_attention():
        kept, _ = saved_bytes(lambda: grpo_loss(tr, batch, guidance, 1e-4, beta, reference=lambda: _AdaptersOff(tr)),
                              params)
    ref = 0
    if beta > 0:  # the KL reference pass (adapters off, no grad) runs while the policy's activations are kept
        from edit_rlhf.models.kontext import kontext_velocity

        with torch.no_grad(), fused_attention(), _AdaptersOff(tr):
            lp = LivePeak(params)
            with lp:
                kontext_velocity(tr, batch["x"], batch["timestep"], batch["cond"], guidance)
            ref = lp.peak
    if checkpointing:
        tr.disable_gradient_checkpointing()
        return {"kept": kept + counter.inputs, "transient": max(counter.max_block, ref),
                "checkpointed_calls": counter.calls}
    return {"kept": kept, "transient": ref, "checkpointed_calls": 0}


def flux_block_per_token(width_cfg, kind: str, image_tokens_: int, text_tokens: int, checkpointing: bool,
                         device: str = "meta", dtype=torch.bfloat16, block=None) -> float:
    """Activation bytes per token one real-width FLUX block keeps (kind: double | single), measured as the
    planner measures everything (`saved_bytes`, or a `CheckpointCounter` when checkpointing). `device='cpu'`
    with a real `block` is what the tests compare against the CPU allocator."""
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock

    d = width_cfg["num_attention_heads"] * width_cfg["attention_head_dim"]
    hd = width_cfg["attention_head_dim"]
    if block is None:
        with torch.device(device):
            cls = FluxTransformerBlock if kind == "double" else FluxSingleTransformerBlock
            block = cls(d, width_cfg["num_attention_heads"], hd).to(dtype)
    t = image_tokens_ + text_tokens
    z = dict(device=device, dtype=dtype)
    x = torch.zeros(1, image_tokens_, d, requires_grad=True, **z)
    c = torch.zeros(1, text_tokens, d, requires_grad=True, **z)
    temb = torch.zeros(1, d, **z)
    rope = (torch.zeros(t, hd, device=device), torch.zeros(t, hd, device=device))
    params = list(block.parameters())
    fn = (lambda: block(x, c, temb, image_rotary_emb=rope))
    with fused_attention():
        if checkpointing:
            counter = CheckpointCounter(params)
            kept, _ = saved_bytes(lambda: counter(block.__call__, x, c, temb, rope), params)
            kept += counter.inputs
        else:
            kept, _ = saved_bytes(fn, params)
    return kept / t


def plan_editor_rollout(name: str, pool, ecfg, folder: str, tr, batch: int, text_tokens: int,
                        trajectory_bytes: int = 0) -> PoolPlan:
    """A diffusers actor editing `batch` images per call: the components `editor_placement` keeps on its GPU,
    and the peak of one transformer call on the whole batch or one VAE decode."""
    from edit_rlhf.models.memory import editor_placement

    dt = _dtype(ecfg.dtype)
    place = editor_placement(ecfg.text_encoders)
    vae = M.flux_vae(folder, dt)
    clip, t5 = M.flux_text_encoders(folder, dt)
    parts = {"transformer": tr, "vae": vae, "text_encoder": clip, "text_encoder_2": t5}
    on_gpu = {k: M.nbytes(m) for k, m in parts.items() if place[k] == "device"}
    res = ecfg.resolution
    lat = (res // 16) ** 2
    from edit_rlhf.models.kontext import kontext_velocity

    b = kontext_batch(batch, lat, text_tokens, tr.config)
    with torch.no_grad(), fused_attention():
        lp = LivePeak(list(tr.parameters()))
        with lp:
            kontext_velocity(tr, b["x"], b["timestep"], b["cond"], ecfg.guidance_scale)
        tr_peak = lp.peak
        dec_batch = 1 if ecfg.vae_slicing else batch
        z = torch.zeros(dec_batch, vae.config.latent_channels, res // 8, res // 8, device="meta", dtype=dt)
        lp = LivePeak(list(vae.parameters()))
        with lp:
            vae.decode(z, return_dict=False)
        vae_peak = lp.peak
        te_peak = 0
        if place["text_encoder_2"] == "device":
            lp = LivePeak(list(t5.parameters()))
            with lp:
                t5(input_ids=torch.zeros(1, text_tokens, dtype=torch.long, device="meta"))
            te_peak = lp.peak
    pp = PoolPlan(name, "diffusers", pool.size, pool.num_gpus, pool.gpu_memory_gb)
    pp.items = {"weights": sum(on_gpu.values()), "activations": max(tr_peak, vae_peak, te_peak),
                "buffers": trajectory_bytes, "runtime": RUNTIME_BYTES}
    pp.notes.append("on GPU: " + ", ".join(f"{k} {v / GiB:.1f}" for k, v in on_gpu.items())
                    + (f"; CPU: {', '.join(k for k in place if place[k] == 'cpu')}" if "cpu" in place.values() else ""))
    pp.notes.append(f"peaks: transformer call on {batch} x {2 * lat + text_tokens} tokens {tr_peak / GiB:.1f} GiB, "
                    f"VAE decode of {dec_batch} at {res} px {vae_peak / GiB:.1f} GiB"
                    + (f", T5 {te_peak / GiB:.2f} GiB" if te_peak else ""))
    return pp.finish()


# --------------------------------------------------------------------------- VLMs on vLLM / learners
def plan_vllm(name: str, pool, engine, key: str, archs: Dict[str, str]) -> PoolPlan:
    """A pool of vLLM engines serving a Qwen2.5-VL (`engine`: a VLMEngineConfig)."""
    folder = archs.setdefault(key, M.resolve_arch(engine.path, key))
    v = engine.vllm
    tp = v.tensor_parallel_size
    model = M.qwen_vl(folder, _dtype(v.dtype))
    tc = model.config.text_config
    total = M.nbytes(model)
    q = M.quantized(engine.path)
    if q:  # 4-bit linear layers of the language model (group scales included); the rest in 16 bits
        lm_linear = sum(mod.weight.numel() for n, mod in model.named_modules()
                        if isinstance(mod, torch.nn.Linear) and ".language_model." in f".{n}" and "lm_head" not in n)
        total = total - lm_linear * 2 + int(lm_linear * 4.25 / 8)
    shard = math.ceil(total / tp)
    kv_heads = max(1, math.ceil(tc.num_key_value_heads / tp))
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    kv_per_token = 2 * tc.num_hidden_layers * kv_heads * head_dim * 2
    tokens = min(v.max_model_len, 8192)  # vLLM's profile run: one chunk of at most this many tokens
    with torch.no_grad(), fused_attention():
        lm = model.model.language_model
        lp = LivePeak(list(model.parameters()))
        with lp:
            lm(input_ids=torch.zeros(1, tokens, dtype=torch.long, device="meta"), use_cache=False)
    reserve = math.ceil(lp.peak / tp) + v.max_num_seqs * tc.vocab_size * 4  # + logits of the sampled positions
    pp = PoolPlan(name, "vllm", pool.size, pool.num_gpus, pool.gpu_memory_gb)
    pp.notes.append(f"{M.nparams(model) / 1e9:.2f} B params{' (' + q + ' 4-bit)' if q else ''}, "
                    f"tensor parallel {tp}: {shard / GiB:.1f} GiB weights per shard")
    return vllm_budget(pp, shard, reserve, kv_per_token, v.max_model_len, v.max_num_seqs, v.gpu_memory_utilization,
                       v.enforce_eager)


def rrm_learner(name: str, cfg, archs: Dict[str, str], seq: int, micro: int, loss: str,
                reference: bool = False) -> PoolPlan:
    """An RRM learner rank (SFT or GCPO): `micro` sequences of `seq` tokens per forward/backward."""
    from edit_rlhf.models.memory import enable_checkpointing
    from edit_rlhf.rrm_train.model import prepare

    folder = archs.setdefault("model.path", M.resolve_arch(cfg.model.path, "model.path"))
    dt = _dtype(cfg.model.dtype)
    model = M.qwen_vl(folder, dt)
    model, trainable = prepare(model, cfg.model, cfg.seed)
    lc = cfg.learner
    params = list(model.parameters())
    counter = CheckpointCounter(params) if lc.gradient_checkpointing else None
    if counter is not None:
        enable_checkpointing(model, counter)
    model.train()
    ids = torch.zeros(micro, seq, dtype=torch.long, device="meta")
    if loss == "sft":
        from edit_rlhf.rrm_train.sft_learner import token_ce

        fn = lambda: token_ce(model, {"input_ids": ids, "labels": ids})  # noqa: E731
    else:
        from edit_rlhf.rrm_train.gcpo_learner import completion_logprobs

        c = cfg.rollout.max_tokens
        pos = torch.zeros(micro, c, dtype=torch.long, device="meta")
        fn = lambda: completion_logprobs(model, {"input_ids": ids, "comp_pos": pos, "comp_ids": pos,  # noqa: E731
                                                 "comp_mask": torch.zeros(micro, c, device="meta")})
    with fused_attention():
        kept, _ = saved_bytes(fn, params)
    transient = 0
    if counter is not None:
        kept += counter.inputs
        transient = counter.max_block
    pb = DTYPE_BYTES[cfg.model.dtype]
    total, n_all = M.nbytes(model), M.nparams(model)
    w = weights_per_rank(total, n_all, pb, lc.size, lc.zero_stage)
    state = zero_state(trainable, pb, lc.size, lc.zero_stage, mixed=pb < 4)
    pp = PoolPlan(name, "learner", lc.size, lc.num_gpus, lc.gpu_memory_gb, trainable=trainable)
    pp.items = {"weights": w, **state, "activations": kept + transient, "runtime": RUNTIME_BYTES}
    if reference:
        pp.items["reference"] = total
    pp.notes.append(f"{n_all / 1e9:.2f} B params ({cfg.model.mode}{', vision frozen' if cfg.model.freeze_vision else ''}"
                    f"), {trainable / 1e9:.2f} B trainable, ZeRO-{lc.zero_stage} over {lc.size} ranks, {cfg.model.dtype}")
    pp.notes.append(f"activations: {micro} x {seq} tokens, {kept / GiB:.1f} GiB kept"
                    + (f" + {transient / GiB:.1f} GiB recompute (checkpointing on)" if counter else
                       " (checkpointing off)"))
    return pp.finish(), model


# --------------------------------------------------------------------------- pipelines
def plan_grpo(cfg, archs: Dict[str, str]) -> Plan:
    from edit_rlhf.models.lora import add_lora

    plan = Plan("", "grpo", archs)
    folder = archs.setdefault("editor.path", M.resolve_arch(cfg.editor.path, "editor.path"))
    dt = _dtype(cfg.editor.dtype)
    tr = M.flux_transformer(folder, dt)
    lc = cfg.lora
    with torch.device("meta"):  # the adapter's own tensors on meta too (peft creates them with the module)
        trainable = add_lora(tr, lc.rank, lc.alpha, lc.target_modules, lc.init, lc.seed)
    tr.to(dt)  # peft gives a real module's adapter the base weights' dtype; on meta it skips that step
    a, lcfg = cfg.algo, cfg.learner
    lat = (cfg.editor.resolution // 16) ** 2
    s = cfg.editor.max_sequence_length
    rows = a.prompts_per_step * a.group_size // (lcfg.size * a.num_minibatches) * cfg.sampling.train_timesteps
    micro = a.micro_batch_size or rows
    tokens = 2 * lat + s
    act = editor_learner_activations(tr, micro, lat, s, cfg.editor.guidance_scale, a.beta,
                                     lcfg.gradient_checkpointing)
    pb = DTYPE_BYTES[cfg.editor.dtype]
    learner = PoolPlan("learner", "learner", lcfg.size, lcfg.num_gpus, lcfg.gpu_memory_gb, trainable=trainable)
    learner.items = {"weights": M.nbytes(tr), **zero_state(trainable, pb, lcfg.size, lcfg.zero_stage, mixed=pb < 4),
                     "activations": act["kept"] + act["transient"], "runtime": RUNTIME_BYTES}
    learner.notes.append(f"{M.nparams(tr) / 1e9:.2f} B params, LoRA r{lc.rank} on {len(lc.target_modules)} module "
                         f"kinds: {trainable / 1e6:.0f} M trainable; ZeRO-{lcfg.zero_stage} over {lcfg.size} ranks")
    learner.notes.append(f"micro-batch {micro} rows x {tokens} tokens ({lat} edit + {lat} source + {s} text): "
                         f"{act['kept'] / GiB:.1f} GiB kept"
                         + (f" + {act['transient'] / GiB:.1f} GiB transient (one block's recompute or the KL "
                            f"reference pass; {act['checkpointed_calls']} checkpointed blocks)"
                            if lcfg.gradient_checkpointing else
                            f" + {act['transient'] / GiB:.1f} GiB KL reference pass, checkpointing off"))
    plan.facts["editor_activation_bytes_per_token"] = {
        "model_plain" if not lcfg.gradient_checkpointing else "model_checkpointed": act["kept"] / (micro * tokens)}
    plan.pools.append(learner.finish())
    k = cfg.sampling.train_timesteps
    traj = a.group_size * ((k + 1) * lat * tr.config.in_channels * 4 + k * 8) + (
        a.group_size * cfg.editor.resolution ** 2 * 3)
    plan.pools.append(plan_editor_rollout("rollout", cfg.rollout, cfg.editor, folder, tr, a.group_size, s, traj))
    if cfg.reward.scorer == "rrm" and cfg.reward.rrm.backend != "hf":
        plan.pools.append(plan_vllm("reward", cfg.reward, cfg.reward.rrm, "reward.rrm.path", archs))
    elif cfg.reward.num_gpus:
        plan.pools.append(PoolPlan("reward", "hf", cfg.reward.size, cfg.reward.num_gpus, cfg.reward.gpu_memory_gb,
                                   notes=["HF-backend / non-model scorers are not planned"]).finish())
    else:
        plan.pools.append(PoolPlan("reward", "cpu", cfg.reward.size, 0, None, notes=[f"scorer {cfg.reward.scorer}, "
                                                                                      "CPU"]).finish())
    from edit_rlhf.grpo.monitor import resolve_judge

    if resolve_judge(cfg.monitor.judge, False, cfg.monitor.pq.path)[0] == "pq":
        plan.pools.append(plan_vllm("monitor", cfg.monitor.pool, cfg.monitor.pq, "monitor.pq.path", archs))
    lora_bytes = trainable * pb
    plan.facts["lora_sync"] = {"bytes": lora_bytes, "actors": cfg.rollout.size,
                               "bytes_moved": lora_bytes * cfg.rollout.size, "transport": "object store"}
    return plan


def rrm_seq(prompt_tokens: int, image_px: int, trace_tokens: int) -> Dict[str, int]:
    img = image_tokens(image_px)
    return {"prompt": prompt_tokens, "images": 2 * img, "trace": trace_tokens,
            "total": prompt_tokens + 2 * img + trace_tokens}


def plan_rrm_sft(cfg, archs: Dict[str, str], image_px: int) -> Plan:
    plan = Plan("", "rrm-sft", archs)
    seq = rrm_seq(RRM_PROMPT_TOKENS, image_px, RRM_SFT_TRACE_TOKENS)
    per_rank = cfg.batch_size // cfg.learner.size
    micro = cfg.micro_batch_size or per_rank
    learner, _ = rrm_learner("learner", cfg, archs, seq["total"], micro, "sft")
    plan.pools.append(learner)
    plan.facts["sequence"] = seq
    return plan


def plan_rrm_gcpo(cfg, archs: Dict[str, str], image_px: int) -> Plan:
    from edit_rlhf.transport import sync_costs

    plan = Plan("", "rrm-gcpo", archs)
    seq = rrm_seq(RRM_PROMPT_TOKENS, image_px, cfg.rollout.max_tokens)
    learner, model = rrm_learner("learner", cfg, archs, seq["total"], cfg.algo.micro_batch_size, "gcpo",
                                 reference=cfg.algo.beta > 0)
    plan.pools.append(learner)
    eng = cfg.rollout.engine
    if not eng.path:
        eng.path = cfg.model.path
    plan.pools.append(plan_vllm("rollout", cfg.rollout, eng, "rollout.engine.path", archs))
    from edit_rlhf.models.hf_weights import trainable_names

    names = set(trainable_names(model)) if cfg.sync.trainable_only else None
    nbytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if names is None or n in names)
    plan.facts["sequence"] = seq
    on_gpu = bool(cfg.rollout.num_gpus and cfg.learner.num_gpus and eng.backend == "vllm")
    plan.facts["weight_sync"] = sync_costs(nbytes, cfg.rollout.size, eng.vllm.tensor_parallel_size,
                                           cfg.sync.transport, on_gpu)
    return plan


def plan_principles(cfg, archs: Dict[str, str]) -> Plan:
    plan = Plan("", "principles", archs)
    if cfg.generator != "vlm":
        plan.pools.append(PoolPlan("workers", "cpu", 0, 0, None, notes=["oracle generator: no model"]).finish())
        return plan
    plan.pools.append(plan_vllm("workers", cfg.workers, cfg.vlm, "vlm.path", archs))
    return plan


def plan_eval_editor(cfg, archs: Dict[str, str]) -> Plan:
    from edit_rlhf.models.lora import add_lora

    plan = Plan("", "eval-editor", archs)
    folder = archs.setdefault("editor.path", M.resolve_arch(cfg.editor.path, "editor.path"))
    tr = M.flux_transformer(folder, _dtype(cfg.editor.dtype))
    lc = cfg.lora
    with torch.device("meta"):
        add_lora(tr, lc.rank, lc.alpha, lc.target_modules, lc.init, lc.seed)
    tr.to(_dtype(cfg.editor.dtype))
    rollout = plan_editor_rollout("rollout", cfg.pools.rollout, cfg.editor, folder, tr, cfg.batch_size,
                                  cfg.editor.max_sequence_length)
    extra = len([e for e in cfg.editors if e.lora]) * M.nbytes(tr, only_trainable=True)
    if extra:  # each trained LoRA is loaded as its own adapter (assumed the rank of `lora`)
        rollout.items["weights"] += extra
        rollout.notes.append(f"+ {extra / GiB:.2f} GiB for {len([e for e in cfg.editors if e.lora])} trained LoRA(s)")
        rollout.finish()
    plan.pools.append(rollout)
    if cfg.judge.path:
        plan.pools.append(plan_vllm("judge", cfg.pools.judge, cfg.judge, "judge.path", archs))
    if cfg.rrm.path:
        plan.pools.append(plan_vllm("rrm", cfg.pools.rrm, cfg.rrm, "rrm.path", archs))
    return plan
