"""`edit-rlhf editor-sft`: supervised flow-matching fine-tuning of a FLUX.1-Kontext editor on edit triples.

Users warm up Kontext on their own (source_image, instruction, target_image) pairs before RL; the sandbox
pre-training uses it to give the tiny editor its first edits. K DeepSpeed learner ranks (LearnerGroup over
`edit_rlhf.sft.editor_sft:EditorSFTLearner`) train the transformer (full or LoRA); the driver only sends
step counts, logs to MLflow, evaluates on held-out triples (ODE edits, target MSE, the oracle on sandbox data,
probes at the end) and writes the result: a FluxKontextPipeline folder (full) or a diffusers LoRA. Every
`save_every` steps and at the end an atomic step directory (DeepSpeed state of every rank, the editor with
sft_state.json, state.json with the step and MLflow run id; `latest` last) lets `resume=auto` continue the
same run with the same batches; the last one's editor is published as `output_dir/final`.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict

import numpy as np

from edit_rlhf.pipelines.driver import Driver, first_last, run_driver

CORE = "edit_rlhf.sft.editor_sft:EditorSFTLearner"


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


class EditorSFTTrainer(Driver):
    name = "editor-sft"
    path_keys = ("editor.path", "data.train", "data.eval", "output_dir", "tracking.dir")
    final = ("editor", "final")  # the last checkpoint's editor folder (with sft_state.json)

    def check_inputs(self) -> None:
        check_inputs(self.cfg)

    def tags(self) -> Dict[str, str]:
        return {"editor": self.cfg.editor.path, "mode": self.cfg.mode}

    def start_pools(self) -> None:
        from edit_rlhf.cluster.pools import LearnerGroup

        cfg = self.cfg
        self.learner = LearnerGroup("editor_sft", CORE, cfg, cfg.learner, cfg.cluster.torch_threads)
        self.pools = {"learner": self.learner}
        self.info = self.learner.infos
        self.tracker.set_tags({"trainable_params": self.info[0]["trainable"], "examples": self.info[0]["examples"]})

    def restore(self, step_dir: str, state: Dict[str, Any]) -> None:
        self.learner.broadcast("load_checkpoint", os.path.join(step_dir, "learner"))

    def advance(self) -> Dict[str, Any]:
        """`log_every` steps on every rank; their mean figures, logged at the chunk's last step."""
        n = min(self.cfg.log_every, self.cfg.steps - self.step)
        ms = self.learner.broadcast("train_steps", n)[0]  # losses are all-reduced: every rank reports the global mean
        self.step = ms[-1]["step"]
        m = {"train/loss": float(np.mean([x["loss"] for x in ms])), "train/lr": ms[-1]["lr"],
             "train/grad_norm": float(np.nanmean([x["grad_norm"] for x in ms])),
             "time/step_s": float(np.mean([x["seconds"] for x in ms]))}
        self.tracker.log_metrics(m, self.step)
        return m

    def postfix(self, m: Dict[str, Any]) -> Dict[str, str]:
        return {"loss": f"{m['train/loss']:.4f}", "lr": f"{m['train/lr']:.2g}"}

    def has_eval(self) -> bool:
        return bool(self.cfg.data.eval)

    def evaluate(self, step: int, final: bool = False) -> Dict[str, Any]:
        """ODE edits of held-out triples (target MSE, the oracle on sandbox data); probes at the end if set."""
        import ray

        res = ray.get(self.learner.actors[0].call.remote("evaluate", final and self.cfg.eval.probes))
        m = self.log_eval(step, {f"eval/{k}": v for k, v in res["metrics"].items()})
        if res["images"]:
            self.tracker.log_image(_grid(res["images"]), f"eval/step_{step:06d}.png")
        return m

    def save_artifacts(self, tmp: str) -> None:
        """Every rank's DeepSpeed state, and the editor: a FluxKontextPipeline folder (full) or a diffusers LoRA
        folder, with sft_state.json."""
        import ray

        self.learner.broadcast("save_checkpoint", os.path.join(tmp, "learner"))
        editor = os.path.join(tmp, "editor")
        ray.get(self.learner.actors[0].call.remote("save", editor))
        with open(os.path.join(editor, "sft_state.json"), "w") as f:
            json.dump({"step": self.step, "mode": self.cfg.mode, "mlflow_run_id": self.tracker.run_id,
                       "base_editor": self.cfg.editor.path, "train": self.cfg.data.train}, f, indent=2)

    def state(self) -> Dict[str, Any]:
        return {"policy_version": self.step, "data_position": self.step}

    def summary(self) -> Dict[str, Any]:
        loss = first_last(self.history, "train/loss")
        return {"mode": self.cfg.mode, "trainable": self.info[0]["trainable"], "examples": self.info[0]["examples"],
                "loss_first20": loss[0] if loss else None, "loss_last20": loss[1] if loss else None}


def summary_line(s: Dict[str, Any]) -> str:
    parts = [f"editor-sft ({s['mode']}): {s['steps']} steps in {s['seconds']:.0f}s (setup {s['setup_seconds']:.0f}s)"]
    if s.get("loss_first20") is not None:
        parts.append(f"loss {s['loss_first20']:.4f} -> {s['loss_last20']:.4f} (first/last 20%)")
    if "eval_last" in s:
        a, b = s["eval_first"], s["eval_last"]
        if "eval/matched/oracle" in b:
            parts.append(f"eval oracle {a['eval/matched/oracle']:.2f} -> {b['eval/matched/oracle']:.2f}")
            if "eval/copy_source/oracle" in b:
                parts.append(f"copy-source {b['eval/copy_source/oracle']:.2f}")
        if "eval/matched/mse" in b:
            parts.append(f"eval mse {a['eval/matched/mse']:.4f} -> {b['eval/matched/mse']:.4f}")
    parts += [f"mlflow run {s['run_id']}", f"final {s['published']}"]
    return " | ".join(parts)


def run_editor_sft(cfg, quiet: bool = False) -> Dict[str, Any]:
    return run_driver(EditorSFTTrainer(cfg, quiet=quiet), summary_line)
