"""`edit-rlhf edit-r1`: the whole Edit-R1 recipe as one pipeline of stages.

Typically: principles -> RRM trace selection -> RRM SFT -> RRM GCPO -> editor GRPO (rewarded by the GCPO RRM)
-> editor evaluation (base vs trained, same judge and seeds). Each stage is exactly one `edit-rlhf <command>`
run with its own YAML and overrides; stages hand their outputs to the next by path (`{stages.<name>.<key>}`).
One MLflow parent run holds a child run per stage. A finished stage leaves `<stage_dir>/stage.json`; with
`resume=auto` finished stages are skipped and the interrupted one continues from its own checkpoint
(`resume=auto` is passed to stages whose pipeline supports it). A stage can be skipped (`skip=[name]`); its
declared outputs must then already exist.
"""
from __future__ import annotations

import json
import os
import re
import time
from typing import Any, Dict, List, Optional

from edit_rlhf.commands import pipeline
from edit_rlhf.config import ConfigError, flatten, load_config
from edit_rlhf.redaction import redacted_config, scrub

_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_.\-]+)\}")
STAGE_FILE = "stage.json"


def render(text: str, context: Dict[str, Any]) -> str:
    """Replace {output_dir}, {stage_dir}, {seed} and {stages.<name>.<key>} in `text`."""

    def sub(m):
        key = m.group(1)
        cur: Any = context
        for part in key.split("."):
            if not isinstance(cur, dict) or part not in cur:
                raise ConfigError(f"placeholder {{{key}}}: unknown (known: output_dir, stage_dir, seed, "
                                  f"stages.<earlier stage>.<declared output>)")
            cur = cur[part]
        return str(cur)

    return _PLACEHOLDER.sub(sub, text)


def _fields(schema) -> set:
    return set(getattr(schema, "__dataclass_fields__", {}))


def _numeric(d: Dict[str, Any], prefix: str) -> Dict[str, float]:
    out = {}
    for k, v in flatten(d).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}/{k}"] = float(v)
    return out


class EditR1:
    def __init__(self, cfg, config_dir: str = ".", quiet: bool = False):
        self.cfg = cfg
        self.quiet = quiet
        self.config_dir = os.path.abspath(config_dir)
        self.root = os.path.abspath(cfg.output_dir)
        self.results: Dict[str, Dict[str, Any]] = {}

    def _stage_dir(self, name: str) -> str:
        return os.path.join(self.root, name)

    def _done(self, name: str) -> Optional[Dict[str, Any]]:
        p = os.path.join(self._stage_dir(name), STAGE_FILE)
        if os.path.exists(p):
            with open(p) as f:
                st = json.load(f)
            if st.get("status") == "done":
                return st
        return None

    def stage_overrides(self, stage, schema, parent_run_id: str) -> List[str]:
        ctx = {"output_dir": self.root, "stage_dir": self._stage_dir(stage.name), "seed": self.cfg.seed,
               "stages": {n: r["outputs"] for n, r in self.results.items()}}
        ov = [render(o, ctx) for o in stage.overrides]
        fields = _fields(schema)
        keys = {o.split("=", 1)[0] for o in ov}
        t = self.cfg.tracking
        if "tracking" in fields:  # every stage logs to the same store, as a child of the parent run
            ov += [f"tracking.dir={os.path.abspath(t.dir)}", f"tracking.experiment={t.experiment}",
                   f"tracking.parent_run_id={parent_run_id}", f"tracking.run_name={stage.name}"]
            if t.uri:
                ov.append(f"tracking.uri={t.uri}")
        if "output_dir" in fields and "output_dir" not in keys:
            ov.append(f"output_dir={self._stage_dir(stage.name)}")
        if "seed" in fields and "seed" not in keys:
            ov.append(f"seed={self.cfg.seed}")
        if self.cfg.overwrite and "overwrite" in fields and "overwrite" not in keys:
            ov.append("overwrite=true")
        if self.cfg.resume and "resume" in fields and self._has_checkpoint(stage.name):
            ov.append("resume=auto")
        return ov

    def _has_checkpoint(self, name: str) -> bool:
        return os.path.exists(os.path.join(self._stage_dir(name), "checkpoints", "latest"))

    def _outputs(self, stage) -> Dict[str, str]:
        ctx = {"output_dir": self.root, "stage_dir": self._stage_dir(stage.name), "seed": self.cfg.seed,
               "stages": {n: r["outputs"] for n, r in self.results.items()}}
        return {k: render(v, ctx) for k, v in stage.outputs.items()}

    def run(self) -> Dict[str, Any]:
        from edit_rlhf.tracking import Tracker

        cfg = self.cfg
        os.makedirs(self.root, exist_ok=True)
        state_p = os.path.join(self.root, "edit_r1.json")
        prev = json.load(open(state_p)) if (cfg.resume and os.path.exists(state_p)) else {}
        parent = Tracker.from_config(cfg.tracking, run_id=prev.get("mlflow_run_id"), tags={"pipeline": "edit-r1"},
                                     default_name="edit-r1")
        if not prev:
            parent.log_params(flatten(redacted_config(cfg)))
        with open(state_p, "w") as f:
            json.dump({"mlflow_run_id": parent.run_id, "started": time.time()}, f)
        status = "FAILED"
        t_all = time.time()
        try:
            for stage in cfg.stages:
                self._run_stage(stage, parent)
            status = "FINISHED"
        finally:
            summary = {"pipeline": "edit-r1", "run_id": parent.run_id, "output_dir": self.root,
                       "seconds": round(time.time() - t_all, 1),
                       "stages": {n: {k: r[k] for k in ("status", "seconds", "outputs") if k in r}
                                  for n, r in self.results.items()}}
            parent.finish(status)  # before the report, so that it shows the parent run's final status
            if status == "FINISHED" and cfg.report:
                summary["report"] = self._report(parent)
            parent.log_dict(summary, "edit_r1_summary.json")
            with open(os.path.join(self.root, "summary.json"), "w") as f:
                json.dump(scrub(summary), f, indent=2, default=str)
        return summary

    def _run_stage(self, stage, parent) -> None:
        schema, runner = pipeline(stage.command)
        name = stage.name
        if not stage.enabled or name in self.cfg.skip:
            outs = self._outputs(stage)
            missing = [f"{k}={v}" for k, v in outs.items() if not os.path.exists(v)]
            if missing:
                raise ConfigError(f"stage '{name}' is skipped but its outputs do not exist: {missing}")
            self.results[name] = {"status": "skipped", "outputs": outs, "seconds": 0.0}
            self._say(f"[edit-r1] {name}: skipped")
            return
        done = self._done(name) if self.cfg.resume else None
        if done is not None:
            self.results[name] = dict(done, status="done (earlier run)")
            self._say(f"[edit-r1] {name}: already done in an earlier run, reusing {done['outputs']}")
            return
        path = stage.config if not stage.config or os.path.isabs(stage.config) else \
            os.path.join(self.config_dir, stage.config)
        ov = self.stage_overrides(stage, schema, parent.run_id)
        try:
            scfg = load_config(schema, path, ov)
        except ConfigError as e:
            raise ConfigError(f"stage '{name}' ({stage.command}): {e}") from None
        self._say(f"[edit-r1] {name}: edit-rlhf {stage.command} --config {path} " + " ".join(ov))
        t = time.time()
        summary = runner(scfg, quiet=self.quiet) or {}
        secs = time.time() - t
        outs = self._outputs(stage)
        missing = [f"{k}={v}" for k, v in outs.items() if not os.path.exists(v)]
        if missing:
            raise RuntimeError(f"stage '{name}' finished but did not produce its declared outputs: {missing}")
        rec = {"status": "done", "command": stage.command, "config": path, "overrides": ov, "outputs": outs,
               "seconds": round(secs, 1), "summary": summary}
        os.makedirs(self._stage_dir(name), exist_ok=True)
        with open(os.path.join(self._stage_dir(name), STAGE_FILE), "w") as f:
            json.dump(scrub(rec), f, indent=2, default=str)
        self.results[name] = rec
        parent.log_metrics({f"time/{name}_s": secs, **_numeric(summary, name)}, step=len(self.results))

    def _report(self, parent) -> Optional[str]:
        try:
            from edit_rlhf.report import build_report

            info = build_report([parent.run_id], os.path.join(self.root, "report"),
                                tracking_uri=parent.uri, log_to_run=parent.run_id, title="Edit-R1")
            return info["path"]
        except Exception as e:  # a report problem must not fail a finished training run
            self._say(f"[edit-r1] report failed: {type(e).__name__}: {e}")
            return None

    def _say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)


def run_edit_r1(cfg, config_path: Optional[str] = None, quiet: bool = False) -> Dict[str, Any]:
    from edit_rlhf.runtime import setup_process

    setup_process(1)
    s = EditR1(cfg, os.path.dirname(os.path.abspath(config_path)) if config_path else ".", quiet).run()
    parts = [f"edit-r1: {len(s['stages'])} stages in {s['seconds']:.0f}s"]
    parts += [f"{n} {r['status']} ({r['seconds']:.0f}s)" for n, r in s["stages"].items()]
    parts += [f"mlflow run {s['run_id']}"] + ([f"report {s['report']}"] if s.get("report") else [])
    print(" | ".join(parts), flush=True)
    return s
