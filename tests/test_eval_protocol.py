"""GEdit-Bench / VIEScore aggregation on hand-computed cases, the judge reply parser, the result table and the
evaluation config (pure functions: no models, no Ray)."""
import csv
import json
import math

import pytest

from edit_rlhf.evaluation.protocol import (
    GEDIT_CATEGORIES, aggregate, category_order, gedit_aggregate, min_score, overall, sample_scores,
)

S24, S90, S6 = math.sqrt(24), math.sqrt(90), math.sqrt(6)

# (category, SC sub-scores, PQ sub-scores); None = that judgement failed
CASES = [
    ("A", [8, 6], [9, 4]),     # SC 6, PQ 4, O sqrt(24)
    ("A", [10, 10], [9, 9]),   # SC 10, PQ 9, O sqrt(90)
    ("B", [3, 5], [2, 8]),     # SC 3, PQ 2, O sqrt(6)
    ("B", None, [7, 7]),       # SC failed -> no SC, no O; PQ 7 still counts
    ("C", [4, 4], None),       # PQ failed -> no PQ, no O; SC 4 counts
]


def _scores():
    sc, pq, cats = [], [], []
    for cat, s, q in CASES:
        a, b, _ = sample_scores(s, q)
        sc.append(a)
        pq.append(b)
        cats.append(cat)
    return sc, pq, cats


def test_per_sample_min_and_sqrt():
    assert sample_scores([8, 6], [9, 4]) == (6.0, 4.0, S24)
    assert sample_scores([0, 10], [10, 10]) == (0.0, 10.0, 0.0)  # a zero SC gives O = 0 (a score, not a failure)
    sc, pq, o = sample_scores(None, [7, 7])
    assert math.isnan(sc) and pq == 7.0 and math.isnan(o)
    assert math.isnan(min_score([])) and math.isnan(min_score([5, float("nan")]))
    assert math.isnan(overall(float("nan"), 3.0))
    with pytest.raises(ValueError):
        overall(-1.0, 4.0)


def test_category_means_and_macro_mean_on_a_hand_computed_case():
    sc, pq, cats = _scores()
    t = gedit_aggregate(sc, pq, cats)
    # SC: A = (6 + 10) / 2 = 8, B = 3 (its failed sample excluded), C = 4 -> macro 5, micro (6+10+3+4)/4
    assert t["SC"]["per_category"]["A"]["mean"] == 8.0
    assert t["SC"]["per_category"]["B"] == {"mean": 3.0, "n": 2, "n_valid": 1, "failed": 1}
    assert t["SC"]["macro"] == pytest.approx(5.0) and t["SC"]["micro"] == pytest.approx(5.75)
    # PQ: A = 6.5, B = (2 + 7) / 2 = 4.5, C has none -> macro over the categories present = 5.5
    assert t["PQ"]["per_category"]["B"]["mean"] == 4.5
    assert math.isnan(t["PQ"]["per_category"]["C"]["mean"]) and t["PQ"]["categories_missing"] == ["C"]
    assert t["PQ"]["macro"] == pytest.approx(5.5)
    # O per sample, then per category, then macro: ((sqrt24 + sqrt90) / 2 + sqrt6) / 2
    assert t["O"]["per_category"]["A"]["mean"] == pytest.approx((S24 + S90) / 2)
    assert t["O"]["per_category"]["B"]["mean"] == pytest.approx(S6)
    assert t["O"]["macro"] == pytest.approx(((S24 + S90) / 2 + S6) / 2)
    assert (t["SC"]["failed"], t["PQ"]["failed"], t["O"]["failed"]) == (1, 1, 2)
    assert t["O"]["n"] == 5 and t["O"]["n_valid"] == 3
    # O is not sqrt of the mean SC times the mean PQ
    assert abs(t["O"]["macro"] - math.sqrt(t["SC"]["macro"] * t["PQ"]["macro"])) > 0.1


def test_macro_is_unweighted_over_categories():
    # 3 samples of 'x' at 9, 1 sample of 'y' at 1: macro (9 + 1) / 2 = 5, micro (27 + 1) / 4 = 7
    a = aggregate([9.0, 9.0, 9.0, 1.0], ["x", "x", "x", "y"])
    assert a["macro"] == 5.0 and a["micro"] == 7.0


def test_all_failed_metric_is_nan_not_zero():
    a = aggregate([float("nan")] * 3, ["x", "y", "y"])
    assert math.isnan(a["macro"]) and math.isnan(a["micro"]) and a["failed"] == 3
    assert a["categories_missing"] == ["x", "y"]


def test_category_order_and_errors():
    cats = ["subject-add", "zeta", "background_change", "alpha"]
    assert category_order(cats) == ["background_change", "subject-add", "alpha", "zeta"]
    assert len(GEDIT_CATEGORIES) == 11
    with pytest.raises(ValueError, match="2 values but 1 categories"):
        aggregate([1.0, 2.0], ["x"])
    with pytest.raises(ValueError, match="not in the given order"):
        aggregate([1.0], ["x"], order=["y"])


# ---------------------------------------------------------------------------------------------- judge parser
@pytest.mark.parametrize("text,scores", [
    ('{"reasoning": "fine", "score": [7, 8]}', [7.0, 8.0]),
    ('Sure!\n```json\n{"score": [6.5, 9], "reasoning": "braces {in} text"}\n```', [6.5, 9.0]),
    ("{'score': ['3', 4,], 'reasoning': 'python literal'}", [3.0, 4.0]),
    ('first {"score": [1, 1]} then corrected {"score": [9, 2]}', [9.0, 2.0]),  # the last object wins
    ('"score": [5, 6]', [5.0, 6.0]),  # no object around it
    ('{"Reasoning": "x", "SCORE": [0, 10]}', [0.0, 10.0]),
])
def test_judge_parser_accepts(text, scores):
    from edit_rlhf.evaluation.viescore import parse_judgement

    j = parse_judgement(text)
    assert j.ok and j.scores == scores, j


@pytest.mark.parametrize("text,reason", [
    ("", "empty output"), (None, "not text"), ("no json here", 'no "score"'),
    ('{"score": [11, 2]}', "outside [0, 10]"), ('{"score": [7]}', "expected 2 scores, got 1"),
    ('{"score": ["high", 3]}', "must be numbers"), ('{"score": [true, 3]}', "must be numbers"),
    ('{"score": [7, 8', 'no "score"'),  # truncated
])
def test_judge_parser_rejects_with_a_reason(text, reason):
    from edit_rlhf.evaluation.viescore import parse_judgement

    j = parse_judgement(text)
    assert not j.ok and reason in j.reason and j.scores == []


def test_judge_parser_rescales_a_0_25_judge():
    from edit_rlhf.evaluation.viescore import parse_judgement

    j = parse_judgement('{"score": [25, 12.5]}', score_max=25)
    assert j.ok and j.scores == [10.0, 5.0] and j.raw == [25.0, 12.5]
    assert not parse_judgement('{"score": [26, 1]}', score_max=25).ok


def test_judge_prompts_name_the_scale_and_the_json_reply():
    from edit_rlhf.evaluation.viescore import build_messages, task_text

    sc = build_messages("sc", "make the square red", "full", 10)
    parts = sc[1]["content"]
    assert [p["type"] for p in parts] == ["text", "image", "text", "image", "text"]
    assert "make the square red" in parts[-1]["text"] and '"score": [' in parts[-1]["text"]
    pq = build_messages("pq", None, "compact", 25)
    assert [p["type"] for p in pq[1]["content"]] == ["text", "image", "text"]
    assert "0 to 25" in task_text("pq", "compact", 25)
    with pytest.raises(ValueError):
        build_messages("sc", " ", "full")


# ---------------------------------------------------------------------------------------------- result table
def _records():
    recs = []
    for e, shift in (("base", 0.0), ("trained", 1.0)):
        for k, (cat, s, q) in enumerate(CASES):
            sc, pq, o = sample_scores([x + shift for x in s] if s else None, q)
            recs.append({"editor": e, "id": f"r{k}", "index": k, "category": cat, "intersection": k < 2,
                         "sc": None if math.isnan(sc) else sc, "pq": None if math.isnan(pq) else pq,
                         "o": None if math.isnan(o) else o, "sc_scores": s, "pq_scores": q,
                         "judge_error": None if s and q else "SC: no score", "rrm": [5.0, None, 7.0, 6.0, 4.0][k],
                         "rrm_error": None, "oracle": 10.0 * (k % 2) + shift, "oracle_error": None})
    return recs


def test_result_table_deltas_rows_files_and_metrics(tmp_path):
    from edit_rlhf.evaluation.results import build_table, mlflow_metrics, summary_line, table_rows, write_results

    recs = _records()
    t = build_table(recs, ["base", "trained"], {"judge": True, "rrm": True, "oracle": True})
    assert t["categories"] == ["A", "B", "C"]
    base = t["per_editor"]["base"]
    assert base["gedit"]["O"]["macro"] == pytest.approx(((S24 + S90) / 2 + S6) / 2)
    assert base["judge"] == {"judgements": 10, "failed": 2, "parse_rate": 0.8}
    # RRM: A = 5 (one failure), B = (7 + 6) / 2, C = 4 -> macro (5 + 6.5 + 4) / 3
    assert base["rrm"]["macro"] == pytest.approx((5 + 6.5 + 4) / 3) and base["rrm"]["failed"] == 1
    assert t["delta_vs_base"]["trained"]["oracle"] == pytest.approx(1.0)
    # the per-prompt paired comparison with the base editor, and whether it is significant (|z| >= 2)
    po, pr = t["paired_vs_base"]["trained"]["oracle"], t["paired_vs_base"]["trained"]["rrm"]
    assert po["diff"] == pytest.approx(1.0) and po["n"] == 5 and po["significant"]
    assert pr["diff"] == 0.0 and pr["n"] == 4 and pr["dropped"] == 1 and not pr["significant"]
    assert "oracle +1.00 (paired over 5 prompts" in summary_line(t, 1.0, 5) and "significant at |z| >= 2" in \
        summary_line(t, 1.0, 5)
    assert "gedit_intersection" in base and base["gedit_intersection"]["O"]["n"] == 2
    rows = table_rows(t)
    assert [r["category"] for r in rows[:4]] == ["macro", "A", "B", "C"] and rows[0]["n"] == 5
    assert rows[3]["PQ_valid"] == 0 and math.isnan(rows[3]["PQ"])
    m = mlflow_metrics(t)
    assert m["base/O"] == pytest.approx(base["gedit"]["O"]["macro"]) and "delta/trained/oracle" in m
    assert "base/PQ/C" not in m and all(math.isfinite(v) for v in m.values())
    paths = write_results(str(tmp_path), t, recs)
    text = open(paths["table_json"]).read()
    assert "NaN" not in text
    assert json.loads(text)["per_editor"]["base"]["gedit"]["PQ"]["per_category"]["C"]["mean"] is None
    with open(paths["table_csv"]) as f:
        got = list(csv.DictReader(f))
    assert got[3]["category"] == "C" and got[3]["PQ"] == "" and got[0]["O_valid"] == "3"
    with open(paths["samples_csv"]) as f:
        assert len(list(csv.DictReader(f))) == 10
    line = summary_line(t, 12.0, 5)
    assert "judge failures 2/10" in line and "trained - base: O" in line


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("override,msg", [
    ("editors=[{name: a}, {name: a}]", "editors[1].name 'a' is used twice"),
    ("editors=[{name: 'a b'}]", "must be letters"),
    ("editors=[]", "name at least one editor"),
    ("judge.sampling.n=4", "needs temperature > 0"),
    ("data.language=fr", "'data.language'"),
    ("judge.prompt.style=long", "'judge.prompt.style'"),
    ("pools.judge.size=0", "'pools.judge.size'"),
])
def test_eval_config_errors_name_the_key(override, msg):
    from conftest import ROOT

    from edit_rlhf.config import ConfigError, load_config
    from edit_rlhf.config.evaluation import EvalEditorConfig

    with pytest.raises(ConfigError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        load_config(EvalEditorConfig, f"{ROOT}/configs/eval_editor_sandbox.yaml", [override])


def test_both_eval_configs_load_and_nothing_to_score_is_an_error():
    from conftest import ROOT

    from edit_rlhf.config import ConfigError, load_config
    from edit_rlhf.config.evaluation import EvalEditorConfig

    g = load_config(EvalEditorConfig, f"{ROOT}/configs/eval_editor_gedit.yaml")
    assert g.data.format == "gedit" and g.oracle == "off" and g.judge.vllm.tensor_parallel_size == 2
    s = load_config(EvalEditorConfig, f"{ROOT}/configs/eval_editor_sandbox.yaml")
    assert s.judge.sampling.temperature == 0.0 and [e.name for e in s.editors] == ["base"]
    with pytest.raises(ConfigError, match="nothing would score"):
        load_config(EvalEditorConfig, f"{ROOT}/configs/eval_editor_sandbox.yaml",
                    ["judge.path=null", "rrm.path=null", "oracle=off"])


def test_cli_reports_config_errors_with_status_2(capsys):
    from conftest import ROOT

    from edit_rlhf.cli import main

    assert main(["eval-editor", "--config", f"{ROOT}/configs/eval_editor_sandbox.yaml", "editors=[]"]) == 2
    assert "name at least one editor" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- GEdit EN / CN
def _bilingual_records():
    """Two editors x (2 EN + 1 CN prompts); hand-set SC / PQ so that EN and CN differ and pooling would show."""
    rows = [("en", "A", 9.0, 9.0), ("en", "B", 4.0, 9.0), ("cn", "A", 1.0, 9.0)]
    recs = []
    for e, shift in (("base", 0.0), ("trained", 1.0)):
        for k, (lang, cat, sc, pq) in enumerate(rows):
            sc = min(sc + shift, 10.0)
            recs.append({"editor": e, "id": f"{cat}/{lang}/{k}", "index": k, "category": cat, "language": lang,
                         "intersection": False, "sc": sc, "pq": pq, "o": math.sqrt(sc * pq), "sc_scores": [sc],
                         "pq_scores": [pq], "judge_error": None, "oracle": 10.0 * k + shift, "oracle_error": None})
    return recs


def test_gedit_en_and_cn_are_separate_tables_never_pooled(tmp_path):
    from edit_rlhf.evaluation.results import build_table, mlflow_metrics, summary_line, table_rows, write_results
    from edit_rlhf.report.document import Report
    from edit_rlhf.report.evaluation import add_eval_sections

    recs = _bilingual_records()
    present = {"judge": True, "oracle": True}
    t = build_table(recs, ["base", "trained"], present)
    assert t["languages"] == ["en", "cn"] and "per_editor" not in t and "gedit" not in json.dumps(t["headline"])
    en_only = build_table([r for r in recs if r["language"] == "en"], ["base", "trained"], present)
    en = t["by_language"]["en"]
    assert en["language"] == "en" and en["per_editor"] == en_only["per_editor"]  # exactly the EN-only table
    assert en["per_editor"]["base"]["gedit"]["O"]["macro"] == pytest.approx((9.0 + 6.0) / 2)
    assert t["by_language"]["cn"]["per_editor"]["base"]["gedit"]["O"]["macro"] == pytest.approx(3.0)
    h = t["headline"]["base"]
    assert h["O_en"] == pytest.approx(7.5) and h["O_cn"] == pytest.approx(3.0) and "O" not in h
    assert t["delta_vs_base"]["trained"]["oracle_cn"] == pytest.approx(1.0)
    pooled = build_table([dict(r, language=None) for r in recs], ["base", "trained"], present)
    assert pooled["headline"]["base"]["O"] == pytest.approx(((9.0 + 3.0) / 2 + 6.0) / 2)  # what pooling printed
    line = summary_line(t, 5.0, 3)
    assert "GEdit-EN base: O 7.50" in line and "GEdit-CN base: O 3.00" in line and "base: O 6.00" not in line
    rows = table_rows(t)
    assert [r["language"] for r in rows].count("en") == 2 * 3 and rows[0]["language"] == "en"
    m = mlflow_metrics(t)
    assert m["en/base/O"] == pytest.approx(7.5) and m["cn/base/O"] == pytest.approx(3.0) and "base/O" not in m
    paths = write_results(str(tmp_path), t, recs)
    assert json.load(open(paths["table_json"]))["by_language"]["cn"]["language"] == "cn"
    rep = Report("t")
    add_eval_sections(rep, t)
    html = open(rep.write(str(tmp_path / "rep"), embed=True)).read()
    assert "GEdit-Bench-EN: Evaluation results" in html and "GEdit-Bench-CN: Evaluation results" in html
