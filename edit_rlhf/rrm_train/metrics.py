"""RRM evaluation figures as pure functions: pairwise accuracy (strict and with ties, per category, chance
levels), Avg@k scores from sampled verdicts, and verdict quality against gold checks (parse rate, agreement).

Pairwise accuracy (EditReward-Bench convention): a pair is right when score(preferred) > score(other); ties
are wrong in the strict metric and count one half in the with-ties metric. A pair with an unscored side (no
parsable verdict under `unparsed=drop`) is wrong in both and counted. Chance levels: a scorer that assigns
both images independent draws from its own score distribution is right with probability (1 - P(tie)) / 2
(strict) and 1/2 (with ties).
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from edit_rlhf.rrm.parse import Verdict


def _ok(s) -> bool:
    return s is not None and not (isinstance(s, float) and math.isnan(s))


def pair_outcome(sw: Optional[float], sl: Optional[float]) -> str:
    """'win' | 'tie' | 'loss' | 'unscored'."""
    if not (_ok(sw) and _ok(sl)):
        return "unscored"
    return "win" if sw > sl else ("tie" if sw == sl else "loss")


def pairwise_metrics(scores_w: Sequence[Optional[float]], scores_l: Sequence[Optional[float]],
                     categories: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """accuracy (strict), accuracy_with_ties, tie_rate, unscored_rate, chance_strict, per-category strict
    accuracy ('category/<name>') and its macro average over categories ('accuracy_macro')."""
    n = len(scores_w)
    if n == 0:
        return {"pairs": 0}
    out_k = [pair_outcome(a, b) for a, b in zip(scores_w, scores_l)]
    c = Counter(out_k)
    m: Dict[str, float] = {"pairs": n, "accuracy": c["win"] / n, "accuracy_with_ties": (c["win"] + 0.5 * c["tie"]) / n,
                           "tie_rate": c["tie"] / n, "unscored_rate": c["unscored"] / n}
    vals = [float(s) for s in list(scores_w) + list(scores_l) if _ok(s)]
    if vals:
        freq = np.array(list(Counter(vals).values()), dtype=np.float64) / len(vals)
        m["chance_strict"] = float((1.0 - (freq ** 2).sum()) / 2.0)
        m["score_mean"] = float(np.mean(vals))
        m["score_std"] = float(np.std(vals))
        m["distinct_scores"] = len(set(vals))
    m["chance_with_ties"] = 0.5
    if categories is not None:
        per: Dict[str, List[str]] = defaultdict(list)
        for k, cat in zip(out_k, categories):
            per[str(cat)].append(k)
        for cat, ks in sorted(per.items()):
            m[f"category/{cat}"] = sum(k == "win" for k in ks) / len(ks)
            m[f"category_n/{cat}"] = len(ks)
        m["accuracy_macro"] = float(np.mean([m[f"category/{cat}"] for cat in per]))
    return m


def copy_source_margin(copy_scores: Sequence[Optional[float]], correct_scores: Sequence[Optional[float]]
                       ) -> Dict[str, float]:
    """The copy-the-source probe's figures: mean score of correct edits minus mean score of the unedited source
    submitted as its edit (`margin`; Edit-R1's RRM must rate a copy far below a correct edit), both means, their
    counts, and the unscored copies (no parsable verdict: left out of the mean and counted)."""
    cp = [float(s) for s in copy_scores if _ok(s)]
    co = [float(s) for s in correct_scores if _ok(s)]
    out: Dict[str, float] = {"n": len(copy_scores), "unscored": len(copy_scores) - len(cp), "correct_n": len(co)}
    if cp:
        out["score_mean"] = float(np.mean(cp))
        out["scored_10"] = float(np.mean([s >= 10.0 for s in cp]))
    if co:
        out["correct_score_mean"] = float(np.mean(co))
    if cp and co:
        out["margin"] = out["correct_score_mean"] - out["score_mean"]
    return out


def oracle_pairwise_metrics(pairs: Sequence[Dict]) -> Dict[str, float]:
    """The sandbox oracle's own pairwise figures on preference pairs (rows with `preferred` in {'a', 'b'} and the
    oracle's `score_a` / `score_b`), computed exactly as an RRM's: the ceiling a judge reaches on these labels,
    which are noisy (flipped labels count against the oracle as they would against any judge)."""
    w, l = [], []
    for i, r in enumerate(pairs):
        pref = r.get("preferred")
        if pref not in ("a", "b") or "score_a" not in r or "score_b" not in r:
            raise ValueError(f"pair row {i}: needs preferred in {{'a', 'b'}} and score_a / score_b, got "
                             f"preferred={pref!r}, keys {sorted(r)}")
        other = "b" if pref == "a" else "a"
        w.append(float(r[f"score_{pref}"]))
        l.append(float(r[f"score_{other}"]))
    return pairwise_metrics(w, l)


def against_chance_and_oracle(accuracy: float, chance: Optional[float], oracle: Optional[float]) -> Dict[str, float]:
    """An accuracy beside its chance level and the oracle's accuracy on the same labels: the fraction of the way
    from chance to the oracle ceiling it covers (`of_headroom`; 0 = chance, 1 = as good as the oracle)."""
    out = {"accuracy": accuracy, "chance": chance, "oracle": oracle}
    if chance is not None and oracle is not None and oracle > chance:
        out["of_headroom"] = (accuracy - chance) / (oracle - chance)
    return out


def avg_at_k(verdicts: Sequence[Verdict], unparsed: str = "drop", completions: Optional[Sequence[Any]] = None,
             score_from: str = "text") -> Optional[float]:
    """Mean score of the parsable verdicts (Avg@k); none parsable -> None (`drop`) or 0.0 (`lowest`). With a soft
    `score_from` (rrm/soft.py) each verdict's score is read from its completion's log-probs."""
    if score_from != "text":
        from edit_rlhf.rrm.soft import soft_score

        if completions is None or len(completions) != len(verdicts):
            raise ValueError(f"avg_at_k: score_from={score_from!r} needs one completion per verdict")
        s = [soft_score(c, v, score_from)[0] for v, c in zip(verdicts, completions) if v.ok]
    else:
        s = [v.score for v in verdicts if v.ok]
    if s:
        return float(np.mean(s))
    return 0.0 if unparsed == "lowest" else None


def verdict_metrics(verdicts: Sequence[Verdict], gold_checks: Optional[Sequence[Sequence[int]]] = None,
                    gold_scores: Optional[Sequence[float]] = None) -> Dict[str, float]:
    """parse_rate; with gold: check_accuracy (per principle, parsed outputs), checks_exact, score_mae,
    average_consistent (the written average equals the checks' mean)."""
    n = len(verdicts)
    ok = [v for v in verdicts if v.ok]
    m: Dict[str, float] = {"n": n, "parse_rate": len(ok) / n if n else 0.0}
    if ok:
        m["average_consistent"] = float(np.mean([bool(v.average_consistent) for v in ok]))
    if gold_checks is not None:
        acc, exact = [], []
        for v, g in zip(verdicts, gold_checks):
            if v.ok and g is not None and len(v.checks) == len(g):
                hits = [int(a) == int(b) for a, b in zip(v.checks, g)]
                acc += hits
                exact.append(all(hits))
        if acc:
            m["check_accuracy"] = float(np.mean(acc))
            m["checks_exact"] = float(np.mean(exact))
    if gold_scores is not None:
        err = [abs(v.score - float(s)) for v, s in zip(verdicts, gold_scores) if v.ok and s is not None]
        if err:
            m["score_mae"] = float(np.mean(err))
    return m


def observation_line(trace: str) -> str:
    """The first line of a trace: what the judge says it sees ("source: ... edited: ..."), before its checks."""
    return (trace or "").split("\n", 1)[0].strip()


def comparison_lines(trace: str) -> str:
    """The think lines after the observation line (the sandbox's "source to edited: ..." comparison), before the
    verdict's check list; "" when there are none."""
    head = (trace or "").split("\n[", 1)[0]
    return "\n".join(line.strip() for line in head.split("\n")[1:]).strip()


def trace_diagnosis(replies: Sequence[str], gold_traces: Sequence[str], gold_checks: Sequence[Sequence[int]],
                    groups: Sequence[str], n_expected: Sequence[int]) -> Dict[str, Dict[str, Any]]:
    """Where a judge goes wrong, per group (a candidate grade) and over all ("all"): does its observation line
    match the gold trace's (`observation_exact`; `source_exact`: the part before " edited:"), are its checks all
    right (`checks_exact`), and are they right *given* a right observation (`checks_exact_if_seen`) or a wrong one
    (`checks_exact_if_not_seen`)? A judge that describes well but misses `checks_exact_if_seen` fails at comparing,
    not at seeing. Where the gold trace also compares (`comparison_lines`), `compare_exact` and
    `checks_exact_if_compared` say whether the judge's comparison was right and whether its checks followed from a
    right one. Each figure is {"n": rows it is computed on, "rate": fraction}; unparsable replies count as wrong
    checks."""
    from edit_rlhf.rrm.parse import parse_verdict

    if not (len(replies) == len(gold_traces) == len(gold_checks) == len(groups) == len(n_expected)):
        raise ValueError("trace_diagnosis: replies, gold traces, gold checks, groups and n_expected differ in length")
    acc: Dict[str, Dict[str, List[bool]]] = {}
    for reply, gold, checks, group, k in zip(replies, gold_traces, gold_checks, groups, n_expected):
        seen_g, seen = observation_line(gold), observation_line(reply)
        v = parse_verdict(reply or "", n_expected=int(k))
        right = bool(v.ok) and [int(c) for c in v.checks] == [int(c) for c in checks]
        obs_ok = seen == seen_g
        cmp_g = comparison_lines(gold)
        cmp_ok = bool(cmp_g) and comparison_lines(reply) == cmp_g
        for key in ("all", str(group)):
            s = acc.setdefault(key, {})
            s.setdefault("observation_exact", []).append(obs_ok)
            s.setdefault("source_exact", []).append(seen.split(" edited:")[0] == seen_g.split(" edited:")[0])
            s.setdefault("checks_exact", []).append(right)
            s.setdefault("checks_exact_if_seen" if obs_ok else "checks_exact_if_not_seen", []).append(right)
            if cmp_g:
                s.setdefault("compare_exact", []).append(cmp_ok)
                if cmp_ok:
                    s.setdefault("checks_exact_if_compared", []).append(right)
    return {g: {m: {"n": len(x), "rate": float(np.mean(x))} for m, x in s.items()}
            for g, s in sorted(acc.items(), key=lambda kv: (kv[0] != "all", kv[0]))}
