"""Tolerant parser of RRM verdicts (the format written by `format.format_verdict`).

    <think text>
    [{"question": "...", "score": 1}, ...]
    {"average_score": 0.67}
    <score>7.5</score>

Tolerated: whitespace and line breaks anywhere between the parts, single-quoted (Python-literal) lists,
trailing commas, `True`/`False` or "0"/"1" as check values, the paper's `<\\score>` closing tag, a
case-insensitive tag, trailing text after the score, check objects without the enclosing list, a missing
`average_score` (then it is the checks' mean). The final score is the *last* complete `<score>` tag; the
checks are the last list of objects before it.

`parse_verdict` never raises on model output: anything it cannot use gives `Verdict(ok=False, reason=...)`.
"""
from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, List, Optional, Tuple

SCORE_OPEN_RE = re.compile(r"<\s*score\s*>", re.I)
SCORE_CLOSE_RE = re.compile(r"<\s*[/\\]\s*score\s*>", re.I)
AVERAGE_RE = re.compile(r"""["']?average_score["']?\s*:\s*([^,}\s]*)""", re.I)
NUMBER_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
SCORE_RANGE = (0.0, 10.0)
AVERAGE_TOL = 0.006  # average_score is written with 2 decimals


@dataclass
class Verdict:
    """A parsed verdict. `ok` = usable as a reward (score present and in range, and - unless checks are not
    required - one 0/1 check per principle). `reason` says why not (empty when ok)."""

    ok: bool
    reason: str = ""
    score: Optional[float] = None
    checks: List[int] = field(default_factory=list)
    questions: List[str] = field(default_factory=list)
    average: Optional[float] = None  # as written; the checks' mean when absent
    average_given: bool = False
    average_consistent: Optional[bool] = None  # |average - mean(checks)| <= 0.006 (None without checks)
    think: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Tag:
    start: int
    body: str

    def group(self, i: int) -> str:
        return self.body


def score_tags(text: str) -> List[_Tag]:
    """The complete `<score>...</score>` tags, as a lazy `<score>(.*?)</score>` regex would find them left to
    right, in linear time: that regex retried every unclosed `<score>` to the end of the text (quadratic: 30-40 s
    on a 140 KB reply of unclosed tags). One pass over the open and close tags with two pointers."""
    closes = [(m.start(), m.end()) for m in SCORE_CLOSE_RE.finditer(text)]
    if not closes:
        return []
    opens = [(m.start(), m.end()) for m in SCORE_OPEN_RE.finditer(text)]
    tags: List[_Tag] = []
    pos = i = j = 0
    while i < len(opens):
        if opens[i][0] < pos:
            i += 1
            continue
        o_start, o_end = opens[i]
        while j < len(closes) and closes[j][0] < o_end:
            j += 1
        if j == len(closes):
            break  # no close after this open, hence none after any later open either
        tags.append(_Tag(o_start, text[o_end:closes[j][0]]))
        pos = closes[j][1]
        i += 1
    return tags


def _fail(reason: str, **kw) -> Verdict:
    return Verdict(ok=False, reason=reason, **kw)


def _number(raw: str) -> Optional[float]:
    s = raw.strip().strip("\"'").strip()
    if not NUMBER_RE.fullmatch(s):
        return None
    v = float(s)
    return v if math.isfinite(v) else None


class _Budget:
    """Characters the bracket matcher may still scan for one region: a few passes over it. Each unterminated
    bracket scans to the end of the text, so without a bound a reply of thousands of unclosed `{` or `[{` is
    quadratic (minutes for 140 KB); with it the parser is linear in its input whatever the input holds."""

    def __init__(self, n: int, passes: int = 4):
        self.left = passes * n + 4096


def _matching_close(text: str, start: int, budget: Optional[_Budget] = None) -> int:
    """Index of the bracket closing text[start] ('[' or '{'), skipping quoted strings; -1 if unterminated
    (or when `budget` runs out)."""
    pairs = {"[": "]", "{": "}"}
    stack = [pairs[text[start]]]
    quote = None
    i = start + 1
    end = len(text) if budget is None else min(len(text), start + 1 + max(0, budget.left))
    found, stop = _scan(text, i, end, stack, quote, pairs)
    if budget is not None:
        budget.left -= stop - start
    return found


_SPECIAL = re.compile(r"[\[\]{}\"'\\]")  # the only characters the bracket matcher acts on


def _scan(text: str, i: int, end: int, stack: list, quote: Optional[str], pairs: dict) -> Tuple[int, int]:
    """(index of the closing bracket or -1, where the scan stopped); jumps between special characters."""
    while True:
        m = _SPECIAL.search(text, i, end)
        if m is None:
            return -1, end
        i = m.start()
        c = text[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c in pairs:
            stack.append(pairs[c])
        elif c in "]}":
            if c != stack[-1]:
                return -1, i
            stack.pop()
            if not stack:
                return i, i
        i += 1


def _load(fragment: str) -> Any:
    """JSON, else a Python literal (single quotes, True/False), else JSON with quotes swapped and trailing
    commas removed. Raises ValueError with the JSON error when none works."""
    try:
        return json.loads(fragment)
    except ValueError as e:
        err = e
    try:
        return ast.literal_eval(fragment)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        pass
    fixed = re.sub(r",\s*([\]}])", r"\1", fragment.replace("'", '"'))
    try:
        return json.loads(fixed)
    except ValueError:
        raise ValueError(str(err)) from None


def find_object_list(region: str, what: str = "per-principle checks before <score>") -> Tuple[Optional[list], int, str]:
    """(items, start index, error) of the last JSON list of objects in `region` (falls back to objects
    written one after another); `what` names the list in the error."""
    starts = [m.start() for m in re.finditer(r"\[\s*\{", region)]
    last_err = ""
    budget = _Budget(len(region))
    for s in reversed(starts):
        if budget.left <= 0:
            break
        end = _matching_close(region, s, budget)
        if end < 0:
            last_err = last_err or f"the list of {what.split(' before')[0]} is not closed (truncated output?)"
            continue
        budget.left -= end + 1 - s  # parsing a candidate costs its length too
        try:
            items = _load(region[s:end + 1])
        except ValueError as e:
            last_err = f"the list of {what.split(' before')[0]} is not valid JSON: {e}"
            continue
        if isinstance(items, list):
            return items, s, ""
    if starts:
        return None, -1, last_err
    # no list: check objects written one after another
    objs, first = [], -1
    for m in re.finditer(r"\{", region):
        if objs and m.start() < objs[-1][1]:
            continue  # nested inside the previous object
        if budget.left <= 0:
            break
        end = _matching_close(region, m.start(), budget)
        if end < 0:
            continue
        budget.left -= end + 1 - m.start()
        try:
            o = _load(region[m.start():end + 1])
        except ValueError:
            continue
        if isinstance(o, dict) and ("question" in o or "score" in o):
            objs.append((o, end))
            first = m.start() if first < 0 else first
    if objs:
        return [o for o, _ in objs], first, ""
    return None, -1, f"no JSON list of {what}"


def _check_value(v: Any) -> Optional[int]:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)) and v in (0, 1):
        return int(v)
    if isinstance(v, str) and v.strip() in ("0", "1", "0.0", "1.0"):
        return int(float(v.strip()))
    return None


def _validate_checks(items: list, n_expected: Optional[int]) -> Tuple[List[int], List[str], str]:
    if not items:
        return [], [], "the checks list is empty"
    checks, questions = [], []
    for i, it in enumerate(items):
        if not isinstance(it, dict):
            return [], [], f"check {i} is not an object: {str(it)[:40]!r}"
        if "score" not in it:
            return [], [], f"check {i} has no 'score'"
        v = _check_value(it["score"])
        if v is None:
            return [], [], f"check {i} score must be 0 or 1, got {it['score']!r}"
        checks.append(v)
        q = it.get("question", "")
        questions.append(q if isinstance(q, str) else str(q))
    if n_expected is not None and len(checks) != n_expected:
        return checks, questions, (f"expected {n_expected} checks (one per evaluation point), "
                                   f"got {len(checks)}")
    return checks, questions, ""


def parse_verdict(text: Any, n_expected: Optional[int] = None, require_checks: bool = True) -> Verdict:
    """Parse one RRM output. `n_expected`: the number of principles (the checks must match it);
    `require_checks=False` accepts a verdict with a valid `<score>` even when its checks are unusable."""
    try:
        return _parse(text, n_expected, require_checks)
    except Exception as e:  # the contract: model output never raises
        return _fail(f"parser error: {type(e).__name__}: {e}")


def _parse(text: Any, n_expected: Optional[int], require_checks: bool) -> Verdict:
    if not isinstance(text, str):
        return _fail(f"output is not text ({type(text).__name__})")
    if not text.strip():
        return _fail("empty output")
    tags = score_tags(text)
    if not tags:
        if SCORE_OPEN_RE.search(text):
            return _fail("<score> tag is not closed (truncated output?)")
        return _fail("no <score>...</score> tag")
    tag = tags[-1]
    score = _number(tag.group(1))
    if score is None:
        return _fail(f"score is not a number: {tag.group(1).strip()[:40]!r}")
    lo, hi = SCORE_RANGE
    if not lo <= score <= hi:
        return _fail(f"score {score:g} is outside [{lo:g}, {hi:g}]", score=score)
    head = text[:tag.start]

    average, average_given = None, False
    avg_matches = list(AVERAGE_RE.finditer(head))
    region = head
    if avg_matches:
        am = avg_matches[-1]
        average = _number(am.group(1))
        if average is None:
            return _fail(f"average_score is not a number: {am.group(1)[:40]!r}", score=score)
        if not 0.0 <= average <= 1.0:
            return _fail(f"average_score {average:g} is outside [0, 1]", score=score)
        average_given = True
        region = head[:am.start()]

    items, start, err = find_object_list(region)
    checks: List[int] = []
    questions: List[str] = []
    if items is not None:
        checks, questions, err = _validate_checks(items, n_expected)
    think = (region[:start] if start >= 0 else region).strip()
    if not err:
        mean = sum(checks) / len(checks)
        if average is None:
            average = round(mean, 2)
        return Verdict(ok=True, score=score, checks=checks, questions=questions, average=average,
                       average_given=average_given, average_consistent=abs(average - mean) <= AVERAGE_TOL,
                       think=think)
    if require_checks:
        return _fail(err, score=score, checks=checks, questions=questions, average=average,
                     average_given=average_given, think=think)
    return Verdict(ok=True, reason="", score=score, average=average, average_given=average_given, think=think)
