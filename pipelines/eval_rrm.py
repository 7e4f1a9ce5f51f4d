"""`edit-rlhf eval-rrm`: pairwise accuracy of an Edit-RRM on preference data.

Data: our pair schema (`format: pairs`) or EditScore's EditReward-Bench layout (`format: editreward_bench`;
columns documented in `rrm_train.data`). A pool of `pool.size` engines (vLLM or HF, `engine.backend`) scores
both images of every pair with k = `eval.sampling.n` verdicts each (Avg@k). Reported: strict accuracy (ties
wrong), the with-ties variant (ties count 1/2), per-category accuracy and its macro average, parse rate,
tie rate and chance levels; logged to MLflow and written to `output` (with per-pair scores) when set.

On EditReward-Bench the headline is the authors' metric (`evaluation.editreward`): per preference dimension,
strict, the mean over task types of the per-task accuracy; the per-row figures above stay as secondary fields
(with several dimensions they pool them, which the published numbers never do).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict

from edit_rlhf.config import flatten
from edit_rlhf.redaction import redacted_config


def run_eval_rrm(cfg, quiet: bool = False) -> Dict[str, Any]:
    import ray

    from edit_rlhf.actors.rrm_rollout import RRMRolloutWorker
    from edit_rlhf.cluster.pools import ActorPool, close_run, init_ray
    from edit_rlhf.config import ConfigError
    from edit_rlhf.evaluation.editreward import METRIC_NAME, editreward_bench_accuracy, flat_metrics, headline_dimension
    from edit_rlhf.rrm.prompt import RRMPrompt
    from edit_rlhf.rrm_train.data import load_preferences
    from edit_rlhf.pipelines.rrm_generate import generate_on
    from edit_rlhf.rrm_train.evaluate import copy_source_probe, evaluate_pairs
    from edit_rlhf.runtime import setup_process
    from edit_rlhf.tracking import Tracker

    setup_process(cfg.cluster.torch_threads)
    t0 = time.time()
    cfg.engine.path = os.path.abspath(cfg.engine.path)
    if not os.path.isfile(os.path.join(cfg.engine.path, "config.json")):
        raise ConfigError(f"config key 'engine.path': {cfg.engine.path} is not a model folder (no config.json)")
    pairs = load_preferences(cfg.data)
    prompt = RRMPrompt.from_path(cfg.engine.path, cfg.prompt.style, cfg.prompt.system)
    started = not ray.is_initialized()
    init_ray(cfg.cluster)
    tracker = Tracker.from_config(cfg.tracking, default_name="eval-rrm",
                      tags={"pipeline": "eval-rrm", "model": cfg.engine.path, "data": cfg.data.path})
    tracker.log_params(flatten(redacted_config(cfg)))
    pool, status = None, "FAILED"
    try:
        pool = ActorPool("rrm_eval", RRMRolloutWorker, cfg.pool,
                         lambda i: (cfg.engine, f"rrm-eval-{i}", cfg.cluster.torch_threads, cfg.seed + i),
                         runtime_env=cfg.cluster.runtime_env())
        pool.wait_ready()
        res = evaluate_pairs(lambda reqs, spec, t: generate_on(pool, reqs, spec, t), prompt, pairs, cfg.eval.sampling,
                             cfg.eval.unparsed, cfg.seed)
        m = dict(res["metrics"])
        m["rows_dropped_ties"] = pairs.stats.get("ties_dropped", 0)
        if cfg.eval.copy_source:  # sandbox pairs (graded): each source scored as its own edit
            m.update(copy_source_probe(lambda reqs, spec, t: generate_on(pool, reqs, spec, t), prompt, pairs,
                                       res["scores"], cfg.eval.sampling, cfg.eval.unparsed, cfg.seed))
        per_pair = [{"id": r["id"], "category": r["category"], "score_preferred": s[0], "score_other": s[1],
                     **{k: r[k] for k in ("dimension", "task_type") if k in r}}
                    for r, s in zip(pairs.rows, res["scores"])]
        bench = editreward_bench_accuracy(per_pair) if cfg.data.format == "editreward_bench" else None
        tracker.log_metrics({f"eval/{k}": v for k, v in m.items()}, 0)
        if bench:
            tracker.log_metrics({f"eval/{k}": v for k, v in flat_metrics(bench).items()}, 0)
        out = {"pipeline": "eval-rrm", "model": cfg.engine.path, "data": cfg.data.path, "format": cfg.data.format,
               "score_from": cfg.eval.sampling.score_from, "metrics": m, "seconds": round(time.time() - t0, 1), "run_id": tracker.run_id,
               "load_stats": pairs.stats}
        if bench:
            out["editreward_bench"] = {"metric": METRIC_NAME, "headline_dimension": headline_dimension(bench),
                                       "dimensions": bench}
        if cfg.output:
            os.makedirs(os.path.dirname(os.path.abspath(cfg.output)) or ".", exist_ok=True)
            with open(cfg.output, "w") as f:
                json.dump({**out, "pairs": per_pair}, f, indent=2, default=str)
        tracker.log_dict(out, "eval_rrm.json")
        status = "FINISHED"
        print(summary_line(out), flush=True)
        return out
    finally:
        close_run(status, [("rrm_eval", pool)], tracker, started, release=("rrm_eval",))


def summary_line(out: Dict[str, Any]) -> str:
    """One line. On EditReward-Bench it leads with the authors' metric (per dimension, strict, mean over task
    types); the per-row figures follow, labelled as such."""
    from edit_rlhf.evaluation.editreward import summary_text

    m = out["metrics"]
    bench = (out.get("editreward_bench") or {}).get("dimensions")
    parts = [f"eval-rrm: {m['pairs']} {'rows' if bench else 'pairs'} in {out['seconds']:.0f}s"]
    if bench:
        parts.append(summary_text(bench))
    pooled = " (per row, all dimensions pooled; not the published metric)" if bench and len(bench) > 1 else \
        " (per row)" if bench else ""
    parts.append(f"pairwise accuracy{pooled} {m['accuracy']:.3f} (with ties {m['accuracy_with_ties']:.3f}; chance "
                 f"{m.get('chance_strict', float('nan')):.3f} / 0.5)")
    if "accuracy_macro" in m and not bench:
        parts.append(f"macro over categories {m['accuracy_macro']:.3f}")
    if "copy_source/margin" in m:
        parts.append(f"copy-the-source {m['copy_source/score_mean']:.2f} vs correct edits "
                     f"{m['copy_source/correct_score_mean']:.2f} (margin {m['copy_source/margin']:.2f})")
    soft = f" of {out['score_from']} scores" if out.get("score_from", "text") != "text" else ""
    parts += [f"parse rate {m['parse_rate']:.3f}", f"ties {m['tie_rate']:.3f}", f"Avg@{m['k']}{soft}",
              f"mlflow run {out['run_id']}"]
    return " | ".join(parts)
