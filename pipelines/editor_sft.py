"""`edit-rlhf editor-sft`: supervised flow-matching fine-tuning of a FLUX.1-Kontext editor on edit triples.

Users warm up Kontext on their own (source_image, instruction, target_image) pairs before RL; the sandbox
pre-training uses it to give the tiny editor its first edits. K DeepSpeed learner ranks (LearnerGroup over
`edit_rlhf.sft.editor_sft:EditorSFTLearner`) train the transformer (full or LoRA); the driver only sends
step counts, logs to MLflow, evaluates on held-out triples (ODE edits, target MSE, the oracle on sandbox data,
probes at the end) and writes the result: a FluxKontextPipeline folder (full) or a diffusers LoRA. Every
`save_every` steps an atomic step directory (DeepSpeed state of every rank, the editor, state.json with the
step and MLflow run id; `latest` last) lets `resume=auto` continue the same run with the same batches.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List

import numpy as np

from edit_rlhf.config import to_dict

CORE = "edit_rlhf.sft.editor_sft:EditorSFTLearner"


def absolutize(cfg) -> None:
    cfg.editor.path = os.path.abspath(cfg.editor.path)
    cfg.data.train = os.path.abspath(cfg.data.train)
    if cfg.data.eval:
        cfg.data.eval = os.path.abspath(cfg.data.eval)
    cfg.output_dir = os.path.abspath(cfg.output_dir)
    cfg.tracking.dir = os.path.abspath(cfg.tracking.dir)


def check_inputs(cfg) -> None:
    """Fail early, naming the key, when the editor or a dataset is missing (before any actor starts)."""
    from edit_rlhf.config import ConfigError
    from edit_rlhf.data.prompts import EditPromptDataset

    if not os.path.isfile(os.path.join(cfg.editor.path, "model_index.json")):
        raise ConfigError(f"config key 'editor.path': {cfg.editor.path} is not a diffusers pipeline folder "
                          "(no model_index.json)")
    for key in ("train", "eval"):
        p = getattr(cfg.data, key)
        if p:
            EditPromptDataset(p, require=("target_image",), validate="schema")


def _grid(items) -> np.ndarray:
    """Rows `source | edit | target`, captioned with the pixel MSE to the target."""
    from edit_rlhf.rewards.similarity import pixel_mse
    from edit_rlhf.viz import group_grid

    return group_grid([{"source": s, "edits": [e, t], "rewards": [pixel_mse(e, t), 0.0], "title": ins}
                       for s, e, t, ins in items])


class EditorSFTTrainer:
    def __init__(self, cfg, quiet: bool = False):
        self.cfg = cfg
        self.quiet = quiet
        self.history: List[Dict[str, float]] = []
        self.evals: List[Dict[str, float]] = []

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
        self.tracker = Tracker.for_run(cfg, state, {"pipeline": "editor-sft", "editor": cfg.editor.path,
                                                    "mode": cfg.mode}, default_name="editor-sft")
        self.learner = LearnerGroup("editor_sft", CORE, cfg, cfg.learner, cfg.cluster.torch_threads)
        self.info = self.learner.infos
        if state is not None:
            self.learner.broadcast("load_checkpoint", os.path.join(resume_dir, "learner"))
            self.step = int(state["step"])
            self.history = list(state.get("history", []))
            self.evals = list(state.get("evals", []))
            self.tracker.set_tags({f"resumed_at_step_{self.step}": resume_dir})
            if not self.quiet:
                print(f"[resume] from {resume_dir}: continuing at step {self.step + 1} "
                      f"(MLflow run {state['mlflow_run_id']})", flush=True)
        self.tracker.set_tags({"trainable_params": self.info[0]["trainable"], "examples": self.info[0]["examples"]})
        self.setup_seconds = time.time() - t0

    def evaluate(self, step: int, probes: bool = False) -> Dict[str, float]:
        import ray

        res = ray.get(self.learner.actors[0].call.remote("evaluate", probes))
        m = {f"eval/{k}": v for k, v in res["metrics"].items()}
        if m:
            self.tracker.log_metrics(m, step)
            if res["images"]:
                self.tracker.log_image(_grid(res["images"]), f"eval/step_{step:06d}.png")
        m["step"] = step
        self.evals.append(m)
        return m

    def save(self, name: str) -> str:
        """The trained editor (a FluxKontextPipeline folder, or a diffusers LoRA folder) at `output_dir/name`."""
        import ray

        path = os.path.join(self.cfg.output_dir, name)
        ray.get(self.learner.actors[0].call.remote("save", path))
        with open(os.path.join(path, "sft_state.json"), "w") as f:
            json.dump({"step": self.step, "mode": self.cfg.mode, "mlflow_run_id": self.tracker.run_id,
                       "base_editor": self.cfg.editor.path, "train": self.cfg.data.train}, f, indent=2)
        return path

    def checkpoint(self) -> str:
        """One atomic step directory (every rank's DeepSpeed state, the editor, state.json), then `latest`."""
        import ray

        tmp = self.ckpt.begin(self.step)
        with self.ckpt.guard(tmp):  # a failed save leaves no temporary directory
            self.learner.broadcast("save_checkpoint", os.path.join(tmp, "learner"))
            ray.get(self.learner.actors[0].call.remote("save", os.path.join(tmp, "editor")))
            state = {"step": self.step, "policy_version": self.step, "data_position": self.step,
                     "mlflow_run_id": self.tracker.run_id, "history": self.history, "evals": self.evals,
                     "config": to_dict(self.cfg), "time": time.time()}
            return self.ckpt.commit(self.step, tmp, state)

    def run(self) -> Dict[str, Any]:
        from tqdm import tqdm

        cfg = self.cfg
        status, t0 = "FAILED", time.time()
        self.step = 0
        try:
            self.setup()
            has_eval = bool(cfg.data.eval)
            if has_eval and self.step == 0:
                self.evaluate(0)
            bar = tqdm(total=cfg.steps, initial=self.step, desc="editor-sft", disable=self.quiet,
                       dynamic_ncols=True)
            while self.step < cfg.steps:
                n = min(cfg.log_every, cfg.steps - self.step)
                per_rank = self.learner.broadcast("train_steps", n)
                ms = per_rank[0]  # losses are all-reduced: every rank reports the global mean
                self.step = ms[-1]["step"]
                m = {"train/loss": float(np.mean([x["loss"] for x in ms])), "train/lr": ms[-1]["lr"],
                     "train/grad_norm": float(np.nanmean([x["grad_norm"] for x in ms])),
                     "time/step_s": float(np.mean([x["seconds"] for x in ms]))}
                self.tracker.log_metrics(m, self.step)
                self.history.append({"step": self.step, **m})
                bar.update(n)
                bar.set_postfix(loss=f"{m['train/loss']:.4f}", lr=f"{m['train/lr']:.2g}")
                if has_eval and cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                    self.evaluate(self.step)
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.checkpoint()
            bar.close()
            final = self.save("final")
            if has_eval:
                self.evaluate(self.step, probes=cfg.eval.probes)
            status = "FINISHED"
            s = self.summary(time.time() - t0, final)
            self.tracker.log_dict(s, "summary.json")
            return s
        finally:
            self.shutdown(status)

    def summary(self, seconds: float, final: str) -> Dict[str, Any]:
        h = self.history
        k = max(1, len(h) // 5)
        s = {"pipeline": "editor-sft", "mode": self.cfg.mode, "steps": self.step, "seconds": round(seconds, 1),
             "setup_seconds": round(self.setup_seconds, 1), "trainable": self.info[0]["trainable"],
             "examples": self.info[0]["examples"],
             "loss_first20": float(np.mean([m["train/loss"] for m in h[:k]])),
             "loss_last20": float(np.mean([m["train/loss"] for m in h[-k:]])),
             "checkpoint": final, "run_id": self.tracker.run_id, "tracking_uri": self.tracker.uri}
        if self.evals:
            s["eval_first"], s["eval_last"] = self.evals[0], self.evals[-1]
        return s

    def shutdown(self, status: str) -> None:
        from edit_rlhf.cluster.pools import close_run

        close_run(status, [("learner", getattr(self, "learner", None))], getattr(self, "tracker", None),
                  getattr(self, "started_ray", False))


def summary_line(s: Dict[str, Any]) -> str:
    parts = [f"editor-sft ({s['mode']}): {s['steps']} steps in {s['seconds']:.0f}s (setup {s['setup_seconds']:.0f}s)",
             f"loss {s['loss_first20']:.4f} -> {s['loss_last20']:.4f} (first/last 20%)"]
    if "eval_last" in s:
        a, b = s["eval_first"], s["eval_last"]
        if "eval/matched/oracle" in b:
            parts.append(f"eval oracle {a['eval/matched/oracle']:.2f} -> {b['eval/matched/oracle']:.2f}")
            if "eval/copy_source/oracle" in b:
                parts.append(f"copy-source {b['eval/copy_source/oracle']:.2f}")
        if "eval/matched/mse" in b:
            parts.append(f"eval mse {a['eval/matched/mse']:.4f} -> {b['eval/matched/mse']:.4f}")
    parts += [f"mlflow run {s['run_id']}", f"checkpoint {s['checkpoint']}"]
    return " | ".join(parts)


def run_editor_sft(cfg, quiet: bool = False) -> Dict[str, Any]:
    from edit_rlhf.runtime import setup_process

    setup_process(cfg.cluster.torch_threads)
    s = EditorSFTTrainer(cfg, quiet=quiet).run()
    print(summary_line(s), flush=True)
    return s
