"""Pairwise evaluation of an RRM on a pool of generation actors (`actors.rrm_rollout.RRMRolloutWorker`).

Both images of every pair are scored independently with the same prompt (pointwise RRM, algorithms.md §5
note 6): k = sampling.n verdicts each, the score is their mean over parsable verdicts (Avg@k; k = 1 with
temperature 0 is greedy). The caller runs the requests on its engines (pipelines/rrm_generate.py).
Rows that name their images (`image_keys`, EditReward-Bench: one row per (pair, dimension), so each image
appears in up to three rows) have each distinct (image, prompt) scored once and its score reused, as the
benchmark authors' `evaluation.py` does.
On graded (sandbox) pairs `copy_source_probe` also scores each distinct source submitted as its own edit.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edit_rlhf.rrm.engine import GenRequest, SamplingSpec, sample_seed
from edit_rlhf.rrm.parse import parse_verdict
from edit_rlhf.rrm_train.metrics import avg_at_k, pairwise_metrics


def pair_eval_requests(prompt, pairs, seed: int) -> List[GenRequest]:
    """[winner_0, loser_0, winner_1, ...] for a PairSet (images decoded here). A row with `image_keys` seeds each
    side by its image key, so the same image gets the same seed in every row it appears in."""
    reqs = []
    for i in range(len(pairs)):
        p = pairs[i]
        keys = pairs.rows[i].get("image_keys")
        text = prompt.text(p.instruction, p.principles)
        sw, sl = (sample_seed(seed, "image", keys[0]), sample_seed(seed, "image", keys[1])) if keys else \
            (sample_seed(seed, p.id, "w"), sample_seed(seed, p.id, "l"))
        reqs += [GenRequest(text, [p.source, p.winner], seed=sw), GenRequest(text, [p.source, p.loser], seed=sl)]
    return reqs


def shared_requests(rows: Sequence[Dict[str, Any]], reqs: Sequence[GenRequest]) -> Tuple[List[int], List[int]]:
    """(positions in `reqs` of the distinct requests to generate, per request the index of its distinct one).
    Two requests are the same when their rows name the same image (`image_keys`) and their prompt texts are equal;
    rows without `image_keys` are never shared."""
    first: Dict[Any, int] = {}
    todo: List[int] = []
    where: List[int] = []
    for j, r in enumerate(reqs):
        keys = rows[j // 2].get("image_keys")
        k = (keys[j % 2], r.prompt) if keys else ("row", j)
        if k not in first:
            first[k] = len(todo)
            todo.append(j)
        where.append(first[k])
    return todo, where


def evaluate_pairs(generate: Callable, prompt, pairs, sampling, unparsed: str = "drop", seed: int = 0,
                   timeout_s: float = None, requests: Sequence[GenRequest] = None) -> Dict[str, Any]:
    """{'metrics': pairwise metrics + parse rate + Avg@k, 'scores': [(winner, loser) per pair], 'versions'}.
    `generate(requests, spec, timeout_s) -> (completions per request, versions)` runs them on the engines
    (pipelines/rrm_generate.py:generate_on over a pool)."""
    t0 = time.time()
    reqs = list(requests) if requests is not None else pair_eval_requests(prompt, pairs, seed)
    spec = SamplingSpec.from_config(sampling)
    todo, where = shared_requests(pairs.rows, reqs)
    distinct, versions = generate([reqs[j] for j in todo], spec, timeout_s)
    comps = [distinct[w] for w in where]
    scores, n_ok, n_all, lens, samples = [], 0, 0, [], []
    for i in range(len(pairs)):
        n_pr = len(pairs.rows[i]["principles"])
        pair_scores = []
        for side in (0, 1):
            cs = comps[2 * i + side]
            vs = [parse_verdict(c.text, n_expected=n_pr) for c in cs]
            n_ok += sum(v.ok for v in vs)
            n_all += len(vs)
            lens += [len(c.token_ids) for c in cs]
            pair_scores.append(avg_at_k(vs, unparsed, cs, sampling.score_from))
            if len(samples) < 2:
                samples.append(cs[0].text)
        scores.append(tuple(pair_scores))
    m = pairwise_metrics([s[0] for s in scores], [s[1] for s in scores], pairs.categories())
    m.update(parse_rate=n_ok / max(1, n_all), k=sampling.n, images_scored=len(todo), trace_length_mean=float(np.mean(lens)) if lens else 0.0,
             seconds=time.time() - t0)
    return {"metrics": m, "scores": scores, "versions": sorted(versions), "samples": samples}


CORRECT_GRADE = "correct"


def distinct_sources(pairs) -> List[Tuple[str, Any]]:
    """(key, Pair) for the first pair of every distinct (instruction, source image) of a pair set."""
    import hashlib

    out, seen = [], set()
    for i in range(len(pairs)):
        p = pairs[i]
        key = f"{p.instruction}|{hashlib.sha1(np.ascontiguousarray(p.source).tobytes()).hexdigest()}"
        if key not in seen:
            seen.add(key)
            out.append((key, p))
    return out


def copy_source_requests(prompt, sources: Sequence[Tuple[str, Any]], seed: int) -> List[GenRequest]:
    """The copy-the-source probe: the source image submitted as its own edit, once per distinct source
    (`distinct_sources`). An RRM that judges puts it at the bottom of the scale (the sandbox oracle: 0)."""
    return [GenRequest(prompt.text(p.instruction, p.principles), [p.source, p.source],
                       seed=sample_seed(seed, "copy_source", key)) for key, p in sources]


def correct_edit_scores(pairs, scores: Sequence[Tuple[Optional[float], Optional[float]]]) -> List[Optional[float]]:
    """The RRM's scores of the pair sides the sandbox graded `correct` (rows carrying `grades`)."""
    return [sc[side] for row, sc in zip(pairs.rows, scores)
            for side, g in enumerate(row.get("grades", ())) if g == CORRECT_GRADE]


def copy_source_probe(generate: Callable, prompt, pairs, scores, sampling, unparsed: str = "drop", seed: int = 0,
                      timeout_s: float = None) -> Dict[str, float]:
    """{'copy_source/...'} figures (`metrics.copy_source_margin`): every distinct source scored as its own edit,
    against the scores the same evaluation gave the `correct` sides (`scores`: (winner, loser) per pair).
    {} when the pairs carry no grades (real data)."""
    from edit_rlhf.rrm_train.metrics import copy_source_margin

    if not any("grades" in r for r in pairs.rows):
        return {}
    sources = distinct_sources(pairs)
    spec = SamplingSpec.from_config(sampling)
    comps, _ = generate(copy_source_requests(prompt, sources, seed), spec, timeout_s)
    copy = [avg_at_k([parse_verdict(c.text, n_expected=len(p.principles)) for c in cs], unparsed, cs,
                     sampling.score_from)
            for cs, (_, p) in zip(comps, sources)]
    return {f"copy_source/{k}": v for k, v in copy_source_margin(copy, correct_edit_scores(pairs, scores)).items()}
