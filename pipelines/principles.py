"""`edit-rlhf principles`: add a `principles` column ([{question, category}]) to an edit-prompt dataset.

generator=oracle (sandbox default): the sandbox's programmatic generator, from each row's oracle record.
generator=vlm: a Qwen2.5-VL on a pool of `VLMWorker` actors (vLLM or HF) answers a few-shot prompt per
(source image, instruction); each answer is parsed and checked against the rules (count, categories);
rows whose answer fails are asked again with a new seed, up to `max_attempts` in all. Rows still invalid
are counted and listed in `<output>/principles_report.json` (with the last reason and answer) and dropped
from the output (`on_invalid=drop`) or stop the stage (`on_invalid=fail`). Nothing is dropped silently.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Dict, List, Optional, Sequence

from edit_rlhf.data.prompts import DatasetError, load_hf_dataset
from edit_rlhf.rrm.principles import (
    PrincipleRules, build_messages, load_examples, parse_principles, pick_examples, validate_principles,
)
from edit_rlhf.sandbox.oracle import oracle_principles

REPORT = "principles_report.json"


class RowResult:
    __slots__ = ("principles", "error", "attempts", "answer")

    def __init__(self):
        self.principles: Optional[List[Dict[str, str]]] = None
        self.error = ""
        self.attempts = 0
        self.answer = ""


# ---------------------------------------------------------------------------------------------- generators
def oracle_stage(ds, n: int, rules: PrincipleRules) -> List[RowResult]:
    out = []
    for i in range(n):
        r = RowResult()
        r.attempts = 1
        raw = ds[i].get("oracle")
        try:
            r.principles, r.error = validate_principles(oracle_principles(raw), rules)
        except (ValueError, KeyError, TypeError) as e:
            r.error = f"oracle record unusable: {e}"
        out.append(r)
    return out


def dispatch(pool, requests: Sequence[Any], spec, batch_size: int, timeout_s: float) -> List[str]:
    """Texts (first sample) for `requests`, in chunks to the least-loaded live workers. A chunk whose worker
    fails or times out goes to another worker (at most once per worker); with no live worker: PoolError."""
    from edit_rlhf.cluster.pools import PoolError
    from edit_rlhf.pipelines.scheduler import Scheduler, Stage

    chunks = [list(range(s, min(s + batch_size, len(requests)))) for s in range(0, len(requests), batch_size)]
    stage = Stage("generate", pool, lambda actor, task: actor.generate.remote([requests[k] for k in task.payload], spec),
                  max_retries=None, distinct_actors=True, timeout_s=timeout_s,
                  error=lambda task, why: PoolError(f"pool '{pool.name}': chunk {task.id} failed on every live "
                                                    f"worker; last error: {why[:300]}"))
    texts: List[str] = [""] * len(requests)
    for task in Scheduler([stage]).run(chunks):
        for k, o in zip(task.payload, task.results["generate"]):
            texts[k] = o[0].text
    return texts


def ask_with_retries(results: List[RowResult], ask, rules: PrincipleRules, max_attempts: int,
                     on_valid=None) -> List[RowResult]:
    """Ask `ask(row_indices, attempt) -> answers` for every row still without valid principles, at most
    `max_attempts` times per row; each answer is parsed and validated. Rows already marked with
    `attempts >= max_attempts` (bad input) are not asked."""
    for attempt in range(max_attempts):
        todo = [i for i, r in enumerate(results) if r.principles is None and r.attempts <= attempt]
        if not todo:
            break
        for i, text in zip(todo, ask(todo, attempt)):
            r = results[i]
            r.attempts += 1
            r.answer = text
            r.principles, r.error = parse_principles(text, rules)
            if r.principles is not None and on_valid is not None:
                on_valid()
    return results


def vlm_stage(ds, n: int, cfg, rules: PrincipleRules, quiet: bool = True) -> List[RowResult]:
    from transformers import AutoProcessor
    from tqdm import tqdm

    from edit_rlhf.actors.vlm import VLMWorker
    from edit_rlhf.cluster.pools import ActorPool
    from edit_rlhf.data.images import ImageError, decode_image
    from edit_rlhf.rrm.engine import GenRequest, SamplingSpec, sample_seed
    from edit_rlhf.rrm.prompt import render

    processor = AutoProcessor.from_pretrained(cfg.vlm.path)
    pool_examples = load_examples(cfg.prompt.examples_path)
    s = cfg.sampling
    spec = SamplingSpec(n=1, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens)
    results = [RowResult() for _ in range(n)]
    texts: Dict[int, str] = {}
    images: Dict[int, Any] = {}
    for i in range(n):
        row = ds[i]
        try:
            images[i] = decode_image(row["source_image"])
            ex = pick_examples(pool_examples, cfg.prompt.num_examples, sample_seed(s.seed, row["id"], "examples"))
            texts[i] = render(processor, build_messages(row["instruction"], rules, ex))
        except (ImageError, ValueError) as e:
            results[i].error = f"row {i} (id={row['id']}): {e}"
            results[i].attempts = cfg.max_attempts  # not retried: the input itself is bad
    pool = ActorPool("principles", VLMWorker, cfg.workers,
                     lambda k: (cfg.vlm, f"vlm-{k}", cfg.cluster.torch_threads, s.seed))
    try:
        pool.wait_ready()

        def ask(todo: List[int], attempt: int) -> List[str]:
            reqs = [GenRequest(texts[i], [images[i]], seed=sample_seed(s.seed, ds[i]["id"], attempt)) for i in todo]
            return dispatch(pool, reqs, spec, cfg.batch_size, cfg.timeout_s)

        bar = tqdm(total=n, desc="principles", disable=quiet, dynamic_ncols=True)
        ask_with_retries(results, ask, rules, cfg.max_attempts, on_valid=lambda: bar.update(1))
        bar.close()
    finally:
        pool.shutdown(release=True)
    return results


# ---------------------------------------------------------------------------------------------- output
def write_output(ds, results: List[RowResult], out: str) -> int:
    """The valid rows with their principles at `out` (save_to_disk); returns the number written."""
    import datasets

    from edit_rlhf.data.prompts import IMAGE_COLUMNS

    keep = [i for i, r in enumerate(results) if r.principles is not None]
    sub = ds.select(keep)
    if "principles" in sub.column_names:
        sub = sub.remove_columns("principles")
    feat = datasets.List({"question": datasets.Value("string"), "category": datasets.Value("string")})
    sub = sub.add_column("principles", [results[i].principles for i in keep], feature=feat)
    for col in IMAGE_COLUMNS:  # undo the loader's decode=False so the folder loads like any image dataset
        if col in sub.column_names:
            sub = sub.cast_column(col, datasets.Image())
    tmp = out.rstrip("/") + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    sub.save_to_disk(tmp)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.replace(tmp, out)
    return len(keep)


def report(cfg, ds, results: List[RowResult], seconds: float) -> Dict[str, Any]:
    invalid = [{"row": i, "id": ds[i]["id"], "attempts": r.attempts, "error": r.error, "answer": r.answer[:500]}
               for i, r in enumerate(results) if r.principles is None]
    valid = [r for r in results if r.principles is not None]
    counts = [len(r.principles) for r in valid]
    return {"input": cfg.input, "output": cfg.output, "generator": cfg.generator, "rows": len(results),
            "valid": len(valid), "invalid": len(invalid),
            "valid_first_attempt": sum(r.attempts == 1 for r in valid),
            "valid_after_retry": sum(r.attempts > 1 for r in valid), "max_attempts": cfg.max_attempts,
            "answers": sum(r.attempts for r in results), "on_invalid": cfg.on_invalid,
            "principles_per_row": {"min": min(counts), "max": max(counts),
                                   "mean": sum(counts) / len(counts)} if counts else None,
            "seconds": round(seconds, 2), "invalid_rows": invalid}


def summary_line(rep: Dict[str, Any]) -> str:
    s = (f"principles: {rep['rows']} rows, {rep['valid']} valid ({rep['valid_first_attempt']} at the first "
         f"attempt, {rep['valid_after_retry']} after retries), {rep['invalid']} invalid after "
         f"{rep['max_attempts']} attempt(s)")
    if rep["invalid"]:
        rows = ", ".join(str(r["row"]) for r in rep["invalid_rows"][:10])
        s += f" (rows {rows}{', ...' if rep['invalid'] > 10 else ''}; see {rep['report']})"
    return s + f" in {rep['seconds']:.1f}s -> {rep['output']}"


# ---------------------------------------------------------------------------------------------- stage
def run_principles(cfg, quiet: bool = False) -> Dict[str, Any]:
    from edit_rlhf.runtime import setup_process

    setup_process(cfg.cluster.torch_threads)
    t0 = time.time()
    cfg.input, cfg.output = os.path.abspath(cfg.input), os.path.abspath(cfg.output)
    if cfg.vlm.path:
        cfg.vlm.path = os.path.abspath(cfg.vlm.path)
    if cfg.input == cfg.output:
        raise DatasetError(f"output must differ from input ({cfg.input})")
    if os.path.exists(cfg.output) and not cfg.overwrite:
        raise DatasetError(f"output {cfg.output} exists; pass overwrite=true to replace it")
    ds = load_hf_dataset(cfg.input)
    need = ["id", "source_image", "instruction"] + (["oracle"] if cfg.generator == "oracle" else [])
    missing = [c for c in need if c not in ds.column_names]
    if missing:
        raise DatasetError(f"{cfg.input}: missing column(s) {missing} for generator={cfg.generator}; "
                           f"has {ds.column_names}")
    n = min(len(ds), cfg.limit or len(ds))
    if n == 0:
        raise DatasetError(f"{cfg.input}: dataset is empty")
    if n < len(ds):
        ds = ds.select(range(n))
    rules = PrincipleRules.from_config(cfg.rules)
    if cfg.generator == "oracle":
        results = oracle_stage(ds, n, rules)
    else:
        import ray

        from edit_rlhf.cluster.pools import init_ray

        started = not ray.is_initialized()
        init_ray(cfg.cluster)
        try:
            results = vlm_stage(ds, n, cfg, rules, quiet=quiet)
        finally:
            if started:
                ray.shutdown()
    rep = report(cfg, ds, results, time.time() - t0)
    if rep["invalid"] and cfg.on_invalid == "fail":
        rows = "; ".join(f"row {r['row']} (id={r['id']}): {r['error']}" for r in rep["invalid_rows"][:10])
        raise DatasetError(f"{cfg.input}: {rep['invalid']} row(s) without valid principles after "
                           f"{cfg.max_attempts} attempt(s): {rows}")
    write_output(ds, results, cfg.output)
    rep["report"] = os.path.join(cfg.output, REPORT)
    rep["seconds"] = round(time.time() - t0, 2)
    with open(rep["report"], "w") as f:
        json.dump(rep, f, indent=2)
    print(summary_line(rep), flush=True)
    return rep
