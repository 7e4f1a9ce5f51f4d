"""RRM prompt builder and scorer: prompt structure and token counts, Avg@k aggregation, unparsed policies,
re-sampling, timeouts, seeds (with a scripted engine), and the HF backend end to end on the tiny RRM."""
import math

import numpy as np
import pytest

from edit_rlhf.rrm.engine import Completion
from edit_rlhf.rrm.format import format_verdict
from edit_rlhf.rrm.parse import parse_verdict

PRINCIPLES = [{"question": "Is the square red?", "category": "follow"},
              {"question": "Is the background unchanged?", "category": "keep"},
              {"question": "Is the image sharp and free of noise?", "category": "quality"}]


def verdict(checks, score):
    return format_verdict([(p["question"], c) for p, c in zip(PRINCIPLES, checks)], score, "source: x. edited: y.")


@pytest.fixture(scope="module")
def sandbox_row(sandbox_dir):
    from edit_rlhf.data.prompts import EditPromptDataset

    return EditPromptDataset(f"{sandbox_dir}/prompts_train").row(0)


# ------------------------------------------------------------------------------------------------ prompt
def test_prompt_styles_share_the_user_turn_and_render_through_the_chat_template(tiny_models, sandbox_row):
    from edit_rlhf.rrm.prompt import RRMPrompt, build_messages

    r = sandbox_row
    full, compact = (build_messages(r["instruction"], r["principles"], s) for s in ("full", "compact"))
    assert full[1] == compact[1] and full[0]["content"] != compact[0]["content"]
    assert [c["type"] for c in full[1]["content"]] == ["text", "image", "text", "image", "text"]
    p = RRMPrompt.from_path(tiny_models["rrm"], "compact")
    text = p.text(r["instruction"], r["principles"])
    assert text.count("<|image_pad|>") == 2 and text.endswith("<|im_start|>assistant\n")
    assert r["instruction"] in text and all(q["question"] in text for q in r["principles"])
    assert text.index("Source image") < text.index("Edited image") < text.index(r["instruction"])
    # the system text ends with a format example that the parser accepts
    assert parse_verdict(p.system[p.system.index("[{"):]).ok
    counts = {s: RRMPrompt.from_path(tiny_models["rrm"], s).token_counts(r["instruction"], r["principles"])
              for s in ("full", "compact")}
    assert counts["full"]["images"] == counts["compact"]["images"] == 32  # 2 x 16 visual tokens at 64x64
    assert counts["full"]["user_text"] == counts["compact"]["user_text"]
    assert counts["compact"]["total"] < counts["full"]["total"] / 3
    custom = RRMPrompt.from_path(tiny_models["rrm"], "full", system="Rate the edit.")
    assert "Rate the edit." in custom.text(r["instruction"], r["principles"])
    with pytest.raises(ValueError, match="at least one evaluation point"):
        p.text(r["instruction"], [])


# ------------------------------------------------------------------------------------------------ aggregate
def test_aggregate_avg_at_k_and_unparsed_policies():
    from edit_rlhf.rewards.rrm import aggregate

    texts = [verdict([1, 0, 1], 6), verdict([1, 1, 1], 9), "garbage", verdict([0, 0, 1], 3)]
    vs = [parse_verdict(t, 3) for t in texts]
    cs = [Completion(t, token_ids=[1] * (k + 1)) for k, t in enumerate(texts)]
    r = aggregate(vs, cs)
    assert r.ok and r.reward == pytest.approx(6.0) and r.error == ""
    d = r.detail
    assert d["parse_ok"] == 0.75 and d["n_valid"] == 3 and d["n_samples"] == 4
    assert d["check_means"] == pytest.approx([2 / 3, 1 / 3, 1.0]) and d["checks"] == [1, 0, 1]
    assert d["score_std"] == pytest.approx(np.std([6, 9, 3])) and d["gen_tokens"] == 2.5
    assert d["trace"] == texts[0] and d["traces"] == texts and len(d["parse_errors"]) == 1

    bad = [parse_verdict(t, 3) for t in ("", "no tags")]
    cb = [Completion(""), Completion("no tags")]
    dropped = aggregate(bad, cb, "drop")
    assert not dropped.ok and math.isnan(dropped.reward) and "no parsable RRM verdict in 2" in dropped.error
    assert dropped.detail["parse_ok"] == 0.0 and dropped.detail["checks"] is None
    lowest = aggregate(bad, cb, "lowest")
    assert lowest.ok and lowest.reward == 0.0 and lowest.detail["parse_ok"] == 0.0
    assert "no parsable" in lowest.detail["parse_error"]


# ------------------------------------------------------------------------------------------------ scorer
class ScriptedEngine:
    """Answers request k's sample j with script[(seed of the request + j)] or a default."""

    backend = "scripted"
    version = 7

    def __init__(self, answer):
        self.answer = answer  # f(request, sample j, seed) -> (text, finish_reason)
        self.calls = []

    def generate(self, requests, spec, timeout_s=None):
        self.calls.append((len(requests), spec.n, timeout_s))
        out = []
        for r in requests:
            row = []
            for j in range(spec.n):
                text, fin = self.answer(r, j, r.seed + j)
                row.append(Completion(text, token_ids=[0] * 5, finish_reason=fin))
            out.append(row)
        return out


def _scorer(tiny_models, engine, **over):
    from edit_rlhf.config.rrm import RRMScorerConfig
    from edit_rlhf.rewards.rrm import RRMScorer

    cfg = RRMScorerConfig(path=tiny_models["rrm"], backend="hf")
    cfg.prompt.style = "compact"
    for k, v in over.items():
        obj = cfg
        *parts, last = k.split(".")
        for p in parts:
            obj = getattr(obj, p)
        setattr(obj, last, v)
    return RRMScorer(cfg, engine=engine)


def test_scorer_avg_at_k_resample_timeout_and_seeds(tiny_models):
    row = {"id": "p0", "instruction": "make the square red", "principles": PRINCIPLES,
           "source_image": np.zeros((64, 64, 3), np.uint8)}
    images = np.stack([np.full((64, 64, 3), v, np.uint8) for v in (10, 20, 30)])
    seen = []

    def answer(req, j, seed):
        seen.append(seed)
        edit = int(req.images[1][0, 0, 0]) // 10 - 1  # which edit this request scores
        if edit == 0:
            return verdict([1, 1, 1], 8 + j % 2), "stop"  # samples 8, 9, 8 -> 8.33
        if edit == 1:
            return ("[{\"question\": \"Is the squ", "length") if j == 0 else (verdict([1, 0, 1], 5), "stop")
        return "", "timeout"

    eng = ScriptedEngine(answer)
    sc = _scorer(tiny_models, eng, **{"sampling.n": 3, "sampling.temperature": 1.0, "timeout_s": 30.0})
    res = sc.score(row, images)
    assert [r.ok for r in res] == [True, True, False]
    assert res[0].reward == pytest.approx(25 / 3) and res[0].detail["n_valid"] == 3
    assert res[1].reward == 5.0 and res[1].detail["parse_ok"] == pytest.approx(2 / 3)
    assert res[1].detail["checks"] == [1, 0, 1] and res[1].detail["rm_version"] == 7
    assert "timed out after 30s" in res[2].error and math.isnan(res[2].reward)
    assert eng.calls == [(3, 3, 30.0)]  # one engine call: 3 edits x 3 samples, with the deadline
    assert len(set(seen)) == 9  # every sample of every edit has its own seed ...
    assert sc.requests(row, images)[1].seed == sc.requests(row, images)[1].seed  # ... fixed by (seed, id, edit)
    assert sc.stats["samples"] == 9 and sc.stats["parsed"] == 5 and sc.stats["timeouts"] == 3

    # bounded re-sampling: the truncated sample of edit 1 is asked again with a new seed and parses
    first_round = set()

    def answer2(req, j, seed):
        if len(eng2.calls) == 1:
            first_round.add(seed)
            return "<score>", "length"
        assert seed not in first_round
        return verdict([1, 0, 1], 5), "stop"

    eng2 = ScriptedEngine(answer2)
    sc2 = _scorer(tiny_models, eng2, **{"sampling.temperature": 0.5, "resample": 2})
    r2 = sc2.score(row, images[:2])
    assert all(r.ok and r.reward == 5.0 for r in r2) and sc2.stats["resampled"] == 2
    assert eng2.calls == [(2, 1, None), (2, 1, None)]  # first round + one re-sample round (not a third)
    greedy = _scorer(tiny_models, ScriptedEngine(lambda r, j, s: ("<score>", "length")), resample=2)
    assert not any(r.ok for r in greedy.score(row, images[:1])) and len(greedy.engine.calls) == 1


def test_score_groups_runs_several_groups_in_one_engine_call_with_the_same_results(tiny_models):
    """The reward pool's batched call: two rows' groups in one engine run give what two `score` calls give
    (seeds are per (row id, edit position), not per position in the batch)."""
    def answer(req, j, seed):
        return verdict([1, 1, 1], seed % 10), "stop"

    rows = [{"id": f"p{k}", "instruction": "make the square red", "principles": PRINCIPLES,
             "source_image": np.zeros((64, 64, 3), np.uint8)} for k in range(2)]
    groups = [np.stack([np.full((64, 64, 3), v, np.uint8) for v in vs]) for vs in ((10, 20, 30), (40, 50))]
    one = _scorer(tiny_models, ScriptedEngine(answer))
    separate = [one.score(r, g) for r, g in zip(rows, groups)]
    batched = _scorer(tiny_models, ScriptedEngine(answer))
    together = batched.score_groups(rows, groups)
    assert [len(g) for g in together] == [3, 2]
    assert [[r.reward for r in g] for g in together] == [[r.reward for r in g] for g in separate]
    assert len({r.reward for g in together for r in g}) > 1  # the seeds (and so the scores) differ per edit
    assert len(batched.engine.calls) == 1 and batched.engine.calls[0][0] == 5  # one engine run of 5 edits


def test_scorer_bad_row_fails_per_edit_without_raising(tiny_models):
    sc = _scorer(tiny_models, ScriptedEngine(lambda r, j, s: ("", "stop")))
    row = {"id": "bad", "instruction": "make it red", "principles": [], "source_image": np.zeros((8, 8, 3), np.uint8)}
    res = sc.score(row, np.zeros((2, 8, 8, 3), np.uint8))
    assert [r.ok for r in res] == [False, False] and "row 'bad'" in res[0].error


def test_hf_backend_scores_sandbox_edits_on_the_tiny_rrm(tiny_models, sandbox_row):
    """The HF backend end to end on the random tiny RRM: well-formed results; its outputs do not parse
    (random weights), so with `unparsed=drop` every edit is a counted failure carrying its trace."""
    from edit_rlhf.config import GRPOConfig, load_config
    from edit_rlhf.rewards import build_scorer

    from conftest import TINY_CONFIG

    cfg = load_config(GRPOConfig, TINY_CONFIG, [
        "reward.scorer=rrm", f"reward.rrm.path={tiny_models['rrm']}", "reward.rrm.backend=hf",
        "reward.rrm.prompt.style=compact", "reward.rrm.sampling.max_tokens=16", f"editor.path={tiny_models['editor']}",
        "data.train=x"])
    sc = build_scorer(cfg.reward, threads=1)
    assert sc.name == "rrm" and sc.engine.backend == "hf"
    imgs = np.stack([sandbox_row["target_image"], sandbox_row["source_image"]])
    res = sc.score(sandbox_row, imgs)
    again = sc.score(sandbox_row, imgs)
    assert len(res) == 2
    for r, r2 in zip(res, again):
        assert not r.ok and math.isnan(r.reward) and r.error.startswith("no parsable RRM verdict")
        assert r.detail["n_samples"] == 1 and r.detail["parse_ok"] == 0.0 and 0 < r.detail["gen_tokens"] <= 16
        assert r.detail["trace"] == r2.detail["trace"]  # greedy: deterministic
    info = sc.info()
    assert info["backend"] == "hf" and info["samples"] == 4 and info["parsed"] == 0
