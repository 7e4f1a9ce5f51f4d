"""Soft scores of an RRM verdict, read from the log-probs of the tokens it wrote (`sampling.score_from`).

A greedy verdict gives one of a handful of scores: two edits of one prompt that look alike get the *same* score
and a GRPO group gets zero advantages from them. The model's own uncertainty at the tokens that decide the verdict
breaks those ties:

- `expected`: the probability-weighted score at the first token of the final `<score>` number (G-Eval's
  weighting, Liu et al. 2023): sum over the number-like candidates d of p(d) * value(d) / sum p(d), where the
  written token is worth the full written score (7.5, 10) and another candidate its own number ("8" -> 8; with
  digit-by-digit tokenizers such as Qwen2's "1" stands for 1, even where the model would have gone on to "10").
- `checks`: 10 x the mean over the principles of p(1) / (p(0) + p(1)) at each check's value - the soft
  `average_score`; a check whose value token cannot be found keeps its written 0/1.

Pure functions of a `Completion` carrying `token_texts` and `top_logprobs` (SamplingSpec.top_logprobs > 0) and
the parsed `Verdict`. Positions are found in the concatenated token texts, so they agree with the tokens even
where a byte-level token of a non-ASCII character decodes to a replacement character.
"""
from __future__ import annotations

import math
import re
from bisect import bisect_right
from typing import Dict, List, Optional, Sequence, Tuple

from edit_rlhf.rrm.engine import Completion
from edit_rlhf.rrm.parse import SCORE_OPEN_RE, Verdict, score_tags

SCORE_SOURCES = ("text", "expected", "checks")  # as config.rrm.SCORE_SOURCES (config does not import rrm)
CHECK_VALUE_RE = re.compile(r"""["']score["']\s*:\s*["']?([01])""")


def _token_at(starts: Sequence[int], ch: int) -> int:
    """Index of the token whose text covers character `ch` (starts: each token's first character, ascending)."""
    return max(0, bisect_right(starts, ch) - 1)


def _layout(c: Completion):
    if not c.token_texts or not c.top_logprobs or len(c.token_texts) != len(c.top_logprobs):
        return None
    starts, pos = [], 0
    for t in c.token_texts:
        starts.append(pos)
        pos += len(t)
    return "".join(c.token_texts), starts


def _number(text: str) -> Optional[float]:
    s = text.strip()
    if not s or not re.fullmatch(r"[0-9]+(\.[0-9]*)?|\.[0-9]+", s):
        return None
    return float(s)


def _score_number_at(text: str) -> Optional[int]:
    """Character offset of the first non-space character inside the last complete `<score>...</score>` tag (the
    one the parser reads), or None."""
    tags = score_tags(text)
    if not tags:
        return None
    body_start = SCORE_OPEN_RE.match(text, tags[-1].start).end()
    m = re.match(r"\s*", text[body_start:])
    at = body_start + m.end()
    return at if at < len(text) and text[at] not in "<" else None


def expected_score(c: Completion, v: Verdict) -> Optional[float]:
    """`expected` (module doc); None without a parsed score or the token log-probs."""
    lay = _layout(c)
    if lay is None or not v.ok or v.score is None:
        return None
    text, starts = lay
    at = _score_number_at(text)
    if at is None:
        return None
    i = _token_at(starts, at)
    written = c.token_texts[i]
    num = den = 0.0
    for alt, lp in c.top_logprobs[i].items():
        value = float(v.score) if alt == written else _number(alt)
        if value is None or not math.isfinite(lp):
            continue
        p = math.exp(lp)
        num += p * min(max(value, 0.0), 10.0)
        den += p
    return num / den if den > 0 else None


def check_probabilities(c: Completion, v: Verdict) -> Optional[List[float]]:
    """p(1) / (p(0) + p(1)) at each of the verdict's checks (its written 0/1 where the value token is not found);
    None without parsed checks or the token log-probs."""
    lay = _layout(c)
    if lay is None or not v.ok or not v.checks:
        return None
    text, starts = lay
    tags = score_tags(text)
    end = tags[-1].start if tags else len(text)
    values = list(CHECK_VALUE_RE.finditer(text, 0, end))
    values = values[-len(v.checks):] if len(values) >= len(v.checks) else []
    out: List[float] = []
    for k, written in enumerate(v.checks):
        p = None
        if values:
            i = _token_at(starts, values[k].start(1))
            probs: Dict[str, float] = {}
            for alt, lp in c.top_logprobs[i].items():
                key = alt.strip().strip("\"'")
                if key in ("0", "1") and math.isfinite(lp):
                    probs[key] = probs.get(key, 0.0) + math.exp(lp)
            tot = probs.get("0", 0.0) + probs.get("1", 0.0)
            if tot > 0 and values[k].group(1) == str(int(written)):
                p = probs.get("1", 0.0) / tot
        out.append(float(written) if p is None else p)
    return out


def soft_score(c: Completion, v: Verdict, source: str) -> Tuple[Optional[float], bool]:
    """(score, soft) of a verdict under `source` (SCORE_SOURCES). `text` = the written `<score>`. Where the log-probs
    do not say (no top_logprobs, the token not found) a soft source falls back to what was written on its own scale
    - `expected`: the `<score>`; `checks`: 10 x the written checks' mean - and `soft` is False.
    (None, False) for an unparsed verdict."""
    if source not in SCORE_SOURCES:
        raise ValueError(f"score_from: must be one of {SCORE_SOURCES}, got {source!r}")
    if not v.ok:
        return None, False
    if source == "expected":
        s = expected_score(c, v)
        return (float(v.score), False) if s is None else (s, True)
    if source == "checks" and v.checks:
        ps = check_probabilities(c, v)
        if ps is None:
            return 10.0 * sum(v.checks) / len(v.checks), False
        return 10.0 * sum(ps) / len(ps), True
    return float(v.score), False
