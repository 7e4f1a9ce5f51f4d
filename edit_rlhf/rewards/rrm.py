"""Edit-RRM reward: a Qwen2.5-VL verifier scores each edit from (source, edited, instruction, principles).

Per edit: the RRM prompt (rrm/prompt.py) -> `sampling.n` sampled verdicts on the engine (vLLM or HF) ->
parsed (rrm/parse.py) -> reward = mean `<score>` of the parsable samples (Avg@k; n=1 is the plain reward).
Unparsable samples can be re-sampled (`resample`, bounded); an edit with no parsable sample gets the
`unparsed` policy: `drop` (NaN, ok=False) or `lowest` (0, counted as a parse failure).

`detail` per edit (what the GRPO driver logs): parse_ok (fraction of samples that parsed), n_valid,
n_samples, score, score_std, average (mean average_score), checks (per-principle majority of the parsable
samples, drawn under the edit in sample grids), check_means, average_consistent, gen_tokens, rm_version,
trace (first parsable sample, else the first sample), traces (all samples, when n > 1), parse_errors.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from edit_rlhf.rewards.base import ScoreResult
from edit_rlhf.rrm.backend import build_engine
from edit_rlhf.rrm.engine import Completion, GenRequest, SamplingSpec, sample_seed
from edit_rlhf.rrm.parse import Verdict, parse_verdict
from edit_rlhf.rrm.prompt import RRMPrompt

RESAMPLE_STRIDE = 1_000_003  # seed offset of re-sample round r: base + r * stride + j


def aggregate(verdicts: Sequence[Verdict], completions: Sequence[Completion], policy: str = "drop",
              version: int = 0) -> ScoreResult:
    """One edit's ScoreResult from its samples' verdicts (and their completions, for traces)."""
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
    return ScoreResult(reward=float(scores.mean()), ok=True, detail=d)


class RRMScorer:
    """The `rrm` scorer of the reward pool. `engine` may be injected (tests, shared engines)."""

    name = "rrm"
    columns = ()  # reads only the required columns: id, instruction, principles, source_image

    def __init__(self, cfg, threads: Optional[int] = None, engine=None):
        cfg.require_path()
        self.cfg = cfg
        self.prompt = RRMPrompt.from_path(cfg.path, cfg.prompt.style, cfg.prompt.system)
        self.engine = engine if engine is not None else build_engine(cfg, threads, seed=cfg.sampling.seed)
        self.spec = SamplingSpec.from_config(cfg.sampling)
        self.stats = {"requests": 0, "edits": 0, "samples": 0, "parsed": 0, "resampled": 0, "timeouts": 0,
                      "unparsed_edits": 0, "seconds": 0.0}

    # ------------------------------------------------------------------ requests
    def requests(self, row: Dict[str, Any], images: np.ndarray) -> List[GenRequest]:
        """One request per edited image (source first, then the edit), seeded by (seed, row id, edit index).

        The source is shown as the editor saw it (`editor_view` at the edit's size: the square copy the
        editor edited), never in its original aspect next to a square edit."""
        from edit_rlhf.data.images import editor_view

        text = self.prompt.text(row["instruction"], row["principles"])
        src = row["source_image"]
        return [GenRequest(text, [editor_view(src, *np.asarray(img).shape[:2]), img],
                           seed=sample_seed(self.cfg.sampling.seed, row["id"], i))
                for i, img in enumerate(images)]

    def _parse(self, c: Completion, n_principles: int) -> Verdict:
        if c.finish_reason == "timeout":
            return Verdict(ok=False, reason=f"timed out after {self.cfg.timeout_s:g}s")
        return parse_verdict(c.text, n_expected=n_principles, require_checks=self.cfg.require_checks)

    # ------------------------------------------------------------------ scoring
    def score(self, row: Dict[str, Any], images: np.ndarray) -> List[ScoreResult]:
        t0 = time.time()
        n_img = len(images)
        try:
            reqs = self.requests(row, images)
        except (ValueError, KeyError, TypeError) as e:
            why = f"row {row.get('id')!r}: cannot build the RRM prompt: {e}"
            return [ScoreResult.failed(why) for _ in range(n_img)]
        n_pr = len(row["principles"])
        timeout = self.cfg.timeout_s or None
        comps = self.engine.generate(reqs, self.spec, timeout_s=timeout)
        verdicts = [[self._parse(c, n_pr) for c in cs] for cs in comps]
        for r in range(1, self.cfg.resample + 1):  # bounded re-sampling of unparsable (not timed-out) samples
            redo = [(i, j) for i, vs in enumerate(verdicts) for j, v in enumerate(vs)
                    if not v.ok and comps[i][j].finish_reason != "timeout"]
            if not redo or self.spec.temperature == 0.0:
                break  # greedy would repeat itself
            sub = [GenRequest(reqs[i].prompt, reqs[i].images, seed=reqs[i].seed + r * RESAMPLE_STRIDE + j)
                   for i, j in redo]
            one = dataclasses.replace(self.spec, n=1)
            for (i, j), cs in zip(redo, self.engine.generate(sub, one, timeout_s=timeout)):
                comps[i][j] = cs[0]
                verdicts[i][j] = self._parse(cs[0], n_pr)
            self.stats["resampled"] += len(redo)
        version = getattr(self.engine, "version", 0)
        out = [aggregate(vs, cs, self.cfg.unparsed, version) for vs, cs in zip(verdicts, comps)]
        flat = [v for vs in verdicts for v in vs]
        self.stats["requests"] += 1
        self.stats["edits"] += n_img
        self.stats["samples"] += len(flat)
        self.stats["parsed"] += sum(v.ok for v in flat)
        self.stats["timeouts"] += sum(c.finish_reason == "timeout" for cs in comps for c in cs)
        self.stats["unparsed_edits"] += sum(r.detail.get("n_valid", 0) == 0 for r in out)
        self.stats["seconds"] += time.time() - t0
        return out

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
