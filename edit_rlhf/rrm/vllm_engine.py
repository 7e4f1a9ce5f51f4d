"""A vLLM engine for Qwen2.5-VL loaded by path: batched multimodal generation and in-place weight sync.

Used by the RRM reward workers, the principle generator and (issue 5) GCPO rollouts. On the CPU backend the
environment has to be set before vLLM builds its engine (reference/environment.md §6): KV-cache size,
OpenMP threads (no core binding: several engines share the cores), and by default the engine core in this
process (no spawn, so no `__main__`-guard requirement and one process less per worker).
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from edit_rlhf.rrm.engine import (Completion, GenRequest, SamplingSpec, keeps_alternatives, merge_alternatives,
                                   suppressed_token_ids, to_pil)


def _retie_embeddings(model) -> int:
    """Runs in each vLLM worker after a reload: re-tie `lm_head` to `embed_tokens` where the config ties them.

    The layerwise reload gives `embed_tokens` a new weight tensor, which breaks vLLM's tie (`lm_head.weight
    = embed_tokens.weight` at construction) and, on CPU, leaves the lm_head's prepacked GEMM weight stale:
    logits would still come from the old embeddings. Returns the number of heads re-tied."""
    n = 0
    for mod in model.modules():
        cfg = getattr(mod, "config", None)
        head, inner = getattr(mod, "lm_head", None), getattr(mod, "model", None)
        emb = getattr(inner, "embed_tokens", None)
        if cfg is None or head is None or emb is None or not getattr(cfg, "tie_word_embeddings", False):
            continue
        if not hasattr(head, "quant_method"):
            continue  # PPMissingLayer on non-last pipeline stages
        head.weight = emb.weight
        head.quant_method.process_weights_after_loading(head)
        n += 1
    return n


def configure_env(cfg, threads: Optional[int] = None) -> None:
    """Environment vLLM reads at engine construction. Call before building `LLM`."""
    import torch

    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # tensors in collective_rpc to out-of-process workers
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if cfg.in_process else "1"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # actor logs reach the driver console
    if not torch.cuda.is_available():
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.cpu_kvcache_gb)
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"  # engines share cores; binding pins them together
        n = cfg.cpu_threads or threads or torch.get_num_threads()
        os.environ["OMP_NUM_THREADS"] = str(n)


class VLLMEngine:
    """`LLM(model=path, ...)` with `generate(requests, spec)` -> per request, `spec.n` Completions."""

    backend = "vllm"

    def __init__(self, path: str, cfg, threads: Optional[int] = None, seed: int = 0):
        configure_env(cfg, threads)
        from vllm import LLM

        t = time.time()
        kw: Dict[str, Any] = dict(
            model=path, dtype=cfg.dtype, max_model_len=cfg.max_model_len,
            tensor_parallel_size=cfg.tensor_parallel_size, gpu_memory_utilization=cfg.gpu_memory_utilization,
            enforce_eager=cfg.enforce_eager, max_num_seqs=cfg.max_num_seqs, seed=seed,
            limit_mm_per_prompt={"image": cfg.max_images, "video": 0},
            enable_prefix_caching=cfg.enable_prefix_caching)
        if cfg.distributed_executor_backend:
            kw["distributed_executor_backend"] = cfg.distributed_executor_backend
        if cfg.weight_transfer:  # the learner broadcasts weights into the workers (edit_rlhf.transport)
            kw["weight_transfer_config"] = {"backend": cfg.weight_transfer}
        if cfg.load_format:
            kw["load_format"] = cfg.load_format
        import torch

        if not torch.cuda.is_available():
            # A partially prefilled request's sampled token is discarded and vLLM rewinds its per-request
            # generator with set_offset, which CPU generators do not support ("CPU Generator does not use
            # offset"): seeded sampling of a large batch crashes. Without chunked prefill a request is only
            # scheduled when its whole prompt fits the step's token budget.
            kw.update(enable_chunked_prefill=False, max_num_batched_tokens=max(4096, cfg.max_model_len))
        self.llm = LLM(**kw)
        self.start_seconds = time.time() - t
        self.path = path
        self.tokenizer = self.llm.get_tokenizer()
        self.suppress = suppressed_token_ids(self.tokenizer)
        self.version = 0  # weight version: +1 per load_weights

    # ------------------------------------------------------------------ generation
    def _params(self, spec: SamplingSpec, seed: int):
        from vllm import SamplingParams

        return SamplingParams(
            n=1, temperature=spec.temperature, top_p=spec.top_p, top_k=spec.top_k if spec.top_k > 0 else -1,
            max_tokens=spec.max_tokens, seed=seed,
            logprobs=spec.top_logprobs if spec.top_logprobs > 0 else (0 if spec.logprobs else None),
            logit_bias={i: -float("inf") for i in self.suppress} or None)

    def generate(self, requests: Sequence[GenRequest], spec: SamplingSpec,
                 timeout_s: Optional[float] = None) -> List[List[Completion]]:
        """All requests x spec.n samples in one engine run. With `timeout_s`, samples unfinished at the
        deadline are aborted and returned as Completion(text="", finish_reason="timeout")."""
        prompts, params, where = [], [], []
        for i, r in enumerate(requests):
            item: Dict[str, Any] = {"prompt": r.prompt}
            if len(r.images):
                item["multi_modal_data"] = {"image": [to_pil(im) for im in r.images]}
            for j in range(spec.n):
                prompts.append(item)
                params.append(self._params(spec, int(r.seed) + j))
                where.append((i, j))
        out: List[List[Completion]] = [[Completion("", finish_reason="timeout") for _ in range(spec.n)]
                                       for _ in requests]
        if not prompts:
            return out
        # Outputs carry the external ids LLM assigns from its counter (what LLM.generate sorts by);
        # enqueue returns the engine-internal ids, which abort_request(internal=True) takes.
        first = self.llm.request_counter.counter
        internal = self.llm.enqueue(prompts, params, use_tqdm=False)
        slot = {str(first + k): (w, internal[k]) for k, w in enumerate(where)}
        engine = self.llm.llm_engine
        deadline = time.time() + timeout_s if timeout_s else None
        while engine.has_unfinished_requests():
            for o in engine.step():
                if o.finished and o.request_id in slot:
                    (i, j), _ = slot.pop(o.request_id)
                    out[i][j] = self._completion(o.outputs[0], spec)
            if deadline is not None and time.time() > deadline and slot:
                engine.abort_request([iid for _, iid in slot.values()], internal=True)
                break
        return out

    @staticmethod
    def _completion(c, spec: SamplingSpec) -> Completion:
        lps = texts = top = None
        if spec.logprobs and c.logprobs is not None:
            lps = [float(d[t].logprob) for t, d in zip(c.token_ids, c.logprobs)]
        if spec.top_logprobs > 0 and c.logprobs is not None:
            # vLLM returns the sampled token plus the top_logprobs most likely ones, each with its decoded text
            texts = [d[t].decoded_token or "" for t, d in zip(c.token_ids, c.logprobs)]
            top = [merge_alternatives((lp.decoded_token or "", lp.logprob) for lp in d.values())
                   if keeps_alternatives(t, spec.top_logprobs_at) else {} for t, d in zip(texts, c.logprobs)]
        return Completion(text=c.text, token_ids=list(c.token_ids), logprobs=lps,
                          finish_reason=str(c.finish_reason or ""), token_texts=texts, top_logprobs=top)

    # ------------------------------------------------------------------ scoring given tokens
    def score_completion(self, request: GenRequest, completion_ids: Sequence[int]) -> List[float]:
        """Log-probs of `completion_ids` after the request's prompt under the engine's current weights (raw
        distribution), via prompt log-probs of prompt + completion. Used to check weight syncs against the
        learner. Raises ValueError when the text of the ids does not re-tokenize to the same ids."""
        from vllm import SamplingParams

        ids = [int(t) for t in completion_ids]
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        item: Dict[str, Any] = {"prompt": request.prompt + text}
        if len(request.images):
            item["multi_modal_data"] = {"image": [to_pil(im) for im in request.images]}
        out = self.llm.generate([item], SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0),
                                use_tqdm=False)[0]
        tail = list(out.prompt_token_ids[-len(ids):])
        if tail != ids:
            raise ValueError(f"score_completion: the completion re-tokenizes differently ({tail[:8]}... vs {ids[:8]}...)")
        return [float(d[t].logprob) for t, d in zip(ids, out.prompt_logprobs[-len(ids):])]

    # ------------------------------------------------------------------ weight sync
    def load_weights(self, named_tensors: Iterable[Tuple[str, Any]]) -> int:
        """Load HF-named tensors (e.g. a learner's `state_dict().items()`, all or some of them) into the running
        engine, then drop cached prefixes computed with the old weights. Returns the new weight version.

        Uses the workers' in-place `reload_weights` (checkpoint format): after the first load vLLM repacks
        linear weights into kernel layouts (on CPU the `weight` becomes an empty tensor without a
        `weight_loader`), so calling `model.load_weights` again via `apply_model` only works for embeddings
        and norms. The layerwise reload restores the loading state, loads and re-processes each layer."""
        weights = [(k, v.detach().to("cpu").contiguous() if hasattr(v, "detach") else v) for k, v in named_tensors]
        if not weights:
            raise ValueError("load_weights: no tensors given")
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.apply_model(_retie_embeddings)
        # Cached prefixes and vision embeddings were computed with the old weights. The workers' reload drops
        # their encoder outputs, so the scheduler's encoder-cache bookkeeping must go too ("Encoder cache
        # miss" otherwise, when an image seen before the sync comes again).
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()
        self.version += 1
        return self.version

    def weight_transfer(self, method: str, *args):
        """vLLM's weight-transfer control plane (`LLM.init_weight_transfer_engine`, `start_weight_update`,
        `update_weights`, `finish_weight_update`), driven by the learner's NCCL sender (edit_rlhf.transport).
        `finish_weight_update` also re-ties embeddings, drops caches computed with the old weights and returns the
        new weight version."""
        if method == "init_weight_transfer_engine":
            return self.llm.init_weight_transfer_engine({"init_info": args[0]})
        if method == "start_weight_update":
            return self.llm.start_weight_update()
        if method == "update_weights":
            return self.llm.update_weights({"update_info": args[0]})
        if method == "finish_weight_update":
            self.llm.finish_weight_update()
            self.llm.apply_model(_retie_embeddings)
            self.llm.reset_prefix_cache()
            self.llm.llm_engine.reset_encoder_cache()
            self.version += 1
            return self.version
        raise ValueError(f"unknown weight-transfer call {method!r}")

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        self.llm = None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:
                pass
            del llm
        import gc

        gc.collect()
