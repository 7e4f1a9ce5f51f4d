"""A transformers engine for Qwen2.5-VL loaded by path: the same requests and outputs as `VLLMEngine`, plus
teacher-forced token log-probs (what a learner optimises). Also the fallback where vLLM is not installed.

Batches are left-padded (Qwen2.5-VL's multimodal RoPE positions follow the attention mask). Sampled
batches seed torch's global generator from the batch's request seeds, so a batch is reproducible; unlike
vLLM, a request's samples then depend on the batch it is in (greedy outputs do not).
"""
from __future__ import annotations

import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from edit_rlhf.rrm.engine import (Completion, GenRequest, SamplingSpec, keeps_alternatives, merge_alternatives,
                                   suppressed_token_ids, to_pil)
from edit_rlhf.runtime import resolve_device, resolve_dtype


class HFEngine:
    backend = "hf"

    def __init__(self, path: str, cfg):
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        t = time.time()
        self.cfg = cfg
        self.path = path
        self.device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype) if cfg.dtype != "auto" else "auto"
        kw = {"dtype": dtype}
        if cfg.attn_implementation:
            kw["attn_implementation"] = cfg.attn_implementation
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, **kw).to(self.device).eval()
        self.processor = AutoProcessor.from_pretrained(path)
        self.processor.tokenizer.padding_side = "left"
        self.tokenizer = self.processor.tokenizer
        self.suppress = suppressed_token_ids(self.tokenizer)
        self._texts: Dict[int, str] = {}  # token id -> its text (top_logprobs alternatives)
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        self.start_seconds = time.time() - t
        self.version = 0

    # ------------------------------------------------------------------ inputs
    def inputs(self, requests: Sequence[GenRequest]):
        """Processor outputs (left-padded batch) for the requests' prompts and images."""
        images = [to_pil(im) for r in requests for im in r.images]
        enc = self.processor(text=[r.prompt for r in requests], images=images or None, padding=True,
                             return_tensors="pt")
        return enc.to(self.device)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, requests: Sequence[GenRequest], spec: SamplingSpec,
                 timeout_s: Optional[float] = None) -> List[List[Completion]]:
        """Per request, spec.n Completions. `timeout_s` is checked between batches (HF generate cannot be
        interrupted): requests not started by the deadline come back as finish_reason='timeout'."""
        out: List[List[Completion]] = []
        deadline = time.time() + timeout_s if timeout_s else None
        bs = max(1, self.cfg.batch_size)
        for s in range(0, len(requests), bs):
            batch = list(requests[s:s + bs])
            if deadline is not None and time.time() > deadline:
                out += [[Completion("", finish_reason="timeout") for _ in range(spec.n)] for _ in batch]
                continue
            out += self._generate_batch(batch, spec)
        return out

    def _generate_batch(self, batch: List[GenRequest], spec: SamplingSpec) -> List[List[Completion]]:
        enc = self.inputs(batch)
        sample = spec.temperature > 0
        if sample:
            torch.manual_seed(int(sum(r.seed * 7919 + k for k, r in enumerate(batch)) % (2 ** 31)))
        kw = dict(max_new_tokens=spec.max_tokens, do_sample=sample, num_return_sequences=spec.n,
                  suppress_tokens=self.suppress or None, return_dict_in_generate=True,
                  output_logits=spec.logprobs or spec.top_logprobs > 0, pad_token_id=self.tokenizer.pad_token_id)
        if sample:
            kw.update(temperature=spec.temperature, top_p=spec.top_p, top_k=spec.top_k or None)
        else:  # greedy: override sampling defaults a checkpoint's generation_config may carry
            kw.update(temperature=None, top_p=None, top_k=None)
        res = self.model.generate(**enc, **kw)
        prompt_len = enc["input_ids"].shape[1]
        gen = res.sequences[:, prompt_len:]
        lps = top_v = top_i = None
        if spec.logprobs or spec.top_logprobs > 0:
            lps, top_v, top_i = self._read_logits(res.logits, gen, spec.top_logprobs)
        out: List[List[Completion]] = []
        for i in range(len(batch)):
            row = []
            for j in range(spec.n):
                k = i * spec.n + j
                ids = gen[k].tolist()
                finish = "length"
                for t, tid in enumerate(ids):
                    if tid in self.eos:
                        ids, finish = ids[:t + 1], "stop"
                        break
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                c = Completion(text=text, token_ids=ids, finish_reason=finish,
                               logprobs=lps[k, :len(ids)].tolist() if spec.logprobs else None)
                if top_i is not None:
                    c.token_texts, c.top_logprobs = self._alternatives(ids, top_i[k], top_v[k], lps[k],
                                                                       spec.top_logprobs_at)
                row.append(c)
            out.append(row)
        return out

    @staticmethod
    def _read_logits(logits, gen, top_k: int):
        """From generate's raw per-step logits (T tensors of (B*n, V)): the generated tokens' log-probs (B*n, T)
        and, with `top_k`, the top-k log-probs and ids (B*n, T, k). One step's fp32 log-softmax at a time: stacking
        them would hold (B*n, T, V) fp32 twice (~4.9 GB each for a 7B Qwen2.5-VL's 152k vocabulary at T = 1000,
        B*n = 8) beside the logits generate already keeps."""
        rows, steps = gen.shape[0], len(logits)
        lps = torch.empty(rows, steps)
        top_v = top_i = None
        if top_k > 0:
            k = min(top_k, logits[0].shape[-1])
            top_v, top_i = torch.empty(rows, steps, k), torch.empty(rows, steps, k, dtype=torch.long)
        for t, step_logits in enumerate(logits):
            lp = torch.log_softmax(step_logits.float(), -1)
            lps[:, t] = lp.gather(-1, gen[:, t:t + 1].to(lp.device))[:, 0].cpu()
            if top_k > 0:
                v, i = lp.topk(top_v.shape[-1], dim=-1)
                top_v[:, t], top_i[:, t] = v.cpu(), i.cpu()
        return lps, top_v, top_i

    def _token_text(self, tid: int) -> str:
        if tid not in self._texts:
            self._texts[tid] = self.tokenizer.decode([tid], skip_special_tokens=True)
        return self._texts[tid]

    def _alternatives(self, ids, top_i, top_v, lps, at: str):
        """Per generated position: the sampled token's text, and {text: log-prob} of the most likely tokens plus
        the sampled one (as vLLM returns them; `lps`: the sampled tokens' log-probs), at the positions `at` keeps."""
        texts = [self._token_text(t) for t in ids]
        top = []
        for t, tid in enumerate(ids):
            if not keeps_alternatives(texts[t], at):
                top.append({})
                continue
            pairs = [(self._token_text(int(i)), float(v)) for i, v in zip(top_i[t].tolist(), top_v[t].tolist())]
            if tid not in top_i[t].tolist():
                pairs.append((texts[t], float(lps[t])))
            top.append(merge_alternatives(pairs))
        return texts, top

    # ------------------------------------------------------------------ scoring given tokens
    def token_logprobs(self, request: GenRequest, completion_ids: Sequence[int], grad: bool = False) -> torch.Tensor:
        """Teacher-forced log-probs (T,) of `completion_ids` after the request's prompt (raw distribution)."""
        enc = self.inputs([request])
        comp = torch.tensor([list(completion_ids)], dtype=enc["input_ids"].dtype, device=self.device)
        p = enc["input_ids"].shape[1]
        enc["input_ids"] = torch.cat([enc["input_ids"], comp], 1)
        enc["attention_mask"] = torch.cat([enc["attention_mask"], torch.ones_like(comp)], 1)
        if "mm_token_type_ids" in enc:  # required by transformers 5.x with images; generated tokens are text
            enc["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(comp)], 1)
        with torch.set_grad_enabled(grad):
            logits = self.model(**enc).logits[0, p - 1:-1].float()
            return torch.log_softmax(logits, -1).gather(-1, comp[0, :, None])[:, 0]

    def score_completion(self, request: GenRequest, completion_ids: Sequence[int]) -> List[float]:
        """`token_logprobs` as a list (the same call as `VLLMEngine.score_completion`)."""
        with torch.no_grad():
            return self.token_logprobs(request, completion_ids).tolist()

    # ------------------------------------------------------------------ weight sync
    def load_weights(self, named_tensors: Iterable[Tuple[str, Any]]) -> int:
        sd = {k: v for k, v in named_tensors}
        missing = [k for k in sd if k not in self.model.state_dict()]
        if missing:
            raise KeyError(f"load_weights: unknown parameter names {missing[:5]} (of {len(missing)})")
        self.model.load_state_dict(sd, strict=False)
        self.version += 1
        return self.version

    def close(self) -> None:
        self.model = None
