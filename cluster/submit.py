"""`edit-rlhf submit -- <command> ...`: run a pipeline as a Ray job (Ray's job SDK, as `ray job submit` does).

- working_dir is the repository, minus what must not travel (.git, the venv, MLflow stores, outputs, caches,
  checkpoints);
- the entrypoint is `python -m edit_rlhf <command> ...`;
- `tracking.dir` and `output_dir` default to absolute paths on the submitting machine (right for a local or
  shared-filesystem cluster; on a remote cluster point `tracking.uri` at an MLflow server and `output_dir` at
  shared storage);
- Ray's token auth (on for `ray start --head` in Ray 2.60 whenever a token exists): the client switches to `RAY_AUTH_MODE=token`
  when a token is available (~/.ray/auth_token or RAY_AUTH_TOKEN);
- a head node whose job agent is still starting ("No available agent") is retried for up to a minute.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import time
from typing import List, Optional
from urllib.parse import urlparse

EXCLUDES = [".git", ".venv", "venv", "mlruns", "outputs", "runs", ".cache", "checkpoints", "__pycache__", "*.pyc",
            ".pytest_cache", "scratch"]
TRACKED = ("grpo", "editor-sft", "rrm-sft", "rrm-gcpo", "edit-r1", "eval-editor", "eval-rrm", "principles")


def runtime_env(working_dir: str = ".", extra_env: Optional[dict] = None) -> dict:
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.update(extra_env or {})
    return {"working_dir": working_dir, "excludes": list(EXCLUDES), "env_vars": env}


def _is_local(address: str) -> bool:
    host = urlparse(address if "://" in address else f"http://{address}").hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")


def _has_key(args: List[str], key: str) -> bool:
    return any(a.startswith(key + "=") for a in args)


def job_args(args: List[str]) -> List[str]:
    """The pipeline arguments, with absolute tracking/output locations added when not given."""
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        raise SystemExit("edit-rlhf submit: give the command after '--', e.g. -- grpo --config configs/sandbox_tiny.yaml")
    args = list(args)
    if args[0] in TRACKED:
        if not _has_key(args, "tracking.dir") and not _has_key(args, "tracking.uri"):
            args.append(f"tracking.dir={os.path.abspath('mlruns')}")
        if not _has_key(args, "output_dir"):
            args.append(f"output_dir={os.path.abspath(os.path.join('outputs', args[0]))}")
    return args


def entrypoint(args: List[str], address: str, python: Optional[str] = None) -> str:
    py = python or (sys.executable if _is_local(address) else "python")
    return shlex.join([py, "-m", "edit_rlhf"] + job_args(args))


def cli_equivalent(args: List[str], address: str, wait: bool = True, python: Optional[str] = None) -> str:
    """The plain `ray job submit` line; prefixed with `RAY_AUTH_MODE=token` when the cluster uses token auth
    (the bare line fails there: the `ray` CLI does not switch to token mode by itself)."""
    cmd = ["ray", "job", "submit", "--address", address, "--runtime-env-json", json.dumps(runtime_env())]
    if not wait:
        cmd.append("--no-wait")
    prefix = "RAY_AUTH_MODE=token " if token_auth() else ""
    return prefix + " ".join(shlex.quote(c) for c in cmd) + " -- " + entrypoint(args, address, python)


def token_auth() -> bool:
    """Token auth in use: RAY_AUTH_MODE=token, or (unless RAY_AUTH_MODE says otherwise) a token in RAY_AUTH_TOKEN,
    the file RAY_AUTH_TOKEN_PATH names, or ~/.ray/auth_token (where Ray 2.60 keeps a generated one)."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode:
        return mode == "token"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or os.path.exists(path)


def _auth_env() -> None:
    if "RAY_AUTH_MODE" not in os.environ and token_auth():
        os.environ["RAY_AUTH_MODE"] = "token"


def submit(args: List[str], address: str, wait: bool = True, dry_run: bool = False,
           python: Optional[str] = None, agent_wait_s: float = 60.0) -> int:
    if dry_run:
        print(cli_equivalent(args, address, wait, python))
        return 0
    _auth_env()
    from ray.job_submission import JobStatus, JobSubmissionClient

    ep = entrypoint(args, address, python)
    client = JobSubmissionClient(address)
    deadline = time.time() + agent_wait_s
    while True:
        try:
            job_id = client.submit_job(entrypoint=ep, runtime_env=runtime_env())
            break
        except RuntimeError as e:
            if "No available agent" in str(e) and time.time() < deadline:
                time.sleep(2)  # the head's job agent registers a little after `ray start` returns
                continue
            raise
    print(f"submitted {job_id}: {ep}", flush=True)
    if not wait:
        return 0
    import asyncio

    async def follow():
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(follow())
    status = client.get_job_status(job_id)
    print(f"job {job_id}: {status}", flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1
