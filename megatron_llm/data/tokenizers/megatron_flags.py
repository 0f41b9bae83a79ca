"""Tokenizers built from Megatron-LM's flags, choosing ids exactly as Megatron-LM 0.16.1's tokenizers do.

Megatron-LM's `tools/preprocess_data.py` builds its tokenizer with `megatron.core.tokenizers`' `build_tokenizer`
(the default), or with the older `megatron.training.tokenizer` when given `--legacy-tokenizer`; the two choose
different ids (see shared/reference/megatron-preprocess-compat.md). With the flag defaults (no special tokens,
`--tokenizer-hf-include-special-tokens` off):

- SentencePieceTokenizer. Default: `encode_as_ids(text)`, EOD = the model's `</s>`, vocab = its pieces.
  Legacy: pieces plus `<CLS> <SEP> <EOD> <MASK>` and pad/bos/eos (or `<PAD> <BOS> <EOS>`) added when absent,
  the text cut at each of them; EOD = `<EOD>`.
- GPTSentencePieceTokenizer. Both: `encode_as_ids(text)`, EOD = `</s>`.
- HuggingFaceTokenizer. Default: `convert_tokens_to_ids(tokenize(text))`, so nothing from the post-processor
  (no BOS); legacy: `tokenizer(text).input_ids`. Both: EOD = eos, vocab = `len(tokenizer)`.
- GPT2BPETokenizer. Byte-level BPE, EOD = `<|endoftext|>`; `<|endoftext|>` written in the text is that token
  (default: transformers' GPT2Tokenizer) or its characters (legacy: Megatron's own GPT-2 BPE).

One difference we do not reproduce: Megatron-LM's default GPT2BPETokenizer passes the merges to transformers
under a misspelt keyword (`merge_files`), so its merges come from the `gpt2` model on the Hugging Face hub
(which it must download); with GPT-2's own vocab.json/merges.txt, the usual use, that is the same file.
"""

from __future__ import annotations

import json
from itertools import chain
from pathlib import Path

import numpy as np

from megatron_llm.data.tokenizers.tokenizer import (
    MODEL_FILES,
    HFTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    write_manifest,
)
from megatron_llm.errors import UsageError

TOKENIZER_TYPES = ("SentencePieceTokenizer", "GPTSentencePieceTokenizer", "HuggingFaceTokenizer", "GPT2BPETokenizer")
GPT2_EOD = "<|endoftext|>"


def load_megatron_tokenizer(
    tokenizer_type: str,
    tokenizer_model: str | None = None,
    vocab_file: str | None = None,
    merge_file: str | None = None,
    legacy: bool = False,
) -> Tokenizer:
    """The tokenizer Megatron-LM's preprocess_data.py builds from the same flags (`legacy`: with
    `--legacy-tokenizer`)."""
    if tokenizer_type == "GPT2BPETokenizer":
        if not vocab_file or not merge_file:
            raise UsageError("--tokenizer-type GPT2BPETokenizer needs --vocab-file and --merge-file")
        return _gpt2_bpe(vocab_file, merge_file, specials_in_text=not legacy)
    if tokenizer_type not in TOKENIZER_TYPES:
        raise UsageError(f"--tokenizer-type: expected one of {', '.join(TOKENIZER_TYPES)}, got {tokenizer_type!r}")
    if not tokenizer_model:
        raise UsageError(f"--tokenizer-type {tokenizer_type} needs --tokenizer-model")
    if not Path(tokenizer_model).exists():
        raise UsageError(f"--tokenizer-model {tokenizer_model}: no such file or directory")
    if tokenizer_type == "HuggingFaceTokenizer":
        return _hugging_face(tokenizer_model, post_processor=legacy)
    if not Path(tokenizer_model).is_file():
        raise UsageError(f"--tokenizer-model {tokenizer_model}: expected a SentencePiece .model file")
    proto = Path(tokenizer_model).read_bytes()
    if tokenizer_type == "SentencePieceTokenizer" and legacy:
        return _sentencepiece_with_specials(proto, tokenizer_model)
    return _plain_sentencepiece(proto, tokenizer_model, tokenizer_type)


def save_megatron_tokenizer(tokenizer: Tokenizer, directory: str | Path) -> Path:
    """Write `tokenizer` as a tokenizer directory (model file and manifest), so that training on the shards
    it made uses its vocabulary size and EOD id. Refuses what a directory cannot hold."""
    if isinstance(tokenizer, SentencePieceTokenizer) and tokenizer.split_specials:
        raise UsageError("--save-tokenizer: the legacy SentencePieceTokenizer's special-token split cannot be "
                         "stored in a tokenizer directory")
    if not isinstance(tokenizer, SentencePieceTokenizer | HFTokenizer):
        raise UsageError("--save-tokenizer: this tokenizer has no tokenizer.json (a transformers tokenizer "
                         "without a Rust backend) to store")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model = out / MODEL_FILES[tokenizer.kind]
    if isinstance(tokenizer, SentencePieceTokenizer):
        model.write_bytes(tokenizer.encoder.processor.serialized_model_proto())
    else:
        model.write_text(tokenizer.backend.to_str(pretty=True), encoding="utf-8")
    write_manifest(out, tokenizer)
    return out


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


def _plain_sentencepiece(proto: bytes, path: str, tokenizer_type: str) -> Tokenizer:
    processor = _processor(proto, path)
    if processor.eos_id() < 0:
        raise UsageError(f"--tokenizer-model {path}: no </s> piece ({tokenizer_type} uses it as EOD)")
    return SentencePieceTokenizer(
        proto,
        processor.eos_id(),
        bos_id=_optional_id(processor.bos_id()),
        pad_id=_optional_id(processor.pad_id()),
        unk_id=_optional_id(processor.unk_id()),
    )


def _sentencepiece_with_specials(proto: bytes, path: str) -> Tokenizer:
    """megatron.training.tokenizer's SentencePieceTokenizer (the legacy system)."""
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


def _hugging_face(directory: str, post_processor: bool) -> Tokenizer:
    """`post_processor`: ids include what the tokenizer's post-processor adds (BOS, ...), as the legacy
    system's `tokenizer(text).input_ids`; the default system tokenizes without it."""
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
        return TransformersTokenizer(directory, described["eos_id"], post_processor, **common)
    backend = described["tokenizer_json"]
    if not post_processor:
        backend = _without_post_processor(backend)
    return HFTokenizer(backend, described["eos_id"], **common)


def _without_post_processor(tokenizer_json: str) -> str:
    data = json.loads(tokenizer_json)
    data["post_processor"] = None
    return json.dumps(data, ensure_ascii=False)


class TransformersTokenizer(Tokenizer):
    """Any transformers tokenizer without a Rust backend, called exactly as Megatron-LM calls it."""

    kind = "hf"

    def __init__(self, directory: str, eod_id: int, post_processor: bool, **common) -> None:
        import transformers

        self.directory = directory
        self.post_processor = post_processor
        self._common = common
        self.hf = transformers.AutoTokenizer.from_pretrained(directory)
        self.eod_id = eod_id
        for name, value in common.items():
            setattr(self, name, value)

    def __reduce__(self):
        return (_rebuild_transformers, (self.directory, self.eod_id, self.post_processor, self._common))

    def _ids(self, text: str) -> list[int]:
        if self.post_processor:
            return self.hf(text).input_ids
        return self.hf.convert_tokens_to_ids(self.hf.tokenize(text))

    def encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encoded = [self._ids(text) for text in texts]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        return np.fromiter(chain.from_iterable(encoded), dtype=np.int64, count=int(lengths.sum())), lengths

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids)


def _rebuild_transformers(directory: str, eod_id: int, post_processor: bool, common: dict) -> TransformersTokenizer:
    return TransformersTokenizer(directory, eod_id, post_processor, **common)


def _gpt2_bpe(vocab_file: str, merge_file: str, specials_in_text: bool) -> Tokenizer:
    """`specials_in_text`: `<|endoftext|>` written in the text encodes as that token (transformers'
    GPT2Tokenizer, the default system) rather than as its characters (Megatron's own GPT-2 BPE, legacy)."""
    import tokenizers
    from tokenizers import AddedToken, decoders, models, pre_tokenizers

    for flag, path in (("--vocab-file", vocab_file), ("--merge-file", merge_file)):
        if not Path(path).is_file():
            raise UsageError(f"{flag} {path}: no such file")
    backend = tokenizers.Tokenizer(models.BPE.from_file(vocab_file, merge_file))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    eod = backend.token_to_id(GPT2_EOD)
    if eod is None:
        raise UsageError(f"--vocab-file {vocab_file}: no {GPT2_EOD} token, which GPT2BPETokenizer uses as EOD")
    vocab_size = backend.get_vocab_size(with_added_tokens=False)
    if specials_in_text:
        backend.add_special_tokens([AddedToken(GPT2_EOD, special=True, normalized=False)])
    return HFTokenizer(backend.to_str(), eod, vocab_size=vocab_size, special_tokens=[GPT2_EOD] * specials_in_text)
