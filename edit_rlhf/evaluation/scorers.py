"""Scorers of the editor evaluation: one `ScoreResult` per (row, edited image), many rows per call
(`score_batch`). They implement the reward scorers' interface (rewards/base.py `Scorer`), and the model-based
ones sample, parse and re-sample with the same loop (rewards/sampling.py `sample_parsed`).

- `JudgeScorer`: the GEdit-Bench protocol's VLM judge (viescore.py): an SC and a PQ judgement per edit, all
  rows of a call in one engine run. reward = O = sqrt(SC*PQ); detail carries SC, PQ and the sub-scores.
- `RRMBatchScorer`: the Edit-RRM reward scorer (rewards/rrm.py) with all rows of a call in one engine run. Unparsable verdicts always count as failures here (policy `drop`), whatever
  `rrm.unparsed` says: an evaluation never scores a failure as 0.
- `OracleBatchScorer`: the sandbox's programmatic verifier (0-10 and per-principle checks).

Failures never raise: they are `ScoreResult(ok=False, reward=nan, error=...)` and are counted per metric.
`edit_rlhf.actors.evaluation.EvalScorerWorker` hosts one of them per Ray actor.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from edit_rlhf.evaluation.protocol import sample_scores
from edit_rlhf.evaluation.viescore import Judgement, build_messages, parse_judgement
from edit_rlhf.rewards.base import BaseScorer, ScoreResult
from edit_rlhf.rewards.oracle import OracleScorer
from edit_rlhf.rewards.rrm import RRMScorer
from edit_rlhf.rewards.sampling import sample_parsed

KINDS = ("judge", "pq", "rrm", "oracle")
TEXT_KEEP = 2000  # characters of a judge / RRM reply kept in the per-sample record


def _finite_or_none(x: float) -> Optional[float]:
    return float(x) if x is not None and math.isfinite(x) else None


def resize_to(image: np.ndarray, hw) -> np.ndarray:
    """uint8 (H, W, 3) -> (hw[0], hw[1], 3), bicubic (what GEdit-Bench does to the edit before judging)."""
    from PIL import Image

    if tuple(image.shape[:2]) == tuple(hw):
        return image
    return np.asarray(Image.fromarray(image).resize((int(hw[1]), int(hw[0])), Image.BICUBIC), dtype=np.uint8)


def mean_subscores(judgements: Sequence[Judgement]) -> Optional[List[float]]:
    """Avg@k: per position, the mean over the parsable samples; None when none parsed."""
    ok = [j.scores for j in judgements if j.ok]
    if not ok:
        return None
    return [float(np.mean([s[i] for s in ok])) for i in range(len(ok[0]))]


class JudgeScorer(BaseScorer):
    """VIEScore-style SC / PQ judge on a Qwen2.5-VL engine (`cfg`: config.evaluation.JudgeConfig)."""

    name = "judge"
    columns = ("id", "instruction", "source_image")

    def __init__(self, cfg, threads: Optional[int] = None, engine=None, processor=None, pq_only: bool = False):
        """`pq_only`: only the perceptual-quality judgement of the edit (no source needed); reward = PQ. This is
        the reward-hacking monitor's judge on real data: independent of the instruction-following reward."""
        from edit_rlhf.rrm.backend import build_engine
        from edit_rlhf.rrm.engine import SamplingSpec
        from edit_rlhf.rrm.prompt import render

        if not cfg.path:
            raise ValueError("judge.path: no judge model configured")
        self.cfg = cfg
        if processor is None:
            from transformers import AutoProcessor

            processor = AutoProcessor.from_pretrained(cfg.path)
        self._render = lambda msgs: render(processor, msgs)
        p = cfg.prompt
        self.pq_text = self._render(build_messages("pq", None, p.style, p.score_max, p.system))
        self.engine = engine if engine is not None else build_engine(cfg, threads, seed=cfg.sampling.seed)
        s = cfg.sampling
        self.spec = SamplingSpec(n=s.n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens)
        self.stats = {"edits": 0, "judgements": 0, "parsed": 0, "resampled": 0}
        self.pq_only = pq_only
        if pq_only:
            self.name, self.columns = "pq", ("id",)

    def sc_text(self, instruction: str) -> str:
        p = self.cfg.prompt
        return self._render(build_messages("sc", instruction, p.style, p.score_max, p.system))

    def score_batch(self, rows: Sequence[Dict[str, Any]], images: np.ndarray) -> List[ScoreResult]:
        from edit_rlhf.rrm.engine import GenRequest, sample_seed

        seed = self.cfg.sampling.seed
        if self.pq_only:
            return self._score_pq(rows, images)
        reqs, slots = [], []
        out: List[Optional[ScoreResult]] = [None] * len(rows)
        for k, (row, img) in enumerate(zip(rows, images)):
            try:
                src = row["source_image"]
                edited = resize_to(img, src.shape[:2]) if self.cfg.resize_to_source else img
                sc = GenRequest(self.sc_text(row["instruction"]), [src, edited],
                                seed=sample_seed(seed, row["id"], "sc"))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                out[k] = ScoreResult.failed(f"row {row.get('id')!r}: cannot build the judge prompt: {e}")
                continue
            reqs += [sc, GenRequest(self.pq_text, [edited], seed=sample_seed(seed, row["id"], "pq"))]
            slots.append(k)
        comps, parsed = self._sample(reqs)
        for j, k in enumerate(slots):
            sc_c, pq_c = comps[2 * j], comps[2 * j + 1]
            sc_j, pq_j = parsed[2 * j], parsed[2 * j + 1]
            out[k] = self._result(sc_j, pq_j, sc_c, pq_c)
            self.stats["judgements"] += len(sc_j) + len(pq_j)
            self.stats["parsed"] += sum(x.ok for x in sc_j + pq_j)
        self.stats["edits"] += len(rows)
        return out  # type: ignore[return-value]

    def _score_pq(self, rows: Sequence[Dict[str, Any]], images: np.ndarray) -> List[ScoreResult]:
        """PQ only: one judgement per edit (seeded by row id and edit position); reward = PQ in 0-10."""
        from edit_rlhf.evaluation.protocol import min_score
        from edit_rlhf.rrm.engine import GenRequest, sample_seed

        seed = self.cfg.sampling.seed
        reqs = [GenRequest(self.pq_text, [img], seed=sample_seed(seed, row.get("id"), f"pq{k}"))
                for k, (row, img) in enumerate(zip(rows, images))]
        comps, parsed = self._sample(reqs)
        out = []
        for cs, js in zip(comps, parsed):
            sub = mean_subscores(js)
            pq = min_score(sub)
            self.stats["judgements"] += len(js)
            self.stats["parsed"] += sum(j.ok for j in js)
            d = {"pq": _finite_or_none(pq), "pq_scores": sub, "pq_parse_ok": sum(j.ok for j in js) / len(js),
                 "pq_text": cs[0].text[:TEXT_KEEP]}
            out.append(ScoreResult(reward=pq, ok=sub is not None, detail=d,
                                   error="" if sub is not None else f"PQ: {js[0].reason}"))
        self.stats["edits"] += len(rows)
        return out

    def _sample(self, reqs):
        """Completions and parsed judgements per request (unparsable ones re-sampled: `sampling.resample`)."""
        smax = self.cfg.prompt.score_max
        comps, parsed, redrawn = sample_parsed(self.engine, reqs, self.spec,
                                               lambda i, c: parse_judgement(c.text, 2, smax), self.cfg.sampling.resample)
        self.stats["resampled"] += redrawn
        return comps, parsed

    @staticmethod
    def _result(sc_j, pq_j, sc_c, pq_c) -> ScoreResult:
        sc_sub, pq_sub = mean_subscores(sc_j), mean_subscores(pq_j)
        sc, pq, o = sample_scores(sc_sub, pq_sub)
        d = {"sc": _finite_or_none(sc), "pq": _finite_or_none(pq), "o": _finite_or_none(o),
             "sc_scores": sc_sub, "pq_scores": pq_sub,
             "sc_parse_ok": sum(j.ok for j in sc_j) / len(sc_j), "pq_parse_ok": sum(j.ok for j in pq_j) / len(pq_j),
             "sc_error": "" if sc_sub else sc_j[0].reason, "pq_error": "" if pq_sub else pq_j[0].reason,
             "sc_text": sc_c[0].text[:TEXT_KEEP], "pq_text": pq_c[0].text[:TEXT_KEEP]}
        err = "; ".join(f"{k.upper()}: {d[k + '_error']}" for k in ("sc", "pq") if d[k + "_error"])
        return ScoreResult(reward=o, ok=not err, detail=d, error=err)

    def info(self) -> Dict[str, Any]:
        return {"backend": self.engine.backend, "path": self.cfg.path,
                "engine_start_s": getattr(self.engine, "start_seconds", None), **self.stats}

    def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()


class RRMBatchScorer(RRMScorer):
    """The Edit-RRM's score of each edit (Avg@k when `sampling.n` > 1), all rows of a call in one engine run.
    An evaluation never scores a failure: unparsable = failure whatever `rrm.unparsed` says; traces are cut."""

    policy = "drop"
    text_keep = TEXT_KEEP


OracleBatchScorer = OracleScorer  # the sandbox oracle: holistic 0-10 score and per-principle checks from pixels


def build_eval_scorer(kind: str, cfg, threads: Optional[int] = None):
    """`kind` = judge (cfg: JudgeConfig) | pq (the judge's PQ half only) | rrm (cfg: RRMScorerConfig) | oracle (cfg unused)."""
    if kind == "judge":
        return JudgeScorer(cfg, threads)
    if kind == "pq":
        return JudgeScorer(cfg, threads, pq_only=True)
    if kind == "rrm":
        return RRMBatchScorer(cfg, threads)
    if kind == "oracle":
        return OracleBatchScorer()
    raise ValueError(f"unknown evaluation scorer {kind!r} (expected one of {KINDS})")
