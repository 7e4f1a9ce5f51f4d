"""GPU-path defects found by reading the production path, each checked on CPU: device selection, the
placement-group wait, aspect-correct reward inputs and the hacking monitor's judge on real data."""
import numpy as np
import pytest
import torch


# ------------------------------------------------------------------------------------------------ device
def test_cuda_index_from_ray_assignment_local_rank_or_default():
    from edit_rlhf.runtime import cuda_index

    # a 1-GPU Ray actor: Ray sets CUDA_VISIBLE_DEVICES to the assigned id, which torch sees as device 0
    assert cuda_index(["3"], "3", None, 1) == 0
    assert cuda_index([5, 6], "5,6", None, 2) == 0
    # Ray told not to set CUDA_VISIBLE_DEVICES (every GPU visible): the assigned id is the index
    assert cuda_index(["2"], None, None, 8) == 2
    assert cuda_index(["2"], "0,1,2,3", None, 4) == 2
    # torchrun / the deepspeed launcher: LOCAL_RANK
    assert cuda_index([], None, "3", 4) == 3
    assert cuda_index([], None, None, 1) == 0
    with pytest.raises(ValueError, match="LOCAL_RANK=5 is not one of the 2 visible"):
        cuda_index([], None, "5", 2)
    with pytest.raises(ValueError, match="no CUDA device is visible"):
        cuda_index(["0"], "", None, 0)
    with pytest.raises(ValueError, match="not in CUDA_VISIBLE_DEVICES"):
        cuda_index(["GPU-uuid"], "0", None, 1)


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA reported as present with 2 devices; `set_device` runs torch's own argument check (the one that
    rejects `torch.device("cuda")` on a real GPU) and records what it was given."""
    from torch.cuda._utils import _get_device_index

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(_get_device_index(d)))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    return calls


def test_learner_device_carries_an_index_that_set_device_accepts(fake_cuda, monkeypatch):
    """Every learner goes through `init_process_group` -> `bind_device`: the device must name an index (torch
    rejects an index-less CUDA device in set_device: the crash every DeepSpeed learner had at set-up)."""
    from torch.cuda._utils import _get_device_index

    from edit_rlhf.runtime import resolve_device

    with pytest.raises(ValueError, match="specified index"):
        _get_device_index(torch.device("cuda"))  # what the learners used to pass
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == torch.device("cuda", 1)
    from edit_rlhf.distributed import bind_device

    assert bind_device("auto") == torch.device("cuda", 1) and fake_cuda == [1]
    assert resolve_device("cuda:0") == torch.device("cuda", 0) and resolve_device("cpu").type == "cpu"


def test_cpu_is_unchanged_without_cuda():
    from edit_rlhf.runtime import resolve_device

    assert resolve_device("auto") == torch.device("cpu")


# ------------------------------------------------------------------------------------------------ placement
@pytest.mark.integration
def test_placement_group_wait_is_configured_per_pool(ray_cluster):
    from edit_rlhf.actors.reward import RewardWorker
    from edit_rlhf.cluster.pools import ActorPool, PoolError
    from edit_rlhf.config.schema import PoolConfig

    assert PoolConfig().placement_timeout_s >= 600  # long default: autoscalers take minutes to add GPU nodes
    cfg = PoolConfig(size=1, num_cpus=0.1, resources={"no_such_node_group": 1}, placement_timeout_s=1.5)
    with pytest.raises(PoolError, match=r"pool 'nowhere': could not reserve 1 bundle.*within 2s \(placement_timeout_s\)"):
        ActorPool("nowhere", RewardWorker, cfg, lambda i: ())


# ------------------------------------------------------------------------------------------------ aspect
def test_rrm_sees_the_source_the_editor_edits(tiny_models, sandbox_dir):
    """On real data sources are not square; the editor edits a square `resolution` copy. The RRM must be shown
    that same copy next to the (square) edit, not the original-aspect source."""
    from PIL import Image

    from edit_rlhf.config.rrm import RRMScorerConfig
    from edit_rlhf.data.prompts import EditPromptDataset
    from edit_rlhf.models.kontext import KontextEditor
    from edit_rlhf.rewards.rrm import RRMScorer

    square = EditPromptDataset(f"{sandbox_dir}/prompts_train").row(0)
    wide = np.asarray(Image.fromarray(square["source_image"]).resize((112, 48)))
    row = dict(square, source_image=wide)
    r = 64
    edits = np.stack([np.full((r, r, 3), v, np.uint8) for v in (10, 200)])
    cfg = RRMScorerConfig(path=tiny_models["rrm"], backend="hf")
    cfg.prompt.style = "compact"
    reqs = RRMScorer(cfg).requests(row, edits)
    assert [q.images[0].shape for q in reqs] == [(r, r, 3)] * 2
    from edit_rlhf.data.images import editor_view

    shown = editor_view(wide, r, r)
    for q, e in zip(reqs, edits):
        assert np.array_equal(q.images[0], shown) and np.array_equal(q.images[1], e)
    # ... and `shown` is exactly what the editor conditions on: the same latents as from the original
    ed = KontextEditor(tiny_models["editor"], r, 32)
    a = ed.condition([wide], [row["instruction"]]).image_latents
    b = ed.condition([shown], [row["instruction"]]).image_latents
    assert torch.equal(a, b)
    src = square["source_image"]  # the sandbox's sources are already square at the resolution: untouched
    assert src.shape == (r, r, 3) and editor_view(src, r, r) is src


# ------------------------------------------------------------------------------------------------ monitor
def test_monitor_judge_on_real_data_or_a_loud_warning():
    from edit_rlhf.grpo.monitor import NO_JUDGE_WARNING, loud, resolve_judge

    assert resolve_judge("auto", True, None) == ("oracle", "")  # the sandbox: unchanged
    assert resolve_judge("auto", False, "/models/qwen2.5-vl-7b") == ("pq", "")
    mode, warning = resolve_judge("auto", False, None)  # real data, no judge: off, but never silently
    assert mode == "none" and warning == NO_JUDGE_WARNING and "monitor.pq.path" in warning
    assert resolve_judge("none", False, None) == ("none", "")  # deliberately off: no warning
    with pytest.raises(ValueError, match="no oracle records"):
        resolve_judge("oracle", False, "/x")
    with pytest.raises(ValueError, match="monitor.pq.path"):
        resolve_judge("pq", True, None)
    banner = loud(warning)
    assert banner.startswith("!" * 100) and "REWARD-HACKING MONITOR IS OFF" in banner


def test_pq_judge_scores_edits_alone(tiny_models):
    """The monitor's judge on real data: the judge's PQ half on the edit only (HF backend, tiny VLM)."""
    from edit_rlhf.config.judge import JudgeConfig
    from edit_rlhf.evaluation.scorers import build_eval_scorer

    cfg = JudgeConfig(path=tiny_models["rrm"], backend="hf")
    cfg.prompt.style = "compact"
    cfg.sampling.max_tokens = 8
    sc = build_eval_scorer("pq", cfg)
    assert sc.name == "pq" and sc.columns == ("id",)
    edits = np.stack([np.full((64, 64, 3), v, np.uint8) for v in (10, 200)])
    res = sc.score_batch([{"id": "p0"}, {"id": "p0"}], edits)
    assert len(res) == 2 and sc.stats["judgements"] == 2  # one PQ judgement per edit, no SC
    for r in res:  # a random tiny VLM rarely answers in format: a failure is NaN with the reason, never 0
        assert (r.ok and 0 <= r.reward <= 10) or (not r.ok and np.isnan(r.reward) and r.error.startswith("PQ"))
