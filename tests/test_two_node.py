"""A local two-node Ray cluster (head + worker on loopback, started with `ray start`), the main job submitted
through `edit-rlhf submit` with Ray's token auth on, and each pool placed on its node by custom resources."""
import json
import os
import subprocess
import sys
import uuid

import pytest

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def _kill_cluster(temp_dir: str) -> None:
    """Stop only this test's Ray processes (`ray stop` would stop every Ray cluster on the machine).
    The two nodes also get separate temp dirs: on one host they would otherwise unpack the job's working_dir
    into the same path, replacing the driver's working directory under it."""
    import psutil

    me = os.getpid()
    for p in psutil.process_iter(["cmdline"]):
        if p.pid == me:
            continue
        try:
            if any(temp_dir in a for a in (p.info["cmdline"] or [])):
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def _ray_start(args, ports, env, tries: int = 2) -> None:
    """`ray start` with fresh agent ports on a second try (a port picked free can be taken by another process
    before the node binds it: the machine's race, not the feature under test); a failure shows Ray's output."""
    for attempt in range(tries):
        r = subprocess.run(args + ports(), env=env, capture_output=True, text=True, timeout=180)
        if r.returncode == 0:
            return
        _kill_cluster(next(a.split("=", 1)[1] for a in args if a.startswith("--temp-dir=")))  # a half-started node
    raise AssertionError(f"`{' '.join(args[:3])}` failed {tries} times; last output:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")


def test_two_node_job_pools_on_their_nodes(tiny_models, sandbox_dir, tmp_path):
    import ray

    from edit_rlhf.ports import free_port

    if ray.is_initialized():  # this test drives its own cluster
        ray.shutdown()
    temp_dir = f"/tmp/ray_2node_{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    # the cluster's token, as an operator would distribute it: the head turns token auth on when it finds one
    # (on a fresh machine there is no ~/.ray/auth_token, and the head would start with auth off); the joining
    # node and `edit-rlhf submit` read it from the environment too
    env["RAY_AUTH_TOKEN"] = uuid.uuid4().hex + uuid.uuid4().hex
    port, dash = free_port(), free_port()
    # several Ray nodes share this machine: give each node's agents their own ports (52365 etc. by default)
    def ports():
        return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]

    ray_bin = os.path.join(BIN, "ray")
    try:
        _ray_start([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=3", "--node-ip-address=127.0.0.1",
                    "--resources", json.dumps({"learner_node": 2}), "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dash}", f"--temp-dir={temp_dir}", "--disable-usage-stats"], ports, env)
        # a joining node is a client of the head's GCS: with token auth on it must say so
        _ray_start([ray_bin, "start", f"--address=127.0.0.1:{port}", "--num-cpus=6", "--node-ip-address=127.0.0.1",
                    "--resources", json.dumps({"rollout_node": 2, "reward_node": 2}), "--disable-usage-stats",
                    f"--temp-dir={temp_dir}-w"], ports, dict(env, RAY_AUTH_MODE="token"))
        out = tmp_path / "out"
        job = subprocess.run(
            [os.path.join(BIN, "edit-rlhf"), "submit", "--address", f"http://127.0.0.1:{dash}", "--",
             "grpo", "--config", "configs/sandbox_tiny.yaml", "--quiet", f"editor.path={tiny_models['editor']}",
             f"data.train={sandbox_dir}/prompts_train", f"data.eval={sandbox_dir}/prompts_eval", "data.eval_size=2",
             "steps=2", "eval_every=0", "prepare.build_missing=false", "algo.prompts_per_step=2",
             "sampling.num_steps=4", "sampling.train_timesteps=3", "sampling.sde_steps=0",
             "algo.group_size=4", f"output_dir={out}", f"tracking.dir={tmp_path}/mlruns",
             "rollout.size=2", "rollout.num_cpus=1", "rollout.resources.rollout_node=1",
             "reward.size=1", "reward.num_cpus=1", "reward.resources.reward_node=1",
             "learner.size=1", "learner.num_cpus=1", "learner.resources.learner_node=1"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-2000:]
        with open(out / "summary.json") as f:
            s = json.load(f)
    finally:
        _kill_cluster(temp_dir)  # also matches the worker's f"{temp_dir}-w"
    place = s["placement"]
    assert all("rollout_node" in a["custom"] for a in place["rollout"]) and len(place["rollout"]) == 2
    assert all("reward_node" in a["custom"] for a in place["reward"])
    assert all("learner_node" in a["custom"] for a in place["learner"])
    assert {a["node"] for a in place["rollout"]}.isdisjoint({a["node"] for a in place["learner"]})
    assert s["steps"] == 2 and s["policy_version"] == 2
