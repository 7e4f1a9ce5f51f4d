"""The GEdit-Bench loader on small synthetic files in the HF dataset's layout (the real data is not available
offline): language / subset filters, task-type mapping, the output schema, and errors naming the row."""
import io
import os

import numpy as np
import pytest
from PIL import Image

ROWS = [  # key, task_type (as spelled in the file), language, intersection
    ("0001", "background_change", "en", True),
    ("0001", "background_change", "cn", True),
    ("0002", "Subject Add", "en", False),
    ("0003", "subject_remove", "en", True),
    ("0004", "color_alter", "zh", False),
    ("0005", "tone_transfer", "en", False),
]


def _png(seed, size=(24, 16)):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _gedit_table(rows=ROWS, bad_image_row=None):
    import datasets

    img = datasets.Image()
    feats = datasets.Features({"task_type": datasets.Value("string"), "key": datasets.Value("string"),
                               "instruction": datasets.Value("string"),
                               "instruction_language": datasets.Value("string"), "input_image": img,
                               "input_image_raw": img, "Intersection_exist": datasets.Value("bool")})
    data = {k: [] for k in feats}
    for i, (key, tt, lang, inter) in enumerate(rows):
        data["task_type"].append(tt)
        data["key"].append(key)
        data["instruction"].append(f"instruction {i} ({lang})")
        data["instruction_language"].append(lang)
        data["input_image"].append({"bytes": b"not a png" if i == bad_image_row else _png(i), "path": None})
        data["input_image_raw"].append({"bytes": _png(100 + i, (48, 32)), "path": None})
        data["Intersection_exist"].append(inter)
    return datasets.Dataset.from_dict(data, features=feats)


@pytest.fixture
def gedit_parquet(tmp_path):
    p = str(tmp_path / "gedit.parquet")
    _gedit_table().to_parquet(p)
    return p


def test_english_rows_in_our_schema(gedit_parquet, tmp_path):
    from edit_rlhf.data.prompts import EditPromptDataset
    from edit_rlhf.evaluation.gedit import convert_gedit

    out = str(tmp_path / "en")
    rep = convert_gedit(gedit_parquet, out, language="en")
    assert rep["rows_read"] == 6 and rep["rows"] == 4 and rep["dropped"] == {"language": 2}
    assert rep["categories"] == {"background_change": 1, "subject-add": 1, "subject-remove": 1, "tone_transfer": 1}
    ds = EditPromptDataset(out, validate="full")
    assert ds.ids == ["background_change/en/0001", "subject-add/en/0002", "subject-remove/en/0003",
                      "tone_transfer/en/0005"]
    row = ds.row(1)
    assert row["category"] == "subject-add" and row["language"] == "en" and row["principles"] == []
    assert row["instruction"] == "instruction 2 (en)" and row["key"] == "0002" and row["intersection"] is False
    # the source is input_image, byte for byte
    assert np.array_equal(row["source_image"], np.asarray(Image.open(io.BytesIO(_png(2)))))


def test_language_subset_and_source_column(gedit_parquet, tmp_path):
    from edit_rlhf.data.prompts import EditPromptDataset
    from edit_rlhf.evaluation.gedit import convert_gedit

    cn = convert_gedit(gedit_parquet, str(tmp_path / "cn"), language="cn")
    assert cn["rows"] == 2 and cn["categories"] == {"background_change": 1, "color_alter": 1}  # zh counts as cn
    both = convert_gedit(gedit_parquet, str(tmp_path / "all"), language="all", subset="intersection")
    assert both["rows"] == 3 and both["dropped"] == {"subset": 3}
    raw = convert_gedit(gedit_parquet, str(tmp_path / "raw"), source_column="input_image_raw")
    assert EditPromptDataset(str(tmp_path / "raw")).image(0).shape == (32, 48, 3) and raw["rows"] == 4


def test_a_folder_of_parquet_shards_like_the_hf_snapshot(tmp_path):
    from edit_rlhf.evaluation.gedit import convert_gedit

    t = _gedit_table()
    os.makedirs(tmp_path / "snap" / "data")
    t.select(range(3)).to_parquet(str(tmp_path / "snap" / "data" / "train-00000-of-00002.parquet"))
    t.select(range(3, 6)).to_parquet(str(tmp_path / "snap" / "data" / "train-00001-of-00002.parquet"))
    assert convert_gedit(str(tmp_path / "snap"), str(tmp_path / "out"), language="all")["rows"] == 6


@pytest.mark.parametrize("rows,bad,msg", [
    ([("0001", "hair_style", "en", True)], None, "row 0 (key='0001'): unknown task_type 'hair_style'"),
    ([("0001", "ps_human", "fr", True)], None, "row 0 (key='0001'): unknown instruction_language 'fr'"),
    ([("0001", "ps_human", "en", True), ("0001", "ps_human", "en", False)], None,
     "row 1 (key='0001'): duplicate sample ps_human/en/0001 (first at row 0)"),
    ([("0001", "ps_human", "en", True), ("0002", "ps_human", "en", True)], 1,
     "row 1 (key='0002'): column 'input_image': cannot decode image"),
    ([("0001", "ps_human", "cn", True)], None, "no rows left after the filter language=en"),
])
def test_bad_rows_are_named(tmp_path, rows, bad, msg):
    from edit_rlhf.data.prompts import DatasetError
    from edit_rlhf.evaluation.gedit import convert_gedit

    p = str(tmp_path / "g.parquet")
    _gedit_table(rows, bad_image_row=bad).to_parquet(p)
    with pytest.raises(DatasetError) as e:
        convert_gedit(p, str(tmp_path / "out"))
    assert msg in str(e.value) and p in str(e.value)


def test_not_gedit_layout_and_category_spellings(tmp_path):
    import datasets

    from edit_rlhf.data.prompts import DatasetError
    from edit_rlhf.evaluation.gedit import normalize_task_type, open_gedit

    p = str(tmp_path / "x.parquet")
    datasets.Dataset.from_dict({"key": ["1"], "instruction": ["x"]}).to_parquet(p)
    with pytest.raises(DatasetError, match=r"not GEdit-Bench's layout: missing column\(s\) \['task_type'"):
        open_gedit(p)
    assert normalize_task_type("Subject-Replace") == "subject-replace"
    assert normalize_task_type("PS human") == "ps_human" and normalize_task_type("text change") == "text_change"


def test_eval_pipeline_detects_and_converts_gedit_input(gedit_parquet, tmp_path):
    """`data.format=auto` sends GEdit-layout input through the converter into <output_dir>/data/."""
    from conftest import ROOT

    from edit_rlhf.config import load_config
    from edit_rlhf.config.evaluation import EvalEditorConfig
    from edit_rlhf.pipelines.eval_editor import category_column, prepare_data

    cfg = load_config(EvalEditorConfig, f"{ROOT}/configs/eval_editor_sandbox.yaml",
                      [f"data.path={gedit_parquet}", f"output_dir={tmp_path}/o", "data.category_column=null"])
    path, info = prepare_data(cfg)
    assert info["format"] == "gedit" and path == f"{tmp_path}/o/data/gedit_en_fullset" and info["rows"] == 4
    assert category_column(["id", "category", "edit_type"], None, path) == "category"
