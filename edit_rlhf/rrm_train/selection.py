"""T+V trace selection (Edit-R1 §3.1.1, Step 4): of several candidate traces per (source, edit), keep the one
whose per-principle checks agree most with the gold labels; ties go to the higher average, then the higher
final score, then the lower index (`algorithms.gcpo.select_trace`). Unparsable candidates rank last.

`select_rows` is the pure core; `run_selection` is the data stage behind `edit-rlhf rrm-traces`: it reads a
traces dataset, gets candidates (the sandbox teacher pool, or a column of real VLM outputs), selects, and
writes the SFT dataset with the selection's figures (also in `<output>/selection.json`).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Dict, List, Sequence

import numpy as np

from edit_rlhf.algorithms.gcpo import select_trace
from edit_rlhf.data.prompts import DatasetError, load_hf_dataset
from edit_rlhf.rrm.parse import parse_verdict


def candidate_accuracy(text: str, gold: Sequence[int]) -> float:
    """Per-principle agreement of one candidate with gold (-1 when it does not parse)."""
    v = parse_verdict(text, n_expected=len(gold))
    if not v.ok:
        return -1.0
    return float(np.mean([int(c) == int(g) for c, g in zip(v.checks, gold)]))


def select_one(candidates: Sequence[str], gold: Sequence[int]) -> Dict[str, Any]:
    """{'index', 'accuracy', 'text', 'parsed': n parsable, 'accuracies': per candidate (-1 = unparsable)}."""
    parsed = []
    for t in candidates:
        v = parse_verdict(t, n_expected=len(gold))
        parsed.append((v.checks, v.average, v.score) if v.ok else (None, None, None))
    idx, acc = select_trace(parsed, list(gold))
    accs = [candidate_accuracy(t, gold) for t in candidates]
    return {"index": idx, "accuracy": acc, "text": candidates[idx], "parsed": sum(p[0] is not None for p in parsed),
            "accuracies": accs}


def select_rows(candidate_lists: Sequence[Sequence[str]], golds: Sequence[Sequence[int]]) -> List[Dict[str, Any]]:
    return [select_one(c, g) for c, g in zip(candidate_lists, golds)]


def summarize_selection(sel: Sequence[Dict[str, Any]]) -> Dict[str, float]:
    """Figures of a selection: the chosen traces' agreement with gold (T+V) against the first candidate's
    (T: no verification) and the mean candidate's, and the candidates' parse rate."""
    chosen = [s["accuracy"] for s in sel]
    first = [max(0.0, s["accuracies"][0]) for s in sel]  # unparsable counts as 0 agreement
    every = [max(0.0, a) for s in sel for a in s["accuracies"]]
    n_c = sum(len(s["accuracies"]) for s in sel)
    return {"rows": len(sel), "candidates": n_c,
            "candidate_parse_rate": sum(s["parsed"] for s in sel) / max(1, n_c),
            "selected_accuracy": float(np.mean([max(0.0, a) for a in chosen])) if sel else 0.0,
            "selected_exact": float(np.mean([a == 1.0 for a in chosen])) if sel else 0.0,
            "first_candidate_accuracy": float(np.mean(first)) if sel else 0.0,
            "first_candidate_exact": float(np.mean([a == 1.0 for a in first])) if sel else 0.0,
            "mean_candidate_accuracy": float(np.mean(every)) if every else 0.0,
            "unparsable_rows": sum(s["parsed"] == 0 for s in sel)}


def _gold(raw: Dict[str, Any], col: str, where: str, n: int) -> List[int]:
    g = raw.get(col)
    if not isinstance(g, (list, tuple)) or len(g) != n or any(int(x) not in (0, 1) for x in g):
        raise DatasetError(f"{where}: column '{col}' must hold one 0/1 label per principle ({n}), got {g!r}")
    return [int(x) for x in g]


def run_selection(cfg, quiet: bool = False) -> Dict[str, Any]:
    """`RRMTraceSelectConfig` -> the selected SFT dataset at `cfg.output` (+ selection.json). Returns figures."""
    import datasets

    from edit_rlhf.rrm_train.teacher import candidate_rng, teacher_candidates

    t0 = time.time()
    if os.path.exists(cfg.output):
        if not cfg.overwrite:
            raise DatasetError(f"{cfg.output}: exists; set overwrite=true to replace it")
        shutil.rmtree(cfg.output)
    ds = load_hf_dataset(cfg.input)
    need = ["id", "principles", cfg.gold_column] + (["trace_text", "oracle_score"] if cfg.source == "teacher"
                                                     else [cfg.candidates_column])
    missing = [c for c in need if c not in ds.column_names]
    if missing:
        raise DatasetError(f"{cfg.input}: missing column(s) {missing} for source={cfg.source}; has {ds.column_names}")
    cols = [c for c in ds.column_names if c != cfg.candidates_column]
    light = ds.select_columns([c for c in need if c in ds.column_names])
    cands, golds = [], []
    tc = cfg.teacher
    for i in range(len(light)):
        raw = light[i]
        where = f"{cfg.input} row {i} (id={raw.get('id')})"
        gold = _gold(raw, cfg.gold_column, where, len(raw["principles"]))
        if cfg.source == "teacher":
            c = teacher_candidates(raw["trace_text"], raw["principles"], gold, raw["oracle_score"], tc.error_rates,
                                   candidate_rng(tc.seed, i, raw["id"]), tc.lazy_prob, tc.malformed_prob,
                                   tc.score_jitter)
        else:
            c = raw[cfg.candidates_column]
            if not isinstance(c, (list, tuple)) or not c or not all(isinstance(t, str) for t in c):
                raise DatasetError(f"{where}: column '{cfg.candidates_column}' must be a non-empty list of texts")
            c = list(c)
        cands.append(c)
        golds.append(gold)
    sel = select_rows(cands, golds)
    keep = [i for i, s in enumerate(sel) if s["parsed"] > 0 and s["accuracy"] >= cfg.min_accuracy]
    out = ds.select_columns(cols)
    if "trace_text" in out.column_names:
        out = out.rename_column("trace_text", "source_trace_text")
    out = out.add_column("trace_text", [s["text"] for s in sel])
    out = out.add_column("selected_index", [int(s["index"]) for s in sel])
    out = out.add_column("selection_accuracy", [float(s["accuracy"]) for s in sel])
    if cfg.keep_candidates:
        out = out.add_column("candidate_traces", [list(c) for c in cands])
        out = out.add_column("candidate_accuracies", [[float(a) for a in s["accuracies"]] for s in sel])
    out = out.select(keep)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        out.save_to_disk(cfg.output)
    finally:
        if bars:
            datasets.enable_progress_bars()
    fig = summarize_selection(sel)
    fig.update(kept=len(keep), dropped_unparsable=sum(s["parsed"] == 0 for s in sel),
               dropped_below_min_accuracy=sum(s["parsed"] > 0 and s["accuracy"] < cfg.min_accuracy for s in sel),
               seconds=round(time.time() - t0, 2), input=cfg.input, output=cfg.output, source=cfg.source)
    if cfg.source == "teacher":
        fig["teacher"] = {"error_rates": list(tc.error_rates), "lazy_prob": tc.lazy_prob,
                          "malformed_prob": tc.malformed_prob, "score_jitter": tc.score_jitter, "seed": tc.seed}
    with open(os.path.join(cfg.output, "selection.json"), "w") as f:
        json.dump(fig, f, indent=2)
    if not quiet:
        print(f"rrm-traces: {fig['rows']} rows x {fig['candidates'] // max(1, fig['rows'])} candidates -> kept "
              f"{fig['kept']} | per-principle agreement with gold: selected {fig['selected_accuracy']:.3f} "
              f"(exact {fig['selected_exact']:.3f}), first candidate {fig['first_candidate_accuracy']:.3f}, "
              f"mean candidate {fig['mean_candidate_accuracy']:.3f} | candidate parse rate "
              f"{fig['candidate_parse_rate']:.3f} | {fig['seconds']:.1f}s -> {cfg.output}", flush=True)
    return fig
