"""`edit-rlhf edit-r1` on configs/edit_r1_sandbox.yaml, shortened: every stage of the recipe runs for real
(sandbox data, oracle principles, T+V traces, RRM SFT on DeepSpeed, RRM GCPO with vLLM rollouts, editor GRPO
rewarded by the GCPO RRM on vLLM, evaluation of base vs trained), from the shipped base models, with one MLflow
parent run, a child run per stage, outputs handed on by path, the HTML report, and resume that reuses finished
stages. Sizes are cut so the whole recipe takes a few minutes; the learning figures are in
benchmarks/learn_edit_r1.py.
"""
import json
import os

import pytest

from conftest import ROOT

pytestmark = pytest.mark.integration

SHORT = {
    "data": ["n_train=8", "n_eval=4", "n_pairs_train=16", "n_pairs_eval=8"],
    # 4 SFT steps cannot teach the trace format: continue from the shipped SFT RRM so that GCPO, GRPO and the
    # evaluation see parsable verdicts (the recipe itself starts from the base VLM)
    "rrm_sft": [f"model.path={ROOT}/models/sandbox/rrm_sft", "steps=4", "log_every=2", "save_every=2", "batch_size=4", "data.eval_size=2",
                "data.pairs_eval_size=4"],
    "rrm_gcpo": ["steps=1", "eval_every=0", "save_every=1", "algo.pairs_per_step=2", "algo.group_size=2",
                 "data.eval_size=4", "eval.avg_k=0"],
    "grpo": ["steps=1", "eval_every=0", "save_every=1", "algo.prompts_per_step=2", "algo.group_size=2",
             "data.eval_size=2"],
    "eval": ["data.limit=4"],
}


def short_config(tmp_path, *extra):
    from edit_rlhf.config import load_config
    from edit_rlhf.config.edit_r1 import EditR1Config

    cfg = load_config(EditR1Config, f"{ROOT}/configs/edit_r1_sandbox.yaml",
                      [f"output_dir={tmp_path}/out", f"tracking.dir={tmp_path}/mlruns", *extra])
    for st in cfg.stages:
        st.overrides = list(st.overrides) + SHORT.get(st.name, [])
    return cfg


def test_edit_r1_runs_every_stage_hands_outputs_on_and_reports(ray_cluster, tmp_path):
    from mlflow.tracking import MlflowClient

    from edit_rlhf.pipelines.edit_r1 import EditR1

    cfg = short_config(tmp_path)
    s = EditR1(cfg, f"{ROOT}/configs", quiet=True).run()
    names = ["data", "principles", "traces", "rrm_sft", "rrm_gcpo", "grpo", "eval"]
    assert list(s["stages"]) == names and all(r["status"] == "done" for r in s["stages"].values()), s["stages"]
    out = s["stages"]
    # outputs were handed on by path: the GCPO stage trained the SFT stage's model, GRPO scored with GCPO's
    gcpo = json.load(open(os.path.join(tmp_path, "out", "rrm_gcpo", "stage.json")))
    assert f"model.path={out['rrm_sft']['outputs']['model']}" in gcpo["overrides"]
    grpo = json.load(open(os.path.join(tmp_path, "out", "grpo", "stage.json")))
    assert f"reward.rrm.path={out['rrm_gcpo']['outputs']['model']}" in grpo["overrides"]
    assert os.path.isfile(os.path.join(out["grpo"]["outputs"]["lora"], "pytorch_lora_weights.safetensors"))
    # evaluation: base and the trained editor on the same prompts, oracle and RRM scores
    table = json.load(open(out["eval"]["outputs"]["table"]))
    text = json.dumps(table)
    assert "base" in text and "edit_r1" in text and "oracle" in text and "rrm" in text
    # one MLflow parent run, one child run per stage that logs to MLflow
    c = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    exp = c.get_experiment_by_name("edit_rlhf-edit_r1")
    runs = c.search_runs([exp.experiment_id])
    children = {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == s["run_id"]}
    assert {"rrm_sft", "rrm_gcpo", "grpo", "eval"} <= children, children
    parent = c.get_run(s["run_id"])
    assert parent.info.status == "FINISHED" and "time/grpo_s" in parent.data.metrics
    # the report: written locally, with images, and logged to the parent run
    assert s["report"] and os.path.isfile(s["report"])
    html = open(s["report"]).read()
    assert "<img" in html and "grpo" in html
    # the RRM's verdicts parsed along the way: GRPO had rewards, the evaluation has RRM scores
    assert grpo["summary"]["failed_rewards"] < 4, grpo["summary"]
    assert any(a.path == "run_report" for a in c.list_artifacts(s["run_id"]))

    # resume: every finished stage is reused, nothing retrains, the same parent run continues
    again = EditR1(short_config(tmp_path, "resume=auto"), f"{ROOT}/configs", quiet=True).run()
    assert again["run_id"] == s["run_id"]
    assert all(r["status"] == "done (earlier run)" for r in again["stages"].values()), again["stages"]
