"""The report of one or more runs (a pipeline's parent run expands into its stages' child runs), or of stage
results held in memory: overview, key metrics, learning curves, image grids, evaluation tables, config.

Python API (what `edit-rlhf report` and the `edit-r1` pipeline call):

    info = build_report(["<run id>", stage_result("principles", metrics={...}), ...], out_dir,
                        tracking_dir="mlruns", log_to_run="<run id>")
    # -> {'path': <out_dir>/index.html, 'bytes', 'images', 'runs', 'logged_to'}

An entry is an MLflow run id (loaded with its child runs) or a `RunData` (e.g. from `stage_result`).
"""
from __future__ import annotations

import datetime
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from edit_rlhf.report.document import Img, Report
from edit_rlhf.report.mlflow_source import RunData, client_for, load_run
from edit_rlhf.report.plots import DEFAULT_PANELS, History, auto_panels, curves_png

KEY_METRICS = ("reward/mean", "reward/oracle_score", "eval/reward", "eval/oracle_score", "train/kl",
               "reward/failure_rate", "reward/parse_failure_rate")


def stage_result(name: str, metrics: Optional[Dict[str, float]] = None, history: Optional[History] = None,
                 images: Sequence[Tuple[str, Any]] = (), table: Optional[Dict[str, Any]] = None,
                 params: Optional[Dict[str, Any]] = None, status: str = "FINISHED", run_id: str = "") -> RunData:
    """A stage's results held in memory as a report entry: final metrics, metric histories
    {key: [(step, value)]}, images [(caption, uint8 array or PNG bytes)], an evaluation table."""
    from edit_rlhf.report.document import png_bytes

    hist = dict(history or {})
    m = dict(metrics or {})
    for k, v in hist.items():
        if v and k not in m:
            m[k] = v[-1][1]
    return RunData(run_id=run_id, name=name, status=status, experiment="", start_time=None, end_time=None,
                   params={k: str(v) for k, v in (params or {}).items()}, tags={}, metrics=m, history=hist,
                   images=[(cap, png_bytes(img)) for cap, img in images],
                   json={"table.json": table} if table else {})


def _time(ms: Optional[int]) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else "–"


def add_run_sections(report: Report, run: RunData, panels=DEFAULT_PANELS, prefix: str = "") -> None:
    from edit_rlhf.report.evaluation import add_eval_sections

    title = f"{prefix}{run.name}"
    s = report.section(title)
    over: Dict[str, Any] = {"status": run.status}
    if run.run_id:
        over.update({"run id": run.run_id, "experiment": run.experiment})
    if run.start_time:
        over["started"] = _time(run.start_time)
        if run.end_time:
            over["duration"] = f"{(run.end_time - run.start_time) / 1000:.0f} s"
    if "pipeline" in run.tags:
        over["pipeline"] = run.tags["pipeline"]
    s.add_kv(over)
    summary = run.json.get("summary.json") or {}
    key = {k: run.metrics[k] for k in KEY_METRICS if k in run.metrics}
    for k, v in summary.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in key:
            key[k] = v
    if not key:
        key = dict(sorted(run.metrics.items())[:24])
    if key:
        s.add_kv(key, title="Key figures (final values)")
    pans = auto_panels(run.history, panels)
    if pans:
        report.section(f"{title}: learning curves", level=3).add_images(
            [Img(curves_png(run.history, ks, t), t) for t, ks in pans])
    if run.images:
        report.section(f"{title}: image grids", level=3).add_images(
            [Img(png, cap) for cap, png in run.images])
    for path, table in run.json.items():
        if isinstance(table, dict) and ("per_editor" in table or "by_language" in table):
            add_eval_sections(report, table, title_prefix=f"{title}: ")
    if run.params:
        text = "\n".join(f"{k} = {v}" for k, v in sorted(run.params.items()))
        report.section(f"{title}: configuration", level=3).add_pre(text, summary=f"{len(run.params)} parameters")
    for child in run.children:
        add_run_sections(report, child, panels, prefix=f"{title} › ")


def build_report(entries: Sequence[Union[str, RunData]], out_dir: str, title: Optional[str] = None,
                 tracking_uri: Optional[str] = None, tracking_dir: str = "mlruns", embed: bool = True,
                 log_to_run: Optional[str] = None, images_per_dir: int = 2, panels=DEFAULT_PANELS,
                 artifact_path: str = "run_report") -> Dict[str, Any]:
    """Write `<out_dir>/index.html` for runs (MLflow ids, with their child runs) and/or in-memory stage results;
    with `log_to_run`, also log the report folder to that MLflow run under `artifact_path`."""
    client = uri = None
    runs: List[RunData] = []
    for e in entries:
        if isinstance(e, RunData):
            runs.append(e)
            continue
        if client is None:
            client, uri = client_for(tracking_uri, tracking_dir)
        runs.append(load_run(client, e, images_per_dir))
    if not runs:
        raise ValueError("build_report: no runs or stage results given")
    rep = Report(title or (runs[0].name if len(runs) == 1 else "edit_rlhf report"),
                 subtitle=", ".join(r.run_id for r in runs if r.run_id) or None)
    for r in runs:
        add_run_sections(rep, r, panels)
    path = rep.write(out_dir, embed=embed)
    info = {"path": path, "bytes": os.path.getsize(path), "images": rep.image_count,
            "runs": [r.run_id or r.name for r in runs], "logged_to": None}
    if log_to_run:
        if client is None:
            client, uri = client_for(tracking_uri, tracking_dir)
        client.log_artifacts(log_to_run, out_dir, artifact_path)
        info["logged_to"] = f"{log_to_run}:{artifact_path}/"
    return info
