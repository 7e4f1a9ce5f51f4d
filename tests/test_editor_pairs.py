"""Preference pairs of the editor's own edits (`edit-rlhf sandbox editor-pairs`): pair selection, labels, the
pairs schema GCPO loads, mixing with the stock pairs, and refusals."""
import json
import os

import numpy as np
import pytest


def test_select_pairs_skips_ties_and_caps_per_prompt():
    from edit_rlhf.pipelines.sandbox_base.editor_pairs import select_pairs

    scores = [1.0, 1.2, 5.0, 9.0]   # (0, 1) is a tie at gap 0.5; the other five pairs are not
    pairs, ties = select_pairs(scores, np.random.default_rng(0), k=10, min_gap=0.5)
    assert ties == 1 and len(pairs) == 5 and (0, 1) not in pairs
    assert all(i < j and abs(scores[i] - scores[j]) >= 0.5 for i, j in pairs)
    few, _ = select_pairs(scores, np.random.default_rng(0), k=2, min_gap=0.5)
    assert len(few) == 2 and set(few) <= set(pairs)
    none, ties = select_pairs([3.0, 3.1, 3.2], np.random.default_rng(0), k=2, min_gap=0.5)
    assert none == [] and ties == 3


def test_pair_row_prefers_the_higher_score_unless_flipped():
    from edit_rlhf.pipelines.sandbox_base.editor_pairs import pair_row

    args = ("p-1", 3, b"src", "make it red", [{"question": "q?", "category": "follow"}], b"A", b"B")
    assert pair_row(*args, 2.0, 7.5, False)["preferred"] == "b"
    flipped = pair_row(*args, 2.0, 7.5, True)
    assert flipped["preferred"] == "a" and flipped["label_flipped"] is True
    assert flipped["id"] == "editor-pair-000003" and flipped["grade_a"] == flipped["grade_b"] == "editor"


@pytest.mark.parametrize("bad", ["samples=1", "n_prompts=0", "label_noise=0.7", "min_gap=-1", "start=-2"])
def test_config_refuses_bad_values(bad):
    from edit_rlhf.config import load_config
    from edit_rlhf.pipelines.sandbox_base.editor_pairs import EditorPairsConfig

    with pytest.raises(Exception) as e:
        load_config(EditorPairsConfig, None, [bad])
    assert bad.split("=")[0] in str(e.value)


@pytest.mark.integration
def test_build_editor_pairs_gives_gcpo_pairs_of_real_editor_edits(sandbox_dir, tmp_path):
    from edit_rlhf.rrm_train.data import load_pairs
    from edit_rlhf.pipelines.sandbox_base.editor_pairs import EditorPairsConfig, build_editor_pairs

    out = str(tmp_path / "ep")
    cfg = EditorPairsConfig(prompts=f"{sandbox_dir}/prompts_train", start=2, n_prompts=6, samples=4,
                            pairs_per_prompt=2, min_gap=0.5, label_noise=0.0,
                            mix_with=f"{sandbox_dir}/pairs_train", mix_size=5,
                            traces_out=str(tmp_path / "tr"), traces_mix_with=f"{sandbox_dir}/traces_train",
                            traces_mix_size=3)
    m = build_editor_pairs(out, cfg, quiet=True)
    # one oracle trace per sampled edit (comparing, parseable, its score the pair's score), then the mixed rows
    from edit_rlhf.rrm.parse import parse_verdict
    from edit_rlhf.rrm_train.data import TraceDataset

    assert m["traces"] == 24 and m["traces_mixed_rows"] == 3 and len(TraceDataset(str(tmp_path / "tr"))) == 27
    import datasets

    tr = datasets.load_from_disk(str(tmp_path / "tr")).remove_columns(["source_image", "edited_image"])
    ed_tr = [r for r in tr if r["grade"] == "editor"]
    assert len(ed_tr) == 24 and all("\nsource to edited: " in r["trace_text"] for r in ed_tr)
    assert all(parse_verdict(r["trace_text"]).ok and abs(parse_verdict(r["trace_text"]).score - r["oracle_score"]) <= 0.05
               for r in ed_tr)
    assert m["prompts"] == 6 and m["edits"] == 24 and m["oracle_failed"] == 0
    assert 1 <= m["pairs"] <= 12 and m["mixed_rows"] == 5 and m["rows"] == m["pairs"] + 5
    # every (prompt) pair combination is either a pair, a tie, or beyond the per-prompt cap
    assert m["ties_skipped"] <= 6 * 6
    assert json.load(open(os.path.join(out, "editor_pairs.json")))["pairs"] == m["pairs"]
    ps = load_pairs(out)
    assert len(ps) == m["rows"]
    import datasets

    d = datasets.load_from_disk(out).remove_columns(["source_image", "image_a", "image_b"])
    ed = [r for r in d if r["grade_a"] == "editor"]
    assert len(ed) == m["pairs"]
    for r in ed:   # label noise 0: the oracle's higher score is always preferred, by at least min_gap
        hi = "a" if r["score_a"] > r["score_b"] else "b"
        assert r["preferred"] == hi and abs(r["score_a"] - r["score_b"]) >= 0.5
        assert r["prompt_id"].startswith("train-") and int(r["prompt_id"].split("-")[1]) in range(2, 8)
    with pytest.raises(ValueError, match="already exists"):
        build_editor_pairs(out, cfg, quiet=True)
    with pytest.raises(ValueError, match=r"mix_with=.*missing column.*'image_a'.* of the pairs schema"):
        build_editor_pairs(str(tmp_path / "ep3"), EditorPairsConfig(prompts=f"{sandbox_dir}/prompts_train", start=0,
                                                                     n_prompts=2, min_gap=0.0,
                                                                     mix_with=f"{sandbox_dir}/prompts_train"),
                           quiet=True)
    with pytest.raises(ValueError, match="n_prompts"):
        build_editor_pairs(str(tmp_path / "ep2"), EditorPairsConfig(prompts=f"{sandbox_dir}/prompts_train",
                                                                     start=60, n_prompts=10), quiet=True)
