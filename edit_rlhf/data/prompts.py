"""Loading and validating edit-prompt datasets (DESIGN §6).

Schema: `id` (str, unique), `source_image` (image), `instruction` (str); optional `principles` (list of
{question: str, category: follow|keep|quality}; required by the RRM), `target_image` (image) and `oracle`
(JSON str) for the sandbox's scorers. Optional columns that are present are validated like required ones. A dataset is a `datasets.save_to_disk` folder (of a Dataset, or of a DatasetDict with one split or
a named one) or a .parquet / .jsonl / .json file.

Any bad row raises `DatasetError` naming the dataset, the row number, its id and the column.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

from edit_rlhf.data.images import ImageError, decode_image

IMAGE_COLUMNS = ("source_image", "target_image", "edited_image", "image_a", "image_b")


class DatasetError(ValueError):
    """A dataset that cannot be used, with the file, row and column that are wrong."""


def open_dataset_dict(path: str, split: Optional[str] = None, key: Optional[str] = None):
    """One split of a DatasetDict folder (`save_to_disk` of a DatasetDict: `dataset_dict.json` and a folder per
    split): `split` when given, else the only split; anything else is a DatasetError naming the folder, its
    splits and how to pick one (the config `key` where the command has one, else the split's own folder)."""
    import datasets

    dd = datasets.load_from_disk(path)
    if not isinstance(dd, datasets.DatasetDict):
        return dd
    splits = list(dd)
    if split is not None:
        if split not in dd:
            raise DatasetError(f"{path}: a DatasetDict folder with splits {splits}; it has no split {split!r} "
                               f"(set {key or 'the split'} to one of them)")
        return dd[split]
    if len(splits) == 1:
        return dd[splits[0]]
    how = f"name one with {key}=<split> or point" if key else "point"
    raise DatasetError(f"{path}: a DatasetDict folder with splits {splits}; {how} at one split's folder, "
                       f"e.g. {os.path.join(path, splits[0])}")


def load_hf_dataset(path: str, split: Optional[str] = None, split_key: Optional[str] = None):
    """Open a dataset folder (save_to_disk of a Dataset, or of a DatasetDict: `split` or its only split) or a
    parquet/json(l) file, images left undecoded."""
    import datasets

    if not os.path.exists(path):
        raise DatasetError(f"dataset not found: {path}")
    try:
        if os.path.isdir(path):
            ds = open_dataset_dict(path, split, split_key)
        elif path.endswith(".parquet"):
            ds = datasets.load_dataset("parquet", data_files=path, split="train")
        elif path.endswith((".jsonl", ".json")):
            ds = datasets.load_dataset("json", data_files=path, split="train")
        else:
            raise DatasetError(f"{path}: unknown dataset format (want a save_to_disk folder, .parquet or .jsonl)")
    except DatasetError:
        raise
    except Exception as e:
        raise DatasetError(f"{path}: cannot open dataset: {type(e).__name__}: {e}") from None
    for col in IMAGE_COLUMNS:  # decode ourselves, so a corrupt image names its row instead of crashing deep inside
        if col in ds.column_names and isinstance(ds.features[col], datasets.Image):
            ds = ds.cast_column(col, datasets.Image(decode=False))
    return ds


def _category(value: Any) -> str:
    from edit_rlhf.rrm.format import normalize_category

    return normalize_category(value)


class EditPromptDataset:
    """Random access to validated edit prompts. Images are decoded on access into uint8 (H, W, 3)."""

    REQUIRED = ("id", "source_image", "instruction")
    CHECKED = ("principles", "target_image", "oracle")  # validated whenever present

    def __init__(self, path: str, require: Sequence[str] = (), validate: str = "schema", split: Optional[str] = None,
                 split_key: Optional[str] = None):
        self.path = path
        self.ds = load_hf_dataset(path, split, split_key)
        needed = list(self.REQUIRED) + [c for c in require if c not in self.REQUIRED]
        missing = [c for c in needed if c not in self.ds.column_names]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {missing}; has {self.ds.column_names}")
        if len(self.ds) == 0:
            raise DatasetError(f"{path}: dataset is empty")
        ids = self.ds["id"]
        self._index: Dict[str, int] = {}
        for i, rid in enumerate(ids):
            if not isinstance(rid, str) or not rid:
                raise DatasetError(f"{path} row {i}: column 'id' must be a non-empty string, got {rid!r}")
            if rid in self._index:
                raise DatasetError(f"{path} row {i} (id={rid}): duplicate id (first at row {self._index[rid]})")
            self._index[rid] = i
        self.ids: List[str] = list(ids)
        self.instructions: List[str] = list(self.ds["instruction"])
        if validate == "full":
            self.validate_all(needed + [c for c in self.CHECKED if c in self.ds.column_names and c not in needed])
        elif validate != "schema":
            raise ValueError(f"validate must be 'full' or 'schema', got {validate!r}")

    def __len__(self) -> int:
        return len(self.ds)

    def _where(self, i: int) -> str:
        return f"{self.path} row {i} (id={self.ids[i]})"

    def index_of(self, rid: str) -> int:
        if rid not in self._index:
            raise DatasetError(f"{self.path}: no row with id {rid!r}")
        return self._index[rid]

    def check_row(self, i: int, raw: Dict[str, Any], columns: Iterable[str]) -> None:
        where = self._where(i)
        for col in columns:
            v = raw.get(col)
            if v is None:
                raise DatasetError(f"{where}: column '{col}' is missing (null)")
            if col == "instruction" and (not isinstance(v, str) or not v.strip()):
                raise DatasetError(f"{where}: column 'instruction' must be a non-empty string, got {v!r}")
            if col == "principles":
                if not isinstance(v, list):
                    raise DatasetError(f"{where}: column 'principles' must be a list, got {type(v).__name__}")
                for j, p in enumerate(v):
                    if not isinstance(p, dict) or not isinstance(p.get("question"), str) or not p["question"].strip():
                        raise DatasetError(f"{where}: principles[{j}] needs a non-empty 'question', got {p!r}")
                    try:
                        _category(p.get("category"))
                    except ValueError as e:
                        raise DatasetError(f"{where}: principles[{j}].category: {e}") from None
            if col == "oracle":
                try:
                    json.loads(v)
                except (TypeError, ValueError) as e:
                    raise DatasetError(f"{where}: column 'oracle' is not valid JSON: {e}") from None
            if col in IMAGE_COLUMNS:
                try:
                    decode_image(v)
                except ImageError as e:
                    raise DatasetError(f"{where}: column '{col}': {e}") from None

    def validate_all(self, columns: Optional[Sequence[str]] = None) -> int:
        """Check every row (decoding every image). Returns the number of rows checked."""
        cols = list(columns or self.REQUIRED)
        for i in range(len(self.ds)):
            self.check_row(i, self.ds[i], cols)
        return len(self.ds)

    def row(self, i: int, columns: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        """Row i with image columns decoded to uint8 arrays and principles normalised."""
        raw = self.ds[i]
        cols = list(columns) if columns is not None else list(raw)
        self.check_row(i, raw, [c for c in cols if c in self.REQUIRED or c in self.CHECKED or c in IMAGE_COLUMNS])
        out: Dict[str, Any] = {}
        for c in cols:
            v = raw.get(c)
            if c in IMAGE_COLUMNS and v is not None:
                v = decode_image(v)
            elif c == "principles" and v is not None:
                v = [{"question": p["question"], "category": _category(p["category"])} for p in v]
            out[c] = v
        return out

    def image(self, i: int, column: str = "source_image") -> np.ndarray:
        return self.row(i, [column])[column]
