"""Edit-RRM reward: a Qwen2.5-VL verifier scores each edit from (source, edited, instruction, principles).

Per edit: the RRM prompt (rrm/prompt.py) -> `sampling.n` sampled verdicts on the engine (vLLM or HF) ->
parsed (rrm/parse.py) -> reward = mean score of the parsable samples (Avg@k; n=1 is the plain reward): the
written `<score>`, or with `sampling.score_from` = expected | checks a soft score read from the log-probs of the
tokens the verdict wrote (rrm/soft.py: no ties between edits that get the same greedy verdict).
Unparsable samples can be re-sampled (`resample`, bounded); an edit with no parsable sample gets the
`unparsed` policy: `drop` (NaN, ok=False) or `lowest` (0, counted as a parse failure).

`detail` per edit (what the GRPO driver logs): parse_ok (fraction of samples that parsed), n_valid,
n_samples, score, score_std, average (mean average_score), checks (per-principle majority of the parsable
samples, drawn under the edit in sample grids), check_means, average_consistent, gen_tokens, rm_version,
soft_score / soft_rate (with a soft `score_from`),
trace (first parsable sample, else the first sample), traces (all samples, when n > 1), parse_errors.
"""
from __future__ import annotations

import math
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from edit_rlhf.rewards.base import BaseScorer, ScoreResult
from edit_rlhf.rewards.sampling import RESAMPLE_STRIDE, sample_parsed  # noqa: F401  (RESAMPLE_STRIDE: re-exported)
from edit_rlhf.rrm.backend import build_engine
from edit_rlhf.rrm.engine import Completion, GenRequest, SamplingSpec, sample_seed
from edit_rlhf.rrm.parse import Verdict, parse_verdict
from edit_rlhf.rrm.prompt import RRMPrompt
from edit_rlhf.rrm.soft import soft_score


def aggregate(verdicts: Sequence[Verdict], completions: Sequence[Completion], policy: str = "drop",
              version: int = 0, score_from: str = "text") -> ScoreResult:
    """One edit's ScoreResult from its samples' verdicts (and their completions, for traces and soft scores).
    The reward is the mean over the parsable samples of their score under `score_from` (rrm/soft.py); `score`
    stays the written `<score>`'s mean, `soft_score` / `soft_rate` say what the soft source gave and how often
    the log-probs said (the rest fell back to what was written)."""
    n = len(verdicts)
    valid = [v for v in verdicts if v.ok]
    errors = [v.reason for v in verdicts if not v.ok]
    first_ok = next((k for k, v in enumerate(verdicts) if v.ok), 0)
    d: Dict[str, Any] = {
        "parse_ok": len(valid) / n if n else 0.0, "n_valid": len(valid), "n_samples": n,
        "gen_tokens": float(np.mean([len(c.token_ids) for c in completions])) if completions else 0.0,
        "rm_version": version, "trace": completions[first_ok].text if completions else "",
    }
    if n > 1:
        d["traces"] = [c.text for c in completions]
    if errors:
        d["parse_errors"] = errors
    if not valid:
        why = f"no parsable RRM verdict in {n} sample(s): {errors[0] if errors else 'no samples'}"
        d.update(score=None, checks=None)  # None, not NaN: numeric details are averaged by the driver
        if policy == "lowest":
            d["parse_error"] = why
            return ScoreResult(reward=0.0, ok=True, detail=d)
        return ScoreResult(reward=math.nan, ok=False, detail=d, error=why)
    scores = np.array([v.score for v in valid], dtype=np.float64)
    reward = float(scores.mean())
    if score_from != "text":
        if len(completions) != n:  # as avg_at_k: a soft score is read from each verdict's own completion
            raise ValueError(f"aggregate: score_from={score_from!r} needs one completion per verdict, got "
                             f"{len(completions)} for {n}")
        soft = [soft_score(c, v, score_from) for v, c in zip(verdicts, completions) if v.ok]
        reward = float(np.mean([s for s, _ in soft]))
        d.update(soft_score=reward, soft_rate=float(np.mean([ok for _, ok in soft])))
    d.update(score=float(scores.mean()), score_std=float(scores.std()),
             average=float(np.mean([v.average for v in valid])),
             average_consistent=float(np.mean([bool(v.average_consistent) for v in valid])))
    lens = {len(v.checks) for v in valid}
    if len(lens) == 1 and 0 not in lens:
        means = np.mean([v.checks for v in valid], axis=0)
        d["check_means"] = [float(m) for m in means]
        d["checks"] = [int(m >= 0.5) for m in means]  # majority; a tie counts as met
    else:
        d["checks"] = None
    return ScoreResult(reward=reward, ok=True, detail=d)


class RRMScorer(BaseScorer):
    """The `rrm` scorer of the reward pool (and, as `RRMBatchScorer`, of the evaluation). `engine` may be
    injected (tests, shared engines). `policy`: what an edit without a parsable sample gets (None: the config's
    `unparsed`); `text_keep`: characters of the trace kept in `detail` (None: all, with every sample's)."""

    name = "rrm"
    columns = ("id", "instruction", "principles", "source_image")
    policy: Optional[str] = None
    text_keep: Optional[int] = None

    def __init__(self, cfg, threads: Optional[int] = None, engine=None):
        cfg.require_path()
        self.cfg = cfg
        self.prompt = RRMPrompt.from_path(cfg.path, cfg.prompt.style, cfg.prompt.system)
        self.engine = engine if engine is not None else build_engine(cfg, threads, seed=cfg.sampling.seed)
        self.spec = SamplingSpec.from_config(cfg.sampling)
        self.stats = {"requests": 0, "edits": 0, "samples": 0, "parsed": 0, "resampled": 0, "timeouts": 0,
                      "unparsed_edits": 0, "seconds": 0.0}

    # ------------------------------------------------------------------ requests
    def request(self, row: Dict[str, Any], image: np.ndarray, k: int) -> GenRequest:
        """The request for edit `k` of `row` (source first, then the edit), seeded by (seed, row id, k).

        The source is shown as the editor saw it (`editor_view` at the edit's size: the square copy the
        editor edited), never in its original aspect next to a square edit."""
        from edit_rlhf.data.images import editor_view

        text = self.prompt.text(row["instruction"], row["principles"])
        return GenRequest(text, [editor_view(row["source_image"], *np.asarray(image).shape[:2]), image],
                          seed=sample_seed(self.cfg.sampling.seed, row["id"], k))

    def requests(self, row: Dict[str, Any], images: np.ndarray) -> List[GenRequest]:
        """One request per edited image of `row`."""
        return [self.request(row, img, i) for i, img in enumerate(images)]

    def _parse(self, c: Completion, n_principles: int) -> Verdict:
        if c.finish_reason == "timeout":
            return Verdict(ok=False, reason=f"timed out after {self.cfg.timeout_s:g}s")
        return parse_verdict(c.text, n_expected=n_principles, require_checks=self.cfg.require_checks)

    # ------------------------------------------------------------------ scoring
    def score(self, row: Dict[str, Any], images: np.ndarray) -> List[ScoreResult]:
        """G edits of one row; edit i is seeded by its position i."""
        return self._score([row] * len(images), images, list(range(len(images))))

    def score_groups(self, rows: Sequence[Dict[str, Any]], groups: Sequence[np.ndarray]) -> List[List[ScoreResult]]:
        """Several groups in one engine run (full vLLM batches); seeds as in `score`, so the results are the same."""
        flat_rows = [row for row, g in zip(rows, groups) for _ in range(len(g))]
        flat = self._score(flat_rows, [img for g in groups for img in g], [k for g in groups for k in range(len(g))])
        out, i = [], 0
        for g in groups:
            out.append(flat[i:i + len(g)])
            i += len(g)
        return out

    def score_batch(self, rows: Sequence[Dict[str, Any]], images: np.ndarray) -> List[ScoreResult]:
        """One edit per row, each seeded as the first edit of its row."""
        return self._score(rows, images, [0] * len(rows))

    def _score(self, rows: Sequence[Dict[str, Any]], images: np.ndarray, ks: Sequence[int]) -> List[ScoreResult]:
        """All edits in one engine run; an edit whose prompt cannot be built fails alone."""
        t0 = time.time()
        out: List[Optional[ScoreResult]] = [None] * len(rows)
        reqs, slots = [], []
        for b, (row, img, k) in enumerate(zip(rows, images, ks)):
            try:
                reqs.append(self.request(row, img, k))
                slots.append(b)
            except (ValueError, KeyError, TypeError) as e:
                out[b] = ScoreResult.failed(f"row {row.get('id')!r}: cannot build the RRM prompt: {e}")
        n_pr = [len(rows[b]["principles"]) for b in slots]
        comps, verdicts, redrawn = sample_parsed(self.engine, reqs, self.spec, lambda i, c: self._parse(c, n_pr[i]),
                                                 self.cfg.resample, self.cfg.timeout_s or None)
        version = getattr(self.engine, "version", 0)
        policy = self.policy or self.cfg.unparsed
        for b, vs, cs in zip(slots, verdicts, comps):
            res = aggregate(vs, cs, policy, version, self.cfg.sampling.score_from)
            if self.text_keep is not None:
                res.detail["trace"] = str(res.detail.get("trace", ""))[:self.text_keep]
                res.detail.pop("traces", None)
            out[b] = res
        flat = [v for vs in verdicts for v in vs]
        self.stats["requests"] += 1
        self.stats["edits"] += len(rows)
        self.stats["samples"] += len(flat)
        self.stats["parsed"] += sum(v.ok for v in flat)
        self.stats["resampled"] += redrawn
        self.stats["timeouts"] += sum(c.finish_reason == "timeout" for cs in comps for c in cs)
        self.stats["unparsed_edits"] += sum(r.detail.get("n_valid", 0) == 0 for r in out if r is not None and r.detail)
        self.stats["seconds"] += time.time() - t0
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ engine access (weight sync, probes)
    def generate(self, requests: Sequence[GenRequest], spec: SamplingSpec, timeout_s: Optional[float] = None):
        return self.engine.generate(requests, spec, timeout_s)

    def load_weights(self, named_tensors) -> int:
        """New RRM weights (HF names) into the engine; later scores carry the new `rm_version`."""
        return self.engine.load_weights(named_tensors)

    def info(self) -> Dict[str, Any]:
        return {"backend": self.engine.backend, "path": self.cfg.path, "version": getattr(self.engine, "version", 0),
                "engine_start_s": getattr(self.engine, "start_seconds", None), **self.stats}

    def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()
