"""Sample, parse, re-sample: the one loop behind every model-based scorer (the Edit-RRM reward and evaluation
scorer, the VLM judges).

Each request gets `spec.n` samples from the engine; each sample is parsed. A sample that did not parse (and did
not time out: a re-sample would time out again) is drawn again, alone, with a new seed, for at most `resample`
rounds. Greedy decoding (temperature 0) is never re-sampled: it would repeat itself.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Sequence, Tuple, TypeVar

from edit_rlhf.rrm.engine import Completion, GenRequest, SamplingSpec

RESAMPLE_STRIDE = 1_000_003  # seed offset of re-sample round r: base + r * stride + j (j: the sample's position)

P = TypeVar("P")  # a parsed sample: anything with a boolean `ok`


def sample_parsed(engine, requests: Sequence[GenRequest], spec: SamplingSpec, parse: Callable[[int, Completion], P],
                  resample: int = 0, timeout_s: Optional[float] = None
                  ) -> Tuple[List[List[Completion]], List[List[P]], int]:
    """(completions, parsed, number of re-sampled draws), both lists indexed [request][sample].
    `parse(i, completion)` parses a sample of request i; `engine.generate(requests, spec, timeout_s=...)`."""
    if not requests:
        return [], [], 0
    comps = [list(cs) for cs in _generate(engine, requests, spec, timeout_s)]
    parsed = [[parse(i, c) for c in cs] for i, cs in enumerate(comps)]
    redrawn = 0
    for r in range(1, resample + 1):
        redo = [(i, j) for i, ps in enumerate(parsed) for j, p in enumerate(ps)
                if not p.ok and comps[i][j].finish_reason != "timeout"]
        if not redo or spec.temperature == 0.0:
            break
        sub = [GenRequest(requests[i].prompt, requests[i].images, seed=requests[i].seed + r * RESAMPLE_STRIDE + j)
               for i, j in redo]
        for (i, j), cs in zip(redo, _generate(engine, sub, dataclasses.replace(spec, n=1), timeout_s)):
            comps[i][j] = cs[0]
            parsed[i][j] = parse(i, cs[0])
        redrawn += len(redo)
    return comps, parsed, redrawn


def _generate(engine, requests, spec, timeout_s):
    # engines without a deadline argument are called without one (the judges' engines never set it)
    if timeout_s is None:
        return engine.generate(requests, spec)
    return engine.generate(requests, spec, timeout_s=timeout_s)
