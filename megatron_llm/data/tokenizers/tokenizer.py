"""The tokenizer directory format and the runtime tokenizer API shared by the trainer and preprocess-data.

A tokenizer directory holds the model file (`tokenizer.model` for SentencePiece, `tokenizer.json` for
Hugging Face `tokenizers`) and a manifest `megatron_llm_tokenizer.json` that makes the ids that matter
explicit: {"kind", "model_file", "vocab_size", "eod_id", "bos_id", "pad_id", "unk_id",
"special_tokens", "chat_template"}.

Encoding semantics (these decide the token ids, so they are part of the format):
- sentencepiece: `SentencePieceProcessor.encode(text)`, no BOS/EOS added — what Megatron-LM's
  `GPTSentencePieceTokenizer` does; EOD is the manifest's `eod_id` (the model's `</s>`).
- hf: `tokenizers.Tokenizer.encode(text, add_special_tokens=True).ids` — what
  `transformers.AutoTokenizer(text).input_ids` gives on the exported directory.

Tokenizer objects pickle as their model bytes, so worker processes get them cheaply. This module never
imports torch (nor transformers).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from itertools import chain
from pathlib import Path

import numpy as np

from megatron_llm.data.tokenizers.sp_encoder import SentencePieceEncoder
from megatron_llm.errors import UsageError

MANIFEST = "megatron_llm_tokenizer.json"
KINDS = ("sentencepiece", "hf")
MODEL_FILES = {"sentencepiece": "tokenizer.model", "hf": "tokenizer.json"}


class Tokenizer(ABC):
    """Common API: `encode`, `encode_batch`, `encode_flat` (for bulk work), `decode` and the special ids."""

    kind: str
    vocab_size: int
    eod_id: int
    bos_id: int | None = None
    pad_id: int | None = None
    unk_id: int | None = None
    special_tokens: list[str]
    chat_template: str | None = None

    @abstractmethod
    def encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids of all texts back to back as int64, number of ids per text)."""

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        ids, lengths = self.encode_flat(list(texts))
        flat = ids.tolist()
        out, start = [], 0
        for length in lengths.tolist():
            out.append(flat[start : start + length])
            start += length
        return out

    @abstractmethod
    def decode(self, ids: list[int]) -> str:
        """The text of `ids`."""

    @property
    def encoder_name(self) -> str:
        """Which implementation encodes, for reports."""
        return self.kind

    def _set_ids(self, eod_id: int, bos_id: int | None, pad_id: int | None, unk_id: int | None,
                 special_tokens: list[str] | None, chat_template: str | None) -> None:
        self.eod_id, self.bos_id, self.pad_id, self.unk_id = eod_id, bos_id, pad_id, unk_id
        self.special_tokens = list(special_tokens or [])
        self.chat_template = chat_template

    def _ids_state(self) -> dict:
        """The keyword arguments that rebuild the ids, vocabulary size, specials and template (pickling)."""
        return {
            "eod_id": self.eod_id,
            "bos_id": self.bos_id,
            "pad_id": self.pad_id,
            "unk_id": self.unk_id,
            "vocab_size": self.vocab_size,
            "special_tokens": self.special_tokens,
            "chat_template": self.chat_template,
        }

    def manifest(self) -> dict:
        return {
            "kind": self.kind,
            "model_file": MODEL_FILES[self.kind],
            "vocab_size": self.vocab_size,
            "eod_id": self.eod_id,
            "bos_id": self.bos_id,
            "pad_id": self.pad_id,
            "unk_id": self.unk_id,
            "special_tokens": list(self.special_tokens),
            "chat_template": self.chat_template,
        }


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model; optionally with Megatron-LM's `SentencePieceTokenizer` special-token split.

    `split_specials` maps special-token strings to ids, in Megatron-LM's priority order: the text is cut
    at every occurrence (leftmost first, earlier tokens winning ties), the pieces between are encoded
    separately and each occurrence becomes its id.
    """

    kind = "sentencepiece"

    def __init__(
        self,
        model_proto: bytes,
        eod_id: int,
        *,
        bos_id: int | None = None,
        pad_id: int | None = None,
        unk_id: int | None = None,
        vocab_size: int | None = None,
        special_tokens: list[str] | None = None,
        chat_template: str | None = None,
        split_specials: dict[str, int] | None = None,
        encoder: SentencePieceEncoder | None = None,
    ) -> None:
        self._model_proto = model_proto
        self.encoder = encoder or SentencePieceEncoder(model_proto)
        self.piece_count = self.encoder.processor.get_piece_size()
        self.vocab_size = vocab_size if vocab_size is not None else self.piece_count
        self._set_ids(eod_id, bos_id, pad_id, unk_id, special_tokens, chat_template)
        self.split_specials = dict(split_specials or {})
        self._split = None
        if self.split_specials:
            import re

            self._split = re.compile("|".join(re.escape(token) for token in self.split_specials))

    def __reduce__(self):
        state = {**self._ids_state(), "split_specials": self.split_specials}
        return (_rebuild_sentencepiece, (self._model_proto, state, self.encoder.gigatoken_json()))

    @property
    def encoder_name(self) -> str:
        """"gigatoken", "words" (SentencePiece behind a per-word cache) or "plain" (SentencePiece alone)."""
        return self.encoder.mode

    def encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self._split is None:
            return self.encoder.encode_flat(texts)
        return self._encode_split(texts)

    def _encode_split(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        segments: list[str] = []
        plan: list[list[int | None]] = []
        for text in texts:
            if self._split.search(text) is None:
                segments.append(text)
                plan.append([None])
                continue
            steps: list[int | None] = []
            start = 0
            for match in self._split.finditer(text):
                segments.append(text[start : match.start()])
                steps += [None, self.split_specials[match.group()]]
                start = match.end()
            segments.append(text[start:])
            steps.append(None)
            plan.append(steps)
        ids, lengths = self.encoder.encode_flat(segments)
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        pieces: list[np.ndarray] = []
        doc_lengths = np.zeros(len(texts), dtype=np.int64)
        segment = 0
        for doc, steps in enumerate(plan):
            for step in steps:
                if step is None:
                    part = ids[bounds[segment] : bounds[segment + 1]]
                    segment += 1
                else:
                    part = np.array([step], dtype=np.int64)
                pieces.append(part)
                doc_lengths[doc] += len(part)
        return (np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)), doc_lengths

    def decode(self, ids: list[int]) -> str:
        ids = [int(i) for i in ids]
        if all(0 <= i < self.piece_count for i in ids):
            return self.encoder.decode(ids)
        names = {token_id: token for token, token_id in self.split_specials.items()}
        out, run = [], []
        for token_id in ids:
            if 0 <= token_id < self.piece_count:
                run.append(token_id)
                continue
            if run:
                out.append(self.encoder.decode(run))
                run = []
            out.append(names.get(token_id, f"<id {token_id}>"))
        if run:
            out.append(self.encoder.decode(run))
        return "".join(out)


def _rebuild_sentencepiece(model_proto: bytes, state: dict, gigatoken_json: str | None) -> SentencePieceTokenizer:
    encoder = SentencePieceEncoder(model_proto, gigatoken_json=gigatoken_json)
    return SentencePieceTokenizer(model_proto, encoder=encoder, **state)


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers` tokenizer (tokenizer.json); ids include what its post-processor adds."""

    kind = "hf"

    def __init__(
        self,
        tokenizer_json: str,
        eod_id: int,
        *,
        bos_id: int | None = None,
        pad_id: int | None = None,
        unk_id: int | None = None,
        vocab_size: int | None = None,
        special_tokens: list[str] | None = None,
        chat_template: str | None = None,
    ) -> None:
        import tokenizers

        self._json = tokenizer_json
        self.backend = tokenizers.Tokenizer.from_str(tokenizer_json)
        self.backend.no_truncation()
        self.backend.no_padding()
        self.vocab_size = vocab_size if vocab_size is not None else self.backend.get_vocab_size(with_added_tokens=True)
        self._set_ids(eod_id, bos_id, pad_id, unk_id, special_tokens, chat_template)
        self._fast = getattr(self.backend, "encode_batch_fast", None)
        self._accelerated = None
        self._accelerator_checked = False

    def __reduce__(self):
        return (_rebuild_hf, (self._json, self._ids_state()))

    @property
    def encoder_name(self) -> str:
        """"gigatoken" when its verified encoder is in use, else "tokenizers"."""
        self._check_accelerator()
        return "gigatoken" if self._accelerated is not None else "tokenizers"

    def _check_accelerator(self) -> None:
        if not self._accelerator_checked:
            from megatron_llm.data.tokenizers.bpe_backend import gigatoken_encoder

            self._accelerated = gigatoken_encoder(self._json, self.backend)
            self._accelerator_checked = True

    def encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        self._check_accelerator()
        if self._accelerated is not None:
            return self._accelerated.encode_flat(texts)
        encode = self._fast or self.backend.encode_batch
        encodings = [encoding.ids for encoding in encode(texts, add_special_tokens=True)]
        lengths = np.fromiter(map(len, encodings), dtype=np.int64, count=len(encodings))
        return np.fromiter(chain.from_iterable(encodings), dtype=np.int64, count=int(lengths.sum())), lengths

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)


def _rebuild_hf(tokenizer_json: str, state: dict) -> HFTokenizer:
    return HFTokenizer(tokenizer_json, **state)


def read_manifest(directory: str | Path) -> dict:
    """The validated manifest of a tokenizer directory; UsageError naming the file and field otherwise."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise UsageError(f"{directory}: not a tokenizer directory (no {MANIFEST}); create one with train-tokenizer")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{path}: invalid JSON: {error}") from error
    if not isinstance(manifest, dict):
        raise UsageError(f"{path}: expected a JSON object")
    if manifest.get("kind") not in KINDS:
        raise UsageError(f"{path}: kind: expected one of {', '.join(KINDS)}, got {manifest.get('kind')!r}")
    for field in ("vocab_size", "eod_id"):
        if not isinstance(manifest.get(field), int) or manifest[field] < 0:
            raise UsageError(f"{path}: {field}: expected a non-negative integer, got {manifest.get(field)!r}")
    for field in ("bos_id", "pad_id", "unk_id"):
        if manifest.get(field) is not None and not isinstance(manifest[field], int):
            raise UsageError(f"{path}: {field}: expected an integer or null, got {manifest[field]!r}")
    if manifest["eod_id"] >= manifest["vocab_size"]:
        raise UsageError(f"{path}: eod_id: {manifest['eod_id']} is not below vocab_size {manifest['vocab_size']}")
    manifest.setdefault("model_file", MODEL_FILES[manifest["kind"]])
    manifest.setdefault("special_tokens", [])
    manifest.setdefault("chat_template", None)
    if not (Path(directory) / manifest["model_file"]).is_file():
        raise UsageError(f"{path}: model_file: {manifest['model_file']} is missing from {directory}")
    return manifest


def write_manifest(directory: str | Path, tokenizer: Tokenizer) -> Path:
    path = Path(directory) / MANIFEST
    path.write_text(json.dumps(tokenizer.manifest(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer in directory `path` (see the module docstring for the format)."""
    manifest = read_manifest(path)
    model = Path(path) / manifest["model_file"]
    common = {
        "bos_id": manifest.get("bos_id"),
        "pad_id": manifest.get("pad_id"),
        "unk_id": manifest.get("unk_id"),
        "vocab_size": manifest["vocab_size"],
        "special_tokens": manifest["special_tokens"],
        "chat_template": manifest["chat_template"],
    }
    if not model.is_file():
        raise UsageError(f"{model}: missing (named by {Path(path) / MANIFEST})")
    try:
        if manifest["kind"] == "sentencepiece":
            return SentencePieceTokenizer(model.read_bytes(), manifest["eod_id"], **common)
        return HFTokenizer(model.read_text(encoding="utf-8"), manifest["eod_id"], **common)
    except UsageError:
        raise
    except Exception as error:  # noqa: BLE001 - sentencepiece and tokenizers raise plain RuntimeError/Exception
        first = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise UsageError(f"{model}: not a readable {manifest['kind']} tokenizer model (truncated or corrupt?): "
                         f"{first}") from None


def export_for_hf(tokenizer_dir: str | Path, out_dir: str | Path) -> Path:
    """Write files `transformers.AutoTokenizer.from_pretrained(out_dir)` loads offline with the same ids."""
    from megatron_llm.data.tokenizers.export import export_for_hf as export

    return export(tokenizer_dir, out_dir)
