"""Tokenizers built from Megatron-LM's flags, choosing ids exactly as Megatron-LM's wrappers do.

`--tokenizer-type` decides the ids (see shared/reference/megatron-preprocess-compat.md):
- SentencePieceTokenizer: the model's pieces plus `<CLS> <SEP> <EOD> <MASK>` and the pad/bos/eos pieces
  (or `<PAD> <BOS> <EOS>` when the model has none) appended when absent; the text is cut at every
  occurrence of any of those strings; EOD is `<EOD>`; vocab_size counts the additions.
- GPTSentencePieceTokenizer: plain `encode_as_ids`; EOD is the model's eos id.
- HuggingFaceTokenizer: `AutoTokenizer.from_pretrained(dir)(text).input_ids`; EOD is `eos_token_id`;
  vocab_size is `len(tokenizer)`.
- GPT2BPETokenizer: GPT-2 byte-level BPE from `--vocab-file/--merge-file`; EOD is `<|endoftext|>`.
"""

from __future__ import annotations

from itertools import chain
from pathlib import Path

import numpy as np

from megatron_llm.data.tokenizers.tokenizer import HFTokenizer, SentencePieceTokenizer, Tokenizer
from megatron_llm.errors import UsageError

TOKENIZER_TYPES = ("SentencePieceTokenizer", "GPTSentencePieceTokenizer", "HuggingFaceTokenizer", "GPT2BPETokenizer")


def load_megatron_tokenizer(
    tokenizer_type: str,
    tokenizer_model: str | None = None,
    vocab_file: str | None = None,
    merge_file: str | None = None,
) -> Tokenizer:
    """The tokenizer Megatron-LM's `build_tokenizer` would make from the same flags."""
    if tokenizer_type == "GPT2BPETokenizer":
        if not vocab_file or not merge_file:
            raise UsageError("--tokenizer-type GPT2BPETokenizer needs --vocab-file and --merge-file")
        return _gpt2_bpe(vocab_file, merge_file)
    if tokenizer_type not in TOKENIZER_TYPES:
        raise UsageError(f"--tokenizer-type: expected one of {', '.join(TOKENIZER_TYPES)}, got {tokenizer_type!r}")
    if not tokenizer_model:
        raise UsageError(f"--tokenizer-type {tokenizer_type} needs --tokenizer-model")
    if not Path(tokenizer_model).exists():
        raise UsageError(f"--tokenizer-model {tokenizer_model}: no such file or directory")
    if tokenizer_type == "HuggingFaceTokenizer":
        return _hugging_face(tokenizer_model)
    if not Path(tokenizer_model).is_file():
        raise UsageError(f"--tokenizer-model {tokenizer_model}: expected a SentencePiece .model file")
    proto = Path(tokenizer_model).read_bytes()
    if tokenizer_type == "GPTSentencePieceTokenizer":
        return _gpt_sentencepiece(proto, tokenizer_model)
    return _sentencepiece_with_specials(proto, tokenizer_model)


def _processor(proto: bytes, path: str):
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.load_from_serialized_proto(proto)
    except (RuntimeError, OSError) as error:
        raise UsageError(f"--tokenizer-model {path}: not a SentencePiece model: {error}") from error
    return processor


def _optional_id(value: int) -> int | None:
    return None if value < 0 else value


def _gpt_sentencepiece(proto: bytes, path: str) -> Tokenizer:
    processor = _processor(proto, path)
    if processor.eos_id() < 0:
        raise UsageError(f"--tokenizer-model {path}: no </s> piece (GPTSentencePieceTokenizer uses it as EOD)")
    return SentencePieceTokenizer(
        proto,
        processor.eos_id(),
        bos_id=_optional_id(processor.bos_id()),
        pad_id=_optional_id(processor.pad_id()),
        unk_id=_optional_id(processor.unk_id()),
    )


def _sentencepiece_with_specials(proto: bytes, path: str) -> Tokenizer:
    processor = _processor(proto, path)
    vocab = {processor.id_to_piece(i): i for i in range(processor.get_piece_size())}
    specials: dict[str, int] = {}

    def add(token: str) -> int:
        if token not in vocab:
            vocab[token] = len(vocab)
        specials[token] = vocab[token]
        return vocab[token]

    def piece_or(piece_id: int, fallback: str) -> str:
        return processor.id_to_piece(piece_id) if 0 <= piece_id < processor.get_piece_size() else fallback

    for token in ("<CLS>", "<SEP>", "<EOD>", "<MASK>"):
        add(token)
    pad_id = add(piece_or(processor.pad_id(), "<PAD>"))
    bos_id = add(piece_or(processor.bos_id(), "<BOS>"))
    add(piece_or(processor.eos_id(), "<EOS>"))
    return SentencePieceTokenizer(
        proto,
        vocab["<EOD>"],
        bos_id=bos_id,
        pad_id=pad_id,
        unk_id=_optional_id(processor.unk_id()),
        vocab_size=len(vocab),
        special_tokens=list(specials),
        split_specials=specials,
    )


def _hugging_face(directory: str) -> Tokenizer:
    from megatron_llm.data.tokenizers.hf_loader import LoadError, describe

    try:
        described = describe(directory)
    except ImportError as error:
        raise UsageError("--tokenizer-type HuggingFaceTokenizer needs the transformers package") from error
    except LoadError as error:
        raise UsageError(f"--tokenizer-model {directory}: cannot load a Hugging Face tokenizer: {error}") from error
    if described["eos_id"] is None:
        raise UsageError(f"--tokenizer-model {directory}: no eos_token (Megatron-LM uses it as EOD)")
    common = {key: described[key] for key in ("bos_id", "pad_id", "unk_id", "vocab_size", "special_tokens")}
    common["chat_template"] = described["chat_template"]
    if described["tokenizer_json"] is None:
        return TransformersTokenizer(directory, described["eos_id"], **common)
    return HFTokenizer(described["tokenizer_json"], described["eos_id"], **common)


class TransformersTokenizer(Tokenizer):
    """Any transformers tokenizer without a Rust backend, called exactly as Megatron-LM calls it."""

    kind = "hf"

    def __init__(self, directory: str, eod_id: int, **common) -> None:
        import transformers

        self.directory = directory
        self._common = common
        self.hf = transformers.AutoTokenizer.from_pretrained(directory)
        self.eod_id = eod_id
        for name, value in common.items():
            setattr(self, name, value)

    def __reduce__(self):
        return (_rebuild_transformers, (self.directory, self.eod_id, self._common))

    def encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encoded = [self.hf(text).input_ids for text in texts]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        return np.fromiter(chain.from_iterable(encoded), dtype=np.int64, count=int(lengths.sum())), lengths

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids)


def _rebuild_transformers(directory: str, eod_id: int, common: dict) -> TransformersTokenizer:
    return TransformersTokenizer(directory, eod_id, **common)


def _gpt2_bpe(vocab_file: str, merge_file: str) -> Tokenizer:
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers

    for flag, path in (("--vocab-file", vocab_file), ("--merge-file", merge_file)):
        if not Path(path).is_file():
            raise UsageError(f"{flag} {path}: no such file")
    backend = tokenizers.Tokenizer(models.BPE.from_file(vocab_file, merge_file))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    eod = backend.token_to_id("<|endoftext|>")
    if eod is None:
        raise UsageError(f"--vocab-file {vocab_file}: no <|endoftext|> token, which GPT2BPETokenizer uses as EOD")
    return HFTokenizer(backend.to_str(), eod, vocab_size=backend.get_vocab_size(with_added_tokens=False))
