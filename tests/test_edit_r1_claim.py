"""benchmarks/edit_r1_claim.py: the recorded claim line, composed from benchmark lines, each figure against its target."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))


def gcpo_line(seed, sft, gcpo, z, margin=None):
    d = {"seed": seed, "command": f"learn_rrm_gcpo seed {seed}", "sft_pairwise_accuracy_with_ties": sft,
         "gcpo_pairwise_accuracy_with_ties": gcpo, "gcpo_pairwise_accuracy": gcpo - 0.1, "chance_strict_gcpo": 0.4,
         "gcpo_parse_rate": 0.99, "oracle_pairwise_accuracy": 0.89, "with_ties_paired": {"z": z}}
    if margin is not None:
        d["copy_source_gcpo"] = {"margin": margin}
    return d


def editor_line(seed, diff, z):
    return {"seed": seed, "scorer": "rrm", "steps": 30, "eval_prompts": 64, "hacking_gap": {"gap": 0.1},
            "eval_oracle_score_paired": {"diff": diff, "z": z}, "probe_cost": {"shuffled_source": 1.0}}


def test_claim_is_shown_only_when_every_target_is_met_in_both_seeds():
    from edit_r1_claim import compose

    good = compose([gcpo_line(0, 0.70, 0.78, 2.5, margin=4.0), gcpo_line(1, 0.70, 0.77, 2.1)], None,
                   [editor_line(0, 0.3, 2.4), editor_line(1, 0.2, 2.1)], {})
    assert good["claim_shown"] and good["seeds"] == [0, 1]
    assert good["gcpo_gain_with_ties"] == pytest.approx(0.07) and good["gcpo_gain_z"] == 2.1
    assert good["editor_oracle_paired_z"] == 2.1 and good["editor_oracle_gain"] == 0.2
    for k in ("rrm_with_ties", "rrm_strict", "rrm_strict_chance", "oracle_with_ties", "gcpo_gain_with_ties",
              "gcpo_gain_z", "copy_source_margin", "editor_oracle_gain", "editor_oracle_paired_z", "hacking_gap",
              "seeds"):
        assert k in good, k
    # one seed's GCPO z below 2, and no editor line: not shown, the missing part named and left null
    bad = compose([gcpo_line(0, 0.70, 0.78, 2.5, margin=4.0), gcpo_line(1, 0.70, 0.72, 1.2)], None, [], {})
    assert not bad["claim_shown"] and bad["met"]["gcpo_gain_z"] is False
    assert bad["editor_oracle_paired_z"] is None and bad["met"]["editor_oracle_paired_z"] is None
    assert "editor_missing" in bad
    one = compose([gcpo_line(0, 0.70, 0.78, 2.5, margin=4.0)], None, [editor_line(0, 0.3, 2.4)], {})
    assert one["met"]["gcpo_two_seeds"] is False and not one["claim_shown"]


def test_an_eval_rrm_output_supplies_the_judge_and_the_copy_source_margin(tmp_path):
    from edit_r1_claim import main

    ev = {"model": "models/sandbox/rrm_sft", "metrics": {"accuracy_with_ties": 0.53, "accuracy": 0.14,
                                                          "chance_strict": 0.21, "parse_rate": 1.0,
                                                          "copy_source/margin": 2.8, "copy_source/score_mean": 5.9,
                                                          "copy_source/correct_score_mean": 8.7}}
    p = tmp_path / "ev.json"
    p.write_text(json.dumps(ev))
    c = main(["--rrm-eval", str(p), "--pairs", str(tmp_path / "none"), "--out", str(tmp_path / "claim.json")])
    assert c["rrm_with_ties"] == 0.53 and c["copy_source_margin"] == 2.8 and c["met"]["copy_source_margin"] is False
    assert c["met"]["rrm_strict_above_chance"] is False and c["gcpo_gain_z"] is None
    assert json.load(open(tmp_path / "claim.json"))["claim_shown"] is False
    with pytest.raises(SystemExit, match="rewarded by the RRM"):
        from edit_r1_claim import compose

        compose([], None, [dict(editor_line(0, 0.3, 2.4), scorer="oracle")], {})


def test_judges_on_the_editors_own_edits_are_recorded_by_name(tmp_path):
    from edit_r1_claim import main

    for name, acc in (("sft", 0.465), ("gcpo", 0.58)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"metrics": {
            "accuracy_with_ties": acc, "accuracy": acc - 0.2, "chance_strict": 0.33, "pairs": 186, "parse_rate": 0.95,
            "tie_rate": 0.3}, "pairs": [{"score_preferred": 7.0, "score_other": 2.0}] * (2 if name == "gcpo" else 1)}))
    c = main(["--editor-pairs-eval", f"sft={tmp_path}/sft.json", f"gcpo={tmp_path}/gcpo.json",
              "--pairs", str(tmp_path / "none")])
    got = c["rrm_on_editor_edits"]
    assert list(got) == ["sft", "gcpo"] and got["gcpo"]["with_ties"] == 0.58 and got["sft"]["pairs"] == 186
    assert got["gcpo"]["decided_right"] == 2 and got["sft"]["decided"] == 1   # the sign test, from the per-pair scores
    assert c["inputs"]["editor_pairs_eval"] == [f"sft={tmp_path}/sft.json", f"gcpo={tmp_path}/gcpo.json"]
    with pytest.raises(SystemExit, match="NAME=EVAL"):
        main(["--editor-pairs-eval", str(tmp_path / "sft.json"), "--pairs", str(tmp_path / "none")])


def test_rrm_compare_pairs_each_checkpoint_with_the_first_on_the_same_pairs():
    from rrm_compare import compare

    def out(scores):
        return {"model": "m", "metrics": {"accuracy_with_ties": 0.5},
                "pairs": [{"score_preferred": a, "score_other": b} for a, b in scores]}

    base = out([(5, 5), (5, 5), (1, 9), (5, 5)])      # tie, tie, loss, tie: credit 0.5, 0.5, 0, 0.5
    new = out([(9, 1), (5, 5), (9, 1), (None, 3)])    # win, tie, win, unscored: 1, 0.5, 1, 0
    r = compare({"base": base, "new": new})
    v = r["rrms"]["new"]["with_ties_vs_first"]
    assert v["up"] == 2 and v["down"] == 1 and v["diff"] == pytest.approx((0.5 + 0 + 1 - 0.5) / 4)
    assert "with_ties_vs_first" not in r["rrms"]["base"] and r["baseline"] == "base"
    with pytest.raises(SystemExit, match="not the same set"):
        compare({"base": base, "short": out([(1, 2)])})


def test_rrm_on_editor_edits_matches_edits_to_the_oracle_by_pair():
    from rrm_on_editor_edits import edits_of, per_edit

    rows = {"p0": {"score_a": 8.0, "score_b": 1.0, "preferred": "a"},
            "p1": {"score_a": 0.0, "score_b": 6.0, "preferred": "b"}}
    ev = {"pairs": [{"id": "p0", "score_preferred": 9.0, "score_other": 2.0},
                    {"id": "p1", "score_preferred": 7.0, "score_other": None}]}   # an unparsed edit is left out
    oracle, rrm = edits_of(ev, rows)
    assert oracle == [8.0, 1.0, 6.0] and rrm == [9.0, 2.0, 7.0]
    f = per_edit(oracle, rrm)
    assert f["edits"] == 3 and f["pearson_r"] > 0.99
    assert f["rrm_mean_by_oracle_band"] == {"0-0.5": None, "0.5-3": 2.0, "3-6": None, "6-10": 8.0}
    assert per_edit([1.0, 1.0, 1.0], [2.0, 5.0, 3.0])["pearson_r"] is None   # no spread: no r
    with pytest.raises(ValueError, match="not in the pairs set"):
        edits_of({"pairs": [{"id": "zz", "score_preferred": 1.0, "score_other": 2.0}]}, rows)


def test_sign_test_counts_only_the_pairs_the_judge_decides():
    from rrm_on_editor_edits import decided

    ev = {"pairs": [{"score_preferred": 7.0, "score_other": 3.0}, {"score_preferred": 5.0, "score_other": 5.0},
                    {"score_preferred": 2.0, "score_other": 4.0}, {"score_preferred": 9.0, "score_other": 1.0},
                    {"score_preferred": None, "score_other": 4.0}]}
    d = decided(ev)
    assert (d["decided"], d["decided_right"], d["decided_wrong"]) == (3, 2, 1)
    assert d["decided_z"] == pytest.approx(1 / 3 ** 0.5)
    assert decided({"pairs": [{"score_preferred": 1.0, "score_other": 1.0}]})["decided_z"] is None
