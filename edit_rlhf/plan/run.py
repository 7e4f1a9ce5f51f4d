"""`run_plan`: the plan of a pipeline config (the pipeline read from the file or named), built by `planner`."""
from __future__ import annotations

from typing import Dict, List, Optional

from edit_rlhf.plan.planner import Plan

PIPELINES = ("grpo", "rrm-gcpo", "rrm-sft", "principles", "eval-editor")


def load_for_plan(config: str, overrides: List[str], pipeline: Optional[str] = None):
    """(pipeline, cfg): the named pipeline's schema, or the first of PIPELINES whose schema reads the file."""
    from edit_rlhf.commands import pipeline as schema_of
    from edit_rlhf.config import ConfigError, load_config

    if pipeline:
        if pipeline not in PIPELINES:
            raise ConfigError(f"--pipeline: {pipeline!r} is not one of {', '.join(PIPELINES)}")
        return pipeline, load_config(schema_of(pipeline)[0], config, list(overrides))
    errors = {}
    for name in PIPELINES:
        try:
            return name, load_config(schema_of(name)[0], config, list(overrides))
        except ConfigError as e:
            errors[name] = str(e)
    raise ConfigError(f"{config}: not a config of {', '.join(PIPELINES)} (as grpo: {errors['grpo']}); "
                      "name it with --pipeline")


def run_plan(config: str, overrides: List[str] = (), pipeline: Optional[str] = None,
             archs: Optional[Dict[str, str]] = None, image_px: int = 512) -> Plan:
    import warnings

    from edit_rlhf.plan import planner

    name, cfg = load_for_plan(config, list(overrides), pipeline)
    archs = dict(archs or {})
    warnings.filterwarnings("ignore", message=".*should be kept in float32.*")
    fn = {"grpo": lambda: planner.plan_grpo(cfg, archs), "rrm-sft": lambda: planner.plan_rrm_sft(cfg, archs, image_px),
          "rrm-gcpo": lambda: planner.plan_rrm_gcpo(cfg, archs, image_px),
          "principles": lambda: planner.plan_principles(cfg, archs),
          "eval-editor": lambda: planner.plan_eval_editor(cfg, archs)}[name]
    plan = fn()
    plan.config, plan.pipeline, plan.archs = config, name, archs
    return plan
