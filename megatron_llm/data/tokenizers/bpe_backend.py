"""Optional faster encoder for BPE tokenizers: the `gigatoken` package (Rust, many times faster).

Two uses, each checked at start against the library it replaces and used only when it agrees:

- Hugging Face byte-level BPE: gigatoken re-implements pre-tokenization, merges and added tokens and gives
  the ids of `tokenizers`; it does not run post-processors, so a tokenizer whose post-processor adds tokens
  keeps `tokenizers`.
- SentencePiece BPE with byte fallback: `sentencepiece_tokenizer_json` restates the model as a BPE whose
  merges are every in-vocabulary split of a piece, ranked by the merged piece's score. SentencePiece merges
  the adjacent pair whose concatenation scores highest, the leftmost on a tie; the ranking reproduces that,
  provided two different splits of one piece are never both mergeable at once. They cannot be: no merge
  has crossed either occurrence's edges, so each occurrence has followed the same merge sequence as the
  piece on its own, which passes through exactly one two-symbol state. The conditions the argument needs
  (distinct scores, pieces built from in-vocabulary characters, no unused pieces) are checked per model.
  Text is normalized by SentencePiece's own normalizer (see `sp_encoder`) before gigatoken sees it.

MEGATRON_LLM_BPE_BACKEND=reference keeps `tokenizers`/`sentencepiece`; `=gigatoken` makes a refusal an
error. gigatoken caches encoded words, so the encoder is rebuilt after every `rebuild_chars` characters of
input (256 Mi by default, about 0.1 s each time) to keep memory bounded.
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np

PROBES = [
    "",
    " ",
    "Hello, world! It's 2024: 3.14 x 10^9 items.",
    "  leading and trailing spaces  \n\n\ttabs\r\n",
    "Grüße, Съешь ещё, ภาษาไทย, 中文，日本語のテキスト, မြန်မာ, 😀🎉",
    "def f(x):\n    return x ** 2  # comment\n",
    "<|endoftext|> special <|im_start|>user\nhi<|im_end|> <s></s>",
    "\u2581raw\u2581\u2581marks\u2581 \x00\x01\x02 ﬁ\u00a0x \U0001f9ec" + "é" * 300,
]
ENV = "MEGATRON_LLM_BPE_BACKEND"
_REFERENCE = ("reference", "tokenizers", "sentencepiece")
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_SPACE = "\u2581"


class GigatokenEncoder:
    """encode_flat over a gigatoken tokenizer built from tokenizer.json contents."""

    def __init__(self, tokenizer_json: str, rebuild_chars: int = 1 << 28) -> None:
        import gigatoken

        self._json = tokenizer_json
        self._gigatoken = gigatoken
        self._encoder = gigatoken.Tokenizer.from_json(tokenizer_json)
        self._seen = 0
        self._rebuild_chars = rebuild_chars

    def encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """One call per text: no awkward-array import, and one thread per worker process."""
        if self._seen > self._rebuild_chars:
            self._encoder = self._gigatoken.Tokenizer.from_json(self._json)
            self._seen = 0
        self._seen += sum(map(len, texts))
        encoded = list(map(self._encoder.encode, texts))
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        ids = np.concatenate(encoded).astype(np.int64) if encoded else np.zeros(0, dtype=np.int64)
        return ids, lengths


def _choice() -> str:
    choice = os.environ.get(ENV, "auto")
    if choice not in ("auto", "gigatoken", *_REFERENCE):
        from megatron_llm.errors import UsageError

        raise UsageError(f"{ENV}={choice!r}: expected auto, gigatoken or reference")
    return choice


def _verified(build, expected: list[list[int]], inputs: list[str]) -> GigatokenEncoder | None:
    """build() if it reproduces `expected` on `inputs`; None (or an error when gigatoken was asked for)."""
    choice = _choice()
    if choice in _REFERENCE:
        return None
    try:
        encoder = build()
        ids, lengths = encoder.encode_flat(inputs)
        if ids.tolist() != [i for probe in expected for i in probe] or lengths.tolist() != list(map(len, expected)):
            raise ValueError("gigatoken's ids differ from the reference library's on the probe texts")
    except Exception as error:  # ImportError, a refusal to load this tokenizer, or a disagreement
        if choice == "gigatoken":
            raise RuntimeError(f"{ENV}=gigatoken but it cannot be used: {error}") from error
        return None
    return encoder


def gigatoken_encoder(tokenizer_json: str, backend) -> GigatokenEncoder | None:
    """A verified gigatoken encoder for this `tokenizers.Tokenizer`, or None when it cannot be used."""
    probes = ("", "a")
    if any(backend.encode(p, add_special_tokens=True).ids != backend.encode(p, add_special_tokens=False).ids
           for p in probes):
        if _choice() == "gigatoken":
            raise RuntimeError(f"{ENV}=gigatoken but the tokenizer's post-processor adds tokens")
        return None
    expected = [encoding.ids for encoding in backend.encode_batch(PROBES, add_special_tokens=True)]
    return _verified(lambda: GigatokenEncoder(tokenizer_json), expected, PROBES)


def sentencepiece_gigatoken_json(model) -> str | None:
    """`sentencepiece_tokenizer_json(model)`, or None when gigatoken is switched off or cannot be used."""
    choice = _choice()
    if choice in _REFERENCE or (choice == "auto" and importlib.util.find_spec("gigatoken") is None):
        return None
    converted = sentencepiece_tokenizer_json(model)
    if converted is None and choice == "gigatoken":
        raise RuntimeError(f"{ENV}=gigatoken but this SentencePiece model is not a byte-fallback BPE it covers")
    return converted


def sentencepiece_gigatoken_encoder(converted: str | None, model, processor, normalize) -> GigatokenEncoder | None:
    """A gigatoken encoder for already-normalized text, from `sentencepiece_gigatoken_json(model)`, checked
    against SentencePiece on probe texts; None when there is no conversion or the check fails."""
    if converted is None:
        return None
    user_defined = [piece.piece for piece in model.pieces if piece.type == _USER_DEFINED]
    probes = PROBES + [f"x{token}y {token}{token} {token[:-1]}" for token in user_defined[:64]]
    return _verified(lambda: GigatokenEncoder(converted), processor.encode(probes), normalize(probes))


def sentencepiece_tokenizer_json(model) -> str | None:
    """tokenizer.json contents that encode normalized text as SentencePiece's BPE does, or None when the
    model does not meet the conditions in the module docstring."""
    trainer = model.trainer_spec
    if trainer.model_type != 2 or not trainer.byte_fallback or trainer.treat_whitespace_as_suffix:
        return None
    pieces = [(piece.piece, piece.score, piece.type) for piece in model.pieces]
    normal = {piece: score for piece, score, kind in pieces if kind == _NORMAL}
    if len(set(normal.values())) != len(normal) or any(kind == _UNUSED for _, _, kind in pieces):
        return None
    if any(len(piece) == 1 and kind not in (_NORMAL, _USER_DEFINED) for piece, _, kind in pieces):
        return None
    if not set("".join(normal)) <= normal.keys():
        return None
    user_defined = [(index, piece) for index, (piece, _, kind) in enumerate(pieces) if kind == _USER_DEFINED]
    if any(_SPACE in piece or not piece.strip() for _, piece in user_defined):
        return None
    merges = []
    for merged, score in normal.items():
        for k in range(1, len(merged)):
            left, right = merged[:k], merged[k:]
            if left in normal and right in normal:
                merges.append((-score, left, right))
    merges.sort()
    unk = next(piece for piece, _, kind in pieces if kind == _UNKNOWN)
    added = [{"id": index, "content": piece, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": False} for index, piece in user_defined]
    return json.dumps({
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": None,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": unk,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": {piece: index for index, (piece, _, _) in enumerate(pieces)},
            "merges": [[left, right] for _, left, right in merges],
        },
    }, ensure_ascii=False)
