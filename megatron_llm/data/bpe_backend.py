"""Optional faster encoder for Hugging Face byte-level BPE tokenizers: the `gigatoken` package.

gigatoken re-implements byte-level BPE (pre-tokenization, merges, added tokens) and gives the same ids as
`tokenizers`, many times faster; it does not run post-processors. It is used only when it is installed,
the tokenizer's post-processor adds nothing, and it reproduces `tokenizers` on a built-in probe set;
otherwise (or with MEGATRON_LLM_BPE_BACKEND=tokenizers) `tokenizers` encodes. The tests compare both on a
multilingual corpus. Its word cache grows with the distinct words seen, so the encoder is rebuilt after
every `rebuild_bytes` of input to keep memory bounded.
"""

from __future__ import annotations

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
]
ENV = "MEGATRON_LLM_BPE_BACKEND"


class GigatokenEncoder:
    """encode_flat over gigatoken, verified against a `tokenizers.Tokenizer` at construction."""

    def __init__(self, tokenizer_json: str, rebuild_bytes: int = 1 << 30) -> None:
        import gigatoken

        self._json = tokenizer_json
        self._gigatoken = gigatoken
        self._encoder = gigatoken.Tokenizer.from_json(tokenizer_json)
        self._seen = 0
        self._rebuild_bytes = rebuild_bytes

    def encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        import awkward

        if self._seen > self._rebuild_bytes:
            self._encoder = self._gigatoken.Tokenizer.from_json(self._json)
            self._seen = 0
        self._seen += sum(map(len, texts))
        encoded = self._encoder.encode_batch(texts)
        ids = awkward.to_numpy(awkward.flatten(encoded)).astype(np.int64)
        return ids, awkward.to_numpy(awkward.num(encoded)).astype(np.int64)


def gigatoken_encoder(tokenizer_json: str, backend) -> GigatokenEncoder | None:
    """A verified gigatoken encoder for this tokenizer, or None when it cannot be used."""
    choice = os.environ.get(ENV, "auto")
    if choice == "tokenizers":
        return None
    try:
        encoder = GigatokenEncoder(tokenizer_json)
        probes = ("", "a")
        if any(backend.encode(p, add_special_tokens=True).ids != backend.encode(p, add_special_tokens=False).ids
               for p in probes):
            raise ValueError("the tokenizer's post-processor adds tokens, which gigatoken does not")
        expected = [encoding.ids for encoding in backend.encode_batch(PROBES, add_special_tokens=True)]
        ids, lengths = encoder.encode_flat(PROBES)
        if ids.tolist() != [i for probe in expected for i in probe] or lengths.tolist() != list(map(len, expected)):
            raise ValueError("gigatoken's ids differ from tokenizers' on the probe texts")
    except Exception as error:  # ImportError, or any refusal of gigatoken to load this tokenizer
        if choice == "gigatoken":
            raise RuntimeError(f"{ENV}=gigatoken but it cannot be used: {error}") from error
        return None
    return encoder
