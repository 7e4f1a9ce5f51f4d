"""Offline tokenizers for the tiny models (no hub): CLIP byte-level BPE, T5 Unigram, Qwen2 byte-level BPE.

Each takes the sandbox vocabulary so that every world word ("square", "red", "remove" ...) is a single token:
the tiny text encoders then see distinct ids for distinct words (a char-level tokenizer made colour words
nearly indistinguishable to a 32-d encoder in the de-risk runs). Merge chains are built so they cannot fire
inside other words: CLIP chains grow right-to-left from the end-of-word marker `</w>`, Qwen chains grow
left-to-right from the word-start marker `Ġ`.
"""
from __future__ import annotations

from typing import Iterable, List, Sequence, Tuple

from transformers import CLIPTokenizer, Qwen2Tokenizer, T5Tokenizer

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
# Frequent fragments of the RRM output format, one token each (shorter traces for the tiny RRM).
QWEN_FORMAT_TOKENS = ["<score>", "</score>", '{"question":', '"score":', '{"average_score":']

QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def bytes_to_unicode() -> List[str]:
    """GPT-2's reversible byte -> printable-unicode table (256 symbols)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _clean_words(words: Iterable[str]) -> List[str]:
    out: List[str] = []
    for w in words:
        w = w.strip().lower()
        if w and w.isascii() and w.isalpha() and w not in out:
            out.append(w)
    return out


def make_clip_tokenizer(words: Sequence[str] = (), model_max_length: int = 77) -> CLIPTokenizer:
    """Byte-level BPE CLIP tokenizer whose vocabulary holds each word in `words` as one `word</w>` token."""
    chars = bytes_to_unicode()
    vocab = chars + [c + "</w>" for c in chars]
    merges: List[Tuple[str, str]] = []
    for w in _clean_words(words):
        cur = w[-1] + "</w>"
        for ch in reversed(w[:-1]):  # right-to-left: every merge contains the end-of-word marker
            pair = (ch, cur)
            cur = ch + cur
            if pair not in merges:
                merges.append(pair)
                vocab.append(cur)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, model_max_length=model_max_length)


def make_t5_tokenizer(words: Sequence[str] = (), model_max_length: int = 512) -> T5Tokenizer:
    """Unigram T5 tokenizer with each word as a high-probability `▁word` piece (letters as fallback)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(c, -3.0) for c in letters] + [("▁" + c, -3.5) for c in letters]
    vocab += [(c, -4.0) for c in "0123456789.,?!'-:;"]
    seen = {p for p, _ in vocab}
    for w in _clean_words(words):
        if "▁" + w not in seen:
            vocab.append(("▁" + w, -1.0))
            seen.add("▁" + w)
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def make_qwen_tokenizer(words: Sequence[str] = (), model_max_length: int = 4096) -> Qwen2Tokenizer:
    """Byte-level BPE Qwen2 tokenizer with one token per world word (after a space) and per format fragment."""
    vocab = bytes_to_unicode()
    merges: List[Tuple[str, str]] = []
    ws = _clean_words(words)
    # lower-case after a space, capitalised after a space or at the start of a text (sentence starts)
    forms = ["Ġ" + w for w in ws] + ["Ġ" + w.capitalize() for w in ws] + [w.capitalize() for w in ws]
    forms += ["user", "assistant", "system"]
    for form in forms:  # left-to-right chains; the Ġ-chains never fire inside another word
        cur = form[0]
        for ch in form[1:]:
            pair = (cur, ch)
            cur = cur + ch
            if pair not in merges:
                merges.append(pair)
            if cur not in vocab:
                vocab.append(cur)
    tok = Qwen2Tokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, unk_token=None,
                         eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=model_max_length)
    tok.add_tokens(QWEN_FORMAT_TOKENS)
    tok.add_tokens(QWEN_SPECIAL, special_tokens=True)
    tok.chat_template = QWEN_CHAT_TEMPLATE
    return tok
