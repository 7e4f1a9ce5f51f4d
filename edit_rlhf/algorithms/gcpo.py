"""GCPO (Group Contrastive Preference Optimization) maths as pure functions, and T+V trace selection.

Reference: algorithms.md §1.5 (Edit-R1 Eq. 1-3). For a human pair (winner image w, loser image l) the RRM
samples N traces per image and each is parsed into a score:

    r^w_j = (1/N) sum_k 1{ s^w_j > s^l_k }      a winner-trace's reward: the loser-traces it scores above
    r^l_j = (1/N) sum_k 1{ s^l_j < s^w_k }      a loser-trace's reward: the winner-traces it scores below
    A_j   = r_j - mean(r of its own group)      (std normalisation optional, off by default)

Ties count 0. The loss is PPO-clip per token, averaged over each trace's tokens, then over the 2N traces.

Parse failures (the paper is silent) - `failure` policy:
  * "lowest": a failed trace's reward is 0 and it stays in its group's mean (so it gets a negative advantage
    when others earn credit); as the *opponent* of other traces it counts as the bottom of the scale
    (score `min_score`), like an unusable verdict.
  * "drop": a failed trace gets no reward, no advantage and no gradient (mask 0), and is not an opponent;
    denominators count valid opponents only.
Either way a failed trace is never credited: otherwise a loser-trace could earn reward by failing to parse.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch

FAILURE_POLICIES = ("lowest", "drop")


def _valid(s: float) -> bool:
    return s is not None and not (isinstance(s, float) and math.isnan(s))


def gcpo_rewards(scores_w: Sequence[Optional[float]], scores_l: Sequence[Optional[float]], failure: str = "lowest",
                 min_score: float = 0.0) -> Tuple[List[float], List[float], List[bool], List[bool]]:
    """Cross-group win/loss-ratio rewards of one pair.

    scores_*: parsed scores (None/NaN = parse failure). Returns (r_w, r_l, mask_w, mask_l) where mask marks the
    traces that take part in the update (all of them under 'lowest'; valid ones under 'drop')."""
    if failure not in FAILURE_POLICIES:
        raise ValueError(f"failure policy must be one of {FAILURE_POLICIES}, got {failure!r}")
    vw = [_valid(s) for s in scores_w]
    vl = [_valid(s) for s in scores_l]
    if failure == "lowest":
        opp_w = [float(s) if v else min_score for s, v in zip(scores_w, vw)]
        opp_l = [float(s) if v else min_score for s, v in zip(scores_l, vl)]
    else:
        opp_w = [float(s) for s, v in zip(scores_w, vw) if v]
        opp_l = [float(s) for s, v in zip(scores_l, vl) if v]

    def ratio(s, opponents, better) -> float:
        if not opponents:
            return 0.0
        return sum(1.0 for o in opponents if better(s, o)) / len(opponents)

    r_w = [ratio(float(s), opp_l, lambda a, b: a > b) if v else 0.0 for s, v in zip(scores_w, vw)]
    r_l = [ratio(float(s), opp_w, lambda a, b: a < b) if v else 0.0 for s, v in zip(scores_l, vl)]
    if failure == "lowest":
        return r_w, r_l, [True] * len(r_w), [True] * len(r_l)
    return r_w, r_l, vw, vl


def group_centered(rewards: Sequence[float], mask: Sequence[bool], std_norm: bool = False, eps: float = 1e-6
                   ) -> List[float]:
    """A_j = r_j - mean(r over the group's masked-in traces) [/ std]; masked-out traces get 0."""
    vals = [r for r, m in zip(rewards, mask) if m]
    if not vals:
        return [0.0] * len(rewards)
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
    out = []
    for r, m in zip(rewards, mask):
        a = (r - mean) if m else 0.0
        if std_norm and m:
            a = a / (std + eps) if std > 0 else 0.0
        out.append(a)
    return out


def gcpo_advantages(scores_w, scores_l, failure: str = "lowest", std_norm: bool = False, min_score: float = 0.0
                    ) -> Dict[str, List]:
    """Rewards, masks and group-centred advantages of one pair (winner group and loser group separately)."""
    r_w, r_l, m_w, m_l = gcpo_rewards(scores_w, scores_l, failure, min_score)
    return {"r_w": r_w, "r_l": r_l, "mask_w": m_w, "mask_l": m_l,
            "adv_w": group_centered(r_w, m_w, std_norm), "adv_l": group_centered(r_l, m_l, std_norm)}


def token_mean_clip_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, mask: torch.Tensor,
                         advantages: torch.Tensor, clip: float, ref_log_probs: Optional[torch.Tensor] = None,
                         beta: float = 0.0) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """PPO-clip loss to *minimise*, token-averaged within each trace, then averaged over traces.

    log_probs, old_log_probs, ref_log_probs, mask: (T, L) (traces x padded tokens; mask 1 on the trace's
    generated tokens); advantages: (T,). Traces with an all-zero mask are skipped. With beta > 0 adds the
    per-token KL estimate exp(ref - lp) - (ref - lp) - 1 to the reference, token-averaged the same way."""
    mask = mask.float()
    lengths = mask.sum(1)
    live = lengths > 0
    ratio = torch.exp(log_probs - old_log_probs.detach())
    adv = advantages.float()[:, None]
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip, 1 + clip) * adv)
    per_trace = (surrogate * mask).sum(1) / lengths.clamp(min=1)
    loss = -(per_trace[live]).mean() if live.any() else log_probs.sum() * 0.0
    kl = torch.zeros((), device=log_probs.device)
    if beta > 0 and ref_log_probs is not None:
        d = ref_log_probs.detach() - log_probs
        kl_tok = torch.exp(d) - d - 1
        kl = ((kl_tok * mask).sum(1) / lengths.clamp(min=1))[live].mean()
        loss = loss + beta * kl
    with torch.no_grad():
        tok = mask.bool()
        stats = {"clip_frac": ((ratio - 1).abs() > clip)[tok].float().mean() if tok.any() else torch.zeros(()),
                 "ratio_mean": ratio[tok].mean() if tok.any() else torch.ones(()),
                 "ratio_max_dev": (ratio - 1).abs()[tok].max() if tok.any() else torch.zeros(()),
                 "kl": kl.detach(), "traces": live.sum()}
    return loss, stats


def weighted_advantage(advantages: Sequence[float], lengths: Sequence[int]) -> float:
    """The paper's diagnostic (1/G) sum_i A_i / L_i (L_i = trace length in tokens); negative when longer
    traces get the higher advantages."""
    pairs = [(a, n) for a, n in zip(advantages, lengths) if n > 0]
    return sum(a / n for a, n in pairs) / len(pairs) if pairs else 0.0


def select_trace(candidates: Sequence[Tuple[Optional[Sequence[int]], Optional[float], Optional[float]]],
                 gold: Sequence[int]) -> Tuple[int, float]:
    """T+V trace selection: the candidate whose per-principle checks agree most with the gold labels.

    candidates: (checks or None if unparsed, average, score). Ties go to the higher average, then the higher
    final score, then the lower index. Unparsed candidates, or checks of the wrong length, rank last.
    Returns (index, per-principle accuracy of the chosen trace; -1.0 if none parses)."""
    if not candidates:
        raise ValueError("select_trace needs at least one candidate")
    best, best_key = 0, None
    for i, (checks, avg, score) in enumerate(candidates):
        if checks is None or len(checks) != len(gold) or not gold:  # unusable: ranks last, by index only
            key = (-1.0, -math.inf, -math.inf, -i)
        else:
            acc = sum(int(c) == int(g) for c, g in zip(checks, gold)) / len(gold)
            key = (acc, avg if avg is not None else -math.inf, score if score is not None else -math.inf, -i)
        if best_key is None or key > best_key:
            best, best_key = i, key
    return best, best_key[0]
