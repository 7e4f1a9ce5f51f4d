"""Edit-RRM inference figures: prompt token counts (full vs compact), parse rates, vLLM engine start, per-batch
scoring latency on vLLM and HF, and HF-vs-vLLM greedy agreement. Prints one JSON line.

    .venv/bin/python benchmarks/rrm_inference.py [--rrm .cache/tiny_models/rrm] [--sandbox .cache/sandbox]
        [--prompts 4] [--group 8] [--max-tokens 256]

The tiny RRM is random unless --rrm points at a trained one: its greedy outputs run to max_tokens (worst-case
decode length) and never parse. Latencies are single measurements on a shared CPU: treat them as +-30 %.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def token_figures(rrm: str, ds, n: int = 64) -> dict:
    import numpy as np

    from edit_rlhf.rrm.prompt import RRMPrompt

    out = {}
    for style in ("compact", "full"):
        p = RRMPrompt.from_path(rrm, style)
        c = [p.token_counts(ds.row(i)["instruction"], ds.row(i)["principles"]) for i in range(min(n, len(ds)))]
        out[style] = {"system": c[0]["system"], "images": c[0]["images"],
                      "total_mean": float(np.mean([x["total"] for x in c])),
                      "total_min": min(x["total"] for x in c), "total_max": max(x["total"] for x in c)}
    return out


def trace_parse_rate(sandbox: str) -> dict:
    import datasets

    from edit_rlhf.rrm.parse import parse_verdict

    ds = datasets.load_from_disk(f"{sandbox}/traces_train")
    ok = sum(parse_verdict(t, n_expected=len(p)).ok for t, p in zip(ds["trace_text"], ds["principles"]))
    return {"oracle_traces": len(ds), "parsed": ok, "rate": ok / len(ds)}


def scoring(backend: str, rrm: str, ds, cands, prompts: int, group: int, max_tokens: int, n: int = 1) -> dict:
    import numpy as np

    from edit_rlhf.config.rrm import RRMScorerConfig
    from edit_rlhf.rewards.rrm import RRMScorer

    cfg = RRMScorerConfig(path=rrm, backend=backend)
    cfg.prompt.style = "compact"
    cfg.vllm.dtype = cfg.hf.dtype = "float32"
    cfg.vllm.max_model_len = 2048
    cfg.sampling.max_tokens = max_tokens
    if n > 1:
        cfg.sampling.n, cfg.sampling.temperature = n, 1.0
    t = time.time()
    sc = RRMScorer(cfg, threads=1)
    start = time.time() - t
    lat, parsed, samples, toks, first = [], 0, 0, [], 0.0
    for k in range(prompts + 1):  # the first batch warms the engine up and is not counted
        row = ds.row(k)
        imgs = np.stack((cands[row["id"]] * group)[:group])
        t = time.time()
        res = sc.score(row, imgs)
        if not k:
            first = time.time() - t
        else:
            lat.append(time.time() - t)
            parsed += sum(r.detail["n_valid"] for r in res)
            samples += sum(r.detail["n_samples"] for r in res)
            toks += [r.detail["gen_tokens"] for r in res]
    sc.close()
    return {"engine_start_s": round(start, 2), "first_batch_s": round(first, 2), "batch": f"{group} edits x {n} sample(s)",
            "latency_s_mean": round(float(np.mean(lat)), 3), "latency_s_max": round(max(lat), 3),
            "gen_tokens_mean": float(np.mean(toks)), "parse_rate": parsed / max(samples, 1)}


def agreement(rrm: str, ds, k: int = 8, max_tokens: int = 64) -> dict:
    import numpy as np

    from edit_rlhf.config.rrm import HFEngineConfig, VLLMEngineConfig
    from edit_rlhf.rrm.engine import GenRequest, SamplingSpec
    from edit_rlhf.rrm.hf_engine import HFEngine
    from edit_rlhf.rrm.prompt import RRMPrompt
    from edit_rlhf.rrm.vllm_engine import VLLMEngine

    p = RRMPrompt.from_path(rrm, "compact")
    reqs = [GenRequest(p.text(r["instruction"], r["principles"]), [r["source_image"], r["target_image"]])
            for r in (ds.row(i) for i in range(k))]
    spec = SamplingSpec(max_tokens=max_tokens, logprobs=True)
    hf = HFEngine(rrm, HFEngineConfig(batch_size=1))
    v = VLLMEngine(rrm, VLLMEngineConfig(dtype="float32", max_model_len=2048), threads=1)
    a, b = hf.generate(reqs, spec), v.generate(reqs, spec)
    same = sum(x[0].token_ids == y[0].token_ids for x, y in zip(a, b))
    diff = max(float(np.abs(np.array(x[0].logprobs) - np.array(y[0].logprobs)).max()) for x, y in zip(a, b)
               if x[0].token_ids == y[0].token_ids)
    t = time.time()
    v.load_weights([(n, w) for n, w in hf.model.state_dict().items() if n != "lm_head.weight"])
    sync = time.time() - t
    v.close()
    return {"requests": k, "tokens": max_tokens, "identical_greedy": same, "max_logprob_diff": diff,
            "weight_sync_full_s": round(sync, 3)}


def load_inputs(sandbox: str, prompts: int):
    """The sandbox train prompts and, per prompt id, the candidate edits scored in place of rollout edits
    (enough for `prompts` + 1 batches; also benchmarks/perf_step.py)."""
    import datasets

    from edit_rlhf.data.images import decode_image
    from edit_rlhf.data.prompts import EditPromptDataset

    ds = EditPromptDataset(f"{sandbox}/prompts_train")
    cd = datasets.load_from_disk(f"{sandbox}/candidates").cast_column("edited_image", datasets.Image(decode=False))
    cands = {}
    for c in cd.select(range(min(len(cd), 4 * (prompts + 1) * 2))):
        cands.setdefault(c["prompt_id"], []).append(decode_image(c["edited_image"]))
    return ds, cands


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rrm", default=".cache/tiny_models/rrm")
    ap.add_argument("--sandbox", default=".cache/sandbox")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=256)
    args = ap.parse_args(argv)
    from edit_rlhf.runtime import setup_process

    setup_process(1)
    ds, cands = load_inputs(args.sandbox, args.prompts)
    out = {"benchmark": "rrm_inference", "rrm": args.rrm, "tokens": token_figures(args.rrm, ds),
           "parse": trace_parse_rate(args.sandbox)}
    for backend in ("vllm", "hf"):
        out[f"score_{backend}"] = scoring(backend, args.rrm, ds, cands, args.prompts, args.group, args.max_tokens)
    out["score_vllm_avg4"] = scoring("vllm", args.rrm, ds, cands, args.prompts, args.group, args.max_tokens, n=4)
    out["agreement"] = agreement(args.rrm, ds)
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
