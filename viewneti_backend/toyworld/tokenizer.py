"""An offline CLIP-compatible BPE tokenizer for the toy world.

Same format and algorithm as OpenAI CLIP's (what SD uses): byte-level symbols, '</w>' marks the end
of a word, merges applied by rank. The vocabulary is the 256 byte symbols with and without '</w>',
the merges that build every word of the toy caption vocabulary as one ``word</w>`` token, and
``<|startoftext|>`` / ``<|endoftext|>``. Unseen words still tokenize, into pieces.
Loadable with ``transformers.CLIPTokenizer.from_pretrained(folder)``.

Padding: like SD 2 (OpenCLIP) the pad token is "!" (id 0); SD 1 pads with <|endoftext|>.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from .captions import vocabulary

BOS, EOS, PAD = "<|startoftext|>", "<|endoftext|>", "!"
MODEL_MAX_LENGTH = 77


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable unicode character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _word_symbols(word: str) -> tuple[str, ...]:
    b2u = bytes_to_unicode()
    chars = [b2u[b] for b in word.encode("utf-8")]
    return tuple(chars[:-1]) + (chars[-1] + "</w>",)


def learn_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """Greedy BPE on the word list until every word is one symbol (ties broken deterministically)."""
    corpus = {w: list(_word_symbols(w)) for w in sorted(set(words))}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter = Counter()
        for syms in corpus.values():
            for a, b in zip(syms, syms[1:]):
                pairs[(a, b)] += 1
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, syms in corpus.items():
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and (syms[i], syms[i + 1]) == best:
                    out.append(syms[i] + syms[i + 1])
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            corpus[w] = out


def build_vocab(words: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    b2u = list(bytes_to_unicode().values())
    tokens = b2u + [c + "</w>" for c in b2u]
    merges = learn_merges(words)
    for a, b in merges:
        tokens.append(a + b)
    tokens += [BOS, EOS]
    vocab: dict[str, int] = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    return vocab, merges


def write_tokenizer(folder: str | Path, words: Iterable[str] | None = None) -> Path:
    """Write vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(words if words is not None else vocabulary())
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": PAD}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=1))
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": True,
        **special,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    return folder


def load_tokenizer(folder: str | Path):
    from transformers import CLIPTokenizer  # noqa: PLC0415

    return CLIPTokenizer.from_pretrained(str(folder))
