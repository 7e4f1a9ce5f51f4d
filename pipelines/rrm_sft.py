"""`edit-rlhf rrm-sft`: cold-start SFT of the Edit-RRM (Qwen2.5-VL) on T+V-selected traces.

K DeepSpeed learner ranks (LearnerGroup over `edit_rlhf.rrm_train.sft_learner:RRMSFTLearner`) train the model
(full or LoRA, vision tower frozen or not) with the loss on the assistant tokens only. The driver sends step
counts, logs to MLflow, evaluates on held-out traces/pairs (parse rate, agreement with gold checks, pairwise
accuracy) and writes atomic step checkpoints (`checkpoints/step_N/`: DeepSpeed state of every rank, an HF
folder `hf/` that vLLM and transformers load by path, state.json; `latest` written last). `resume=auto`
continues from the latest checkpoint in the same MLflow run; the data position is the step.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np

from edit_rlhf.checkpoint import publish
from edit_rlhf.config import to_dict
from edit_rlhf.redaction import scrub

CORE = "edit_rlhf.rrm_train.sft_learner:RRMSFTLearner"


def absolutize(cfg) -> None:
    cfg.model.path = os.path.abspath(cfg.model.path)
    for k in ("train", "eval", "pairs_eval"):
        v = getattr(cfg.data, k)
        if v:
            setattr(cfg.data, k, os.path.abspath(v))
    cfg.output_dir = os.path.abspath(cfg.output_dir)
    if cfg.export_dir:
        cfg.export_dir = os.path.abspath(cfg.export_dir)
    cfg.tracking.dir = os.path.abspath(cfg.tracking.dir)


def check_inputs(cfg) -> None:
    """Fail early, naming the key, before any actor starts."""
    from edit_rlhf.config import ConfigError
    from edit_rlhf.rrm_train.data import TraceDataset, load_pairs

    if not os.path.isfile(os.path.join(cfg.model.path, "config.json")):
        raise ConfigError(f"config key 'model.path': {cfg.model.path} is not a model folder (no config.json)")
    TraceDataset(cfg.data.train, cfg.data.validate)
    if cfg.data.eval:
        TraceDataset(cfg.data.eval)
    if cfg.data.pairs_eval:
        load_pairs(cfg.data.pairs_eval, size=1)


def provenance(cfg) -> Dict[str, Any]:
    """What the checkpoint was made from: the base weights' hash and the T+V selection figures of the data."""
    import hashlib

    out: Dict[str, Any] = {}
    w = os.path.join(cfg.model.path, "model.safetensors")
    if os.path.isfile(w):
        h = hashlib.sha256()
        with open(w, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        out["base_model_sha256"] = h.hexdigest()
    sel = os.path.join(cfg.data.train, "selection.json")
    if os.path.isfile(sel):
        with open(sel) as f:
            out["train_selection"] = json.load(f)
    return out


class RRMSFTTrainer:
    def __init__(self, cfg, quiet: bool = False, argv: Optional[List[str]] = None):
        self.cfg = cfg
        self.quiet = quiet
        self.argv = argv
        self.history: List[Dict[str, float]] = []
        self.evals: List[Dict[str, Any]] = []
        self.step = 0

    def setup(self) -> None:
        import ray

        from edit_rlhf.checkpoint import Checkpoints
        from edit_rlhf.cluster.pools import LearnerGroup, init_ray
        from edit_rlhf.tracking import Tracker

        cfg = self.cfg
        t0 = time.time()
        absolutize(cfg)
        check_inputs(cfg)
        self.ckpt = Checkpoints.for_run(cfg)
        resume_dir, state = self.ckpt.resume_state(cfg.resume, cfg.overwrite)
        self.started_ray = not ray.is_initialized()
        init_ray(cfg.cluster)
        self.tracker = Tracker.for_run(cfg, state, {"pipeline": "rrm-sft", "model": cfg.model.path,
                                                    "mode": cfg.model.mode}, default_name="rrm-sft")
        self.learner = LearnerGroup("rrm_sft", CORE, cfg, cfg.learner, cfg.cluster.torch_threads,
                                    runtime_env=cfg.cluster.runtime_env())
        self.info = self.learner.infos
        if state is not None:
            self.learner.broadcast("load_checkpoint", os.path.join(resume_dir, "learner"))
            self.step = int(state["step"])
            self.history = list(state.get("history", []))
            self.evals = list(state.get("evals", []))
            self.train_seconds = float(state.get("train_seconds", 0.0))
            self.tracker.set_tags({f"resumed_at_step_{self.step}": resume_dir})
            if not self.quiet:
                print(f"[resume] from {resume_dir}: continuing at step {self.step + 1} "
                      f"(MLflow run {state['mlflow_run_id']})", flush=True)
        else:
            self.train_seconds = 0.0
        self.tracker.set_tags({"trainable_params": self.info[0]["trainable"], "examples": self.info[0]["examples"]})
        self.setup_seconds = time.time() - t0

    # ------------------------------------------------------------------ evaluation / checkpoints
    def evaluate(self, step: int) -> Dict[str, Any]:
        import ray

        res = ray.get(self.learner.actors[0].call.remote("evaluate"))
        m = {f"eval/{k}": v for k, v in res["metrics"].items()}
        self.tracker.log_metrics(m, step)
        if res["samples"]:
            self.tracker.log_dict({"step": step, "samples": res["samples"]}, f"eval/samples_{step:06d}.json")
        m["step"] = step
        self.evals.append(m)
        return m

    def save(self, step: int) -> str:
        """One atomic step directory: DeepSpeed state of every rank, the HF folder, state.json; then `latest`."""
        import ray

        tmp = self.ckpt.begin(step)
        with self.ckpt.guard(tmp):  # a failed save leaves no temporary directory
            self.learner.broadcast("save_checkpoint", os.path.join(tmp, "learner"))
            ray.get(self.learner.actors[0].call.remote("save_hf", os.path.join(tmp, "hf"),
                                                       {"step": step, "base": self.cfg.model.path,
                                                        "train": self.cfg.data.train}))
            state = {"step": step, "policy_version": step, "rrm_version": step, "data_position": step,
                     "mlflow_run_id": self.tracker.run_id, "history": self.history, "evals": self.evals,
                     "train_seconds": self.train_seconds, "config": to_dict(self.cfg), "time": time.time()}
            return self.ckpt.commit(step, tmp, state)

    # ------------------------------------------------------------------ loop
    def run(self) -> Dict[str, Any]:
        from tqdm import tqdm

        cfg = self.cfg
        status, t0 = "FAILED", time.time()
        try:
            self.setup()
            has_eval = bool(cfg.data.eval or cfg.data.pairs_eval)
            if has_eval and self.step == 0:
                self.evaluate(0)
            bar = tqdm(total=cfg.steps, initial=self.step, desc="rrm-sft", disable=self.quiet, dynamic_ncols=True)
            last = self.ckpt.latest()
            while self.step < cfg.steps:
                n = min(cfg.log_every, cfg.steps - self.step)
                tl = time.time()
                ms = self.learner.broadcast("train_steps", n)[0]  # losses are all-reduced: rank 0 has the global mean
                self.train_seconds += time.time() - tl
                self.step = ms[-1]["step"]
                m = {"train/loss": float(np.mean([x["loss"] for x in ms])),
                     "train/token_accuracy": float(np.mean([x["token_accuracy"] for x in ms])),
                     "train/lr": ms[-1]["lr"], "train/grad_norm": float(np.nanmean([x["grad_norm"] for x in ms])),
                     "train/tokens_per_step": float(np.mean([x["tokens"] for x in ms])),
                     "time/step_s": float(np.mean([x["seconds"] for x in ms]))}
                self.tracker.log_metrics(m, self.step)
                self.history.append({"step": self.step, **m})
                bar.update(n)
                bar.set_postfix(loss=f"{m['train/loss']:.4f}", acc=f"{m['train/token_accuracy']:.3f}")
                if has_eval and cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                    self.evaluate(self.step)
                if (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.steps:
                    if self.step == cfg.steps and has_eval:
                        self.evaluate(self.step)
                    last = self.save(self.step)
            bar.close()
            final = publish(os.path.join(last, "hf"), os.path.join(cfg.output_dir, "final"))
            s = self.summary(time.time() - t0, final)
            with open(os.path.join(final, "manifest.json"), "w") as f:
                json.dump(scrub(s), f, indent=2, default=str)
            if cfg.export_dir:
                if os.path.exists(cfg.export_dir):
                    shutil.rmtree(cfg.export_dir)
                shutil.copytree(final, cfg.export_dir)
            self.tracker.log_dict(s, "summary.json")
            status = "FINISHED"
            return s
        finally:
            self.shutdown(status)

    def summary(self, seconds: float, final: str) -> Dict[str, Any]:
        h = self.history
        k = max(1, len(h) // 5)
        s: Dict[str, Any] = {
            "pipeline": "rrm-sft", "command": "edit-rlhf " + " ".join(self.argv[1:]) if self.argv else None,
            "seed": self.cfg.seed,
            "mode": self.cfg.model.mode, "freeze_vision": self.cfg.model.freeze_vision, "steps": self.step,
            "batch_size": self.cfg.batch_size, "learner_ranks": self.cfg.learner.size,
            "seconds": round(seconds, 1), "train_seconds": round(self.train_seconds, 1),
            "setup_seconds": round(self.setup_seconds, 1), "trainable": self.info[0]["trainable"],
            "examples": self.info[0]["examples"], "base_model": self.cfg.model.path, "train": self.cfg.data.train,
            "loss_first20": float(np.mean([m["train/loss"] for m in h[:k]])) if h else None,
            "loss_last20": float(np.mean([m["train/loss"] for m in h[-k:]])) if h else None,
            "checkpoint": final, "export_dir": self.cfg.export_dir, "run_id": self.tracker.run_id,
            "tracking_uri": self.tracker.uri}
        if self.evals:
            s["eval_first"], s["eval_last"] = self.evals[0], self.evals[-1]
        s.update(provenance(self.cfg))
        return s

    def shutdown(self, status: str) -> None:
        from edit_rlhf.cluster.pools import close_run

        close_run(status, [("learner", getattr(self, "learner", None))], getattr(self, "tracker", None),
                  getattr(self, "started_ray", False))


def summary_line(s: Dict[str, Any]) -> str:
    parts = [f"rrm-sft ({s['mode']}): {s['steps']} steps in {s['seconds']:.0f}s (train {s['train_seconds']:.0f}s, "
             f"setup {s['setup_seconds']:.0f}s)"]
    if s.get("loss_first20") is not None:
        parts.append(f"loss {s['loss_first20']:.4f} -> {s['loss_last20']:.4f} (first/last 20%)")
    if "eval_last" in s:
        a, b = s["eval_first"], s["eval_last"]
        if "eval/traces/parse_rate" in b:
            parts.append(f"parse {a['eval/traces/parse_rate']:.2f} -> {b['eval/traces/parse_rate']:.2f}")
        if "eval/traces/check_accuracy" in b:
            parts.append(f"check acc {b['eval/traces/check_accuracy']:.3f}")
        if "eval/pairs/accuracy" in b:
            parts.append(f"pairwise {a['eval/pairs/accuracy']:.3f} -> {b['eval/pairs/accuracy']:.3f} "
                         f"(with ties {b['eval/pairs/accuracy_with_ties']:.3f})")
    parts += [f"mlflow run {s['run_id']}", f"checkpoint {s['checkpoint']}"]
    return " | ".join(parts)


def run_rrm_sft(cfg, quiet: bool = False) -> Dict[str, Any]:
    from edit_rlhf.runtime import setup_process

    setup_process(cfg.cluster.torch_threads)
    s = RRMSFTTrainer(cfg, quiet=quiet, argv=sys.argv).run()
    print(summary_line(s), flush=True)
    return s
