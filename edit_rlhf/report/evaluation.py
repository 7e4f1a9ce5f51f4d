"""Report sections of an editor evaluation (`edit-rlhf eval-editor`): the result tables, a per-category chart,
the edits side by side (source | each editor | target) with their scores, and per-principle checks.

`examples` (what the comparison shows) are dicts: {'id', 'instruction', 'category', 'source' (H, W, 3),
'target' (or None), 'principles' [{question, category}], 'edits': {editor: (H, W, 3)},
'records': {editor: per-sample record (results.py)}}.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

from edit_rlhf.evaluation.results import table_rows
from edit_rlhf.report.document import Img, Report, Section, png_bytes
from edit_rlhf.report.plots import bars_png

CELL_PX = 160  # display width of one image in the comparison table


def _f(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.2f}"


def headline_rows(table: Dict[str, Any]) -> List[Dict[str, Any]]:
    rows = []
    base = table["editors"][0]
    deltas = table.get(f"delta_vs_{base}", {})
    for e in table["editors"]:
        h, t = table["headline"][e], table["per_editor"][e]
        r: Dict[str, Any] = {"editor": e, "prompts": t["n"]}
        if "O" in h:
            r.update({"SC": h["SC"], "PQ": h["PQ"], "O": h["O"],
                      "judge failures": f"{int(h['judge_failed'])}/{2 * t['n']}"})
        if "rrm" in h:
            r.update({"RRM (macro)": h["rrm"], "RRM failures": int(h["rrm_failed"])})
        if "oracle" in h:
            r.update({"oracle (macro)": h["oracle"], "oracle (micro)": h["oracle_micro"]})
        d = deltas.get(e)
        if d:
            r["Δ vs " + base] = ", ".join(f"{k} {v:+.2f}" for k, v in d.items()
                                          if k in ("O", "rrm", "oracle") and math.isfinite(v))
        paired = table.get(f"paired_vs_{base}", {}).get(e, {})
        if paired:  # per-prompt paired z, and the verdict the report states
            r["paired vs " + base] = ", ".join(
                f"{k} z {p['z']:.1f} ({'significant' if p['significant'] else 'not significant'})"
                for k, p in paired.items() if not math.isnan(p["z"]))
        rows.append(r)
    return rows


def _caption(rec: Optional[Dict[str, Any]]) -> str:
    if not rec:
        return ""
    parts = []
    if "o" in rec:
        if rec.get("sc") is None and rec.get("pq") is None:
            parts.append("judge failed")
        else:
            parts.append(f"O {_f(rec.get('o'))} (SC {_f(rec.get('sc'))}, PQ {_f(rec.get('pq'))})")
    for key, label in (("rrm", "RRM"), ("oracle", "oracle")):
        if key in rec:
            parts.append(f"{label} {_f(rec[key])}" if rec[key] is not None else f"{label} failed")
    return "\n".join(parts)


def add_eval_sections(report: Report, table: Dict[str, Any], examples: Sequence[Dict[str, Any]] = (),
                      title_prefix: str = "") -> None:
    """Tables, chart and comparison of one evaluation table (results.build_table) into `report`; a table split by
    instruction language gets one set of sections per language (GEdit-Bench-EN / -CN are never pooled)."""
    if "by_language" in table:
        for k, (lang, sub) in enumerate(table["by_language"].items()):
            add_eval_sections(report, sub, examples if k == 0 else (), f"{title_prefix}GEdit-Bench-{lang.upper()}: ")
        return
    s = report.section(f"{title_prefix}Evaluation results")
    s.add_table(headline_rows(table), title="Headline (macro means over categories; failures excluded per metric)")
    cols = ["editor", "category", "n"] + [c for c in ("SC", "PQ", "O", "O_valid", "RRM", "RRM_valid", "oracle",
                                                      "oracle_valid") if any(c in r for r in table_rows(table))]
    s.add_table(table_rows(table), cols, title="Per category", emphasize="macro")
    for metric in ("O", "oracle", "rrm"):  # chart the first metric that has values
        groups = {}
        for e in table["editors"]:
            t = table["per_editor"][e]
            agg = t["gedit"]["O"] if metric == "O" and "gedit" in t else t.get(metric) if metric != "O" else None
            if agg:
                groups[e] = {c: v["mean"] for c, v in agg["per_category"].items()}
        if any(v is not None and math.isfinite(v) for g in groups.values() for v in g.values()):
            s.add_image(bars_png(groups, f"{metric} per category", metric), caption=f"{metric} per category and editor")
            break
    if "gedit" in table["per_editor"][table["editors"][0]]:
        s.add_text("GEdit-Bench protocol: SC = min(instruction success, over-editing), PQ = min(naturalness, "
                   "artifacts), O = sqrt(SC·PQ) per sample; category means; unweighted mean over the categories "
                   "present. A failed judgement (unparsable reply) is excluded from its metric and counted.", note=True)
    if examples:
        add_examples(report.section(f"{title_prefix}Edits side by side"), table["editors"], examples)


def add_examples(s: Section, editors: Sequence[str], examples: Sequence[Dict[str, Any]]) -> None:
    has_target = any(ex.get("target") is not None for ex in examples)
    header = ["prompt", "source"] + list(editors) + (["target"] if has_target else [])
    rows = []
    for ex in examples:
        small = max(ex["source"].shape[:2]) < 128
        row: List[Any] = [f"{ex['id']}\n[{ex.get('category', '')}]\n{ex['instruction']}",
                          Img(png_bytes(ex["source"]), "source", CELL_PX, small)]
        for e in editors:
            img = ex["edits"].get(e)
            rec = ex.get("records", {}).get(e)
            row.append(Img(png_bytes(img), f"{e}\n{_caption(rec)}", CELL_PX, small) if img is not None else "–")
        if has_target:
            t = ex.get("target")
            row.append(Img(png_bytes(t), "target", CELL_PX, small) if t is not None else "–")
        rows.append(row)
    s.add_image_table(header, rows)
    checks = principle_rows(editors, examples)
    if checks:
        s.add_table(checks, title="Per-principle checks (oracle; RRM where it parsed): ✓ met, ✗ not met")


def principle_rows(editors: Sequence[str], examples: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    rows = []
    for ex in examples:
        prs = ex.get("principles") or []
        for j, p in enumerate(prs):
            r: Dict[str, Any] = {"prompt": ex["id"], "principle": f"[{p.get('category', '')}] {p.get('question', '')}"}
            any_check = False
            for e in editors:
                rec = ex.get("records", {}).get(e) or {}
                for src, key in (("oracle", "oracle_checks"), ("RRM", "rrm_checks")):
                    cs = rec.get(key)
                    if cs is not None and j < len(cs):
                        r[f"{e} {src}"] = "✓" if int(cs[j]) else "✗"
                        any_check = True
            if any_check:
                rows.append(r)
    return rows


def comparison_grid(examples: Sequence[Dict[str, Any]], editors: Sequence[str], size: int = 128):
    """One PNG-able uint8 grid for MLflow: a row per prompt, `source | editor... | target`, each edit captioned
    with its scores (O / RRM / oracle) and, when present, its oracle checks (+ met, x not met)."""
    import numpy as np
    from PIL import Image, ImageDraw

    has_target = any(ex.get("target") is not None for ex in examples)
    ncol = 1 + len(editors) + int(has_target)
    cap, title_h = 36, 14
    h = size + cap + title_h
    grid = Image.new("RGB", (ncol * size, len(examples) * h), (255, 255, 255))
    draw = ImageDraw.Draw(grid)

    def paste(img, x, y, lines):
        if img is not None:
            grid.paste(Image.fromarray(np.asarray(img, np.uint8)).resize((size, size), Image.NEAREST), (x, y))
        for k, line in enumerate(lines[:3]):
            draw.text((x + 2, y + size + 1 + 11 * k), line[: size // 6], fill=(0, 0, 0))

    for r, ex in enumerate(examples):
        y = r * h
        draw.text((2, y + 1), f"{ex['id']}: {ex['instruction']}"[: ncol * size // 6], fill=(0, 0, 120))
        paste(ex["source"], 0, y + title_h, ["source"])
        for c, e in enumerate(editors):
            rec = (ex.get("records") or {}).get(e) or {}
            short = [f"{k} {'fail' if rec.get(key) is None else format(rec[key], '.2f')}"  # ASCII: PIL's font
                     for k, key in (("O", "o"), ("RRM", "rrm"), ("orc", "oracle")) if key in rec]
            lines = [e, " ".join(short)]
            checks = rec.get("oracle_checks")
            if checks:
                lines.append("".join("+" if x else "x" for x in checks))
            paste(ex["edits"].get(e), (c + 1) * size, y + title_h, lines)
        if has_target:
            paste(ex.get("target"), (ncol - 1) * size, y + title_h, ["target"])
    return np.asarray(grid)
