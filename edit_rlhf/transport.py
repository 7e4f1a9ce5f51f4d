"""Weight sync learner -> engines: what each transport moves and copies, which one a run uses, and the NCCL
sender that lives in the learner process.

Two transports behind one interface (`edit_rlhf.cluster.sync` drives them between Ray actors):

- `object_store` (CPU, small models, the LoRA of the editor): learner rank 0 copies the weights to host memory,
  packs them into flat buckets (`rrm_train.sync.WeightBuckets`), puts one object in Ray's object store; every
  engine fetches it and loads it in one call (into vLLM through `collective_rpc`, which pickles the list to
  each tensor-parallel worker).
- `nccl` (GPU): learner rank 0 broadcasts packed buckets from its GPU straight into the vLLM workers' GPUs with
  the weight-transfer engine vLLM ships (`vllm.distributed.weight_transfer`: `NCCLTrainerWeightTransferEngine`
  here, `NCCLWeightTransferEngine` inside each vLLM worker, `LLM.init_weight_transfer_engine` /
  `start_weight_update` / `update_weights` / `finish_weight_update` as the control plane). No host copy, no
  pickling. Several independent engines join one NCCL group: engine e's workers take ranks 1 + e * TP ...
  (`EngineActorsClient` gives each engine its own `rank_offset`).

`sync_costs` is the accounting the plan prints (bytes moved and copies made per sync), from the same list of
steps each transport performs.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from edit_rlhf.models.hf_weights import hf_named_tensors

TRANSPORTS = ("auto", "object_store", "nccl")


def choose_transport(setting: str, cuda: bool) -> str:
    """`auto` -> nccl when the engines and learner are on GPUs, else object_store. `nccl` needs CUDA."""
    if setting not in TRANSPORTS:
        raise ValueError(f"transport must be one of {TRANSPORTS}, got {setting!r}")
    if setting == "auto":
        return "nccl" if cuda else "object_store"
    if setting == "nccl" and not cuda:
        raise ValueError("sync.transport=nccl needs GPUs (NCCL); use object_store or auto on CPU")
    return setting


def sync_costs(nbytes: int, engines: int, tp: int, setting: str = "auto", cuda: bool = True) -> Dict[str, Any]:
    """Per sync: bytes moved and copies made by each transport for `nbytes` of weights into `engines` vLLM
    engines of `tp` tensor-parallel workers each, and which transport `setting` picks."""
    workers = engines * tp
    obj = [  # (what, copies of the weights, bytes moved between processes/devices)
        ("GPU -> host (state dict .to('cpu') + clone)", 2, nbytes),
        ("pack into flat buckets (torch.cat)", 1, 0),
        ("ray.put: serialize into the object store", 1, nbytes),
        ("each engine: fetch + deserialize (remote nodes over the network)", engines, engines * nbytes),
        ("each engine: contiguous copies for load_weights", engines, 0),
        ("collective_rpc: pickle the list to every tensor-parallel worker", workers, workers * nbytes),
        ("each worker: host -> GPU, load its shard", workers, workers * nbytes),
    ]
    nccl = [
        ("pack into GPU buffers (packed broadcast, 1 GiB x 2)", 1, 0),
        ("NCCL broadcast to every tensor-parallel worker of every engine (GPU -> GPU)", workers, workers * nbytes),
        ("each worker: load its shard from the receive buffer", workers, 0),
    ]

    def total(steps):
        return {"copies": sum(c for _, c, _ in steps), "bytes_moved": sum(b for _, _, b in steps),
                "steps": [{"what": w, "copies": c, "bytes": b} for w, c, b in steps]}

    return {"weights_bytes": nbytes, "engines": engines, "tensor_parallel": tp,
            "chosen": choose_transport(setting, cuda), "object_store": total(obj), "nccl": total(nccl)}


# --------------------------------------------------------------------------- NCCL: the learner side
def weight_source(model, names: Optional[set] = None):
    """A `vllm.distributed.weight_transfer.base.WeightSource` over `hf_named_tensors(model, names)`, for the
    installed vLLM: 0.32 (CPU set) declares `metadata()` and `__iter__`; 0.33 (GPU set) a cached `metadata`
    property and `iter_full()`."""
    import functools
    import inspect

    from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

    def meta() -> List[ParamMeta]:
        return [ParamMeta(n, t.dtype, tuple(t.shape)) for n, t in hf_named_tensors(model, names)]

    if isinstance(inspect.getattr_static(WeightSource, "metadata"), property):  # vLLM >= 0.33
        class HFSource(WeightSource):
            @functools.cached_property
            def metadata(self) -> List[ParamMeta]:
                return meta()

            def iter_full(self):
                return hf_named_tensors(model, names)
    else:  # vLLM 0.32
        class HFSource(WeightSource):
            def metadata(self) -> List[ParamMeta]:
                return meta()

            def __iter__(self):
                return hf_named_tensors(model, names)

    return HFSource()


class EngineActorsClient:
    """vLLM's `VLLMWeightSyncClient` protocol over our engine actors (each hosts one vLLM engine and has a
    `weight_transfer(method, *args)` method). Engine e's workers join the NCCL group at rank 1 + e * tp."""

    def __init__(self, handles: Sequence[Any], tp: int):
        self.handles, self.tp = list(handles), int(tp)

    def _all(self, method: str, *args, per_engine=None):
        import ray

        return ray.get([h.weight_transfer.remote(method, *(per_engine(e) if per_engine else args))
                        for e, h in enumerate(self.handles)])

    def engine_init_infos(self, init_info: Dict[str, Any]) -> List[Dict[str, Any]]:
        """vLLM numbers an engine's workers rank_offset + (its rank in the engine): each engine gets its own
        block of ranks after the sender's 0 (independent engines would all claim 1..tp otherwise)."""
        return [dict(init_info, rank_offset=1 + e * self.tp) for e in range(len(self.handles))]

    def init_weight_transfer_engine(self, init_info: Dict[str, Any]) -> None:
        infos = self.engine_init_infos(init_info)
        self._all("init_weight_transfer_engine", per_engine=lambda e: (infos[e],))

    def start_weight_update(self) -> None:
        self._all("start_weight_update")

    def update_weights(self, update_info) -> None:
        self._all("update_weights", update_info)

    next_version: Optional[int] = None  # the learner version being sent (set by `NCCLSender.send`)

    def finish_weight_update(self, weight_version: Optional[str] = None) -> None:
        self.versions = self._all("finish_weight_update", self.next_version)


class NCCLSender:
    """The learner-rank side of the NCCL transport (rank 0 sends; other ranks only iterate the source)."""

    def __init__(self, model, names: Optional[set], handles: Sequence[Any], tp: int, rank: int, master_addr: str,
                 master_port: int):
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo, NCCLTrainerWeightTransferEngine

        self.client = EngineActorsClient(handles, tp)
        info = NCCLTrainerInitInfo(master_address=master_addr, master_port=int(master_port),
                                   world_size=1 + len(self.client.handles) * self.client.tp, rank=rank)
        self.engine = NCCLTrainerWeightTransferEngine.trainer_init(info, client=self.client,
                                                                  source=weight_source(model, names))

    def send(self, version: int) -> List[int]:
        """One sync of learner `version`; returns the engines' reported versions (sender) or [] (other ranks)."""
        self.client.next_version = int(version)
        self.engine.send_weights()
        return list(getattr(self.client, "versions", []) or []) if self.engine.is_sender else []

    def close(self) -> None:
        self.engine.shutdown()
