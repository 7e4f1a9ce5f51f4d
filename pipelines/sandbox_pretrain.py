"""`edit-rlhf sandbox pretrain OUT`: the sandbox's "public checkpoints".

Real Edit-R1 starts from pretrained FLUX.1-Kontext and Qwen2.5-VL; the sandbox starts from these:
  OUT/editor   a FluxKontextPipeline folder: tiny VAE trained on sandbox images (latents ~ N(0, 1)) and a
               tiny Kontext transformer warm-started by editor SFT (`pipelines/editor_sft.py`) on sandbox
               triples;
  OUT/vlm      a tiny Qwen2.5-VL (with the factory's processor) pre-trained to describe sandbox scenes
               from one or two images;
  OUT/manifest.json  command, config, seeds, steps, wall times and every quality figure and gate.
The VLM trains in a Ray task while the VAE and then the editor train (one torch thread per process), so
the wall time is about max(VAE + editor, VLM). Gates are measured on held-out data (another seed).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from typing import Any, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_config_path() -> Optional[str]:
    """configs/sandbox_pretrain.yaml of a source checkout (None: schema defaults)."""
    for base in (os.getcwd(), ROOT):
        p = os.path.join(base, "configs", "sandbox_pretrain.yaml")
        if os.path.isfile(p):
            return p
    return None


def _log(msg: str) -> None:
    print(f"[pretrain] {msg}", flush=True)


def train_vae_part(cfg, images_path: str, out: str) -> Dict[str, Any]:
    """Train the VAE on the train images (npz), fit shift/scale, save at `out`. Runs in a Ray task."""
    import numpy as np
    import torch

    from edit_rlhf.models.tiny import build_tiny_vae
    from edit_rlhf.runtime import setup_process
    from edit_rlhf.pipelines.sandbox_base.editor import editor_spec
    from edit_rlhf.pipelines.sandbox_base.vae import fit_latent_normalisation, train_vae

    setup_process(cfg.cluster.torch_threads)
    t0 = time.time()
    images = np.load(images_path)["images"]
    torch.manual_seed(cfg.seed)
    vae = build_tiny_vae(editor_spec(cfg.editor, cfg.vae))
    v = cfg.vae
    every = max(1, v.steps // 10)
    hist = train_vae(vae, images, v.steps, v.batch_size, v.lr, v.warmup_steps, v.kl_weight, v.l1_weight,
                     v.edge_weight, seed=cfg.seed,
                     progress=lambda s, h: _log(f"vae step {s}/{v.steps} mse {h['mse']:.4f} ({h['seconds']:.0f}s)")
                     if s % every == 0 or s == v.steps else None)
    stats = fit_latent_normalisation(vae, images[: min(len(images), 2000)])
    vae.save_pretrained(out)
    return {"steps": v.steps, "train_seconds": round(time.time() - t0, 1), "history": hist, "latents": stats,
            "params": sum(p.numel() for p in vae.parameters())}


def train_vlm_part(cfg, out: str) -> Dict[str, Any]:
    """Pre-train the describing VLM and evaluate it on held-out scene pairs. Runs in a Ray task."""
    from edit_rlhf.runtime import setup_process
    from edit_rlhf.pipelines.sandbox_base.data import make_triples
    from edit_rlhf.pipelines.sandbox_base.vlm import train_describer

    setup_process(cfg.cluster.torch_threads)
    held = make_triples(cfg.data.eval_seed, cfg.gates.vlm_n_eval, cfg.data.size)
    every = max(1, cfg.vlm.sft.steps // 20)

    def progress(step, h):
        if step % every == 0 or step == cfg.vlm.sft.steps:
            _log(f"vlm step {step}/{cfg.vlm.sft.steps} loss {h['loss']:.4f} token-acc {h['token_accuracy']:.3f} "
                 f"({h['seconds']:.0f}s)")

    return train_describer(out, cfg.vlm, cfg.data.size, cfg.seed, [(t.source, t.target) for t in held], progress)


def editor_sft_config(cfg, init_path: str, train: str, evald: str, out: str):
    """The EditorSFTConfig of the warm start (full fine-tune of the tiny transformer)."""
    from edit_rlhf.config.schema import DataConfig, EditorConfig
    from edit_rlhf.config.sft import EditorSFTConfig

    e = cfg.editor
    c = EditorSFTConfig(seed=cfg.seed, steps=e.steps, mode="full", train_text_encoders=e.train_text_encoders,
                        log_every=e.log_every, eval_every=0,
                        save_every=0, output_dir=out, overwrite=True,  # a rebuild starts the editor afresh
                        editor=EditorConfig(path=init_path, resolution=cfg.data.size,
                                            max_sequence_length=e.max_sequence_length),
                        flow=e.flow, optim=e.optim, learner=e.learner,
                        data=DataConfig(train=train, eval=evald, eval_size=min(cfg.data.n_eval, 64), validate="schema"),
                        eval=e.eval, tracking=cfg.tracking, cluster=cfg.cluster)
    c.tracking.run_name = "sandbox-pretrain-editor-sft"
    c.check()
    return c


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def run_pretrain(out: str, config_path: Optional[str], overrides: List[str], quiet: bool = False,
                 argv: Optional[List[str]] = None) -> Dict[str, Any]:
    import numpy as np
    import ray

    from edit_rlhf.cluster.pools import init_ray
    from edit_rlhf.config import load_config
    from edit_rlhf.redaction import redacted_config
    from edit_rlhf.config.sft import SandboxPretrainConfig
    from edit_rlhf.runtime import setup_process
    from edit_rlhf.pipelines.sandbox_base import gates as G
    from edit_rlhf.pipelines.sandbox_base.data import images_of, make_triples, write_prompts
    from edit_rlhf.pipelines.sandbox_base.editor import assemble_editor, editor_spec

    cfg = load_config(SandboxPretrainConfig, config_path, overrides)
    setup_process(cfg.cluster.torch_threads)
    t0 = time.time()
    out = os.path.abspath(out)
    work = os.path.abspath(cfg.work_dir)
    os.makedirs(out, exist_ok=True)
    os.makedirs(work, exist_ok=True)
    old = {}
    if os.path.isfile(os.path.join(out, "manifest.json")):
        with open(os.path.join(out, "manifest.json")) as f:
            old = json.load(f)
    manifest: Dict[str, Any] = {
        "command": " ".join(argv or sys.argv), "config_file": config_path, "overrides": list(overrides),
        "config": redacted_config(cfg), "seed": cfg.seed, "parts_built": list(cfg.parts),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch_threads_per_process":
                    cfg.cluster.torch_threads},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    # ------------------------------------------------------------------ data
    d = cfg.data
    train_ds, eval_ds = os.path.join(work, "data", "prompts_train"), os.path.join(work, "data", "prompts_eval")
    t = time.time()
    if "editor" in cfg.parts:
        for p in (train_ds, eval_ds):
            if os.path.exists(p):
                shutil.rmtree(p)
        write_prompts(train_ds, d.train_seed, d.n_train, d.size)
        write_prompts(eval_ds, d.eval_seed, d.n_eval, d.size, split="eval")
        triples = make_triples(d.train_seed, d.n_train, d.size)
        img_path = os.path.join(work, "data", "vae_images.npz")
        np.savez(img_path, images=images_of(triples))
        del triples
    manifest["data"] = {"train": {"seed": d.train_seed, "n": d.n_train}, "held_out": {"seed": d.eval_seed, "n": d.n_eval},
                        "seconds": round(time.time() - t, 1)}
    _log(f"data in {time.time() - t:.0f}s")
    # ------------------------------------------------------------------ models
    init_ray(cfg.cluster)
    threads = {"num_cpus": 1}
    vlm_ref = None
    if "vlm" in cfg.parts:
        vlm_ref = ray.remote(**threads)(train_vlm_part).remote(cfg, os.path.join(out, "vlm"))
    if "editor" in cfg.parts:
        t = time.time()
        vae_dir = os.path.join(work, "vae")
        manifest["vae"] = ray.get(ray.remote(**threads)(train_vae_part).remote(cfg, img_path, vae_dir))
        _log(f"vae trained in {time.time() - t:.0f}s")
        from diffusers import AutoencoderKL

        init = os.path.join(work, "editor_init")
        counts = assemble_editor(init, AutoencoderKL.from_pretrained(vae_dir), editor_spec(cfg.editor, cfg.vae),
                                 cfg.seed)
        from edit_rlhf.pipelines.editor_sft import EditorSFTTrainer, summary_line

        t = time.time()
        sft_cfg = editor_sft_config(cfg, init, train_ds, eval_ds, os.path.join(work, "editor_sft"))
        s = EditorSFTTrainer(sft_cfg, quiet=quiet).run()
        _log(summary_line(s))
        if os.path.exists(os.path.join(out, "editor")):
            shutil.rmtree(os.path.join(out, "editor"))
        shutil.copytree(s["published"], os.path.join(out, "editor"),
                        ignore=shutil.ignore_patterns("sft_state.json"))
        sft = {k: v for k, v in s.items() if k not in ("checkpoint", "published")}
        manifest["editor"] = {"params": counts, "sft": sft,
                              "steps": s["steps"], "train_seconds": round(time.time() - t, 1)}
    else:
        manifest["vae"], manifest["editor"] = old.get("vae"), old.get("editor")
    if vlm_ref is not None:
        t = time.time()
        manifest["vlm"] = ray.get(vlm_ref)
        _log(f"vlm done (waited {time.time() - t:.0f}s)")
    else:
        manifest["vlm"] = old.get("vlm")
    # ------------------------------------------------------------------ gates (held-out, by path)
    t = time.time()
    held = make_triples(d.eval_seed, d.n_eval, d.size)
    figures = dict(old.get("figures", {}))
    if "editor" in cfg.parts:
        figures["vae"] = G.measure_vae(os.path.join(out, "editor"), held)
        figures["editor"] = G.measure_editor(os.path.join(out, "editor"), held, cfg.gates.eval_num_steps,
                                             max_sequence_length=cfg.editor.max_sequence_length)
    if "vlm" in cfg.parts:
        figures["vlm"] = manifest["vlm"].pop("eval")
    gates = G.check_gates(figures, cfg.gates)
    manifest.update(figures=figures, gates=gates, gates_failed=G.failed(gates),
                    gates_seconds=round(time.time() - t, 1), wall_seconds=round(time.time() - t0, 1),
                    sizes_bytes={k: _dir_bytes(os.path.join(out, k)) for k in ("editor", "vlm")
                                 if os.path.isdir(os.path.join(out, k))})
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2, default=str)
    ray.shutdown()
    manifest["mlflow_run_id"] = track(cfg, manifest)
    _log(summary(manifest))
    if manifest["gates_failed"]:
        raise SystemExit(f"sandbox pretrain: gates failed: {manifest['gates_failed']} (see {out}/manifest.json)")
    return manifest


def track(cfg, m: Dict[str, Any]) -> str:
    """One MLflow run for the pre-training: resolved config as params, VAE/VLM curves, every figure and gate."""
    from edit_rlhf.config import flatten
    from edit_rlhf.redaction import redacted_config
    from edit_rlhf.tracking import Tracker

    t = Tracker.from_config(cfg.tracking, default_name="sandbox-pretrain", tags={"pipeline": "sandbox-pretrain"})
    t.log_params(flatten(redacted_config(cfg)))
    for part in ("vae", "vlm"):
        for h in (m.get(part) or {}).get("history", []):
            t.log_metrics({f"{part}/{k}": v for k, v in h.items() if k != "step"}, h["step"])
    flat = {f"{part}/{k}": v for part, fig in m["figures"].items() for k, v in fig.items()}
    flat.update({f"gate/{k}": v["value"] for k, v in m["gates"].items()})
    t.log_metrics(flat, 0)
    t.log_dict(m, "manifest.json")
    t.finish("FINISHED" if not m["gates_failed"] else "FAILED")
    return t.run_id


def summary(m: Dict[str, Any]) -> str:
    f = m["figures"]
    parts = [f"sandbox pretrain: {m['wall_seconds'] / 60:.1f} min"]
    if "vae" in f:
        parts.append(f"VAE recon MSE {f['vae']['recon_mse']:.4f}")
    if "editor" in f:
        e = f["editor"]
        parts.append(f"editor oracle {e['matched/oracle']:.2f} (copy-source {e['copy_source/oracle']:.2f}, "
                     f"shuffled source {e['shuffled_source/oracle']:.2f}, shuffled instruction "
                     f"{e['shuffled_instruction/oracle']:.2f})")
    if "vlm" in f:
        v = f["vlm"]
        parts.append("VLM acc " + ", ".join(f"{a} {v[f'all/{a}/accuracy']:.2f}/{v[f'all/{a}/majority']:.2f}"
                                            for a in ("background", "circle_present", "circle_color")))
    parts.append(f"{sum(m['sizes_bytes'].values()) / 1e6:.1f} MB")
    parts.append("gates " + ("passed" if not m["gates_failed"] else f"FAILED {m['gates_failed']}"))
    return " | ".join(parts)
