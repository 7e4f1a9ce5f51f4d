"""Weight sync transports: which one a run gets, what each moves, and the NCCL path's pieces against the
installed vLLM (the broadcast itself needs GPUs: scripts/gpu_smoke.sh)."""
import inspect

import pytest
import torch


def test_transport_choice_and_costs():
    from edit_rlhf.transport import choose_transport, sync_costs

    assert choose_transport("auto", cuda=False) == "object_store" and choose_transport("auto", cuda=True) == "nccl"
    assert choose_transport("object_store", cuda=True) == "object_store"
    with pytest.raises(ValueError, match="needs GPUs"):
        choose_transport("nccl", cuda=False)
    gb = 15 * 2 ** 30
    c = sync_costs(gb, engines=8, tp=2)
    obj, nccl = c["object_store"], c["nccl"]
    assert c["chosen"] == "nccl"
    assert obj["copies"] == 2 + 1 + 1 + 8 + 8 + 16 + 16 and nccl["copies"] == 1 + 16 + 16
    assert nccl["bytes_moved"] == 16 * gb  # each of the 16 workers receives the weights once, GPU to GPU
    assert obj["bytes_moved"] == gb * (1 + 1 + 8 + 16 + 16)  # host copy, put, 8 fetches, pickles, host -> GPU
    assert sync_costs(gb, 8, 2, "auto", cuda=False)["chosen"] == "object_store"


def test_nccl_pieces_match_the_installed_vllm(tiny_models):
    """The weight source yields exactly what the object-store path sends (HF names, merged weights); the NCCL
    trainer engine, its init info and the LLM control plane exist with the calls edit_rlhf makes."""
    from vllm import LLM
    from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo, NCCLTrainerWeightTransferEngine

    from edit_rlhf.models.hf_weights import hf_state, sync_weights, trainable_names
    from edit_rlhf.rrm_train.model import load_rrm
    from edit_rlhf.transport import EngineActorsClient, weight_source
    from edit_rlhf.vlm.sft import prepare_model

    model, _ = load_rrm(tiny_models["rrm"], "float32", "cpu")
    model, _ = prepare_model(model, "lora", freeze_vision=True, lora_rank=4, lora_alpha=8)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.1)  # the merged weights differ from the base
    names = set(trainable_names(model))
    src = weight_source(model, names)
    meta = src.metadata() if callable(src.metadata) else src.metadata
    it = src.iter_full() if "iter_full" in type(src).__dict__ else iter(src)
    sent = dict(it)
    want = sync_weights(model, trainable_only=True)
    assert [m.name for m in meta] == list(sent) and set(sent) == set(want) == names - {"lm_head.weight"}
    for m in meta:
        assert tuple(want[m.name].shape) == m.shape and want[m.name].dtype == m.dtype
        torch.testing.assert_close(sent[m.name], want[m.name])
    assert set(hf_state(model)) >= set(sent)

    info = NCCLTrainerInitInfo(master_address="127.0.0.1", master_port=29555, world_size=1 + 3 * 2, rank=0)
    assert info.is_sender and info.world_size == 7
    sig = inspect.signature(NCCLTrainerWeightTransferEngine.trainer_init)
    assert {"client", "source"} <= set(sig.parameters)
    for m in ("init_weight_transfer_engine", "start_weight_update", "update_weights", "finish_weight_update"):
        assert callable(getattr(LLM, m)), m
    client = EngineActorsClient([object(), object(), object()], tp=2)
    offsets = [d["rank_offset"] for d in client.engine_init_infos({"rank_offset": 1, "world_size": 7})]
    assert offsets == [1, 3, 5]  # each engine's 2 workers get their own ranks after the sender's 0
