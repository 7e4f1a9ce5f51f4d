"""Datasets of Edit-RRM training: traces (SFT), preference pairs (GCPO, evaluation), EditReward-Bench.

- Traces (DESIGN §6): id, source_image, instruction, principles[{question, category}], edited_image,
  trace_text (ends with `<score>x</score>`); optional checks (gold 0/1 per principle), oracle_score.
- Pairs: id, source_image, instruction, principles, image_a, image_b, preferred in {a, b}; optional
  category (else, on sandbox pairs, the loser's `grade_*`). "same"/tie labels are dropped at load and counted.
- EditReward-Bench (EditScore, arXiv 2509.23909; its `evaluation.py` / `calculate_statistics.py`; the hub copy
  is a `save_to_disk` arrow folder): one row per (pair, dimension): key [id1, id2] (one id per output image),
  instruction, input_image, output_images [preferred, other], task_type (13 subtasks), dimension
  (prompt_following | consistency | overall); the first output is the human-preferred one (accuracy =
  score[0] > score[1]; the published figure per dimension is `evaluation.editreward`'s). It has no principles: the row's `principles` column is used when
  present, else the generic three below (or run `edit-rlhf principles` on the converted pairs first).

Images stay undecoded until a row is used; every bad row raises `DatasetError` naming the file, row and column.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from edit_rlhf.data.images import ImageError, decode_image
from edit_rlhf.data.prompts import DatasetError, load_hf_dataset
from edit_rlhf.rrm.format import normalize_category
from edit_rlhf.rrm.prompt import build_messages

GENERIC_PRINCIPLES = [
    {"question": "Does the edited image do what the instruction asks?", "category": "follow"},
    {"question": "Is everything the instruction does not mention unchanged?", "category": "keep"},
    {"question": "Is the edited image free of artifacts and distortions?", "category": "quality"},
]


def _principles(value: Any, where: str) -> List[Dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise DatasetError(f"{where}: column 'principles' must be a non-empty list, got {value!r}")
    out = []
    for j, p in enumerate(value):
        if not isinstance(p, dict) or not isinstance(p.get("question"), str) or not p["question"].strip():
            raise DatasetError(f"{where}: principles[{j}] needs a non-empty 'question', got {p!r}")
        try:
            out.append({"question": p["question"].strip(), "category": normalize_category(p.get("category"))})
        except ValueError as e:
            raise DatasetError(f"{where}: principles[{j}].category: {e}") from None
    return out


def _image(value: Any, where: str, col: str) -> np.ndarray:
    try:
        return decode_image(value)
    except ImageError as e:
        raise DatasetError(f"{where}: column '{col}': {e}") from None


def _text(value: Any, where: str, col: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{where}: column '{col}' must be a non-empty string, got {value!r}")
    return value


def _require(ds, path: str, cols: Sequence[str]) -> None:
    missing = [c for c in cols if c not in ds.column_names]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {missing}; has {ds.column_names}")
    if len(ds) == 0:
        raise DatasetError(f"{path}: dataset is empty")


# --------------------------------------------------------------------------- traces (SFT)
class TraceDataset:
    """Random access to SFT traces; `row(i)` decodes and validates row i."""

    REQUIRED = ("id", "source_image", "instruction", "principles", "edited_image", "trace_text")

    def __init__(self, path: str, validate: str = "schema"):
        self.path = path
        self.ds = load_hf_dataset(path)
        _require(self.ds, path, self.REQUIRED)
        self.ids = list(self.ds["id"])
        if validate == "full":
            for i in range(len(self.ds)):
                self.row(i)

    def __len__(self) -> int:
        return len(self.ds)

    def row(self, i: int) -> Dict[str, Any]:
        raw = self.ds[int(i)]
        where = f"{self.path} row {i} (id={raw.get('id')})"
        out = {"id": raw["id"], "instruction": _text(raw["instruction"], where, "instruction"),
               "principles": _principles(raw["principles"], where),
               "source_image": _image(raw["source_image"], where, "source_image"),
               "edited_image": _image(raw["edited_image"], where, "edited_image"),
               "trace_text": _text(raw["trace_text"], where, "trace_text")}
        for k in ("checks", "oracle_score", "grade"):
            if k in raw:
                out[k] = raw[k]
        if out.get("checks") is not None and len(out["checks"]) != len(out["principles"]):
            raise DatasetError(f"{where}: 'checks' has {len(out['checks'])} values for "
                               f"{len(out['principles'])} principles")
        return out


def chat_example(instruction: str, principles, source, edited, answer: Optional[str], style: str = "compact",
                 system: Optional[str] = None):
    """The RRM conversation as a `vlm.chat.ChatExample`: the same system text and user turn as inference
    (`rrm.prompt`), then the trace as the assistant turn (None: a generation prompt)."""
    from edit_rlhf.vlm.chat import ChatExample

    msgs = build_messages(instruction, principles, style, system)
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    return ChatExample(msgs, [source, edited])


# a verdict's decisions: each principle's check value and the final score (also the paper's `<\score>`)
_DECISIONS = re.compile(r'"score"\s*:\s*(-?\d+(?:\.\d+)?)|<score>\s*([^<]*?)\s*<')


def verdict_token_weights(tokenizer, labels, weight: float):
    """Per-token loss weights for a batch of RRM traces: `weight` on the tokens that carry a decision (each
    check's 0/1 and the final score's digits), 1 on the other assistant tokens, 0 elsewhere. The traces are
    mostly copied text (the observation, the questions, JSON); the few decision tokens are what the judge is for,
    and a rare one (a failed check of an over-edit) is otherwise a small fraction of the loss. Tokens are mapped
    to characters by decoding them one by one (trace text is plain ASCII), so any tokenizer works."""
    import torch

    from edit_rlhf.vlm.chat import IGNORE

    w = (labels != IGNORE).float()
    if weight == 1.0:
        return w
    for r in range(labels.shape[0]):
        pos = (labels[r] != IGNORE).nonzero().flatten().tolist()
        pieces = [tokenizer.decode([int(labels[r, j])]) for j in pos]
        ends = np.cumsum([len(x) for x in pieces])
        text = "".join(pieces)
        for m in _DECISIONS.finditer(text):
            g = 1 if m.group(1) is not None else 2
            lo, hi = m.span(g)
            if hi <= lo:
                continue
            first = int(np.searchsorted(ends, lo, side="right"))
            last = int(np.searchsorted(ends, hi - 1, side="right"))
            for k in range(first, min(last, len(pos) - 1) + 1):
                w[r, pos[k]] = float(weight)
    return w


# --------------------------------------------------------------------------- preference pairs
@dataclass
class Pair:
    """One preference pair, images decoded: `winner` is the preferred edit."""

    id: str
    instruction: str
    principles: List[Dict[str, str]]
    source: np.ndarray
    winner: np.ndarray
    loser: np.ndarray
    category: str = "all"


class PairSet:
    """A list of preference pairs with lazily decoded images. `stats` counts rows dropped at load."""

    def __init__(self, path: str, rows: List[Dict[str, Any]], stats: Dict[str, int]):
        self.path = path
        self.rows = rows  # {id, instruction, principles, source, winner, loser (raw cells), category, where}
        self.stats = stats

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Pair:
        r = self.rows[i]
        w = r["where"]
        return Pair(r["id"], r["instruction"], r["principles"], _image(r["source"], w, r["cols"][0]),
                    _image(r["winner"], w, r["cols"][1]), _image(r["loser"], w, r["cols"][2]), r["category"])

    def categories(self) -> List[str]:
        return [r["category"] for r in self.rows]

    def head(self, n: int) -> "PairSet":
        return PairSet(self.path, self.rows[:n] if n else self.rows, self.stats)


def load_pairs(path: str, category_column: Optional[str] = "category", size: int = 0) -> PairSet:
    """Our pair schema. Ties ('same', 'tie', '=') are dropped and counted in `stats['ties_dropped']`."""
    ds = load_hf_dataset(path)
    for c in ("image_a", "image_b"):
        if c in ds.column_names:
            import datasets

            if isinstance(ds.features[c], datasets.Image):
                ds = ds.cast_column(c, datasets.Image(decode=False))
    _require(ds, path, ("id", "source_image", "instruction", "principles", "image_a", "image_b", "preferred"))
    cat_col = category_column if category_column and category_column in ds.column_names else None
    rows, stats = [], {"rows": len(ds), "ties_dropped": 0}
    n = len(ds) if not size else min(size, len(ds))
    for i in range(n):
        raw = ds[i]
        where = f"{path} row {i} (id={raw.get('id')})"
        pref = raw["preferred"]
        pref = pref.strip().lower() if isinstance(pref, str) else pref
        if pref in ("same", "tie", "="):
            stats["ties_dropped"] += 1
            continue
        if pref not in ("a", "b"):
            raise DatasetError(f"{where}: column 'preferred' must be 'a', 'b' or 'same', got {raw['preferred']!r}")
        win, lose = ("image_a", "image_b") if pref == "a" else ("image_b", "image_a")
        if cat_col:
            category = str(raw[cat_col])
        elif "grade_a" in raw and "grade_b" in raw:  # sandbox pairs: the kind of worse edit
            category = str(raw["grade_b" if pref == "a" else "grade_a"])
        else:
            category = "all"
        rows.append({"id": _text(raw["id"], where, "id"),
                     "instruction": _text(raw["instruction"], where, "instruction"),
                     "principles": _principles(raw["principles"], where), "source": raw["source_image"],
                     "winner": raw[win], "loser": raw[lose], "category": category, "where": where,
                     "cols": ("source_image", win, lose)})
        if "grade_a" in raw and "grade_b" in raw:  # sandbox pairs: (winner's, loser's) candidate grade
            rows[-1]["grades"] = (str(raw["grade_a" if pref == "a" else "grade_b"]),
                                  str(raw["grade_b" if pref == "a" else "grade_a"]))
    if not rows:
        raise DatasetError(f"{path}: no usable pair (of {len(ds)} rows, {stats['ties_dropped']} ties)")
    return PairSet(path, rows, stats)


def _open_bench(path: str, split: Optional[str] = None):
    """A `datasets.save_to_disk` arrow folder (the hub copy's format: of a Dataset, or of a DatasetDict, whose
    split is `split` or its only one), a parquet/jsonl file, or a folder of `<split>-*.parquet` shards (`train`
    when no split is named; e.g. the hub's parquet conversion)."""
    import datasets

    if os.path.isdir(path) and not any(os.path.exists(os.path.join(path, f))
                                       for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
        prefix = split or "train"
        files = []
        for root, _, names in os.walk(path):
            files += [os.path.join(root, f) for f in names if f.endswith(".parquet") and f.startswith(prefix)]
        if not files:
            raise DatasetError(f"{path}: not a save_to_disk folder (no dataset_info.json / dataset_dict.json) and "
                               f"no {prefix}-*.parquet files under it")
        ds = datasets.load_dataset("parquet", data_files=sorted(files), split="train")
    else:
        ds = load_hf_dataset(path, split, "data.split")
    for c in ("input_image", "output_images"):
        f = ds.features.get(c)
        if isinstance(f, datasets.Image):
            ds = ds.cast_column(c, datasets.Image(decode=False))
        elif isinstance(f, (datasets.Sequence, list)) or type(f).__name__ == "List":
            inner = getattr(f, "feature", None) or (f[0] if isinstance(f, list) else None)
            if isinstance(inner, datasets.Image):
                ds = ds.cast_column(c, datasets.Sequence(datasets.Image(decode=False)))
    return ds


def load_editreward_bench(path: str, split: Optional[str] = None, dimensions: Sequence[str] = ("overall",),
                          generic_principles: bool = True, size: int = 0) -> PairSet:
    """EditReward-Bench rows as pairs (winner = output_images[0]); category = task_type, prefixed by the
    dimension when several are kept ("overall/color_alter")."""
    ds = _open_bench(path, split)
    _require(ds, path, ("key", "instruction", "input_image", "output_images", "task_type", "dimension"))
    has_pr = "principles" in ds.column_names
    if not has_pr and not generic_principles:
        raise DatasetError(f"{path}: no 'principles' column; set data.generic_principles=true or add "
                           "principles with `edit-rlhf principles` first")
    rows, stats = [], {"rows": len(ds), "ties_dropped": 0, "other_dimension": 0}
    multi = len(set(dimensions)) > 1
    for i in range(len(ds)):
        if size and len(rows) >= size:
            break
        raw = ds[i]
        where = f"{path} row {i}"
        dim = raw["dimension"]
        if dim not in dimensions:
            stats["other_dimension"] += 1
            continue
        key = raw["key"]
        outs = raw["output_images"]
        if not isinstance(key, (list, tuple)) or len(key) != 2:
            raise DatasetError(f"{where}: column 'key' must hold two ids, got {key!r}")
        if not isinstance(outs, (list, tuple)) or len(outs) != 2:
            raise DatasetError(f"{where}: column 'output_images' must hold two images, got {type(outs).__name__}"
                               f" of length {len(outs) if hasattr(outs, '__len__') else '?'}")
        pr = _principles(raw["principles"], where) if has_pr and raw.get("principles") else GENERIC_PRINCIPLES
        task = str(raw["task_type"])
        rows.append({"id": f"{key[0]}|{key[1]}|{dim}", "instruction": _text(raw["instruction"], where, "instruction"),
                     "principles": pr, "source": raw["input_image"], "winner": outs[0], "loser": outs[1],
                     "category": f"{dim}/{task}" if multi else task, "dimension": dim, "task_type": task,
                     "image_keys": (str(key[0]), str(key[1])),
                     "where": where, "cols": ("input_image", "output_images[0]", "output_images[1]")})
    if not rows:
        raise DatasetError(f"{path}: no rows of dimension(s) {list(dimensions)}")
    return PairSet(path, rows, stats)


def load_preferences(data_cfg) -> PairSet:
    """`EvalDataConfig` -> PairSet (our pairs or EditReward-Bench)."""
    if data_cfg.format == "editreward_bench":
        return load_editreward_bench(data_cfg.path, data_cfg.split, list(data_cfg.dimensions),
                                     data_cfg.generic_principles, data_cfg.size)
    return load_pairs(data_cfg.path, data_cfg.category_column, data_cfg.size)
