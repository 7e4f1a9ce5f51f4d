"""The cluster manifests, the production configs and the image agree: every GPU pool lands on a node type with
enough GPUs of the size the pool declares (and `edit-rlhf plan` checks it against); the Dockerfile installs
exactly the pinned GPU lock."""
import os
import re

import pytest
import yaml

from conftest import ROOT

INSTANCE_GPUS = {"p4de.24xlarge": (8, 80), "p5.48xlarge": (8, 80), "p4d.24xlarge": (8, 40)}  # AWS: GPUs, GiB each
GPU_PRODUCT_GB = {"NVIDIA-A100-SXM4-80GB": 80, "NVIDIA-H100-80GB-HBM3": 80, "NVIDIA-A100-SXM4-40GB": 40}
PRODUCTION = ["flux_kontext_dev.yaml", "flux_kontext_dev_rrm7b.yaml", "rrm_sft_qwen7b.yaml", "rrm_gcpo_qwen7b.yaml",
              "principles_vlm.yaml", "eval_editor_gedit.yaml"]


def _launcher_groups():
    with open(f"{ROOT}/cluster/manifests/ray-cluster.yaml") as f:
        m = yaml.safe_load(f)
    out = {}
    for name, t in m["available_node_types"].items():
        res = t.get("resources", {})
        if not res.get("GPU"):
            continue
        gpus, gb = INSTANCE_GPUS[t["node_config"]["InstanceType"]]
        assert res["GPU"] == gpus, name
        out[name] = {"resources": res, "gpus": gpus, "gb": gb, "max_nodes": t["max_workers"]}
    return out


def _kuberay_groups():
    with open(f"{ROOT}/cluster/manifests/kuberay-rayjob.yaml") as f:
        m = yaml.safe_load(f)
    out = {}
    for g in m["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        start = g["rayStartParams"]
        res = yaml.safe_load(yaml.safe_load(start["resources"])) if isinstance(start["resources"], str) else {}
        spec = g["template"]["spec"]
        gb = GPU_PRODUCT_GB[spec["nodeSelector"]["nvidia.com/gpu.product"]]
        gpus = int(start["num-gpus"])
        assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)
        out[g["groupName"]] = {"resources": {**res, "GPU": gpus}, "gpus": gpus, "gb": gb, "max_nodes": g["maxReplicas"]}
    return out


def _gpu_pools(pipeline, cfg):
    pools = {"grpo": lambda: [("rollout", cfg.rollout), ("reward", cfg.reward), ("learner", cfg.learner)]
             + ([("monitor", cfg.monitor.pool)] if cfg.monitor.judge == "pq" else []),
             "rrm-sft": lambda: [("learner", cfg.learner)],
             "rrm-gcpo": lambda: [("learner", cfg.learner), ("rollout", cfg.rollout)],
             "principles": lambda: [("workers", cfg.workers)],
             "eval-editor": lambda: [("rollout", cfg.pools.rollout), ("judge", cfg.pools.judge)]
             + ([("rrm", cfg.pools.rrm)] if cfg.rrm.path else [])}[pipeline]()
    return [(n, p) for n, p in pools if p.num_gpus]


@pytest.mark.parametrize("manifest", ["launcher", "kuberay"])
def test_every_gpu_pool_lands_on_a_node_type_of_its_gpu_size(manifest):
    from edit_rlhf.plan.run import load_for_plan

    groups = _launcher_groups() if manifest == "launcher" else _kuberay_groups()
    for name in PRODUCTION:
        pipeline, cfg = load_for_plan(f"{ROOT}/configs/{name}", [])
        need = {}
        for pool_name, pool in _gpu_pools(pipeline, cfg):
            assert pool.gpu_memory_gb, f"{name}: {pool_name} declares no gpu_memory_gb"
            custom = [k for k in pool.resources if k not in ("CPU", "GPU")]
            assert custom, f"{name}: GPU pool {pool_name} requests no node-group resource"
            hosts = [g for g, spec in groups.items() if all(k in spec["resources"] for k in custom)]
            assert len(hosts) == 1, f"{name}: {pool_name} {custom} matches node groups {hosts}"
            g = groups[hosts[0]]
            assert g["gb"] == pool.gpu_memory_gb, f"{name}: {pool_name} wants {pool.gpu_memory_gb} GB GPUs, {hosts[0]} has {g['gb']}"
            assert pool.num_gpus <= g["gpus"] and g["gpus"] % pool.num_gpus == 0, (name, pool_name)
            # one custom resource per GPU on the node: Ray places one actor per GPU-sized bundle
            assert g["resources"][custom[0]] == g["gpus"], (manifest, hosts[0])
            need[hosts[0]] = need.get(hosts[0], 0) + pool.size * pool.num_gpus
        for host, gpus in need.items():
            assert gpus <= groups[host]["gpus"] * groups[host]["max_nodes"], f"{name}: {host} needs {gpus} GPUs"


def test_dockerfile_installs_exactly_the_gpu_lock():
    """The image gets its dependencies from requirements/gpu-lock.txt only (hash-checked, no resolver), then the
    project without dependencies; the lock pins every package on the versions the GPU extra declares."""
    with open(f"{ROOT}/Dockerfile") as f:
        docker = f.read()
    text = re.sub(r"\\\n\s*", " ", docker)
    copies = re.findall(r"^COPY\s+(\S+)\s+(\S+)", text, re.M)
    lock_dest = [d for s, d in copies if s == "requirements/gpu-lock.txt"]
    assert len(lock_dest) == 1
    installs = re.findall(r"pip install ([^&\n]+)", text)
    assert installs, "no pip install in the Dockerfile"
    from_lock = [i for i in installs if f"-r {lock_dest[0]}" in i]
    assert len(from_lock) == 1 and "--no-deps" in from_lock[0] and "--require-hashes" in from_lock[0]
    for i in installs:  # every other install is the project itself, without dependencies
        if i not in from_lock:
            assert "--no-deps" in i and re.search(r"(^|\s)-e \.(\s|$)", i), i
    with open(f"{ROOT}/requirements/gpu-lock.txt") as f:
        lock = f.read()
    pins = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", lock, re.M))
    assert len(pins) > 100 and lock.count("--hash=sha256:") == len(pins)
    norm = {k.lower().replace("_", "-"): v for k, v in pins.items()}
    for req in ("torch==2.14.0", "vllm==0.33.0", "ray==2.60.0", "diffusers==0.42.1", "deepspeed==0.19.8",
                "mlflow==3.17.2", "peft==0.21.2"):
        name, ver = req.split("==")
        assert norm.get(name) == ver, (req, norm.get(name))
    assert "5.16.1" <= norm["transformers"] < "5.21"
