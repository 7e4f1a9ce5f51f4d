"""scripts/gpu_smoke.sh, run here as its --cpu-dry-run (tiny models of the same architectures, vLLM CPU, gloo):
the script the GPU machine runs works end to end, and its plan prediction resolves (no GPU in CI)."""
import json
import os
import subprocess
import sys
import types

from conftest import ROOT


def test_gpu_smoke_cpu_dry_run_produces_its_json_line():
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled", PYTHON=sys.executable)
    r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_smoke.sh"), "--cpu-dry-run"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    line = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])
    g = line["grpo"]
    assert line["smoke"] == "cpu-dry-run" and g["checkpointing"] and g["ratio_first_max_dev"] < 1e-5
    assert line["rrm"]["scored"] == 8 and line["sync"] == {**line["sync"], "transport": "object_store",
                                                            "engine_version": 1}


def test_gpu_smoke_prediction_comes_from_the_plan():
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import gpu_smoke

    p = gpu_smoke.predicted(types.SimpleNamespace(cpu_dry_run=False))
    # 2 copies of the 12B transformer in bf16 on the GPU; a group of 4 and one micro-batch of 8 rows above that
    assert 44 < p["weights_resident_gb"] < 48 and 0 < p["rollout_peak_above_weights_gb"] < 5
    assert 5 < p["learner_peak_above_weights_gb"] < 20 and 15 < p["rrm_weights_gb"] < 16
