"""Export a tokenizer directory as files `transformers.AutoTokenizer.from_pretrained` loads offline.

For a SentencePiece model we write a `tokenizer.json` that reproduces SentencePiece itself (identity
normalization, the dummy prefix only if the model has one, byte fallback, merges ranked by piece score)
and load it through `PreTrainedTokenizerFast`: transformers' own LlamaTokenizer rebuilds the pre-tokenizer
(a Metaspace that skips the prefix before a leading space) and would not give SentencePiece's ids. The
`tokenizer.model` is copied alongside for tools that want SentencePiece. Neither BOS nor EOS is added, as
in `Tokenizer.encode`. Known difference: Hugging Face matches special-token strings (`<s>`, `</s>`, ...)
written literally in the text; SentencePiece encodes them as characters.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from megatron_llm.data.tokenizers.sp_encoder import SPACE
from megatron_llm.data.tokenizers.tokenizer import read_manifest
from megatron_llm.errors import UsageError

_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_BPE, _UNIGRAM = 2, 1


def export_for_hf(tokenizer_dir: str | Path, out_dir: str | Path) -> Path:
    manifest = read_manifest(tokenizer_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    source = Path(tokenizer_dir) / manifest["model_file"]
    if manifest["kind"] == "sentencepiece":
        proto = source.read_bytes()
        (out / "tokenizer.json").write_text(sentencepiece_tokenizer_json(proto), encoding="utf-8")
        shutil.copyfile(source, out / "tokenizer.model")
        names = _piece_names(proto)
    else:
        shutil.copyfile(source, out / "tokenizer.json")
        names = _hf_names(source)
    config = _tokenizer_config(manifest, names)
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", "utf-8")
    specials = {key: config[key] for key in ("bos_token", "eos_token", "unk_token", "pad_token") if config.get(key)}
    specials["additional_special_tokens"] = config["additional_special_tokens"]
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2, ensure_ascii=False) + "\n", "utf-8")
    return out


def _tokenizer_config(manifest: dict, names: dict[int, str]) -> dict:
    def name(field: str) -> str | None:
        token_id = manifest.get(field)
        return None if token_id is None else names.get(token_id)

    named = {name(field) for field in ("bos_id", "eod_id", "unk_id", "pad_id")}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name("bos_id"),
        "eos_token": name("eod_id"),
        "unk_token": name("unk_id"),
        "pad_token": name("pad_id"),
        "additional_special_tokens": [token for token in manifest["special_tokens"] if token not in named],
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1 << 30,
    }
    if manifest.get("chat_template"):
        config["chat_template"] = manifest["chat_template"]
    return config


def _model(proto: bytes):
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(proto)
    return model


def _piece_names(proto: bytes) -> dict[int, str]:
    return {index: piece.piece for index, piece in enumerate(_model(proto).pieces)}


def _hf_names(path: Path) -> dict[int, str]:
    import tokenizers

    backend = tokenizers.Tokenizer.from_file(str(path))
    return {token_id: token for token, token_id in backend.get_vocab(with_added_tokens=True).items()}


def sentencepiece_tokenizer_json(proto: bytes) -> str:
    """A tokenizer.json equivalent to an identity-normalized SentencePiece BPE or unigram model."""
    model = _model(proto)
    spec, trainer = model.normalizer_spec, model.trainer_spec
    if spec.precompiled_charsmap or spec.remove_extra_whitespaces or not spec.escape_whitespaces:
        raise UsageError(
            "export_for_hf supports identity-normalized SentencePiece models (as train-tokenizer writes them)"
        )
    if trainer.treat_whitespace_as_suffix or trainer.model_type not in (_BPE, _UNIGRAM):
        raise UsageError("export_for_hf supports SentencePiece BPE and unigram models with whitespace as prefix")
    pieces = [(piece.piece, piece.score, piece.type) for piece in model.pieces]
    unk = next((index for index, (_, _, kind) in enumerate(pieces) if kind == _UNKNOWN), None)
    normalizers = [{"type": "Replace", "pattern": {"String": " "}, "content": SPACE}]
    decoders = [
        {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
    ]
    if spec.add_dummy_prefix:
        normalizers.insert(0, {"type": "Prepend", "prepend": SPACE})
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    added = [
        {
            "id": index,
            "content": piece,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for index, (piece, _, kind) in enumerate(pieces)
        if kind in (_CONTROL, _USER_DEFINED, _UNKNOWN)
    ]
    if trainer.model_type == _BPE:
        vocab = {piece: index for index, (piece, _, _) in enumerate(pieces)}
        body = {
            "type": "BPE",
            "dropout": None,
            "unk_token": pieces[unk][0] if unk is not None else None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": trainer.byte_fallback,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": _merges(pieces, vocab),
        }
    else:
        body = {
            "type": "Unigram",
            "unk_id": unk,
            "vocab": [[piece, score] for piece, score, _ in pieces],
            "byte_fallback": trainer.byte_fallback,
        }
    document = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": body,
    }
    return json.dumps(document, ensure_ascii=False)


def _merges(pieces: list[tuple[str, float, int]], vocab: dict[str, int]) -> list[list[str]]:
    """Every split of a mergeable piece into two pieces, highest piece score first (SentencePiece's order)."""
    merges = []
    for piece, score, kind in pieces:
        if kind != _NORMAL or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((-score, vocab[left], vocab[right], left, right))
    merges.sort()
    return [[left, right] for *_, left, right in merges]
