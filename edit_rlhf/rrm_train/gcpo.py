"""GCPO on the driver: prompts per pair, parsed scores per trace, cross-group rewards and advantages, the
per-rank learner plan and the step's diagnostics. Pure functions of rollouts (no Ray, no model).

A pair gives two requests (the preferred image, then the other), each sampled N times. Rewards/advantages are
`algorithms.gcpo.gcpo_advantages` (strict comparisons, ties 0, group-centred; parse failures per
`failure`). Every trace that takes part (mask) counts in the loss's average over traces; traces with A = 0
contribute exactly zero when beta = 0 and are not sent to the learner (`skip_zero_advantage`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edit_rlhf.algorithms.gcpo import gcpo_advantages, weighted_advantage
from edit_rlhf.rrm.engine import Completion, GenRequest, sample_seed
from edit_rlhf.rrm.parse import parse_verdict
from edit_rlhf.rrm.soft import soft_score


def pair_requests(prompt_text: str, source, winner, loser, seed: int, step: int, pair_id: str
                  ) -> Tuple[GenRequest, GenRequest]:
    """(winner request, loser request); sample j of a request uses seed + j (engine contract)."""
    return (GenRequest(prompt_text, [source, winner], seed=sample_seed(seed, step, pair_id, "w")),
            GenRequest(prompt_text, [source, loser], seed=sample_seed(seed, step, pair_id, "l")))


def trace_score(c: Completion, n_principles: int, require_checks: bool = True, score_from: str = "text"
                ) -> Tuple[Optional[float], str, bool]:
    """(score or None, failure reason, soft): the parsed `<score>`, or with a soft `score_from` the score read from
    the trace's top log-probs (rrm/soft.py; its written score where they do not say, and then `soft` is False)."""
    if c.finish_reason == "timeout" or not c.token_ids:
        return None, "timeout", False
    v = parse_verdict(c.text, n_expected=n_principles, require_checks=require_checks)
    if not v.ok:
        return None, v.reason, False
    score, soft = soft_score(c, v, score_from)  # `text`: the written score, soft False
    return score, "", soft


@dataclass
class PairRollout:
    """One pair's 2N sampled traces with scores, rewards and advantages."""

    index: int
    category: str
    req_w: int  # indices into the step's request list
    req_l: int
    comps_w: List[Completion]
    comps_l: List[Completion]
    scores_w: List[Optional[float]] = field(default_factory=list)
    scores_l: List[Optional[float]] = field(default_factory=list)
    adv: Dict[str, List] = field(default_factory=dict)
    versions: Tuple[int, int] = (0, 0)
    soft: int = 0  # traces whose score was read from their log-probs (a soft `score_from`)


def score_pair(p: PairRollout, n_principles: int, failure: str = "lowest", std_norm: bool = False,
               score_from: str = "text") -> PairRollout:
    w = [trace_score(c, n_principles, score_from=score_from) for c in p.comps_w]
    lo = [trace_score(c, n_principles, score_from=score_from) for c in p.comps_l]
    p.scores_w, p.scores_l = [t[0] for t in w], [t[0] for t in lo]
    p.soft = sum(t[2] for t in w + lo)
    nan = float("nan")
    p.adv = gcpo_advantages([nan if s is None else s for s in p.scores_w],
                            [nan if s is None else s for s in p.scores_l], failure, std_norm)
    return p


def trace_items(pairs: Sequence[PairRollout]) -> List[Dict[str, Any]]:
    """Every sampled trace as a learner item: request index, token ids, advantage, whether it takes part,
    the rollout engine's log-probs."""
    items = []
    for p in pairs:
        for side, req, comps, adv, mask in (("w", p.req_w, p.comps_w, p.adv["adv_w"], p.adv["mask_w"]),
                                            ("l", p.req_l, p.comps_l, p.adv["adv_l"], p.adv["mask_l"])):
            for j, c in enumerate(comps):
                items.append({"pair": p.index, "side": side, "j": j, "req": req, "ids": list(c.token_ids),
                              "adv": float(adv[j]), "mask": bool(mask[j]) and len(c.token_ids) > 0,
                              "lp": list(c.logprobs) if c.logprobs is not None else None,
                              "truncated": c.finish_reason == "length"})
    return items


def rank_plan(items: Sequence[Dict[str, Any]], pairs_per_minibatch: int, world: int, micro: int,
              skip_zero: bool) -> Tuple[List[List[List[List[Dict[str, Any]]]]], List[int]]:
    """Split the step's items into minibatches (consecutive pairs) and, per minibatch, into `world` rank shares
    of equal numbers of micro-batches of <= `micro` items.

    Returns (plan[rank][minibatch][micro] -> items, totals[minibatch] = participating traces, the loss's
    denominator). Items with A = 0 are left out when `skip_zero`; a rank short of work gets `dummy` items
    (weight 0) so every rank runs the same number of forward/backward passes. Minibatches without any item to
    train are dropped."""
    by_pair: Dict[int, List[Dict[str, Any]]] = {}
    for it in items:
        by_pair.setdefault(it["pair"], []).append(it)
    keys = sorted(by_pair)
    plan: List[List[List[List[Dict[str, Any]]]]] = [[] for _ in range(world)]
    totals: List[int] = []
    for lo in range(0, len(keys), pairs_per_minibatch):
        mb = [it for k in keys[lo:lo + pairs_per_minibatch] for it in by_pair[k]]
        part = [it for it in mb if it["mask"]]
        live = [it for it in part if not (skip_zero and it["adv"] == 0.0)]
        if not live:
            continue
        totals.append(len(part))
        shares = [live[r::world] for r in range(world)]
        n_micro = max(1, max(math.ceil(len(s) / micro) for s in shares))
        for r, s in enumerate(shares):
            micros = [s[k * micro:(k + 1) * micro] for k in range(n_micro)]
            micros = [m if m else [dict(live[0], dummy=True)] for m in micros]
            plan[r].append(micros)
    return plan, totals


def step_diagnostics(pairs: Sequence[PairRollout], items: Sequence[Dict[str, Any]]) -> Dict[str, float]:
    """Reward/advantage statistics, the paper's weighted advantage sum(A_i / L_i) / G, trace length,
    parse-failure rate, the fraction of zero-advantage groups (all of a group's traces at A = 0) and of the parsed
    traces whose score a soft `score_from` read from their log-probs (`score/soft_rate`; 0 for `text`)."""
    part = [it for it in items if it["mask"]]
    adv = np.array([it["adv"] for it in part], dtype=np.float64) if part else np.zeros(0)
    lens = [len(it["ids"]) for it in items]
    scores = [s for p in pairs for s in p.scores_w + p.scores_l]
    groups = [(p.adv["adv_w"], p.adv["mask_w"]) for p in pairs] + [(p.adv["adv_l"], p.adv["mask_l"]) for p in pairs]
    zero = [all(abs(a) < 1e-12 for a, m in zip(av, mk) if m) for av, mk in groups]
    pair_zero = [zero[i] and zero[i + len(pairs)] for i in range(len(pairs))]
    r_w = [r for p in pairs for r, m in zip(p.adv["r_w"], p.adv["mask_w"]) if m]
    r_l = [r for p in pairs for r, m in zip(p.adv["r_l"], p.adv["mask_l"]) if m]
    valid = [s for s in scores if s is not None]
    both = [(np.mean([s for s in p.scores_w if s is not None]), np.mean([s for s in p.scores_l if s is not None]))
            for p in pairs if any(s is not None for s in p.scores_w) and any(s is not None for s in p.scores_l)]
    mean_w, mean_l = [b[0] for b in both], [b[1] for b in both]
    m = {
        "reward/winner_mean": float(np.mean(r_w)) if r_w else math.nan,
        "reward/loser_mean": float(np.mean(r_l)) if r_l else math.nan,
        "reward/mean": float(np.mean(r_w + r_l)) if r_w or r_l else math.nan,
        "adv/abs_mean": float(np.abs(adv).mean()) if adv.size else 0.0,
        "adv/std": float(adv.std()) if adv.size else 0.0,
        "adv/max": float(adv.max()) if adv.size else 0.0,
        "adv/min": float(adv.min()) if adv.size else 0.0,
        "adv/weighted": weighted_advantage([it["adv"] for it in part], [len(it["ids"]) for it in part]),
        "adv/zero_group_fraction": float(np.mean(zero)) if zero else 0.0,
        "adv/zero_pair_fraction": float(np.mean(pair_zero)) if pair_zero else 0.0,
        "adv/nonzero_traces": int(np.sum(np.abs(adv) > 0)) if adv.size else 0,
        "trace/length_mean": float(np.mean(lens)) if lens else 0.0,
        "trace/length_max": int(max(lens)) if lens else 0,
        "trace/truncated_rate": float(np.mean([it.get("truncated", False) for it in items])) if items else 0.0,
        "trace/parse_failure_rate": 1.0 - len(valid) / max(1, len(scores)),
        "score/mean": float(np.mean(valid)) if valid else math.nan,
        "score/soft_rate": sum(p.soft for p in pairs) / len(valid) if valid else 0.0,  # of the parsed traces
        "score/std": float(np.std(valid)) if valid else math.nan,
        "score/winner_minus_loser": float(np.mean(mean_w) - np.mean(mean_l)) if mean_w and mean_l else math.nan,
        "score/within_group_std": float(np.nanmean([np.std([s for s in g if s is not None]) if any(
            s is not None for s in g) else np.nan for p in pairs for g in (p.scores_w, p.scores_l)])) if pairs else 0.0,
        "pairs/sample_accuracy": float(np.mean([pw > pl for pw, pl in both])) if both else math.nan,
    }
    return m
