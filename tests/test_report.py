"""HTML reports: the document (escaping, embedded vs linked images), learning-curve PNGs, the report of an MLflow
run with a child run (curves, image grids, an evaluation table), logging to MLflow, the `edit-rlhf report`
command, and rendering in headless Chromium (every <img> loads with naturalWidth > 0; a broken one is caught)."""
import html
import json
import os
import re
import shutil
import signal
import subprocess

import numpy as np
import pytest

from conftest import ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _grid(seed, h=96, w=160):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _eval_table():
    from edit_rlhf.evaluation.results import build_table

    recs = []
    for e, shift in (("base", 0.0), ("grpo", 1.5)):
        for i, cat in enumerate(["recolour", "remove", "move", "recolour"]):
            recs.append({"editor": e, "id": f"p{i}", "index": i, "category": cat, "intersection": None,
                         "sc": None if i == 3 else 5.0 + shift, "pq": 6.0,
                         "o": None if i == 3 else (6.0 * (5 + shift)) ** .5,
                         "judge_error": "SC: no score" if i == 3 else None, "rrm": 4.0 + shift, "rrm_error": None,
                         "oracle": 3.0 + i + shift, "oracle_error": None, "oracle_checks": [1, 0, 1]})
    return build_table(recs, ["base", "grpo"], {"judge": True, "rrm": True, "oracle": True}), recs


@pytest.fixture(scope="module")
def mlflow_run(tmp_path_factory):
    """A finished GRPO-like MLflow run (metric histories, eval grids before/after, summary) with a child
    evaluation run holding a result table."""
    from edit_rlhf.tracking import Tracker

    d = str(tmp_path_factory.mktemp("mlruns"))
    t = Tracker(d, "report-test", run_name="grpo-demo", tags={"pipeline": "grpo"})
    t.log_params({"algo.group_size": 8, "optim.lr": 0.01})
    for step in range(1, 11):
        t.log_metrics({"reward/mean": 0.2 + 0.05 * step, "reward/oracle_score": 1 + 0.3 * step, "train/kl": 0.01 * step,
                       "train/clip_frac": 0.1, "time/step_s": 3.0, "monitor/divergence": 0.02 * step}, step)
        if step % 5 == 0:
            t.log_metrics({"eval/reward": 0.3 + 0.04 * step, "eval/oracle_score": 1 + 0.2 * step}, step)
    t.log_metrics({"eval/reward": 0.3, "eval/oracle_score": 1.0}, 0)
    for step in (0, 5, 10):
        t.log_image(_grid(step), f"eval/step_{step:05d}.png")
    t.log_image(_grid(99), "samples/step_00005.png")
    t.log_dict({"steps": 10, "seconds": 42.0, "oracle_last20": 3.9}, "summary.json")
    t.finish()
    child = Tracker(d, "report-test", run_name="evaluation", tags={"mlflow.parentRunId": t.run_id,
                                                                    "pipeline": "eval-editor"})
    table, _ = _eval_table()
    child.log_dict(table, "eval/table.json")
    child.log_metrics({"base/oracle": 4.0}, 0)
    child.finish()
    return {"dir": d, "run_id": t.run_id, "child": child.run_id, "uri": t.uri}


# ---------------------------------------------------------------------------------------------- document
def test_document_escapes_text_and_embeds_or_links_images(tmp_path):
    from edit_rlhf.report import Img, Report
    from edit_rlhf.report.document import png_bytes

    r = Report("A <b>title</b>", subtitle="x & y")
    s = r.section("Section <1>")
    s.add_text("<script>alert(1)</script>").add_kv({"k<": 1.23456, "nan": float("nan")})
    s.add_table([{"editor": "base", "O": 5.5}, {"editor": "<i>", "O": None}], emphasize="base")
    s.add_image(_grid(1), caption="grid one")
    s.add_image_table(["prompt", "edit"], [["p0\nline", Img(png_bytes(_grid(3, 8, 8)), "e\nO 5", 64, True)]])
    text = r.to_html()
    assert "<script>" not in text and "&lt;script&gt;" in text and "A &lt;b&gt;title&lt;/b&gt;" in text
    assert text.count('src="data:image/png;base64,') == r.image_count == 2
    assert "–" in text and 'class="px"' in text and "<tr class=em>" in text
    p = r.write(str(tmp_path / "linked"), embed=False)
    linked = open(p).read()
    srcs = re.findall(r'src="([^"]+)"', linked)
    assert len(srcs) == 2 and all(s.startswith("assets/") and os.path.isfile(tmp_path / "linked" / s) for s in srcs)
    assert "data:image" not in linked


def test_learning_curve_pngs_and_panels():
    from edit_rlhf.report.plots import auto_panels, bars_png, curves_png

    hist = {"reward/mean": [(i, 0.1 * i) for i in range(5)], "train/kl": [(i, 0.01) for i in range(5)],
            "time/step_s": [(i, 1.0) for i in range(5)], "custom/a": [(0, 1.0), (1, float("nan")), (2, 2.0)],
            "single/point": [(0, 1.0)]}
    pans = auto_panels(hist)
    titles = [t for t, _ in pans]
    assert ("Reward (training rollouts)", ["reward/mean"]) in pans and ("KL to the reference", ["train/kl"]) in pans
    assert "custom" in titles and not any("time" in t or "single" in t for t in titles)
    png = curves_png(hist, ["reward/mean", "custom/a"], "t")
    assert png.startswith(PNG_MAGIC) and len(png) > 2000
    assert bars_png({"base": {"a": 1.0, "b": float("nan")}, "grpo": {"a": 2.0, "b": 3.0}}).startswith(PNG_MAGIC)


# ---------------------------------------------------------------------------------------------- run reports
def test_run_report_from_mlflow_with_child_run_logged_back(mlflow_run, tmp_path):
    from mlflow.tracking import MlflowClient

    from edit_rlhf.report import build_report

    out = str(tmp_path / "rep")
    info = build_report([mlflow_run["run_id"]], out, tracking_dir=mlflow_run["dir"], log_to_run=mlflow_run["run_id"])
    text = open(info["path"]).read()
    assert info["images"] == text.count("<img ") and info["bytes"] == os.path.getsize(info["path"])
    for needle in ("grpo-demo", "learning curves", "Reward (training rollouts)", "KL to the reference",
                   "Reward-hacking monitor", "eval/step_00000.png", "eval/step_00010.png", "samples/step_00005.png",
                   "grpo-demo › evaluation", "Per category", "oracle_last20", "algo.group_size = 8"):
        assert html.escape(needle) in text, needle
    assert "eval/step_00005.png" not in text  # first and last grid of a folder: before / after
    assert "time/step_s" not in text  # bookkeeping metrics are not plotted
    arts = {a.path for a in MlflowClient(mlflow_run["uri"]).list_artifacts(mlflow_run["run_id"], "run_report")}
    assert "run_report/index.html" in arts and info["logged_to"] == f"{mlflow_run['run_id']}:run_report/"


def test_stage_results_in_memory_make_a_report(tmp_path):
    from edit_rlhf.report import build_report, stage_result

    table, _ = _eval_table()
    st = stage_result("rrm-sft", metrics={"accuracy": 0.8}, history={"sft/loss": [(i, 1 / (i + 1)) for i in range(6)]},
                      images=[("traces", _grid(5))], params={"lr": 1e-4})
    ev = stage_result("evaluation", table=table)
    info = build_report([st, ev], str(tmp_path), title="edit-r1")
    text = open(info["path"]).read()
    assert "rrm-sft" in text and "<figcaption>sft</figcaption>" in text  # the curve panel of sft/* metrics
    assert "accuracy" in text and "evaluation: Evaluation results" in text and info["images"] >= 3


def test_report_command(mlflow_run, tmp_path, capsys):
    from edit_rlhf.cli import main

    out = str(tmp_path / "cli")
    rc = main(["report", "--run-id", mlflow_run["child"], "--tracking-dir", mlflow_run["dir"], "--out", out,
               "--link-images", "--no-log"])
    printed = capsys.readouterr().out
    assert rc == 0 and f"report: {out}/index.html" in printed and os.listdir(os.path.join(out, "assets"))
    assert main(["report", "--run-id", "0" * 32, "--tracking-dir", mlflow_run["dir"], "--out", out]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["report", "--run-id", "x", "--tracking-dir", str(tmp_path / "nothing")]) == 2
    assert "no MLflow store" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- Chromium
CHECK_JS = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var pre = document.createElement('pre');
  pre.id = 'render-check';
  pre.textContent = JSON.stringify({n: imgs.length, broken: bad.map(function (i) { return i.getAttribute('alt'); }),
                                    widths: imgs.map(function (i) { return i.naturalWidth; }),
                                    tables: document.querySelectorAll('table').length});
  document.body.appendChild(pre);
});
</script>"""
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=10000"]


@pytest.fixture(scope="module")
def chromium():
    """The Chromium binary; installed with scripts/install_chromium.sh when missing. Skips (with the reason)
    only when it cannot be installed."""
    for b in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
              shutil.which("google-chrome")):
        if b and os.access(b, os.X_OK):
            return b
    r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "install_chromium.sh")], capture_output=True,
                       text=True, timeout=1200)
    if r.returncode != 0:
        pytest.skip(f"Chromium is not installed and scripts/install_chromium.sh could not install it: "
                    f"{(r.stderr or r.stdout).strip()[-400:]}")
    return r.stdout.strip().splitlines()[-1]


def _chromium(binary, profile, *args, timeout=120):
    """Run headless Chromium in its own process group; the whole group is killed afterwards."""
    os.makedirs(profile, exist_ok=True)
    p = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
    return out.decode("utf-8", "replace")


def render_check(binary, html_path, profile):
    """Load `html_path` (a copy with a checking script, in the same folder so relative images resolve) and
    return what the page saw: {'n', 'broken', 'widths', 'tables'}."""
    d = os.path.dirname(html_path)
    check = os.path.join(d, "_render_check.html")
    with open(html_path, encoding="utf-8") as f:
        text = f.read()
    with open(check, "w", encoding="utf-8") as f:
        f.write(text.replace("</body>", CHECK_JS + "</body>"))
    dom = _chromium(binary, profile, "--dump-dom", "file://" + check)
    os.remove(check)
    m = re.search(r'<pre id="render-check">(.*?)</pre>', dom, re.S)
    assert m, f"the page did not finish loading in Chromium: {dom[-500:]!r}"
    return json.loads(html.unescape(m.group(1)))


def test_reports_render_with_all_images_in_headless_chromium(chromium, mlflow_run, tmp_path):
    from PIL import Image

    from edit_rlhf.report import Report, build_report
    from edit_rlhf.report.evaluation import add_eval_sections

    # 1. the run report, images embedded
    emb = build_report([mlflow_run["run_id"]], str(tmp_path / "emb"), tracking_dir=mlflow_run["dir"])
    seen = render_check(chromium, emb["path"], str(tmp_path / "profile1"))
    assert seen["n"] == emb["images"] >= 8 and seen["broken"] == [] and min(seen["widths"]) > 0
    assert seen["tables"] >= 4
    # 2. an evaluation report (tables, chart, edits side by side), images as files beside the HTML
    table, recs = _eval_table()
    examples = [{"id": f"p{i}", "instruction": "make it red", "category": "recolour", "source": _grid(i, 64, 64),
                 "target": _grid(10 + i, 64, 64), "principles": [{"question": f"q{k}?", "category": "follow"}
                                                                  for k in range(3)],
                 "edits": {"base": _grid(20 + i, 64, 64), "grpo": _grid(30 + i, 64, 64)},
                 "records": {r["editor"]: r for r in recs if r["index"] == i}} for i in range(3)]
    rep = Report("evaluation")
    add_eval_sections(rep, table, examples)
    path = rep.write(str(tmp_path / "evalrep"), embed=False)
    seen = render_check(chromium, path, str(tmp_path / "profile2"))
    assert seen["n"] == rep.image_count == 1 + 3 * 4 and seen["broken"] == []
    # a screenshot shows a rendered page, not a blank one
    shot = str(tmp_path / "shot.png")
    _chromium(chromium, str(tmp_path / "profile3"), f"--screenshot={shot}", "--window-size=1280,1800", "file://" + path)
    px = np.asarray(Image.open(shot).convert("RGB"))
    assert px.shape[:2] == (1800, 1280) and len(np.unique(px.reshape(-1, 3), axis=0)) > 200
    # 3. the check catches a broken image (an asset file gone)
    os.remove(os.path.join(tmp_path / "evalrep", "assets", sorted(os.listdir(tmp_path / "evalrep" / "assets"))[1]))
    seen = render_check(chromium, path, str(tmp_path / "profile4"))
    assert len(seen["broken"]) == 1
