"""Both benchmark hubs (EditScore/EditReward-Bench, stepfun-ai/GEdit-Bench) store `datasets.save_to_disk` arrow
folders; a local copy may be a DatasetDict folder (dataset_dict.json + one folder per split). Such a folder
loads (the split named by config, or its only split) or fails with one line naming the folder and its splits."""
import datasets
import pytest

from edit_rlhf.data.prompts import DatasetError, load_hf_dataset
from test_gedit_loader import _gedit_table


def _dict_folder(tmp_path, name, splits):
    p = str(tmp_path / name)
    datasets.DatasetDict(splits).save_to_disk(p)
    return p


def _tiny(n):
    return datasets.Dataset.from_dict({"id": [f"r{i}" for i in range(n)]})


def test_single_split_loads_named_split_loads_else_one_helpful_line(tmp_path):
    one = _dict_folder(tmp_path, "one", {"test": _tiny(3)})
    assert len(load_hf_dataset(one)) == 3  # the only split
    two = _dict_folder(tmp_path, "two", {"train": _tiny(2), "validation": _tiny(5)})
    assert len(load_hf_dataset(two, "validation")) == 5
    with pytest.raises(DatasetError) as e:
        load_hf_dataset(two)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{two}: a DatasetDict folder with splits ['train', 'validation']")
    assert msg.endswith(f"point at one split's folder, e.g. {two}/train")
    assert "name one with data.split=<split> or point" in str(pytest.raises(DatasetError, load_hf_dataset, two,
                                                                               None, "data.split").value)
    with pytest.raises(DatasetError, match=r"no split 'test' \(set data.split to one of them\)"):
        load_hf_dataset(two, "test", "data.split")


def editreward_bench_table(size, key, instruction, task_type, dimension, input_image, output_images):
    """A table in EditReward-Bench's layout (one row per (pair, dimension)); images given as grey levels
    (`input_image`: one per row, `output_images`: [preferred, other] per row), stored as PNG bytes of side `size`."""
    import io

    import numpy as np
    from PIL import Image

    def png(v):
        b = io.BytesIO()
        Image.fromarray(np.full((size, size, 3), v, np.uint8)).save(b, format="PNG")
        return {"bytes": b.getvalue(), "path": None}

    img = datasets.Image()
    feats = datasets.Features({"key": datasets.List(datasets.Value("string")), "instruction": datasets.Value("string"),
                               "input_image": img, "output_images": datasets.List(img),
                               "task_type": datasets.Value("string"), "dimension": datasets.Value("string")})
    return datasets.Dataset.from_dict({"key": key, "instruction": instruction,
                                       "input_image": [png(v) for v in input_image],
                                       "output_images": [[png(v) for v in o] for o in output_images],
                                       "task_type": task_type, "dimension": dimension}, features=feats)


def _bench_rows(n=2):
    return editreward_bench_table(8, key=[[f"a{i}", f"b{i}"] for i in range(n)], instruction=["x"] * n,
                                  task_type=["color_alter"] * n, dimension=["overall"] * n, input_image=[0] * n,
                                  output_images=[[200, 9]] * n)


def test_editreward_bench_as_a_datasetdict_folder(tmp_path):
    from edit_rlhf.rrm_train.data import load_editreward_bench

    one = _dict_folder(tmp_path, "bench", {"train": _bench_rows(3)})
    ps = load_editreward_bench(one)  # the hub copy: a DatasetDict with a train split
    assert len(ps) == 3 and ps[0].winner[0, 0, 0] == 200
    two = _dict_folder(tmp_path, "bench2", {"train": _bench_rows(2), "test": _bench_rows(4)})
    assert len(load_editreward_bench(two, split="test")) == 4
    with pytest.raises(DatasetError, match=r"bench2: a DatasetDict folder with splits \['train', 'test'\]"):
        load_editreward_bench(two)


def test_gedit_as_a_datasetdict_folder_through_the_eval_pipeline(tmp_path):
    from conftest import ROOT

    from edit_rlhf.config import load_config
    from edit_rlhf.config.evaluation import EvalEditorConfig
    from edit_rlhf.evaluation.gedit import convert_gedit
    from edit_rlhf.pipelines.eval_editor import prepare_data

    one = _dict_folder(tmp_path, "gedit", {"train": _gedit_table()})
    assert convert_gedit(one, str(tmp_path / "conv"), language="all")["rows"] == 6
    cfg = load_config(EvalEditorConfig, f"{ROOT}/configs/eval_editor_sandbox.yaml",
                      [f"data.path={one}", f"output_dir={tmp_path}/o", "data.category_column=null"])
    path, info = prepare_data(cfg)  # format auto: detected as GEdit through the DatasetDict
    assert info["format"] == "gedit" and info["rows"] == 4
    two = _dict_folder(tmp_path, "gedit2", {"train": _gedit_table(), "extra": _gedit_table()})
    cfg = load_config(EvalEditorConfig, f"{ROOT}/configs/eval_editor_sandbox.yaml",
                      [f"data.path={two}", f"output_dir={tmp_path}/o2", "data.category_column=null"])
    with pytest.raises(DatasetError, match=r"gedit2: a DatasetDict folder with splits \['train', 'extra'\]"):
        prepare_data(cfg)
    cfg.data.split = "extra"
    assert prepare_data(cfg)[1]["rows"] == 4
