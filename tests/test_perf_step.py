"""benchmarks/perf_step.py: its pure helpers on numbers with a known answer, and a `--quick` smoke run whose
JSON line must carry every key, finite and positive (no timing thresholds: a benchmark measures, a test checks)."""
import json
import math
import os
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import perf_step  # noqa: E402


def _m(step, gen, tail, learner, sync=0.1, stage=None):
    m = {"time/step_s": step, "time/generate_s": gen, "time/score_tail_s": tail, "time/learner_s": learner,
         "time/sync_s": sync}
    if stage is not None:
        m["time/rollout_stage_s"] = stage
    return m


def test_step_over_slowest_is_median_step_over_median_slowest_stage():
    # slowest stage per step: max(3+1, 2)=4, max(2+1, 5)=5, max(5+1, 1)=6 -> median 5; median step 8 -> 1.6
    h = [_m(7.0, 3.0, 1.0, 2.0), _m(8.0, 2.0, 1.0, 5.0), _m(12.0, 5.0, 1.0, 1.0)]
    r = perf_step.step_over_slowest(h)
    assert r["ratio"] == pytest.approx(8.0 / 5.0)
    assert r["slowest_stage_s"] == pytest.approx(5.0)
    assert r["rollout_stage_s"] == pytest.approx(4.0) and r["learner_s"] == pytest.approx(2.0)


def test_rollout_stage_prefers_the_drivers_own_figure():
    assert perf_step.rollout_stage_s(_m(5.0, 3.0, 1.0, 2.0)) == pytest.approx(4.0)
    assert perf_step.rollout_stage_s(_m(5.0, 3.0, 1.0, 2.0, stage=3.5)) == pytest.approx(3.5)
    # perfect pipelining: the step is its slowest stage
    assert perf_step.step_over_slowest([_m(4.0, 1.0, 0.0, 4.0, stage=3.0)])["ratio"] == pytest.approx(1.0)


def test_step_over_slowest_needs_steps():
    with pytest.raises(ValueError, match="no steps"):
        perf_step.step_over_slowest([])


def test_sync_bound_is_bytes_over_bandwidth():
    assert perf_step.sync_bound_s(2_000_000, 4e9) == pytest.approx(5e-4)
    assert perf_step.sync_bound_s(0, 1.0) == 0.0
    with pytest.raises(ValueError):
        perf_step.sync_bound_s(10, 0.0)


def test_tensor_bytes_and_bandwidth():
    import torch

    assert perf_step.tensor_bytes({"a": torch.zeros(10), "b": torch.zeros(3, dtype=torch.float16)}) == 46
    bw = perf_step.memcpy_bandwidth(nbytes=1 << 20, repeats=2)
    assert math.isfinite(bw) and bw > 0


@pytest.mark.integration
def test_quick_run_prints_every_key(tmp_path):
    out = tmp_path / "perf.jsonl"
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "perf_step.py"), "--quick", "--out", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    line = json.loads(p.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text().splitlines()[-1]) == line
    ratios = ["step_over_slowest_onpolicy", "overhead", "sde_over_pipeline", "lora_sync_s", "lora_sync_bound_s",
              "vllm_over_hf_16", "vllm_over_hf_32"]
    if perf_step.has_off_policy():
        ratios.append("step_over_slowest")
    else:  # the pipelined driver is not in this branch: the line says so instead of a number
        assert line["step_over_slowest"] is None and "off_policy_steps" in line["raw"]["offpolicy"]
    for k in ratios:
        v = line[k]
        # overhead is a fraction that may be negative (Ray overlaps generation and scoring); the rest are > 0
        assert isinstance(v, float) and math.isfinite(v) and (k == "overhead" or v > 0), (k, v)
    assert set(line["step_s_by_prompts"]) == {"2", "4", "8"}
    assert all(math.isfinite(v) and v > 0 for v in line["step_s_by_prompts"].values())
    for k in ("config", "steps_per_measurement", "cpus", "commit", "timestamp", "raw"):
        assert line[k] is not None, k
    assert line["raw"]["local_step_s"] > 0 and line["raw"]["sde"]["pipeline_s"] > 0
