"""Deterministic fault injection for tests and drills (never active unless EDIT_RLHF_FAULTS is set).

EDIT_RLHF_FAULTS is a comma-separated list of `who:site:n[:marker]`: the process whose id is `who`
(an actor's worker id such as "rollout-1", or "driver") exits abruptly (os._exit, like a SIGKILL or an OOM
kill) on its n-th arrival at `site` (e.g. "rollout", "score", "step"). With a marker path the fault fires once
per drill: the marker file is created when it fires and a restarted process sees it and carries on.
"""
from __future__ import annotations

import os
from collections import Counter

_counts: Counter = Counter()


def maybe_fail(who: str, site: str) -> None:
    spec = os.environ.get("EDIT_RLHF_FAULTS")
    if not spec:
        return
    _counts[(who, site)] += 1
    for item in spec.split(","):
        parts = item.strip().split(":")
        if len(parts) < 3 or parts[0] != who or parts[1] != site:
            continue
        marker = parts[3] if len(parts) > 3 else None
        if _counts[(who, site)] == int(parts[2]) and not (marker and os.path.exists(marker)):
            if marker:
                open(marker, "w").close()
            os._exit(17)
