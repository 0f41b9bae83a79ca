"""Train a SentencePiece (BPE/unigram) or Hugging Face byte-level BPE tokenizer into a tokenizer directory.

SentencePiece is set up to be lossless where it can be: identity normalization, spaces kept as they are
(runs of spaces may become pieces, which matters for code), digits split, no dummy "▁" prefix (so text after
a special token, and the exported Hugging Face tokenizer, encode alike), and with `byte_fallback` every
character outside the vocabulary becomes its UTF-8 bytes, so decode(encode(x)) == x. Ids: <unk>=0, <s>=1,
</s>=2 (EOD), <pad>=3, then the user's special tokens. Byte-level BPE covers all bytes by construction;
ids: <|endoftext|>=0 (EOD), <|pad|>=1, then the user's special tokens.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path

from megatron_llm.data.tokenizers.tokenizer import (
    MODEL_FILES,
    HFTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    write_manifest,
)
from megatron_llm.errors import UsageError

MODEL_TYPES = ("bpe", "unigram", "byte-bpe")
SP_SPECIALS = {"unk": "<unk>", "bos": "<s>", "eos": "</s>", "pad": "<pad>"}
BYTE_BPE_EOD, BYTE_BPE_PAD = "<|endoftext|>", "<|pad|>"
MAX_SENTENCE_BYTES = 1 << 14


def _lines(texts: Iterable[str]) -> Iterable[str]:
    """SentencePiece trains on sentences: one per non-blank line, at most MAX_SENTENCE_BYTES long."""
    for text in texts:
        for line in text.split("\n"):
            if line.strip():
                yield line[: MAX_SENTENCE_BYTES // 4] if len(line) > MAX_SENTENCE_BYTES // 4 else line


def train_sentencepiece(
    texts: list[str],
    model_type: str,
    vocab_size: int,
    special_tokens: list[str],
    byte_fallback: bool,
    chat_template: str | None = None,
) -> SentencePieceTokenizer:
    import sentencepiece

    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(_lines(texts)),
            model_writer=model,
            model_type=model_type,
            vocab_size=vocab_size,
            byte_fallback=byte_fallback,
            character_coverage=0.9995 if byte_fallback else 1.0,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            max_sentence_length=MAX_SENTENCE_BYTES,
            user_defined_symbols=special_tokens,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=3,
            unk_piece=SP_SPECIALS["unk"],
            bos_piece=SP_SPECIALS["bos"],
            eos_piece=SP_SPECIALS["eos"],
            pad_piece=SP_SPECIALS["pad"],
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as error:
        raise UsageError(f"SentencePiece training failed: {str(error).strip()}") from error
    specials = list(SP_SPECIALS.values()) + list(special_tokens)
    return SentencePieceTokenizer(
        model.getvalue(), 2, bos_id=1, pad_id=3, unk_id=0, special_tokens=specials, chat_template=chat_template
    )


def train_byte_bpe(
    texts: list[str], vocab_size: int, special_tokens: list[str], chat_template: str | None = None
) -> HFTokenizer:
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [BYTE_BPE_EOD, BYTE_BPE_PAD, *special_tokens]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return HFTokenizer(backend.to_str(), 0, pad_id=1, special_tokens=specials, chat_template=chat_template)


def train(
    texts: list[str],
    model_type: str,
    vocab_size: int,
    special_tokens: list[str],
    byte_fallback: bool,
    chat_template: str | None = None,
) -> Tokenizer:
    if model_type == "byte-bpe":
        return train_byte_bpe(texts, vocab_size, special_tokens, chat_template)
    return train_sentencepiece(texts, model_type, vocab_size, special_tokens, byte_fallback, chat_template)


def save(tokenizer: Tokenizer, directory: str | Path) -> Path:
    """Write the model file and the manifest into `directory` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model_path = directory / MODEL_FILES[tokenizer.kind]
    if isinstance(tokenizer, SentencePieceTokenizer):
        model_path.write_bytes(tokenizer.encoder.processor.serialized_model_proto())
    else:
        model_path.write_text(tokenizer.backend.to_str(pretty=True), encoding="utf-8")
    write_manifest(directory, tokenizer)
    return directory
