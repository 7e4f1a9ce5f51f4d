"""GEdit-Bench's layout -> an edit-prompt dataset the evaluation (and the principles stage) can use.

Supported input (the HF dataset `stepfun-ai/GEdit-Bench`, as parquet shards of a local snapshot, a single
parquet / JSON-lines file, or a `save_to_disk` folder). Columns:

  key                   str   sample id (unique within task_type x language)               required
  task_type             str   one of the 11 categories (spelling variants such as           required
                              `subject_add` or `Subject Add` are mapped to `subject-add`)
  instruction           str   the edit instruction                                          required
  instruction_language  str   en | cn (zh, english, chinese accepted)                       required
  input_image           image the source the edit is judged against (GEdit's `_SRCIMG`)     required
  input_image_raw       image the unprocessed source (`data.source_column=input_image_raw`) optional
  Intersection_exist    bool  member of the EN/CN "intersection" subset                     optional (False)
  principles            list  [{question, category}] when a principles stage already ran    optional ([])

Output columns: id (`<task_type>/<language>/<key>`), source_image, instruction, principles, category,
language, intersection, key. Rows are filtered by language (`en`, `cn` or `all`) and subset (`fullset` or
`intersection`); what was filtered is counted in the returned report. A bad row raises `DatasetError`
naming the file, row and key.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
from collections import Counter
from typing import Any, Dict, List

from edit_rlhf.data.images import ImageError, decode_image
from edit_rlhf.data.prompts import DatasetError
from edit_rlhf.evaluation.protocol import GEDIT_CATEGORIES

REQUIRED = ("key", "task_type", "instruction", "instruction_language", "input_image")
IMAGE_COLUMNS = ("input_image", "input_image_raw")
LANGUAGE_ALIASES = {"en": "en", "english": "en", "cn": "cn", "zh": "cn", "zh-cn": "cn", "chinese": "cn"}
_CAT_KEY = {re.sub(r"[^a-z]", "", c): c for c in GEDIT_CATEGORIES}


def normalize_task_type(value: Any) -> str:
    """A GEdit task type in any common spelling -> its canonical name; ValueError when it is not one of the 11."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"task_type must be a non-empty string, got {value!r}")
    k = re.sub(r"[^a-z]", "", value.strip().lower())
    if k not in _CAT_KEY:
        raise ValueError(f"unknown task_type {value!r} (expected one of {list(GEDIT_CATEGORIES)})")
    return _CAT_KEY[k]


def normalize_language(value: Any) -> str:
    k = str(value).strip().lower() if value is not None else ""
    if k not in LANGUAGE_ALIASES:
        raise ValueError(f"unknown instruction_language {value!r} (expected en or cn)")
    return LANGUAGE_ALIASES[k]


def is_gedit(column_names) -> bool:
    return all(c in column_names for c in ("key", "task_type", "instruction_language", "input_image"))


SAVE_TO_DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def is_save_to_disk(path: str) -> bool:
    """A `datasets.save_to_disk` arrow folder: of a Dataset (dataset_info.json, state.json) or of a DatasetDict
    (dataset_dict.json and a folder per split)."""
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in SAVE_TO_DISK_MARKERS)


def open_gedit(path: str, split=None):
    """The raw GEdit table (images undecoded): a `save_to_disk` arrow folder (the hub copy's format; of a
    DatasetDict: `split` or its only split), a folder of parquet shards (searched recursively), or a parquet /
    JSON-lines file."""
    import datasets

    from edit_rlhf.data.prompts import load_hf_dataset

    if os.path.isdir(path) and not is_save_to_disk(path):
        files = sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
        if not files:
            raise DatasetError(f"{path}: no parquet files under this folder and not a save_to_disk folder")
        try:
            ds = datasets.load_dataset("parquet", data_files=files, split="train")
        except Exception as e:
            raise DatasetError(f"{path}: cannot read the parquet shards: {type(e).__name__}: {e}") from None
    else:
        ds = load_hf_dataset(path, split, "data.split")
    for col in IMAGE_COLUMNS:
        if col in ds.column_names and isinstance(ds.features[col], datasets.Image):
            ds = ds.cast_column(col, datasets.Image(decode=False))
    missing = [c for c in REQUIRED if c not in ds.column_names]
    if missing:
        raise DatasetError(f"{path}: not GEdit-Bench's layout: missing column(s) {missing}; has {ds.column_names}")
    return ds


def _image_cell(v: Any, where: str, col: str) -> Dict[str, Any]:
    """Check an image cell decodes and return it as {'bytes', 'path'} (bytes kept as they are: no re-encoding)."""
    try:
        decode_image(v)
    except ImageError as e:
        raise DatasetError(f"{where}: column '{col}': {e}") from None
    if isinstance(v, dict) and v.get("bytes") is None and v.get("path"):
        with open(v["path"], "rb") as f:
            return {"bytes": f.read(), "path": None}
    if isinstance(v, dict):
        return {"bytes": v["bytes"], "path": None}
    from edit_rlhf.data.images import encode_png

    return {"bytes": encode_png(decode_image(v)), "path": None}


def convert_gedit(path: str, out: str, language: str = "en", subset: str = "fullset",
                  source_column: str = "input_image", split=None) -> Dict[str, Any]:
    """Write the filtered GEdit rows in our edit-prompt schema to `out` (save_to_disk). Returns a report:
    rows read, kept, dropped by language / subset, per-category counts."""
    import datasets

    ds = open_gedit(path, split)
    if source_column not in ds.column_names:
        raise DatasetError(f"{path}: data.source_column={source_column!r} is not a column; has {ds.column_names}")
    has_inter = "Intersection_exist" in ds.column_names
    has_pr = "principles" in ds.column_names
    rows: Dict[str, List[Any]] = {k: [] for k in ("id", "source_image", "instruction", "principles", "category",
                                                  "language", "intersection", "key")}
    dropped = Counter()
    seen: Dict[str, int] = {}
    for i in range(len(ds)):
        r = ds[i]
        where = f"{path} row {i} (key={r.get('key')!r})"
        key = r.get("key")
        if key is None or (isinstance(key, str) and not key.strip()):
            raise DatasetError(f"{where}: column 'key' is missing")
        try:
            lang = normalize_language(r.get("instruction_language"))
            cat = normalize_task_type(r.get("task_type"))
        except ValueError as e:
            raise DatasetError(f"{where}: {e}") from None
        if language != "all" and lang != language:
            dropped["language"] += 1
            continue
        inter = bool(r.get("Intersection_exist")) if has_inter else False
        if subset == "intersection" and not inter:
            dropped["subset"] += 1
            continue
        instr = r.get("instruction")
        if not isinstance(instr, str) or not instr.strip():
            raise DatasetError(f"{where}: column 'instruction' must be a non-empty string, got {instr!r}")
        rid = f"{cat}/{lang}/{key}"
        if rid in seen:
            raise DatasetError(f"{where}: duplicate sample {rid} (first at row {seen[rid]})")
        seen[rid] = i
        rows["id"].append(rid)
        rows["source_image"].append(_image_cell(r.get(source_column), where, source_column))
        rows["instruction"].append(instr.strip())
        rows["principles"].append(list(r.get("principles") or []) if has_pr else [])
        rows["category"].append(cat)
        rows["language"].append(lang)
        rows["intersection"].append(inter)
        rows["key"].append(str(key))
    if not rows["id"]:
        raise DatasetError(f"{path}: no rows left after the filter language={language}, subset={subset} "
                           f"(dropped: {dict(dropped)})")
    s = datasets.Value("string")
    feats = datasets.Features({"id": s, "source_image": datasets.Image(), "instruction": s,
                               "principles": datasets.List({"question": s, "category": s}), "category": s,
                               "language": s, "intersection": datasets.Value("bool"), "key": s})
    out_ds = datasets.Dataset.from_dict(rows, features=feats)
    tmp = out.rstrip("/") + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    out_ds.save_to_disk(tmp)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.replace(tmp, out)
    rep = {"source": os.path.abspath(path), "output": os.path.abspath(out), "rows_read": len(ds),
           "rows": len(rows["id"]), "dropped": dict(dropped), "language": language, "subset": subset,
           "source_column": source_column, "intersection_column": has_inter,
           "categories": dict(Counter(rows["category"])), "with_principles": sum(bool(p) for p in rows["principles"])}
    with open(os.path.join(out, "gedit_manifest.json"), "w") as f:
        json.dump(rep, f, indent=2)
    return rep
