"""The pipelines a config can run, by command name: (config schema, runner), both as import paths.

One table for the CLI's pipeline commands and for multi-stage pipelines (`edit-r1`), so a stage is exactly
what `edit-rlhf <command> --config FILE key=value ...` would run.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Tuple

PIPELINES: Dict[str, Tuple[str, str]] = {
    "sandbox-data": ("edit_rlhf.config.sandbox:SandboxDataConfig", "edit_rlhf.pipelines.sandbox_data:run_sandbox_data"),
    "principles": ("edit_rlhf.config.principles:PrinciplesConfig", "edit_rlhf.pipelines.principles:run_principles"),
    "rrm-traces": ("edit_rlhf.config.rrm_train:RRMTraceSelectConfig", "edit_rlhf.rrm_train.selection:run_selection"),
    "rrm-sft": ("edit_rlhf.config.rrm_train:RRMSFTConfig", "edit_rlhf.pipelines.rrm_sft:run_rrm_sft"),
    "rrm-gcpo": ("edit_rlhf.config.rrm_train:RRMGCPOConfig", "edit_rlhf.pipelines.rrm_gcpo:run_rrm_gcpo"),
    "eval-rrm": ("edit_rlhf.config.rrm_train:RRMEvalConfig", "edit_rlhf.pipelines.eval_rrm:run_eval_rrm"),
    "editor-sft": ("edit_rlhf.config.sft:EditorSFTConfig", "edit_rlhf.pipelines.editor_sft:run_editor_sft"),
    "grpo": ("edit_rlhf.config.schema:GRPOConfig", "edit_rlhf.pipelines.grpo:run_grpo"),
    "eval-editor": ("edit_rlhf.config.evaluation:EvalEditorConfig", "edit_rlhf.pipelines.eval_editor:run_eval_editor"),
}


def _load(path: str) -> Any:
    mod, _, name = path.partition(":")
    return getattr(importlib.import_module(mod), name)


def pipeline(command: str) -> Tuple[type, Callable[..., Dict[str, Any]]]:
    """(config dataclass, runner(cfg, quiet=...) -> summary dict) of a pipeline command."""
    if command not in PIPELINES:
        raise KeyError(f"unknown pipeline command {command!r}; known: {sorted(PIPELINES)}")
    schema, runner = PIPELINES[command]
    return _load(schema), _load(runner)
