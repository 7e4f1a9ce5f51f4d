"""Ray shell around an evaluation batch scorer (`edit_rlhf.evaluation.scorers`: judge, RRM or oracle).

It reads the rows it scores from the datasets itself, so the driver passes only (split, row indices, the
edits' object ref), as with the reward pool.
"""
from __future__ import annotations

import os
import time

import ray


@ray.remote
class EvalScorerWorker:
    def __init__(self, kind: str, cfg, datasets: dict, worker_id: str, torch_threads: int = 1):
        from edit_rlhf.runtime import quiet_vllm_worker_logs, setup_process

        setup_process(torch_threads)
        from edit_rlhf.data.prompts import EditPromptDataset
        from edit_rlhf.evaluation.scorers import build_eval_scorer

        self.worker_id = worker_id
        self.scorer = build_eval_scorer(kind, cfg, threads=torch_threads)
        quiet_vllm_worker_logs()  # after the engine exists: vLLM configures its loggers on import
        self.data = {k: EditPromptDataset(p, validate="schema") for k, p in datasets.items()}
        self.served = 0

    def info(self) -> dict:
        return {"worker": self.worker_id, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                "scorer": self.scorer.name, "served": self.served, "scorer_info": self.scorer.info()}

    def score(self, split: str, indices, images) -> dict:
        """images: uint8 (B, H, W, 3), row b edited from row indices[b] (resolved from the rollout's ref).
        Returns {'results': [ScoreResult per row], 'worker', 'seconds'}; a row that cannot be read fails alone."""
        from edit_rlhf.data.prompts import DatasetError
        from edit_rlhf.rewards.base import ScoreResult

        t0 = time.time()
        ds = self.data[split]
        cols = [c for c in self.scorer.columns if c in ds.ds.column_names]
        rows, bad = [], {}
        for b, i in enumerate(indices):
            try:
                rows.append(ds.row(int(i), cols))
            except DatasetError as e:
                bad[b] = str(e)
                rows.append(None)
        ok = [b for b, r in enumerate(rows) if r is not None]
        scored = self.scorer.score_batch([rows[b] for b in ok], images[ok]) if ok else []
        results = [ScoreResult.failed(bad.get(b, "")) for b in range(len(rows))]
        for b, res in zip(ok, scored):
            results[b] = res
        self.served += 1
        return {"results": results, "worker": self.worker_id, "seconds": time.time() - t0}

    def shutdown(self) -> None:
        """Release the scorer's engine (a vLLM engine holds its KV cache until then)."""
        self.scorer.close()
