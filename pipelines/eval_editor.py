"""`edit-rlhf eval-editor`: evaluate one or more editors on an edit-prompt dataset in one run.

Every editor (the base `editor.path`, plus a trained LoRA per `editors[i].lora`) edits the same prompts with
the same noise seeds (ODE, `sampling.eval_num_steps`) on the rollout pool; each chunk of edits goes, as an
object ref, to the scorer pools as soon as it is generated: the VLM judge (GEdit-Bench protocol: SC, PQ,
O = sqrt(SC*PQ)), the Edit-RRM (when `rrm.path` is set) and, on the sandbox, the oracle. The same judge,
RRM and seeds score every editor. Outputs in `output_dir`: table.json (reproducible: no timings),
table.csv, samples.csv, summary.json, edits/<editor>/*.png, grid.png, report/index.html; the same in MLflow.

Stage API (the `edit-r1` pipeline): `run_eval_editor(cfg, tracker=None) -> summary dict` (see `summary`).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edit_rlhf.config import flatten
from edit_rlhf.redaction import redacted_config, scrub
from edit_rlhf.data.prompts import DatasetError

CATEGORY_COLUMNS = ("category", "edit_type", "task_type")
LORA_FILE = "pytorch_lora_weights.safetensors"


# ---------------------------------------------------------------------------------------------- inputs
def resolve_lora(path: str, key: str) -> str:
    """A diffusers LoRA folder, a checkpoint step folder (its lora/), or a run's output_dir / checkpoints root
    (the `latest` step's lora/)."""
    from edit_rlhf.checkpoint import CheckpointError, Checkpoints

    p = os.path.abspath(path)
    for cand in (p, os.path.join(p, "lora")):
        if os.path.isfile(os.path.join(cand, LORA_FILE)):
            return cand
    try:
        step = Checkpoints(p).resolve(p)
    except CheckpointError:
        step = None
    if step and os.path.isfile(os.path.join(step, "lora", LORA_FILE)):
        return os.path.join(step, "lora")
    raise DatasetError(f"{key}: {path} is not a LoRA folder ({LORA_FILE}), a checkpoint step with lora/, "
                       f"or a run / checkpoints folder with a 'latest' step")


def prepare_missing(cfg) -> None:
    """Check the input paths (a missing one fails now, naming the closest existing path); with `build_missing`,
    build the tiny models and the sandbox data where the paths are those defaults' own (edit_rlhf.paths)."""
    from edit_rlhf.paths import check_inputs

    check_inputs([("editor.path", cfg.editor.path, "model_index.json", "model"),
                  ("data.path", cfg.data.path, None, "data")], cfg.build_missing)
    if not cfg.build_missing:
        return
    if not os.path.exists(os.path.join(cfg.editor.path, "model_index.json")):
        from edit_rlhf.models.tiny import make_tiny_models

        print(f"[prepare] building tiny models in {os.path.dirname(cfg.editor.path)}", flush=True)
        make_tiny_models(os.path.dirname(cfg.editor.path), seed=0)
    if not os.path.exists(cfg.data.path):
        from edit_rlhf.sandbox.build import build_sandbox
        from edit_rlhf.sandbox.config import SandboxConfig

        print(f"[prepare] building sandbox data in {os.path.dirname(cfg.data.path)}", flush=True)
        build_sandbox(os.path.dirname(cfg.data.path), SandboxConfig(seed=0, size=cfg.editor.resolution))


def prepare_data(cfg) -> Tuple[str, Dict[str, Any]]:
    """The edit-prompt dataset to evaluate (GEdit-Bench input is converted into <output_dir>/data/ first)."""
    from edit_rlhf.data.prompts import load_hf_dataset
    from edit_rlhf.evaluation.gedit import convert_gedit, is_gedit, is_save_to_disk

    d = cfg.data
    fmt = d.format
    if fmt == "auto":
        if os.path.isdir(d.path) and not is_save_to_disk(d.path):
            fmt = "gedit"  # a folder of parquet shards
        else:
            fmt = "gedit" if is_gedit(load_hf_dataset(d.path, d.split, "data.split").column_names) else "edit_prompts"
    if fmt == "edit_prompts":
        return d.path, {"format": "edit_prompts", "path": d.path, "split": d.split}
    out = os.path.join(cfg.output_dir, "data", f"gedit_{d.language}_{d.subset}")
    rep = convert_gedit(d.path, out, d.language, d.subset, d.source_column, d.split)
    return out, {"format": "gedit", **rep}


def category_column(columns, configured: Optional[str], path: str) -> Optional[str]:
    if configured:
        if configured not in columns:
            raise DatasetError(f"{path}: data.category_column={configured!r} is not a column; has {list(columns)}")
        return configured
    return next((c for c in CATEGORY_COLUMNS if c in columns), None)


# ---------------------------------------------------------------------------------------------- the run
class EditorEvaluation:
    """Set-up, generate -> score streaming, aggregation and outputs of one evaluation run."""

    def __init__(self, cfg, quiet: bool = False, tracker=None):
        self.cfg = cfg
        self.quiet = quiet
        self.tracker = tracker
        self.own_tracker = tracker is None
        self.pools: Dict[str, Any] = {}
        self.timing: Dict[str, float] = {}
        self.counters = {"generate_calls": 0, "generate_retries": 0, "score_calls": 0, "score_retries": 0,
                         "score_call_failures": 0, "score_timeouts": 0}  # filled in by run_jobs

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        import ray

        from edit_rlhf.cluster.pools import init_ray
        from edit_rlhf.data.prompts import EditPromptDataset
        from edit_rlhf.tracking import Tracker

        cfg = self.cfg
        t0 = time.time()
        prepare_missing(cfg)
        cfg.editor.path = os.path.abspath(cfg.editor.path)
        cfg.output_dir = os.path.abspath(cfg.output_dir)
        cfg.tracking.dir = os.path.abspath(cfg.tracking.dir)
        for m in (cfg.judge, cfg.rrm):
            if m.path:
                m.path = os.path.abspath(m.path)
        if not os.path.exists(os.path.join(cfg.editor.path, "model_index.json")):
            raise DatasetError(f"editor.path: {cfg.editor.path} is not a diffusers pipeline folder "
                               f"(no model_index.json)")
        self.loras = {e.name: (resolve_lora(e.lora, f"editors[{i}].lora ({e.name})") if e.lora else None)
                      for i, e in enumerate(cfg.editors)}
        os.makedirs(cfg.output_dir, exist_ok=True)
        self.data_path, self.data_info = prepare_data(cfg)
        self.data_path = os.path.abspath(self.data_path)
        self.ds = EditPromptDataset(self.data_path, validate=cfg.data.validate,
                                    split=cfg.data.split if self.data_info["format"] == "edit_prompts" else None,
                                    split_key="data.split")
        cols = self.ds.ds.column_names
        self.n = min(len(self.ds), cfg.data.limit or len(self.ds))
        ccol = category_column(cols, cfg.data.category_column, self.data_path)
        self.categories = [str(c) for c in self.ds.ds[ccol][: self.n]] if ccol else ["all"] * self.n
        self.intersection = list(self.ds.ds["intersection"][: self.n]) if "intersection" in cols else [None] * self.n
        self.languages = list(self.ds.ds["language"][: self.n]) if "language" in cols else [None] * self.n
        self.use_oracle = cfg.oracle == "on" or (cfg.oracle == "auto" and "oracle" in cols)
        if self.use_oracle and "oracle" not in cols:
            raise DatasetError(f"{self.data_path}: oracle=on but the dataset has no 'oracle' column "
                               f"(not sandbox data?)")
        if cfg.rrm.path:
            empty = sum(not p for p in self.ds.ds["principles"][: self.n])
            if empty == self.n:
                raise DatasetError(f"{self.data_path}: rrm.path is set but no row has principles; add them with "
                                   f"`edit-rlhf principles --config configs/principles_vlm.yaml input={self.data_path} "
                                   f"output=...` and evaluate that dataset, or unset rrm.path")
        self.kinds = ([("judge", cfg.judge)] if cfg.judge.path else []) + \
                     ([("rrm", cfg.rrm)] if cfg.rrm.path else []) + ([("oracle", None)] if self.use_oracle else [])
        self.started_ray = not ray.is_initialized()
        init_ray(cfg.cluster)
        if self.tracker is None:
            self.tracker = Tracker.from_config(cfg.tracking, tags={"pipeline": "eval-editor", "editor": cfg.editor.path,
                                                                   "data": self.data_path})
        conf = redacted_config(cfg)
        self.tracker.log_params(flatten(conf))
        self.tracker.log_dict(conf, "config.json")
        self.tracker.log_dict(self.data_info, "eval/data.json")
        self._start_pools()
        self.timing["setup_s"] = time.time() - t0

    def _start_pools(self) -> None:
        import ray

        from edit_rlhf.actors.evaluation import EvalScorerWorker
        from edit_rlhf.actors.rollout import EditorRolloutWorker
        from edit_rlhf.cluster.pools import ActorPool

        cfg = self.cfg
        splits = {"eval": self.data_path}
        env = cfg.cluster.runtime_env()
        th = cfg.cluster.torch_threads
        self.pools["rollout"] = ActorPool("eval-rollout", EditorRolloutWorker, cfg.pools.rollout,
                                          lambda i: (cfg, splits, f"rollout-{i}"), runtime_env=env)
        for kind, kcfg in self.kinds:
            self.pools[kind] = ActorPool(f"eval-{kind}", EvalScorerWorker, getattr(cfg.pools, kind),
                                         lambda i, k=kind, c=kcfg: (k, c, splits, f"{k}-{i}", th), runtime_env=env)
        self.infos = {name: p.wait_ready() for name, p in self.pools.items()}  # actors start concurrently
        # Load every LoRA on every rollout actor now: a bad LoRA fails here, naming the editor.
        self.adapters: Dict[str, str] = {}
        for name, path in self.loras.items():
            try:
                got = ray.get([a.use_lora_dir.remote(path) for a in self.pools["rollout"].actors])
            except ray.exceptions.RayError as e:
                raise DatasetError(f"editors ({name}): cannot load the LoRA {path}: {str(e)[-400:]}") from None
            self.adapters[name] = got[0]

    # ------------------------------------------------------------------ generate -> score
    def run_jobs(self) -> None:
        """All (editor, chunk) edits on the rollout pool; each chunk's image ref goes to every scorer pool as soon
        as it is generated (pipelines/scheduler.py: generate -> judge | rrm | oracle). Scoring calls that fail or
        time out are retried on another actor (bounded), then their rows count as failures of that metric."""
        from tqdm import tqdm

        from edit_rlhf.grpo.plan import eval_seed
        from edit_rlhf.pipelines.scheduler import Scheduler, Stage
        from edit_rlhf.pipelines.streaming import RolloutFailed
        from edit_rlhf.rewards.base import ScoreResult

        cfg = self.cfg
        chunks = [list(range(s, min(s + cfg.batch_size, self.n))) for s in range(0, self.n, cfg.batch_size)]
        self.jobs = [{"editor": e.name, "indices": idx, "seeds": [eval_seed(cfg.seed, i) for i in idx],
                      "refs": None, "results": {}, "images": None}
                     for e in cfg.editors for idx in chunks]
        bar = tqdm(total=len(self.jobs) * (1 + len(self.kinds)), desc="eval-editor", disable=self.quiet,
                   dynamic_ncols=True)
        t0 = time.time()

        def generate(actor, task):
            job = task.payload
            actor.use_lora_dir.remote(self.loras[job["editor"]])  # actor calls from one caller run in order
            return actor.evaluate.options(num_returns=2).remote("eval", job["indices"], job["seeds"])

        def generate_failed(task, why):
            job = task.payload
            return RolloutFailed(f"{job['editor']}: edits of rows {job['indices']} failed "
                                 f"{task.attempts['generate']} times: {why[-500:]}")

        def score(actor, task):
            return actor.score.remote("eval", task.payload["indices"], task.refs["generate"][1])

        def score_failed(kind):
            def fill(task, why):
                msg = f"{kind} call failed after {task.attempts[kind]} tries: {why[-400:]}"
                return {"results": [ScoreResult.failed(msg) for _ in task.payload["indices"]]}
            return fill

        def on_stage(task, name):
            job = task.payload
            if name == "generate":
                meta = task.results["generate"]
                if meta.get("adapter") != self.adapters[job["editor"]]:
                    raise RuntimeError(f"{job['editor']}: rows {job['indices']} were edited with adapter "
                                       f"{meta.get('adapter')!r}, expected {self.adapters[job['editor']]!r}")
            bar.update(1)

        stages = [Stage("generate", self.pools["rollout"], generate, after=None, max_retries=cfg.max_retries,
                        error=generate_failed)]
        stages += [Stage(kind, self.pools[kind], score, after="generate", max_retries=cfg.max_retries,
                         timeout_s=cfg.timeout_s, on_failure=score_failed(kind)) for kind, _ in self.kinds]
        sched = Scheduler(stages, on_stage=on_stage)
        sched.submit(self.jobs)
        while sched.pending:
            for task in sched.poll(1.0):  # a chunk every scorer has scored: write it out, free its images
                task.payload["refs"] = task.refs.pop("generate")
                task.payload["results"] = {kind: task.results[kind]["results"] for kind, _ in self.kinds}
                self._chunk_done(task.payload)
        bar.close()
        st = sched.stats
        kinds = [k for k, _ in self.kinds]
        self.counters = {"generate_calls": st["generate"].calls, "generate_retries": st["generate"].retries,
                         "score_calls": sum(st[k].calls for k in kinds),
                         "score_retries": sum(st[k].retries for k in kinds),
                         "score_call_failures": sum(st[k].failures for k in kinds),
                         "score_timeouts": sum(st[k].timeouts for k in kinds)}
        self.timing["generate_and_score_s"] = time.time() - t0

    def _chunk_done(self, job) -> None:
        """Once every scorer has a chunk's results: write its PNGs (`save_edits`), keep the images of the rows
        the report shows, and drop the object ref so the object store holds only chunks in flight."""
        import ray
        from PIL import Image

        k = self.cfg.report.grid_rows if self.cfg.report.enabled else 0
        if self.cfg.save_edits or job["indices"][0] < k:
            imgs = ray.get(job["refs"][1])
            if self.cfg.save_edits:
                d = os.path.join(self.cfg.output_dir, "edits", job["editor"])
                os.makedirs(d, exist_ok=True)
                for b, i in enumerate(job["indices"]):
                    Image.fromarray(imgs[b]).save(os.path.join(d, self.ds.ids[i].replace("/", "__") + ".png"))
            job["images"] = {i: imgs[b] for b, i in enumerate(job["indices"]) if i < k}
        job["refs"] = None

    # ------------------------------------------------------------------ results
    def records(self) -> List[Dict[str, Any]]:
        recs = []
        for job in self.jobs:
            for b, i in enumerate(job["indices"]):
                r: Dict[str, Any] = {"editor": job["editor"], "id": self.ds.ids[i], "index": i,
                                     "category": self.categories[i], "language": self.languages[i],
                                     "intersection": self.intersection[i]}
                if "judge" in job["results"]:
                    res = job["results"]["judge"][b]
                    d = res.detail or {}
                    r.update(sc=d.get("sc"), pq=d.get("pq"), o=d.get("o"), sc_scores=d.get("sc_scores"),
                             pq_scores=d.get("pq_scores"), judge_error=res.error or None,
                             sc_text=d.get("sc_text"), pq_text=d.get("pq_text"))
                for kind in ("rrm", "oracle"):
                    if kind in job["results"]:
                        res = job["results"][kind][b]
                        r[kind] = float(res.reward) if res.ok and np.isfinite(res.reward) else None
                        r[f"{kind}_error"] = (res.error or "not scored") if r[kind] is None else None
                        r[f"{kind}_checks"] = (res.detail or {}).get("checks")
                recs.append(r)
        return recs

    def examples(self, records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """The first `report.grid_rows` prompts: source, target, principles, each editor's edit and record."""
        k = min(self.cfg.report.grid_rows, self.n)
        if k == 0:
            return []
        by = {(r["editor"], r["index"]): r for r in records}
        edits = {(job["editor"], i): img for job in self.jobs for i, img in (job["images"] or {}).items()}
        cols = [c for c in ("source_image", "instruction", "principles", "target_image")
                if c in self.ds.ds.column_names]
        out = []
        for i in range(k):
            row = self.ds.row(i, cols)
            out.append({"id": self.ds.ids[i], "instruction": row["instruction"], "category": self.categories[i],
                        "source": row["source_image"], "target": row.get("target_image"),
                        "principles": row.get("principles"),
                        "edits": {e.name: edits.get((e.name, i)) for e in self.cfg.editors},
                        "records": {e.name: by.get((e.name, i)) for e in self.cfg.editors}})
        return out

    def finish(self) -> Dict[str, Any]:
        from edit_rlhf.evaluation.results import build_table, mlflow_metrics, write_results

        cfg = self.cfg
        t0 = time.time()
        recs = self.records()
        present = {k: True for k, _ in self.kinds}
        meta = {"data": self.data_path, "rows": self.n, "seed": cfg.seed, "eval_num_steps": cfg.sampling.eval_num_steps,
                "resolution": cfg.editor.resolution, "editors": {e.name: self.loras[e.name] for e in cfg.editors},
                "judge": cfg.judge.path, "rrm": cfg.rrm.path, "oracle": self.use_oracle}
        table = build_table(recs, [e.name for e in cfg.editors], present, meta)
        paths = write_results(cfg.output_dir, table, recs)
        with open(os.path.join(cfg.output_dir, "samples.jsonl"), "w") as f:
            for r in recs:
                f.write(json.dumps(r, default=str) + "\n")
        if cfg.save_edits:
            paths["edits"] = os.path.join(cfg.output_dir, "edits")
        self.tracker.log_metrics(mlflow_metrics(table), 0)
        paths["samples_jsonl"] = os.path.join(cfg.output_dir, "samples.jsonl")  # + the judge's / RRM's raw replies
        for p in ("table_json", "table_csv", "samples_csv", "samples_jsonl"):
            self.tracker.client.log_artifact(self.tracker.run_id, paths[p], "eval")
        examples = self.examples(recs)
        if examples:
            from edit_rlhf.report.evaluation import comparison_grid

            grid = comparison_grid(examples, [e.name for e in cfg.editors])
            from PIL import Image

            paths["grid"] = os.path.join(cfg.output_dir, "grid.png")
            Image.fromarray(grid).save(paths["grid"])
            self.tracker.log_image(grid, "eval/grid.png")
        self.timing["outputs_s"] = time.time() - t0
        if cfg.report.enabled:
            paths["report"] = self.report(table, examples)
        self.table, self.paths = table, paths
        return table

    def report(self, table, examples) -> str:
        from edit_rlhf.report.document import Report
        from edit_rlhf.report.evaluation import add_eval_sections

        cfg = self.cfg
        t0 = time.time()
        rep = Report(f"Editor evaluation: {', '.join(e.name for e in cfg.editors)}",
                     subtitle=f"{self.data_path} · {self.n} prompts · seed {cfg.seed} · "
                              f"MLflow run {self.tracker.run_id}")
        add_eval_sections(rep, table, examples)
        s = rep.section("Set-up")
        s.add_kv({"editor": cfg.editor.path, **{f"LoRA ({k})": v or "none (base)" for k, v in self.loras.items()},
                  "judge": cfg.judge.path or "none", "RRM": cfg.rrm.path or "none", "oracle": self.use_oracle,
                  "ODE steps": cfg.sampling.eval_num_steps, "resolution": cfg.editor.resolution})
        fails = [r for r in self.records() if r.get("judge_error")][:10]
        if fails:
            s.add_table([{"editor": r["editor"], "id": r["id"], "judge error": r["judge_error"][:200]} for r in fails],
                        title="Judge failures (first 10)")
        out = os.path.join(cfg.output_dir, "report")
        path = rep.write(out, embed=cfg.report.embed_images)
        self.tracker.log_artifacts(out, "report")
        self.timing["report_s"] = time.time() - t0
        return path

    def summary(self, seconds: float) -> Dict[str, Any]:
        from edit_rlhf.evaluation.results import jsonable

        judge_calls = [i["scorer_info"] for i in self.infos.get("judge", [])]
        s = {"pipeline": "eval-editor", "rows": self.n, "editors": [e.name for e in self.cfg.editors],
             "seconds": round(seconds, 1), "timing": {k: round(v, 2) for k, v in self.timing.items()},
             "headline": self.table["headline"], "run_id": self.tracker.run_id, "tracking_uri": self.tracker.uri,
             "output_dir": self.cfg.output_dir, "paths": self.paths, "counters": dict(self.counters),
             "engine_start_s": {k: [i["scorer_info"].get("engine_start_s") for i in v]
                                for k, v in self.infos.items() if k in ("judge", "rrm")},
             "judge_backend": judge_calls[0].get("backend") if judge_calls else None}
        return jsonable(s)

    def shutdown(self, status: str = "FINISHED") -> None:
        from edit_rlhf.cluster.pools import close_run

        close_run(status, list(self.pools.items()), self.tracker if self.own_tracker else None,
                  getattr(self, "started_ray", False), release=[n for n in self.pools if n != "rollout"])


def run_eval_editor(cfg, quiet: bool = False, tracker=None) -> Dict[str, Any]:
    """Evaluate `cfg.editors` (an EvalEditorConfig); returns the summary (headline numbers, paths, run id).
    With `tracker` (e.g. the edit-r1 pipeline's child run), logs into it and leaves it open."""
    from edit_rlhf.evaluation.results import summary_line
    from edit_rlhf.runtime import setup_process

    setup_process(cfg.cluster.torch_threads)
    t0 = time.time()
    ev = EditorEvaluation(cfg, quiet=quiet, tracker=tracker)
    status = "FAILED"
    try:
        ev.setup()
        ev.run_jobs()
        ev.finish()
        status = "FINISHED"
        s = ev.summary(time.time() - t0)
        with open(os.path.join(cfg.output_dir, "summary.json"), "w") as f:
            json.dump(scrub(s), f, indent=2)
        ev.tracker.log_dict(s, "eval/summary.json")
        ev.tracker.log_metrics({"eval/seconds": s["seconds"]}, 0)
    finally:
        ev.shutdown(status)
    print(summary_line(ev.table, s["seconds"], ev.n, [f"table {ev.paths['table_json']}",
                                                     f"mlflow run {s['run_id']}"]), flush=True)
    return s


def evaluate_editors(config: Any, output_dir: str, loras: Optional[Dict[str, Optional[str]]] = None,
                     editor_path: Optional[str] = None, rrm_path: Optional[str] = None,
                     judge_path: Optional[str] = None, overrides=(), tracker=None, quiet: bool = True
                     ) -> Dict[str, Any]:
    """The evaluation as a pipeline stage: `config` (a YAML path or an EvalEditorConfig) with the run's paths
    filled in. `loras`: editor name -> LoRA folder / checkpoint step / run output_dir (None = the base editor),
    e.g. {"base": None, "grpo": "<grpo output_dir>"}; `overrides` (dotted key=value) apply to a YAML `config`.
    Returns the summary plus the full result `table`."""
    from edit_rlhf.config import ConfigError, load_config
    from edit_rlhf.config.evaluation import EditorSpec, EvalEditorConfig

    sets = [f"output_dir={output_dir}"] + list(overrides)
    cfg = load_config(EvalEditorConfig, config, sets) if isinstance(config, str) else config
    if not isinstance(config, str):
        cfg.output_dir = output_dir
    if editor_path:
        cfg.editor.path = editor_path
    if rrm_path:
        cfg.rrm.path = rrm_path
    if judge_path:
        cfg.judge.path = judge_path
    if loras is not None:  # set on the object: paths need no YAML quoting this way
        cfg.editors = [EditorSpec(name=k, lora=v) for k, v in loras.items()]
    try:
        cfg.check()
    except ValueError as e:
        raise ConfigError(f"config: {e}") from None
    s = run_eval_editor(cfg, quiet=quiet, tracker=tracker)
    with open(s["paths"]["table_json"]) as f:
        s["table"] = json.load(f)
    return s
