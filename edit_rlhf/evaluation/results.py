"""Per-sample evaluation records -> the result table (JSON + CSV), MLflow metrics and the one-line summary.

A record is one (editor, prompt): {'editor', 'id', 'index', 'category', 'intersection', 'sc', 'pq', 'o',
'sc_scores', 'pq_scores', 'judge_error', 'rrm', 'rrm_error', 'oracle', 'oracle_checks', 'oracle_error'}
(None = not configured or failed; the `*_error` says which). `build_table` aggregates each editor with
`protocol.aggregate` / `protocol.gedit_aggregate`; the table holds only quantities that a re-run with the
same seed must reproduce (no wall times), so `table.json` files of two runs can be compared byte for byte.

GEdit-Bench publishes its EN and CN results as separate tables (by instruction language), never pooled: when the
records hold more than one `language`, `build_table` returns one complete table per language under
`by_language` (no pooled aggregate anywhere), with headline keys suffixed by the language (`O_en`, `O_cn`).
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence

from edit_rlhf.evaluation.protocol import aggregate, category_order, gedit_aggregate

NAN = float("nan")
METRICS = ("judge", "rrm", "oracle")
LANGUAGE_ORDER = ("en", "cn")
SAMPLE_COLUMNS = ("editor", "id", "category", "language", "intersection", "sc", "pq", "o", "sc_scores", "pq_scores",
                  "judge_error", "rrm", "rrm_error", "oracle", "oracle_error")


def _v(x: Any) -> float:
    return NAN if x is None else float(x)


def jsonable(obj: Any) -> Any:
    """NaN / inf -> None, recursively (strict JSON; the CSV writes empty cells for them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def _editor_table(recs: List[dict], cats: List[str], present: Dict[str, bool]) -> Dict[str, Any]:
    c = [r["category"] for r in recs]
    t: Dict[str, Any] = {"n": len(recs), "category_n": {k: c.count(k) for k in cats}}
    if present.get("judge"):
        t["gedit"] = gedit_aggregate([_v(r["sc"]) for r in recs], [_v(r["pq"]) for r in recs], c, cats)
        n_judged = 2 * len(recs)
        failed = sum((r["sc"] is None) + (r["pq"] is None) for r in recs)
        t["judge"] = {"judgements": n_judged, "failed": failed,
                      "parse_rate": (n_judged - failed) / n_judged if n_judged else NAN}
        inter = [r for r in recs if r.get("intersection")]
        if inter and len(inter) < len(recs):  # GEdit's EN/CN "intersection" subset, beside the full set
            ci = [r["category"] for r in inter]
            t["gedit_intersection"] = gedit_aggregate([_v(r["sc"]) for r in inter], [_v(r["pq"]) for r in inter],
                                                      ci, [k for k in cats if k in set(ci)])
    if present.get("rrm"):
        t["rrm"] = aggregate([_v(r["rrm"]) for r in recs], c, cats)
    if present.get("oracle"):
        t["oracle"] = aggregate([_v(r["oracle"]) for r in recs], c, cats)
    return t


def headline(t: Dict[str, Any]) -> Dict[str, float]:
    """The few numbers per editor that summaries, deltas and MLflow use (macro means; NaN when absent)."""
    h: Dict[str, float] = {}
    if "gedit" in t:
        for k in ("SC", "PQ", "O"):
            h[k] = t["gedit"][k]["macro"]
        h["judge_failed"] = t["judge"]["failed"]
        h["judge_parse_rate"] = t["judge"]["parse_rate"]
    for k in ("rrm", "oracle"):
        if k in t:
            h[k] = t[k]["macro"]
            h[f"{k}_micro"] = t[k]["micro"]
            h[f"{k}_failed"] = t[k]["failed"]
    return h


def _languages(records: Sequence[dict]) -> List[Optional[str]]:
    seen = list(dict.fromkeys(r.get("language") for r in records))
    return sorted(seen, key=lambda x: (LANGUAGE_ORDER.index(x) if x in LANGUAGE_ORDER else len(LANGUAGE_ORDER),
                                       str(x)))


def build_table(records: Sequence[dict], editors: Sequence[str], present: Dict[str, bool],
                meta: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The result table of one evaluation run: per editor (in `editors` order) the GEdit SC / PQ / O, RRM and
    oracle aggregates with their failure counts, and each later editor's difference to the first. Records of
    several instruction languages give one such table per language (`by_language`), never a pooled one."""
    langs = _languages(records)
    if len(langs) > 1:
        return _split_by_language(records, editors, present, meta, langs)
    cats = category_order(r["category"] for r in records)
    per = {e: _editor_table([r for r in records if r["editor"] == e], cats, present) for e in editors}
    heads = {e: headline(per[e]) for e in editors}
    base = editors[0]
    deltas = {e: {k: heads[e][k] - heads[base][k] for k in heads[e]  # only where both editors have the metric
                  if k in ("SC", "PQ", "O", "rrm", "oracle", "rrm_micro", "oracle_micro")
                  and math.isfinite(heads[e][k] - heads[base][k])}
              for e in editors[1:]}
    paired = {e: paired_vs(records, base, e, present) for e in editors[1:]}
    return {"editors": list(editors), "categories": cats, "metrics": [m for m in METRICS if present.get(m)],
            **({"language": langs[0]} if langs and langs[0] else {}),
            "headline": heads, "delta_vs_" + base: deltas, "paired_vs_" + base: paired, "per_editor": per,
            **({"meta": meta} if meta else {})}


SIGNIFICANT_Z = 2.0


def paired_vs(records: Sequence[dict], base: str, editor: str, present: Dict[str, bool]) -> Dict[str, Any]:
    """Per-prompt paired comparison of `editor` with `base` on the oracle and RRM scores (same prompts and seeds:
    the records of both editors matched by (id, index)): mean difference, its standard error, z over the prompts
    both scored, and `significant` = |z| >= 2. {} for a metric the evaluation did not score."""
    from edit_rlhf.stats import paired_prompts

    out: Dict[str, Any] = {}
    key = lambda r: (r["id"], r.get("index"))
    b = {key(r): r for r in records if r["editor"] == base}
    t = {key(r): r for r in records if r["editor"] == editor}
    common = [k for k in t if k in b]
    for m in ("oracle", "rrm"):
        if not present.get(m) or len(common) < 2:
            continue
        p = paired_prompts([_v(t[k][m]) for k in common], [_v(b[k][m]) for k in common])
        p["significant"] = bool(not math.isnan(p["z"]) and abs(p["z"]) >= SIGNIFICANT_Z)
        out[m] = p
    return out


def _split_by_language(records, editors, present, meta, langs) -> Dict[str, Any]:
    names = [lang or "unlabelled" for lang in langs]
    subs = {n: build_table([r for r in records if (r.get("language") or "unlabelled") == n], editors, present)
            for n in names}
    base = editors[0]
    heads = {e: {f"{k}_{n}": v for n in names for k, v in subs[n]["headline"][e].items()} for e in editors}
    deltas = {e: {f"{k}_{n}": v for n in names for k, v in subs[n]["delta_vs_" + base][e].items()}
              for e in editors[1:]}
    return {"editors": list(editors), "languages": names, "metrics": [m for m in METRICS if present.get(m)],
            "headline": heads, "delta_vs_" + base: deltas, "by_language": subs, **({"meta": meta} if meta else {})}


def mlflow_metrics(table: Dict[str, Any]) -> Dict[str, float]:
    """Flat metric names: `<editor>/<metric>` (macro), `<editor>/<metric>/<category>`, `delta/<editor>/<metric>`;
    a table split by language prefixes each with `<language>/`."""
    if "by_language" in table:
        return {f"{lang}/{k}": v for lang, sub in table["by_language"].items() for k, v in mlflow_metrics(sub).items()}
    m: Dict[str, float] = {}
    for e, h in table["headline"].items():
        m.update({f"{e}/{k}": v for k, v in h.items()})
        t = table["per_editor"][e]
        for cat in table["categories"]:
            if "gedit" in t:
                m[f"{e}/O/{cat}"] = t["gedit"]["O"]["per_category"][cat]["mean"]
            for k in ("rrm", "oracle"):
                if k in t:
                    m[f"{e}/{k}/{cat}"] = t[k]["per_category"][cat]["mean"]
    for key, deltas in table.items():
        if key.startswith("delta_vs_"):
            for e, d in deltas.items():
                m.update({f"delta/{e}/{k}": v for k, v in d.items()})
    return {k: v for k, v in m.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def table_rows(table: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One row per (editor, category) plus a `macro` row per editor: the CSV / HTML result table (per language,
    with a leading `language` column, when the table is split by language)."""
    if "by_language" in table:
        return [{"language": lang, **r} for lang, sub in table["by_language"].items() for r in table_rows(sub)]
    rows = []
    for e in table["editors"]:
        t = table["per_editor"][e]
        for cat in ["macro"] + list(table["categories"]):
            row: Dict[str, Any] = {"editor": e, "category": cat}
            if "gedit" in t:
                for k in ("SC", "PQ", "O"):
                    a = t["gedit"][k]
                    row[k] = a["macro"] if cat == "macro" else a["per_category"][cat]["mean"]
                    row[f"{k}_valid"] = a["n_valid"] if cat == "macro" else a["per_category"][cat]["n_valid"]
            for k, col in (("rrm", "RRM"), ("oracle", "oracle")):
                if k in t:
                    a = t[k]
                    row[col] = a["macro"] if cat == "macro" else a["per_category"][cat]["mean"]
                    row[f"{col}_valid"] = a["n_valid"] if cat == "macro" else a["per_category"][cat]["n_valid"]
            n = t["n"] if cat == "macro" else t["category_n"][cat]
            rows.append({"editor": e, "category": cat, "n": n, **{k: v for k, v in row.items()
                                                                   if k not in ("editor", "category")}})
    return rows


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else repr(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return "" if v is None else v


def write_csv(path: str, rows: List[Dict[str, Any]], columns: Optional[Sequence[str]] = None) -> str:
    cols = list(columns) if columns else list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(r.get(k)) for k in cols})
    return path


def write_results(out_dir: str, table: Dict[str, Any], records: Sequence[dict]) -> Dict[str, str]:
    """table.json (strict JSON), table.csv (editor x category) and samples.csv (one line per edit)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"table_json": os.path.join(out_dir, "table.json"), "table_csv": os.path.join(out_dir, "table.csv"),
             "samples_csv": os.path.join(out_dir, "samples.csv")}
    with open(paths["table_json"], "w") as f:
        json.dump(jsonable(table), f, indent=1, sort_keys=False, allow_nan=False)
    write_csv(paths["table_csv"], table_rows(table))
    write_csv(paths["samples_csv"], list(records), SAMPLE_COLUMNS)
    return paths


def _f(x: Any, nd: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}f}"


def summary_line(table: Dict[str, Any], seconds: float, n_prompts: int, extra: Sequence[str] = ()) -> str:
    """One line; a table split by language gives each language its own segments (`GEdit-EN base: O ...`)."""
    parts = [f"eval-editor: {n_prompts} prompts x {len(table['editors'])} editor(s) in {seconds:.0f}s"]
    if "by_language" in table:
        for lang, sub in table["by_language"].items():
            parts += [f"GEdit-{lang.upper()} {p}" for p in _editor_parts(sub)]
    else:
        parts += _editor_parts(table)
    return " | ".join(parts + list(extra))


def _editor_parts(table: Dict[str, Any]) -> List[str]:
    parts: List[str] = []
    for e in table["editors"]:
        h = table["headline"][e]
        s = [e + ":"]
        if "O" in h:
            s.append(f"O {_f(h['O'])} (SC {_f(h['SC'])}, PQ {_f(h['PQ'])}; judge failures "
                     f"{int(h['judge_failed'])}/{2 * table['per_editor'][e]['n']})")
        if "rrm" in h:
            s.append(f"RRM {_f(h['rrm'])} ({int(h['rrm_failed'])} failed)")
        if "oracle" in h:
            s.append(f"oracle {_f(h['oracle'])}")
        parts.append(" ".join(s))
    for key, deltas in table.items():
        if key.startswith("delta_vs_"):
            paired = table.get("paired_vs_" + key[9:], {})
            for e, d in deltas.items():
                ds = ", ".join(f"{k} {d[k]:+.2f}" + _significance(paired.get(e, {}).get(k))
                               for k in ("O", "rrm", "oracle") if k in d and math.isfinite(d[k]))
                if ds:
                    parts.append(f"{e} - {key[9:]}: {ds}")
    return parts


def _significance(p: Optional[Dict[str, Any]]) -> str:
    if not p or math.isnan(p.get("z", math.nan)):
        return ""
    return (f" (paired over {p['n']} prompts: {p['diff']:+.2f} ± {p['se']:.2f}, z {p['z']:.1f}, "
            f"{'significant' if p['significant'] else 'not significant'} at |z| >= {SIGNIFICANT_Z:g})")
