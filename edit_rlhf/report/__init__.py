"""HTML reports of runs and evaluations: image grids, learning curves (PNG, matplotlib Agg), result tables.

- `document.Report`: the self-contained HTML document (images embedded as base64 PNG or linked files).
- `plots`: learning curves / per-category bars as PNG.
- `mlflow_source`: a run's params, metric histories, PNG and JSON artifacts and child runs from MLflow.
- `run_report.build_report`: the report of MLflow runs and/or in-memory stage results (`stage_result`).
- `evaluation`: the sections of an editor evaluation (tables, chart, edits side by side, principle checks).
"""
from edit_rlhf.report.document import Img, Report  # noqa: F401
from edit_rlhf.report.run_report import build_report, stage_result  # noqa: F401
