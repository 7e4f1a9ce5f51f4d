"""The one CLI: `edit-rlhf <command> ...`, also `python -m edit_rlhf <command> ...` (what `ray job submit` runs).

Pipelines take `--config FILE` and dotted overrides `key.sub=value`. Errors in configs, data or input paths
print one clear line (naming the key, file or row) and exit with status 2; checkpoint, authentication, pool and
run-store errors one line and status 1; SIGINT / SIGTERM stop a run cleanly with 130 / 143 (edit_rlhf.stops).
`--debug` or EDIT_RLHF_DEBUG=1 shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional


def _pipeline_parser(sub, name: str, help_: str):
    p = sub.add_parser(name, help=help_, description=help_)
    p.add_argument("--config", "-c", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. algo.group_size=8 optim.lr=1e-3")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue from the latest checkpoint in output_dir (or the given step directory)")
    p.add_argument("--overwrite", action="store_true",
                   help="start a fresh run even though output_dir holds another run's checkpoints (deletes them)")
    return p


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edit-rlhf", description=__doc__.split("\n")[0],
                                 epilog="--debug (anywhere before '--') or EDIT_RLHF_DEBUG=1: show the traceback of "
                                        "errors that are otherwise one line")
    sub = ap.add_subparsers(dest="command", required=True)
    _pipeline_parser(sub, "grpo", "Flow-GRPO training of a FLUX.1-Kontext editor (LoRA) on Ray")
    _pipeline_parser(sub, "edit-r1", "the whole Edit-R1 recipe as stages (principles, RRM SFT, RRM GCPO, editor GRPO, "
                     "evaluation) with one MLflow parent run")
    _pipeline_parser(sub, "sandbox-data", "build (or reuse) the sandbox datasets as a pipeline stage (edit-r1's "
                     "first stage; the same data as `sandbox build`)")
    _pipeline_parser(sub, "principles", "add evaluation principles to an edit-prompt dataset (sandbox oracle "
                     "or a VLM on vLLM workers)")
    _pipeline_parser(sub, "editor-sft", "supervised flow-matching fine-tuning of a FLUX.1-Kontext editor on "
                     "(source, instruction, target) triples (full or LoRA, DeepSpeed ranks on Ray)")
    _pipeline_parser(sub, "rrm-traces", "T+V trace selection: candidate RRM traces per edit -> the SFT dataset")
    _pipeline_parser(sub, "rrm-sft", "cold-start SFT of the Edit-RRM (Qwen2.5-VL) on selected traces (DeepSpeed "
                     "ranks on Ray)")
    _pipeline_parser(sub, "rrm-gcpo", "GCPO of the Edit-RRM on preference pairs (vLLM rollouts, DeepSpeed learner)")
    _pipeline_parser(sub, "eval-rrm", "pairwise accuracy of an RRM on preference pairs or EditReward-Bench")
    _pipeline_parser(sub, "eval-editor", "evaluate editors (base and trained LoRAs, same seeds and judge): GEdit-Bench "
                     "protocol SC/PQ/O with a VLM judge, the RRM score and, on the sandbox, the oracle score")
    p = sub.add_parser("plan", help="GPU memory per pool and per GPU of a pipeline config, before renting GPUs "
                       "(models built at real size on the meta device); exits 1 naming a pool that does not fit")
    p.add_argument("--config", "-c", required=True, help="YAML config of grpo, rrm-sft, rrm-gcpo, principles or eval-editor")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. learner.gradient_checkpointing=false")
    p.add_argument("--pipeline", default=None, help="the config's pipeline (default: the first schema that reads it)")
    p.add_argument("--arch", action="append", default=[], metavar="KEY=FOLDER",
                   help="architecture folder (config.json files) for a model key, e.g. editor.path=/models/kontext")
    p.add_argument("--image-size", type=int, default=512, help="RRM images in pixels (sequence length of RRM plans)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the plan as JSON")
    p = sub.add_parser("report", help="HTML report (learning curves, image grids, result tables) of MLflow runs")
    p.add_argument("--run-id", action="append", required=True, help="MLflow run id (repeatable; child runs included)")
    p.add_argument("--tracking-dir", default="mlruns", help="embedded sqlite store folder (default mlruns)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (overrides --tracking-dir)")
    p.add_argument("--out", default=None, help="output folder (default outputs/reports/<first run id>)")
    p.add_argument("--title", default=None)
    p.add_argument("--link-images", action="store_true", help="PNG files beside the HTML instead of embedded base64")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the (first) run's MLflow artifacts")
    p = sub.add_parser("repair-store", help="repair a half-migrated sqlite MLflow store (backs up mlflow.db first)")
    p.add_argument("dir", help="the store folder (tracking.dir, holding mlflow.db)")
    p = sub.add_parser("make-tiny-models", help="build tiny random Kontext editor + Qwen2.5-VL RRM (offline)")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("sandbox", help="the sandbox world")
    ss = p.add_subparsers(dest="sandbox_command", required=True)
    b = ss.add_parser("build", help="generate sandbox datasets (prompts, candidates, pairs, traces)")
    b.add_argument("out")
    b.add_argument("overrides", nargs="*", help="SandboxConfig overrides, e.g. n_train=256 label_noise=0.2")
    ep = ss.add_parser("editor-pairs", help="preference pairs of the editor's own SDE edits, labelled by the oracle "
                                            "(GCPO data on the distribution the RRM rewards)")
    ep.add_argument("out", help="output folder (a pairs dataset for rrm-gcpo data.train)")
    ep.add_argument("overrides", nargs="*", help="EditorPairsConfig overrides, e.g. n_prompts=256 lora=DIR")
    ep.add_argument("--quiet", action="store_true", help="no progress lines")
    p = sub.add_parser("scale", help="resize a running run's rollout/reward pools at its next step")
    p.add_argument("output_dir", help="the run's output_dir")
    p.add_argument("sizes", nargs="+", help="pool=size, e.g. rollout=4 reward=2")
    pt = ss.add_parser("pretrain", help="train the sandbox base models (tiny VAE + Kontext editor, tiny Qwen2.5-VL)")
    pt.add_argument("out", nargs="?", default="models/sandbox", help="output folder (default models/sandbox)")
    pt.add_argument("--config", "-c", default=None, help="YAML config (default configs/sandbox_pretrain.yaml)")
    pt.add_argument("overrides", nargs="*", help="dotted overrides, e.g. editor.steps=500 parts=[vlm]")
    pt.add_argument("--quiet", action="store_true", help="no progress bars")
    pc = ss.add_parser("perception", help="perception first: teach a sandbox VLM to describe graded candidate edits "
                                         "(the RRM traces' observation text) before rrm-sft")
    pc.add_argument("out", help="output folder (a Qwen2.5-VL folder for rrm-sft model.path)")
    pc.add_argument("--config", "-c", default=None, help="YAML config (e.g. configs/sandbox_perception.yaml)")
    pc.add_argument("overrides", nargs="*", help="dotted overrides, e.g. steps=500 image_min_pixels=256")
    pc.add_argument("--quiet", action="store_true", help="no progress lines")
    pv = ss.add_parser("vision", help="vision warm-up: train a sandbox VLM's vision tower to see shapes and defects "
                                      "(a throwaway attribute head) before rrm-sft")
    pv.add_argument("out", help="output folder (the init model with its new vision tower, for rrm-sft model.path)")
    pv.add_argument("--config", "-c", default=None, help="YAML config (e.g. configs/sandbox_vision.yaml)")
    pv.add_argument("overrides", nargs="*", help="dotted overrides, e.g. steps=2000 init=models/sandbox/vlm")
    pv.add_argument("--quiet", action="store_true", help="no progress lines")
    p = sub.add_parser("submit", help="submit a pipeline to a Ray cluster as a job (wraps `ray job submit`)")
    p.add_argument("--address", default=os.environ.get("RAY_DASHBOARD_ADDRESS", "http://127.0.0.1:8265"))
    p.add_argument("--no-wait", action="store_true", help="return after submission instead of following logs")
    p.add_argument("--dry-run", action="store_true", help="print the ray job submit command and exit")
    p.add_argument("args", nargs=argparse.REMAINDER, help="-- <command> --config ... overrides")
    return ap


def _load(schema, args):
    from edit_rlhf.config import load_config

    from edit_rlhf.config import ConfigError

    extra = []
    if getattr(args, "resume", None):
        if "resume" not in getattr(schema, "__dataclass_fields__", {}):
            raise ConfigError(f"--resume: '{args.command}' has no checkpoints to resume from")
        extra = [f"resume={args.resume}"]
    if getattr(args, "overwrite", False):
        if "overwrite" not in getattr(schema, "__dataclass_fields__", {}):
            raise ConfigError(f"--overwrite: '{args.command}' keeps no checkpoints to overwrite")
        extra.append("overwrite=true")
    return load_config(schema, args.config, list(args.overrides) + extra)


def _classify(e: BaseException) -> int:
    """Exit status of an expected error (a user's problem: one line, no traceback): 2 for config / data / path
    errors, 1 for checkpoint, authentication, pool, learner, rollout, sync and run-store errors; 0 for anything
    else (a bug: its traceback is shown). Imports only what is already loaded, so the CLI starts fast."""
    from edit_rlhf.checkpoint import CheckpointError
    from edit_rlhf.config import ConfigError
    from edit_rlhf.data.prompts import DatasetError
    from edit_rlhf.paths import PathError

    if isinstance(e, (ConfigError, DatasetError, PathError)):
        return 2
    if isinstance(e, CheckpointError):
        return 1
    for mod, name in (("ray.exceptions", "AuthenticationError"), ("edit_rlhf.cluster.pools", "PoolError"),
                      ("edit_rlhf.pipelines.grpo", "LearnerFailed"), ("edit_rlhf.pipelines.streaming", "RolloutFailed"),
                      ("edit_rlhf.cluster.sync", "SyncError"), ("edit_rlhf.store", "StoreError")):
        cls = getattr(sys.modules.get(mod), name, None)
        if cls is not None and isinstance(e, cls):
            return 1
    return 0


def parse_command_line(argv: List[str]) -> argparse.Namespace:
    """argparse, plus `key=value` overrides after the options of a command with a positional before them
    (`sandbox vision OUT --config X steps=10`): argparse alone has already closed the overrides list at OUT."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        stray = [a for a in extra if a.startswith("-") or "=" not in a]
        if stray or not isinstance(getattr(args, "overrides", None), list):
            parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
        args.overrides = list(args.overrides) + extra
    return args


def main(argv: Optional[List[str]] = None) -> int:
    from edit_rlhf import stops

    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    debug = stops.debug_requested(argv[:cut])
    argv = [a for a in argv[:cut] if a != "--debug"] + argv[cut:]
    args = parse_command_line(argv)
    previous = stops.install()
    try:
        return _dispatch(args)
    except KeyboardInterrupt as e:  # SIGINT / SIGTERM (stops.Stopped) or a plain Ctrl-C before install
        signum = getattr(e, "signum", None) or stops.stopped_by() or 2
        if debug:
            raise
        what = "stopped" if args.command not in PIPELINE_WITH_RESUME else \
            f"stopped; nothing half-written is kept. Resume with: {stops.resume_command(argv)}"
        stops.say(args.command, f"{__import__('signal').Signals(signum).name}: {what}")
        return stops.exit_code(signum)
    except Exception as e:
        code = _classify(e)
        if debug or not code:
            raise
        stops.say(args.command, f"error: {stops.one_line(e)}" if code == 2 else
                  f"error: {type(e).__name__}: {stops.one_line(e)}")
        return code
    finally:
        stops.uninstall(previous)


# commands whose config has `resume` (their stop message names the resume command)
PIPELINE_WITH_RESUME = {"grpo", "edit-r1", "rrm-sft", "rrm-gcpo", "editor-sft"}


def _run_pipeline(args) -> int:
    """A registered pipeline command (edit_rlhf.commands.PIPELINES): load and validate its config, run it."""
    from edit_rlhf.commands import pipeline
    from edit_rlhf.config import to_yaml
    from edit_rlhf.redaction import redacted_config

    schema, runner = pipeline(args.command)
    cfg = _load(schema, args)
    if args.print_config:
        print(to_yaml(redacted_config(cfg)))
        return 0
    from edit_rlhf.runtime import setup_process

    setup_process(getattr(getattr(cfg, "cluster", None), "torch_threads", 1))
    runner(cfg, quiet=args.quiet)
    return 0


def _plan(args) -> int:
    from edit_rlhf.config import ConfigError
    from edit_rlhf.runtime import setup_process

    setup_process(1)
    from edit_rlhf.plan.run import run_plan
    from edit_rlhf.plan.models import ArchError
    from edit_rlhf.plan.report import table

    archs = {}
    for kv in args.arch:
        k, sep, v = kv.partition("=")
        if not sep:
            raise ConfigError(f"--arch: {kv!r} is not KEY=FOLDER")
        archs[k] = v
    try:
        plan = run_plan(args.config, args.overrides, args.pipeline, archs, args.image_size)
    except ArchError as e:
        raise ConfigError(str(e)) from None
    print(table(plan))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(plan.to_dict(), f, indent=2, default=str)
    if not plan.ok:
        for why in plan.failures():
            print(f"edit-rlhf plan: {why}", file=sys.stderr)
        return 1
    return 0


def _dispatch(args) -> int:
    from edit_rlhf.commands import PIPELINES

    if args.command == "edit-r1":
        from edit_rlhf.config import to_yaml
        from edit_rlhf.config.edit_r1 import EditR1Config
        from edit_rlhf.redaction import redacted_config

        cfg = _load(EditR1Config, args)
        if args.print_config:
            print(to_yaml(redacted_config(cfg)))
            return 0
        from edit_rlhf.pipelines.edit_r1 import run_edit_r1

        run_edit_r1(cfg, args.config, quiet=args.quiet)
        return 0
    if args.command in PIPELINES:
        return _run_pipeline(args)
    if args.command == "plan":
        return _plan(args)
    if args.command == "report":
        from edit_rlhf.report import build_report
        from edit_rlhf.report.mlflow_source import RunNotFound

        try:
            out = args.out or os.path.join("outputs", "reports", args.run_id[0])
            info = build_report(args.run_id, out, title=args.title,
                                tracking_uri=args.tracking_uri, tracking_dir=args.tracking_dir,
                                embed=not args.link_images, log_to_run=None if args.no_log else args.run_id[0])
        except RunNotFound as e:
            print(f"edit-rlhf report: error: {e}", file=sys.stderr)
            return 2
        print(f"report: {info['path']} ({info['bytes'] / 1024:.0f} KiB, {info['images']} images"
              + (f"; logged to MLflow run {info['logged_to']}" if info["logged_to"] else "") + ")")
        return 0
    if args.command == "repair-store":
        from edit_rlhf.store import repair

        print(json.dumps(repair(args.dir)))
        return 0
    if args.command == "make-tiny-models":
        from edit_rlhf.runtime import setup_process

        setup_process(None)
        from edit_rlhf.models.tiny import make_tiny_models

        print(json.dumps(make_tiny_models(args.out, args.seed)))
        return 0
    if args.command == "sandbox" and args.sandbox_command == "build":
        from edit_rlhf.config import load_config
        from edit_rlhf.sandbox.build import build_sandbox
        from edit_rlhf.sandbox.config import SandboxConfig

        cfg = load_config(SandboxConfig, None, args.overrides)
        print(json.dumps(build_sandbox(args.out, cfg), default=str))
        return 0
    if args.command == "sandbox" and args.sandbox_command == "editor-pairs":
        from edit_rlhf.config import load_config
        from edit_rlhf.runtime import setup_process
        from edit_rlhf.pipelines.sandbox_base.editor_pairs import EditorPairsConfig, build_editor_pairs

        setup_process(1)
        rec = build_editor_pairs(args.out, load_config(EditorPairsConfig, None, args.overrides), quiet=args.quiet)
        print(json.dumps(rec, default=str))
        return 0
    if args.command == "scale":
        from edit_rlhf.cluster.control import request_scale

        sizes = {}
        for kv in args.sizes:
            k, sep, v = kv.partition("=")
            if not sep or not v.isdigit():
                print(f"edit-rlhf scale: error: {kv!r} is not pool=size", file=sys.stderr)
                return 2
            sizes[k] = int(v)
        try:
            print(f"scale request written: {request_scale(args.output_dir, sizes)}")
        except ValueError as e:
            print(f"edit-rlhf scale: error: {e}", file=sys.stderr)
            return 2
        return 0
    if args.command == "sandbox" and args.sandbox_command == "pretrain":
        from edit_rlhf.pipelines.sandbox_pretrain import default_config_path, run_pretrain

        run_pretrain(args.out, args.config or default_config_path(), args.overrides, quiet=args.quiet,
                     argv=["edit-rlhf", *sys.argv[1:]])
        return 0
    if args.command == "sandbox" and args.sandbox_command == "perception":
        from edit_rlhf.pipelines.sandbox_base.perception import run_perception

        rec = run_perception(args.out, args.config, args.overrides, quiet=args.quiet, argv=["edit-rlhf", *sys.argv[1:]])
        last = rec["curve"][-1]
        print(f"sandbox perception: {rec['steps']} steps in {rec['seconds']:.0f}s -> {args.out} | held-out edited "
              f"description exact {rec['curve'][0]['edited_exact']:.3f} -> {last['edited_exact']:.3f}, source "
              f"{rec['curve'][0]['source_exact']:.3f} -> {last['source_exact']:.3f}")
        return 0
    if args.command == "sandbox" and args.sandbox_command == "vision":
        from edit_rlhf.pipelines.sandbox_base.vision import run_vision_warmup

        rec = run_vision_warmup(args.out, args.config, args.overrides, quiet=args.quiet,
                                argv=["edit-rlhf", *sys.argv[1:]])
        a, b = rec["curve"][0], rec["curve"][-1]
        print(f"sandbox vision: {rec['steps']} steps in {rec['seconds']:.0f}s -> {args.out} | held-out shapes exact "
              f"{a['shapes_exact']:.3f} -> {b['shapes_exact']:.3f}, defect {a['defect/accuracy']:.3f} -> "
              f"{b['defect/accuracy']:.3f} (majority {b['defect/majority']:.3f})")
        return 0
    if args.command == "submit":
        from edit_rlhf.cluster.submit import submit

        return submit(args.args, address=args.address, wait=not args.no_wait, dry_run=args.dry_run)
    raise SystemExit(f"unknown command {args.command}")
