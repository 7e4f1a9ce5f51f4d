"""Safety: hostile images and malformed datasets are rejected with clear errors; secrets never reach MLflow
params; dashboards bind to loopback by default; job submission leaves .git, stores and checkpoints behind;
the cluster manifests give every pool the node group its config asks for."""
import io
import os
import struct
import zlib

import numpy as np
import pytest
import yaml
from PIL import Image

from edit_rlhf.data.images import ImageError, decode_image, encode_png

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims width x height (a decompression bomb's signature)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8  # the IHDR chunk follows the 8-byte signature: length(4) type(4) data(13) crc(4)
    data[ihdr + 8: ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4: ihdr + 8 + 13])) & 0xFFFFFFFF
    data[ihdr + 21: ihdr + 25] = struct.pack(">I", crc)
    return bytes(data)


def test_decompression_bomb_is_rejected_before_decoding():
    with pytest.raises(ImageError, match="pixel"):
        decode_image(_png_claiming(30000, 30000))


def test_oversized_corrupt_and_bad_arrays_are_rejected():
    with pytest.raises(ImageError, match="outside"):
        decode_image(encode_png(np.zeros((4, 9000, 3), np.uint8)))
    with pytest.raises(ImageError, match="cannot decode"):
        decode_image(b"\x89PNG\r\n\x1a\nthis is not an image")
    with pytest.raises(ImageError, match="empty"):
        decode_image(b"")
    with pytest.raises(ImageError, match="uint8"):
        decode_image(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ImageError, match="missing"):
        decode_image(None)


def test_other_modes_are_converted_to_rgb():
    for mode in ("L", "RGBA", "P", "I;16"):
        buf = io.BytesIO()
        Image.new(mode, (5, 4)).save(buf, format="PNG")
        out = decode_image(buf.getvalue())
        assert out.shape == (4, 5, 3) and out.dtype == np.uint8


@pytest.fixture
def tiny_dataset(tmp_path):
    import datasets

    def make(rows):
        feats = datasets.Features({"id": datasets.Value("string"), "source_image": datasets.Image(),
                                   "instruction": datasets.Value("string"),
                                   "principles": datasets.List({"question": datasets.Value("string"),
                                                                "category": datasets.Value("string")})})
        p = tmp_path / f"ds{len(os.listdir(tmp_path))}"
        datasets.Dataset.from_list(rows, features=feats).save_to_disk(str(p))
        return str(p)

    good = {"bytes": encode_png(np.zeros((8, 8, 3), np.uint8)), "path": None}
    base = [{"id": f"r{i}", "source_image": good, "instruction": "make the square red",
             "principles": [{"question": "Is the square red?", "category": "follow"}]} for i in range(4)]
    return make, base


def test_malformed_rows_name_row_id_and_column(tiny_dataset):
    from edit_rlhf.data.prompts import DatasetError, EditPromptDataset

    make, base = tiny_dataset
    cases = [
        (2, "instruction", None, "column 'instruction'"),
        (1, "principles", [{"question": "Is it red?", "category": "vibes"}], "principles[0].category"),
        (3, "principles", [{"question": "", "category": "keep"}], "principles[0]"),
        (0, "source_image", {"bytes": b"garbage", "path": None}, "column 'source_image'"),
    ]
    for row, col, value, expect in cases:
        rows = [dict(r) for r in base]
        rows[row][col] = value
        with pytest.raises(DatasetError) as e:
            EditPromptDataset(make(rows), validate="full")
        assert f"row {row} (id=r{row})" in str(e.value) and expect in str(e.value), str(e.value)
    rows = [dict(r) for r in base]
    rows[3]["id"] = "r0"
    with pytest.raises(DatasetError, match="duplicate id"):
        EditPromptDataset(make(rows))
    with pytest.raises(DatasetError, match="missing column"):
        EditPromptDataset(make(base), require=["target_image"])
    with pytest.raises(DatasetError, match="not found"):
        EditPromptDataset("/nonexistent/dataset")


def test_principles_are_optional_but_validated_when_present(tiny_dataset):
    from edit_rlhf.data.prompts import DatasetError, EditPromptDataset

    make, base = tiny_dataset
    import datasets

    p = make(base)
    ds = datasets.load_from_disk(p).remove_columns(["principles"])
    ds.save_to_disk(p + "_np")
    d = EditPromptDataset(p + "_np", validate="full")
    assert "principles" not in d.row(0) and d.row(0)["instruction"] == "make the square red"
    with pytest.raises(DatasetError, match="missing column"):
        EditPromptDataset(p + "_np", require=["principles"])


def test_secrets_are_redacted_from_mlflow_params(tmp_path):
    from mlflow.tracking import MlflowClient

    from edit_rlhf.config import GRPOConfig, flatten, load_config, to_dict
    from edit_rlhf.tracking import Tracker

    cfg = load_config(GRPOConfig, os.path.join(ROOT, "configs", "sandbox_tiny.yaml"),
                      ["cluster.actor_env.HF_TOKEN=hf_supersecret", "cluster.actor_env.WANDB_API_KEY=k-123"])
    t = Tracker(str(tmp_path / "mlruns"), "safety")
    t.log_params(flatten(to_dict(cfg)) | {"db_password": "pw", "note": "fine"})
    t.finish()
    params = MlflowClient(t.uri).get_run(t.run_id).data.params
    assert params["cluster.actor_env.HF_TOKEN"] == "***" and params["cluster.actor_env.WANDB_API_KEY"] == "***"
    assert params["db_password"] == "***" and params["note"] == "fine"
    assert not any(s in v for v in params.values() for s in ("hf_supersecret", "k-123", "pw"))


def test_dashboard_on_loopback_by_default_and_submit_leaves_heavy_dirs_behind():
    from edit_rlhf.cluster.submit import cli_equivalent, job_args, runtime_env
    from edit_rlhf.config.schema import ClusterConfig

    c = ClusterConfig()
    assert c.dashboard_host == "127.0.0.1" and c.include_dashboard is False
    env = runtime_env()
    for d in (".git", ".venv", "mlruns", "outputs", "checkpoints", ".cache"):
        assert d in env["excludes"]
    args = job_args(["--", "grpo", "--config", "configs/sandbox_tiny.yaml"])
    assert any(a.startswith("tracking.dir=/") for a in args) and any(a.startswith("output_dir=/") for a in args)
    cmd = cli_equivalent(["--", "grpo", "--config", "configs/sandbox_tiny.yaml"], "http://10.0.0.1:8265")
    assert cmd.startswith("ray job submit --address http://10.0.0.1:8265") and "-- python -m edit_rlhf grpo" in cmd


def test_manifests_give_each_pool_its_node_group():
    from edit_rlhf.config import GRPOConfig, load_config

    cfg = load_config(GRPOConfig, os.path.join(ROOT, "configs", "flux_kontext_dev.yaml"))
    wanted = {name: set(getattr(cfg, name).resources) for name in ("rollout", "reward", "learner")}
    assert all(wanted.values())
    with open(os.path.join(ROOT, "cluster", "manifests", "ray-cluster.yaml")) as f:
        launcher = yaml.safe_load(f)
    offered = {k: set(v["resources"]) for k, v in launcher["available_node_types"].items()}
    for pool, res in wanted.items():
        assert res <= offered[pool], (pool, res, offered[pool])
    assert "127.0.0.1" in " ".join(launcher["head_start_ray_commands"])
    with open(os.path.join(ROOT, "cluster", "manifests", "kuberay-rayjob.yaml")) as f:
        job = yaml.safe_load(f)
    spec = job["spec"]
    assert spec["entrypoint"].startswith("python -m edit_rlhf grpo")
    assert ".git" in yaml.safe_load(spec["runtimeEnvYAML"])["excludes"]
    groups = {g["groupName"]: yaml.safe_load(yaml.safe_load(g["rayStartParams"]["resources"]))
              for g in spec["rayClusterSpec"]["workerGroupSpecs"]}
    for pool, res in wanted.items():
        assert res <= set(groups[pool]), (pool, res, groups[pool])
