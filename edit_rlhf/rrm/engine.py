"""Generation backends for Qwen2.5-VL models (the RRM, the principle generator): one request/response shape
for vLLM (`vllm_engine.VLLMEngine`) and transformers (`hf_engine.HFEngine`);
`backend.build_engine` picks one (this module is what both engines share, so it imports neither).

A request is a rendered prompt (chat template applied, one `<|image_pad|>` placeholder per image) and its
images; sample j of a request uses seed `request.seed + j`, so outputs depend on the request, not on the
batch it travels in. Both backends suppress the vision/special tokens that can never appear in an answer
(a sampled `<|image_pad|>` breaks the re-scoring forward pass: reference/derisk_rrm.md) and report the
log-prob of each sampled token under the *raw* model distribution (before temperature and suppression).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

# Never part of an answer: vision placeholders and chat-structure tokens (<|im_end|> is EOS and stays allowed).
SUPPRESSED_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                     "<|im_start|>", "<|endoftext|>")


@dataclass
class GenRequest:
    prompt: str
    images: Sequence[Any] = ()  # uint8 (H, W, 3) arrays or PIL images, in placeholder order
    seed: int = 0  # sample j uses seed + j


@dataclass
class SamplingSpec:
    n: int = 1
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_tokens: int = 512
    logprobs: bool = False
    top_logprobs: int = 0  # > 0: the text and log-prob of the most likely tokens at generated positions ...
    top_logprobs_at: str = "digits"  # ... holding a digit (what soft scores read; `keeps_alternatives`) | all

    @classmethod
    def from_config(cls, cfg, logprobs: bool = False) -> "SamplingSpec":
        """From an `RRMSamplingConfig`; a soft score (`score_from` other than `text`) asks for its `top_logprobs`."""
        return cls(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                   max_tokens=cfg.max_tokens, logprobs=logprobs,
                   top_logprobs=cfg.top_logprobs if cfg.score_from != "text" else 0)


@dataclass
class Completion:
    text: str
    token_ids: List[int] = field(default_factory=list)  # generated ids (EOS included when generation stopped on it)
    logprobs: Optional[List[float]] = None  # raw-distribution log-prob of each generated token
    finish_reason: str = ""  # stop | length | timeout
    # With SamplingSpec.top_logprobs: each generated token's text, and per position {token text: raw log-prob} of
    # the most likely tokens (tokens of the same text merged) where the token holds a digit (`keeps_alternatives`;
    # {} elsewhere). What rrm/soft.py reads a soft score from.
    token_texts: Optional[List[str]] = None
    top_logprobs: Optional[List[Dict[str, float]]] = None


def keeps_alternatives(token_text: str, at: str = "digits") -> bool:
    """Whether a generated token's alternatives are kept in `Completion.top_logprobs` (`SamplingSpec.top_logprobs_at`):
    `digits` (default) only where the token holds a digit - a soft score reads the score's first digit and each
    check's 0/1, nothing else - so a 1000-token verdict carries a few dozen small dicts instead of a thousand (what
    travels from an engine to the driver); `all` everywhere."""
    if at not in ("digits", "all"):
        raise ValueError(f"top_logprobs_at: must be 'digits' or 'all', got {at!r}")
    return at == "all" or any(ch.isdigit() for ch in token_text)


def merge_alternatives(pairs: Iterable[Tuple[str, float]]) -> Dict[str, float]:
    """{text: log-prob} from (token text, log-prob) pairs; tokens that decode to the same text are one answer
    (their probabilities add)."""
    out: Dict[str, float] = {}
    for text, lp in pairs:
        lp = float(lp)
        out[text] = float(np.logaddexp(out[text], lp)) if text in out else lp
    return out


def suppressed_token_ids(tokenizer) -> List[int]:
    """Ids of SUPPRESSED_TOKENS that exist in this tokenizer's vocabulary."""
    vocab = tokenizer.get_vocab()
    return sorted({vocab[t] for t in SUPPRESSED_TOKENS if t in vocab})


def sample_seed(*keys: Any) -> int:
    """A 31-bit seed from (run seed, prompt id, edit index, ...): strings are hashed stably (not `hash()`)."""
    import zlib

    ints = [k if isinstance(k, int) else zlib.crc32(str(k).encode()) for k in keys]
    return int(np.random.SeedSequence(ints).generate_state(1)[0] & 0x3FFFFFFF)


def to_pil(image):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {a.dtype} {a.shape}")
    return Image.fromarray(a)
