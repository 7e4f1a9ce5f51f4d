"""MLflow tracking from the driver only (workers return metrics; they never talk to MLflow).

Default store: sqlite at `<dir>/mlflow.db` with artifacts under `<dir>/artifacts` (MLflow 3 refuses the
plain file store, and a relative default artifact root collides with it). `uri` or MLFLOW_TRACKING_URI point
at a server instead. Params are the flattened resolved config; params, tags and dict artifacts pass through
`edit_rlhf.redaction` (secret-looking keys, environment maps and known secret values are masked).
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from typing import Any, Dict, Iterable, Optional

import numpy as np

_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-./ ]")
MAX_PARAM_LEN = 6000


def default_uri(directory: str) -> str:
    return "sqlite:///" + os.path.join(os.path.abspath(directory), "mlflow.db")


def sanitize_key(key: str) -> str:
    """MLflow keys allow alphanumerics, _ - . / and space."""
    return _BAD_KEY.sub("_", key.replace("@", "_at_"))


def redact(params: Dict[str, Any]) -> Dict[str, str]:
    from edit_rlhf.redaction import redact_flat

    return {sanitize_key(k): str(v)[:MAX_PARAM_LEN] for k, v in redact_flat(params).items()}


class Tracker:
    """An MLflow run. `run_id` continues an existing run (resume)."""

    def __init__(self, directory: str = "mlruns", experiment: str = "edit_rlhf", uri: Optional[str] = None,
                 run_name: Optional[str] = None, run_id: Optional[str] = None, tags: Optional[Dict[str, str]] = None):
        from mlflow.tracking import MlflowClient

        self.uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(directory)
        if self.uri.startswith("sqlite:///"):
            os.makedirs(os.path.dirname(self.uri[len("sqlite:///"):]) or ".", exist_ok=True)
        # An explicit client only: mlflow.set_tracking_uri() would also export MLFLOW_TRACKING_URI to every
        # child process (and so redirect the next run started from here).
        from edit_rlhf import store

        # first connection (which migrates a new sqlite store) and experiment creation under the store's lock:
        # concurrent first starts on one folder queue here instead of racing on alembic's temporary tables
        with store.store_lock(self.uri):
            store.check(self.uri)
            try:
                self.client = MlflowClient(self.uri)
                exp = self.client.get_experiment_by_name(experiment)
                if exp is None:
                    art = None
                    if self.uri.startswith("sqlite:"):
                        art = "file://" + os.path.join(os.path.abspath(directory), "artifacts")
                    exp_id = self.client.create_experiment(experiment, artifact_location=art)
                else:
                    exp_id = exp.experiment_id
            except Exception as e:
                err = store.translate(self.uri, e)
                if err is e:
                    raise
                raise err from e
        if run_id:
            self.run_id = self.client.get_run(run_id).info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(exp_id, run_name=run_name, tags=tags or {}).info.run_id
        self.experiment_id = exp_id

    @classmethod
    def from_config(cls, tcfg, run_id: Optional[str] = None, tags: Optional[Dict[str, str]] = None,
                    default_name: Optional[str] = None) -> "Tracker":
        """A run for a TrackingConfig; nested under `tcfg.parent_run_id` when set (MLflow's parent tag)."""
        tags = dict(tags or {})
        if getattr(tcfg, "parent_run_id", None):
            tags["mlflow.parentRunId"] = tcfg.parent_run_id
        return cls(tcfg.dir, tcfg.experiment, tcfg.uri, tcfg.run_name or default_name, run_id=run_id, tags=tags)

    @classmethod
    def for_run(cls, cfg, state: Optional[Dict[str, Any]], tags: Dict[str, str],
                default_name: Optional[str] = None) -> "Tracker":
        """A training pipeline's run: the checkpoint's own MLflow run when resuming (`state` from
        `Checkpoints.resume_state`), else a new one holding the resolved config as params and config.json."""
        from edit_rlhf.config import flatten
        from edit_rlhf.redaction import redacted_config

        t = cls.from_config(cfg.tracking, run_id=state["mlflow_run_id"] if state else None, tags=tags,
                            default_name=default_name)
        if state is None:
            conf = redacted_config(cfg)
            t.log_params(flatten(conf))
            t.log_dict(conf, "config.json")
        return t

    def log_params(self, params: Dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in redact(params).items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: Dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = []
        for k, v in metrics.items():
            try:
                f = float(v)
            except (TypeError, ValueError):
                continue
            if math.isfinite(f):
                items.append(Metric(sanitize_key(k), f, ts, int(step)))
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def log_image(self, image: np.ndarray, artifact_file: str) -> None:
        from PIL import Image

        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, os.path.basename(artifact_file))
            Image.fromarray(np.asarray(image, dtype=np.uint8)).save(p)
            self.client.log_artifact(self.run_id, p, os.path.dirname(artifact_file) or None)

    def log_dict(self, data: Dict[str, Any], artifact_file: str) -> None:
        from edit_rlhf.redaction import scrub

        data = scrub(data)
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, os.path.basename(artifact_file))
            with open(p, "w") as f:
                json.dump(data, f, indent=2, default=str)
            self.client.log_artifact(self.run_id, p, os.path.dirname(artifact_file) or None)

    def log_artifacts(self, local_dir: str, artifact_path: Optional[str] = None) -> None:
        self.client.log_artifacts(self.run_id, local_dir, artifact_path)

    def set_tags(self, tags: Dict[str, Any]) -> None:
        from edit_rlhf.redaction import redact_flat

        for k, v in redact_flat({k: str(v) for k, v in tags.items()}).items():
            self.client.set_tag(self.run_id, sanitize_key(k), str(v)[:5000])

    def finish(self, status: str = "FINISHED") -> None:
        """End the run; a run ended by SIGINT / SIGTERM (edit_rlhf.stops) is KILLED rather than FAILED."""
        from edit_rlhf.stops import stop_status

        self.client.set_terminated(self.run_id, status=stop_status(status))


def summarize(values: Iterable[float], prefix: str) -> Dict[str, float]:
    """mean/std/min/max of a list (NaNs ignored), keeping MLflow's key space bounded."""
    a = np.asarray([v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))], float)
    if a.size == 0:
        return {}
    return {f"{prefix}/mean": float(a.mean()), f"{prefix}/std": float(a.std()),
            f"{prefix}/min": float(a.min()), f"{prefix}/max": float(a.max())}
