"""Where does a sandbox RRM go wrong - seeing or comparing? Each checkpoint writes its trace (greedy, transformers)
for the held-out graded edits of `.cache/sandbox/traces_eval`; per candidate grade we compare its observation line
("source: ... edited: ...") with the oracle trace's and its checks with the oracle's, and split the checks by
whether the observation was right (`edit_rlhf.rrm_train.metrics.trace_diagnosis`); with traces built with
`trace_compare=true` (`--data .cache/sandbox_cmp/traces_eval`) also whether its "source to edited:" line was. A judge with right observations
but wrong checks on them fails at comparing the two descriptions, not at seeing. Minutes per checkpoint.

    .venv/bin/python benchmarks/rrm_diagnose.py [--data .cache/sandbox/traces_eval] [--n 256] [--max-tokens 384] [--out FILE] \\
        [--note TEXT] stage3=models/sandbox/rrm_sft other=outputs/.../final ...
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Dict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/common.py


def diagnose(path: str, rows, batch_size: int = 32, max_tokens: int = 256) -> Dict[str, Any]:
    import torch

    from edit_rlhf.rrm_train.data import chat_example
    from edit_rlhf.rrm_train.metrics import trace_diagnosis
    from edit_rlhf.rrm_train.model import load_rrm
    from edit_rlhf.vlm.generate import generate

    try:
        model, proc = load_rrm(path, "float32", "cpu")
    except FileNotFoundError as e:
        raise SystemExit(f"rrm_diagnose: {e}")
    exs = [chat_example(r["instruction"], r["principles"], r["source_image"], r["edited_image"], None, "compact")
           for r in rows]
    with torch.no_grad():
        replies = generate(model, proc, exs, max_new_tokens=max_tokens, batch_size=batch_size)
    out = trace_diagnosis(replies, [r["trace_text"] for r in rows], [r["checks"] for r in rows],
                          [r["grade"] for r in rows], [len(r["principles"]) for r in rows])
    return {"model": os.path.abspath(path), "by_grade": out,
            "examples": [{"grade": r["grade"], "gold": r["trace_text"].split("\n", 1)[0], "reply": t}
                         for r, t in zip(rows[:3], replies[:3])]}


def main(argv=None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="name=path of an RRM folder (with its processor)")
    ap.add_argument("--data", default=".cache/sandbox/traces_eval", help="held-out traces (sandbox build)")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=384, help="generation limit (compare traces run to ~300 tokens)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--note", default=None)
    a = ap.parse_args(argv)
    from datasets import load_from_disk

    from edit_rlhf.runtime import setup_process

    setup_process(1)
    if not os.path.isdir(a.data):
        raise SystemExit(f"rrm_diagnose: {a.data} not found: run `edit-rlhf sandbox build .cache/sandbox` first")
    ds = load_from_disk(a.data)
    missing = {"trace_text", "checks", "grade", "principles"} - set(ds.column_names)
    if missing:
        raise SystemExit(f"rrm_diagnose: {a.data} lacks column(s) {sorted(missing)}: not sandbox traces")
    rows = [ds[i] for i in range(min(a.n, len(ds)))]
    t0, res = time.time(), {}
    for item in a.models:
        if "=" not in item:
            raise SystemExit(f"rrm_diagnose: {item!r}: expected name=path")
        name, path = item.split("=", 1)
        res[name] = diagnose(path, rows, max_tokens=a.max_tokens)
    rep = {"benchmark": "rrm_diagnose", "data": a.data, "n": len(rows), "rrms": res, "seconds": round(time.time() - t0, 1),
           "command": " ".join(["python", *sys.argv] if argv is None else ["rrm_diagnose.main", *argv]), "note": a.note}
    from common import emit

    return emit(rep, a.out)


if __name__ == "__main__":
    main()
