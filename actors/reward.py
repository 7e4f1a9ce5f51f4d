"""Ray shell around a reward scorer (`edit_rlhf.rewards`): scores the edits of one prompt per request."""
from __future__ import annotations

import os
import time

import ray


@ray.remote
class RewardWorker:
    def __init__(self, reward_cfg, datasets: dict, worker_id: str, torch_threads: int = 1):
        from edit_rlhf.runtime import quiet_vllm_worker_logs, setup_process

        setup_process(torch_threads)
        from edit_rlhf.data.prompts import EditPromptDataset
        from edit_rlhf.rewards import build_scorer

        self.worker_id = worker_id
        self.scorer = build_scorer(reward_cfg, threads=torch_threads)
        quiet_vllm_worker_logs()  # vLLM (if any) configured its loggers on import
        self.data = {k: EditPromptDataset(p, validate="schema") for k, p in datasets.items()}
        self.cols = list(dict.fromkeys(["id", "instruction", "source_image", *self.scorer.columns]))
        self.has_oracle = {k: "oracle" in d.ds.column_names for k, d in self.data.items()}
        self.served = 0

    def info(self) -> dict:
        out = {"worker": self.worker_id, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
               "scorer": self.scorer.name, "served": self.served}
        if hasattr(self.scorer, "info"):
            out["scorer_info"] = self.scorer.info()
        return out

    def call(self, method: str, *args, **kwargs):
        """scorer.method(*args) - e.g. `load_weights` (RRM weight sync) or `generate` (raw engine output)."""
        return getattr(self.scorer, method)(*args, **kwargs)

    def shutdown(self) -> None:
        """Release the scorer's engine (a vLLM engine holds its KV cache until then)."""
        close = getattr(self.scorer, "close", None)
        if close is not None:
            close()

    def score(self, split: str, index: int, images) -> dict:
        """images: uint8 (G, H, W, 3) (resolved from the rollout's object ref).
        Returns {'rewards', 'ok', 'errors', 'details', 'worker', 'seconds'}; also the sandbox oracle's score
        per image as 'oracle_scores' when the dataset carries oracle records (a monitor, not the reward)."""
        return self.score_groups(split, [index], images)[0]

    def score_groups(self, split: str, indices, *groups) -> list:
        """Several prompts' groups in one scorer call (an RRM engine gets them as one batch): one reply per group,
        as `score` gives it. `groups` arrive resolved from the rollouts' object refs."""
        from edit_rlhf.faults import maybe_fail

        maybe_fail(self.worker_id, "score")
        t0 = time.time()
        ds = self.data[split]
        cols = self.cols + (["oracle"] if self.has_oracle[split] and "oracle" not in self.cols else [])
        cols += ["principles"] if "principles" in ds.ds.column_names and "principles" not in cols else []
        rows = [ds.row(i, [c for c in cols if c in ds.ds.column_names]) for i in indices]
        results = self.scorer.score_groups(rows, groups)
        self.served += len(rows)
        seconds = (time.time() - t0) / len(rows)
        return [{"rewards": [r.reward for r in res], "ok": [r.ok for r in res], "errors": [r.error for r in res],
                 "details": [r.detail for r in res], "oracle_scores": self._oracle(split, row, images),
                 "worker": self.worker_id, "seconds": seconds} for row, images, res in zip(rows, groups, results)]

    def _oracle(self, split: str, row: dict, images):
        """The sandbox oracle's score of each edit (NaN where it cannot judge), or None without oracle records."""
        from edit_rlhf.rewards.oracle import oracle_detail

        if not self.has_oracle[split]:
            return None
        out = []
        for img in images:
            try:
                out.append(oracle_detail(row["oracle"], img)["oracle_score"])
            except (ValueError, KeyError):
                out.append(float("nan"))
        return out
