"""EditReward-Bench's published metric (the authors' calculate_statistics.py): per dimension, strict, the
unweighted mean over task types; checked on a hand-built table where the per-row pooled mean differs."""
import math

import pytest

from edit_rlhf.evaluation.editreward import editreward_bench_accuracy, flat_metrics, summary_text


def _row(dim, task, a, b):
    return {"dimension": dim, "task_type": task, "score_preferred": a, "score_other": b}


# overall: color_alter 3 rows, all right; subject-remove 1 row, a tie (wrong when strict)
#   authors: (3/3 + 0/1) / 2 = 0.5;  per row: 3/4 = 0.75
# prompt_following: color_alter 1 row wrong; subject-remove 2 rows right, 1 unscored
#   authors: (0/1 + 2/3) / 2 = 1/3;  per row: 2/4 = 0.5
# all eight rows pooled over both dimensions (what eval-rrm printed before): 5/8 = 0.625
TABLE = [_row("overall", "color_alter", 8, 2), _row("overall", "color_alter", 7.5, 7.0),
         _row("overall", "color_alter", 3, 1), _row("overall", "subject-remove", 5, 5),
         _row("prompt_following", "color_alter", 1, 9), _row("prompt_following", "subject-remove", 6, 2),
         _row("prompt_following", "subject-remove", 9, 0), _row("prompt_following", "subject-remove", None, 4)]


def test_per_dimension_strict_mean_over_task_types_differs_from_the_pooled_mean():
    res = editreward_bench_accuracy(TABLE)
    assert list(res) == ["prompt_following", "overall"]  # the benchmark's order, never pooled
    o, pf = res["overall"], res["prompt_following"]
    assert o["accuracy"] == pytest.approx(0.5) and o["pooled_accuracy"] == pytest.approx(0.75)
    assert o["per_task"] == {"color_alter": 1.0, "subject-remove": 0.0} and o["task_n"]["color_alter"] == 3
    assert o["with_ties_pooled"] == pytest.approx(3.5 / 4) and o["tie_rate"] == pytest.approx(0.25)
    assert pf["accuracy"] == pytest.approx(1 / 3) and pf["pooled_accuracy"] == pytest.approx(0.5)
    assert pf["per_task"]["subject-remove"] == pytest.approx(2 / 3)  # the unscored row counts as wrong
    pooled_all = sum(r["score_preferred"] is not None and r["score_preferred"] > r["score_other"] for r in TABLE) / 8
    assert pooled_all == 0.625 and all(not math.isclose(pooled_all, r["accuracy"]) for r in res.values())


def test_flat_metrics_summary_and_bad_rows():
    res = editreward_bench_accuracy(TABLE)
    m = flat_metrics(res)
    assert m["editreward_bench/overall"] == 0.5 and m["editreward_bench/overall/subject-remove"] == 0.0
    assert m["editreward_bench/prompt_following/pooled"] == 0.5
    text = summary_text(res)
    assert text.startswith("EditReward-Bench accuracy (authors' metric: per dimension, strict, mean over task types)")
    assert text.index("overall 0.500 (2 task types, 4 rows)") < text.index("prompt_following 0.333")
    with pytest.raises(ValueError, match="row 0: needs 'dimension' and 'task_type'"):
        editreward_bench_accuracy([{"task_type": "x", "score_preferred": 1, "score_other": 0}])


def test_eval_rrm_summary_line_leads_with_the_authors_metric():
    from edit_rlhf.pipelines.eval_rrm import summary_line

    res = editreward_bench_accuracy(TABLE)
    m = {"pairs": 8, "accuracy": 0.625, "accuracy_with_ties": 0.6875, "chance_strict": 0.44, "parse_rate": 0.94,
         "tie_rate": 0.125, "k": 1, "accuracy_macro": 0.5}
    out = {"metrics": m, "seconds": 3.0, "run_id": "abc", "editreward_bench": {"dimensions": res}}
    parts = summary_line(out).split(" | ")
    assert parts[0] == "eval-rrm: 8 rows in 3s"
    assert parts[1].startswith("EditReward-Bench accuracy (authors' metric") and "overall 0.500" in parts[1]
    assert parts[2].startswith("pairwise accuracy (per row, all dimensions pooled; not the published metric) 0.625")
    plain = summary_line({"metrics": m, "seconds": 3.0, "run_id": "abc"})  # our pair schema: as before
    assert "pairwise accuracy 0.625" in plain and "macro over categories 0.500" in plain


def test_each_benchmark_image_is_scored_once_across_dimension_rows():
    """EditReward-Bench repeats a pair once per dimension; as in the authors' evaluation.py, each distinct image
    (under the same prompt) is generated for once and its score reused; rows without image keys never share."""
    from edit_rlhf.rrm.engine import GenRequest
    from edit_rlhf.rrm_train.evaluate import shared_requests

    rows = [{"image_keys": ("m1", "m2")}, {"image_keys": ("m1", "m2")}, {"image_keys": ("m3", "m1")}, {}]
    reqs = [GenRequest("p"), GenRequest("p"), GenRequest("p"), GenRequest("p"), GenRequest("p"), GenRequest("p"),
            GenRequest("p"), GenRequest("p")]
    todo, where = shared_requests(rows, reqs)
    assert todo == [0, 1, 4, 6, 7]  # m1, m2, m3, then the key-less row's two sides
    assert where == [0, 1, 0, 1, 2, 0, 3, 4]
    reqs[3] = GenRequest("another prompt")  # other principles: not the same request
    assert shared_requests(rows, reqs)[1][3] == 2 and len(shared_requests(rows, reqs)[0]) == 6
