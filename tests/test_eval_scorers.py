"""The evaluation's batch scorers with scripted engines: the VLM judge (requests, resizing, seeds, SC/PQ/O per
edit, Avg@k, failures counted and never 0), the batched RRM (same scores as the reward scorer, failures always
excluded) and the sandbox oracle."""
import math

import numpy as np
import pytest

from edit_rlhf.rrm.engine import Completion


class FakeProcessor:
    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        parts = []
        for m in messages:
            c = m["content"]
            parts.append(c if isinstance(c, str) else "".join(
                "<|image_pad|>" if p["type"] == "image" else p["text"] for p in c))
        return "\n".join(parts) + "\nassistant:"


class ScriptedEngine:
    """Answers each request with `reply(request, sample_index)`; records every request."""

    backend = "fake"

    def __init__(self, reply):
        self.reply = reply
        self.requests = []

    def generate(self, requests, spec, timeout_s=None):
        self.requests += list(requests)
        return [[Completion(self.reply(r, j), finish_reason="stop") for j in range(spec.n)] for r in requests]


def judge_cfg(**sampling):
    from edit_rlhf.config.evaluation import JudgeConfig

    cfg = JudgeConfig(path="/nowhere")
    for k, v in sampling.items():
        setattr(cfg.sampling, k, v)
    return cfg


ROWS = [{"id": f"r{i}", "instruction": f"edit number {i}",
         "source_image": np.full((32, 48, 3), 10 * i, np.uint8)} for i in range(3)]
EDITS = np.stack([np.full((64, 64, 3), 200, np.uint8)] * 3)

# replies in request order: (SC, PQ) per row
REPLIES = ['{"reasoning": "done", "score": [8, 6]}', '{"score": [9, 4]}',  # row 0: SC 6, PQ 4
           "I cannot rate this.", '{"score": [7, 7]}',                     # row 1: SC unparsable
           '{"score": [5, 5]}', '{"score": [12, 3]}']                      # row 2: PQ out of range


def in_order(replies):
    it = iter(replies)
    return lambda req, j: next(it)


def test_judge_scores_sc_pq_o_per_edit_and_counts_failures():
    from edit_rlhf.evaluation.scorers import JudgeScorer
    from edit_rlhf.rrm.engine import sample_seed

    eng = ScriptedEngine(in_order(REPLIES))
    j = JudgeScorer(judge_cfg(), engine=eng, processor=FakeProcessor())
    res = j.score_batch(ROWS, EDITS)
    d0, d1, d2 = (r.detail for r in res)
    assert (d0["sc"], d0["pq"], d0["o"]) == (6.0, 4.0, pytest.approx(math.sqrt(24))) and res[0].ok
    assert res[0].reward == pytest.approx(math.sqrt(24)) and d0["sc_scores"] == [8.0, 6.0]
    # an unparsable SC reply: no SC and no O (never 0), PQ kept, the reason recorded
    assert d1["sc"] is None and d1["o"] is None and d1["pq"] == 7.0 and not res[1].ok
    assert math.isnan(res[1].reward) and "SC: no \"score\" list" in res[1].error and d1["sc_parse_ok"] == 0.0
    assert d2["pq"] is None and "outside [0, 10]" in d2["pq_error"] and d2["sc"] == 5.0
    # requests: SC = (source, edit resized to the source's size) + instruction; PQ = the edit alone
    sc_req, pq_req = eng.requests[0], eng.requests[1]
    assert [im.shape for im in sc_req.images] == [(32, 48, 3), (32, 48, 3)] and pq_req.images[0].shape == (32, 48, 3)
    assert "edit number 0" in sc_req.prompt and sc_req.prompt.count("<|image_pad|>") == 2
    assert pq_req.prompt.count("<|image_pad|>") == 1 and "edit number" not in pq_req.prompt
    # seeds depend on (judge seed, row id, kind) only: the same for every editor scored with this judge
    assert sc_req.seed == sample_seed(0, "r0", "sc") and pq_req.seed == sample_seed(0, "r0", "pq")
    assert j.stats == {"edits": 3, "judgements": 6, "parsed": 4, "resampled": 0}


def test_judge_avg_at_k_and_bad_rows():
    from edit_rlhf.evaluation.scorers import JudgeScorer

    answers = {0: '{"score": [6, 8]}', 1: "garbage", 2: '{"score": [8, 10]}'}
    eng = ScriptedEngine(lambda r, j: answers[j])
    j = JudgeScorer(judge_cfg(n=3, temperature=0.7), engine=eng, processor=FakeProcessor())
    rows = [ROWS[0], {"id": "bad", "instruction": "  ", "source_image": ROWS[0]["source_image"]}]
    res = j.score_batch(rows, EDITS[:2])
    d = res[0].detail
    assert d["sc_scores"] == [7.0, 9.0] and d["sc"] == 7.0 and d["sc_parse_ok"] == pytest.approx(2 / 3)
    assert not res[1].ok and "cannot build the judge prompt" in res[1].error and len(eng.requests) == 2


def test_judge_resamples_unparsable_judgements_with_the_shared_loop():
    """`sampling.resample`: an unparsable judgement is drawn again with a new seed (the RRM's loop,
    rewards/sampling.py); greedy judges are never re-sampled."""
    from edit_rlhf.evaluation.scorers import JudgeScorer
    from edit_rlhf.rewards.sampling import RESAMPLE_STRIDE

    def reply(req, j):  # only the first re-sample of each judgement (seed + stride) answers
        return '{"score": [4, 9]}' if req.seed in reply.answering else "garbage"

    reply.answering = set()
    eng = ScriptedEngine(reply)
    j = JudgeScorer(judge_cfg(temperature=0.7, resample=1), engine=eng, processor=FakeProcessor())
    assert not j.score_batch(ROWS[:1], EDITS[:1])[0].ok  # SC and PQ drawn, re-drawn, never parsed
    assert len(eng.requests) == 4 and j.stats["resampled"] == 2
    reply.answering = {r.seed + RESAMPLE_STRIDE for r in eng.requests[:2]}
    eng.requests.clear()
    res = j.score_batch(ROWS[:1], EDITS[:1])
    assert res[0].ok and res[0].detail["sc"] == 4.0 and res[0].detail["pq"] == 4.0 and len(eng.requests) == 4
    greedy = JudgeScorer(judge_cfg(resample=2), engine=ScriptedEngine(lambda r, k: "garbage"),
                         processor=FakeProcessor())
    assert not greedy.score_batch(ROWS[:1], EDITS[:1])[0].ok and len(greedy.engine.requests) == 2


def test_judge_without_resizing_keeps_the_edit():
    from edit_rlhf.evaluation.scorers import JudgeScorer

    eng = ScriptedEngine(lambda r, j: '{"score": [1, 2]}')
    cfg = judge_cfg()
    cfg.resize_to_source = False
    JudgeScorer(cfg, engine=eng, processor=FakeProcessor()).score_batch(ROWS[:1], EDITS[:1])
    assert eng.requests[0].images[1].shape == (64, 64, 3)


def test_rrm_batch_matches_the_reward_scorer_and_always_excludes_failures(tiny_models, sandbox_dir):
    from edit_rlhf.config.rrm import RRMScorerConfig
    from edit_rlhf.data.prompts import EditPromptDataset
    from edit_rlhf.evaluation.scorers import RRMBatchScorer
    from edit_rlhf.rewards.rrm import RRMScorer
    from edit_rlhf.rrm.format import format_verdict

    ds = EditPromptDataset(f"{sandbox_dir}/prompts_eval")
    rows = [ds.row(i) for i in range(3)]
    edits = np.stack([r["target_image"] for r in rows])

    def reply(req, j):  # a valid verdict whose score depends on the request seed; row 1's is unparsable
        if "row-1" in reply.skip and req.seed == reply.skip["row-1"]:
            return "no verdict"
        n = req.prompt.split("Evaluation points:")[-1].count('{"question"')
        return format_verdict([(f"q{k}", k % 2) for k in range(n)], float(req.seed % 11))

    cfg = RRMScorerConfig(path=tiny_models["rrm"], unparsed="lowest")  # 'lowest' would score 0 in training
    cfg.prompt.style = "compact"
    from edit_rlhf.rrm.engine import sample_seed

    reply.skip = {"row-1": sample_seed(0, rows[1]["id"], 0)}
    batch = RRMBatchScorer(cfg, engine=ScriptedEngine(reply)).score_batch(rows, edits)
    single = RRMScorer(cfg, engine=ScriptedEngine(reply))
    for i in (0, 2):
        ref = single.score(rows[i], edits[i:i + 1])[0]
        assert batch[i].ok and batch[i].reward == ref.reward and batch[i].detail["checks"] == ref.detail["checks"]
    assert single.score(rows[1], edits[1:2])[0].reward == 0.0  # the training policy ...
    assert not batch[1].ok and math.isnan(batch[1].reward)  # ... but an evaluation counts it as a failure


def test_oracle_scores_targets_high_and_fails_without_a_record(sandbox_dir):
    from edit_rlhf.data.prompts import EditPromptDataset
    from edit_rlhf.evaluation.scorers import OracleBatchScorer

    ds = EditPromptDataset(f"{sandbox_dir}/prompts_eval")
    rows = [ds.row(i, ["id", "oracle", "target_image", "source_image"]) for i in range(4)]
    res = OracleBatchScorer().score_batch(rows + [{"id": "x", "oracle": None}],
                                          np.stack([r["target_image"] for r in rows] + [rows[0]["source_image"]]))
    assert all(r.ok and r.reward >= 9.0 for r in res[:4]) and all(set(r.detail["checks"]) <= {0, 1} for r in res[:4])
    assert not res[4].ok and "no oracle record" in res[4].error


def test_rewards_and_judges_share_one_scorer_interface(sandbox_dir):
    """Every training reward and evaluation scorer is a BaseScorer: `score(row, images)` and
    `score_batch(rows, images)` agree, `columns` names what it reads, `info()` / `close()` exist."""
    from edit_rlhf.data.prompts import EditPromptDataset
    from edit_rlhf.evaluation.scorers import JudgeScorer, OracleBatchScorer, RRMBatchScorer
    from edit_rlhf.rewards.base import BaseScorer
    from edit_rlhf.rewards.oracle import OracleScorer
    from edit_rlhf.rewards.rrm import RRMScorer
    from edit_rlhf.rewards.similarity import SimilarityScorer

    for cls in (JudgeScorer, RRMBatchScorer, OracleBatchScorer, OracleScorer, RRMScorer, SimilarityScorer):
        assert issubclass(cls, BaseScorer) and cls.columns, cls
    with pytest.raises(TypeError, match="must define score"):
        type("Nothing", (BaseScorer,), {})
    ds = EditPromptDataset(f"{sandbox_dir}/prompts_eval")
    row = ds.row(0, ["id", "oracle", "target_image", "source_image"])
    imgs = np.stack([row["target_image"], row["source_image"]])
    for sc in (OracleScorer(), SimilarityScorer()):
        one, batch = sc.score(row, imgs), sc.score_batch([row, row], imgs)
        assert [r.reward for r in one] == [r.reward for r in batch] and one[0].reward > one[1].reward
        assert sc.info() == {} and sc.close() is None
