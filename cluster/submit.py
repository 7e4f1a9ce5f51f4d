"""`edit-rlhf submit -- <command> ...`: run a pipeline as a Ray job (a thin wrapper over `ray job submit`).

- working_dir is the repository, minus what must not travel (.git, the venv, MLflow stores, outputs, caches);
- the entrypoint is `python -m edit_rlhf <command> ...`;
- `tracking.dir` and `output_dir` default to absolute paths on the submitting machine (right for a local
  cluster; on a remote cluster point `tracking.uri` at an MLflow server and `output_dir` at shared storage);
- Ray's token auth: the client side is switched to `RAY_AUTH_MODE=token` when a token is available.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from typing import List, Optional
from urllib.parse import urlparse

EXCLUDES = [".git", ".venv", "venv", "mlruns", "outputs", "runs", ".cache", "checkpoints", "__pycache__", "*.pyc",
            ".pytest_cache", "scratch"]


def runtime_env(working_dir: str = ".", extra_env: Optional[dict] = None) -> dict:
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.update(extra_env or {})
    return {"working_dir": working_dir, "excludes": list(EXCLUDES), "env_vars": env}


def _is_local(address: str) -> bool:
    host = urlparse(address if "://" in address else f"http://{address}").hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")


def _has_key(args: List[str], key: str) -> bool:
    return any(a.startswith(key + "=") for a in args)


def build_command(args: List[str], address: str, wait: bool = True, python: Optional[str] = None) -> List[str]:
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        raise SystemExit("edit-rlhf submit: give the pipeline after '--', e.g. -- grpo --config configs/sandbox_tiny.yaml")
    args = list(args)
    if args[0] in ("grpo",):  # pipelines that track and write outputs
        if not _has_key(args, "tracking.dir") and not _has_key(args, "tracking.uri"):
            args.append(f"tracking.dir={os.path.abspath('mlruns')}")
        if not _has_key(args, "output_dir"):
            args.append(f"output_dir={os.path.abspath(os.path.join('outputs', args[0]))}")
    py = python or (sys.executable if _is_local(address) else "python")
    cmd = ["ray", "job", "submit", "--address", address, "--runtime-env-json", json.dumps(runtime_env())]
    if not wait:
        cmd.append("--no-wait")
    return cmd + ["--", py, "-m", "edit_rlhf"] + args


def submit(args: List[str], address: str, wait: bool = True, dry_run: bool = False,
           python: Optional[str] = None) -> int:
    cmd = build_command(args, address, wait, python)
    env = dict(os.environ)
    token_file = os.path.expanduser("~/.ray/auth_token")
    if "RAY_AUTH_MODE" not in env and (env.get("RAY_AUTH_TOKEN") or os.path.exists(token_file)):
        env["RAY_AUTH_MODE"] = "token"
    if dry_run:
        print(" ".join(shlex.quote(c) for c in cmd))
        return 0
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    if os.path.exists(ray_bin):
        cmd[0] = ray_bin
    return subprocess.call(cmd, env=env)
