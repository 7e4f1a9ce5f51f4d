"""What a report needs from MLflow: a run's params, tags, metric histories, its PNG artifacts (sample and eval
grids) and JSON artifacts (summary.json, an evaluation's table.json), and its child runs (a pipeline's stages).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from edit_rlhf.report.plots import History

PARENT_TAG = "mlflow.parentRunId"
JSON_ARTIFACTS = ("summary.json", "table.json", "eval/table.json")


class RunNotFound(ValueError):
    pass


@dataclass
class RunData:
    run_id: str
    name: str
    status: str
    experiment: str
    start_time: Optional[int]
    end_time: Optional[int]
    params: Dict[str, str]
    tags: Dict[str, str]
    metrics: Dict[str, float]  # latest value of each metric
    history: History  # metric key -> [(step, value)]
    images: List[Tuple[str, bytes]] = field(default_factory=list)  # (artifact path, PNG bytes)
    json: Dict[str, Any] = field(default_factory=dict)  # artifact path -> parsed JSON
    children: List["RunData"] = field(default_factory=list)


def client_for(tracking_uri: Optional[str] = None, tracking_dir: str = "mlruns"):
    """An MlflowClient on `tracking_uri`, MLFLOW_TRACKING_URI, or the embedded default sqlite store under
    `tracking_dir` (the same default as `edit_rlhf.tracking.Tracker`)."""
    from mlflow.tracking import MlflowClient

    from edit_rlhf.tracking import default_uri

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per downloaded grid otherwise
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(tracking_dir)
    if uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///"):]):
        raise RunNotFound(f"no MLflow store at {uri[len('sqlite:///'):]} (pass --tracking-dir or --tracking-uri)")
    return MlflowClient(uri), uri


def _artifact_files(client, run_id: str, path: Optional[str] = None, depth: int = 0) -> List[str]:
    out: List[str] = []
    for a in client.list_artifacts(run_id, path):
        if a.is_dir:
            if depth < 4:
                out += _artifact_files(client, run_id, a.path, depth + 1)
        else:
            out.append(a.path)
    return out


def pick_images(paths: List[str], per_dir: int = 2) -> List[str]:
    """PNG artifacts to show: per folder the first and the last by name (e.g. eval/step_00000.png and the final
    step: before and after), or the first `per_dir` spread over the folder. Report outputs are skipped."""
    by_dir: Dict[str, List[str]] = {}
    for p in sorted(paths):
        if p.lower().endswith(".png") and not p.startswith(("report/", "run_report/")):
            by_dir.setdefault(os.path.dirname(p), []).append(p)
    out = []
    for d, ps in by_dir.items():
        if len(ps) <= per_dir:
            out += ps
        else:
            if per_dir > 1:
                idx = sorted({round(i * (len(ps) - 1) / (per_dir - 1)) for i in range(per_dir)})
            else:
                idx = [len(ps) - 1]
            out += [ps[i] for i in idx]
    return out


def load_run(client, run_id: str, images_per_dir: int = 2, children: bool = True, max_history_keys: int = 400
             ) -> RunData:
    """Everything a report shows of `run_id` (and, with `children`, of its child runs, oldest first)."""
    try:
        run = client.get_run(run_id)
    except Exception as e:
        raise RunNotFound(f"MLflow run {run_id!r} not found in {client.tracking_uri}: {type(e).__name__}") from None
    exp = client.get_experiment(run.info.experiment_id)
    keys = sorted(run.data.metrics)[:max_history_keys]
    history: History = {k: [(int(m.step), float(m.value)) for m in client.get_metric_history(run_id, k)] for k in keys}
    files = _artifact_files(client, run_id)
    data = RunData(run_id=run.info.run_id, name=run.info.run_name or run.info.run_id, status=run.info.status,
                   experiment=exp.name if exp else run.info.experiment_id, start_time=run.info.start_time,
                   end_time=run.info.end_time, params=dict(run.data.params), tags=dict(run.data.tags),
                   metrics=dict(run.data.metrics), history=history)
    wanted = pick_images(files, images_per_dir) + [p for p in files if p in JSON_ARTIFACTS]
    if wanted:
        with tempfile.TemporaryDirectory() as d:
            for p in wanted:
                local = client.download_artifacts(run_id, p, d)
                with open(local, "rb") as f:
                    raw = f.read()
                if p.endswith(".png"):
                    data.images.append((p, raw))
                else:
                    try:
                        data.json[p] = json.loads(raw.decode("utf-8"))
                    except ValueError:
                        pass
    if children:
        kids = client.search_runs([run.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{run_id}'",
                                  order_by=["attributes.start_time ASC"])
        data.children = [load_run(client, k.info.run_id, images_per_dir, children=True) for k in kids]
    return data
