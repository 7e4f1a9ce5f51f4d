"""Deterministic fault injection for tests and drills (never active unless EDIT_RLHF_FAULTS is set).

EDIT_RLHF_FAULTS is a comma-separated list of `who:site:n[:marker]`: the process whose id is `who`
(an actor's worker id such as "rollout-1", or "driver") exits abruptly (os._exit, like a SIGKILL or an OOM
kill) on its n-th arrival at `site` (e.g. "rollout", "score", "step"). With a marker path the fault fires once
per drill: the marker file is created when it fires and a restarted process sees it and carries on.

Random faults for soaks (benchmarks/chaos_soak.py): EDIT_RLHF_FAULT_RATES=`site=p,...` (e.g.
`rollout=0.03,score=0.03,train=0.02,step=0.03,checkpoint=0.03`) makes any process exit at each arrival at
`site` with probability p; EDIT_RLHF_FAULT_LOG names a file that gets one line `who site n` per fault fired.
"""
from __future__ import annotations

import os
import random
from collections import Counter

_counts: Counter = Counter()
_rng = random.Random()


def _die(who: str, site: str, n: int) -> None:
    log = os.environ.get("EDIT_RLHF_FAULT_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{who} {site} {n}\n")
    os._exit(17)


def _random_fault(who: str, site: str) -> None:
    rates = os.environ.get("EDIT_RLHF_FAULT_RATES")
    if not rates:
        return
    for item in rates.split(","):
        s, _, p = item.strip().partition("=")
        if s == site and p and _rng.random() < float(p):
            _die(who, site, _counts[(who, site)])


def maybe_fail(who: str, site: str) -> None:
    spec = os.environ.get("EDIT_RLHF_FAULTS")
    _counts[(who, site)] += 1
    _random_fault(who, site)
    if not spec:
        return
    for item in spec.split(","):
        parts = item.strip().split(":")
        if len(parts) < 3 or parts[0] != who or parts[1] != site:
            continue
        marker = parts[3] if len(parts) > 3 else None
        if _counts[(who, site)] == int(parts[2]) and not (marker and os.path.exists(marker)):
            if marker:
                open(marker, "w").close()
            _die(who, site, _counts[(who, site)])
