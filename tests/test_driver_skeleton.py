"""The driver skeleton (pipelines/driver.py) with a pipeline that supplies only its phases: the cadence of
evaluations and checkpoints, resume with state and counters, the refused re-run, the published artifact and the
summary, all owned by the skeleton. No pools: the phases are plain Python (Ray is started by the skeleton)."""
import json
import os

import pytest

pytestmark = pytest.mark.integration


def _counting_driver():
    from edit_rlhf.pipelines.driver import Driver

    class Counting(Driver):
        """One step adds its number to `total`; an evaluation reports it; the artifact is a file holding it."""

        name = "counting"
        final = ("artifact", "final_artifact")

        def __init__(self, cfg, fail_at=None):
            super().__init__(cfg, quiet=True)
            self.total = 0
            self.calls = []
            self.fail_at = fail_at
            self.counters = {"steps_run": 0}

        def start_pools(self):
            self.calls.append("start_pools")

        def restore(self, step_dir, state):
            self.total = state["total"]
            self.calls.append(f"restore:{state['step']}")

        def advance(self):
            step = self.step + 1
            if step == self.fail_at:
                raise RuntimeError(f"fault in step {step}")
            self.total += step
            self.counters["steps_run"] += 1
            self.step = step
            return {"total": self.total}

        def has_eval(self):
            return True

        def evaluate(self, step, final=False):
            self.calls.append(f"eval:{step}{':final' if final else ''}")
            return self.log_eval(step, {"eval/total": self.total})

        def save_artifacts(self, tmp):
            self.calls.append(f"save:{self.step}")
            os.makedirs(os.path.join(tmp, "artifact"))
            with open(os.path.join(tmp, "artifact", "total.txt"), "w") as f:
                f.write(str(self.total))

        def state(self):
            return {"total": self.total}

        def summary(self):
            return {"total": self.total}

    return Counting


def test_cadence_resume_refusal_and_summary_are_the_skeletons(ray_cluster, grpo_cfg, tmp_path):
    from edit_rlhf.checkpoint import CheckpointError

    Counting = _counting_driver()
    cfg = lambda *o: grpo_cfg("steps=5", "eval_every=2", "save_every=2", f"output_dir={tmp_path}/out", *o)  # noqa
    d = Counting(cfg())
    s = d.run()
    # evaluation at 0 and every 2 steps except the last, which gets the final one before the last checkpoint
    assert d.calls == ["start_pools", "eval:0", "eval:2", "save:2", "eval:4", "save:4", "eval:5:final", "save:5"]
    assert s["steps"] == 5 and s["total"] == 15 and s["counters"] == {"steps_run": 5}
    assert s["eval_first"]["eval/total"] == 0 and s["eval_last"]["eval/total"] == 15
    with open(os.path.join(s["published"], "total.txt")) as f:
        assert f.read() == "15"  # the last checkpoint's artifact, published under output_dir
    assert s["published"] == os.path.join(cfg().output_dir, "final_artifact")
    with open(os.path.join(cfg().output_dir, "summary.json")) as f:
        assert json.load(f)["total"] == 15
    assert [h["step"] for h in d.history] == [1, 2, 3, 4, 5]

    # the same output_dir again without resume/overwrite is refused, before anything runs
    again = Counting(cfg())
    with pytest.raises(CheckpointError):
        again.run()
    assert again.calls == []

    # interrupted in step 4: resumed from the step-2 checkpoint, state, counters and history come back
    failed = Counting(cfg("overwrite=true"), fail_at=4)
    with pytest.raises(RuntimeError, match="fault in step 4"):
        failed.run()
    r = Counting(cfg("resume=auto"))
    s2 = r.run()
    assert r.calls == ["start_pools", "restore:2", "eval:4", "save:4", "eval:5:final", "save:5"]
    assert s2["total"] == 15 and s2["counters"] == {"steps_run": 5}
    assert s2["run_id"] == failed.tracker.run_id != s["run_id"]  # the interrupted MLflow run continues
    assert [h["step"] for h in r.history] == [1, 2, 3, 4, 5]  # the steps before the checkpoint came back


def test_a_resize_request_for_a_pool_the_pipeline_cannot_resize_is_ignored(ray_cluster, grpo_cfg, tmp_path, capsys):
    from edit_rlhf.cluster.control import request_scale

    Counting = _counting_driver()
    d = Counting(grpo_cfg("steps=1", f"output_dir={tmp_path}/o"))
    d.setup()
    try:
        request_scale(d.cfg.output_dir, {"rollout": 2})
        assert d.maintain_pools(5.0) == {}  # no elastic pools: nothing resized, nothing checked
        assert "cannot be resized here" in capsys.readouterr().out
    finally:
        d.shutdown()
