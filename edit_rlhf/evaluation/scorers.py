"""Batch scorers of the editor evaluation: one `ScoreResult` per (row, edited image), many rows per call.

- `JudgeScorer`: the GEdit-Bench protocol's VLM judge (viescore.py): an SC and a PQ judgement per edit, all
  rows of a call in one engine run. reward = O = sqrt(SC*PQ); detail carries SC, PQ and the sub-scores.
- `RRMBatchScorer`: the Edit-RRM score (rewards/rrm.py's prompt, parser and aggregation) with all rows of a
  call in one engine run. Unparsable verdicts always count as failures here (policy `drop`), whatever
  `rrm.unparsed` says: an evaluation never scores a failure as 0.
- `OracleBatchScorer`: the sandbox's programmatic verifier (0-10 and per-principle checks).

Failures never raise: they are `ScoreResult(ok=False, reward=nan, error=...)` and are counted per metric.
`edit_rlhf.actors.evaluation.EvalScorerWorker` hosts one of them per Ray actor.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from edit_rlhf.evaluation.protocol import sample_scores
from edit_rlhf.evaluation.viescore import Judgement, build_messages, parse_judgement
from edit_rlhf.rewards.base import ScoreResult

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


class JudgeScorer:
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
        self.stats = {"edits": 0, "judgements": 0, "parsed": 0}
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
        comps = self.engine.generate(reqs, self.spec) if reqs else []
        smax = self.cfg.prompt.score_max
        for j, k in enumerate(slots):
            sc_c, pq_c = comps[2 * j], comps[2 * j + 1]
            sc_j = [parse_judgement(c.text, 2, smax) for c in sc_c]
            pq_j = [parse_judgement(c.text, 2, smax) for c in pq_c]
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
        comps = self.engine.generate(reqs, self.spec) if reqs else []
        out = []
        for cs in comps:
            js = [parse_judgement(c.text, 2, self.cfg.prompt.score_max) for c in cs]
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


class RRMBatchScorer:
    """The Edit-RRM's score of each edit (Avg@k when `sampling.n` > 1), all rows of a call in one engine run."""

    name = "rrm"
    columns = ("id", "instruction", "principles", "source_image")

    def __init__(self, cfg, threads: Optional[int] = None, engine=None):
        from edit_rlhf.rewards.rrm import RRMScorer

        self.inner = RRMScorer(cfg, threads=threads, engine=engine)
        self.cfg = cfg

    def score_batch(self, rows: Sequence[Dict[str, Any]], images: np.ndarray) -> List[ScoreResult]:
        from edit_rlhf.rewards.rrm import RESAMPLE_STRIDE, aggregate
        from edit_rlhf.rrm.engine import GenRequest
        from edit_rlhf.rrm.parse import Verdict, parse_verdict

        inner, cfg = self.inner, self.cfg
        out: List[Optional[ScoreResult]] = [None] * len(rows)
        reqs, slots = [], []
        for k, (row, img) in enumerate(zip(rows, images)):
            try:
                reqs += inner.requests(row, img[None])
                slots.append(k)
            except (ValueError, KeyError, TypeError) as e:
                out[k] = ScoreResult.failed(f"row {row.get('id')!r}: cannot build the RRM prompt: {e}")
        timeout = cfg.timeout_s or None
        n_pr = [len(rows[k]["principles"]) for k in slots]

        def parse(c, n):
            if c.finish_reason == "timeout":
                return Verdict(ok=False, reason=f"timed out after {cfg.timeout_s:g}s")
            return parse_verdict(c.text, n_expected=n, require_checks=cfg.require_checks)

        comps = inner.engine.generate(reqs, inner.spec, timeout_s=timeout) if reqs else []
        verdicts = [[parse(c, n) for c in cs] for cs, n in zip(comps, n_pr)]
        for r in range(1, cfg.resample + 1):  # bounded re-sampling, as the reward scorer does
            redo = [(i, j) for i, vs in enumerate(verdicts) for j, v in enumerate(vs)
                    if not v.ok and comps[i][j].finish_reason != "timeout"]
            if not redo or inner.spec.temperature == 0.0:
                break
            sub = [GenRequest(reqs[i].prompt, reqs[i].images, seed=reqs[i].seed + r * RESAMPLE_STRIDE + j)
                   for i, j in redo]
            for (i, j), cs in zip(redo, inner.engine.generate(sub, dataclasses.replace(inner.spec, n=1),
                                                              timeout_s=timeout)):
                comps[i][j] = cs[0]
                verdicts[i][j] = parse(cs[0], n_pr[i])
        version = getattr(inner.engine, "version", 0)
        for i, k in enumerate(slots):
            res = aggregate(verdicts[i], comps[i], "drop", version)
            res.detail["trace"] = str(res.detail.get("trace", ""))[:TEXT_KEEP]
            res.detail.pop("traces", None)
            out[k] = res
        return out  # type: ignore[return-value]

    def info(self) -> Dict[str, Any]:
        return self.inner.info()

    def close(self) -> None:
        self.inner.close()


class OracleBatchScorer:
    """The sandbox oracle: holistic 0-10 score and per-principle checks from pixels."""

    name = "oracle"
    columns = ("id", "oracle")

    def score_batch(self, rows: Sequence[Dict[str, Any]], images: np.ndarray) -> List[ScoreResult]:
        from edit_rlhf.rewards.oracle import oracle_detail

        out = []
        for row, img in zip(rows, images):
            oj = row.get("oracle")
            if not oj:
                out.append(ScoreResult.failed(f"row {row.get('id')!r} has no oracle record"))
                continue
            try:
                d = oracle_detail(oj, img)
            except (ValueError, KeyError, TypeError) as e:
                out.append(ScoreResult.failed(f"oracle failed on row {row.get('id')!r}: {e}"))
                continue
            out.append(ScoreResult(reward=d["oracle_score"], detail=d))
        return out

    def info(self) -> Dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


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
