"""Edit-RRM training without Ray: T+V selection (teacher pool and column source), pairwise metrics with ties
and chance levels, GCPO driver maths (diagnostics, rank plans), weight buckets, data loaders (our pairs and
EditReward-Bench's layout), configs, and the SFT example matching the inference prompt token for token."""
import io
import math
import os

import numpy as np
import pytest

from edit_rlhf.rrm.format import format_verdict
from edit_rlhf.rrm.parse import parse_verdict

PR = [{"question": "Is the square red?", "category": "follow"},
      {"question": "Are the other shapes unchanged?", "category": "keep"},
      {"question": "Is the image sharp and free of noise?", "category": "quality"}]


def trace(checks, score, think="source: white background; red square. edited: white background; blue square."):
    return format_verdict([(p["question"], c) for p, c in zip(PR, checks)], score, think)


# ------------------------------------------------------------------------------------------------ selection
def test_select_one_prefers_agreement_then_average_then_score_and_ranks_garbage_last():
    from edit_rlhf.rrm_train.selection import select_one, summarize_selection

    gold = [1, 0, 1]
    cands = ["no verdict here", trace([1, 1, 1], 9), trace([1, 0, 1], 6), trace([1, 0, 0], 4)]
    s = select_one(cands, gold)
    assert s["index"] == 2 and s["accuracy"] == 1.0 and s["parsed"] == 3
    assert s["accuracies"] == [-1.0, pytest.approx(2 / 3), 1.0, pytest.approx(2 / 3)]
    # equal agreement: the higher average wins, then the higher score, then the lower index
    assert select_one([trace([0, 0, 1], 2), trace([1, 1, 1], 3)], [1, 0, 0])["index"] == 1
    assert select_one([trace([1, 0, 1], 5), trace([1, 0, 1], 7)], gold)["index"] == 1
    assert select_one([trace([1, 0, 1], 7), trace([1, 0, 1], 7)], gold)["index"] == 0
    fig = summarize_selection([s, select_one(["x", "y"], gold)])
    assert fig["rows"] == 2 and fig["unparsable_rows"] == 1 and fig["candidate_parse_rate"] == pytest.approx(3 / 6)
    assert fig["selected_accuracy"] == pytest.approx(0.5)  # 1.0 and (unparsable) 0


def test_teacher_pool_is_seeded_and_a_perfect_teacher_reproduces_the_oracle():
    from edit_rlhf.rrm_train.teacher import candidate_rng, checks_score, teacher_candidates

    oracle = trace([1, 0, 1], 5.0)
    a = teacher_candidates(oracle, PR, [1, 0, 1], 5.0, [0.0, 0.5, 0.5], candidate_rng(0, 3, "x"))
    b = teacher_candidates(oracle, PR, [1, 0, 1], 5.0, [0.0, 0.5, 0.5], candidate_rng(0, 3, "x"))
    assert a == b and len(a) == 3
    perfect = teacher_candidates(oracle, PR, [1, 0, 1], 5.0, [0.0], np.random.default_rng(0), lazy_prob=0.0,
                                 malformed_prob=0.0)[0]
    assert perfect == oracle
    lazy = parse_verdict(teacher_candidates(oracle, PR, [1, 0, 1], 5.0, [0.0], np.random.default_rng(0),
                                            lazy_prob=1.0, malformed_prob=0.0, score_jitter=0.0)[0], 3)
    assert lazy.checks == [1, 1, 1] and lazy.score == 10.0
    cut = teacher_candidates(oracle, PR, [1, 0, 1], 5.0, [0.0], np.random.default_rng(0), lazy_prob=0.0,
                             malformed_prob=1.0)[0]
    assert not parse_verdict(cut, 3).ok
    assert checks_score([0, 1, 1], ["follow", "keep", "quality"]) == pytest.approx(3.0)
    assert checks_score([1, 0, 0], ["follow", "keep", "quality"]) == pytest.approx(10 * 0.5 * 0.75)


def test_selection_stage_on_sandbox_traces_and_on_a_candidates_column(sandbox_dir, tmp_path):
    import datasets

    from edit_rlhf.config import load_config
    from edit_rlhf.config.rrm_train import RRMTraceSelectConfig
    from edit_rlhf.data.prompts import DatasetError
    from edit_rlhf.rrm_train.selection import run_selection

    out = str(tmp_path / "sel")
    cfg = load_config(RRMTraceSelectConfig, None, [f"input={sandbox_dir}/traces_train", f"output={out}"])
    fig = run_selection(cfg, quiet=True)
    ds = datasets.load_from_disk(out)
    assert fig["rows"] == 256 and fig["kept"] == len(ds) == 256 - fig["dropped_unparsable"]
    # verification helps: the chosen traces agree with gold more often than an unverified (first) candidate
    assert fig["selected_accuracy"] > fig["first_candidate_accuracy"] > fig["mean_candidate_accuracy"]
    r = ds[0]
    assert r["trace_text"] == r["candidate_traces"][r["selected_index"]]
    assert parse_verdict(r["trace_text"], len(r["principles"])).ok
    assert {"source_trace_text", "selection_accuracy", "edited_image", "checks"} <= set(ds.column_names)
    with pytest.raises(DatasetError, match="exists"):
        run_selection(cfg, quiet=True)
    # column source: real VLM-pool outputs with gold labels; a bad row names itself
    col = datasets.Dataset.from_dict({"id": ["a", "b"], "principles": [PR, PR], "checks": [[1, 0, 1], [0, 0, 1]],
                                      "candidate_traces": [[trace([1, 1, 1], 9), trace([1, 0, 1], 6)],
                                                           [trace([0, 0, 1], 1)]]})
    col.save_to_disk(str(tmp_path / "col"))
    c2 = load_config(RRMTraceSelectConfig, None, [f"input={tmp_path}/col", f"output={tmp_path}/col_sel",
                                                  "source=column"])
    fig2 = run_selection(c2, quiet=True)
    assert fig2["selected_accuracy"] == 1.0
    assert datasets.load_from_disk(f"{tmp_path}/col_sel")["selected_index"] == [1, 0]
    bad = col.map(lambda r, i: {"checks": [1] if i == 1 else r["checks"]}, with_indices=True)
    bad.save_to_disk(str(tmp_path / "bad"))
    c3 = load_config(RRMTraceSelectConfig, None, [f"input={tmp_path}/bad", f"output={tmp_path}/bad_sel",
                                                  "source=column"])
    with pytest.raises(DatasetError, match=r"row 1 \(id=b\): column 'checks'"):
        run_selection(c3, quiet=True)


# ------------------------------------------------------------------------------------------------ metrics
def test_pairwise_metrics_strict_with_ties_categories_and_chance():
    from edit_rlhf.rrm_train.metrics import avg_at_k, pair_outcome, pairwise_metrics

    sw = [8, 5, 5, None, 2]
    sl = [3, 5, 9, 4, 1]
    m = pairwise_metrics(sw, sl, ["x", "x", "y", "y", "y"])
    assert [pair_outcome(a, b) for a, b in zip(sw, sl)] == ["win", "tie", "loss", "unscored", "win"]
    assert m["accuracy"] == pytest.approx(2 / 5) and m["accuracy_with_ties"] == pytest.approx(2.5 / 5)
    assert m["tie_rate"] == pytest.approx(0.2) and m["unscored_rate"] == pytest.approx(0.2)
    assert m["category/x"] == 0.5 and m["category/y"] == pytest.approx(1 / 3)
    assert m["accuracy_macro"] == pytest.approx((0.5 + 1 / 3) / 2)
    vals = [8, 5, 5, 2, 3, 5, 9, 4, 1]  # P(tie) of two independent draws from this distribution
    p_tie = sum((vals.count(v) / 9) ** 2 for v in set(vals))
    assert m["chance_strict"] == pytest.approx((1 - p_tie) / 2) and m["chance_with_ties"] == 0.5
    vs = [parse_verdict(t, 3) for t in (trace([1, 1, 1], 9), "junk", trace([1, 0, 1], 6))]
    assert avg_at_k(vs) == pytest.approx(7.5)
    assert avg_at_k(vs[1:2]) is None and avg_at_k(vs[1:2], "lowest") == 0.0


# ------------------------------------------------------------------------------------------------ GCPO driver maths
def _rollout(k, sw, sl, n_tokens=5):
    from edit_rlhf.rrm.engine import Completion
    from edit_rlhf.rrm_train.gcpo import PairRollout, score_pair

    def comps(scores):
        return [Completion(trace([1, 0, 1], s) if s is not None else "junk", token_ids=list(range(n_tokens + j)),
                           logprobs=[-0.5] * (n_tokens + j), finish_reason="stop") for j, s in enumerate(scores)]

    return score_pair(PairRollout(k, "c", 2 * k, 2 * k + 1, comps(sw), comps(sl)), 3)


def test_gcpo_driver_rewards_diagnostics_and_zero_advantage_groups():
    from edit_rlhf.rrm_train.gcpo import step_diagnostics, trace_items

    p0 = _rollout(0, [8, 6], [5, 7])          # the paper's shape: A_w = [.25, -.25], A_l = [.25, -.25]
    p1 = _rollout(1, [9, 9], [1, 2])          # all-correct: zero advantage in both groups
    p2 = _rollout(2, [None, 8], [5, 0])       # a parse failure ('lowest')
    assert p0.adv["adv_w"] == pytest.approx([0.25, -0.25]) and p0.adv["adv_l"] == pytest.approx([0.25, -0.25])
    assert p2.scores_w == [None, 8.0] and p2.adv["adv_w"] == pytest.approx([-0.5, 0.5])
    items = trace_items([p0, p1, p2])
    assert len(items) == 12 and all(it["mask"] for it in items)
    m = step_diagnostics([p0, p1, p2], items)
    # groups: p0 w/l non-zero, p1 w/l zero, p2 w non-zero, p2 l zero -> 3 of 6
    assert m["adv/zero_group_fraction"] == pytest.approx(0.5) and m["adv/zero_pair_fraction"] == pytest.approx(1 / 3)
    assert m["trace/parse_failure_rate"] == pytest.approx(1 / 12)
    lens = [len(it["ids"]) for it in items]
    advs = [it["adv"] for it in items]
    assert m["adv/weighted"] == pytest.approx(np.mean([a / n for a, n in zip(advs, lens)]))
    assert m["adv/nonzero_traces"] == 6


def test_rank_plan_balances_ranks_skips_zero_advantage_and_keeps_the_denominator():
    from edit_rlhf.rrm_train.gcpo import rank_plan, trace_items

    items = trace_items([_rollout(0, [8, 6], [5, 7]), _rollout(1, [9, 9], [1, 2]), _rollout(2, [None, 8], [5, 0])])
    plan, totals = rank_plan(items, pairs_per_minibatch=2, world=2, micro=2, skip_zero=True)
    assert totals == [8, 4]  # participating traces of minibatch {p0, p1} and {p2}
    for mb in range(2):
        assert len(plan[0][mb]) == len(plan[1][mb])  # same number of forward/backward passes on every rank
    real = [it for r in plan for mb in r for mic in mb for it in mic if not it.get("dummy")]
    assert len(real) == 6 and all(it["adv"] != 0 for it in real)  # p1's zero-advantage traces are skipped
    assert all(len(mic) <= 2 for r in plan for mb in r for mic in mb)
    # without skipping every participating trace is trained; a minibatch of only zero groups is dropped
    plan2, totals2 = rank_plan(items, 3, 1, 4, skip_zero=False)
    assert totals2 == [12] and sum(len(m) for m in plan2[0][0]) == 12
    assert rank_plan(trace_items([_rollout(0, [9, 9], [1, 2])]), 1, 2, 4, True) == ([[], []], [])


# ------------------------------------------------------------------------------------------------ weight buckets
def test_weight_buckets_pack_by_dtype_split_at_the_bucket_size_and_round_trip():
    import pickle

    import torch

    from edit_rlhf.rrm_train.sync import WeightBuckets

    g = torch.Generator().manual_seed(0)
    named = {"a.weight": torch.randn(4, 8, generator=g), "b.bias": torch.randn(8, generator=g),
             "c.weight": torch.randn(16, 16, generator=g), "d.half": torch.randn(3, dtype=torch.float64)}
    wb = WeightBuckets(named, bucket_bytes=200 * 4, version=7)
    assert len(wb) == 4 and wb.version == 7 and sorted(wb.names()) == sorted(named)
    assert len(wb.buckets) == 3  # fp32: [a, b] (160 floats), [c] (256 > 200 alone); fp64: [d]
    wb2 = pickle.loads(pickle.dumps(wb))  # what Ray does with the object
    for k, v in wb2:
        assert torch.equal(v, named[k]) and v.shape == named[k].shape and v.dtype == named[k].dtype
    assert wb2.nbytes == sum(t.numel() * t.element_size() for t in named.values())


# ------------------------------------------------------------------------------------------------ data
def _png(rgb):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), rgb, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_pairs_loader_drops_ties_counts_them_and_names_bad_rows(tmp_path):
    import datasets

    from edit_rlhf.data.prompts import DatasetError
    from edit_rlhf.rrm_train.data import load_pairs

    img = datasets.Image()
    s = datasets.Value("string")
    feats = datasets.Features({"id": s, "source_image": img, "instruction": s,
                               "principles": datasets.List({"question": datasets.Value("string"),
                                                            "category": datasets.Value("string")}),
                               "image_a": img, "image_b": img, "preferred": datasets.Value("string"),
                               "category": datasets.Value("string")})
    rows = {"id": ["p0", "p1", "p2"], "source_image": [{"bytes": _png(0), "path": None}] * 3,
            "instruction": ["make it red"] * 3, "principles": [PR] * 3,
            "image_a": [{"bytes": _png(10), "path": None}] * 3, "image_b": [{"bytes": _png(200), "path": None}] * 3,
            "preferred": ["b", "same", "a"], "category": ["recolour", "recolour", "remove"]}
    datasets.Dataset.from_dict(rows, features=feats).save_to_disk(str(tmp_path / "pairs"))
    ps = load_pairs(str(tmp_path / "pairs"))
    assert len(ps) == 2 and ps.stats["ties_dropped"] == 1 and ps.categories() == ["recolour", "remove"]
    p = ps[0]
    assert p.winner[0, 0, 0] == 200 and p.loser[0, 0, 0] == 10 and p.source.shape == (16, 16, 3)
    rows["preferred"][2] = "left"
    datasets.Dataset.from_dict(rows, features=feats).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DatasetError, match=r"row 2 \(id=p2\): column 'preferred'"):
        load_pairs(str(tmp_path / "bad"))


def test_editreward_bench_loader_on_a_synthetic_file_in_its_layout(tmp_path):
    """EditScore's EditReward-Bench: key [id1, id2], instruction, input_image, output_images [preferred, other],
    task_type, dimension; as parquet under data/train-*.parquet (the hub layout)."""
    import datasets

    from edit_rlhf.data.prompts import DatasetError
    from edit_rlhf.rrm_train.data import GENERIC_PRINCIPLES, load_editreward_bench

    img = datasets.Image()
    feats = datasets.Features({"key": datasets.List(datasets.Value("string")), "instruction": datasets.Value("string"),
                               "input_image": img, "output_images": datasets.List(img),
                               "task_type": datasets.Value("string"), "dimension": datasets.Value("string")})
    rows = {"key": [["m1_0", "m2_0"], ["m1_0", "m2_0"], ["m3_1", "m1_1"]],
            "instruction": ["make the sky red"] * 2 + ["remove the cat"],
            "input_image": [{"bytes": _png(0), "path": None}] * 3,
            "output_images": [[{"bytes": _png(250), "path": None}, {"bytes": _png(5), "path": None}]] * 3,
            "task_type": ["color_alter", "color_alter", "subject-remove"],
            "dimension": ["overall", "prompt_following", "overall"]}
    (tmp_path / "bench" / "data").mkdir(parents=True)
    parquet = tmp_path / "bench" / "data" / "train-00000-of-00001.parquet"
    datasets.Dataset.from_dict(rows, features=feats).to_parquet(str(parquet))
    ps = load_editreward_bench(str(tmp_path / "bench"))
    assert len(ps) == 2 and ps.stats["other_dimension"] == 1
    assert ps.categories() == ["color_alter", "subject-remove"] and ps.rows[0]["id"] == "m1_0|m2_0|overall"
    p = ps[0]
    assert p.winner[0, 0, 0] == 250 and p.loser[0, 0, 0] == 5 and p.principles == GENERIC_PRINCIPLES
    both = load_editreward_bench(str(tmp_path / "bench"), dimensions=["overall", "prompt_following"])
    assert both.categories() == ["overall/color_alter", "prompt_following/color_alter", "overall/subject-remove"]
    assert [(r["dimension"], r["task_type"]) for r in both.rows][1] == ("prompt_following", "color_alter")
    with pytest.raises(DatasetError, match="principles"):
        load_editreward_bench(str(tmp_path / "bench"), generic_principles=False)
    with pytest.raises(DatasetError, match="no validation-"):
        load_editreward_bench(str(tmp_path / "bench"), split="validation")


# ------------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("schema,overrides,key", [
    ("RRMGCPOConfig", ["model.path=x", "data.train=y", "algo.group_size=1"], "algo.group_size"),
    ("RRMGCPOConfig", ["model.path=x", "data.train=y", "algo.failure=ignore"], "algo.failure"),
    ("RRMGCPOConfig", ["model.path=x", "data.train=y", "algo.pairs_per_step=6", "algo.num_minibatches=4"],
     "algo.num_minibatches"),
    ("RRMSFTConfig", ["model.path=x", "data.train=y", "batch_size=15", "learner.size=2"], "batch_size"),
    ("RRMSFTConfig", ["model.path=x", "data.train=y", "model.mode=qlora"], "model.mode"),
    ("RRMEvalConfig", ["data.path=x", "engine.path=m", "data.format=csv"], "data.format"),
    ("RRMGCPOConfig", ["data.train=y"], "model.path"),
])
def test_configs_reject_bad_values_naming_the_key(schema, overrides, key):
    from edit_rlhf.config import ConfigError, load_config
    from edit_rlhf.config import rrm_train

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(getattr(rrm_train, schema), None, overrides)


def test_shipped_configs_load():
    from conftest import ROOT

    from edit_rlhf.config import load_config
    from edit_rlhf.config.rrm_train import RRMEvalConfig, RRMGCPOConfig, RRMSFTConfig, RRMTraceSelectConfig

    for schema, name in ((RRMTraceSelectConfig, "rrm_traces_sandbox"), (RRMSFTConfig, "rrm_sft_sandbox"),
                         (RRMGCPOConfig, "rrm_gcpo_sandbox"), (RRMEvalConfig, "eval_rrm_sandbox")):
        cfg = load_config(schema, f"{ROOT}/configs/{name}.yaml")
        assert cfg is not None
    g = load_config(RRMGCPOConfig, f"{ROOT}/configs/rrm_gcpo_sandbox.yaml")
    assert g.algo.beta == 0.0 and not g.algo.std_norm and g.rollout.temperature > 0
    # the shipped RRM writes comparing traces of up to ~300 tokens: the sandbox configs must not cut them
    assert g.rollout.max_tokens >= 320 and g.eval.sampling.max_tokens >= 320
    assert load_config(RRMEvalConfig, f"{ROOT}/configs/eval_rrm_sandbox.yaml").eval.sampling.max_tokens >= 320
    for name in ("rrm_sft_sandbox_vision", "rrm_sft_sandbox_compare"):
        cfg = load_config(RRMSFTConfig, f"{ROOT}/configs/{name}.yaml")
        assert cfg.model.freeze_vision and cfg.steps == 1500
    assert "cmp" in cfg.data.train and "cmp" in cfg.data.eval and cfg.eval.max_tokens >= 320  # the compare config


# ------------------------------------------------------------------------------------------------ SFT examples
def test_sft_example_is_the_inference_prompt_plus_the_trace_with_loss_on_the_trace_only(tiny_models, sandbox_dir):
    from edit_rlhf.rrm.prompt import RRMPrompt
    from edit_rlhf.rrm_train.data import TraceDataset, chat_example
    from edit_rlhf.rrm_train.gcpo_learner import PromptCache
    from edit_rlhf.rrm.engine import GenRequest
    from edit_rlhf.vlm.chat import IGNORE, collate

    ds = TraceDataset(f"{sandbox_dir}/traces_train")
    r = ds.row(0)
    prompt = RRMPrompt.from_path(tiny_models["rrm"], "compact")
    batch = collate(prompt.processor, [chat_example(r["instruction"], r["principles"], r["source_image"],
                                                    r["edited_image"], r["trace_text"])])
    enc = PromptCache(prompt.processor, [GenRequest(prompt.text(r["instruction"], r["principles"]),
                                                    [r["source_image"], r["edited_image"]])])(0)
    p = enc["input_ids"].shape[1]
    ids = batch["input_ids"][0]
    assert ids[:p].tolist() == enc["input_ids"][0].tolist()  # SFT sees exactly the prompt the engines see
    labels = batch["labels"][0]
    assert (labels[:p] == IGNORE).all()
    tok = prompt.processor.tokenizer
    answer = tok.decode(labels[labels != IGNORE].tolist())
    assert answer == r["trace_text"] + "<|im_end|>"


# ------------------------------------------------------------------------------------------------ benchmark stats
def test_paired_with_ties_change_counts_ties_half_and_unscored_as_losses():
    import os
    import sys

    from conftest import ROOT

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from learn_rrm_gcpo import paired_with_ties

    before = [(5.0, 3.0), (2.0, 2.0), (1.0, 4.0), (None, 3.0)]   # win, tie, loss, unscored: 1, 1/2, 0, 0
    after = [(5.0, 3.0), (3.0, 2.0), (2.0, 2.0), (4.0, 3.0)]     # 1, 1, 1/2, 1
    r = paired_with_ties(before, after)
    assert r["pairs"] == 4 and r["up"] == 3 and r["down"] == 0
    assert r["mean_change"] == pytest.approx(0.5)
    assert r["z"] == pytest.approx(0.5 / (math.sqrt(1 / 6) / 2))   # mean / (sd / sqrt(n)), sd of (0, .5, .5, 1)
    same = paired_with_ties(before, before)
    assert same["mean_change"] == 0.0 and same["z"] == 0.0 and same["up"] == same["down"] == 0


def test_oracle_pairwise_metrics_counts_flipped_labels_against_the_oracle():
    from edit_rlhf.rrm_train.metrics import against_chance_and_oracle, oracle_pairwise_metrics

    rows = [{"preferred": "a", "score_a": 9.0, "score_b": 2.0},   # oracle agrees
            {"preferred": "b", "score_a": 1.0, "score_b": 7.5},   # agrees
            {"preferred": "a", "score_a": 3.0, "score_b": 8.0},   # a flipped label: the oracle is "wrong"
            {"preferred": "b", "score_a": 5.0, "score_b": 5.0}]   # equal oracle scores: a tie
    m = oracle_pairwise_metrics(rows)
    assert m["pairs"] == 4 and m["accuracy"] == 0.5 and m["accuracy_with_ties"] == 0.625 and m["tie_rate"] == 0.25
    with pytest.raises(ValueError, match="pair row 1"):
        oracle_pairwise_metrics([rows[0], {"preferred": "same", "score_a": 1.0, "score_b": 2.0}])
    r = against_chance_and_oracle(0.7, 0.5, 0.9)
    assert r["of_headroom"] == pytest.approx(0.5) and r["oracle"] == 0.9
    assert "of_headroom" not in against_chance_and_oracle(0.7, 0.5, None)


def test_copy_source_probe_scores_each_source_once_against_the_correct_sides(sandbox_dir):
    """The probe submits every distinct (instruction, source) as its own edit, once; the margin is the mean score of
    the `correct` sides minus the copies' mean; an unparsable copy is left out of the mean and counted."""
    from edit_rlhf.rrm.engine import Completion
    from edit_rlhf.rrm.format import format_verdict
    from edit_rlhf.rrm_train.data import load_pairs
    from edit_rlhf.rrm_train.evaluate import copy_source_probe, correct_edit_scores, distinct_sources
    from edit_rlhf.rrm_train.metrics import copy_source_margin

    class FakePrompt:
        def text(self, instruction, principles):
            return instruction

    pairs = load_pairs(os.path.join(sandbox_dir, "pairs_eval")).head(40)
    sources = distinct_sources(pairs)
    assert 1 < len(sources) < len(pairs)  # pairs of one prompt share their source
    assert all("grades" in r for r in pairs.rows)
    scores = [(9.0, 1.0)] * len(pairs)
    correct = correct_edit_scores(pairs, scores)
    n_correct = sum(g == "correct" for r in pairs.rows for g in r["grades"])
    assert len(correct) == n_correct > 0
    seen = []

    def generate(reqs, spec, timeout_s):
        seen.extend(reqs)
        outs = []
        for j, r in enumerate(reqs):
            assert np.array_equal(np.asarray(r.images[0]), np.asarray(r.images[1]))  # the source as its own edit
            n = len(sources[j][1].principles)
            text = "garbage" if j == 0 else format_verdict([(f"q{i}", 0) for i in range(n)], 2.0)
            outs.append([Completion(text)])
        return outs, {0}

    from edit_rlhf.config.rrm_train import PairEvalConfig

    e = PairEvalConfig()
    m = copy_source_probe(generate, FakePrompt(), pairs, scores, e.sampling)
    assert len(seen) == len(sources)
    exp = 9.0 * sum(r["grades"][0] == "correct" for r in pairs.rows) / n_correct \
        + 1.0 * sum(r["grades"][1] == "correct" for r in pairs.rows) / n_correct - 2.0
    assert m["copy_source/n"] == len(sources) and m["copy_source/unscored"] == 1
    assert m["copy_source/score_mean"] == 2.0 and m["copy_source/margin"] == pytest.approx(exp)
    assert copy_source_margin([None], [5.0]) == {"n": 1, "unscored": 1, "correct_n": 1, "correct_score_mean": 5.0}
    assert copy_source_margin([10.0, 0.0], [8.0])["scored_10"] == 0.5


def test_trace_diagnosis_splits_checks_by_whether_the_judge_saw_right():
    from edit_rlhf.rrm_train.metrics import trace_diagnosis

    def trace(obs, checks, score):
        return format_verdict([(f"q{i}", c) for i, c in enumerate(checks)], score, obs)

    seen = "source: red circle. edited: blue circle."
    gold = trace(seen, [1, 1], 10)
    replies = [trace(seen, [1, 1], 10),                                # saw and compared right
               trace(seen, [1, 0], 5),                                 # saw right, compared wrong
               trace("source: red circle. edited: red circle.", [1, 1], 10),  # saw wrong (edited part)
               "garbage"]                                              # unparsable: wrong checks, wrong observation
    d = trace_diagnosis(replies, [gold] * 4, [[1, 1]] * 4, ["correct", "correct", "partial", "partial"], [2] * 4)
    assert list(d) == ["all", "correct", "partial"]
    a = d["all"]
    assert a["observation_exact"] == {"n": 4, "rate": 0.5}
    assert a["source_exact"]["rate"] == 0.75                 # the wrong observation still had the right source part
    assert a["checks_exact"] == {"n": 4, "rate": 0.5}
    assert a["checks_exact_if_seen"] == {"n": 2, "rate": 0.5}
    assert a["checks_exact_if_not_seen"] == {"n": 2, "rate": 0.5}
    assert d["correct"]["checks_exact_if_seen"] == {"n": 2, "rate": 0.5} and "checks_exact_if_not_seen" not in d["correct"]
    assert "compare_exact" not in a                          # gold traces without a comparison line
    with pytest.raises(ValueError, match="differ in length"):
        trace_diagnosis(replies, [gold], [[1, 1]], ["x"], [2])
    # traces with a comparison line under the observation: was it right, and did the checks follow from it?
    cmp = seen + "\nsource to edited: circle red to blue, not same."
    gold = trace(cmp, [1, 1], 10)
    replies = [gold, trace(cmp, [0, 1], 5), trace(seen + "\nsource to edited: circle red to blue, same.", [1, 1], 10)]
    d = trace_diagnosis(replies, [gold] * 3, [[1, 1]] * 3, ["a"] * 3, [2] * 3)["all"]
    assert d["observation_exact"]["rate"] == 1.0
    assert d["compare_exact"] == {"n": 3, "rate": pytest.approx(2 / 3)}
    assert d["checks_exact_if_compared"] == {"n": 2, "rate": 0.5}


def test_verdict_token_weights_mark_each_check_value_and_the_score():
    import torch
    from transformers import AutoProcessor

    from edit_rlhf.rrm_train.data import verdict_token_weights
    from edit_rlhf.vlm.chat import IGNORE

    tok = AutoProcessor.from_pretrained("models/sandbox/rrm_sft").tokenizer
    answer = trace([1, 0, 1], 7.5)
    ids = tok.encode("prompt words " + answer, add_special_tokens=False)
    n_prompt = len(tok.encode("prompt words ", add_special_tokens=False))
    labels = torch.tensor([[IGNORE] * n_prompt + ids[n_prompt:] + [IGNORE] * 2])
    w = verdict_token_weights(tok, labels, 10.0)
    assert torch.equal(verdict_token_weights(tok, labels, 1.0), (labels != IGNORE).float())
    assert (w[labels == IGNORE] == 0).all()
    heavy = "".join(tok.decode([int(labels[0, j])]) for j in (w[0] == 10.0).nonzero().flatten())
    assert heavy == "1017.5"            # three checks, then the score's digits; nothing else
    assert int((w[0] == 1.0).sum()) == int((labels != IGNORE).sum()) - (w[0] == 10.0).sum()
