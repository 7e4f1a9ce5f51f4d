"""GPU smoke test of the production path at real sizes with random weights (what `scripts/gpu_smoke.sh` runs).

On one GPU, through the same classes the pools run:
 1. grpo: a random-init full-size FLUX.1-Kontext-dev transformer (bf16) with the production LoRA (r64), T5/CLIP
    on the CPU and sliced VAE decoding (configs/flux_kontext_dev.yaml): `EditorRollout.rollout` of 2 prompts x
    G=4 at 512 px, rewards, group advantages, one `GRPOLearner.train_step` (DeepSpeed, gradient checkpointing,
    micro-batch 8) with rollout and learner on the same GPU (two copies of the transformer, as two actors hold);
 2. rrm: a random-init Qwen2.5-VL-7B (vLLM `load_format=dummy`: config only, no weight files) scoring the 8
    edits through `RRMScorer` (the reward pool's scorer);
 3. sync: one RRM weight sync over the NCCL transport (`edit_rlhf.transport.NCCLSender` -> the vLLM engine's
    weight-transfer engine). NCCL cannot put two ranks of one group on one GPU, so this phase needs two GPUs
    (learner on GPU 0, the engine in a Ray actor on GPU 1); on one GPU it is reported as skipped, with why.
Prints one JSON line: seconds and peak GPU memory per phase beside what `edit-rlhf plan` predicts for them.

`--cpu-dry-run` runs the same code on the CPU with tiny models of the same architectures (vLLM CPU backend,
gloo), so the script is exercised without a GPU (tests/test_gpu_smoke.py); the sync phase then uses the
object-store transport. The text encoders of the full-size run are shallow (2 layers at the real widths: T5
d_model 4096, CLIP 768): they only produce conditioning, and stay on the CPU as in production.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

GiB = float(1 << 30)


def _peak(dev) -> float:
    import torch

    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / GiB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)  # host RSS (GiB) on the dry run


def _alloc(dev) -> float:
    import torch

    return torch.cuda.memory_allocated(dev) / GiB if dev.type == "cuda" else 0.0


def _reset(dev) -> None:
    import gc

    import torch

    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def _init_(module, std: float = 0.02):
    import torch

    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, std)
    return module


def build_pipe(tiny: bool, dev, dtype):
    """A FluxKontextPipeline in memory: real-size transformer + VAE (random, built straight on `dev` in `dtype`)
    and shallow text encoders at the real widths on the CPU; tiny everything with `tiny`."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from edit_rlhf.models.tokenizers import make_clip_tokenizer, make_t5_tokenizer
    from edit_rlhf.plan.models import ARCH_DIR

    arch = os.path.join(ARCH_DIR, "flux1-kontext-dev")
    tcfg = {k: v for k, v in json.load(open(os.path.join(arch, "transformer", "config.json"))).items()
            if not k.startswith("_")}
    vcfg = {k: v for k, v in json.load(open(os.path.join(arch, "vae", "config.json"))).items() if not k.startswith("_")}
    text_dim, clip_dim = tcfg["joint_attention_dim"], tcfg["pooled_projection_dim"]
    if tiny:
        tcfg.update(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                    joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])
        vcfg.update(block_out_channels=[8, 16, 16, 16], norm_num_groups=4, layers_per_block=1)
        text_dim = clip_dim = 32
    with torch.device("meta"):
        tr = FluxTransformer2DModel.from_config(tcfg)
        vae = AutoencoderKL.from_config(vcfg)
    tr = _init_(tr.to_empty(device=dev).to(dtype))
    vae = _init_(vae.to_empty(device=dev).to(dtype), 0.01)
    tok, tok2 = make_clip_tokenizer([], 77), make_t5_tokenizer([], 512)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=clip_dim, intermediate_size=4 * clip_dim,
                                        num_attention_heads=4, num_hidden_layers=2, projection_dim=clip_dim,
                                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                        pad_token_id=tok.pad_token_id, max_position_embeddings=77)).to(dtype)
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok2), d_model=text_dim, d_kv=64 if not tiny else 8,
                                 d_ff=2 * text_dim, num_layers=2, num_heads=text_dim // 64 if not tiny else 4,
                                 pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).to(dtype)
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                            base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                            max_image_seq_len=4096)
    return FluxKontextPipeline(scheduler=sched, vae=vae, text_encoder=clip, tokenizer=tok, text_encoder_2=t5,
                               tokenizer_2=tok2, transformer=tr)


def prompts_dataset(path: str, n: int, size: int) -> str:
    """n edit prompts with random sources and targets (the similarity scorer's reward) in our schema."""
    import datasets
    import numpy as np

    from edit_rlhf.data.images import encode_png

    rng = np.random.default_rng(0)
    img = lambda: {"bytes": encode_png(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)), "path": None}  # noqa
    rows = {"id": [f"p{i}" for i in range(n)], "instruction": [f"make object {i} red" for i in range(n)],
            "source_image": [img() for _ in range(n)], "target_image": [img() for _ in range(n)],
            "principles": [[{"question": "Is the object red?", "category": "follow"},
                            {"question": "Is the rest unchanged?", "category": "keep"},
                            {"question": "Is the image clean?", "category": "quality"}]] * n}
    feats = datasets.Features({"id": datasets.Value("string"), "instruction": datasets.Value("string"),
                               "source_image": datasets.Image(), "target_image": datasets.Image(),
                               "principles": [{"question": datasets.Value("string"),
                                               "category": datasets.Value("string")}]})
    datasets.Dataset.from_dict(rows, features=feats).save_to_disk(path)
    return path


def grpo_phase(args, dev, work: str) -> dict:
    """One GRPO step: rollout (2 prompts x G=4) -> rewards -> advantages -> one learner update."""
    import torch

    from edit_rlhf.algorithms.flow_grpo import group_advantages
    from edit_rlhf.config import GRPOConfig, load_config
    from edit_rlhf.ports import free_port
    from edit_rlhf.grpo.learner import GRPOLearner
    from edit_rlhf.grpo.rollout import EditorRollout
    from edit_rlhf.rewards.similarity import SimilarityScorer
    from edit_rlhf.data.prompts import EditPromptDataset

    res = 64 if args.cpu_dry_run else 512
    data = prompts_dataset(os.path.join(work, "prompts"), 2, res)
    over = [f"editor.path={work}", f"data.train={data}", "data.eval=null", f"output_dir={work}/out",
            f"tracking.dir={work}/mlruns", "algo.prompts_per_step=2", "algo.group_size=4", "algo.num_minibatches=1",
            "learner.size=1", "editor.prompt_cache=16"]
    if args.cpu_dry_run:
        over += ["editor.dtype=float32", "editor.resolution=64", "editor.max_sequence_length=32", "lora.rank=4",
                 "lora.alpha=8", "sampling.num_steps=4", "sampling.train_timesteps=3", "algo.micro_batch_size=4",
                 "editor.text_encoders=device"]
    cfg = load_config(GRPOConfig, os.path.join(ROOT, "configs", "flux_kontext_dev.yaml"), over)
    dtype = torch.bfloat16 if cfg.editor.dtype == "bfloat16" else torch.float32
    _reset(dev)
    t0 = time.time()
    pipe = build_pipe(args.cpu_dry_run, dev, dtype)
    learner_tr = copy.deepcopy(pipe.transformer)  # the learner actor holds its own copy
    build_s = time.time() - t0
    _reset(dev)
    resident = _alloc(dev)
    t0 = time.time()
    rollout = EditorRollout(cfg, {"train": data}, pipe=pipe)
    ds = EditPromptDataset(data, validate="schema")
    scorer = SimilarityScorer()
    trajs, rewards, keys = [], [], []
    for i in range(2):
        meta, images, traj = rollout.rollout("train", i, [100 * i + g for g in range(4)])
        row = ds.row(i, ["id", "target_image"])
        rewards += [r.reward for r in scorer.score(row, images)]
        keys += [(meta["prompt_id"], meta["instruction"])] * 4
        trajs.append(traj)
    rollout_s, rollout_gb = time.time() - t0, _peak(dev) - resident
    adv = group_advantages(rewards, keys, cfg.algo.std_eps, cfg.algo.adv_clip_max).view(2, 4)
    del rollout
    _reset(dev)
    resident = _alloc(dev)
    t0 = time.time()
    learner = GRPOLearner(cfg, 0, 1, "127.0.0.1", free_port(), transformer=learner_tr)
    mb = [[(trajs[g], j, float(adv[g, j])) for g in range(2) for j in range(4)]]
    stats = learner.train_step(mb)
    learner_s, learner_gb = time.time() - t0, _peak(dev) - resident
    out = {"build_s": round(build_s, 1), "rollout_s": round(rollout_s, 1), "learner_s": round(learner_s, 1),
           "weights_resident_gb": round(resident, 2), "rollout_peak_above_weights_gb": round(rollout_gb, 2),
           "learner_peak_above_weights_gb": round(learner_gb, 2),
           "loss": stats["loss"], "ratio_first_max_dev": stats["ratio_first_max_dev"],
           "micro_batch": learner.micro, "checkpointing": bool(cfg.learner.gradient_checkpointing)}
    del learner, learner_tr, pipe, trajs
    return out, cfg


def rrm_folder(work: str, tiny: bool) -> str:
    """config.json (the 7B architecture, or a tiny one) + an offline processor; no weights: vLLM `dummy` load."""
    from edit_rlhf.models.tiny import TinyVLMSpec, build_tiny_qwen_vl, make_qwen_vl_processor
    from edit_rlhf.plan.models import ARCH_DIR

    path = os.path.join(work, "rrm")
    if tiny:
        build_tiny_qwen_vl(path, spec=TinyVLMSpec(hidden=128, heads=2, kv_heads=1, intermediate=256))
        return path
    proc = make_qwen_vl_processor([], patch_size=14, merge_size=2)
    proc.image_processor.size = {"shortest_edge": 56 * 56, "longest_edge": 512 * 512}
    tok = proc.tokenizer
    cfg = json.load(open(os.path.join(ARCH_DIR, "qwen2.5-vl-7b-instruct", "config.json")))
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>",
                                                      "<|vision_start|>", "<|vision_end|>")}
    cfg.update(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
               vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
               bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"])
    cfg["text_config"].update(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"])
    os.makedirs(path, exist_ok=True)
    json.dump(cfg, open(os.path.join(path, "config.json"), "w"), indent=2)
    proc.save_pretrained(path)
    return path


def rrm_phase(args, dev, work: str) -> dict:
    """vLLM serving the (random) RRM, scoring 8 edits through the reward pool's scorer."""
    import numpy as np
    import torch

    from edit_rlhf.config import load_config
    from edit_rlhf.config.rrm import RRMScorerConfig
    from edit_rlhf.rewards.rrm import RRMScorer

    path = rrm_folder(work, args.cpu_dry_run)
    cfg = load_config(RRMScorerConfig, None, [f"path={path}", "backend=vllm", "prompt.style=compact",
                                               "sampling.max_tokens=64", "vllm.max_model_len=2048",
                                               "vllm.enforce_eager=true", "vllm.load_format=dummy",
                                               "vllm.gpu_memory_utilization=0.45",
                                               f"vllm.dtype={'float32' if args.cpu_dry_run else 'bfloat16'}"])
    free0 = torch.cuda.mem_get_info(dev)[0] if dev.type == "cuda" else 0
    t0 = time.time()
    scorer = RRMScorer(cfg, threads=1)
    start_s = time.time() - t0
    used = (free0 - torch.cuda.mem_get_info(dev)[0]) / GiB if dev.type == "cuda" else None
    res = 64 if args.cpu_dry_run else 512
    rng = np.random.default_rng(1)
    row = {"id": "p0", "instruction": "make the object red", "source_image": rng.integers(0, 255, (res, res, 3),
                                                                                         dtype=np.uint8),
           "principles": [{"question": "Is the object red?", "category": "follow"}]}
    edits = rng.integers(0, 255, (8, res, res, 3), dtype=np.uint8)
    t0 = time.time()
    out = scorer.score(row, edits)
    score_s = time.time() - t0
    return {"engine_start_s": round(start_s, 1), "score_8_s": round(score_s, 1),
            "vllm_gpu_gb": None if used is None else round(used, 2),
            "scored": len(out), "parsed": int(sum(r.ok for r in out))}, scorer, path


def sync_phase(args, dev, scorer, path: str) -> dict:
    """One RRM weight sync: NCCL (two GPUs: learner on 0, the engine in a Ray actor on 1) or, on the dry run,
    the object-store path into the in-process engine."""
    import torch

    if args.cpu_dry_run:
        from edit_rlhf.models.hf_weights import sync_weights
        from edit_rlhf.rrm_train.model import load_rrm
        from edit_rlhf.rrm_train.sync import WeightBuckets

        model, _ = load_rrm(path, "float32", "cpu")
        t0 = time.time()
        v = scorer.load_weights(WeightBuckets(sync_weights(model, trainable_only=False), version=1))
        return {"transport": "object_store", "sync_s": round(time.time() - t0, 2), "engine_version": v}
    if torch.cuda.device_count() < 2:
        return {"transport": "nccl", "skipped": "NCCL cannot place two ranks of one group on one GPU: the NCCL "
                                                "sync needs 2 GPUs (learner + engine); run on a 2-GPU machine"}
    import ray
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from edit_rlhf.actors.rrm_rollout import RRMRolloutWorker
    from edit_rlhf.config import load_config
    from edit_rlhf.config.rrm import VLMEngineConfig
    from edit_rlhf.ports import free_port
    from edit_rlhf.transport import NCCLSender

    scorer.close()
    ray.init(num_gpus=torch.cuda.device_count(), include_dashboard=False, log_to_driver=True)
    ecfg = load_config(VLMEngineConfig, None, [f"path={path}", "backend=vllm", "vllm.load_format=dummy",
                                               "vllm.weight_transfer=nccl", "vllm.enforce_eager=true",
                                               "vllm.max_model_len=2048", "vllm.dtype=bfloat16",
                                               "vllm.gpu_memory_utilization=0.6"])
    engine = RRMRolloutWorker.options(num_gpus=1).remote(ecfg, "rrm-smoke")
    taken = set(ray.get(engine.info.remote())["gpu_ids"])
    mine = next(i for i in range(torch.cuda.device_count()) if str(i) not in taken)  # not the engine's GPU
    torch.cuda.set_device(mine)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda", mine):
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**json.load(open(os.path.join(path, "config.json")))))
    torch.set_default_dtype(torch.float32)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    t0 = time.time()
    sender = NCCLSender(model, None, [engine], 1, 0, "127.0.0.1", free_port())
    init_s = time.time() - t0
    t0 = time.time()
    versions = sender.send(1)
    sync_s = time.time() - t0
    sender.close()
    ray.shutdown()
    return {"transport": "nccl", "init_s": round(init_s, 1), "sync_s": round(sync_s, 2), "engine_versions": versions,
            "bytes": nbytes, "gb_per_s": round(nbytes / GiB / max(sync_s, 1e-9), 1)}


def predicted(args) -> dict:
    """What `edit-rlhf plan` says for the pools this smoke test stands in for (GiB per GPU)."""
    from edit_rlhf.plan.run import run_plan

    if args.cpu_dry_run:
        return {}
    p = run_plan(os.path.join(ROOT, "configs", "flux_kontext_dev_rrm7b.yaml"),
                 ["algo.prompts_per_step=2", "algo.group_size=4", "algo.num_minibatches=1", "learner.size=1"])
    pools = {x.name: x for x in p.pools}
    li, ri = pools["learner"].items, pools["rollout"].items
    return {"rollout_peak_above_weights_gb": round(ri["activations"] / GiB, 2),
            "learner_peak_above_weights_gb": round((li["grads"] + li["optimizer"] + li["activations"]) / GiB, 2),
            "weights_resident_gb": round((ri["weights"] + li["weights"]) / GiB, 2),
            "rrm_weights_gb": round(pools["reward"].items["weights"] / GiB, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-dry-run", action="store_true", help="tiny models on the CPU (no GPU needed)")
    ap.add_argument("--out", default=None, help="also append the JSON line to this file")
    args = ap.parse_args(argv)
    from edit_rlhf.runtime import resolve_device, setup_process

    setup_process(1 if args.cpu_dry_run else None)
    import torch

    dev = resolve_device("cpu" if args.cpu_dry_run else "auto")
    if not args.cpu_dry_run and dev.type != "cuda":
        print("gpu_smoke: no CUDA device (use --cpu-dry-run to exercise the script on the CPU)", file=sys.stderr)
        return 2
    t_all = time.time()
    line = {"smoke": "gpu" if dev.type == "cuda" else "cpu-dry-run", "device": torch.cuda.get_device_name(dev)
            if dev.type == "cuda" else "cpu", "gpus": torch.cuda.device_count()}
    line["predicted"] = predicted(args)
    with tempfile.TemporaryDirectory() as work:
        line["grpo"], _ = grpo_phase(args, dev, work)
        _reset(dev)
        line["rrm"], scorer, path = rrm_phase(args, dev, work)
        line["sync"] = sync_phase(args, dev, scorer, path)
        scorer.close()
    line["seconds"] = round(time.time() - t_all, 1)
    text = json.dumps(line)
    print(text, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
