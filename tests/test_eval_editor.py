"""`edit-rlhf eval-editor` on local Ray with the tiny models: base and a trained LoRA scored in one run by the
same judge (vLLM), RRM (HF backend here) and oracle; the same seed gives the same table (run twice); the
LoRA's edits are those of plain diffusers; outputs in the folder and in MLflow; GEdit-layout input end to end.
The tiny random VLM's replies never parse: every judgement is a counted failure, never a 0."""
import filecmp
import json
import os

import numpy as np
import pytest

from conftest import ROOT

pytestmark = pytest.mark.integration
N = 6


@pytest.fixture(scope="module")
def trained_run(tiny_models, tmp_path_factory):
    """A GRPO-like run folder whose latest checkpoint holds a LoRA with non-zero (random) B matrices."""
    import torch

    from edit_rlhf.checkpoint import Checkpoints
    from edit_rlhf.config.schema import DEFAULT_KONTEXT_LORA_TARGETS
    from edit_rlhf.models.kontext import KontextEditor
    from edit_rlhf.models.lora import add_lora, get_lora_state, lora_metadata, save_lora

    run = str(tmp_path_factory.mktemp("grpo_run"))
    ed = KontextEditor(tiny_models["editor"], 64)
    add_lora(ed.transformer, 4, 8, DEFAULT_KONTEXT_LORA_TARGETS)
    g = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(v.shape, generator=g) * 0.3 if "lora_B" in k else v)
             for k, v in get_lora_state(ed.transformer).items()}
    ck = Checkpoints(run)
    tmp = ck.begin(3)
    save_lora(os.path.join(tmp, "lora"), state, lora_metadata(ed.transformer))
    ck.commit(3, tmp, {"step": 3})
    return run


@pytest.fixture(scope="module")
def eval_cfg(tiny_models, sandbox_dir, trained_run, tmp_path_factory):
    from edit_rlhf.config import load_config
    from edit_rlhf.config.evaluation import EvalEditorConfig

    root = str(tmp_path_factory.mktemp("eval"))

    def make(name, *overrides):
        base = [f"editor.path={tiny_models['editor']}", f"judge.path={tiny_models['rrm']}",
                f"data.path={sandbox_dir}/prompts_eval", f"data.limit={N}", "batch_size=3",
                f"output_dir={root}/{name}", f"tracking.dir={root}/mlruns", "build_missing=false",
                f"editors=[{{name: base}}, {{name: trained, lora: {trained_run}}}]", "judge.sampling.max_tokens=24",
                f"rrm.path={tiny_models['rrm']}", "rrm.backend=hf", "rrm.sampling.max_tokens=24", "report.grid_rows=3"]
        return load_config(EvalEditorConfig, f"{ROOT}/configs/eval_editor_sandbox.yaml", base + list(overrides))

    return make


@pytest.fixture(scope="module")
def two_runs(ray_cluster, eval_cfg):
    from edit_rlhf.pipelines.eval_editor import run_eval_editor

    a = run_eval_editor(eval_cfg("run1"), quiet=True)
    b = run_eval_editor(eval_cfg("run2"), quiet=True)
    return a, b


def test_same_seed_gives_the_same_table_and_edits(two_runs):
    a, b = two_runs
    assert a["run_id"] != b["run_id"]
    for name in ("table.json", "table.csv", "samples.csv"):
        pa, pb = (os.path.join(s["output_dir"], name) for s in (a, b))
        assert filecmp.cmp(pa, pb, shallow=False), name
    for editor in ("base", "trained"):
        da, db = (os.path.join(s["output_dir"], "edits", editor) for s in (a, b))
        files = sorted(os.listdir(da))
        assert len(files) == N and files == sorted(os.listdir(db))
        assert all(filecmp.cmp(os.path.join(da, f), os.path.join(db, f), shallow=False) for f in files)


def test_base_and_trained_in_one_table_with_failures_counted(two_runs):
    s, _ = two_runs
    with open(os.path.join(s["output_dir"], "table.json")) as f:
        t = json.load(f)
    assert t["editors"] == ["base", "trained"] and t["metrics"] == ["judge", "rrm", "oracle"]
    assert t["categories"] and set(t["categories"]) <= {"recolour", "remove", "move", "resize", "add"}
    for e in ("base", "trained"):
        h, pe = t["headline"][e], t["per_editor"][e]
        # the random tiny VLM never answers the judge's JSON: all 2*N judgements failed, nothing scored 0
        assert h["judge_failed"] == 2 * N and h["judge_parse_rate"] == 0.0 and h["O"] is None and h["SC"] is None
        assert pe["gedit"]["O"]["failed"] == N and pe["gedit"]["O"]["categories_missing"] == t["categories"]
        assert h["rrm_failed"] == N and h["rrm"] is None
        assert pe["oracle"]["n_valid"] == N and 0.0 <= h["oracle"] <= 10.0
        assert sum(pe["category_n"].values()) == N
    assert set(t["delta_vs_base"]["trained"]) == {"oracle", "oracle_micro"}
    recs = [json.loads(line) for line in open(os.path.join(s["output_dir"], "samples.jsonl"))]
    assert len(recs) == 2 * N and all(r["sc"] is None and "no \"score\" list" in r["judge_error"] for r in recs)
    assert all(r["oracle"] is not None and r["oracle_checks"] for r in recs)
    assert all(r["rrm"] is None and "no parsable RRM verdict" in r["rrm_error"] for r in recs)
    assert s["counters"]["score_call_failures"] == 0 and s["judge_backend"] == "vllm"


def test_trained_edits_are_plain_diffusers_with_the_lora(two_runs, eval_cfg, tiny_models, trained_run):
    import torch
    from diffusers import FluxKontextPipeline
    from PIL import Image

    from edit_rlhf.data.prompts import EditPromptDataset
    from edit_rlhf.grpo.plan import eval_seed

    s, _ = two_runs
    cfg = eval_cfg("run1")
    ds = EditPromptDataset(cfg.data.path)
    row = ds.row(1, ["id", "source_image", "instruction"])
    pipe = FluxKontextPipeline.from_pretrained(tiny_models["editor"])
    pipe.set_progress_bar_config(disable=True)

    def edit():
        out = pipe(image=Image.fromarray(row["source_image"]), prompt=row["instruction"], height=64, width=64,
                   num_inference_steps=cfg.sampling.eval_num_steps, guidance_scale=cfg.editor.guidance_scale,
                   max_sequence_length=cfg.editor.max_sequence_length, output_type="np", max_area=64 * 64,
                   generator=torch.Generator().manual_seed(eval_seed(cfg.seed, 1)), _auto_resize=False).images[0]
        return (out * 255).round().astype(np.int64)

    got = {e: np.asarray(Image.open(os.path.join(s["output_dir"], "edits", e, f"{row['id']}.png")), np.int64)
           for e in ("base", "trained")}
    assert np.abs(edit() - got["base"]).max() <= 1
    pipe.load_lora_weights(os.path.join(trained_run, "checkpoints", "step_00000003", "lora"))
    assert np.abs(edit() - got["trained"]).max() <= 1
    assert np.abs(got["trained"] - got["base"]).max() > 10  # the LoRA changes the edits


def test_outputs_in_mlflow_and_the_report(two_runs):
    from mlflow.tracking import MlflowClient

    s, _ = two_runs
    c = MlflowClient(s["tracking_uri"])
    run = c.get_run(s["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["pipeline"] == "eval-editor"
    assert run.data.params["data.limit"] == str(N) and run.data.params["editors"].count("name") == 2
    m = run.data.metrics
    assert {"base/oracle", "trained/oracle", "delta/trained/oracle", "base/judge_failed"} <= set(m)
    assert m["base/judge_failed"] == 2 * N and "base/O" not in m  # no NaN metrics
    arts = {a.path for d in (None, "eval", "report") for a in c.list_artifacts(s["run_id"], d)}
    assert {"config.json", "eval/table.json", "eval/table.csv", "eval/samples.csv", "eval/grid.png",
            "eval/summary.json", "report/index.html"} <= arts
    text = open(s["paths"]["report"]).read()
    assert text.count("<img ") >= 3 * 4 and "Per-principle checks" in text and "judge failed" in text


def test_gedit_layout_input_end_to_end(ray_cluster, eval_cfg, tmp_path):
    """GEdit-Bench-layout parquet in, judged with the HF backend; categories are GEdit's task types."""
    from test_gedit_loader import _gedit_table

    from edit_rlhf.pipelines.eval_editor import evaluate_editors

    p = str(tmp_path / "gedit.parquet")
    _gedit_table().to_parquet(p)
    cfg = eval_cfg("gedit", f"data.path={p}", "data.category_column=null", "data.language=all", "rrm.path=null",
                   "judge.backend=hf", "judge.sampling.max_tokens=8", "seed=1", "report.grid_rows=2")
    s = evaluate_editors(cfg, str(tmp_path / "out"), loras={"base": None})  # the stage API of the edit-r1 pipeline
    t = s["table"]
    assert s["output_dir"] == str(tmp_path / "out") and os.path.exists(s["paths"]["report"])
    # EN and CN instructions: two separate tables (GEdit-Bench's), never one pooled table
    assert t["metrics"] == ["judge"] and t["languages"] == ["en", "cn"] and "per_editor" not in t
    en, cn = t["by_language"]["en"], t["by_language"]["cn"]
    assert en["per_editor"]["base"]["n"] == 4 and cn["per_editor"]["base"]["n"] == 2
    assert en["categories"] == ["background_change", "subject-add", "subject-remove", "tone_transfer"]
    assert cn["categories"] == ["background_change", "color_alter"]
    assert "gedit_intersection" in en["per_editor"]["base"] and s["judge_backend"] == "hf"
    assert t["headline"]["base"]["judge_failed_en"] == 8 and t["headline"]["base"]["judge_failed_cn"] == 4


def test_bad_inputs_fail_before_any_actor_starts(eval_cfg, tmp_path):
    from test_gedit_loader import _gedit_table

    from edit_rlhf.data.prompts import DatasetError
    from edit_rlhf.pipelines.eval_editor import run_eval_editor

    with pytest.raises(DatasetError, match=r"editors\[1\].lora \(trained\): .* is not a LoRA folder"):
        run_eval_editor(eval_cfg("bad1", f"editors=[{{name: base}}, {{name: trained, lora: {tmp_path}}}]"))
    p = str(tmp_path / "g.parquet")
    _gedit_table().to_parquet(p)
    with pytest.raises(DatasetError, match="rrm.path is set but no row has principles"):
        run_eval_editor(eval_cfg("bad2", f"data.path={p}", "data.category_column=null"))
