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
from typing import Any, Dict

import numpy as np

from edit_rlhf.pipelines.driver import Driver, first_last, run_driver
from edit_rlhf.redaction import scrub

CORE = "edit_rlhf.rrm_train.sft_learner:RRMSFTLearner"


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


class RRMSFTTrainer(Driver):
    name = "rrm-sft"
    path_keys = ("model.path", "data.train", "data.eval", "data.pairs_eval", "output_dir", "export_dir",
                 "tracking.dir")
    final = ("hf", "final")
    train_seconds = 0.0  # time in the learners' train_steps (kept across a resume)

    def check_inputs(self) -> None:
        check_inputs(self.cfg)

    def tags(self) -> Dict[str, str]:
        return {"model": self.cfg.model.path, "mode": self.cfg.model.mode}

    def start_pools(self) -> None:
        from edit_rlhf.cluster.pools import LearnerGroup

        cfg = self.cfg
        self.learner = LearnerGroup("rrm_sft", CORE, cfg, cfg.learner, cfg.cluster.torch_threads,
                                    runtime_env=cfg.cluster.runtime_env())
        self.pools = {"learner": self.learner}
        self.info = self.learner.infos
        self.tracker.set_tags({"trainable_params": self.info[0]["trainable"], "examples": self.info[0]["examples"]})

    def restore(self, step_dir: str, state: Dict[str, Any]) -> None:
        self.learner.broadcast("load_checkpoint", os.path.join(step_dir, "learner"))
        self.train_seconds = float(state.get("train_seconds", 0.0))

    def advance(self) -> Dict[str, Any]:
        """`log_every` steps on every rank; their mean figures, logged at the chunk's last step."""
        n = min(self.cfg.log_every, self.cfg.steps - self.step)
        t = time.time()
        ms = self.learner.broadcast("train_steps", n)[0]  # losses are all-reduced: rank 0 has the global mean
        self.train_seconds += time.time() - t
        self.step = ms[-1]["step"]
        m = {"train/loss": float(np.mean([x["loss"] for x in ms])),
             "train/token_accuracy": float(np.mean([x["token_accuracy"] for x in ms])),
             "train/lr": ms[-1]["lr"], "train/grad_norm": float(np.nanmean([x["grad_norm"] for x in ms])),
             "train/tokens_per_step": float(np.mean([x["tokens"] for x in ms])),
             "time/step_s": float(np.mean([x["seconds"] for x in ms]))}
        self.tracker.log_metrics(m, self.step)
        return m

    def postfix(self, m: Dict[str, Any]) -> Dict[str, str]:
        return {"loss": f"{m['train/loss']:.4f}", "acc": f"{m['train/token_accuracy']:.3f}"}

    def has_eval(self) -> bool:
        return bool(self.cfg.data.eval or self.cfg.data.pairs_eval)

    def evaluate(self, step: int, final: bool = False) -> Dict[str, Any]:
        import ray

        res = ray.get(self.learner.actors[0].call.remote("evaluate"))
        m = self.log_eval(step, {f"eval/{k}": v for k, v in res["metrics"].items()})
        if res["samples"]:
            self.tracker.log_dict({"step": step, "samples": res["samples"]}, f"eval/samples_{step:06d}.json")
        return m

    def save_artifacts(self, tmp: str) -> None:
        """DeepSpeed state of every rank, and the HF folder that vLLM and transformers load by path."""
        import ray

        self.learner.broadcast("save_checkpoint", os.path.join(tmp, "learner"))
        ray.get(self.learner.actors[0].call.remote("save_hf", os.path.join(tmp, "hf"),
                                                   {"step": self.step, "base": self.cfg.model.path,
                                                    "train": self.cfg.data.train}))

    def state(self) -> Dict[str, Any]:
        return {"policy_version": self.step, "rrm_version": self.step, "data_position": self.step,
                "train_seconds": self.train_seconds}

    def summary(self) -> Dict[str, Any]:
        cfg = self.cfg
        loss = first_last(self.history, "train/loss")
        return {"mode": cfg.model.mode, "freeze_vision": cfg.model.freeze_vision, "batch_size": cfg.batch_size,
                "learner_ranks": cfg.learner.size, "train_seconds": round(self.train_seconds, 1),
                "trainable": self.info[0]["trainable"], "examples": self.info[0]["examples"],
                "base_model": cfg.model.path, "train": cfg.data.train,
                "loss_first20": loss[0] if loss else None, "loss_last20": loss[1] if loss else None,
                "export_dir": cfg.export_dir, **provenance(cfg)}

    def finish(self, seconds: float) -> Dict[str, Any]:
        """The skeleton's summary, also as `manifest.json` in the published folder, copied to `export_dir`."""
        s = super().finish(seconds)
        final = s["published"]
        with open(os.path.join(final, "manifest.json"), "w") as f:
            json.dump(scrub(s), f, indent=2, default=str)
        if self.cfg.export_dir:
            if os.path.exists(self.cfg.export_dir):
                shutil.rmtree(self.cfg.export_dir)
            shutil.copytree(final, self.cfg.export_dir)
        return s


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
    parts += [f"mlflow run {s['run_id']}", f"final {s['published']}"]
    return " | ".join(parts)


def run_rrm_sft(cfg, quiet: bool = False) -> Dict[str, Any]:
    return run_driver(RRMSFTTrainer(cfg, quiet=quiet, argv=sys.argv), summary_line)
