"""Soft RRM scores (`sampling.score_from`): the probability-weighted score and the soft checks read from the
log-probs of the verdict's tokens, their fallbacks, the reward scorer's and the pair evaluation's use of them, the
engines' `top_logprobs`, and the shipped sandbox RRM on real sandbox edits (its tokenizer, its verdicts)."""
import math
import re

import numpy as np
import pytest

from edit_rlhf.rrm.engine import Completion, SamplingSpec, merge_alternatives
from edit_rlhf.rrm.format import format_verdict
from edit_rlhf.rrm.parse import parse_verdict
from edit_rlhf.rrm.soft import SCORE_SOURCES, check_probabilities, expected_score, soft_score

QUESTIONS = ["Is the square red?", "Is the background unchanged?", "Is the image sharp and free of noise?"]


def tokens(text):
    """A digit-by-digit tokenisation (as Qwen2's pre-tokenizer splits numbers): words, single digits, other chars."""
    return re.findall(r"[A-Za-z_]+|[0-9]|\s+|[^A-Za-z0-9_\s]", text)


def completion(text, alternatives=None, texts=None):
    """A Completion whose every token was certain, except at the (token index -> {text: p}) `alternatives`."""
    toks = texts or tokens(text)
    top = [{t: 0.0} for t in toks]
    for i, alts in (alternatives or {}).items():
        top[i] = {t: math.log(p) for t, p in alts.items()}
    return Completion(text=text, token_ids=list(range(len(toks))), token_texts=toks, top_logprobs=top)


def index_of(toks, char_pos):
    pos = 0
    for i, t in enumerate(toks):
        if pos <= char_pos < pos + len(t):
            return i
        pos += len(t)
    raise AssertionError(char_pos)


def test_expected_score_weights_the_number_candidates_at_the_scores_first_token():
    text = format_verdict(list(zip(QUESTIONS, [1, 1, 0])), 7.5, "source: x. edited: y.")
    toks = tokens(text)
    i = index_of(toks, text.index("<score>") + len("<score>"))
    assert toks[i] == "7"
    c = completion(text, {i: {"7": 0.6, "8": 0.3, "<": 0.1}})  # "<" is no number: left out of the weights
    v = parse_verdict(text, n_expected=3)
    # the written token is worth the written score (7.5), the other candidate its own number
    assert expected_score(c, v) == pytest.approx((0.6 * 7.5 + 0.3 * 8) / 0.9)
    assert soft_score(c, v, "expected") == (pytest.approx((0.6 * 7.5 + 0.3 * 8) / 0.9), True)
    assert soft_score(c, v, "text") == (7.5, False)
    # a certain score token gives the written score
    assert expected_score(completion(text), v) == pytest.approx(7.5)
    # an unclosed `<score>` after the verdict is not the score the parser reads, nor the one weighted here
    tail = text + "\n<score>3"
    c2 = completion(tail, {i: {"7": 0.5, "9": 0.5}, len(tokens(tail)) - 1: {"3": 0.5, "0": 0.5}})
    v2 = parse_verdict(tail, n_expected=3)
    assert v2.score == 7.5 and expected_score(c2, v2) == pytest.approx((0.5 * 7.5 + 0.5 * 9))


def test_check_probabilities_read_each_checks_value_token():
    text = format_verdict(list(zip(QUESTIONS, [1, 0, 1])), 4, "source: x. edited: y.")
    toks = tokens(text)
    values = [m.start(1) for m in re.finditer(r'"score": ([01])', text)]
    assert len(values) == 3
    alts = {index_of(toks, values[0]): {"1": 0.8, "0": 0.2}, index_of(toks, values[1]): {"0": 0.7, "1": 0.3}}
    v = parse_verdict(text, n_expected=3)
    c = completion(text, alts)
    assert check_probabilities(c, v) == pytest.approx([0.8, 0.3, 1.0])
    assert soft_score(c, v, "checks") == (pytest.approx(10 * (0.8 + 0.3 + 1.0) / 3), True)
    # `average_score` is not a check, and the think text may say "score" too without moving the positions
    text2 = format_verdict(list(zip(QUESTIONS, [1, 0, 1])), 4, 'source: x. edited: y with "score": 0 written on it.')
    toks2 = tokens(text2)
    values2 = [m.start(1) for m in re.finditer(r'"score": ([01])', text2)][-3:]
    c2 = completion(text2, {index_of(toks2, values2[1]): {"0": 0.5, "1": 0.5}})
    assert check_probabilities(c2, parse_verdict(text2, n_expected=3)) == pytest.approx([1.0, 0.5, 1.0])


def test_soft_scores_break_the_tie_of_two_identical_greedy_verdicts():
    text = format_verdict(list(zip(QUESTIONS, [1, 1, 1])), 10, "source: x. edited: y.")
    toks = tokens(text)
    v = parse_verdict(text, n_expected=3)
    first = index_of(toks, text.index('"score": 1') + len('"score": '))
    sure, unsure = completion(text, {first: {"1": 0.95, "0": 0.05}}), completion(text, {first: {"1": 0.55, "0": 0.45}})
    assert soft_score(sure, v, "text")[0] == soft_score(unsure, v, "text")[0] == 10.0
    assert soft_score(sure, v, "checks")[0] > soft_score(unsure, v, "checks")[0]


def test_fallbacks_unparsed_and_positions_with_non_ascii_tokens():
    text = format_verdict(list(zip(QUESTIONS, [1, 0, 0])), 2, "source: x. edited: y.")
    v = parse_verdict(text, n_expected=3)
    bare = Completion(text=text)  # the engine was not asked for top_logprobs
    assert soft_score(bare, v, "expected") == (2.0, False)
    assert soft_score(bare, v, "checks") == (pytest.approx(10 / 3), False)  # the written checks, soft scale
    bad = parse_verdict("no verdict", n_expected=3)
    assert soft_score(completion("no verdict"), bad, "checks") == (None, False)
    with pytest.raises(ValueError, match="score_from"):
        soft_score(bare, v, "mean")
    # a byte-level token of a non-ASCII character decodes to U+FFFD: positions follow the tokens, not the text
    think = "source: caf\u00e9. edited: y."
    text3 = format_verdict(list(zip(QUESTIONS, [0, 1, 1])), 6, think)
    toks3 = [t if t != "\u00e9" else "\ufffd\ufffd" for t in tokens(text3)]
    joined = "".join(toks3)
    first = index_of(toks3, joined.index('"score": 0') + len('"score": '))
    assert toks3[first] == "0"
    c3 = completion(text3, {first: {"0": 0.6, "1": 0.4}}, texts=toks3)
    assert check_probabilities(c3, parse_verdict(text3, n_expected=3)) == pytest.approx([0.4, 1.0, 1.0])


def test_alternatives_are_kept_where_a_token_holds_a_digit():
    from edit_rlhf.rrm.engine import keeps_alternatives

    assert keeps_alternatives("7") and keeps_alternatives(" 10") and keeps_alternatives('":1')
    assert not keeps_alternatives(" score") and not keeps_alternatives("")
    assert keeps_alternatives(" score", "all")
    with pytest.raises(ValueError, match="top_logprobs_at"):
        keeps_alternatives("7", "digit")


def test_merge_alternatives_adds_tokens_of_the_same_text():
    m = merge_alternatives([("1", math.log(0.2)), (" 1", math.log(0.1)), ("1", math.log(0.3))])
    assert math.exp(m["1"]) == pytest.approx(0.5) and math.exp(m[" 1"]) == pytest.approx(0.1)


def test_aggregate_and_avg_at_k_use_the_soft_source():
    from edit_rlhf.rewards.rrm import aggregate
    from edit_rlhf.rrm_train.metrics import avg_at_k

    text = format_verdict(list(zip(QUESTIONS, [1, 0, 1])), 4, "source: x. edited: y.")
    toks = tokens(text)
    v = parse_verdict(text, n_expected=3)
    first = index_of(toks, text.index('"score": 1') + len('"score": '))
    c = completion(text, {first: {"1": 0.5, "0": 0.5}})
    res = aggregate([v, v], [c, Completion(text=text)], score_from="checks")
    soft = 10 * (0.5 + 0 + 1) / 3
    assert res.reward == pytest.approx((soft + 10 * 2 / 3) / 2)  # the second sample fell back to its written checks
    assert res.detail["score"] == 4.0 and res.detail["soft_rate"] == 0.5
    assert aggregate([v], [c]).reward == 4.0  # text: the written score
    assert avg_at_k([v], "drop", [c], "checks") == pytest.approx(soft)
    with pytest.raises(ValueError, match="one completion per verdict"):
        avg_at_k([v], "drop", None, "expected")
    with pytest.raises(ValueError, match="one completion per verdict"):  # the reward path says the same
        aggregate([v, v], [c], score_from="expected")


def test_config_validates_score_from_and_asks_the_engine_for_alternatives():
    from edit_rlhf.config.rrm import SCORE_SOURCES as CONFIG_SOURCES
    from edit_rlhf.config.rrm import RRMSamplingConfig

    assert tuple(CONFIG_SOURCES) == tuple(SCORE_SOURCES)
    with pytest.raises(ValueError, match="score_from"):
        RRMSamplingConfig(score_from="mean").check()
    with pytest.raises(ValueError, match="top_logprobs"):
        RRMSamplingConfig(score_from="checks", top_logprobs=1).check()
    assert SamplingSpec.from_config(RRMSamplingConfig()).top_logprobs == 0
    assert SamplingSpec.from_config(RRMSamplingConfig(score_from="expected", top_logprobs=7)).top_logprobs == 7


def test_hf_engine_returns_the_most_likely_tokens_of_every_position(tiny_models, sandbox_dir):
    """The random tiny RRM on the HF backend: per generated token its text and the top-k {text: log-prob}, which
    hold the greedy token as the most likely one and sum to at most 1."""
    from edit_rlhf.config.rrm import RRMScorerConfig
    from edit_rlhf.data.prompts import EditPromptDataset
    from edit_rlhf.rrm.backend import build_engine
    from edit_rlhf.rrm.engine import GenRequest
    from edit_rlhf.rrm.prompt import RRMPrompt

    cfg = RRMScorerConfig(path=tiny_models["rrm"], backend="hf")
    eng = build_engine(cfg, 1, seed=0)
    r = EditPromptDataset(f"{sandbox_dir}/prompts_train").row(0)
    req = GenRequest(RRMPrompt.from_path(tiny_models["rrm"], "compact").text(r["instruction"], r["principles"]),
                     [r["source_image"], r["target_image"]])
    c = eng.generate([req], SamplingSpec(max_tokens=12, logprobs=True, top_logprobs=5, top_logprobs_at="all"))[0][0]
    assert len(c.token_texts) == len(c.top_logprobs) == len(c.token_ids) == len(c.logprobs) > 0
    for t, lp, top in zip(c.token_texts, c.logprobs, c.top_logprobs):
        assert t in top and top[t] >= lp - 1e-5  # the greedy token's text carries at least its own probability
        assert max(top.values()) == pytest.approx(top[t], abs=1e-5)  # ... and is the most likely text
        assert sum(math.exp(x) for x in top.values()) <= 1 + 1e-4
    plain = eng.generate([req], SamplingSpec(max_tokens=12))[0][0]
    assert plain.top_logprobs is None and plain.token_ids == c.token_ids
    # the default keeps them only where a token holds a digit (all a soft score reads): {} elsewhere
    d = eng.generate([req], SamplingSpec(max_tokens=12, top_logprobs=5))[0][0]
    assert d.token_ids == c.token_ids and len(d.top_logprobs) == len(c.top_logprobs)
    for t, full, kept in zip(c.token_texts, c.top_logprobs, d.top_logprobs):
        assert kept == (full if any(ch.isdigit() for ch in t) else {})


@pytest.mark.integration
def test_shipped_rrm_soft_scores_on_sandbox_edits(sandbox_dir):
    """The shipped sandbox SFT RRM (its real tokenizer and verdicts) on sandbox candidate edits through the reward
    scorer: every parsed verdict's score and check tokens are found (soft_rate 1), the soft scores stay on the
    0-10 scale, `expected` stays near the written score, and they tell apart edits the written score ties."""
    import datasets

    from edit_rlhf.config.rrm import RRMScorerConfig
    from edit_rlhf.data.images import decode_image
    from edit_rlhf.data.prompts import EditPromptDataset
    from edit_rlhf.rewards.rrm import RRMScorer

    from conftest import ROOT

    ds = EditPromptDataset(f"{sandbox_dir}/prompts_train")
    cands = datasets.load_from_disk(f"{sandbox_dir}/candidates").cast_column("edited_image", datasets.Image(decode=False))
    by_prompt = {}
    for c in cands:
        by_prompt.setdefault(c["prompt_id"], []).append(decode_image(c["edited_image"]))
    rows = [ds.row(k) for k in range(3)]
    groups = [np.stack(by_prompt[r["id"]]) for r in rows]  # 3 prompts x their graded candidates
    results = {}
    for source in ("expected", "checks"):
        cfg = RRMScorerConfig(path=f"{ROOT}/models/sandbox/rrm_sft", backend="hf")
        cfg.prompt.style = "compact"
        cfg.sampling.max_tokens = 384
        cfg.sampling.score_from = source
        results[source] = [r for g in RRMScorer(cfg, threads=2).score_groups(rows, groups) for r in g]
    n = sum(len(g) for g in groups)
    ok = [i for i in range(n) if results["checks"][i].ok and results["expected"][i].ok]
    assert n >= 9 and len(ok) >= n - 2
    for source in ("expected", "checks"):
        for i in ok:
            d = results[source][i].detail
            assert d["soft_rate"] == 1.0 and 0.0 <= results[source][i].reward <= 10.0
    assert np.mean([abs(results["expected"][i].reward - results["expected"][i].detail["score"]) for i in ok]) < 2.0
    written = [results["checks"][i].detail["score"] for i in ok]
    soft = [results["checks"][i].reward for i in ok]
    assert len(set(np.round(soft, 6))) > len(set(written))  # fewer ties than the written scores


def test_gcpo_groups_compared_on_soft_scores_keep_the_advantages_ties_would_zero():
    """GCPO's `algo.score_from`: four traces that all write 10 for the preferred image and 10 for the other give
    every trace A = 0 on the written scores; read from the score token's alternatives the groups separate, and the
    trace that is surer of the preferred image's 10 gets the positive advantage."""
    from edit_rlhf.config.rrm_train import GCPOAlgoConfig
    from edit_rlhf.rrm_train.gcpo import PairRollout, score_pair

    text = format_verdict(list(zip(QUESTIONS, [1, 1, 1])), 10, "source: x. edited: y.")
    toks = tokens(text)
    i = index_of(toks, text.index("<score>") + len("<score>"))

    def comp(p10):
        c = completion(text, {i: {"1": p10, "5": 1 - p10}})  # "1" (of "10") stands for 10 where it was written
        c.logprobs, c.finish_reason = [0.0] * len(c.token_ids), "stop"
        return c

    def roll(source):
        return score_pair(PairRollout(0, "c", 0, 1, [comp(0.9), comp(0.7)], [comp(0.8), comp(0.5)]), 3,
                          score_from=source)

    flat = roll("text")
    assert flat.scores_w == flat.scores_l == [10.0, 10.0] and not any(flat.adv["adv_w"] + flat.adv["adv_l"])
    soft = roll("expected")
    assert soft.scores_w == pytest.approx([0.9 * 10 + 0.1 * 5, 0.7 * 10 + 0.3 * 5])
    assert soft.adv["adv_w"] == pytest.approx([0.25, -0.25])  # 9.5 beats both losers, 8.5 beats one
    assert soft.adv["adv_l"] == pytest.approx([-0.25, 0.25])  # 9.0 sits under one winner, 7.5 under both
    assert soft.soft == 4 and flat.soft == 0
    with pytest.raises(ValueError, match="score_from"):
        GCPOAlgoConfig(score_from="mean").check()


def test_hf_engine_reads_the_logits_one_step_at_a_time_like_the_stacked_softmax():
    """`HFEngine._read_logits` (one step's log-softmax at a time, for a 152k vocabulary) gives what a log-softmax of
    all steps stacked gives: the generated tokens' log-probs and the top-k of every position."""
    import torch

    from edit_rlhf.rrm.hf_engine import HFEngine

    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(3, 50, generator=g) * 3 for _ in range(7)]
    gen = torch.randint(0, 50, (3, 7), generator=g)
    lps, top_v, top_i = HFEngine._read_logits(logits, gen, 4)
    full = torch.log_softmax(torch.stack(logits, 1), -1)
    torch.testing.assert_close(lps, full.gather(-1, gen[..., None])[..., 0])
    v, i = full.topk(4, dim=-1)
    torch.testing.assert_close(top_v, v)
    assert torch.equal(top_i, i)
    only, none_v, none_i = HFEngine._read_logits(logits, gen, 0)
    torch.testing.assert_close(only, lps)
    assert none_v is None and none_i is None
